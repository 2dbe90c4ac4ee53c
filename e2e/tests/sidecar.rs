//! The `ferry-sidecar` binary against the real broker and apiserver, run as
//! the kubelet would run the injected container: it writes a granted
//! pod's secret with the right content and mode, signals readiness, renews,
//! and at SIGTERM revokes, wipes and exits 0. No secret value or token
//! reaches its log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_broker::lease_id::LeaseKeys;
use ferry_contract::{DEFAULT_BROKER_AUDIENCE, READY_MARKER, env};
use ferry_e2e::{
    Cluster, KillOnDrop, RunningBroker, RunningOperator, Subject, create_brokered_secret,
    create_object, eventually, grant, install_crds, pod_bound_token, workspace_binary,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

const WAIT: Duration = Duration::from_secs(60);

/// The value planted in the Secret: it must reach the file and no log line.
const PLANTED: &str = "planted-sidecar-value-5e1d";

struct World {
    _operator: RunningOperator,
    broker: RunningBroker,
}

async fn world() -> &'static World {
    static WORLD: OnceCell<World> = OnceCell::const_new();
    WORLD
        .get_or_init(|| async {
            let cluster = Cluster::shared().await.unwrap();
            install_crds(&cluster.client().unwrap()).await.unwrap();
            World {
                _operator: RunningOperator::start(cluster.config().clone()).unwrap(),
                broker: RunningBroker::start(cluster, LeaseKeys::new(&[7; 32], &[])).unwrap(),
            }
        })
        .await
}

/// Parsed lines of the sidecar's log file.
fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn the_sidecar_writes_renews_and_at_sigterm_revokes_and_wipes_a_secret() {
    let world = world().await;
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    let owner = cluster.create_namespace("sidecar-owner").await.unwrap();
    let app = cluster.create_namespace("sidecar-app").await.unwrap();

    create_object::<Secret>(
        &client,
        &owner,
        json!({"metadata": {"name": "api-key", "labels": {"ferry.dev/brokerable": "true"}},
               "stringData": {"token": PLANTED, "user": "checkout"}}),
    )
    .await
    .unwrap();
    // The shortest ttl allowed, so that a renewal happens within the test.
    create_brokered_secret(
        &client,
        &owner,
        "api-key",
        json!({"ttl": "10s", "source": {"kubernetesSecret": {"name": "api-key"}}}),
    )
    .await
    .unwrap();
    let subject = Subject {
        namespace: &app,
        name: "checkout",
    };
    grant(
        &client,
        &owner,
        "checkout",
        subject,
        json!([{"name": "api-key"}]),
    )
    .await
    .unwrap();

    // The pod never runs: the broker only needs it to exist.
    let pod: Pod = create_object(
        &client,
        &app,
        json!({"metadata": {"name": "checkout-0", "labels": {"ferry.dev/inject": "true"}},
               "spec": {"serviceAccountName": "checkout",
                        "containers": [{"name": "app", "image": "app:1"}]}}),
    )
    .await
    .unwrap();
    let token = pod_bound_token(&client, &pod, DEFAULT_BROKER_AUDIENCE, 600)
        .await
        .unwrap();

    // The broker learns pods and Grants from watches; a real sidecar starts
    // long after its pod is created, so wait as the kubelet would have.
    let broker = world.broker.client().unwrap();
    let request =
        serde_json::to_vec(&json!({"secrets": [{"namespace": owner, "name": "api-key"}]})).unwrap();
    let probe_lease = eventually("the broker to know the pod", WAIT, || async {
        let reply = broker
            .request("POST", "/v1/leases", Some(&token), &request)
            .await
            .unwrap();
        (reply.status == 200).then(|| reply.json().unwrap()["leases"][0]["id"].clone())
    })
    .await;
    broker
        .request(
            "DELETE",
            &format!("/v1/leases/{}", probe_lease.as_str().unwrap()),
            Some(&token),
            b"",
        )
        .await
        .unwrap();

    let work = tempfile::tempdir().unwrap();
    let token_file = work.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    let volume = work.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let log_path = work.path().join("sidecar.log");
    // FERRY_E2E_SIDECAR_BIN runs another build (the release one, to measure it).
    let binary: PathBuf = match std::env::var_os("FERRY_E2E_SIDECAR_BIN") {
        Some(path) => path.into(),
        None => workspace_binary("ferry-sidecar").unwrap(),
    };
    let mut command = Command::new(&binary);
    command
        .arg("run")
        .env_clear()
        .env(env::BROKER_URL, world.broker.url())
        .env(env::BROKER_CA, cluster.authority().cert_pem())
        .env(env::SECRETS, format!("{owner}/api-key"))
        .env(env::SECRETS_DIR, &volume)
        .env(env::TOKEN_FILE, &token_file)
        .env(env::POD_NAME, "checkout-0")
        .env(env::POD_NAMESPACE, &app)
        .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()));
    let mut sidecar = KillOnDrop(command.spawn().unwrap());

    let file = volume.join("api-key/token");
    eventually("the secret and the ready marker", WAIT, || async {
        (volume.join(READY_MARKER).exists() && file.exists()).then_some(())
    })
    .await;
    assert_eq!(std::fs::read_to_string(&file).unwrap(), PLANTED);
    assert_eq!(
        std::fs::read_to_string(volume.join("api-key/user")).unwrap(),
        "checkout"
    );
    assert_eq!(mode(&file), 0o400);
    assert_eq!(
        std::fs::read_link(&file).unwrap(),
        Path::new("..data/token")
    );
    let probe = Command::new(&binary)
        .arg("probe")
        .env(env::SECRETS_DIR, &volume)
        .status()
        .unwrap();
    assert!(probe.success());

    // A 10s ttl renews after about 6.7s.
    let renewed = eventually("a renewal", Duration::from_secs(30), || async {
        log_lines(&log_path)
            .into_iter()
            .find(|line| line["event"] == "secret_written" && line["how"] == "renewed")
    })
    .await;
    assert_eq!(renewed["changed"], false, "same content, same generation");
    // Reported, not asserted: memory after start and a renewal.
    let status = std::fs::read_to_string(format!("/proc/{}/status", sidecar.0.id())).unwrap();
    let ready = log_lines(&log_path)
        .into_iter()
        .find(|line| line["event"] == "ready")
        .unwrap();
    eprintln!(
        "sidecar {}: ready after {} ms; {}",
        binary.display(),
        ready["elapsed_ms"],
        status
            .lines()
            .filter(|l| l.starts_with("VmHWM") || l.starts_with("Rss") || l.starts_with("Threads"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let lease_id = renewed["lease"].as_str().unwrap().to_owned();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), PLANTED);

    kill(Pid::from_raw(sidecar.0.id() as i32), Signal::SIGTERM).unwrap();
    let stop_deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = sidecar.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < stop_deadline,
            "the sidecar did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "{:?}", log_lines(&log_path));
    assert_eq!(
        std::fs::read_dir(&volume).unwrap().count(),
        0,
        "the volume is empty after the wipe"
    );

    let lines = log_lines(&log_path);
    assert!(
        lines
            .iter()
            .any(|line| line["event"] == "revoked" && line["lease"] == lease_id.as_str()),
        "{lines:?}"
    );
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(!text.contains(PLANTED), "the secret reached the log");
    assert!(!text.contains(&token), "the token reached the log");
    for event in [
        "starting",
        "secret_written",
        "ready",
        "shutting_down",
        "secret_wiped",
        "stopped",
    ] {
        assert!(
            lines.iter().any(|line| line["event"] == event),
            "no {event} line: {lines:?}"
        );
    }
}
