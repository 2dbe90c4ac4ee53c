//! ferry's pods on a real node: containerd and a kubelet built from the
//! pinned Kubernetes module, kube-scheduler, and images built here. The
//! webhook injects the sidecar image; the kubelet runs it as a native
//! sidecar with its exec startup probe, writes its projected token, mounts
//! the Memory emptyDir, orders start and shutdown, and restarts it. The
//! broker, webhook and operator run in the test process on 127.0.0.1; pods
//! use the host's network to reach the broker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ferry_api::resources::AccessPolicy;
use ferry_api::testing;
use ferry_contract::SIDECAR_CONTAINER_NAME;
use ferry_e2e::images::BUSYBOX_IMAGE;
use ferry_e2e::{
    Cluster, PodStack, Postgres, RealNode, capture_logs, captured_logs, create_brokered_secret,
    create_object, eventually, grant,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, LogParams, PostParams};
use serde_json::json;
use tokio::sync::OnceCell;

const WAIT: Duration = Duration::from_secs(120);

/// The value planted in the Secret behind `orders-api-key`.
const PLANTED: &str = "planted-api-key-7f3a91";

/// Where the app finds its secrets.
const SECRETS: &str = "/var/run/secrets/ferry";

struct Env {
    cluster: &'static Cluster,
    node: &'static RealNode,
    _stack: PodStack,
}

async fn env() -> &'static Env {
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
                 GRANT SELECT ON orders TO orders_reader;",
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
async fn scenario(prefix: &str) -> (Client, String, String) {
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
        ("db-admin", json!({"dsn": database.admin_dsn()})),
    ] {
        create_object::<Secret>(
            &client,
            &owner,
            json!({"metadata": {"name": name}, "stringData": data}),
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
fn pod_spec(account: &str, security: serde_json::Value, script: &str) -> serde_json::Value {
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

fn opted_in(name: &str, secrets: &[String], spec: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"ferry.dev/inject": "true"},
                     "annotations": {"ferry.dev/secrets": secrets.join(",")}},
        "spec": spec,
    }))
    .unwrap()
}

/// Creates `pod`, retrying while the webhook's Grant index catches up.
async fn create_pod(client: &Client, namespace: &str, pod: &Pod) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    eventually("the webhook to admit the pod", WAIT, || async {
        pods.create(&PostParams::default(), pod).await.ok()
    })
    .await
}

fn container_status<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .chain(status.init_container_statuses.iter())
        .flatten()
        .find(|status| status.name == name)
}

fn running(pod: &Pod, container: &str) -> bool {
    container_status(pod, container)
        .and_then(|status| status.state.as_ref())
        .is_some_and(|state| state.running.is_some())
}

