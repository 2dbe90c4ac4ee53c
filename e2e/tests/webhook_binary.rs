//! The `ferry-webhook run` binary itself, as a Deployment would run it:
//! ready once its Grant index is filled, called by the real apiserver, a
//! rotated serving certificate picked up without a restart, and a clean
//! exit on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_contract::WEBHOOK_CONFIGURATION_NAME;
use ferry_e2e::pki::Authority;
use ferry_e2e::{
    Cluster, KillOnDrop, eventually, free_port, http_get, install_crds, wait_webhook_active,
    workspace_binary,
};
use ferry_webhook::configuration::{WebhookEndpoint, mutating_webhook_configuration};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

async fn register(client: &kube::Client, addr: SocketAddr, ca_pem: &str) {
    let configuration = mutating_webhook_configuration(
        &WebhookEndpoint::Url(format!("https://{addr}")),
        ca_pem.as_bytes(),
        "ferry-system",
    );
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(
            WEBHOOK_CONFIGURATION_NAME,
            &PatchParams::apply("ferry-e2e").force(),
            &Patch::Apply(&configuration),
        )
        .await
        .unwrap();
}

/// Whether the apiserver gets an answer from the webhook for an opted-in
/// pod: the dry-run create is refused by ferry (no Grant), not by a
/// failed call.
async fn webhook_answers(client: &kube::Client, ns: &str) -> Result<(), String> {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe", "labels": {"ferry.dev/inject": "true"},
                     "annotations": {"ferry.dev/secrets": "orders-db"}},
        "spec": {"containers": [{"name": "app", "image": "app"}]},
    }))
    .unwrap();
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    match Api::<Pod>::namespaced(client.clone(), ns)
        .create(&params, &pod)
        .await
    {
        Err(kube::Error::Api(status)) if status.message.contains("has no Grant") => Ok(()),
        Err(error) => Err(error.to_string()),
        Ok(_) => Err("admitted without the webhook".into()),
    }
}

#[tokio::test]
async fn binary_serves_the_apiserver_reloads_its_certificate_and_exits_cleanly_on_sigterm() {
    let binary = workspace_binary("ferry-webhook").unwrap();
    let cluster = Cluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    install_crds(&client).await.unwrap();
    let ns = cluster.create_namespace("binary").await.unwrap();

    let tls_dir = cluster.dir().join("webhook-tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let first_ca = Authority::generate("first-ca").unwrap();
    let first = first_ca
        .serving_cert(&["127.0.0.1"], &tls_dir, "serving")
        .unwrap();
    let (addr, admin) = (free_port().unwrap(), free_port().unwrap());
    let log_path = cluster.dir().join("logs/ferry-webhook.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut webhook = KillOnDrop(
        Command::new(&binary)
            .args(["run", "--log-format", "text", "--tls-reload-seconds", "1"])
            .args(["--listen-addr", &addr.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .arg("--tls-cert")
            .arg(&first.cert)
            .arg("--tls-key")
            .arg(&first.key)
            .env("KUBECONFIG", cluster.kubeconfig())
            .env("POD_NAMESPACE", "ferry-system")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    eventually("the webhook binary to be ready", WAIT, || async {
        let reply = http_get(admin, "/readyz").await.ok()?;
        (reply.status == 200).then_some(())
    })
    .await;
    register(&client, addr, &first_ca.cert_pem()).await;
    wait_webhook_active(&client, &ns).await.unwrap();
    webhook_answers(&client, &ns).await.unwrap();

    // Rotate to a certificate from another CA, written over the same files.
    // Once the apiserver trusts only the new CA, its calls succeed only if
    // the running binary serves the new certificate.
    let second_ca = Authority::generate("second-ca").unwrap();
    second_ca
        .serving_cert(&["127.0.0.1"], &tls_dir, "serving")
        .unwrap();
    // The binary notices the new files on its own (it reloads every
    // second here); only then can the apiserver's calls under the new CA
    // tell a reload from a call made on the old configuration.
    eventually("the binary to reload its certificate", WAIT, || async {
        std::fs::read_to_string(&log_path)
            .ok()
            .filter(|log| log.contains("serving certificate reloaded"))
            .map(drop)
    })
    .await;
    register(&client, addr, &second_ca.cert_pem()).await;
    eventually(
        "the apiserver to reach the webhook with the rotated certificate",
        WAIT,
        || async { webhook_answers(&client, &ns).await.ok() },
    )
    .await;

    let metrics = http_get(admin, "/metrics").await.unwrap().body;
    assert!(
        metrics.contains(
            "ferry_webhook_admissions_total{reason=\"missing_grant\",result=\"refused\"}"
        ),
        "{metrics}"
    );

    let pid = Pid::from_raw(i32::try_from(webhook.0.id()).unwrap());
    kill(pid, Signal::SIGTERM).unwrap();
    let status = eventually("the webhook binary to exit", WAIT, || {
        let status = webhook.0.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(status.success(), "exit status {status}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("serving certificate reloaded"), "{log}");
    assert!(log.contains("ferry-webhook stopped"), "{log}");
}
