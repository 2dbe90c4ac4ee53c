//! A pod's secrets from creation to deletion, with everything real but the
//! kubelet: the apiserver with the webhook registered, the operator, the
//! broker, PostgreSQL, and the node stand-in running the injected sidecar
//! binary. Files are in place with their modes before the app starts; a
//! short-lived JWT is renewed before it expires; PostgreSQL credentials
//! work until the pod is deleted, and are dropped even when the sidecar was
//! SIGKILLed; removing the policy ends renewals and the files go at expiry;
//! an ungranted pod is never created; no planted value reaches any log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::Engine as _;
use ferry_api::resources::AccessPolicy;
use ferry_contract::{READY_MARKER, SECRETS_VOLUME_NAME};
use ferry_e2e::sidecar_process::expiry_in_log;
use ferry_e2e::{
    Cluster, PodRun, Postgres, Stack, Tenant, capture_logs, captured_logs, create_object,
    eventually,
};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use tokio::sync::OnceCell;

const WAIT: Duration = Duration::from_secs(90);

/// The value planted in the Secret behind `orders-api-key`.
const PLANTED: &str = "planted-api-key-5d1e0b";

async fn stack() -> &'static Stack {
    static STACK: OnceCell<Stack> = OnceCell::const_new();
    capture_logs();
    STACK
        .get_or_init(|| async {
            let database = Postgres::shared().await.unwrap();
            database
                .admin()
                .await
                .unwrap()
                .batch_execute(
                    "CREATE TABLE orders (id int PRIMARY KEY, item text);
                     INSERT INTO orders VALUES (1, 'tea');
                     CREATE ROLE orders_reader NOLOGIN;
                     GRANT SELECT ON orders TO orders_reader;
                     CREATE ROLE lifecycle_admin LOGIN CREATEROLE PASSWORD 'lifecycle-admin-password';
                     GRANT orders_reader TO lifecycle_admin WITH ADMIN OPTION;
                     GRANT pg_signal_backend TO lifecycle_admin;",
                )
                .await
                .unwrap();
            Stack::start(Cluster::shared().await.unwrap())
                .await
                .unwrap()
        })
        .await
}

/// A team namespace with three BrokeredSecrets (`orders-api-key` from a
/// Secret, `orders-db` from PostgreSQL, `orders-token` a 10 s JWT), all
/// granted to service account `checkout` of an app namespace by the
/// AccessPolicy `checkout`; `intruder` there is granted nothing.
async fn scenario(prefix: &str) -> (Client, String, String) {
    stack().await;
    let database = Postgres::shared().await.unwrap();
    let tenant = Tenant::create(prefix).await.unwrap();
    tenant
        .secret("api-key", json!({"token": PLANTED}))
        .await
        .unwrap();
    tenant
        .secret(
            "db-admin",
            json!({"dsn": database.dsn("lifecycle_admin", "lifecycle-admin-password")}),
        )
        .await
        .unwrap();
    for secret in [
        tenant
            .brokered_secret("orders-api-key")
            .kubernetes_secret("api-key"),
        tenant
            .brokered_secret("orders-db")
            .postgres("db-admin", "dsn")
            .member_of(&["orders_reader"]),
        tenant
            .brokered_secret("orders-token")
            .ttl("10s")
            .jwt(&["orders"]),
    ] {
        tenant.create_brokered_secret(secret).await.unwrap();
    }
    tenant
        .grant("checkout", &["orders-api-key", "orders-db", "orders-token"])
        .await
        .unwrap();
    create_object::<ServiceAccount>(
        &tenant.client,
        &tenant.app,
        json!({"metadata": {"name": "intruder"}}),
    )
    .await
    .unwrap();
    (tenant.client, tenant.owner, tenant.app)
}

fn pod_manifest(name: &str, account: &str, secrets: &[String]) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"ferry.dev/inject": "true"},
                     "annotations": {"ferry.dev/secrets": secrets.join(",")}},
        "spec": {"serviceAccountName": account,
                 "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
                 "containers": [{"name": "app", "image": "registry.example/app:1"}]},
    }))
    .unwrap()
}

/// Creates an opted-in pod, retrying while the webhook's Grant index
/// catches up, and waits until the app has started.
async fn start_pod(client: &Client, app: &str, name: &str, secrets: &[String]) -> (Pod, PodRun) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), app);
    let pod = eventually("the webhook to admit the pod", WAIT, || async {
        pods.create(
            &PostParams::default(),
            &pod_manifest(name, "checkout", secrets),
        )
        .await
        .ok()
    })
    .await;
    let uid = pod.metadata.uid.clone().unwrap();
    let run = eventually("the app to start", WAIT, || async {
        stack().await.node.pod(&uid).filter(|run| run.started)
    })
    .await;
    (pod, run)
}

