//! The sidecar's paths away from the happy one, against the real broker:
//! a lease that reaches its maxTtl is replaced by a new one while the
//! files stay in place; and a broker that accepts connections but never
//! answers (not one that refuses them) still has the files wiped at their
//! expiry and lets the sidecar stop on SIGTERM within its revoke deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_contract::READY_MARKER;
use ferry_e2e::sidecar_process::{SidecarProcess, SidecarSpec};
use ferry_e2e::{Cluster, Tenant, World, eventually};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(60);

/// The value planted in the Secret.
const PLANTED: &str = "planted-sidecar-paths-value-91c2";

/// A tenant with BrokeredSecret `api-key` (a copy of a Secret holding
/// [`PLANTED`], ttl 10s, the shortest allowed, and maxTtl `max_ttl`)
/// granted to `checkout`, and the opted-in pods `pods` with their tokens,
/// once the broker knows them.
async fn scenario(prefix: &str, max_ttl: &str, pods: &[&str]) -> (Tenant, Vec<String>) {
    let world = World::shared()
        .await
        .expect("the cluster, operator and broker");
    let tenant = Tenant::create(prefix).await.unwrap();
    tenant
        .secret("api-key", json!({"token": PLANTED}))
        .await
        .unwrap();
    tenant
        .create_brokered_secret(
            tenant
                .brokered_secret("api-key")
                .ttl("10s")
                .max_ttl(max_ttl)
                .kubernetes_secret("api-key"),
        )
        .await
        .unwrap();
    tenant.grant("checkout", &["api-key"]).await.unwrap();
    let broker = world.broker.client().unwrap();
    let request =
        serde_json::to_vec(&json!({"secrets": [{"namespace": tenant.owner, "name": "api-key"}]}))
            .unwrap();
    let mut tokens = Vec::new();
    for pod in pods {
        let (_, token) = tenant.pod(pod, "checkout").await.unwrap();
        // A real sidecar starts long after its pod is created: wait until
        // the broker's watches know the pod and its Grant.
        let probe = eventually("the broker to know the pod", WAIT, || async {
            let reply = broker
                .request("POST", "/v1/leases", Some(&token), &request)
                .await
                .unwrap();
            (reply.status == 200).then(|| {
                reply.json().unwrap()["leases"][0]["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
        })
        .await;
        broker
            .request("DELETE", &format!("/v1/leases/{probe}"), Some(&token), b"")
            .await
            .unwrap();
        tokens.push(token);
    }
    (tenant, tokens)
}

async fn start_sidecar(
    broker_url: &str,
    tenant: &Tenant,
    token: &str,
    pod: &str,
) -> SidecarProcess {
    let ca = Cluster::shared().await.unwrap().authority().cert_pem();
    SidecarProcess::start(&SidecarSpec {
        broker_url,
        broker_ca_pem: &ca,
        token,
        secrets: &[format!("{}/api-key", tenant.owner)],
        pod_namespace: &tenant.app,
        pod_name: pod,
    })
    .unwrap()
}

#[tokio::test]
async fn a_lease_at_its_max_ttl_is_replaced_by_a_new_one_while_the_files_stay() {
    let (tenant, tokens) = scenario("maxttl", "20s", &["api-0"]).await;
    let world = World::shared().await.unwrap();
    let sidecar = start_sidecar(&world.broker.url(), &tenant, &tokens[0], "api-0").await;
    let first = sidecar
        .wait_for_line("secret_written", WAIT, |line| line["how"] == "issued")
        .await;
    let file = sidecar.volume().join("api-key/token");
    let marker = sidecar.volume().join(READY_MARKER);

    // Renewals bring the lease to its maxTtl of 20s; the renewal after
    // that is refused (409) and the sidecar asks for a new lease. The files
    // and the ready marker are checked at every poll meanwhile.
    let mut missing = 0;
    let replacement = eventually("a new lease after the maxTtl", WAIT, || {
        if !(file.exists() && marker.exists()) {
            missing += 1;
        }
        let lines = sidecar.log_lines();
        let gone = lines
            .iter()
            .position(|line| line["event"] == "lease_gone" && line["status"] == 409);
        std::future::ready(gone.and_then(|gone| {
            lines[gone..]
                .iter()
                .find(|line| line["event"] == "secret_written" && line["how"] == "issued")
                .cloned()
        }))
    })
    .await;
    assert_ne!(replacement["lease"], first["lease"], "a new lease");
    assert_eq!(missing, 0, "the files or the ready marker went missing");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), PLANTED);
    let renewals = sidecar
        .log_lines()
        .into_iter()
        .filter(|line| line["event"] == "secret_written" && line["how"] == "renewed")
        .count();
    assert!(renewals >= 1, "renewed before the maxTtl: {renewals}");
    // Refused because the lease ran out (its last renewal ended exactly at
    // the maxTtl), and not before the maxTtl counted from issuance.
    let gone = sidecar.wait_for_line("lease_gone", WAIT, |_| true).await;
    let error = gone["error"].as_str().unwrap();
    assert!(
        error.contains("maxTtl") || error.contains("expired"),
        "{error}"
    );
    let at = |line: &serde_json::Value| {
        line["ts"]
            .as_str()
            .unwrap()
            .parse::<k8s_openapi::jiff::Timestamp>()
            .unwrap()
    };
    let lived = at(&gone).duration_since(at(&first));
    assert!(
        lived >= k8s_openapi::jiff::SignedDuration::from_secs(19),
        "replaced {lived:?} after issuance, before the maxTtl of 20s"
    );
}

/// A TCP relay on loopback in front of the broker: until [`Self::silence`]
/// it passes connections through; after it, it accepts them and never
/// answers, like a broker whose process hangs.
struct Relay {
    addr: SocketAddr,
    silent: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = Arc::new(AtomicBool::new(false));
        let task = {
            let silent = Arc::clone(&silent);
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((mut client, _)) = listener.accept().await {
                    if silent.load(Ordering::SeqCst) {
                        held.push(client);
                        continue;
                    }
                    tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                }
            })
        };
        Self { addr, silent, task }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn silence(&self) {
        self.silent.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_broker_that_never_answers_cannot_keep_files_past_expiry_nor_hold_up_shutdown() {
    let (tenant, tokens) = scenario("silent", "1h", &["expiring", "stopping"]).await;
    let world = World::shared().await.unwrap();
    let broker_addr: SocketAddr = world
        .broker
        .url()
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let relay = Relay::start(broker_addr).await;
    let expiring = start_sidecar(&relay.url(), &tenant, &tokens[0], "expiring").await;
    let mut stopping = start_sidecar(&relay.url(), &tenant, &tokens[1], "stopping").await;
    for sidecar in [&expiring, &stopping] {
        sidecar
            .wait_for_line("secret_written", WAIT, |line| line["how"] == "issued")
            .await;
        sidecar.wait_for_line("ready", WAIT, |_| true).await;
    }
    relay.silence();

    // SIGTERM while the broker is silent: the revocation cannot be
    // answered, and the sidecar wipes and exits anyway, saying so.
    kill(Pid::from_raw(stopping.pid() as i32), Signal::SIGTERM).unwrap();
    let status = stopping.wait_exit(WAIT).await;
    let lines = stopping.log_lines();
    assert!(
        lines.iter().any(|line| line["event"] == "revoke_timed_out"),
        "{lines:?}"
    );
    let stopped = lines
        .iter()
        .find(|line| line["event"] == "stopped")
        .unwrap_or_else(|| panic!("no stopped line: {lines:?}"));
    assert_eq!(stopped["wiped"], true, "{stopped}");
    assert!(status.success(), "{status:?}: {lines:?}");
    assert_eq!(std::fs::read_dir(stopping.volume()).unwrap().count(), 0);

    // Renewal gets no answer; at the lease's expiry the files go.
    let failed = expiring.wait_for_line("renew_failed", WAIT, |_| true).await;
    assert!(
        failed["error"].as_str().unwrap().contains("no answer"),
        "the broker was silent, not refusing: {failed}"
    );
    expiring
        .wait_for_line("secret_expired", WAIT, |_| true)
        .await;
    let volume = expiring.volume();
    eventually("the files and the ready marker to go", WAIT, || {
        std::future::ready(
            (!volume.join("api-key/token").exists() && !volume.join(READY_MARKER).exists())
                .then_some(()),
        )
    })
    .await;
    for sidecar in [&expiring, &stopping] {
        assert!(
            !sidecar.log_text().contains(PLANTED),
            "the secret reached the log"
        );
    }
}
