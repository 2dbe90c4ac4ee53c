//! PostgreSQL leases at rate: the in-process broker (over HTTPS, TLS 1.3,
//! keep-alive) against a real apiserver and a real PostgreSQL, N pods'
//! tokens asking for leases of postgres BrokeredSecrets (each lease a
//! `CREATE ROLE ... IN ROLE` with its `memberOf` check and comment), for
//! pools of 1, 4 and 8 admin connections side by side:
//!
//! - closed loop at a fixed concurrency: issuances a second, p50/p99/max,
//!   and the ratio to Vault's published 221 credentials/s and 77 ms p99
//!   (its benchmark, local PostgreSQL, 4 connections);
//! - open loop at the goal rate (5 x 221 = 1,105/s) with the default pool:
//!   p99 with each latency taken from its intended send time;
//! - where the CPU went per issuance: the bench process (broker and load
//!   client), PostgreSQL, the apiserver and etcd;
//! - the reaper with 10,000 live roles (issued through the broker's API),
//!   their pods gone: one pass's duration, statements and round trips (as
//!   the server's statement log counts them) and roles dropped a second.
//!
//! Every reply must be a 200 with a lease holding `username` and
//! `password`; failures are counted and shown. Not a test: nothing is
//! asserted about the numbers. `cargo bench -p ferry-e2e --bench
//! postgres_rate` (part of `make bench`); tunable with FERRY_BENCH_SECONDS
//! (default 10), FERRY_BENCH_CONCURRENCY (default 16), FERRY_BENCH_PODS
//! (default 128), FERRY_BENCH_RATE (open loop, default 1105) and
//! FERRY_BENCH_REAP_ROLES (default 10000; 0 skips the reaper).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_api::resources::BrokeredSecret;
use ferry_broker::auth::ReviewLimits;
use ferry_broker::lease_id::LeaseKeys;
use ferry_broker::pods::PodPresence;
use ferry_broker::providers::postgres::{
    DEFAULT_ADMIN_CONNECTIONS, PostgresProvider, scram_verifier,
};
use ferry_broker::providers::secret_reader::SecretReader;
use ferry_broker::providers::{Provider as _, ReapContext};
use ferry_e2e::https_client::{HttpsClient, HttpsReply, send};
use ferry_e2e::load::{LoadReport, LoadRequest, Requests, closed_loop, open_loop};
use ferry_e2e::{
    BrokerLimits, Cluster, Postgres, RunningBroker, bench_setting, bench_tenant, broker_pod,
    create_object, install_crds,
};
use futures::StreamExt as _;
use governor::Quota;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde_json::json;

/// Vault's published benchmark: dynamic PostgreSQL credentials a second
/// and their p99, on a local setup with its default 4 connections.
const VAULT_RATE: f64 = 221.0;
const VAULT_P99_MS: f64 = 77.0;
/// The goal: five times Vault's rate with a p99 under 20 ms.
const GOAL_RATE: f64 = 5.0 * VAULT_RATE;
const GOAL_P99_MS: f64 = 20.0;

/// Pool sizes compared.
const POOLS: [usize; 3] = [1, 4, 8];

/// BrokeredSecrets the pods ask for: a pod holds at most 8 live leases of
/// one secret, so pods x secrets x 8 bounds the leases of one broker.
const SECRETS: usize = 64;

/// The broker's admin role in the database.
const ADMIN: &str = "bench_admin";
const ADMIN_PASSWORD: &str = "bench-admin-password";

/// What production would run with, and what this benchmark changes.
const OVERRIDES: &[(&str, &str)] = &[
    (
        "--rate-limit 1000000",
        "one service account plays every pod here; its default 50 requests/s would measure the limiter",
    ),
    (
        "--review-rate-limit(-per-address) 100000",
        "every pod connects from 127.0.0.1; in a cluster each pod has its own address",
    ),
    (
        "log_statement = none for the broker's role",
        "the harness's PostgreSQL logs every statement for the tests; the reaper pass turns it on to count",
    ),
    (
        "fsync = off, synchronous_commit = off",
        "the harness's PostgreSQL throws its data away; a production server adds its disk's flush to each commit",
    ),
    (
        "reaper every 2 s",
        "the harness's broker; production passes every 60 s",
    ),
];

