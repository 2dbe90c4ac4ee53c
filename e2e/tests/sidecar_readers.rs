//! The `ferry-sidecar` binary against the real broker and apiserver: when a
//! renewal brings new content, a reader that opened the old file before the
//! swap still reads all of its old content (the old generation is unlinked
//! first and zeroed only after a grace period), and at SIGTERM every
//! retired generation is zeroed and the volume left empty.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{Read, Seek};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_api::testing;
use ferry_broker::lease_id::LeaseKeys;
use ferry_contract::{BROKERABLE, BROKERABLE_LABEL, READY_MARKER, env};
use ferry_e2e::{
    Cluster, KillOnDrop, RunningBroker, RunningOperator, broker_pod, create_brokered_secret,
    create_object, eventually, grant, install_crds, workspace_binary,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn log_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect()
}

#[tokio::test]
async fn a_reader_of_a_replaced_secret_keeps_its_whole_old_content() {
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    install_crds(&client).await.unwrap();
    let _operator = RunningOperator::start(cluster.config().clone()).unwrap();
    let broker = RunningBroker::start(cluster, LeaseKeys::new(&[9; 32], &[])).unwrap();
    let owner = cluster.create_namespace("readers-owner").await.unwrap();
    let app = cluster.create_namespace("readers-app").await.unwrap();

    // Larger than one page, so a reader can stop in the middle.
    let old = "old-certificate-line\n".repeat(400);
    create_object::<Secret>(
        &client,
        &owner,
        json!({"metadata": {"name": "bundle", "labels": {BROKERABLE_LABEL: BROKERABLE}},
               "stringData": {"ca.pem": old}}),
    )
    .await
    .unwrap();
    let bundle = testing::brokered_secret(&owner, "bundle")
        .ttl("10s")
        .kubernetes_secret("bundle");
    create_brokered_secret(&client, &bundle.build())
        .await
        .unwrap();
    let policy = testing::access_policy(&owner, "reader")
        .service_account(&app, "reader")
        .secret("bundle");
    grant(&client, policy.build()).await.unwrap();
    let (_pod, token) = broker_pod(&client, &app, "reader-0", "reader")
        .await
        .unwrap();
    let http = broker.client().unwrap();
    let request =
        serde_json::to_vec(&json!({"secrets": [{"namespace": owner, "name": "bundle"}]})).unwrap();
    eventually("the broker to know the pod", WAIT, || async {
        let reply = http
            .request("POST", "/v1/leases", Some(&token), &request)
            .await
            .unwrap();
        (reply.status == 200).then_some(())
    })
    .await;

    let work = tempfile::tempdir().unwrap();
    let token_file = work.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    let volume = work.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let log_path = work.path().join("sidecar.log");
    let binary: PathBuf = workspace_binary("ferry-sidecar").unwrap();
    let mut command = Command::new(&binary);
    command
        .arg("run")
        .env_clear()
        .env(env::BROKER_URL, broker.url())
        .env(env::BROKER_CA, cluster.authority().cert_pem())
        .env(env::SECRETS, format!("{owner}/bundle"))
        .env(env::SECRETS_DIR, &volume)
        .env(env::TOKEN_FILE, &token_file)
        .env(env::POD_NAME, "reader-0")
        .env(env::POD_NAMESPACE, &app)
        .stderr(Stdio::from(File::create(&log_path).unwrap()));
    let mut sidecar = KillOnDrop(command.spawn().unwrap());

    let file = volume.join("bundle/ca.pem");
    eventually("the secret and the ready marker", WAIT, || async {
        (volume.join(READY_MARKER).exists() && file.exists()).then_some(())
    })
    .await;

    // The application opens the file and reads its first part...
    let mut reader = File::open(&file).unwrap();
    let mut seen = vec![0u8; 1000];
    reader.read_exact(&mut seen).unwrap();

    // ... the Secret is rotated, and the next renewal swaps the files ...
    Api::<Secret>::namespaced(client.clone(), &owner)
        .patch(
            "bundle",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"ca.pem": "new"}})),
        )
        .await
        .unwrap();
    eventually(
        "a renewal with new content",
        Duration::from_secs(45),
        || async {
            log_lines(&log_path).into_iter().find(|line| {
                line["event"] == "secret_written"
                    && line["how"] == "renewed"
                    && line["changed"] == true
            })
        },
    )
    .await;
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "new");

    // ... and the reader still gets the rest of what it opened, not zeros.
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    seen.extend_from_slice(&rest);
    let zeros = seen.iter().filter(|b| **b == 0).count();
    assert!(
        seen == old.as_bytes(),
        "the reader got {} bytes, {zeros} of them zeros, instead of its {} old bytes",
        seen.len(),
        old.len()
    );

    // At SIGTERM every retired generation is zeroed: the open file now
    // reads zeros, and the volume is empty.
    kill(Pid::from_raw(sidecar.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = eventually("the sidecar to exit", Duration::from_secs(20), || {
        let exited = sidecar.0.try_wait().unwrap();
        async move { exited }
    })
    .await;
    assert_eq!(status.code(), Some(0), "{:?}", log_lines(&log_path));
    assert_eq!(
        std::fs::read_dir(&volume).unwrap().count(),
        0,
        "the volume is empty after the wipe"
    );
    reader.rewind().unwrap();
    let mut after = Vec::new();
    reader.read_to_end(&mut after).unwrap();
    assert_eq!(after.len(), old.len());
    assert!(after.iter().all(|b| *b == 0), "the old content was zeroed");
}
