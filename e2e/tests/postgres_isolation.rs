//! One tenant's database cannot stall another's: next to a BrokeredSecret
//! whose admin connection string points at a black hole (a loopback
//! listener that accepts and never answers), a working one keeps issuing
//! fast while requests and reaper passes keep running into the black hole;
//! and a ferry role the reaper cannot drop does not keep it from dropping
//! the others. Real apiserver, real PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::time::{Duration, Instant};

use ferry_broker::lease_id::LeaseKeys;
use ferry_contract::{BROKERABLE, BROKERABLE_LABEL, DEFAULT_BROKER_AUDIENCE};
use ferry_e2e::https_client::HttpsClient;
use ferry_e2e::{
    Cluster, Postgres, RunningBroker, RunningOperator, Subject, capture_logs,
    create_brokered_secret_from, create_object, eventually, grant_to, install_crds,
    pod_bound_token,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Client;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// A loopback port that accepts connections and never says a word.
fn black_hole() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    port
}

/// An admin Secret holding `dsn`, opted in to brokering.
async fn admin_secret(client: &Client, namespace: &str, name: &str, dsn: &str) {
    create_object::<Secret>(
        client,
        namespace,
        json!({"metadata": {"name": name, "labels": {BROKERABLE_LABEL: BROKERABLE}},
               "stringData": {"dsn": dsn}}),
    )
    .await
    .unwrap();
}

