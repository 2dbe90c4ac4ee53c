//! Benchmark of the sidecar against the real broker and apiserver: the
//! binary's size, the time from process start to every secret written
//! (`ferry-sidecar init`, repeated; p50 and p99), warm (the same pod
//! again: its TokenReview cached, its Secret read moments ago) and cold (a
//! new pod each run: a TokenReview and a Secret `get` in the way, as at a
//! real pod's start), and the steady RSS of `ferry-sidecar run` once its
//! secrets are in place.
//!
//! Not a test: nothing is asserted about the numbers. Run with `make bench`
//! or `cargo bench -p ferry-e2e --bench sidecar_start`; FERRY_BENCH_RUNS
//! sets the warm repetitions (default 200), FERRY_BENCH_COLD_RUNS the cold
//! ones (default and at most 20), FERRY_E2E_SIDECAR_BIN another build
//! of the sidecar (such as `make sidecar`'s static one).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_broker::auth::ReviewLimits;
use ferry_broker::lease_id::LeaseKeys;
use ferry_broker::live_leases::DEFAULT_MAX_LIVE_LEASES;
use ferry_broker::routes::default_rate_limit;
use ferry_contract::{DEFAULT_BROKER_AUDIENCE, READY_MARKER, env};
use ferry_e2e::{
    BrokerLimits, Cluster, ColdPod, KillOnDrop, RunningBroker, bench_cold_pods, bench_setting,
    bench_tenant, install_crds, memory_kib, percentile, pod_bound_token, workspace_binary,
};
use serde_json::json;

#[tokio::main]
async fn main() {
    let runs = bench_setting("FERRY_BENCH_RUNS", 200).max(1);
    let binary: PathBuf = match std::env::var_os("FERRY_E2E_SIDECAR_BIN") {
        Some(path) => path.into(),
        None => workspace_binary("ferry-sidecar").unwrap(),
    };
    let cluster = Cluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    install_crds(&client).await.unwrap();
    let pod = bench_tenant(
        &client,
        &[(
            "api-key",
            json!({"source": {"kubernetesSecret": {"name": "api-key"}}}),
        )],
    )
    .await
    .unwrap();
    // A pod holds at most 8 live leases of a secret and `init` leaves its
    // lease live, so warm runs cycle through a pool of pods, each first
    // visited once to warm the broker's caches (not counted). Cold runs use
    // pods the broker has not seen a token of, asking for a secret it has
    // not read lately.
    let pool = runs.div_ceil(DEFAULT_MAX_LIVE_LEASES as u64 - 1);
    let cold_runs = bench_setting("FERRY_BENCH_COLD_RUNS", 20).max(1);
    let mut pods = bench_cold_pods(&client, pool + cold_runs).await.unwrap();
    let cold = pods.split_off(usize::try_from(pool).unwrap());
    let warm_pods = pods;
    // Every run comes from 127.0.0.1; the default 10 reviews/s per address
    // (burst 20) would measure that limit, not the start.
    let review_limits = ReviewLimits {
        per_address: governor::Quota::per_second(std::num::NonZeroU32::new(1000).unwrap()),
        ..ReviewLimits::default()
    };
    let broker = RunningBroker::start_limited(
        &cluster,
        cluster.config().clone(),
        LeaseKeys::new(&[3; 32], &[]),
        default_rate_limit(),
        BrokerLimits {
            reviews: review_limits,
            ..BrokerLimits::default()
        },
    )
    .unwrap();
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let token_file = work.path().join("token");
    std::fs::write(
        &token_file,
        pod_bound_token(&client, &pod, DEFAULT_BROKER_AUDIENCE, 3600)
            .await
            .unwrap(),
    )
    .unwrap();
    let warm = ColdPod {
        secret: "api-key".into(),
        uid: pod.metadata.uid.clone().unwrap(),
        token: String::new(),
    };
    // `pod` names the secret and the pod; its token is in `token_file`.
    let sidecar_of =
        |mode: &str, volume: &std::path::Path, pod: &ColdPod, token_file: &std::path::Path| {
            let mut command = Command::new(&binary);
            command
                .arg(mode)
                .env_clear()
                .env(env::BROKER_URL, broker.url())
                .env(env::BROKER_CA, cluster.authority().cert_pem())
                .env(env::SECRETS, format!("payments/{}", pod.secret))
                .env(env::SECRETS_DIR, volume)
                .env(env::TOKEN_FILE, token_file)
                .env(
                    env::POD_NAME,
                    if pod.secret == "api-key" {
                        "api"
                    } else {
                        &pod.secret
                    },
                )
                .env(env::POD_NAMESPACE, "shop")
                .env(env::POD_UID, &pod.uid)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            command
        };
    let sidecar =
        |mode: &str, volume: &std::path::Path| sidecar_of(mode, volume, &warm, &token_file);

    // Start to all secrets written: `init` exits once they are.
    let init = |pod: &ColdPod, volume: &str| {
        let volume = work.path().join(volume);
        std::fs::create_dir(&volume).unwrap();
        let token_file = work.path().join(format!("token-{}", pod.secret));
        std::fs::write(&token_file, &pod.token).unwrap();
        let started = Instant::now();
        let status = sidecar_of("init", &volume, pod, &token_file)
            .status()
            .unwrap();
        let took = started.elapsed();
        assert!(status.success(), "init of {} failed: {status}", pod.secret);
        assert!(volume.join(format!("{}/token", pod.secret)).exists());
        std::fs::remove_dir_all(&volume).unwrap();
        took
    };
    let mut times: Vec<Duration> = warm_pods
        .iter()
        .cycle()
        .take(usize::try_from(runs + pool).unwrap())
        .enumerate()
        .map(|(run, pod)| init(pod, &format!("init-{run}")))
        // The first visit of each pod warms the broker's caches.
        .skip(warm_pods.len())
        .collect();
    times.sort();
    let mut cold_times: Vec<Duration> = cold
        .iter()
        .map(|pod| init(pod, &format!("cold-{}", pod.secret)))
        .collect();
    cold_times.sort();

    // Steady RSS of `run` with its secrets written.
    let volume = work.path().join("run");
    std::fs::create_dir(&volume).unwrap();
    let running = KillOnDrop(sidecar("run", &volume).spawn().unwrap());
    let waited = Instant::now();
    while !volume.join(READY_MARKER).exists() {
        assert!(waited.elapsed() < Duration::from_secs(30), "never ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = memory_kib(running.0.id()).0;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let size = std::fs::metadata(&binary).unwrap().len();
    println!();
    println!("ferry-sidecar ({})", binary.display());
    println!(
        "  binary size: {:.2} MiB ({size} bytes)",
        size as f64 / 1048576.0
    );
    println!(
        "  process start to all secrets written, warm ({pool} pods in turn, TokenReview and Secret cached; init, {runs} runs): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        ms(percentile(&times, 0.50)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().unwrap())
    );
    println!(
        "  cold (a new pod's first request: TokenReview and Secret get; {} runs): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        cold_times.len(),
        ms(percentile(&cold_times, 0.50)),
        ms(percentile(&cold_times, 0.99)),
        ms(*cold_times.last().unwrap())
    );
    println!(
        "  steady RSS of `run` with its secret written: {:.2} MiB",
        rss as f64 / 1024.0
    );
    println!(
        "  differs from production defaults in: the broker's TokenReviews per address, 1000/s (every run comes from 127.0.0.1)"
    );
    println!("  goals: static binary < 4 MiB, steady RSS <= 3 MiB, first secret < 50 ms");
}
