//! The broker's pool of PostgreSQL admin connections, against a real
//! PostgreSQL and a real apiserver: concurrent issuance opens more than
//! one admin connection and never more than `--postgres-admin-connections`
//! (the admin role's backends in `pg_stat_activity`), and after the admin
//! credential is rotated every pooled connection is a new one, logged in
//! with the new password. Its own test binary: its broker rotates.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::time::Duration;

use ferry_broker::auth::ReviewLimits;
use ferry_broker::lease_id::LeaseKeys;
use ferry_e2e::https_client::HttpsClient;
use ferry_e2e::{
    BrokerLimits, Cluster, Postgres, RunningBroker, Subject, broker_pod, create_object,
    direct_grant, eventually, install_crds, rotatable_orders_db,
};
use governor::Quota;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// The pool size the broker is given: not the default, so the bound seen
/// is the flag's.
const POOL: i64 = 3;

/// Pods asking at once; each asks twice per burst.
const PODS: usize = 12;

/// PIDs of the backends the admin role `pool_admin` has open.
async fn admin_backends(postgres: &Postgres) -> HashSet<i32> {
    postgres
        .admin()
        .await
        .unwrap()
        .query(
            "SELECT pid FROM pg_stat_activity WHERE usename = 'pool_admin'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Every pod asks for two leases at once; all must be issued. Returns the
/// most admin backends seen open while they were being issued.
async fn burst(broker: &HttpsClient, tokens: &[String], body: &[u8], postgres: &Postgres) -> usize {
    let asks = tokens.iter().chain(tokens).map(|token| async move {
        let reply = broker
            .request("POST", "/v1/leases", Some(token), body)
            .await
            .unwrap();
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    });
    let watch = async {
        let mut most = 0;
        for _ in 0..20 {
            most = most.max(admin_backends(postgres).await.len());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        most
    };
    let (_, most) = tokio::join!(futures::future::join_all(asks), watch);
    most.max(admin_backends(postgres).await.len())
}

#[tokio::test]
async fn the_pool_opens_several_admin_connections_up_to_its_size_and_renews_them_all_on_rotation() {
    let postgres = Postgres::shared().await.unwrap();
    postgres
        .admin()
        .await
        .unwrap()
        .batch_execute(
            "CREATE ROLE pool_reader NOLOGIN;
             CREATE ROLE pool_admin LOGIN CREATEROLE PASSWORD 'pool-admin-initial';
             GRANT pool_reader TO pool_admin WITH ADMIN OPTION;
             GRANT pg_signal_backend TO pool_admin;",
        )
        .await
        .unwrap();
    let cluster = Cluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    install_crds(&client).await.unwrap();
    let ns = cluster.create_namespace("pool").await.unwrap();
    let initial = postgres.dsn("pool_admin", "pool-admin-initial");
    rotatable_orders_db(&client, &ns, &initial, "pool_reader")
        .await
        .unwrap();
    create_object::<ServiceAccount>(&client, &ns, json!({"metadata": {"name": "app"}}))
        .await
        .unwrap();
    direct_grant(
        &client,
        Subject {
            namespace: &ns,
            name: "app",
        },
        &ns,
        "orders-db",
        "app",
        "orders-db-for-app",
    )
    .await
    .unwrap();
    let mut tokens = Vec::new();
    for n in 0..PODS {
        tokens.push(
            broker_pod(&client, &ns, &format!("app-{n}"), "app")
                .await
                .unwrap()
                .1,
        );
    }
    // Every pod asks from 127.0.0.1: no limit should refuse the bursts.
    let many = Quota::per_second(NonZeroU32::new(10_000).unwrap());
    let broker = RunningBroker::start_limited(
        &cluster,
        cluster.config().clone(),
        LeaseKeys::new(&[9; 32], &[]),
        many,
        BrokerLimits {
            reviews: ReviewLimits {
                global: many,
                per_address: many,
            },
            postgres_admin_connections: usize::try_from(POOL).unwrap(),
            ..BrokerLimits::default()
        },
    )
    .unwrap();
    let https = broker.client().unwrap();
    let body =
        serde_json::to_vec(&json!({"secrets": [{"namespace": ns, "name": "orders-db"}]})).unwrap();
    // The broker's indexes catch up first.
    eventually("the broker to issue", WAIT, || async {
        let reply = https
            .request("POST", "/v1/leases", Some(&tokens[0]), &body)
            .await
            .ok()?;
        (reply.status == 200).then_some(())
    })
    .await;

    // Concurrent asks open more than one connection, never more than
    // the pool's size; a pod may hold 8 leases, so at most three bursts.
    let mut opened = 0;
    for _ in 0..3 {
        let most = burst(&https, &tokens, &body, postgres).await;
        assert!(
            most <= usize::try_from(POOL).unwrap(),
            "{most} admin connections open with a pool of {POOL}"
        );
        opened = admin_backends(postgres).await.len();
        if opened > 1 {
            break;
        }
    }
    assert!(
        opened > 1,
        "{} pods asking twice at once left {opened} admin connection(s) open",
        PODS
    );
    let before = admin_backends(postgres).await;

    // Rotate the admin credential on demand and wait until it is done.
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    Api::<ferry_api::resources::BrokeredSecret>::namespaced(client.clone(), &ns)
        .patch(
            "orders-db",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "ferry.dev/rotate-admin-credential": "pool-test"}}})),
        )
        .await
        .unwrap();
    eventually("the admin credential to be rotated", WAIT, || async {
        let secret = secrets.get("db-admin").await.ok()?;
        let data = secret.data?;
        let dsn = String::from_utf8(data.get("dsn")?.0.clone()).ok()?;
        (dsn != initial && !data.contains_key("dsn.next")).then_some(())
    })
    .await;
    let old = postgres
        .connect_as("pool_admin", "pool-admin-initial")
        .await;
    assert!(old.is_err(), "the old admin password no longer logs in");

    // Issuing goes on; every connection the pool had before is closed,
    // and those open are new ones, which only the new password opens.
    burst(&https, &tokens, &body, postgres).await;
    let after = eventually(
        "every pooled admin connection to be replaced",
        WAIT,
        || async {
            let now = admin_backends(postgres).await;
            now.is_disjoint(&before).then_some(now)
        },
    )
    .await;
    assert!(
        !after.is_empty() && after.len() <= usize::try_from(POOL).unwrap(),
        "{} admin connections after the rotation, with a pool of {POOL}",
        after.len()
    );
    broker.stop();
}
