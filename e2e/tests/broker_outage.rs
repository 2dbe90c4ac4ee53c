//! With the broker stopped, a running pod keeps its secret until the
//! lease's expiry, then the sidecar removes it and stops reporting ready.
//! Its own test binary: stopping the broker would break any other test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ferry_e2e::{Cluster, Stack, create_object, eventually};
use ferry_operator::resources::{AccessPolicy, BrokeredSecret, Grant};
use ferry_sidecar::contract::{READY_MARKER, SECRETS_VOLUME_NAME};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
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
        json!({"metadata": {"name": "api-key"}, "stringData": {"token": "outage-value"}}),
    )
    .await
    .unwrap();
    create_object::<BrokeredSecret>(
        &client,
        &ns,
        json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "BrokeredSecret",
               "metadata": {"name": "api-key"},
               "spec": {"ttl": format!("{TTL_SECONDS}s"),
                        "source": {"kubernetesSecret": {"name": "api-key"}}}}),
    )
    .await
    .unwrap();
    create_object::<AccessPolicy>(
        &client,
        &ns,
        json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "AccessPolicy",
               "metadata": {"name": "app"},
               "spec": {"subjects": [{"serviceAccount": {"name": "app", "namespace": ns}}],
                        "secrets": [{"name": "api-key"}]}}),
    )
    .await
    .unwrap();
    create_object::<ServiceAccount>(&client, &ns, json!({"metadata": {"name": "app"}}))
        .await
        .unwrap();
    let grants = Api::<Grant>::namespaced(client.clone(), &ns);
    eventually("the Grant", WAIT, || async {
        (!grants
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty())
        .then_some(())
    })
    .await;

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
