//! Load benchmark of the real `ferry-operator broker` (release build) over
//! TLS keep-alive, issuing kubernetesSecret, ES256 JWT, x509 (P-256 CSR
//! checked and signed) and cached oauth2 leases (a shared token from a real
//! hydra):
//!
//! - renewals with a warm token, open loop: one pod renewing its 8 leases
//!   (the most one pod may hold of a secret) round robin at a fixed arrival
//!   rate, latency from each request's intended send time; each renewal
//!   asks the apiserver whether the lease was revoked;
//! - the same in a closed loop: as fast as replies come back, reported as
//!   throughput only;
//! - cold issuance, open loop: every request from a pod the broker has not
//!   seen a token of (a TokenReview against the apiserver) asking for a
//!   secret it has not read lately (a Secret `get`), as each new pod's first
//!   request is. (A production pod renews every few minutes, long after
//!   its token's review left the 10 s cache: its renewals pay a review too.)
//!
//! - oauth2 upstream calls per 1,000 pod starts (125 new pods asking for
//!   8 leases each at once, 64 requests in flight): with shared tokens
//!   (coalesced: one call per scope set) and with one token per lease.
//!
//! Every reply must be a 200 with one lease of the secret asked for;
//! failures are counted and shown. Settings that differ from production
//! are printed with the reason. Prints the broker's RSS too.
//!
//! Not a test: nothing is asserted about the numbers. Run with `make bench`
//! or `cargo bench -p ferry-e2e --bench broker_load`. Tunable with
//! FERRY_BENCH_SECONDS (default 10), FERRY_BENCH_CONNECTIONS (default 8),
//! FERRY_BENCH_RATE (renewals a second, default 500),
//! FERRY_BENCH_COLD_PODS (default 100) and FERRY_BENCH_COLD_RATE (default 50).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use ferry_broker::live_leases::DEFAULT_MAX_LIVE_LEASES;
use ferry_contract::DEFAULT_BROKER_AUDIENCE;
use ferry_e2e::https_client::{HttpsClient, HttpsReply};
use ferry_e2e::load::{LoadReport, LoadRequest, closed_loop, open_loop};
use ferry_e2e::{
    ClientSpec, Cluster, Hydra, HydraOptions, KillOnDrop, Subject, bench_cold_pods, bench_setting,
    bench_tenant, broker_pod, create_brokered_secret_from, create_object, direct_grant, free_port,
    install_crds, memory_kib, pod_bound_token, wait_admin_ready, workspace_binary,
};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::json;

/// What production would run with, and what this benchmark changes.
const OVERRIDES: &[(&str, &str, &str)] = &[
    (
        "--rate-limit",
        "1000000",
        "one service account plays every pod here; its default 50 requests/s would measure the limiter",
    ),
    ("--rate-limit-burst", "1000000", "as --rate-limit"),
    (
        "--review-rate-limit-per-address",
        "1000",
        "every simulated pod connects from 127.0.0.1; in a cluster each pod has its own address and the default 10/s applies to each",
    ),
    ("--review-rate-limit-per-address-burst", "1000", "as above"),
];

/// A 200 holding one lease with files.
fn one_lease(reply: &HttpsReply) -> bool {
    reply.status == 200
        && reply.json().is_ok_and(|body| {
            body["leases"].as_array().is_some_and(|leases| {
                leases.len() == 1
                    && leases[0]["files"]
                        .as_object()
                        .is_some_and(|f| !f.is_empty())
            })
        })
}

fn issue(secret: &str) -> Bytes {
    issue_with(secret, None)
}

/// An issue request for `secret`, with a CSR (base64 DER) for a certificate.
fn issue_with(secret: &str, csr: Option<&str>) -> Bytes {
    let mut asked = json!({"namespace": "payments", "name": secret});
    if let Some(csr) = csr {
        asked["csr"] = json!(csr);
    }
    Bytes::from(serde_json::to_vec(&json!({ "secrets": [asked] })).unwrap())
}

