//! With every component logging at TRACE — the operator, the broker and the
//! webhook in this process through the filter their binaries install; the
//! sidecar, which has no levels, as the kubelet keeps its container's log —
//! a pod on the real node gets a Secret's value, a PostgreSQL role and a JWT
//! (renewed), gives them back when deleted, and no secret value, password,
//! SCRAM verifier, bearer token or JWT appears in any of those logs. Its own
//! test binary: the first capture of a binary decides the level.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use ferry_contract::{SIDECAR_CONTAINER_NAME, TOKEN_FILE_NAME, TOKEN_VOLUME_NAME};
use ferry_e2e::{Postgres, capture_logs_at, captured_logs, eventually};
use serde_json::json;

mod real_pods_common;

use real_pods_common::*;

#[tokio::test]
async fn no_secret_reaches_any_log_with_every_component_at_trace() {
    capture_logs_at("trace");
    let (client, owner, app) = scenario("trace").await;
    let node = env().await.node;
    let database = Postgres::shared().await.unwrap();
    let asked =
        ["orders-api-key", "orders-db", "orders-token"].map(|name| format!("{owner}/{name}"));
    create_pod(
        &client,
        &app,
        &opted_in(
            "api",
            &asked,
            pod_spec(
                "checkout",
                json!({"runAsUser": 1000, "fsGroup": 1000}),
                "echo started\ntrap 'exit 0' TERM\nsleep 3600 & wait",
            ),
        ),
    )
    .await;
    wait_log_line(&client, &app, "api", "started").await;
    let pod = wait_app_running(&client, &app, "api").await;
    let uid = pod.metadata.uid.clone().unwrap();
    let sidecar = follow_log(&client, &app, "api", SIDECAR_CONTAINER_NAME);

    // What must never be logged, read from where it legitimately is: the
    // pod's volumes on the node.
    let file = |path| String::from_utf8(secret_file(node, &uid, path).unwrap()).unwrap();
    assert_eq!(file("orders-api-key/token"), PLANTED);
    let username = file("orders-db/username");
    let password = file("orders-db/password");
    let first_jwt = file("orders-token/token");
    let bearer_file = node
        .pod_volume(&uid, TOKEN_VOLUME_NAME)
        .unwrap()
        .join(TOKEN_FILE_NAME);
    let bearer = std::fs::read_to_string(&bearer_file).unwrap();
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
    // Renewed too: the 10 s JWT is replaced while the pod runs.
    let renewed_jwt = eventually("the JWT to be renewed", WAIT, || async {
        let current = String::from_utf8(secret_file(node, &uid, "orders-token/token")?).ok()?;
        (!current.is_empty() && current != first_jwt).then_some(current)
    })
    .await;

    // Revoke and reap too: delete the pod and wait for the sidecar's end.
    delete_pod(&client, &app, "api", &uid).await;
    let sidecar = sidecar_log_to_end(sidecar).await;
    eventually("the role to be dropped", WAIT, || async {
        (!role_exists(&username).await).then_some(())
    })
    .await;

    let ours = captured_logs();
    // The capture really is at TRACE: ferry's own debug lines are there.
    assert!(ours.contains("\"level\":\"DEBUG\""), "not logging at debug");
    assert!(ours.contains("\"level\":\"TRACE\""), "not logging at trace");
    let jwt_signatures: BTreeSet<String> = [&first_jwt, &renewed_jwt, &bearer]
        .iter()
        .map(|token| token.trim().rsplit('.').next().unwrap().to_owned())
        .collect();
    let mut values = vec![
        ("the Secret's value", PLANTED.to_owned()),
        ("the admin password", ADMIN_PASSWORD.to_owned()),
        ("the issued password", password),
        ("the SCRAM verifier", verifier.clone()),
        (
            "the SCRAM verifier's keys",
            verifier.rsplit('$').next().unwrap().to_owned(),
        ),
        ("the minted JWT", first_jwt.clone()),
        ("the renewed JWT", renewed_jwt.clone()),
        ("the pod's bearer token", bearer.trim().to_owned()),
    ];
    values.extend(
        jwt_signatures
            .into_iter()
            .map(|signature| ("a token's signature", signature)),
    );
    println!(
        "checked {} bytes of ferry's logs at TRACE and {} of the sidecar's",
        ours.len(),
        sidecar.len()
    );
    let values: Vec<(&str, &str)> = values
        .iter()
        .map(|(what, value)| (*what, value.as_str()))
        .collect();
    assert_not_in_logs(
        &values,
        &[("ferry's components'", ours), ("the sidecar's", sidecar)],
    );
}
