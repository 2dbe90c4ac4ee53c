//! The real node leaves nothing behind: not when it is dropped, and not
//! when the process holding it dies by SIGKILL with a pod running
//! (containers, shims, containerd, the kubelet, mounts, cgroups and its
//! directory all go).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_e2e::{Cluster, RealNode, eventually};

/// What is left of a node: processes naming its directory or in its
/// cgroups, its cgroups, its directory, host mounts under it.
fn leftovers(dir: &Path, cgroup_root: &str, init: u32) -> Vec<String> {
    let mut left = Vec::new();
    let dir_text = dir.display().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().to_string();
        if pid.parse::<u32>().is_err() || pid == std::process::id().to_string() {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
            .unwrap_or_default();
        let cgroups = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        if cmdline.contains(&dir_text) || cgroups.contains(cgroup_root) {
            left.push(format!("process {pid}: {cmdline}"));
        }
    }
    if Path::new(&format!("/proc/{init}")).exists() {
        left.push(format!("namespace init {init}"));
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let cgroup = hierarchy.path().join(cgroup_root);
        if cgroup.exists() {
            left.push(format!("cgroup {}", cgroup.display()));
        }
    }
    if dir.exists() {
        left.push(format!("directory {}", dir.display()));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    left.extend(
        mounts
            .lines()
            .filter(|line| line.contains(&dir_text))
            .map(|line| format!("mount {line}")),
    );
    left
}

async fn run_pod(cluster: &Cluster, node: &RealNode) {
    node.run_sleeper(cluster).await.unwrap();
}

#[tokio::test]
async fn killing_the_process_holding_a_node_leaves_no_container_mount_or_cgroup() {
    let mut holder = Command::new(env!("CARGO_BIN_EXE_ferry-e2e-hold-node"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(holder.stdout.take().unwrap());
    let mut held = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("holding ") {
            let fields: Vec<&str> = rest.split(' ').collect();
            held = Some((
                PathBuf::from(fields[0]),
                fields[1].to_owned(),
                fields[2].parse::<u32>().unwrap(),
            ));
            break;
        }
    }
    let (dir, cgroup_root, init) = held.expect("the holder never started its node");
    assert!(
        !leftovers(&dir, &cgroup_root, init).is_empty(),
        "the held node is not running"
    );

    holder.kill().unwrap();
    holder.wait().unwrap();

    let mut last = Vec::new();
    let result = tokio::time::timeout(
        Duration::from_secs(90),
        eventually("nothing to be left", Duration::from_secs(90), || {
            last = leftovers(&dir, &cgroup_root, init);
            let done = last.is_empty();
            async move { done.then_some(()) }
        }),
    )
    .await;
    assert!(
        result.is_ok(),
        "left behind: {:#?}",
        leftovers(&dir, &cgroup_root, init)
    );
}

#[tokio::test]
async fn a_dropped_node_leaves_no_container_mount_or_cgroup() {
    let cluster = Cluster::shared().await.unwrap();
    let node = RealNode::start(cluster).await.unwrap();
    run_pod(cluster, &node).await;
    let (dir, cgroup_root, init) = (
        node.dir().to_path_buf(),
        node.cgroup_root().to_owned(),
        node.init_pid(),
    );
    drop(node);
    assert_eq!(leftovers(&dir, &cgroup_root, init), Vec::<String>::new());
}
