//! The `ferry-operator run` binary itself, as a Deployment would run it:
//! two replicas against a real apiserver, one leads, reconciles and keeps
//! the serving certificates; on
//! SIGTERM the leader stops, releases its Lease, exits 0, and the other
//! replica takes over at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_api::resources::{AccessPolicy, BrokeredSecret, Grant};
use ferry_e2e::{Cluster, KillOnDrop, eventually, install_crds, workspace_binary};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn start_replica(binary: &PathBuf, cluster: &Cluster, name: &str) -> KillOnDrop {
    let log = std::fs::File::create(cluster.dir().join(format!("logs/{name}.log"))).unwrap();
    let child = Command::new(binary)
        .args(["run", "--admin-addr", "127.0.0.1:0", "--log-format", "text"])
        // As the chart runs it: the leader also keeps the serving certificates.
        .arg("--manage-certificates")
        .env("KUBECONFIG", cluster.kubeconfig())
        .env("POD_NAMESPACE", "ferry-system")
        .env("POD_NAME", name)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    let lease = leases.get_opt("ferry-operator").await.unwrap()?;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

async fn grant_and_wait(client: &Client, ns: &str, shop: &str, policy: &str) {
    let p: AccessPolicy = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": policy},
        "spec": {"subjects": [{"serviceAccount": {"name": "checkout", "namespace": shop}}], "secrets": [{"name": "orders-db"}]},
    }))
    .unwrap();
    Api::<AccessPolicy>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
    let grants = Api::<Grant>::namespaced(client.clone(), shop);
    eventually(&format!("a grant from {policy}"), WAIT, || async {
        let list = grants.list(&ListParams::default()).await.unwrap();
        list.items
            .iter()
            .any(|g| g.spec.policy.name == policy)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn two_replicas_elect_one_leader_that_hands_over_on_sigterm() {
    let binary = workspace_binary("ferry-operator").unwrap();
    let cluster = Cluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    install_crds(&client).await.unwrap();
    let created = cluster
        .kubectl()
        .args(["create", "namespace", "ferry-system"])
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let ns = cluster.create_namespace("binary").await.unwrap();
    let shop = cluster.create_namespace("binary-shop").await.unwrap();
    let secret: BrokeredSecret = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "BrokeredSecret",
        "metadata": {"name": "orders-db"},
        "spec": {"source": {"jwt": {"audience": ["orders-api"]}}},
    }))
    .unwrap();
    Api::<BrokeredSecret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    let mut replicas = vec![
        ("replica-a", start_replica(&binary, &cluster, "replica-a")),
        ("replica-b", start_replica(&binary, &cluster, "replica-b")),
    ];
    let leases: Api<Lease> = Api::namespaced(client.clone(), "ferry-system");
    let first = eventually("a leader", WAIT, || holder(&leases)).await;
    grant_and_wait(&client, &ns, &shop, "before").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "ferry-system");
    for name in ["ferry-ca", "ferry-webhook-tls", "ferry-broker-tls"] {
        eventually(
            &format!("the leader to create Secret {name}"),
            WAIT,
            || async { secrets.get_opt(name).await.unwrap() },
        )
        .await;
    }

    let leading = replicas
        .iter()
        .position(|(name, _)| first.starts_with(&format!("{name}-")))
        .unwrap();
    let (_, mut leader) = replicas.remove(leading);
    let follower = replicas[0].0;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(leader.0.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = eventually("the leader to exit after SIGTERM", WAIT, || {
        std::future::ready(leader.0.try_wait().unwrap())
    })
    .await;
    assert!(status.success(), "the leader exited with {status}");

    // Released, not left to expire: the follower leads well before the
    // 15 s lease would have run out, and reconciles.
    let next = eventually("the follower to lead", Duration::from_secs(10), || async {
        holder(&leases)
            .await
            .filter(|h| h.starts_with(&format!("{follower}-")))
    })
    .await;
    assert_ne!(next, first);
    grant_and_wait(&client, &ns, &shop, "after").await;
}
