//! Load benchmark of the real `ferry-operator broker` (release build) over
//! TLS keep-alive: kubernetesSecret issuances, then ES256 JWT issuances, for
//! one pod, as fast as the connections allow, with the TokenReview cache
//! warm. Prints throughput,
//! exact client-side latency percentiles and the broker's RSS.
//!
//! Not a test: nothing is asserted about the numbers. Run with `make bench`
//! or `cargo bench -p ferry-e2e --bench broker_load`. Tunable with
//! FERRY_BENCH_SECONDS (default 10) and FERRY_BENCH_CONNECTIONS (default 8).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_contract::DEFAULT_BROKER_AUDIENCE;
use ferry_e2e::https_client::{HttpsClient, send};
use ferry_e2e::{
    Cluster, KillOnDrop, bench_setting, bench_tenant, free_port, install_crds, percentile,
    pod_bound_token, wait_admin_ready, workspace_binary,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use serde_json::json;

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

#[tokio::main]
async fn main() {
    let seconds = bench_setting("FERRY_BENCH_SECONDS", 10);
    let connections = bench_setting("FERRY_BENCH_CONNECTIONS", 8).max(1);

    let binary = workspace_binary("ferry-operator").unwrap();
    let cluster = Cluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    install_crds(&client).await.unwrap();
    let pod = bench_tenant(
        &client,
        &[
            (
                "orders-api-key",
                json!({"source": {"kubernetesSecret": {"name": "api-key"}}}),
            ),
            (
                "orders-jwt",
                json!({"source": {"jwt": {"audience": ["orders"], "scopes": ["read"]}}}),
            ),
        ],
    )
    .await
    .unwrap();
    // The broker keeps its lease and JWT keys in ferry's namespace.
    let ferry: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "ferry-system"}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ferry)
        .await
        .unwrap();
    let token = pod_bound_token(&client, &pod, DEFAULT_BROKER_AUDIENCE, 3600)
        .await
        .unwrap();

    let files = cluster
        .authority()
        .serving_cert(&["127.0.0.1"], cluster.dir(), "bench-broker")
        .unwrap();
    let (addr, admin) = (free_port().unwrap(), free_port().unwrap());
    let broker = KillOnDrop(
        Command::new(&binary)
            .args(["broker", "--log-format", "json"])
            .args(["--listen-addr", &addr.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            // The benchmark measures the broker, not its rate limit.
            .args(["--rate-limit", "1000000", "--rate-limit-burst", "1000000"])
            .arg("--tls-cert")
            .arg(&files.cert)
            .arg("--tls-key")
            .arg(&files.key)
            .env("KUBECONFIG", cluster.kubeconfig())
            // Audit lines on, as in production (written to /dev/null).
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_admin_ready(admin, "broker", Duration::from_secs(60))
        .await
        .unwrap();
    let https = HttpsClient::new(addr, &cluster.ca_pem()).unwrap();
    for (secret, kind) in [
        ("orders-api-key", "kubernetesSecret"),
        ("orders-jwt", "ES256 jwt"),
    ] {
        let body = Bytes::from(
            serde_json::to_vec(&json!({"secrets": [{"namespace": "payments", "name": secret}]}))
                .unwrap(),
        );
        load(&https, &token, body, kind, connections, seconds).await;
    }
    println!("  broker RSS after load: {:.1} MiB", rss_mib(broker.0.id()));
    println!(
        "  goal: >= 10,000 issuances/s, p99 < 2 ms (client and broker share this machine's 2 cores)"
    );
}

/// Issues `body` over `connections` keep-alive connections for `seconds`
/// after a warm-up, and prints throughput and latency percentiles.
async fn load(
    https: &HttpsClient,
    token: &str,
    body: Bytes,
    kind: &str,
    connections: u64,
    seconds: u64,
) {
    // The pod must be in the broker's index before the first issuance.
    let warm = Instant::now();
    loop {
        let reply = https
            .request("POST", "/v1/leases", Some(token), &body)
            .await
            .unwrap();
        if reply.status == 200 {
            break;
        }
        assert!(warm.elapsed() < Duration::from_secs(30), "{}", reply.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = token.to_owned();
    let run = |duration: Duration| {
        let (https, body, token) = (https.clone(), body.clone(), token.clone());
        async move {
            let mut tasks = Vec::new();
            for _ in 0..connections {
                let (https, body, token) = (https.clone(), body.clone(), token.clone());
                tasks.push(tokio::spawn(async move {
                    let mut sender = https.connect().await.unwrap();
                    let end = Instant::now() + duration;
                    let mut latencies = Vec::new();
                    while Instant::now() < end {
                        let sent = Instant::now();
                        let reply = send(
                            &mut sender,
                            "POST",
                            "/v1/leases",
                            Some(&token),
                            body.clone(),
                        )
                        .await
                        .unwrap();
                        latencies.push(sent.elapsed());
                        assert_eq!(reply.status, 200);
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
    let wall = Instant::now();
    let mut latencies = run(Duration::from_secs(seconds)).await;
    let wall = wall.elapsed();
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!();
    println!(
        "ferry broker issuing {kind} leases (release build, TLS 1.3, HTTP/1.1 keep-alive, warm TokenReview cache)"
    );
    println!(
        "  {connections} connections, closed loop, {seconds}s: {:.0} issuances/s ({} requests)",
        latencies.len() as f64 / wall.as_secs_f64(),
        latencies.len()
    );
    println!(
        "  client-side latency: p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap())
    );
}
