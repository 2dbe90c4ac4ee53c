//! An admin connection string that names no `sslmode` gets verified TLS
//! (libpq's `verify-full`), never a silent fall back to plain text: against
//! a server without TLS it is refused; against a server with TLS it is
//! verified, against the CA certificates in the admin Secret's `ca.crt`
//! when given, the system's roots otherwise. `sslmode=disable`, said
//! explicitly, still connects in the clear. Real apiserver, real PostgreSQL
//! servers with and without TLS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ferry_broker::lease_id::LeaseKeys;
use ferry_contract::{BROKERABLE, BROKERABLE_LABEL};
use ferry_e2e::{
    Cluster, Postgres, RunningBroker, RunningOperator, Subject, broker_pod, capture_logs,
    create_brokered_secret_from, create_object, eventually, grant_to, install_crds,
};
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

const SETUP: &str = "CREATE ROLE tls_reader NOLOGIN;
     CREATE ROLE tls_admin LOGIN CREATEROLE PASSWORD 'tls-admin-password';
     GRANT tls_reader TO tls_admin WITH ADMIN OPTION;
     GRANT pg_signal_backend TO tls_admin;";

/// A connection string to `port` as `tls_admin`, with `options` appended.
fn dsn(port: u16, options: &str) -> String {
    format!("postgres://tls_admin:tls-admin-password@127.0.0.1:{port}/postgres{options}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_dsn_without_sslmode_gets_verified_tls() {
    capture_logs();
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    install_crds(&client).await.unwrap();
    let plain = Postgres::shared().await.unwrap();
    plain
        .admin()
        .await
        .unwrap()
        .batch_execute(SETUP)
        .await
        .unwrap();
    let certificate = cluster
        .authority()
        .serving_cert(&["127.0.0.1"], cluster.dir(), "postgres-tls")
        .unwrap();
    let tls = Postgres::start_tls(&certificate).await.unwrap();
    tls.admin()
        .await
        .unwrap()
        .batch_execute(SETUP)
        .await
        .unwrap();
    let _operator = RunningOperator::start(cluster.config().clone()).unwrap();
    let running = RunningBroker::start(cluster, LeaseKeys::new(&[13; 32], &[])).unwrap();
    let broker = running.client().unwrap();

    let owner = cluster.create_namespace("pg-tls").await.unwrap();
    let app = cluster.create_namespace("pg-tls-app").await.unwrap();
    let ca = cluster.ca_pem();
    // BrokeredSecret name, the admin Secret's data, and how issuing ends:
    // Ok(()) issued, Err(what the 503 says).
    let cases: [(&str, Value, Result<(), &str>); 4] = [
        (
            "plain-default",
            json!({"dsn": dsn(plain.port(), "")}),
            Err("server does not support TLS"),
        ),
        (
            "plain-disabled",
            json!({"dsn": dsn(plain.port(), "?sslmode=disable")}),
            Ok(()),
        ),
        (
            "tls-with-ca",
            json!({"dsn": dsn(tls.port(), ""), "ca.crt": ca}),
            Ok(()),
        ),
        (
            "tls-system-roots",
            json!({"dsn": dsn(tls.port(), "")}),
            Err("certificate"),
        ),
    ];
    for (name, data, _) in &cases {
        create_object::<Secret>(
            &client,
            &owner,
            json!({"metadata": {"name": name, "labels": {BROKERABLE_LABEL: BROKERABLE}},
                   "stringData": data}),
        )
        .await
        .unwrap();
        create_brokered_secret_from(
            &client,
            &owner,
            name,
            json!({"source": {"postgres": {"connectionSecretRef": {"name": name},
                                           "memberOf": ["tls_reader"]}}}),
        )
        .await
        .unwrap();
    }
    let entries: Vec<Value> = cases
        .iter()
        .map(|(name, ..)| json!({"name": name}))
        .collect();
    let subject = Subject {
        namespace: &app,
        name: "checkout",
    };
    grant_to(&client, &owner, "checkout", subject, json!(entries))
        .await
        .unwrap();
    let (_pod, token) = broker_pod(&client, &app, "api", "checkout").await.unwrap();

    for (name, _, expected) in &cases {
        let body =
            serde_json::to_vec(&json!({"secrets": [{"namespace": owner, "name": name}]})).unwrap();
        let (status, message) = eventually(&format!("a decision on {name}"), WAIT, || async {
            let reply = broker
                .request("POST", "/v1/leases", Some(&token), &body)
                .await
                .unwrap();
            let message = reply
                .json()
                .ok()
                .and_then(|body| body["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let catching_up = reply.status == 401 || message.contains("has no Grant");
            (!catching_up).then_some((reply.status, message))
        })
        .await;
        match expected {
            Ok(()) => assert_eq!(status, 200, "{name}: {message}"),
            Err(says) => {
                assert_eq!(status, 503, "{name}: {message}");
                assert!(message.contains(says), "{name}: {message}");
                assert!(!message.contains("tls-admin-password"), "{name}: {message}");
            }
        }
    }
    // The verified connection really was TLS.
    let ssl: bool = tls
        .admin()
        .await
        .unwrap()
        .query_one(
            "SELECT bool_or(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'ferry-broker'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the broker's session to the TLS server uses TLS");
}
