//! With the broker stopped, a running pod on the real node keeps its
//! secret until the lease's expiry, then the sidecar removes it and stops
//! reporting ready. Its own test binary: stopping the broker would break
//! any other test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ferry_api::testing;
use ferry_contract::{BROKERABLE, BROKERABLE_LABEL, SIDECAR_CONTAINER_NAME};
use ferry_e2e::sidecar_process::expiry_in_log;
use ferry_e2e::{create_brokered_secret, create_object, grant};
use k8s_openapi::api::core::v1::Secret;
use serde_json::json;

mod real_pods_common;

use real_pods_common::*;

/// The value behind the secret, which no log may show.
const OUTAGE_VALUE: &str = "planted-outage-value-0c5e";

#[tokio::test]
async fn without_the_broker_a_secret_is_kept_until_its_expiry_then_removed() {
    let env = env().await;
    let client = env.cluster.client().unwrap();
    let ns = env.cluster.create_namespace("outage").await.unwrap();
    create_object::<Secret>(
        &client,
        &ns,
        json!({"metadata": {"name": "api-key", "labels": {BROKERABLE_LABEL: BROKERABLE}},
               "stringData": {"token": OUTAGE_VALUE}}),
    )
    .await
    .unwrap();
    let api_key = testing::brokered_secret(&ns, "api-key")
        .ttl("20s")
        .kubernetes_secret("api-key")
        .build();
    create_brokered_secret(&client, &api_key).await.unwrap();
    let policy = testing::access_policy(&ns, "app")
        .service_account(&ns, "app")
        .secret("api-key")
        .build();
    grant(&client, policy).await.unwrap();

    // The app watches its file, then the ready marker the sidecar's probe
    // reads, and says when each went.
    let script = watch_expiry_script("api-key/token");
    create_app(&client, &ns, ("app", "app"), &["api-key".into()], &script).await;
    wait_log_line(&client, &ns, "app", "started").await;

    env.stack.stop_broker();
    let stopped_at = k8s_openapi::jiff::Timestamp::now().as_second();
    let log = wait_log_line(&client, &ns, "app", "not-ready").await;
    let gone_at: i64 = log
        .lines()
        .skip_while(|line| *line != "gone")
        .nth(1)
        .and_then(|line| line.parse().ok())
        .unwrap_or_else(|| panic!("no time after 'gone' in the app's log:\n{log}"));
    // Kept to the end of the last lease the sidecar got, which outlasted
    // the broker: the file stayed through the outage, not only before it.
    let sidecar = container_log(&client, &ns, "app", SIDECAR_CONTAINER_NAME).await;
    let (expires_at, _) = expiry_in_log(&sidecar, &format!("{ns}/api-key"))
        .unwrap_or_else(|| panic!("no expiry in the sidecar's log:\n{sidecar}"));
    assert!(
        expires_at.as_second() > stopped_at,
        "the lease expired at {expires_at}, before the broker stopped at {stopped_at}"
    );
    assert!(
        gone_at >= expires_at.as_second() - 1,
        "the file went at {gone_at}, before the lease's expiry at {expires_at}"
    );
    assert_not_in_logs(
        &[("the secret's value", OUTAGE_VALUE)],
        &[("the sidecar's", sidecar)],
    );
}
