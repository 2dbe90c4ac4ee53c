//! With the broker stopped, a running pod keeps its secret until the
//! lease's expiry, then the sidecar removes it and stops reporting ready.
//! Its own test binary: stopping the broker would break any other test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ferry_api::testing;
use ferry_contract::{READY_MARKER, SECRETS_VOLUME_NAME};
use ferry_e2e::{Cluster, Stack, create_brokered_secret, create_object, eventually, grant};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);
const TTL_SECONDS: i64 = 20;

#[tokio::test]
async fn without_the_broker_a_secret_is_kept_until_its_expiry_then_removed() {
    let cluster = Cluster::shared().await.unwrap();
    let stack = Stack::start(cluster).await.unwrap();
    let client = cluster.client().unwrap();
    let ns = cluster.create_namespace("outage").await.unwrap();
    create_object::<Secret>(
        &client,
        &ns,
        json!({"metadata": {"name": "api-key", "labels": {"ferry.dev/brokerable": "true"}}, "stringData": {"token": "outage-value"}}),
    )
    .await
    .unwrap();
    let api_key = testing::brokered_secret(&ns, "api-key")
        .ttl(&format!("{TTL_SECONDS}s"))
        .kubernetes_secret("api-key")
        .build();
    create_brokered_secret(&client, &api_key).await.unwrap();
    let policy = testing::access_policy(&ns, "app")
        .service_account(&ns, "app")
        .secret("api-key")
        .build();
    grant(&client, policy).await.unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let manifest: Pod = serde_json::from_value(json!({
        "metadata": {"name": "app", "labels": {"ferry.dev/inject": "true"},
                     "annotations": {"ferry.dev/secrets": "api-key"}},
        "spec": {"serviceAccountName": "app",
                 "containers": [{"name": "app", "image": "registry.example/app:1"}]},
    }))
    .unwrap();
    let created_at = k8s_openapi::jiff::Timestamp::now().as_second();
    let pod = eventually("the webhook to admit the pod", WAIT, || async {
        pods.create(&PostParams::default(), &manifest).await.ok()
    })
    .await;
    let uid = pod.metadata.uid.unwrap();
    let run = eventually("the app to start", WAIT, || async {
        stack.node.pod(&uid).filter(|run| run.started)
    })
    .await;
    let dir = run.volumes[SECRETS_VOLUME_NAME].clone();
    let file = dir.join("api-key/token");

    // The broker goes away before the first renewal is due.
    stack.stop_broker();
    // The lease was issued after the pod was created, so it lasts at least
    // until then + ttl: until a moment before, the file must stay.
    let keep_until = created_at + TTL_SECONDS - 2;
    while k8s_openapi::jiff::Timestamp::now().as_second() < keep_until {
        assert!(file.exists(), "the secret went before its lease expired");
        assert!(dir.join(READY_MARKER).exists());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eventually("the secret to be removed at its expiry", WAIT, || async {
        (!file.exists()).then_some(())
    })
    .await;
    assert!(!dir.join(READY_MARKER).exists(), "ready without its secret");
    let log = std::fs::read_to_string(&run.sidecar_log).unwrap();
    assert!(!log.contains("outage-value"));
}
