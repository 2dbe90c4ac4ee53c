//! Load benchmark of the real `ferry-webhook` binary (release build, at its
//! default log level) over TLS: AdmissionReviews for an opted-in, granted
//! pod, open loop at a fixed arrival rate on keep-alive connections, as the
//! apiserver sends them. Prints client-side latency percentiles (exact,
//! from each request's intended send time to its full reply, TLS and
//! loopback included, so a stall is charged to every request behind it),
//! server-side percentiles (the bucket of the webhook's own
//! histogram), the closed-loop throughput separately, and the webhook's
//! resident memory idle and under load. Every reply must inject (allowed,
//! with a patch); failures are counted and shown.
//!
//! Not a test: nothing is asserted about the numbers. Run with `make bench`
//! or `cargo bench -p ferry-e2e --bench webhook_load`. Tunable with
//! FERRY_BENCH_RATE (requests/s, default 500), FERRY_BENCH_SECONDS
//! (default 20), FERRY_BENCH_CONNECTIONS (default 4) and FERRY_BENCH_GRANTS
//! (Grants in the cluster, default 10,000).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_api::resources::{AccessPolicy, Grant};
use ferry_e2e::https_client::{HttpsClient, HttpsReply};
use ferry_e2e::load::{LoadRequest, Requests, closed_loop, open_loop};
use ferry_e2e::{
    Cluster, KillOnDrop, bench_setting, free_port, http_get, install_crds, memory_kib,
    wait_admin_ready, workspace_binary,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use serde_json::json;

/// An AdmissionReview answer that injects: allowed, with a JSON patch.
fn injected(reply: &HttpsReply) -> bool {
    reply.status == 200
        && reply.json().is_ok_and(|review| {
            review["response"]["allowed"] == true && review["response"]["patch"].is_string()
        })
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

/// The bucket the `q` quantile falls in, as its bounds (lower exclusive,
/// upper inclusive), from the difference of two cumulative histograms. No
/// interpolation: a histogram knows no more than its buckets.
fn histogram_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> (f64, f64) {
    let counts: Vec<(f64, f64)> = after
        .iter()
        .zip(before)
        .map(|((le, a), (_, b))| (*le, a - b))
        .collect();
    let total = counts.last().map(|(_, c)| *c).unwrap_or(0.0);
    let rank = q * total;
    let mut lower = 0.0;
    for (le, cumulative) in counts {
        if cumulative >= rank {
            return (lower, le);
        }
        lower = le;
    }
    (lower, f64::INFINITY)
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
            // The default log level, as in production.
            .env_remove("RUST_LOG")
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

    let requests: Requests = {
        let body = body.clone();
        Arc::new(move |_| LoadRequest {
            method: "POST",
            path: "/mutate".into(),
            bearer: None,
            body: body.clone(),
        })
    };
    // Warm up: connections, TLS sessions, allocator.
    open_loop(
        &https,
        connections,
        rate as f64,
        Duration::from_secs(2),
        requests.clone(),
        injected,
    )
    .await;

    let before = buckets(&http_get(admin, "/metrics").await.unwrap().body);
    let report = open_loop(
        &https,
        connections,
        rate as f64,
        Duration::from_secs(seconds),
        requests.clone(),
        injected,
    )
    .await;
    let after = buckets(&http_get(admin, "/metrics").await.unwrap().body);
    let loaded = memory_kib(pid);
    let max = closed_loop(
        &https,
        connections,
        Duration::from_secs(seconds),
        requests,
        injected,
    )
    .await;

    println!();
    println!(
        "ferry-webhook under load (release build, TLS 1.3, HTTP/1.1 keep-alive, default log level: one info line per injection, to /dev/null)"
    );
    println!(
        "  open loop, {rate} req/s offered on {connections} connections for {seconds}s; latency from each request's intended send time"
    );
    let bucket = |q: f64| {
        let (lower, upper) = histogram_quantile(&before, &after, q);
        format!("{:.3}..{:.3} ms", lower * 1000.0, upper * 1000.0)
    };
    println!(
        "  server-side (the webhook's histogram: the bucket each falls in): p50 {}  p99 {}",
        bucket(0.50),
        bucket(0.99)
    );
    println!(
        "  client-side (exact, incl. TLS+loopback): {}",
        report.summary()
    );
    for failure in &report.failures {
        println!("    failed: {failure}");
    }
    println!(
        "  closed loop on {connections} connections (throughput): {:.0} ok/s, {} failed",
        max.rate(),
        max.failed
    );
    println!(
        "  webhook RSS: idle {:.1} MiB, after load {:.1} MiB (peak {:.1} MiB), {grant_count} Grants indexed",
        idle.0 as f64 / 1024.0,
        loaded.0 as f64 / 1024.0,
        loaded.1 as f64 / 1024.0
    );
    println!("  goal: p99 < 5 ms");
}