async fn issue(broker: &HttpsClient, token: &str, owner: &str, name: &str) -> (u16, Value) {
    let body =
        serde_json::to_vec(&json!({"secrets": [{"namespace": owner, "name": name}]})).unwrap();
    let reply = broker
        .request("POST", "/v1/leases", Some(token), &body)
        .await
        .unwrap();
    (reply.status, reply.json().unwrap_or(Value::Null))
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|line| line.starts_with(line_start))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_black_holed_database_does_not_slow_another_tenants_issue_or_reaping() {
    capture_logs();
    let database = Postgres::shared().await.unwrap();
    database
        .admin()
        .await
        .unwrap()
        .batch_execute(
            "CREATE ROLE iso_reader NOLOGIN;
             CREATE ROLE iso_admin LOGIN CREATEROLE PASSWORD 'iso-admin-password';
             GRANT iso_reader TO iso_admin WITH ADMIN OPTION;
             GRANT pg_signal_backend TO iso_admin;",
        )
        .await
        .unwrap();
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    install_crds(&client).await.unwrap();
    let _operator = RunningOperator::start(cluster.config().clone()).unwrap();
    let running = RunningBroker::start(cluster, LeaseKeys::new(&[9; 32], &[])).unwrap();
    let broker = running.client().unwrap();

    let dark = cluster.create_namespace("iso-dark").await.unwrap();
    let lit = cluster.create_namespace("iso-lit").await.unwrap();
    let app = cluster.create_namespace("iso-app").await.unwrap();
    let port = black_hole();
    admin_secret(
        &client,
        &dark,
        "db-admin",
        &format!("postgres://iso_admin:x@127.0.0.1:{port}/postgres?sslmode=disable"),
    )
    .await;
    admin_secret(
        &client,
        &lit,
        "db-admin",
        &database.dsn("iso_admin", "iso-admin-password"),
    )
    .await;
    // Each tenant's pods run as a service account of their own: the
    // broker's rate limit is per service account.
    for (owner, account) in [(&dark, "dark"), (&lit, "lit")] {
        create_brokered_secret_from(
            &client,
            owner,
            "db",
            json!({"ttl": "5m", "maxTtl": "10m",
                   "source": {"postgres": {"connectionSecretRef": {"name": "db-admin"},
                                           "memberOf": ["iso_reader"]}}}),
        )
        .await
        .unwrap();
        let subject = Subject {
            namespace: &app,
            name: account,
        };
        grant_to(&client, owner, account, subject, json!([{"name": "db"}]))
            .await
            .unwrap();
    }
    let mut tokens = Vec::new();
    for account in ["dark", "lit"] {
        let pod: Pod = create_object(
            &client,
            &app,
            json!({"metadata": {"name": account, "labels": {"ferry.dev/inject": "true"}},
                   "spec": {"serviceAccountName": account,
                            "containers": [{"name": "app", "image": "app:1"}]}}),
        )
        .await
        .unwrap();
        tokens.push(
            pod_bound_token(&client, &pod, DEFAULT_BROKER_AUDIENCE, 600)
                .await
                .unwrap(),
        );
    }
    let (dark_token, token) = (tokens[0].clone(), tokens[1].clone());
    eventually("a lease from the working database", WAIT, || async {
        let (status, lease) = issue(&broker, &token, &lit, "db").await;
        if status == 200 {
            let id = lease["leases"][0]["id"].as_str().unwrap().to_owned();
            broker
                .request("DELETE", &format!("/v1/leases/{id}"), Some(&token), b"")
                .await
                .unwrap();
            Some(())
        } else {
            None
        }
    })
    .await;

    // The black-holed tenant asks without pause from four tasks (as fast
    // as its rate limit lets it), and is refused with the Secret named,
    // never the connection string.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut hammers = Vec::new();
    for _ in 0..4 {
        let (broker, token, dark, stop) = (
            running.client().unwrap(),
            dark_token.clone(),
            dark.clone(),
            stop.clone(),
        );
        hammers.push(tokio::spawn(async move {
            let mut refusals = Vec::new();
            while !stop.is_cancelled() {
                let body =
                    serde_json::to_vec(&json!({"secrets": [{"namespace": dark, "name": "db"}]}))
                        .unwrap();
                let Ok(reply) = broker
                    .request("POST", "/v1/leases", Some(&token), &body)
                    .await
                else {
                    break;
                };
                let message = reply
                    .json()
                    .ok()
                    .and_then(|body| body["error"]["message"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                refusals.push((reply.status, message));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            refusals
        }));
    }

    // Meanwhile the working tenant issues and revokes, across several
    // reaper passes (every 2s in the harness) that each visit the black
    // hole too.
    let failures_before = metric(
        &running.metrics_text(),
        "ferry_broker_reap_failures_total{provider=\"postgres\"}",
    );
    let mut latencies = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(16) || latencies.len() < 20 {
        let asked = Instant::now();
        let (status, lease) = issue(&broker, &token, &lit, "db").await;
        latencies.push(asked.elapsed());
        assert_eq!(status, 200, "{lease}");
        let id = lease["leases"][0]["id"].as_str().unwrap();
        let revoked = broker
            .request("DELETE", &format!("/v1/leases/{id}"), Some(&token), b"")
            .await
            .unwrap();
        assert_eq!(revoked.status, 204);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let failures_after = metric(
        &running.metrics_text(),
        "ferry_broker_reap_failures_total{provider=\"postgres\"}",
    );
    stop.cancel();
    let mut refusals = Vec::new();
    for hammer in hammers {
        refusals.extend(hammer.await.unwrap());
    }

    let mut sorted = latencies.clone();
    sorted.sort();
    let millis = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "working tenant's issue latency over {} requests in {:.1}s, next to a black hole \
         ({} refused requests, {} failed reaper visits): min {:.1} ms, p50 {:.1} ms, \
         p90 {:.1} ms, max {:.1} ms",
        sorted.len(),
        started.elapsed().as_secs_f64(),
        refusals.len(),
        failures_after - failures_before,
        millis(sorted[0]),
        millis(ferry_e2e::percentile(&sorted, 0.5)),
        millis(ferry_e2e::percentile(&sorted, 0.9)),
        millis(sorted[sorted.len() - 1]),
    );
    assert!(
        failures_after >= failures_before + 2,
        "reaper passes ran into the black hole during the measurement"
    );
    assert!(
        sorted[sorted.len() - 1] < Duration::from_secs(1),
        "the working tenant's issue stayed under a second: {latencies:?}"
    );
    // 429s are the dark tenant's own rate limit; every other answer is a
    // 503 naming the Secret.
    let unavailable: Vec<_> = refusals
        .iter()
        .filter(|(status, _)| *status != 429)
        .collect();
    assert!(!unavailable.is_empty());
    for (status, error) in unavailable {
        assert_eq!(*status, 503, "{error}");
        assert!(
            error.contains(&format!("Secret {dark}/db-admin")),
            "{error}"
        );
        assert!(!error.contains("postgres://"), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_the_reaper_cannot_drop_does_not_keep_it_from_dropping_the_rest() {
    capture_logs();
    let database = Postgres::shared().await.unwrap();
    let superuser = database.admin().await.unwrap();
    superuser
        .batch_execute(
            "CREATE ROLE rest_admin LOGIN CREATEROLE PASSWORD 'rest-admin-password';
             GRANT pg_signal_backend TO rest_admin;",
        )
        .await
        .unwrap();
    // Expired ferry roles: the first a superuser the admin may not touch,
    // then three it created itself, as the broker would have.
    let comment = "ferry:v1 pod=gone secret=x/y issued=1 expires=2";
    superuser
        .batch_execute(&format!(
            "CREATE ROLE ferry_rest_0000000000000000 SUPERUSER;
             COMMENT ON ROLE ferry_rest_0000000000000000 IS '{comment}';"
        ))
        .await
        .unwrap();
    let admin = database
        .connect_as("rest_admin", "rest-admin-password")
        .await
        .unwrap();
    let droppable = [
        "ferry_rest_0000000000000001",
        "ferry_rest_0000000000000002",
        "ferry_rest_0000000000000003",
    ];
    for role in droppable {
        admin
            .batch_execute(&format!(
                "CREATE ROLE {role} NOLOGIN; COMMENT ON ROLE {role} IS '{comment}';"
            ))
            .await
            .unwrap();
    }

    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    install_crds(&client).await.unwrap();
    let owner = cluster.create_namespace("rest").await.unwrap();
    admin_secret(
        &client,
        &owner,
        "db-admin",
        &database.dsn("rest_admin", "rest-admin-password"),
    )
    .await;
    create_brokered_secret_from(
        &client,
        &owner,
        "db",
        json!({"source": {"postgres": {"connectionSecretRef": {"name": "db-admin"}}}}),
    )
    .await
    .unwrap();
    let running = RunningBroker::start(cluster, LeaseKeys::new(&[10; 32], &[])).unwrap();
    eventually("the droppable roles to be reaped", WAIT, || async {
        let left = superuser
            .query(
                "SELECT rolname::text FROM pg_roles WHERE rolname LIKE 'ferry\\_rest\\_%' ORDER BY 1",
                &[],
            )
            .await
            .unwrap();
        let left: Vec<String> = left.iter().map(|row| row.get(0)).collect();
        (left == ["ferry_rest_0000000000000000"]).then_some(())
    })
    .await;
    // The role it could not drop is counted (and retried) on every pass.
    eventually("a counted reap failure", WAIT, || async {
        let failures = metric(
            &running.metrics_text(),
            "ferry_broker_reap_failures_total{provider=\"postgres\"}",
        );
        (failures >= 1).then_some(())
    })
    .await;
    superuser
        .batch_execute("DROP ROLE ferry_rest_0000000000000000")
        .await
        .unwrap();
}