/// Waits until the app container runs, and returns the pod.
async fn wait_app_running(client: &Client, namespace: &str, name: &str) -> Pod {
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
async fn app_log(client: &Client, namespace: &str, name: &str) -> String {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .logs(
            name,
            &LogParams {
                container: Some("app".into()),
                ..LogParams::default()
            },
        )
        .await
        .unwrap_or_default()
}

/// Waits until the app's log has a line `line`; returns the whole log.
async fn wait_log_line(client: &Client, namespace: &str, name: &str, line: &str) -> String {
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

/// The sidecar's host PID, from its container's cgroup.
fn sidecar_pid(node: &RealNode, pod: &Pod) -> u32 {
    let id = container_status(pod, SIDECAR_CONTAINER_NAME)
        .and_then(|status| status.container_id.clone())
        .expect("the sidecar has no container id");
    *node
        .container_pids(&id)
        .first()
        .expect("the sidecar's cgroup has no process")
}

fn proc_status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .map(|value| value.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The mount options of the root filesystem `pid` sees.
fn root_mount_options(pid: u32) -> String {
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
fn inspect_script() -> String {
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

#[tokio::test]
async fn a_plain_pod_runs_from_an_imported_image_as_its_image_user() {
    let env = env().await;
    let client = env.cluster.client().unwrap();
    let namespace = env.cluster.create_namespace("plain").await.unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "plain"},
        "spec": {"hostNetwork": true, "restartPolicy": "Never", "containers": [{
            "name": "app", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
            "command": ["/bin/sh", "-c", "echo uid=$(id -u)"]}]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let pod = env
        .node
        .wait_pod(
            &client,
            &namespace,
            "plain",
            "phase Succeeded",
            WAIT,
            |pod| pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"),
        )
        .await
        .unwrap();
    assert_eq!(
        pod.spec.unwrap().node_name.as_deref(),
        Some(ferry_e2e::REAL_NODE_NAME),
        "scheduled by kube-scheduler onto the real node"
    );
    assert_eq!(
        app_log(&client, &namespace, "plain").await.trim(),
        "uid=65532"
    );
}

#[tokio::test]
async fn the_app_starts_with_every_file_and_reads_them_as_its_user_with_fs_group() {
    let (client, owner, app) = scenario("fsgroup").await;
    let secrets = [
        format!("{owner}/orders-api-key"),
        format!("{owner}/orders-db"),
    ];
    let security = json!({"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000,
                          "runAsNonRoot": true});
    create_pod(
        &client,
        &app,
        &opted_in(
            "api",
            &secrets,
            pod_spec("checkout", security, &inspect_script()),
        ),
    )
    .await;
    let log = wait_log_line(&client, &app, "api", "inspected").await;
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines,
        [
            "uid=1000 groups=1000 2000",
            "readable orders-api-key/token 440",
            "readable orders-db/username 440",
            "readable orders-db/password 440",
            "content-ok",
            "write-refused",
            "delete-refused",
            "create-refused",
            "inspected",
        ]
    );

    // The sidecar: the app's user (its files are then the app's), no
    // capabilities, no privilege escalation, a read-only root filesystem.
    let node = env().await.node;
    let pod = wait_app_running(&client, &app, "api").await;
    let pid = sidecar_pid(node, &pod);
    assert_eq!(proc_status_field(pid, "Uid"), "1000 1000 1000 1000");
    assert_eq!(proc_status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(proc_status_field(pid, "CapPrm"), "0000000000000000");
    assert_eq!(proc_status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(proc_status_field(pid, "Seccomp"), "2");
    assert!(
        root_mount_options(pid).split(',').any(|o| o == "ro"),
        "the sidecar's root filesystem is writable: {}",
        root_mount_options(pid)
    );

    // It presented the token the kubelet projected, and the broker took it.
    let uid = pod.metadata.uid.clone().unwrap();
    assert!(
        captured_logs()
            .lines()
            .any(|line| line.contains("\"action\":\"issue\"")
                && line.contains("\"result\":\"allowed\"")
                && line.contains(&format!("\"pod\":\"{app}/api\""))
                && line.contains(&uid)),
        "no issue to this pod was audited"
    );
}

#[tokio::test]
async fn the_app_reads_its_files_as_its_user_without_fs_group() {
    let (client, owner, app) = scenario("nofsgroup").await;
    let security = json!({"runAsUser": 1000, "runAsNonRoot": true});
    let script = format!(
        r#"echo "uid=$(id -u)"
cat {SECRETS}/orders-api-key/token >/dev/null && echo read-ok
stat -L -c '%a %u' {SECRETS}/orders-api-key/token
echo inspected
trap 'exit 0' TERM
sleep 3600 & wait"#
    );
    create_pod(
        &client,
        &app,
        &opted_in(
            "api",
            &[format!("{owner}/orders-api-key")],
            pod_spec("checkout", security, &script),
        ),
    )
    .await;
    let log = wait_log_line(&client, &app, "api", "inspected").await;
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["uid=1000", "read-ok", "400 1000", "inspected"]
    );
}

#[tokio::test]
async fn deleting_the_pod_stops_the_app_then_the_sidecar_revokes_and_wipes() {
    let (client, owner, app) = scenario("delete").await;
    let node = env().await.node;
    // The app reports, when it is stopped, whether its files were still
    // there: the sidecar must outlive it. The report outlives the pod.
    let reports = node.dir().join("reports").join(&app);
    std::fs::create_dir_all(&reports).unwrap();
    std::fs::set_permissions(
        &reports,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let script = format!(
        r#"trap 'ls {SECRETS}/orders-db > /reports/at-term; exit 0' TERM
cat {SECRETS}/orders-db/username; echo
echo started
sleep 3600 & wait"#
    );
    let mut spec = pod_spec("checkout", json!({"runAsUser": 1000}), &script);
    spec["volumes"] = json!([{"name": "reports", "hostPath": {"path": reports}}]);
    spec["containers"][0]["volumeMounts"] = json!([{"name": "reports", "mountPath": "/reports"}]);
    let pod = create_pod(
        &client,
        &app,
        &opted_in("api", &[format!("{owner}/orders-db")], spec),
    )
    .await;
    let log = wait_log_line(&client, &app, "api", "started").await;
    let username = log.lines().next().unwrap().to_owned();
    assert!(role_exists(&username).await);
    let uid = pod.metadata.uid.clone().unwrap();
    assert!(
        node.mounts().contains(&uid),
        "the pod's volumes are not mounted on the node"
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), &app);
    pods.delete("api", &DeleteParams::default()).await.unwrap();
    eventually("the pod to be gone", WAIT, || async {
        pods.get_opt("api")
            .await
            .unwrap()
            .filter(|pod| pod.metadata.uid.as_deref() == Some(uid.as_str()))
            .is_none()
            .then_some(())
    })
    .await;

    let at_term = std::fs::read_to_string(reports.join("at-term")).unwrap();
    assert_eq!(
        at_term.lines().collect::<Vec<_>>(),
        ["password", "username"],
        "the app was stopped after the sidecar wiped its files"
    );
    assert!(!role_exists(&username).await, "the role outlived the pod");
    assert!(
        captured_logs()
            .lines()
            .any(|line| line.contains("\"action\":\"revoke\"")
                && line.contains("\"result\":\"allowed\"")
                && line.contains(&format!("\"pod\":\"{app}/api\""))),
        "the sidecar did not revoke its lease itself"
    );
    eventually("the pod's tmpfs to be unmounted", WAIT, || async {
        (!node.mounts().contains(&uid)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_job_with_an_injected_sidecar_completes_and_its_lease_is_revoked() {
    let (client, owner, app) = scenario("job").await;
    let script = format!("cat {SECRETS}/orders-db/username; echo; echo done");
    let mut spec = pod_spec("checkout", json!({"runAsUser": 1000}), &script);
    spec["restartPolicy"] = json!("Never");
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "report"},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"labels": {"ferry.dev/inject": "true"},
                         "annotations": {"ferry.dev/secrets": format!("{owner}/orders-db")}},
            "spec": spec}},
    }))
    .unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &app);
    eventually("the Job to be created", WAIT, || async {
        jobs.create(&PostParams::default(), &job).await.ok()
    })
    .await;
    let node = env().await.node;
    eventually("the Job to complete", WAIT, || async {
        let job = jobs.get("report").await.ok()?;
        let status = job.status?;
        if status.failed.unwrap_or(0) > 0 {
            panic!("the Job failed: {:?}", status.conditions);
        }
        (status.succeeded == Some(1)).then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &app);
    let pod = pods
        .list(&kube::api::ListParams::default().labels("job-name=report"))
        .await
        .unwrap()
        .items
        .pop()
        .unwrap();
    let name = pod.metadata.name.clone().unwrap();
    let log = app_log(&client, &app, &name).await;
    let username = log.lines().next().unwrap_or_default().to_owned();
    assert_eq!(
        log.lines().nth(1),
        Some("done"),
        "{}",
        node.diagnose(&client, &app, &name).await
    );
    eventually("the Job's role to be revoked", WAIT, || async {
        (!role_exists(&username).await).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_killed_sidecar_is_restarted_and_the_app_keeps_its_files() {
    let (client, owner, app) = scenario("restart").await;
    let node = env().await.node;
    let script = format!(
        r#"f={SECRETS}/orders-token/token
echo started
trap 'exit 0' TERM
while :; do [ -s "$f" ] || echo missing; sleep 0.2 & wait; done"#
    );
    create_pod(
        &client,
        &app,
        &opted_in(
            "api",
            &[format!("{owner}/orders-token")],
            pod_spec("checkout", json!({"runAsUser": 1000}), &script),
        ),
    )
    .await;
    wait_log_line(&client, &app, "api", "started").await;
    let pod = wait_app_running(&client, &app, "api").await;
    let before = sidecar_pid(node, &pod);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(before).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let pod = node
        .wait_pod(&client, &app, "api", "the sidecar restarted", WAIT, |pod| {
            container_status(pod, SIDECAR_CONTAINER_NAME)
                .is_some_and(|s| s.restart_count >= 1 && s.started == Some(true))
        })
        .await
        .unwrap();
    let after = sidecar_pid(node, &pod);
    assert_ne!(before, after);

    // Renewal continues: the broker renews for this pod after the restart.
    let renewals = || {
        captured_logs()
            .lines()
            .filter(|line| {
                line.contains("\"action\":\"renew\"")
                    && line.contains("\"result\":\"allowed\"")
                    && line.contains(&format!("\"pod\":\"{app}/api\""))
            })
            .count()
    };
    let seen = renewals();
    eventually("two more renewals", WAIT, || async {
        (renewals() >= seen + 2).then_some(())
    })
    .await;
    assert!(running(&pod, "app"), "the app was restarted too");
    let log = app_log(&client, &app, "api").await;
    assert!(
        !log.lines().any(|line| line == "missing"),
        "the app lost its file: {log}"
    );
}

#[tokio::test]
async fn an_ungranted_pod_is_refused_and_a_revoked_one_loses_its_files_at_expiry() {
    let (client, owner, app) = scenario("revoked").await;
    let refused = Api::<Pod>::namespaced(client.clone(), &app)
        .create(
            &PostParams::default(),
            &opted_in(
                "greedy",
                &[format!("{owner}/orders-db")],
                pod_spec("intruder", json!({}), "true"),
            ),
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("no Grant"), "{refused}");

    let script = format!(
        r#"f={SECRETS}/orders-token/token
echo started
trap 'exit 0' TERM
while [ -s "$f" ]; do sleep 0.2 & wait; done
echo gone
sleep 3600 & wait"#
    );
    create_pod(
        &client,
        &app,
        &opted_in(
            "api",
            &[format!("{owner}/orders-token")],
            pod_spec("checkout", json!({"runAsUser": 1000}), &script),
        ),
    )
    .await;
    wait_log_line(&client, &app, "api", "started").await;
    Api::<AccessPolicy>::namespaced(client.clone(), &owner)
        .delete("checkout", &DeleteParams::default())
        .await
        .unwrap();
    wait_log_line(&client, &app, "api", "gone").await;
}

/// Creates `pod` and returns how long it took, from the create call, until
/// the app container was seen running.
async fn time_to_app_running(client: &Client, namespace: &str, pod: &Pod) -> Duration {
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

/// Pod creation to app container running over 20 pods with and without
/// ferry's sidecar, the sidecar's memory as its cgroup reports it, and the
/// image sizes: numbers for the README, not assertions.
#[tokio::test]
#[ignore = "a measurement: cargo test -p ferry-e2e --test real_pods -- --ignored --nocapture"]
async fn measure_pod_start_with_and_without_the_sidecar() {
    let (client, owner, app) = scenario("measure").await;
    let node = env().await.node;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &app);
    let script = "trap 'exit 0' TERM; sleep 3600 & wait";
    let runs = 20;
    let mut results = Vec::new();
    // Admission must be warm (the Grant index filled) before timing.
    let warm = opted_in(
        "warm",
        &[format!("{owner}/orders-api-key")],
        pod_spec("checkout", json!({"runAsUser": 1000}), script),
    );
    create_pod(&client, &app, &warm).await;
    wait_app_running(&client, &app, "warm").await;
    for with_sidecar in [false, true] {
        let mut times = Vec::new();
        for n in 0..runs {
            let name = format!("m-{with_sidecar}-{n}");
            let spec = pod_spec("checkout", json!({"runAsUser": 1000}), script);
            let pod = if with_sidecar {
                opted_in(&name, &[format!("{owner}/orders-api-key")], spec)
            } else {
                serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
            };
            times.push(time_to_app_running(&client, &app, &pod).await);
            if with_sidecar && n == 0 {
                let pod = pods.get(&name).await.unwrap();
                let id = container_status(&pod, SIDECAR_CONTAINER_NAME)
                    .and_then(|s| s.container_id.clone())
                    .unwrap();
                let (usage, rss) = node.container_memory(&id).unwrap();
                println!(
                    "sidecar memory (cgroup v1): usage {} KiB, rss {} KiB",
                    usage / 1024,
                    rss / 1024
                );
            }
            pods.delete(&name, &DeleteParams::default()).await.unwrap();
            eventually("the pod to be gone", WAIT, || async {
                pods.get_opt(&name).await.unwrap().is_none().then_some(())
            })
            .await;
        }
        times.sort();
        results.push((
            with_sidecar,
            ferry_e2e::percentile(&times, 0.5),
            ferry_e2e::percentile(&times, 0.99),
        ));
    }
    for (with_sidecar, p50, p99) in results {
        println!(
            "pod creation to app running over {runs} pods, {} sidecar: p50 {p50:?}, p99 {p99:?}",
            if with_sidecar { "with" } else { "without" }
        );
    }
    for (image, size) in node.images().sizes() {
        println!("image {image}: {} KiB (OCI archive)", size / 1024);
    }
}