/// A 200 holding one lease with a username and a password.
fn one_role(reply: &HttpsReply) -> bool {
    reply.status == 200
        && reply.json().is_ok_and(|body| {
            body["leases"].as_array().is_some_and(|leases| {
                leases.len() == 1
                    && leases[0]["files"]["username"].is_string()
                    && leases[0]["files"]["password"].is_string()
            })
        })
}

/// CPU seconds (user + system) of the processes whose process group is
/// `group` and of their children (a PostgreSQL backend starts a session
/// of its own), or of this process.
fn cpu_seconds(group: Option<i32>) -> f64 {
    // (pid, parent, process group, user + system ticks)
    let parse = |stat: &str| -> Option<(i32, i32, i32, u64)> {
        let pid = stat.split_whitespace().next()?.parse().ok()?;
        // Fields after the command's closing parenthesis: state is 1st.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let parent = fields.get(1)?.parse().ok()?;
        let pgrp = fields.get(2)?.parse().ok()?;
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((pid, parent, pgrp, utime + stime))
    };
    let total: u64 = match group {
        None => std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| parse(&stat))
            .map_or(0, |(.., t)| t),
        Some(group) => {
            let all: Vec<(i32, i32, i32, u64)> = std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
                .filter_map(|stat| parse(&stat))
                .collect();
            let members: Vec<i32> = all
                .iter()
                .filter(|(_, _, pgrp, _)| *pgrp == group)
                .map(|(pid, ..)| *pid)
                .collect();
            all.iter()
                .filter(|(_, parent, pgrp, _)| *pgrp == group || members.contains(parent))
                .map(|(.., t)| t)
                .sum()
        }
    };
    total as f64 / 100.0
}

/// CPU used by the bench process, PostgreSQL, and the apiserver with etcd.
#[derive(Clone, Copy)]
struct Cpu {
    bench: f64,
    postgres: f64,
    apiserver: f64,
}

impl Cpu {
    fn now(postgres: &Postgres, cluster: &Cluster) -> Self {
        Self {
            bench: cpu_seconds(None),
            postgres: cpu_seconds(Some(postgres.process_group())),
            apiserver: cpu_seconds(Some(cluster.process_group())),
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            bench: self.bench - before.bench,
            postgres: self.postgres - before.postgres,
            apiserver: self.apiserver - before.apiserver,
        }
    }
}

/// The pods (their tokens) and the request for the `n`th lease: pod
/// `n % pods`, secret `(n / pods) % SECRETS`, so every (pod, secret) is
/// used in turn.
fn requests(tokens: &Arc<Vec<Arc<str>>>) -> Requests {
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..SECRETS)
            .map(|s| {
                Bytes::from(
                    serde_json::to_vec(&json!({"secrets": [
                        {"namespace": "payments", "name": format!("orders-db-{s}")}]}))
                    .unwrap(),
                )
            })
            .collect(),
    );
    let tokens = Arc::clone(tokens);
    Arc::new(move |n: u64| {
        let n = usize::try_from(n).unwrap_or(0);
        LoadRequest {
            method: "POST",
            path: "/v1/leases".into(),
            bearer: Some(Arc::clone(&tokens[n % tokens.len()])),
            body: bodies[(n / tokens.len()) % SECRETS].clone(),
        }
    })
}

/// Sends requests 0..count over `concurrency` keep-alive connections;
/// returns the failures.
async fn send_all(https: &HttpsClient, concurrency: u64, count: u64, requests: Requests) -> u64 {
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (https, requests, next) = (https.clone(), Arc::clone(&requests), Arc::clone(&next));
            tokio::spawn(async move {
                let mut sender = https.connect().await.unwrap();
                let mut failed = 0;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        return failed;
                    }
                    let request = requests(n);
                    let reply = send(
                        &mut sender,
                        request.method,
                        &request.path,
                        request.bearer.as_deref(),
                        request.body,
                    )
                    .await;
                    if !reply.as_ref().is_ok_and(one_role) {
                        failed += 1;
                        if failed == 1 {
                            let why = match reply {
                                Ok(reply) => format!(
                                    "{}: {}",
                                    reply.status,
                                    String::from_utf8_lossy(&reply.body)
                                ),
                                Err(error) => error.to_string(),
                            };
                            println!("    failed: {why}");
                        }
                    }
                }
            })
        })
        .collect();
    let mut failed = 0;
    for task in tasks {
        failed += task.await.unwrap();
    }
    failed
}