fn secrets_dir(run: &PodRun) -> std::path::PathBuf {
    run.volumes[SECRETS_VOLUME_NAME].clone()
}

fn seen(run: &PodRun, path: &str) -> (u32, Vec<u8>) {
    let file = run.seen_at_start[SECRETS_VOLUME_NAME]
        .iter()
        .find(|file| file.path == path)
        .unwrap_or_else(|| {
            panic!(
                "{path} was not there when the app started: {:?}",
                run.seen_at_start
            )
        });
    (file.mode, file.content.clone())
}

async fn role_exists(name: &str) -> bool {
    Postgres::shared()
        .await
        .unwrap()
        .admin()
        .await
        .unwrap()
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .unwrap()
        .is_some()
}

/// Deletes the pod and waits until the node stand-in has torn it down.
async fn delete_pod(client: &Client, app: &str, name: &str, uid: &str) -> PodRun {
    Api::<Pod>::namespaced(client.clone(), app)
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    eventually("the pod to be torn down", WAIT, || async {
        stack().await.node.pod(uid).filter(|run| run.finished)
    })
    .await
}

fn assert_nothing_leaked(run: &PodRun, values: &[&str]) {
    let sidecar_log = std::fs::read_to_string(&run.sidecar_log).unwrap_or_default();
    let logs = [
        ("ferry's components", captured_logs()),
        ("the sidecar", sidecar_log),
        ("PostgreSQL", Postgres::log_of_shared()),
    ];
    for value in values {
        let encoded = base64::engine::general_purpose::STANDARD.encode(value);
        for (whose, log) in &logs {
            assert!(!log.contains(value), "a secret value is in {whose}'s log");
            assert!(
                !log.contains(&encoded),
                "a secret's base64 is in {whose}'s log"
            );
        }
    }
}

#[tokio::test]
async fn secrets_are_in_place_before_the_app_starts_and_gone_with_the_pod() {
    let (client, owner, app) = scenario("life").await;
    let secrets = [
        format!("{owner}/orders-api-key"),
        format!("{owner}/orders-db"),
    ];
    let (pod, run) = start_pod(&client, &app, "api", &secrets).await;
    let uid = pod.metadata.uid.clone().unwrap();

    // What the app found when it started: every file, group-readable for
    // the pod's fsGroup and nothing more.
    let (mode, token) = seen(&run, "orders-api-key/token");
    assert_eq!((mode, token.as_slice()), (0o440, PLANTED.as_bytes()));
    let (mode, username) = seen(&run, "orders-db/username");
    assert_eq!(mode, 0o440);
    let (_, password) = seen(&run, "orders-db/password");
    let (username, password) = (
        String::from_utf8(username).unwrap(),
        String::from_utf8(password).unwrap(),
    );
    let status = Api::<Pod>::namespaced(client.clone(), &app)
        .get("api")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.phase.as_deref(), Some("Running"));

    // The credentials work as the app would use them.
    let database = Postgres::shared().await.unwrap();
    let session = database.connect_as(&username, &password).await.unwrap();
    assert_eq!(
        session
            .query("SELECT item FROM orders", &[])
            .await
            .unwrap()
            .len(),
        1
    );

    // Deleting the pod: the sidecar revokes and wipes, then exits 0.
    let run = delete_pod(&client, &app, "api", &uid).await;
    assert_eq!(
        run.sidecar_exit,
        Some(0),
        "the sidecar's log: {}",
        std::fs::read_to_string(&run.sidecar_log).unwrap_or_default()
    );
    assert_eq!(
        run.left_at_exit[SECRETS_VOLUME_NAME],
        vec![],
        "files left behind"
    );
    assert!(!role_exists(&username).await, "the role outlived the pod");
    // The sidecar gave its leases back itself, while its pod terminated.
    assert!(
        captured_logs()
            .lines()
            .any(|line| line.contains("\"action\":\"revoke\"")
                && line.contains("\"result\":\"allowed\"")
                && line.contains(&format!("\"pod\":\"{app}/api\""))),
        "no revoke by the sidecar was audited"
    );
    assert!(
        session.query("SELECT 1", &[]).await.is_err(),
        "the session outlived the pod"
    );
    assert!(database.connect_as(&username, &password).await.is_err());
    assert!(!secrets_dir(&run).exists());
    assert_nothing_leaked(&run, &[PLANTED, &password]);
}

