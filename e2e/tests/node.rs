//! The node stand-in (test infrastructure, not ferry; `make demo`'s
//! fallback where containers cannot run) does what the demo relies on a
//! kubelet for: pods are bound to it and reported Running,
//! projected tokens are real pod-bound tokens with the volume's audience and
//! mode, emptyDirs live on tmpfs, and a deleted pod is finalised.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use base64::Engine as _;
use ferry_e2e::{Cluster, NODE_NAME, NodeStandIn, create_object, eventually, workspace_binary};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn pods_are_bound_run_given_their_volumes_and_finalised() {
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    let node = NodeStandIn::start(
        cluster.config().clone(),
        &workspace_binary("ferry-sidecar").unwrap(),
    )
    .unwrap();
    let ns = cluster.create_namespace("node").await.unwrap();
    let pod: Pod = create_object(
        &client,
        &ns,
        json!({"metadata": {"name": "plain"},
               "spec": {"containers": [{"name": "app", "image": "app:1"}],
                        "volumes": [
                            {"name": "scratch", "emptyDir": {"medium": "Memory"}},
                            {"name": "token", "projected": {"defaultMode": 0o440, "sources": [
                                {"serviceAccountToken": {"audience": "example.dev",
                                                         "expirationSeconds": 600, "path": "token"}}]}}]}}),
    )
    .await
    .unwrap();
    let uid = pod.metadata.uid.clone().unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let running = eventually("the pod to run", WAIT, || async {
        let pod = pods.get("plain").await.unwrap();
        (pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).then_some(pod)
    })
    .await;
    assert_eq!(running.spec.unwrap().node_name.as_deref(), Some(NODE_NAME));

    let run = node.pod(&uid).unwrap();
    let scratch = &run.volumes["scratch"];
    assert!(scratch.starts_with("/dev/shm"), "{}", scratch.display());
    let token_file = run.volumes["token"].join("token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o440);
    let token = std::fs::read_to_string(&token_file).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], json!(["example.dev"]));
    assert_eq!(claims["kubernetes.io"]["pod"]["uid"], json!(uid));

    pods.delete("plain", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the pod to be finalised", WAIT, || async {
        pods.get_opt("plain").await.unwrap().is_none().then_some(())
    })
    .await;
    eventually("the volumes to be removed", WAIT, || async {
        (node.pod(&uid).unwrap().finished && !scratch.exists()).then_some(())
    })
    .await;
    node.stop();
}
