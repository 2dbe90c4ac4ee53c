//! Revocation in seconds, on the harness's real node: N pods (default 100,
//! `FERRY_BENCH_PODS`) each hold a PostgreSQL lease through an injected
//! sidecar; one Revocation of the policy that granted them all is created,
//! and for every pod the time until its role is gone from the database
//! and its files are gone from its tmpfs volume is taken (goal: p99 under
//! 2 s). Also the idle cost of the revocation watch: held connections to
//! the broker per pod, and the harness process's memory per pod while
//! every sidecar watches (the broker, operator and webhook run in it).
//! Needs what the real-pod tests need (root, `make node`).
//!
//! `cargo bench -p ferry-e2e --bench revocation` (part of `make bench`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/real_pods_common/mod.rs"]
mod real_pods_common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferry_api::resources::Revocation;
use ferry_e2e::{Postgres, bench_setting, eventually, memory_kib};
use kube::api::{Api, PostParams};
use real_pods_common::*;
use serde_json::json;

/// The goal the issue sets for p99.
const GOAL: Duration = Duration::from_secs(2);

/// Established TCP connections to the local `port` (IPv4).
fn connections_to(port: u16) -> usize {
    let hex = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // remote address ends with the broker's port, state 01 (established)
            fields.len() > 3 && fields[2].ends_with(&hex) && fields[3] == "01"
        })
        .count()
}

/// The value of the broker metric `name` (a gauge without labels).
fn broker_gauge(env: &Env, name: &str) -> f64 {
    env.stack
        .with_broker(|broker| broker.metrics_text())
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let pods_wanted = usize::try_from(bench_setting("FERRY_BENCH_PODS", 100)).unwrap_or(100);
    let (client, owner, app) = scenario("revoke").await;
    let env = env().await;
    let broker_port: u16 = env
        .stack
        .broker_url()
        .rsplit(':')
        .next()
        .and_then(|port| port.trim_end_matches('/').parse().ok())
        .unwrap();
    let script = "trap 'exit 0' TERM; sleep 3600 & wait";
    let secrets = [format!("{owner}/orders-db")];
    let rss_before = memory_kib(std::process::id()).0;
    let connections_before = connections_to(broker_port);

    let started = Instant::now();
    let names: Vec<String> = (0..pods_wanted).map(|n| format!("r-{n}")).collect();
    for chunk in names.chunks(10) {
        futures::future::join_all(
            chunk
                .iter()
                .map(|name| create_app(&client, &app, (name, "checkout"), &secrets, script)),
        )
        .await;
    }
    let mut pods = HashMap::new();
    for name in &names {
        let pod = wait_app_running(&client, &app, name).await;
        pods.insert(name.clone(), pod.metadata.uid.clone().unwrap());
    }
    println!(
        "{pods_wanted} pods with a PostgreSQL lease running on the real node after {:.1?}",
        started.elapsed()
    );
    let roles: HashMap<String, String> = pods
        .iter()
        .map(|(name, uid)| {
            let role = secret_file(env.node, uid, "orders-db/username").unwrap();
            (name.clone(), String::from_utf8(role).unwrap())
        })
        .collect();
    eventually("every sidecar watching", WAIT, || async {
        (broker_gauge(env, "ferry_broker_revocation_watches") >= pods_wanted as f64).then_some(())
    })
    .await;
    // Let the pods settle: the numbers are of idle watches.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_watching = memory_kib(std::process::id()).0;
    let connections = connections_to(broker_port).saturating_sub(connections_before);
    println!(
        "idle cost: {connections} established connections to the broker for {pods_wanted} pods ({:.2} per pod); \
         harness process (broker, operator, webhook) {} KiB -> {} KiB, {:.1} KiB per pod",
        connections as f64 / pods_wanted as f64,
        rss_before,
        rss_watching,
        rss_watching.saturating_sub(rss_before) as f64 / pods_wanted as f64
    );

    let database = Postgres::shared().await.unwrap().admin().await.unwrap();
    let revocation: Revocation = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "Revocation",
        "metadata": {"name": "bench", "namespace": owner},
        "spec": {"policy": "checkout", "reason": "benchmark"},
    }))
    .unwrap();
    let created = Instant::now();
    Api::<Revocation>::namespaced(client.clone(), &owner)
        .create(&PostParams::default(), &revocation)
        .await
        .unwrap();
    let mut role_gone: HashMap<String, Duration> = HashMap::new();
    let mut files_gone: HashMap<String, Duration> = HashMap::new();
    while (role_gone.len() < pods_wanted || files_gone.len() < pods_wanted)
        && created.elapsed() < Duration::from_secs(120)
    {
        let at = created.elapsed();
        let live: Vec<String> = roles.values().cloned().collect();
        let present: Vec<String> = database
            .query(
                "SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1)",
                &[&live],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        for (name, role) in &roles {
            if !present.contains(role) {
                role_gone.entry(name.clone()).or_insert(at);
            }
            if secret_file(env.node, &pods[name], "orders-db/username").is_none() {
                files_gone.entry(name.clone()).or_insert(at);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut both: Vec<Duration> = names
        .iter()
        .filter_map(|name| Some(*role_gone.get(name)?.max(files_gone.get(name)?)))
        .collect();
    both.sort();
    let mut roles_only: Vec<Duration> = role_gone.values().copied().collect();
    roles_only.sort();
    let mut files_only: Vec<Duration> = files_gone.values().copied().collect();
    files_only.sort();
    let show = |what: &str, times: &[Duration]| {
        if times.is_empty() {
            println!("{what}: none within 120 s");
            return;
        }
        let p99 = ferry_e2e::percentile(times, 0.99);
        println!(
            "{what}, over {} of {pods_wanted} pods: p50 {:?}, p99 {:?}, max {:?} (p99 is {:.2}x the 2 s goal)",
            times.len(),
            ferry_e2e::percentile(times, 0.5),
            p99,
            times.last().unwrap(),
            p99.as_secs_f64() / GOAL.as_secs_f64()
        );
    };
    println!("Revocation of the policy created, then:");
    show("  files wiped from the pod's tmpfs", &files_only);
    show("  PostgreSQL role dropped", &roles_only);
    show("  both", &both);
}
