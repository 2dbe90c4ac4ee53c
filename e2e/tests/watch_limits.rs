//! Revocation watches do not crowd out issuance: every running pod holds
//! one request open to the broker, and those held requests count against
//! `--max-watches` (and two per pod), not against the connection limits
//! issuance and renewal need. Against the real apiserver, with a broker
//! whose connection limits are smaller than the watches it holds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ferry_broker::held_watches::{MAX_WATCHES_PER_POD, RETRY_AFTER_SECONDS};
use ferry_broker::lease_id::{LeaseKeys, generate_lease_key};
use ferry_broker::routes::default_rate_limit;
use ferry_contract as contract;
use ferry_e2e::https_client::HttpsClient;
use ferry_e2e::{
    BrokerLimits, Cluster, RunningBroker, error_message, install_crds, pod_bound_token,
};
use ferry_runtime::serving::ServingLimits;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;

/// Long enough to bound a hang, never a measure of speed.
const WAIT: Duration = Duration::from_secs(60);

/// Connections the broker serves at once, from all clients and from one
/// address (every client here is 127.0.0.1).
const MAX_CONNECTIONS: usize = 4;
/// Watches the broker holds at once: more than its connections.
const MAX_WATCHES: usize = 6;

/// Creates an opted-in pod (no webhook here, never scheduled: the broker
/// only needs it to exist) and returns a token bound to it for the
/// broker's audience.
async fn pod_token(client: &kube::Client, ns: &str, name: &str) -> String {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {contract::INJECT_LABEL: "true"}},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
    }))
    .unwrap();
    let pod = Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    pod_bound_token(client, &pod, contract::DEFAULT_BROKER_AUDIENCE, 600)
        .await
        .unwrap()
}

/// Starts a watch of no leases (held for its whole wait) on a connection of
/// its own; resolves with the broker's answer.
fn watch(
    broker: &HttpsClient,
    token: &str,
) -> tokio::task::JoinHandle<ferry_e2e::https_client::HttpsReply> {
    let (broker, token) = (broker.clone(), token.to_owned());
    tokio::spawn(async move {
        broker
            .request(
                "POST",
                contract::wire::WATCH_PATH,
                Some(&token),
                br#"{"leases":[],"waitSeconds":60}"#,
            )
            .await
            .unwrap()
    })
}

/// The value of the broker's `ferry_broker_revocation_watches` gauge.
fn held(broker: &RunningBroker) -> u64 {
    broker
        .metrics_text()
        .lines()
        .find(|line| line.starts_with("ferry_broker_revocation_watches "))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn held_watches_beyond_the_connection_limit_leave_issuance_served_and_are_bounded_per_pod_and_replica()
 {
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    install_crds(&client).await.unwrap();
    let ns = cluster.create_namespace("watch-limits").await.unwrap();
    let process = RunningBroker::start_limited(
        cluster,
        cluster.config().clone(),
        LeaseKeys::new(&generate_lease_key().unwrap(), &[]),
        default_rate_limit(),
        BrokerLimits {
            serving: ServingLimits {
                max_connections: MAX_CONNECTIONS,
                max_connections_per_address: MAX_CONNECTIONS,
                ..ServingLimits::default()
            },
            max_watches: MAX_WATCHES,
            ..BrokerLimits::default()
        },
    )
    .unwrap();
    let broker = process.client().unwrap();
    let mut tokens = Vec::new();
    for pod in ["one", "two", "three", "four"] {
        let token = pod_token(&client, &ns, pod).await;
        // Known to the broker once its pod watch has the pod: not 401.
        ferry_e2e::eventually("the broker to know the pod", WAIT, || async {
            let reply = broker
                .request("POST", "/v1/leases", Some(&token), br#"{"secrets":[]}"#)
                .await
                .unwrap();
            (reply.status != 401).then_some(())
        })
        .await;
        tokens.push(token);
    }

    // Two watches from the first pod are held; a third is refused, with
    // the time to wait before asking again.
    let mut watches = vec![watch(&broker, &tokens[0]), watch(&broker, &tokens[0])];
    ferry_e2e::eventually("the first pod's two watches to be held", WAIT, || async {
        (held(&process) == 2).then_some(())
    })
    .await;
    let third = tokio::time::timeout(WAIT, watch(&broker, &tokens[0]))
        .await
        .expect("a third watch from one pod was not answered")
        .unwrap();
    assert_eq!(third.status, 429, "{}", error_message(&third));
    assert_eq!(
        third.header("retry-after"),
        Some(RETRY_AFTER_SECONDS.to_string().as_str())
    );
    assert!(
        error_message(&third).contains(&format!("holds {MAX_WATCHES_PER_POD} revocation watches")),
        "{}",
        error_message(&third)
    );

    // Four more from two other pods: six held, more than the broker's four
    // connections (all from one address).
    for token in [&tokens[1], &tokens[1], &tokens[2], &tokens[2]] {
        watches.push(watch(&broker, token));
    }
    ferry_e2e::eventually("six watches to be held", WAIT, || async {
        (held(&process) == MAX_WATCHES as u64).then_some(())
    })
    .await;

    // Issuance still gets a connection and an answer (400: no secrets
    // asked for), rather than waiting in the accept queue behind watches.
    let issued = tokio::time::timeout(
        WAIT,
        broker.request("POST", "/v1/leases", Some(&tokens[3]), br#"{"secrets":[]}"#),
    )
    .await
    .expect("issuance waited behind held watches")
    .unwrap();
    assert_ne!(issued.status, 401, "{}", error_message(&issued));
    assert_ne!(issued.status, 429, "{}", error_message(&issued));

    // The replica is full: another pod's watch is refused, naming the flag.
    let refused = tokio::time::timeout(WAIT, watch(&broker, &tokens[3]))
        .await
        .expect("a watch past --max-watches was not answered")
        .unwrap();
    assert_eq!(refused.status, 429, "{}", error_message(&refused));
    assert!(
        error_message(&refused).contains("--max-watches"),
        "{}",
        error_message(&refused)
    );
    assert_eq!(
        refused.header("retry-after"),
        Some(RETRY_AFTER_SECONDS.to_string().as_str())
    );

    // Clients that go away give their watches back.
    for held_watch in &watches {
        held_watch.abort();
    }
    ferry_e2e::eventually("the abandoned watches to be released", WAIT, || async {
        (held(&process) == 0).then_some(())
    })
    .await;
    let again = watch(&broker, &tokens[3]);
    ferry_e2e::eventually("a watch to be held again", WAIT, || async {
        (held(&process) == 1).then_some(())
    })
    .await;
    again.abort();
}
