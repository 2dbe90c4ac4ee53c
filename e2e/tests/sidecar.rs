//! The `ferry-sidecar` binary against the real broker and apiserver, run as
//! the kubelet would run the injected container: it writes a granted
//! pod's secret with the right content and mode, signals readiness, renews,
//! and at SIGTERM revokes, wipes and exits 0. No secret value or token
//! reaches its log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ferry_contract::{READY_MARKER, env};
use ferry_e2e::sidecar_process::{SidecarProcess, SidecarSpec};
use ferry_e2e::{Cluster, Tenant, World, eventually};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// The value planted in the Secret: it must reach the file and no log line.
const PLANTED: &str = "planted-sidecar-value-5e1d";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn the_sidecar_writes_renews_and_at_sigterm_revokes_and_wipes_a_secret() {
    let world = World::shared()
        .await
        .expect("the cluster, operator and broker");
    let tenant = Tenant::create("sidecar").await.unwrap();
    let (owner, app) = (tenant.owner.clone(), tenant.app.clone());
    let cluster = Cluster::shared().await.unwrap();
    tenant
        .secret("api-key", json!({"token": PLANTED, "user": "checkout"}))
        .await
        .unwrap();
    // The shortest ttl allowed, so that a renewal happens within the test.
    tenant
        .create_brokered_secret(
            tenant
                .brokered_secret("api-key")
                .ttl("10s")
                .kubernetes_secret("api-key"),
        )
        .await
        .unwrap();
    tenant.grant("checkout", &["api-key"]).await.unwrap();
    let (_, token) = tenant.pod("checkout-0", "checkout").await.unwrap();

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

    let mut sidecar = SidecarProcess::start(&SidecarSpec {
        broker_url: &world.broker.url(),
        broker_ca_pem: &cluster.authority().cert_pem(),
        token: &token,
        secrets: &[format!("{owner}/api-key")],
        pod_namespace: &app,
        pod_name: "checkout-0",
    })
    .unwrap();
    let volume = sidecar.volume().to_path_buf();
    let binary = sidecar.binary().to_path_buf();
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
    let renewed = sidecar
        .wait_for_line("secret_written", Duration::from_secs(30), |line| {
            line["how"] == "renewed"
        })
        .await;
    assert_eq!(renewed["changed"], false, "same content, same generation");
    // Reported, not asserted: memory after start and a renewal.
    let status = std::fs::read_to_string(format!("/proc/{}/status", sidecar.pid())).unwrap();
    let ready = sidecar
        .log_lines()
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

    kill(Pid::from_raw(sidecar.pid() as i32), Signal::SIGTERM).unwrap();
    let status = sidecar.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{:?}", sidecar.log_lines());
    assert_eq!(
        std::fs::read_dir(&volume).unwrap().count(),
        0,
        "the volume is empty after the wipe"
    );

    let lines = sidecar.log_lines();
    assert!(
        lines
            .iter()
            .any(|line| line["event"] == "revoked" && line["lease"] == lease_id.as_str()),
        "{lines:?}"
    );
    let text = sidecar.log_text();
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