fn claims(token: &[u8]) -> serde_json::Value {
    let token = std::str::from_utf8(token).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_short_lived_jwt_is_renewed_before_it_expires() {
    let (client, owner, app) = scenario("renew").await;
    let (pod, run) = start_pod(&client, &app, "api", &[format!("{owner}/orders-token")]).await;
    let (_, first) = seen(&run, "orders-token/token");
    let first_exp = claims(&first)["exp"].as_i64().unwrap();
    let file = secrets_dir(&run).join("orders-token/token");
    let renewed = eventually("a renewed token", WAIT, || async {
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let current = std::fs::read(&file).ok()?;
        (current != first).then_some((now, current))
    })
    .await;
    assert!(
        renewed.0 < first_exp,
        "renewed only after the first token expired"
    );
    assert!(claims(&renewed.1)["exp"].as_i64().unwrap() > first_exp);
    let run = delete_pod(&client, &app, "api", &pod.metadata.uid.unwrap()).await;
    let first = String::from_utf8(first).unwrap();
    assert_nothing_leaked(&run, &[&first]);
}

#[tokio::test]
async fn a_sigkilled_sidecars_role_is_dropped_when_its_pod_is_deleted() {
    let (client, owner, app) = scenario("crash").await;
    let (pod, run) = start_pod(&client, &app, "api", &[format!("{owner}/orders-db")]).await;
    let username = String::from_utf8(seen(&run, "orders-db/username").1).unwrap();
    let pid = i32::try_from(run.sidecar_pid.unwrap()).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let uid = pod.metadata.uid.unwrap();
    eventually("the sidecar to be dead", WAIT, || async {
        stack()
            .await
            .node
            .pod(&uid)
            .and_then(|run| run.sidecar_exit)
    })
    .await;
    assert!(
        role_exists(&username).await,
        "nobody revoked: the sidecar was killed"
    );

    delete_pod(&client, &app, "api", &uid).await;
    eventually("the reaper to drop the role", WAIT, || async {
        (!role_exists(&username).await).then_some(())
    })
    .await;
}

#[tokio::test]
async fn once_the_policy_is_removed_renewal_is_refused_and_the_files_go_at_expiry() {
    let (client, owner, app) = scenario("revoked").await;
    let (pod, run) = start_pod(&client, &app, "api", &[format!("{owner}/orders-token")]).await;
    let dir = secrets_dir(&run);
    assert!(dir.join(READY_MARKER).exists());
    Api::<AccessPolicy>::namespaced(client.clone(), &owner)
        .delete("checkout", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the token to be removed at its expiry", WAIT, || async {
        (!dir.join("orders-token/token").exists()).then_some(())
    })
    .await;
    // At its expiry, not before: the sidecar let the lease run out.
    let log = std::fs::read_to_string(&run.sidecar_log).unwrap();
    let (expires_at, wiped_at) = expiry_in_log(&log, &format!("{owner}/orders-token"))
        .unwrap_or_else(|| panic!("no expiry in the sidecar's log:\n{log}"));
    assert!(
        wiped_at >= expires_at - k8s_openapi::jiff::SignedDuration::from_secs(1),
        "wiped at {wiped_at}, before the lease's expiry at {expires_at}"
    );
    assert!(
        !dir.join(READY_MARKER).exists(),
        "still reports ready without its secret"
    );
    assert!(
        captured_logs()
            .lines()
            .any(|line| line.contains("\"action\":\"renew\"")
                && line.contains("\"result\":\"denied\"")
                && line.contains(&format!("system:serviceaccount:{app}:checkout")))
    );
    delete_pod(&client, &app, "api", &pod.metadata.uid.unwrap()).await;
}

#[tokio::test]
async fn an_ungranted_pod_is_never_created() {
    let (client, owner, app) = scenario("ungranted").await;
    let refused = Api::<Pod>::namespaced(client.clone(), &app)
        .create(
            &PostParams::default(),
            &pod_manifest("greedy", "intruder", &[format!("{owner}/orders-db")]),
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("no Grant"), "{refused}");
    assert!(
        Api::<Pod>::namespaced(client, &app)
            .get_opt("greedy")
            .await
            .unwrap()
            .is_none()
    );
}
