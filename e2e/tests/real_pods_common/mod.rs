//! What the real-pod tests and the pod-start benchmark share: one real
//! node with ferry's operator, broker and webhook for the whole binary, a
//! team scenario on it, and pod helpers. Included with `mod` by
//! `tests/real_pods.rs`, `tests/broker_outage.rs` and
//! `tests/logs_at_trace.rs`, and by `#[path]` from `benches/pod_start.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::time::Duration;

use base64::Engine as _;
use ferry_api::testing;
use ferry_contract::{BROKERABLE, BROKERABLE_LABEL, SIDECAR_CONTAINER_NAME};
use ferry_e2e::images::{self, BUSYBOX_IMAGE};
use ferry_e2e::{
    Cluster, PodStack, Postgres, RealNode, capture_logs, captured_logs, create_brokered_secret,
    create_object, eventually, grant,
};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, LogParams, PostParams};
use serde_json::json;
use tokio::sync::OnceCell;

pub const WAIT: Duration = Duration::from_secs(120);

/// The value planted in the Secret behind `orders-api-key`.
pub const PLANTED: &str = "planted-api-key-7f3a91";

/// The password of the broker's admin role (`pods_admin`, not a
/// superuser: the broker refuses one), in the Secret `db-admin`.
pub const ADMIN_PASSWORD: &str = "pods-admin-password";

/// Where the app finds its secrets.
pub const SECRETS: &str = "/var/run/secrets/ferry";

pub struct Env {
    pub cluster: &'static Cluster,
    pub node: &'static RealNode,
    pub stack: PodStack,
}

/// The binary's node and ferry, started on first use. The first call to
/// a `capture_logs*` function decides the components' log level: call
/// `capture_logs_at` before this to choose another than INFO.
pub async fn env() -> &'static Env {
    static ENV: OnceCell<Env> = OnceCell::const_new();
    capture_logs();
    ENV.get_or_init(|| async {
        let cluster = Cluster::shared().await.unwrap();
        let (node, database) = tokio::join!(RealNode::shared(), Postgres::shared());
        let node = node.unwrap();
        database
            .unwrap()
            .admin()
            .await
            .unwrap()
            .batch_execute(&format!(
                "CREATE TABLE orders (id int PRIMARY KEY, item text);
                 INSERT INTO orders VALUES (1, 'tea');
                 CREATE ROLE orders_reader NOLOGIN;
                 GRANT SELECT ON orders TO orders_reader;
                 CREATE ROLE pods_admin LOGIN CREATEROLE PASSWORD '{ADMIN_PASSWORD}';
                 GRANT orders_reader TO pods_admin WITH ADMIN OPTION;
                 GRANT pg_signal_backend TO pods_admin;"
            ))
            .await
            .unwrap();
        let stack = PodStack::start(cluster, node).await.unwrap();
        Env {
            cluster,
            node,
            stack,
        }
    })
    .await
}

/// A team namespace with `orders-api-key` (from a Secret), `orders-db`
/// (PostgreSQL) and `orders-token` (a 10 s JWT), granted to service account
/// `checkout` of an app namespace; `intruder` there is granted nothing.
pub async fn scenario(prefix: &str) -> (Client, String, String) {
    let env = env().await;
    let database = Postgres::shared().await.unwrap();
    let client = env.cluster.client().unwrap();
    let owner = env
        .cluster
        .create_namespace(&format!("{prefix}-owner"))
        .await
        .unwrap();
    let app = env
        .cluster
        .create_namespace(&format!("{prefix}-app"))
        .await
        .unwrap();
    for (name, data) in [
        ("api-key", json!({"token": PLANTED})),
        (
            "db-admin",
            json!({"dsn": database.dsn("pods_admin", ADMIN_PASSWORD)}),
        ),
    ] {
        create_object::<Secret>(
            &client,
            &owner,
            json!({"metadata": {"name": name, "labels": {BROKERABLE_LABEL: BROKERABLE}},
                   "stringData": data}),
        )
        .await
        .unwrap();
    }
    for secret in [
        testing::brokered_secret(&owner, "orders-api-key").kubernetes_secret("api-key"),
        testing::brokered_secret(&owner, "orders-db")
            .postgres("db-admin", "dsn")
            .member_of(&["orders_reader"]),
        testing::brokered_secret(&owner, "orders-token")
            .ttl("10s")
            .jwt(&["orders"]),
    ] {
        create_brokered_secret(&client, &secret.build())
            .await
            .unwrap();
    }
    let policy = testing::access_policy(&owner, "checkout")
        .service_account(&app, "checkout")
        .secret("orders-api-key")
        .secret("orders-db")
        .secret("orders-token");
    grant(&client, policy.build()).await.unwrap();
    create_object::<ServiceAccount>(&client, &app, json!({"metadata": {"name": "intruder"}}))
        .await
        .unwrap();
    (client, owner, app)
}

