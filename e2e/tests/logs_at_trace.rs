//! With every component logging at TRACE — the operator, the broker and the
//! webhook in this process through the filter their binaries install, the
//! sidecar as the node stand-in runs it — a pod gets a Secret's value, a
//! PostgreSQL role and a JWT, and no secret value, password, SCRAM
//! verifier, bearer token or JWT appears in any log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::Engine as _;
use ferry_contract::{
    BROKERABLE, BROKERABLE_LABEL, SECRETS_VOLUME_NAME, TOKEN_FILE_NAME, TOKEN_VOLUME_NAME,
};
use ferry_e2e::{
    Cluster, PodRun, Postgres, Stack, Subject, capture_logs_at, captured_logs,
    create_brokered_secret_from, create_object, eventually, grant_to,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

/// The value planted in the Secret behind `orders-api-key`.
const PLANTED: &str = "planted-trace-value-7c41e9";

/// The password of the broker's admin role (not a superuser: the broker
/// refuses one).
const TRACE_ADMIN_PASSWORD: &str = "planted-trace-admin-password";

fn file(run: &PodRun, path: &str) -> String {
    let file = run.seen_at_start[SECRETS_VOLUME_NAME]
        .iter()
        .find(|file| file.path == path)
        .unwrap_or_else(|| panic!("{path} missing: {:?}", run.seen_at_start));
    String::from_utf8(file.content.clone()).unwrap()
}

#[tokio::test]
async fn no_secret_reaches_any_log_with_every_component_at_trace() {
    capture_logs_at("trace");
    let database = Postgres::shared().await.unwrap();
    database
        .admin()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE ROLE trace_reader NOLOGIN;
             CREATE ROLE trace_admin LOGIN CREATEROLE PASSWORD '{TRACE_ADMIN_PASSWORD}';
             GRANT trace_reader TO trace_admin WITH ADMIN OPTION;"
        ))
        .await
        .unwrap();
    let cluster = Cluster::shared().await.unwrap();
    let stack = Stack::start(cluster).await.unwrap();
    let client = cluster.client().unwrap();
    let owner = cluster.create_namespace("trace-owner").await.unwrap();
    let app = cluster.create_namespace("trace-app").await.unwrap();
    for (name, data) in [
        ("api-key", json!({"token": PLANTED})),
        (
            "db-admin",
            json!({"dsn": database.dsn("trace_admin", TRACE_ADMIN_PASSWORD)}),
        ),
    ] {
        create_object::<Secret>(
            &client,
            &owner,
            json!({"metadata": {"name": name, "labels": {BROKERABLE_LABEL: BROKERABLE}},
                   "stringData": data}),
        )
        .await
        .unwrap();
    }
    for (name, spec) in [
        (
            "orders-api-key",
            json!({"source": {"kubernetesSecret": {"name": "api-key"}}}),
        ),
        (
            "orders-db",
            json!({"source": {"postgres": {"connectionSecretRef": {"name": "db-admin"},
                                           "memberOf": ["trace_reader"]}}}),
        ),
        (
            "orders-token",
            json!({"ttl": "10m", "source": {"jwt": {"audience": ["orders"]}}}),
        ),
    ] {
        create_brokered_secret_from(&client, &owner, name, spec)
            .await
            .unwrap();
    }
    let subject = Subject {
        namespace: &app,
        name: "checkout",
    };
    let secrets =
        json!([{"name": "orders-api-key"}, {"name": "orders-db"}, {"name": "orders-token"}]);
    grant_to(&client, &owner, "checkout", subject, secrets)
        .await
        .unwrap();

    let asked = ["orders-api-key", "orders-db", "orders-token"]
        .map(|name| format!("{owner}/{name}"))
        .join(",");
    let manifest: Pod = serde_json::from_value(json!({
        "metadata": {"name": "api", "labels": {"ferry.dev/inject": "true"},
                     "annotations": {"ferry.dev/secrets": asked}},
        "spec": {"serviceAccountName": "checkout",
                 "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
                 "containers": [{"name": "app", "image": "registry.example/app:1"}]},
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &app);
    let pod = eventually("the webhook to admit the pod", WAIT, || async {
        pods.create(&PostParams::default(), &manifest).await.ok()
    })
    .await;
    let uid = pod.metadata.uid.clone().unwrap();
    let run = eventually("the app to start", WAIT, || async {
        stack.node.pod(&uid).filter(|run| run.started)
    })
    .await;

    // What must never be logged, read from where it legitimately is.
    let api_key = file(&run, "orders-api-key/token");
    assert_eq!(api_key, PLANTED);
    let username = file(&run, "orders-db/username");
    let password = file(&run, "orders-db/password");
    let jwt = file(&run, "orders-token/token");
    let bearer =
        std::fs::read_to_string(run.volumes[TOKEN_VOLUME_NAME].join(TOKEN_FILE_NAME)).unwrap();
    let verifier: String = database
        .admin()
        .await
        .unwrap()
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&username],
        )
        .await
        .unwrap()
        .get(0);
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");

    // Renew, revoke and reap too: delete the pod and wait for teardown.
    pods.delete("api", &DeleteParams::default()).await.unwrap();
    let run = eventually("the pod to be torn down", WAIT, || async {
        stack.node.pod(&uid).filter(|run| run.finished)
    })
    .await;

    let ours = captured_logs();
    let sidecar = std::fs::read_to_string(&run.sidecar_log).unwrap_or_default();
    // The capture really is at TRACE: ferry's own debug lines are there.
    assert!(ours.contains("\"level\":\"DEBUG\""), "not logging at debug");
    assert!(ours.contains("\"level\":\"TRACE\""), "not logging at trace");
    let jwt_parts: Vec<&str> = jwt.split('.').collect();
    let bearer_parts: Vec<&str> = bearer.trim().split('.').collect();
    let values = [
        ("the Secret's value", PLANTED.to_owned()),
        ("the admin password", TRACE_ADMIN_PASSWORD.to_owned()),
        ("the issued password", password.clone()),
        ("the SCRAM verifier", verifier.clone()),
        (
            "the SCRAM verifier's keys",
            verifier.rsplit('$').next().unwrap().to_owned(),
        ),
        ("the minted JWT's signature", jwt_parts[2].to_owned()),
        ("the minted JWT", jwt.clone()),
        ("the pod's bearer token", bearer.trim().to_owned()),
        ("the bearer token's signature", bearer_parts[2].to_owned()),
    ];
    println!(
        "checked {} bytes of ferry's logs at TRACE and {} of the sidecar's",
        ours.len(),
        sidecar.len()
    );
    for (what, value) in &values {
        let encoded = base64::engine::general_purpose::STANDARD.encode(value);
        for (whose, log) in [("ferry's components", &ours), ("the sidecar", &sidecar)] {
            assert!(!log.contains(value.as_str()), "{what} is in {whose}' log");
            assert!(
                !log.contains(&encoded),
                "{what}, base64-encoded, is in {whose}' log"
            );
        }
    }
}
