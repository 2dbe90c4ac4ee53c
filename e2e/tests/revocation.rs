//! Revocation means revocation for every lease kind: once a pod revokes a
//! lease, no id of that lease renews again (409), whether the renewal
//! reaches the replica that revoked it, another replica, or a replica
//! started afterwards. The record that says so is a ConfigMap in ferry's
//! namespace holding names only (and for a JWT, its token id until it
//! expires), and it goes once its pod does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ferry_broker::lease_id::LeaseKeys;
use ferry_broker::revoked_leases::REVOKED_LEASE_LABEL;
use ferry_e2e::https_client::{HttpsClient, HttpsReply};
use ferry_e2e::{
    Cluster, FERRY_NAMESPACE, LEASE_KEY, Postgres, RunningBroker, Tenant, World, eventually,
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// Planted in the Secret a kubernetesSecret lease copies.
const PLANTED: &str = "planted-revocation-token-6f1d";

/// The shared world; in the shared database a role `reader` and the
/// broker's admin role `broker_admin`.
async fn world() -> &'static World {
    Postgres::shared_with_broker_admin().await.unwrap();
    World::shared()
        .await
        .expect("the cluster, operator and broker")
}

/// The three kinds of source, each a BrokeredSecret of the owner's
/// namespace granted to `checkout` of the app namespace.
const SOURCES: [&str; 3] = ["api-key", "api-jwt", "db"];

async fn scenario(prefix: &str) -> Tenant {
    world().await;
    let database = Postgres::shared().await.unwrap();
    let tenant = Tenant::create(prefix).await.unwrap();
    tenant
        .secret("api-key", json!({"token": PLANTED}))
        .await
        .unwrap();
    tenant
        .secret(
            "db-admin",
            json!({"dsn": database.dsn("broker_admin", "admin-password")}),
        )
        .await
        .unwrap();
    for secret in [
        tenant
            .brokered_secret("api-key")
            .kubernetes_secret("api-key"),
        tenant.brokered_secret("api-jwt").jwt(&["orders"]),
        tenant
            .brokered_secret("db")
            .postgres("db-admin", "dsn")
            .member_of(&["reader"]),
    ] {
        tenant.create_brokered_secret(secret).await.unwrap();
    }
    tenant.grant("checkout", &SOURCES).await.unwrap();
    tenant
}