/// The broker with `pool` admin connections per database and the limits
/// a benchmark needs.
fn broker(cluster: &Cluster, pool: usize) -> RunningBroker {
    let many = |n: u32| Quota::per_second(std::num::NonZeroU32::new(n).unwrap());
    RunningBroker::start_limited(
        cluster,
        cluster.config().clone(),
        LeaseKeys::new(&[7; 32], &[]),
        many(1_000_000),
        BrokerLimits {
            reviews: ReviewLimits {
                global: many(100_000),
                per_address: many(100_000),
            },
            postgres_admin_connections: pool,
            ..BrokerLimits::default()
        },
    )
    .unwrap()
}

/// The broker's admin connections open now.
async fn backends(superuser: &tokio_postgres::Client) -> i64 {
    superuser
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
            &[&ADMIN],
        )
        .await
        .unwrap()
        .get(0)
}

/// Drops every ferry role, so each run starts from an empty catalog: a
/// thousand a transaction (each holds a lock until its commit).
async fn drop_ferry_roles(superuser: &tokio_postgres::Client) {
    while ferry_roles(superuser).await > 0 {
        superuser
            .batch_execute(
                "DO $$ DECLARE r record; BEGIN \
                 FOR r IN SELECT rolname FROM pg_roles WHERE left(rolname, 6) = 'ferry_' \
                 LIMIT 1000 LOOP EXECUTE format('DROP ROLE %I', r.rolname); END LOOP; END $$",
            )
            .await
            .unwrap();
    }
}

