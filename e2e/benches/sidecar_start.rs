//! Benchmark of the sidecar against the real broker and apiserver: the
//! binary's size, the time from process start to every secret written
//! (`ferry-sidecar init`, repeated; p50 and p99), and the steady RSS of
//! `ferry-sidecar run` once its secrets are in place.
//!
//! Not a test: nothing is asserted about the numbers. Run with `make bench`
//! or `cargo bench -p ferry-e2e --bench sidecar_start`; FERRY_BENCH_RUNS
//! sets the repetitions (default 200), FERRY_E2E_SIDECAR_BIN another build
//! of the sidecar (such as `make sidecar`'s static one).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_broker::lease_id::LeaseKeys;
use ferry_contract::{DEFAULT_BROKER_AUDIENCE, READY_MARKER, env};
use ferry_e2e::{
    Cluster, KillOnDrop, RunningBroker, bench_setting, bench_tenant, install_crds, percentile,
    pod_bound_token, workspace_binary,
};
use serde_json::json;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

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
    let broker = RunningBroker::start(&cluster, LeaseKeys::new(&[3; 32], &[])).unwrap();
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let token_file = work.path().join("token");
    std::fs::write(
        &token_file,
        pod_bound_token(&client, &pod, DEFAULT_BROKER_AUDIENCE, 3600)
            .await
            .unwrap(),
    )
    .unwrap();
    let sidecar = |mode: &str, volume: &std::path::Path| {
        let mut command = Command::new(&binary);
        command
            .arg(mode)
            .env_clear()
            .env(env::BROKER_URL, broker.url())
            .env(env::BROKER_CA, cluster.authority().cert_pem())
            .env(env::SECRETS, "payments/api-key")
            .env(env::SECRETS_DIR, volume)
            .env(env::TOKEN_FILE, &token_file)
            .env(env::POD_NAME, "api")
            .env(env::POD_NAMESPACE, "shop")
            .env(env::POD_UID, pod.metadata.uid.as_deref().unwrap())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    };

    // Start to all secrets written: `init` exits once they are.
    let mut times = Vec::with_capacity(usize::try_from(runs).unwrap());
    for run in 0..runs + 5 {
        let volume = work.path().join(format!("init-{run}"));
        std::fs::create_dir(&volume).unwrap();
        let started = Instant::now();
        let status = sidecar("init", &volume).status().unwrap();
        let took = started.elapsed();
        assert!(status.success(), "init failed: {status}");
        assert!(volume.join("api-key/token").exists());
        // The first few warm the broker's caches and the page cache.
        if run >= 5 {
            times.push(took);
        }
        std::fs::remove_dir_all(&volume).unwrap();
    }
    times.sort();

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
    let rss = rss_kib(running.0.id());

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let size = std::fs::metadata(&binary).unwrap().len();
    println!();
    println!("ferry-sidecar ({})", binary.display());
    println!(
        "  binary size: {:.2} MiB ({size} bytes)",
        size as f64 / 1048576.0
    );
    println!(
        "  process start to all secrets written (init, {runs} runs): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        ms(percentile(&times, 0.50)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().unwrap())
    );
    println!(
        "  steady RSS of `run` with its secret written: {:.2} MiB",
        rss as f64 / 1024.0
    );
    println!("  goals: static binary < 4 MiB, steady RSS <= 3 MiB, first secret < 50 ms");
}