/// An opted-in pod spec (as JSON) on the host's network running `script`
/// in busybox as the app.
pub fn pod_spec(account: &str, security: serde_json::Value, script: &str) -> serde_json::Value {
    json!({
        "serviceAccountName": account,
        "hostNetwork": true,
        "securityContext": security,
        "terminationGracePeriodSeconds": 30,
        "containers": [{
            "name": "app",
            "image": BUSYBOX_IMAGE,
            "imagePullPolicy": "Never",
            "command": ["/bin/sh", "-c", script],
        }],
    })
}

pub fn opted_in(name: &str, secrets: &[String], spec: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"ferry.dev/inject": "true"},
                     "annotations": {"ferry.dev/secrets": secrets.join(",")}},
        "spec": spec,
    }))
    .unwrap()
}

/// Creates pod `name` of service account `account`, running as uid 1000
/// with `secrets`, its app container running `script`.
pub async fn create_app(
    client: &Client,
    namespace: &str,
    (name, account): (&str, &str),
    secrets: &[String],
    script: &str,
) -> Pod {
    let spec = pod_spec(account, json!({"runAsUser": 1000}), script);
    create_pod(client, namespace, &opted_in(name, secrets, spec)).await
}

/// An app script that says `started`, waits until `file` (under the
/// secrets directory) is gone and says `gone` and the Unix time, then
/// waits until the ready marker is gone and says `not-ready`.
pub fn watch_expiry_script(file: &str) -> String {
    format!(
        r#"f={SECRETS}/{file}
echo started
trap 'exit 0' TERM
while [ -s "$f" ]; do sleep 0.2 & wait; done
echo gone
date +%s
while [ -e {SECRETS}/{READY_MARKER} ]; do sleep 0.2 & wait; done
echo not-ready
sleep 3600 & wait"#,
        READY_MARKER = ferry_contract::READY_MARKER
    )
}

/// Creates `pod`, retrying while the webhook's Grant index catches up.
pub async fn create_pod(client: &Client, namespace: &str, pod: &Pod) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    eventually("the webhook to admit the pod", WAIT, || async {
        pods.create(&PostParams::default(), pod).await.ok()
    })
    .await
}

pub fn container_status<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .chain(status.init_container_statuses.iter())
        .flatten()
        .find(|status| status.name == name)
}

pub fn running(pod: &Pod, container: &str) -> bool {
    container_status(pod, container)
        .and_then(|status| status.state.as_ref())
        .is_some_and(|state| state.running.is_some())
}

/// Waits until the app container runs, and returns the pod.
pub async fn wait_app_running(client: &Client, namespace: &str, name: &str) -> Pod {
    env()
        .await
        .node
        .wait_pod(client, namespace, name, "the app running", WAIT, |pod| {
            running(pod, "app")
        })
        .await
        .unwrap()
}

/// The app's log, through the apiserver and the kubelet.
pub async fn app_log(client: &Client, namespace: &str, name: &str) -> String {
    container_log(client, namespace, name, "app").await
}

/// The log of `container` of pod `namespace/name`, as the kubelet keeps it.
pub async fn container_log(
    client: &Client,
    namespace: &str,
    name: &str,
    container: &str,
) -> String {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .logs(
            name,
            &LogParams {
                container: Some(container.into()),
                ..LogParams::default()
            },
        )
        .await
        .unwrap_or_default()
}