async fn ferry_roles(superuser: &tokio_postgres::Client) -> i64 {
    superuser
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE left(rolname, 6) = 'ferry_'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Statements and round trips in a stretch of the server's log: each
/// simple query is one entry (`statement:`, its statements split by `;`),
/// each extended-protocol execution one (`execute`).
fn count_statements(log: &str) -> (usize, usize) {
    let (mut statements, mut entries) = (0, 0);
    for line in log.lines() {
        if let Some((_, text)) = line.split_once("LOG:  statement: ") {
            entries += 1;
            statements += text.split(';').filter(|s| !s.trim().is_empty()).count();
        } else if line.contains("LOG:  execute ") {
            entries += 1;
            statements += 1;
        }
    }
    (statements, entries)
}

struct Row {
    what: String,
    report: LoadReport,
    cpu: Cpu,
    backends: i64,
}

#[tokio::main]
async fn main() {
    let seconds = Duration::from_secs(bench_setting("FERRY_BENCH_SECONDS", 10).max(1));
    let concurrency = bench_setting("FERRY_BENCH_CONCURRENCY", 16).max(1);
    let pod_count = bench_setting("FERRY_BENCH_PODS", 128).max(1);
    let open_rate = bench_setting("FERRY_BENCH_RATE", GOAL_RATE as u64).max(1) as f64;
    let reap_roles = bench_setting("FERRY_BENCH_REAP_ROLES", 10_000);

    // The broker's log at its default level, audit lines included, as the
    // real process writes it (JSON), into a sink.
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::sink)
        .init();

    let cluster = Cluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    install_crds(&client).await.unwrap();
    let postgres = Postgres::start().await.unwrap();
    let superuser = postgres.admin().await.unwrap();
    superuser
        .batch_execute(&format!(
            "CREATE ROLE bench_reader NOLOGIN;
             CREATE ROLE {ADMIN} LOGIN CREATEROLE PASSWORD '{ADMIN_PASSWORD}';
             GRANT bench_reader TO {ADMIN} WITH ADMIN OPTION;
             GRANT pg_signal_backend TO {ADMIN};
             ALTER ROLE {ADMIN} SET log_statement = 'none';"
        ))
        .await
        .unwrap();
    let specs: Vec<(String, serde_json::Value)> = (0..SECRETS)
        .map(|s| {
            (
                format!("orders-db-{s}"),
                json!({"source": {"postgres": {
                        "connectionSecretRef": {"name": "orders-db-admin", "key": "dsn"},
                        "memberOf": ["bench_reader"]}},
                       "ttl": "1h", "maxTtl": "2h"}),
            )
        })
        .collect();
    let specs: Vec<(&str, serde_json::Value)> = specs
        .iter()
        .map(|(name, spec)| (name.as_str(), spec.clone()))
        .collect();
    bench_tenant(&client, &specs).await.unwrap();
    create_object::<Secret>(
        &client,
        "payments",
        json!({"metadata": {"name": "orders-db-admin", "labels": {"ferry.dev/brokerable": "true"}},
               "stringData": {"dsn": postgres.dsn(ADMIN, ADMIN_PASSWORD)}}),
    )
    .await
    .unwrap();
    let tokens: Vec<Arc<str>> = futures::stream::iter(0..pod_count)
        .map(|n| {
            let client = client.clone();
            async move {
                Arc::from(
                    broker_pod(&client, "shop", &format!("p-{n}"), "checkout")
                        .await
                        .unwrap()
                        .1,
                )
            }
        })
        .buffered(16)
        .collect()
        .await;
    let tokens = Arc::new(tokens);
    let requests = requests(&tokens);

    // What one verifier costs, apart from everything else.
    let started = Instant::now();
    for n in 0..200u8 {
        std::hint::black_box(scram_verifier(
            b"a 43-character password, as the broker's",
            &[n; 16],
        ));
    }
    let scram_ms = started.elapsed().as_secs_f64() * 1000.0 / 200.0;

    println!();
    println!(
        "PostgreSQL leases through the broker (in-process, TLS 1.3, HTTP/1.1 keep-alive), \
         PostgreSQL {} on this machine, {pod_count} pods x {SECRETS} postgres BrokeredSecrets \
         (memberOf checked), one lease per request",
        superuser
            .query_one("SHOW server_version", &[])
            .await
            .unwrap()
            .get::<_, String>(0)
    );
    println!("  differs from production in:");
    for (what, why) in OVERRIDES {
        println!("    {what}: {why}");
    }
    println!(
        "  SCRAM-SHA-256 verifier (4096 PBKDF2 iterations), computed by the broker per issuance: {scram_ms:.2} ms CPU"
    );

    let mut rows = Vec::new();
    for pool in POOLS {
        let broker = broker(&cluster, pool);
        let https = broker.client().unwrap();
        // Every pod's token reviewed once and every cache warm (not counted).
        let warm_failed = send_all(&https, concurrency, pod_count, Arc::clone(&requests)).await;
        assert_eq!(warm_failed, 0, "warm-up failed");
        // Each loop goes on where the last stopped, so no (pod, secret)
        // meets the cap of 8 live leases.
        let base = Arc::new(AtomicU64::new(pod_count));
        let go_on = |report: &LoadReport| {
            let sent = (report.latencies.len() + report.failed) as u64 + concurrency;
            base.fetch_add(sent, Ordering::Relaxed);
        };
        let shifted: Requests = {
            let (requests, base) = (Arc::clone(&requests), Arc::clone(&base));
            Arc::new(move |n| requests(base.load(Ordering::Relaxed) + n))
        };
        let warm = closed_loop(
            &https,
            concurrency,
            Duration::from_secs(2),
            Arc::clone(&shifted),
            one_role,
        )
        .await;
        go_on(&warm);
        let before = Cpu::now(&postgres, &cluster);
        let report =
            closed_loop(&https, concurrency, seconds, Arc::clone(&shifted), one_role).await;
        let cpu = Cpu::now(&postgres, &cluster).since(before);
        go_on(&report);
        rows.push(Row {
            what: format!("pool {pool}, closed loop, {concurrency} in flight"),
            backends: backends(&superuser).await,
            report,
            cpu,
        });
        if pool == DEFAULT_ADMIN_CONNECTIONS {
            // At Vault's rate, and at the goal's: each latency from its
            // request's intended send time.
            for rate in [VAULT_RATE, open_rate] {
                let before = Cpu::now(&postgres, &cluster);
                let report = open_loop(
                    &https,
                    concurrency,
                    rate,
                    seconds,
                    Arc::clone(&shifted),
                    one_role,
                )
                .await;
                let cpu = Cpu::now(&postgres, &cluster).since(before);
                go_on(&report);
                rows.push(Row {
                    what: format!("pool {pool}, open loop at {rate:.0}/s"),
                    backends: backends(&superuser).await,
                    report,
                    cpu,
                });
            }
        }
        broker.stop();
        drop_ferry_roles(&superuser).await;
    }

    println!();
    println!(
        "| run | issued/s | p50 | p99 | max | failed | x Vault's 221/s | Vault's 77 ms / p99 | admin backends | CPU ms per issuance: bench (broker + client) / PostgreSQL / apiserver+etcd |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        let report = &row.report;
        let issued = report.latencies.len().max(1) as f64;
        let max = report
            .latencies
            .last()
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
        println!(
            "| {} | {:.0} | {:.1} ms | {:.1} ms | {:.1} ms | {} | {:.2} | {:.1} | {} | {:.2} / {:.2} / {:.2} |",
            row.what,
            report.rate(),
            report.ms(0.5),
            report.ms(0.99),
            max,
            report.failed,
            report.rate() / VAULT_RATE,
            VAULT_P99_MS / report.ms(0.99),
            row.backends,
            row.cpu.bench * 1000.0 / issued,
            row.cpu.postgres * 1000.0 / issued,
            row.cpu.apiserver * 1000.0 / issued,
        );
        for failure in &report.failures {
            println!("    failed: {failure}");
        }
    }
    println!(
        "  goal: at least {GOAL_RATE:.0}/s (5 x Vault's {VAULT_RATE:.0}/s) with p99 under {GOAL_P99_MS:.0} ms; \
         the load client, broker, apiserver, etcd and PostgreSQL share this machine's 2 cores"
    );

    if reap_roles == 0 {
        return;
    }
    println!();
    println!(
        "Reaper: {reap_roles} live roles, issued through the broker's API, their pods gone; one pass"
    );
    let mut table = vec![
        "| admin connections | roles dropped | pass | dropped/s | statements | round trips (logged) | per role |".to_owned(),
        "|---|---|---|---|---|---|---|".to_owned(),
    ];
    let secret: Arc<BrokeredSecret> = Arc::new(
        Api::<BrokeredSecret>::namespaced(client.clone(), "payments")
            .get("orders-db-0")
            .await
            .unwrap(),
    );
    for pool in [1, DEFAULT_ADMIN_CONNECTIONS] {
        let broker = broker(&cluster, DEFAULT_ADMIN_CONNECTIONS);
        let https = broker.client().unwrap();
        let started = Instant::now();
        let failed = send_all(&https, concurrency, reap_roles, Arc::clone(&requests)).await;
        let issued = ferry_roles(&superuser).await;
        println!(
            "  ({issued} roles issued through the broker in {:.1?}, {failed} failed)",
            started.elapsed()
        );
        broker.stop();
        // Count what the pass sends: its connections are new, and log.
        superuser
            .batch_execute(&format!("ALTER ROLE {ADMIN} SET log_statement = 'all'"))
            .await
            .unwrap();
        let log_before = postgres.log().len();
        let provider = PostgresProvider::new(Arc::new(SecretReader::new(client.clone())), pool);
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let started = Instant::now();
        let reaped = provider
            .reap(ReapContext {
                secrets: std::slice::from_ref(&secret),
                presence: &|_| PodPresence::Departed,
                withdrawn: &|_, _| false,
                now,
                unknown_pod_grace: 120,
            })
            .await;
        let pass = started.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let log = postgres.log();
        let (statements, entries) = count_statements(log.get(log_before..).unwrap_or_default());
        let dropped = reaped.pod_gone;
        table.push(format!(
            "| {pool} | {dropped} of {} found ({} failed, {} left) | {:.2?} | {:.0} | {statements} | {entries} | {:.1} statements, {:.1} round trips |",
            reaped.found,
            reaped.failed,
            ferry_roles(&superuser).await,
            pass,
            dropped as f64 / pass.as_secs_f64(),
            statements as f64 / dropped.max(1) as f64,
            entries as f64 / dropped.max(1) as f64,
        ));
        superuser
            .batch_execute(&format!("ALTER ROLE {ADMIN} SET log_statement = 'none'"))
            .await
            .unwrap();
        drop(provider);
        drop_ferry_roles(&superuser).await;
    }
    for line in table {
        println!("{line}");
    }
    println!(
        "  the pass drops over half the pool's connections at once (the rest stay free for issuing), \
         each role in two round trips: NOLOGIN, then its sessions ended and the role dropped; \
         round trips counted are the logged ones (an extended-protocol query's prepare is one more)"
    );
}