/// Issues a lease of `name`, retried while the broker's indexes catch up,
/// and returns its id.
async fn issue(broker: &HttpsClient, token: &str, owner: &str, name: &str) -> String {
    let body =
        serde_json::to_vec(&json!({"secrets": [{"namespace": owner, "name": name}]})).unwrap();
    eventually(&format!("a lease of {name}"), WAIT, || async {
        let reply = broker
            .request("POST", "/v1/leases", Some(token), &body)
            .await
            .unwrap();
        (reply.status == 200).then(|| {
            reply.json().unwrap()["leases"][0]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
    })
    .await
}

async fn renew(broker: &HttpsClient, token: &str, id: &str) -> HttpsReply {
    broker
        .request("POST", &format!("/v1/leases/{id}/renew"), Some(token), b"")
        .await
        .unwrap()
}

async fn revoke(broker: &HttpsClient, token: &str, id: &str) -> HttpsReply {
    broker
        .request("DELETE", &format!("/v1/leases/{id}"), Some(token), b"")
        .await
        .unwrap()
}

/// Asserts that renewing `id` is refused as revoked.
fn refused_as_revoked(reply: &HttpsReply, what: &str) {
    let body: Value = reply.json().unwrap();
    assert_eq!(reply.status, 409, "{what}: {body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("was revoked"), "{what}: {message}");
}

/// The revocation records in ferry's namespace.
async fn records(client: &kube::Client) -> Vec<ConfigMap> {
    Api::<ConfigMap>::namespaced(client.clone(), FERRY_NAMESPACE)
        .list(&ListParams::default().labels(&format!("{REVOKED_LEASE_LABEL}=true")))
        .await
        .unwrap()
        .items
}

#[tokio::test]
async fn a_revoked_lease_of_every_kind_never_renews_on_any_replica_or_after_a_restart() {
    let tenant = scenario("revoked").await;
    let cluster = Cluster::shared().await.unwrap();
    let first = world().await.broker.client().unwrap();
    let second_replica = RunningBroker::start(cluster, LeaseKeys::new(&LEASE_KEY, &[])).unwrap();
    let second = second_replica.client().unwrap();
    let (pod, token) = tenant.pod("api", "checkout").await.unwrap();
    let pod_uid = pod.metadata.uid.clone().unwrap();

    let mut revoked = Vec::new();
    for name in SOURCES {
        let issued = issue(&first, &token, &tenant.owner, name).await;
        // A renewal gives a new id of the same lease; revoking that one
        // must also void the id it was renewed from.
        // (Ids say when they were issued, to the second: one renewed in
        // the second it was issued in is the same id.)
        let current = eventually("a renewal with a new id", WAIT, || async {
            let renewed = renew(&first, &token, &issued).await;
            assert_eq!(renewed.status, 200, "{name}: {:?}", renewed.json());
            let id = renewed.json().unwrap()["leases"][0]["id"]
                .as_str()
                .unwrap()
                .to_owned();
            (id != issued).then_some(id)
        })
        .await;
        let reply = revoke(&first, &token, &current).await;
        assert_eq!(reply.status, 204, "{name}: {:?}", reply.json());

        refused_as_revoked(&renew(&first, &token, &current).await, name);
        refused_as_revoked(&renew(&second, &token, &current).await, name);
        refused_as_revoked(&renew(&second, &token, &issued).await, name);
        // Revoking again is no error.
        assert_eq!(revoke(&second, &token, &current).await.status, 204);
        revoked.push((name, issued, current));
    }

    // A lease that was not revoked still renews on either replica.
    let live = issue(&second, &token, &tenant.owner, "api-key").await;
    assert_eq!(renew(&first, &token, &live).await.status, 200);

    // A replica started after the revocations knows of them too.
    second_replica.stop();
    let restarted = RunningBroker::start(cluster, LeaseKeys::new(&LEASE_KEY, &[])).unwrap();
    let third = restarted.client().unwrap();
    for (name, issued, current) in &revoked {
        refused_as_revoked(&renew(&third, &token, issued).await, name);
        refused_as_revoked(&renew(&third, &token, current).await, name);
    }

    // The records name the pod and the secret, and hold nothing else.
    let ours: Vec<ConfigMap> = records(&tenant.client)
        .await
        .into_iter()
        .filter(|record| record.data.as_ref().unwrap()["pod"] == pod_uid)
        .collect();
    assert_eq!(ours.len(), SOURCES.len(), "one record per revoked lease");
    for record in &ours {
        let data = record.data.as_ref().unwrap();
        // A JWT's record also names its token, published as revoked.
        let keys: Vec<&String> = data.keys().collect();
        if data["secret"].ends_with("/api-jwt") {
            assert_eq!(keys, ["jti", "jti-expires", "pod", "secret", "until"]);
        } else {
            assert_eq!(keys, ["pod", "secret", "until"], "{data:?}");
        }
        assert!(data["secret"].starts_with(&format!("{}/", tenant.owner)));
        assert!(!serde_json::to_string(record).unwrap().contains(PLANTED));
    }
}

#[tokio::test]
async fn the_records_of_revoked_leases_go_when_their_pod_does() {
    let tenant = scenario("records").await;
    let broker = world().await.broker.client().unwrap();
    let (pod, token) = tenant.pod("api", "checkout").await.unwrap();
    let pod_uid = pod.metadata.uid.clone().unwrap();
    // (A JWT's record stays until its token expires: see
    // revocation_orders.rs.)
    let id = issue(&broker, &token, &tenant.owner, "api-key").await;
    assert_eq!(revoke(&broker, &token, &id).await.status, 204);
    let of_pod = |records: Vec<ConfigMap>| {
        records
            .into_iter()
            .filter(|record| record.data.as_ref().unwrap()["pod"] == pod_uid)
            .count()
    };
    assert_eq!(of_pod(records(&tenant.client).await), 1);

    Api::<Pod>::namespaced(tenant.client.clone(), &tenant.app)
        .delete("api", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually("the pod's revocation record to go", WAIT, || async {
        (of_pod(records(&tenant.client).await) == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_terminating_pods_revocation_needs_and_leaves_no_record() {
    let tenant = scenario("ending").await;
    let broker = world().await.broker.client().unwrap();
    let (pod, token) = tenant.pod("api", "checkout").await.unwrap();
    let pod_uid = pod.metadata.uid.clone().unwrap();
    let id = issue(&broker, &token, &tenant.owner, "api-key").await;
    // A finalizer keeps the pod terminating, as a running pod's containers
    // do while they stop.
    let pods = Api::<Pod>::namespaced(tenant.client.clone(), &tenant.app);
    let hold = |finalizers: Value| {
        kube::api::Patch::Merge(json!({"metadata": {"finalizers": finalizers}}))
    };
    pods.patch(
        "api",
        &Default::default(),
        &hold(json!(["ferry.dev/e2e-hold"])),
    )
    .await
    .unwrap();
    pods.delete("api", &DeleteParams::default()).await.unwrap();
    let renewed = eventually("the broker to see the pod terminating", WAIT, || async {
        let reply = renew(&broker, &token, &id).await;
        (reply.status == 401).then_some(reply)
    })
    .await;
    assert!(
        renewed.json().unwrap()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("terminating"),
        "a terminating pod is refused renewal"
    );
    assert_eq!(revoke(&broker, &token, &id).await.status, 204);
    let of_pod = records(&tenant.client)
        .await
        .into_iter()
        .filter(|record| record.data.as_ref().unwrap()["pod"] == pod_uid)
        .count();
    assert_eq!(of_pod, 0, "a record for a pod that can never renew");
    pods.patch("api", &Default::default(), &hold(json!(null)))
        .await
        .unwrap();
}