#[tokio::main]
async fn main() {
    let seconds = Duration::from_secs(bench_setting("FERRY_BENCH_SECONDS", 10));
    let connections = bench_setting("FERRY_BENCH_CONNECTIONS", 8).max(1);
    let rate = bench_setting("FERRY_BENCH_RATE", 500).max(1) as f64;
    let cold_pods = bench_setting("FERRY_BENCH_COLD_PODS", 100).max(1);
    let cold_rate = bench_setting("FERRY_BENCH_COLD_RATE", 50).max(1) as f64;

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
            (
                "orders-cert",
                json!({"source": {"x509": {"caSecretName": "orders-ca", "commonName": "{{ serviceAccount }}"}}}),
            ),
        ],
    )
    .await
    .unwrap();
    let (ca_cert, ca_key) = bench_ca();
    create_object::<Secret>(
        &client,
        "payments",
        json!({"metadata": {"name": "orders-ca", "labels": {"ferry.dev/brokerable": "true"}},
               "type": "kubernetes.io/tls",
               "stringData": {"tls.crt": ca_cert, "tls.key": ca_key, "ca.crt": ca_cert}}),
    )
    .await
    .unwrap();
    // A real authorization server for the oauth2 leases.
    let hydra = Hydra::start(HydraOptions::default()).await.unwrap();
    hydra
        .create_client(&ClientSpec {
            client_id: "orders".into(),
            client_secret: Some("bench-client-secret".into()),
            grant_types: vec!["client_credentials".into()],
            scope: "read".into(),
            ..ClientSpec::default()
        })
        .await
        .unwrap();
    create_object::<Secret>(
        &client,
        "payments",
        json!({"metadata": {"name": "orders-client", "labels": {"ferry.dev/brokerable": "true"}},
               "stringData": {"client_id": "orders", "client_secret": "bench-client-secret",
                              "ca.crt": hydra.ca_pem()}}),
    )
    .await
    .unwrap();
    for (name, sharing) in [
        ("orders-crm", "Shared"),
        ("orders-crm-coalesced", "Shared"),
        ("orders-crm-own", "PerLease"),
    ] {
        let spec = json!({"source": {"oauth2": {
            "tokenUrl": hydra.token_url(), "credentialsSecretName": "orders-client",
            "caKey": "ca.crt", "scopes": ["read"], "tokenSharing": sharing,
            // The most the schema allows: the benchmark counts calls, not
            // the limiter's refusals.
            "requestsPerMinute": 6000}}});
        create_brokered_secret_from(&client, "payments", name, spec)
            .await
            .unwrap();
        direct_grant(
            &client,
            Subject {
                namespace: "shop",
                name: "checkout",
            },
            "payments",
            name,
            &format!("bench-{name}"),
            &format!("{name}-for-checkout"),
        )
        .await
        .unwrap();
    }
    // The broker keeps its lease and JWT keys in ferry's namespace.
    let ferry: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "ferry-system"}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ferry)
        .await
        .unwrap();
    let token: Arc<str> = pod_bound_token(&client, &pod, DEFAULT_BROKER_AUDIENCE, 3600)
        .await
        .unwrap()
        .into();
    // Cold: a Secret, BrokeredSecret and Grant per pod, and the pod.
    let cold: Vec<(String, Arc<str>)> = bench_cold_pods(&client, cold_pods)
        .await
        .unwrap()
        .into_iter()
        .map(|pod| (pod.secret, Arc::from(pod.token)))
        .collect();
    let files = cluster
        .authority()
        .serving_cert(&["127.0.0.1"], cluster.dir(), "bench-broker")
        .unwrap();
    let (addr, admin) = (free_port().unwrap(), free_port().unwrap());
    let mut command = Command::new(&binary);
    command
        .args(["broker", "--log-format", "json"])
        .args(["--listen-addr", &addr.to_string()])
        .args(["--admin-addr", &admin.to_string()]);
    for (flag, value, _) in OVERRIDES {
        command.args([flag, value]);
    }
    let broker = KillOnDrop(
        command
            .arg("--tls-cert")
            .arg(&files.cert)
            .arg("--tls-key")
            .arg(&files.key)
            .env("KUBECONFIG", cluster.kubeconfig())
            // The default log level: audit lines on, as in production
            // (written to /dev/null).
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_admin_ready(admin, "broker", Duration::from_secs(60))
        .await
        .unwrap();
    let https = HttpsClient::new(addr, &cluster.ca_pem()).unwrap();

    println!();
    println!(
        "ferry broker (release build, TLS 1.3, HTTP/1.1 keep-alive, default log level with audit lines, to /dev/null)"
    );
    println!("  differs from production defaults in:");
    for (flag, value, why) in OVERRIDES {
        println!("    {flag} {value}: {why}");
    }
    // A pod holds at most 8 live leases of one secret (production's cap),
    // so one pod's steady load is renewals: 8 leases, renewed round robin.
    // Every renewal also asks the apiserver whether the lease was revoked
    // (a revocation on another replica must not be missed).
    // One CSR for every x509 request: the broker checks and signs each
    // as if new (a pod sends a new key's at each renewal).
    let csr = BASE64.encode(
        ferry_sidecar::csr::generate(ferry_sidecar::csr::KeyAlgorithm::EcdsaP256)
            .unwrap()
            .csr_der,
    );
    for (secret, kind, csr) in [
        ("orders-api-key", "kubernetesSecret", None),
        ("orders-jwt", "ES256 jwt", None),
        (
            "orders-cert",
            "x509 (P-256 CSR checked and signed)",
            Some(&csr),
        ),
        ("orders-crm", "oauth2 (shared token, cached)", None),
    ] {
        let body = issue_with(secret, csr.map(String::as_str));
        let renewal = Bytes::from(match csr {
            Some(csr) => serde_json::to_vec(&json!({ "csr": csr })).unwrap(),
            None => Vec::new(),
        });
        let mut ids = vec![wait_known(&https, &token, &body).await];
        while ids.len() < DEFAULT_MAX_LIVE_LEASES {
            let reply = https
                .request("POST", "/v1/leases", Some(&token), &body)
                .await
                .unwrap();
            assert!(
                one_lease(&reply),
                "{}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
            ids.push(lease_id(&reply));
        }
        let ids: Arc<Vec<String>> = Arc::new(ids);
        let requests = {
            let (token, ids, renewal) = (Arc::clone(&token), Arc::clone(&ids), renewal.clone());
            Arc::new(move |n: u64| LoadRequest {
                method: "POST",
                path: format!(
                    "/v1/leases/{}/renew",
                    ids[usize::try_from(n).unwrap_or(0) % ids.len()]
                ),
                bearer: Some(Arc::clone(&token)),
                body: renewal.clone(),
            })
        };
        // Warm-up: connections, TLS sessions, the allocator.
        closed_loop(
            &https,
            connections,
            Duration::from_secs(2),
            requests.clone(),
            one_lease,
        )
        .await;
        let warm = open_loop(
            &https,
            connections,
            rate,
            seconds,
            requests.clone(),
            one_lease,
        )
        .await;
        report(
            &format!(
                "{kind} renewals, warm token, open loop at {rate:.0}/s on {connections} connections"
            ),
            &warm,
        );
        let max = closed_loop(&https, connections, seconds, requests, one_lease).await;
        println!(
            "  {kind} renewals, closed loop on {connections} connections (throughput): {:.0} ok/s, {} failed",
            max.rate(),
            max.failed
        );
        for failure in &max.failures {
            println!("    failed: {failure}");
        }
    }

    let cold = Arc::new(cold);
    let requests = {
        let cold = Arc::clone(&cold);
        Arc::new(move |n: u64| {
            let (secret, token) = &cold[usize::try_from(n).unwrap_or(0) % cold.len()];
            LoadRequest {
                method: "POST",
                path: "/v1/leases".into(),
                bearer: Some(Arc::clone(token)),
                body: issue(secret),
            }
        })
    };
    let first = cold.len() as f64 / cold_rate;
    let cold_report = open_loop(
        &https,
        connections,
        cold_rate,
        Duration::from_secs_f64(first),
        requests,
        one_lease,
    )
    .await;
    report(
        &format!(
            "kubernetesSecret, cold (each request a new pod's first: TokenReview + Secret get), open loop at {cold_rate:.0}/s, {} pods",
            cold.len()
        ),
        &cold_report,
    );
    // oauth2 upstream calls per 1,000 pod starts.
    let pods = new_pods(&client, 125).await;
    // Each pod's token reviewed once first, as at a pod's start; eight
    // first requests at once would each ask the apiserver (and meet the
    // review limit), which is not what is measured here.
    let warm: Vec<bool> = futures::stream::iter(&pods)
        .map(|token| {
            let (https, body) = (&https, issue("orders-jwt"));
            async move { !wait_known(https, token, &body).await.is_empty() }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(warm.iter().all(|known| *known));
    for (secret, how) in [
        ("orders-crm-coalesced", "shared tokens (coalesced)"),
        ("orders-crm-own", "one token per lease"),
    ] {
        let before = token_requests(admin).await;
        let started = Instant::now();
        let body = issue(secret);
        let replies: Vec<Result<(), String>> = futures::stream::iter(
            pods.iter()
                .flat_map(|token| std::iter::repeat_n(token, DEFAULT_MAX_LIVE_LEASES)),
        )
        .map(|token| {
            let (https, body) = (&https, &body);
            async move {
                let reply = https
                    .request("POST", "/v1/leases", Some(token), body)
                    .await
                    .unwrap();
                if one_lease(&reply) {
                    Ok(())
                } else {
                    Err(format!(
                        "{}: {}",
                        reply.status,
                        String::from_utf8_lossy(&reply.body)
                    ))
                }
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
        let took = started.elapsed();
        let failures: Vec<&String> = replies.iter().filter_map(|r| r.as_ref().err()).collect();
        let failed = failures.len();
        println!(
            "  oauth2, {} pod starts with {how}: {} upstream token requests, {failed} failed, in {took:.2?}",
            replies.len(),
            token_requests(admin).await - before
        );
        if let Some(failure) = failures.first() {
            println!("    first failure: {failure}");
        }
    }
    println!(
        "  broker RSS after load: {:.1} MiB",
        memory_kib(broker.0.id()).0 as f64 / 1024.0
    );
    println!("  goal: p99 < 2 ms (client, broker and apiserver share this machine's 2 cores)");
}

/// A CA (certificate and key, PEM) for the x509 leases.
fn bench_ca() -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "orders CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// `count` new pods of `shop/checkout`, their tokens for the broker.
async fn new_pods(client: &kube::Client, count: usize) -> Vec<String> {
    futures::stream::iter(0..count)
        .map(|index| async move {
            broker_pod(client, "shop", &format!("start-{index}"), "checkout")
                .await
                .unwrap()
                .1
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// `ferry_broker_oauth2_token_requests_total` from the broker's admin port.
async fn token_requests(admin: std::net::SocketAddr) -> u64 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("ferry_broker_oauth2_token_requests_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

/// The id of the one lease in `reply`.
fn lease_id(reply: &HttpsReply) -> String {
    reply.json().unwrap()["leases"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Waits until the broker's indexes know the pod and its Grant, and
/// returns the id of the lease that showed it.
async fn wait_known(https: &HttpsClient, token: &str, body: &[u8]) -> String {
    let start = Instant::now();
    loop {
        let reply = https
            .request("POST", "/v1/leases", Some(token), body)
            .await
            .unwrap();
        if reply.status == 200 {
            return lease_id(&reply);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn report(what: &str, report: &LoadReport) {
    println!("  {what}: {}", report.summary());
    for failure in &report.failures {
        println!("    failed: {failure}");
    }
}