/// Waits until the app's log has a line `line`; returns the whole log.
pub async fn wait_log_line(client: &Client, namespace: &str, name: &str, line: &str) -> String {
    let node = env().await.node;
    let end = std::time::Instant::now() + WAIT;
    loop {
        let log = app_log(client, namespace, name).await;
        if log.lines().any(|l| l == line) {
            return log;
        }
        if std::time::Instant::now() > end {
            panic!(
                "the app never logged {line:?}; its log:\n{log}\n{}",
                node.diagnose(client, namespace, name).await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn role_exists(name: &str) -> bool {
    Postgres::shared()
        .await
        .unwrap()
        .role_exists(name)
        .await
        .unwrap()
}

/// The sidecar's host PID, from its container's cgroup.
pub fn sidecar_pid(node: &RealNode, pod: &Pod) -> u32 {
    let id = container_status(pod, SIDECAR_CONTAINER_NAME)
        .and_then(|status| status.container_id.clone())
        .expect("the sidecar has no container id");
    *node
        .container_pids(&id)
        .first()
        .expect("the sidecar's cgroup has no process")
}

pub fn proc_status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .map(|value| value.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The mount options of the root filesystem `pid` sees.
pub fn root_mount_options(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .map(|line| line.split(' ').collect::<Vec<_>>())
        .find(|fields| fields.get(4) == Some(&"/"))
        .and_then(|fields| fields.get(5).map(|s| s.to_string()))
        .unwrap_or_default()
}

/// What the app checks first: who it is, every file and its mode, that the
/// planted value is there, and that it can neither write, delete nor create.
pub fn inspect_script() -> String {
    format!(
        r#"d={SECRETS}
echo "uid=$(id -u) groups=$(id -G)"
for f in orders-api-key/token orders-db/username orders-db/password; do
  if [ -r "$d/$f" ]; then echo "readable $f $(stat -L -c %a "$d/$f")"; else echo "unreadable $f"; fi
done
grep -qx '{PLANTED}' "$d/orders-api-key/token" && echo content-ok
(echo x > "$d/orders-api-key/token") 2>/dev/null && echo write-allowed || echo write-refused
rm -f "$d/orders-api-key/token" 2>/dev/null; [ -f "$d/orders-api-key/token" ] && echo delete-refused
touch "$d/planted-by-app" 2>/dev/null && echo create-allowed || echo create-refused
echo inspected
trap 'exit 0' TERM
sleep 3600 & wait"#
    )
}

/// Creates `pod` and returns how long it took, from the create call, until
/// the app container was seen running.
pub async fn time_to_app_running(client: &Client, namespace: &str, pod: &Pod) -> Duration {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let name = pod.metadata.name.clone().unwrap();
    let started = std::time::Instant::now();
    pods.create(&PostParams::default(), pod).await.unwrap();
    let node = env().await.node;
    loop {
        if let Some(pod) = pods.get_opt(&name).await.unwrap()
            && running(&pod, "app")
        {
            return started.elapsed();
        }
        if started.elapsed() > WAIT {
            panic!("{}", node.diagnose(client, namespace, &name).await);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Builds the psql image (psql and busybox's shell) and imports it into
/// the node, once per binary, for an app that uses its PostgreSQL
/// credentials as an app would.
pub async fn import_psql_image() {
    static IMPORTED: OnceCell<()> = OnceCell::const_new();
    IMPORTED
        .get_or_init(|| async {
            let node = env().await.node;
            let psql = images::build_psql_image(&node.dir().join("psql-image"))
                .await
                .unwrap();
            node.import_images(&psql).unwrap();
        })
        .await;
}

/// The file `path` of pod `uid`'s secrets volume, as the node has it (the
/// app reads the same tmpfs); `None` while it is not there.
pub fn secret_file(node: &RealNode, uid: &str, path: &str) -> Option<Vec<u8>> {
    let volume = node.pod_volume(uid, ferry_contract::SECRETS_VOLUME_NAME)?;
    std::fs::read(volume.join(path)).ok()
}

/// Follows the log of `container` of pod `namespace/name` from its start
/// until the container exits (the kubelet then ends the stream): all of it,
/// what it logs while its pod is deleted included, which the apiserver can
/// no longer give once the pod is gone. Start it once the container runs.
pub fn follow_log(
    client: &Client,
    namespace: &str,
    name: &str,
    container: &str,
) -> tokio::task::JoinHandle<String> {
    use futures::AsyncReadExt as _;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let name = name.to_owned();
    let params = LogParams {
        container: Some(container.into()),
        follow: true,
        ..LogParams::default()
    };
    tokio::spawn(async move {
        let stream = pods.log_stream(&name, &params).await.unwrap();
        futures::pin_mut!(stream);
        let mut log = Vec::new();
        // A broken stream leaves what was read; callers check the log ends
        // as the container's does.
        let _ = stream.read_to_end(&mut log).await;
        String::from_utf8_lossy(&log).into_owned()
    })
}

/// The sidecar's whole log, followed by [`follow_log`], once it has
/// stopped; fails unless it ends with the sidecar's `stopped` line (its
/// volume wiped, its leases given back or let go).
pub async fn sidecar_log_to_end(following: tokio::task::JoinHandle<String>) -> String {
    let log = tokio::time::timeout(WAIT, following)
        .await
        .expect("the sidecar's log did not end")
        .unwrap();
    let last = log
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<serde_json::Value>(line).ok());
    assert!(
        last.as_ref()
            .is_some_and(|line| line["event"] == "stopped" && line["wiped"] == true),
        "the sidecar did not stop with its volume wiped; its log:\n{log}"
    );
    log
}

/// Deletes pod `namespace/name` (gracefully) and waits until it is gone.
pub async fn delete_pod(client: &Client, namespace: &str, name: &str, uid: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.delete(name, &DeleteParams::default()).await.unwrap();
    eventually("the pod to be gone", WAIT, || async {
        pods.get_opt(name)
            .await
            .unwrap()
            .filter(|pod| pod.metadata.uid.as_deref() == Some(uid))
            .is_none()
            .then_some(())
    })
    .await;
}

/// Fails if any of `values`, or its base64, is in any of `logs` (each
/// named for the message).
pub fn assert_not_in_logs(values: &[(&str, &str)], logs: &[(&str, String)]) {
    for (what, value) in values {
        assert!(!value.is_empty(), "{what} is empty: nothing to look for");
        let encoded = base64::engine::general_purpose::STANDARD.encode(value);
        for (whose, log) in logs {
            assert!(!log.contains(value), "{what} is in {whose} log");
            assert!(
                !log.contains(&encoded),
                "{what}, base64-encoded, is in {whose} log"
            );
        }
    }
}

/// Every log a secret must stay out of, as of now: ferry's components
/// (in this process), the sidecar's (`sidecar`, followed to its end) and
/// PostgreSQL's (every statement).
pub fn every_log(sidecar: &str) -> [(&'static str, String); 3] {
    [
        ("ferry's components'", captured_logs()),
        ("the sidecar's", sidecar.to_owned()),
        ("PostgreSQL's", Postgres::log_of_shared()),
    ]
}
