//! Load benchmark of the real `ferry-webhook` binary (release build) over
//! TLS: AdmissionReviews for an opted-in, granted pod at a fixed rate on
//! keep-alive connections, as the apiserver sends them. Prints client-side
//! latency percentiles (exact, from send to full reply, TLS and loopback
//! included), server-side
//! percentiles (interpolated from the webhook's own histogram), and the
//! webhook's resident memory idle and under load.
//!
//! Not a test: nothing is asserted about the numbers. Run with `make bench`
//! or `cargo bench -p ferry-e2e --bench webhook_load`. Tunable with
//! FERRY_BENCH_RATE (requests/s, default 500), FERRY_BENCH_SECONDS
//! (default 20), FERRY_BENCH_CONNECTIONS (default 4) and FERRY_BENCH_GRANTS
//! (Grants in the cluster, default 10,000).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_api::resources::{AccessPolicy, Grant};
use ferry_e2e::https_client::{HttpsClient, send};
use ferry_e2e::{
    Cluster, KillOnDrop, bench_setting, free_port, http_get, install_crds, percentile,
    wait_admin_ready, workspace_binary,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use serde_json::json;

/// VmRSS and VmHWM of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The cumulative buckets of `ferry_webhook_admission_duration_seconds`.
fn buckets(metrics: &str) -> Vec<(f64, f64)> {
    metrics
        .lines()
        .filter_map(|line| {
            line.strip_prefix("ferry_webhook_admission_duration_seconds_bucket{le=\"")
        })
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The `q` quantile from the difference of two cumulative histograms,
/// interpolated linearly inside the bucket it falls in.
fn histogram_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let counts: Vec<(f64, f64)> = after
        .iter()
        .zip(before)
        .map(|((le, a), (_, b))| (*le, a - b))
        .collect();
    let total = counts.last().map(|(_, c)| *c).unwrap_or(0.0);
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, cumulative) in counts {
        if cumulative >= rank {
            if le.is_infinite() {
                return lower;
            }
            let share = if cumulative > below {
                (rank - below) / (cumulative - below)
            } else {
                0.0
            };
            return lower + (le - lower) * share;
        }
        (lower, below) = (le, cumulative);
    }
    lower
}

