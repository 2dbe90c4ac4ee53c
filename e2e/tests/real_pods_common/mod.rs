//! What the real-pod tests and the pod-start benchmark share: one real
//! node with ferry's operator, broker and webhook for the whole binary, a
//! team scenario on it, and pod helpers. Included with `mod` by
//! `tests/real_pods.rs` and by `#[path]` from `benches/pod_start.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::time::Duration;

use ferry_api::testing;
use ferry_contract::{BROKERABLE, BROKERABLE_LABEL, SIDECAR_CONTAINER_NAME};
use ferry_e2e::images::BUSYBOX_IMAGE;
use ferry_e2e::{
    Cluster, PodStack, Postgres, RealNode, capture_logs, create_brokered_secret, create_object,
    eventually, grant,
};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, LogParams, PostParams};
use serde_json::json;
use tokio::sync::OnceCell;

pub const WAIT: Duration = Duration::from_secs(120);

/// The value planted in the Secret behind `orders-api-key`.
pub const PLANTED: &str = "planted-api-key-7f3a91";

/// Where the app finds its secrets.
pub const SECRETS: &str = "/var/run/secrets/ferry";

pub struct Env {
    pub cluster: &'static Cluster,
    pub node: &'static RealNode,
    _stack: PodStack,
}

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
            .batch_execute(
                "CREATE TABLE orders (id int PRIMARY KEY, item text);
                 INSERT INTO orders VALUES (1, 'tea');
                 CREATE ROLE orders_reader NOLOGIN;
                 GRANT SELECT ON orders TO orders_reader;
                 CREATE ROLE pods_admin LOGIN CREATEROLE PASSWORD 'pods-admin-password';
                 GRANT orders_reader TO pods_admin WITH ADMIN OPTION;
                 GRANT pg_signal_backend TO pods_admin;",
            )
            .await
            .unwrap();
        let stack = PodStack::start(cluster, node).await.unwrap();
        Env {
            cluster,
            node,
            _stack: stack,
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
            json!({"dsn": database.dsn("pods_admin", "pods-admin-password")}),
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
        .admin()
        .await
        .unwrap()
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .unwrap()
        .is_some()
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
