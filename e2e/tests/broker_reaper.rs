//! The reaper after a broker restart: roles orphaned while no broker ran
//! (their pod deleted, or their lease expired) are dropped by the next
//! broker, which remembers nothing; live leases and roles ferry did not
//! create are left alone. Its own test binary, so no other broker in the
//! process can do the reaping for it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::Engine as _;
use ferry_api::testing;
use ferry_broker::lease_id::LeaseKeys;
use ferry_e2e::{
    Cluster, Postgres, RunningBroker, RunningOperator, broker_pod, create_brokered_secret,
    create_object, eventually, grant, install_crds,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const KEY: [u8; 32] = [9; 32];

async fn role_exists(database: &Postgres, name: &str) -> bool {
    database.role_exists(name).await.unwrap()
}

#[tokio::test]
async fn a_restarted_broker_reaps_what_was_orphaned_while_it_was_down() {
    let database = Postgres::shared().await.unwrap();
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    install_crds(&client).await.unwrap();
    let _operator = RunningOperator::start(cluster.config().clone()).unwrap();
    database
        .admin()
        .await
        .unwrap()
        .batch_execute(
            "CREATE ROLE orders_reader NOLOGIN;
             CREATE ROLE ferry_made_by_hand LOGIN;
             CREATE ROLE reaper_admin LOGIN CREATEROLE PASSWORD 'reaper-admin-password';
             GRANT orders_reader TO reaper_admin WITH ADMIN OPTION;
             GRANT pg_signal_backend TO reaper_admin;",
        )
        .await
        .unwrap();

    let ns = cluster.create_namespace("reaper").await.unwrap();
    create_object::<Secret>(
        &client,
        &ns,
        json!({"metadata": {"name": "db-admin", "labels": {"ferry.dev/brokerable": "true"}}, "stringData": {"dsn": database.dsn("reaper_admin", "reaper-admin-password")}}),
    )
    .await
    .unwrap();
    let orders_db = testing::brokered_secret(&ns, "orders-db")
        .postgres("db-admin", "dsn")
        .member_of(&["orders_reader"])
        .build();
    create_brokered_secret(&client, &orders_db).await.unwrap();
    let policy = testing::access_policy(&ns, "app")
        .service_account(&ns, "app")
        .secret("orders-db")
        .build();
    grant(&client, policy).await.unwrap();

    let first = RunningBroker::start(cluster, LeaseKeys::new(&KEY, &[])).unwrap();
    let broker = first.client().unwrap();
    let mut roles = Vec::new();
    for (pod_name, ttl) in [("deleted", "10m"), ("expiring", "3s"), ("staying", "10m")] {
        let (_pod, token) = broker_pod(&client, &ns, pod_name, "app").await.unwrap();
        let body = serde_json::to_vec(
            &json!({"secrets": [{"namespace": ns, "name": "orders-db", "ttl": ttl}]}),
        )
        .unwrap();
        let lease: Value = eventually("a lease", WAIT, || async {
            let reply = broker
                .request("POST", "/v1/leases", Some(&token), &body)
                .await
                .unwrap();
            (reply.status == 200).then(|| reply.json().unwrap()["leases"][0].clone())
        })
        .await;
        let username = base64::engine::general_purpose::STANDARD
            .decode(lease["files"]["username"].as_str().unwrap())
            .unwrap();
        roles.push((
            String::from_utf8(username).unwrap(),
            unix(&lease["expiresAt"]),
        ));
    }
    first.stop();

    // While no broker runs: a pod is deleted, a lease expires.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    pods.delete("deleted", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually("the pod to be gone", WAIT, || async {
        pods.get_opt("deleted")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let expiring_at = roles[1].1;
    eventually("the short lease to expire", WAIT, || async {
        (k8s_openapi::jiff::Timestamp::now().as_second() > expiring_at).then_some(())
    })
    .await;
    for (role, _) in &roles {
        assert!(
            role_exists(database, role).await,
            "{role} outlived the broker"
        );
    }

    // A new broker, knowing nothing of them, reaps the two orphans.
    let second = RunningBroker::start(cluster, LeaseKeys::new(&KEY, &[])).unwrap();
    for (role, _) in &roles[..2] {
        eventually(&format!("{role} to be reaped"), WAIT, || async {
            (!role_exists(database, role).await).then_some(())
        })
        .await;
    }
    // A complete pass counts exactly one live ferry role: the staying one.
    eventually("a pass counting the one live role", WAIT, || async {
        second
            .metrics_text()
            .contains("ferry_broker_active_leases{provider=\"postgres\"} 1")
            .then_some(())
    })
    .await;
    assert!(
        role_exists(database, &roles[2].0).await,
        "a live lease was reaped"
    );
    assert!(role_exists(database, "ferry_made_by_hand").await);
}

fn unix(rfc3339: &Value) -> i64 {
    rfc3339
        .as_str()
        .unwrap()
        .parse::<k8s_openapi::jiff::Timestamp>()
        .unwrap()
        .as_second()
}