#[tokio::main]
async fn main() {
    let rate = bench_setting("FERRY_BENCH_RATE", 500);
    let seconds = bench_setting("FERRY_BENCH_SECONDS", 20);
    let connections = bench_setting("FERRY_BENCH_CONNECTIONS", 4).max(1);
    let grant_count = bench_setting("FERRY_BENCH_GRANTS", 10_000).max(2);

    let binary = workspace_binary("ferry-webhook").unwrap();
    let cluster = Cluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    install_crds(&client).await.unwrap();
    for name in ["orders", "payments"] {
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap();
    }
    // The AccessPolicy behind the fixture's two Grants (the webhook honours
    // a Grant only while its policy names it), by secret namespace.
    let mut policy_uids = std::collections::BTreeMap::new();
    for (namespace, secret) in [("orders", "orders-db"), ("payments", "orders-key")] {
        let policy: AccessPolicy = serde_json::from_value(json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "AccessPolicy",
            "metadata": {"name": "p"},
            "spec": {"subjects": [{"serviceAccount": {"name": "api", "namespace": "orders"}}],
                     "secrets": [{"name": secret}]},
        }))
        .unwrap();
        let created = Api::<AccessPolicy>::namespaced(client.clone(), namespace)
            .create(&PostParams::default(), &policy)
            .await
            .unwrap();
        policy_uids.insert(namespace, created.metadata.uid.unwrap());
    }
    let policy_uids = &policy_uids;
    // The fixture's two Grants among 10,000, as in a busy cluster.
    let grants = Api::<Grant>::namespaced(client.clone(), "orders");
    futures::stream::iter(0..grant_count)
        .map(|i| {
            let grants = grants.clone();
            async move {
                let (sa, secret) = match i {
                    0 => ("api".to_owned(), ("orders", "orders-db")),
                    1 => ("api".to_owned(), ("payments", "orders-key")),
                    _ => (format!("sa-{i}"), ("orders", "orders-db")),
                };
                let grant: Grant = serde_json::from_value(json!({
                    "apiVersion": "ferry.dev/v1alpha1", "kind": "Grant",
                    "metadata": {"name": format!("g-{i}"),
                                 "labels": {"app.kubernetes.io/managed-by": "ferry-operator"}},
                    "spec": {"serviceAccount": sa, "secret": {"namespace": secret.0, "name": secret.1},
                             "maxTtl": "1h", "policy": {"namespace": secret.0, "name": "p", "uid": policy_uids[secret.0]}},
                }))
                .unwrap();
                grants.create(&PostParams::default(), &grant).await.unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;

    let files = cluster
        .authority()
        .serving_cert(&["127.0.0.1"], cluster.dir(), "bench-webhook")
        .unwrap();
    let (addr, admin) = (free_port().unwrap(), free_port().unwrap());
    let webhook = KillOnDrop(
        Command::new(&binary)
            .args(["run", "--log-format", "json"])
            .args(["--listen-addr", &addr.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .arg("--tls-cert")
            .arg(&files.cert)
            .arg("--tls-key")
            .arg(&files.key)
            .env("KUBECONFIG", cluster.kubeconfig())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_admin_ready(admin, "webhook", Duration::from_secs(60))
        .await
        .unwrap();
    let pid = webhook.0.id();
    let idle = memory_kib(pid);

    let https = HttpsClient::new(addr, &cluster.ca_pem()).unwrap();
    let body = Bytes::from(
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../webhook/tests/fixtures/create_opted_in_pod.json"
        ))
        .unwrap(),
    );

    // Warm up: connections, TLS sessions, allocator.
    let run = |duration: Duration| {
        let (https, body) = (https.clone(), body.clone());
        async move {
            let interval = Duration::from_secs_f64(connections as f64 / rate as f64);
            let mut tasks = Vec::new();
            for c in 0..connections {
                let (https, body) = (https.clone(), body.clone());
                tasks.push(tokio::spawn(async move {
                    let mut sender = https.connect().await.unwrap();
                    // Stagger the connections across one interval.
                    tokio::time::sleep(interval.mul_f64(c as f64 / connections as f64)).await;
                    let mut ticks = tokio::time::interval(interval);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    let end = Instant::now() + duration;
                    let mut latencies = Vec::new();
                    while Instant::now() < end {
                        ticks.tick().await;
                        let sent = Instant::now();
                        let reply = send(&mut sender, "POST", "/mutate", None, body.clone())
                            .await
                            .unwrap();
                        latencies.push(sent.elapsed());
                        assert_eq!(reply.status, 200);
                        assert!(reply.body.starts_with(b"{\"apiVersion\""));
                    }
                    latencies
                }));
            }
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await.unwrap());
            }
            all
        }
    };
    run(Duration::from_secs(2)).await;

    let before = buckets(&http_get(admin, "/metrics").await.unwrap().body);
    let wall = Instant::now();
    let mut latencies = run(Duration::from_secs(seconds)).await;
    let wall = wall.elapsed();
    let after = buckets(&http_get(admin, "/metrics").await.unwrap().body);
    let loaded = memory_kib(pid);
    latencies.sort();

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!();
    println!("ferry-webhook under load (release build, TLS 1.3, HTTP/1.1 keep-alive)");
    println!(
        "  offered: {rate} req/s on {connections} connections for {seconds}s; achieved {:.0} req/s ({} requests)",
        latencies.len() as f64 / wall.as_secs_f64(),
        latencies.len()
    );
    println!(
        "  server-side (histogram, interpolated): p50 {:.3} ms  p99 {:.3} ms",
        histogram_quantile(&before, &after, 0.50) * 1000.0,
        histogram_quantile(&before, &after, 0.99) * 1000.0
    );
    println!(
        "  client-side (exact, incl. TLS+loopback): p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap())
    );
    println!(
        "  webhook RSS: idle {:.1} MiB, after load {:.1} MiB (peak {:.1} MiB), {grant_count} Grants indexed",
        idle.0 as f64 / 1024.0,
        loaded.0 as f64 / 1024.0,
        loaded.1 as f64 / 1024.0
    );
    println!("  goal: p99 < 5 ms");
}
