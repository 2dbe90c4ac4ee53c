//! Starts a control plane and a real node with a running pod, prints
//! `holding <node dir> <cgroup root> <init pid>`, and waits to be killed:
//! the process `e2e/tests/real_node.rs` SIGKILLs to show that nothing of
//! the node outlives its harness. Not for use by hand.

use ferry_e2e::{Cluster, RealNode};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let node = RealNode::start(&cluster).await?;
    node.run_sleeper(&cluster).await?;
    println!(
        "holding {} {} {}",
        node.dir().display(),
        node.cgroup_root(),
        node.init_pid()
    );
    std::future::pending::<()>().await;
    Ok(())
}
