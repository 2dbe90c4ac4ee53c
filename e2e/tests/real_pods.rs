//! ferry's pods on a real node: containerd and a kubelet built from the
//! pinned Kubernetes module, kube-scheduler, and images built here. The
//! webhook injects the sidecar image; the kubelet runs it as a native
//! sidecar with its exec startup probe, writes its projected token, mounts
//! the Memory emptyDir, orders start and shutdown, and restarts it. Over a
//! pod's life: a short-lived JWT is renewed before it expires, PostgreSQL
//! credentials work in the app until the pod is deleted, the reaper drops
//! the role of a sidecar that never revoked, and no secret reaches a log.
//! The broker, webhook and operator run in the test process on 127.0.0.1;
//! pods use the host's network to reach the broker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use ferry_api::resources::AccessPolicy;
use ferry_contract::SIDECAR_CONTAINER_NAME;
use ferry_e2e::images::{BUSYBOX_IMAGE, PSQL_IMAGE};
use ferry_e2e::pki::Authority;
use ferry_e2e::{
    Postgres, RealNode, audit_lines, captured_logs, create_brokered_secret, create_object,
    eventually, grant,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

mod real_pods_common;

use real_pods_common::*;

/// Gives the app of `spec` a directory of the node at `/reports`, writable
/// by any user, and returns it: what the app writes there while its pod is
/// deleted outlives the pod and its log.
fn mount_reports(node: &RealNode, app: &str, spec: &mut serde_json::Value) -> std::path::PathBuf {
    let reports = node.dir().join("reports").join(app);
    std::fs::create_dir_all(&reports).unwrap();
    std::fs::set_permissions(
        &reports,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    spec["volumes"] = json!([{"name": "reports", "hostPath": {"path": reports}}]);
    spec["containers"][0]["volumeMounts"] = json!([{"name": "reports", "mountPath": "/reports"}]);
    reports
}

/// The claims of a JWT.
fn claims(token: &[u8]) -> serde_json::Value {
    let token = std::str::from_utf8(token).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap()
}

/// An app that says it started, then waits to be stopped.
const IDLE_APP: &str = "echo started
trap 'exit 0' TERM
sleep 3600 & wait";

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
    let script = format!(
        r#"trap 'ls {SECRETS}/orders-db > /reports/at-term; exit 0' TERM
cat {SECRETS}/orders-db/username; echo
echo started
sleep 3600 & wait"#
    );
    let mut spec = pod_spec("checkout", json!({"runAsUser": 1000}), &script);
    let reports = mount_reports(node, &app, &mut spec);
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

    delete_pod(&client, &app, "api", &uid).await;

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
async fn postgres_credentials_work_until_the_pod_is_deleted_and_no_secret_is_logged() {
    import_psql_image().await;
    let (client, owner, app) = scenario("credentials").await;
    let node = env().await.node;
    let database = Postgres::shared().await.unwrap();
    // The app queries with its files as psql reads them, when it starts
    // and again when it is stopped; the second answer goes to a report,
    // the pod's log going with the pod. Nothing it prints is secret.
    let script = format!(
        r#"export PGHOST=127.0.0.1 PGPORT={port} PGDATABASE=postgres
query() {{
  PGUSER="$(cat {SECRETS}/orders-db/username)" PGPASSWORD="$(cat {SECRETS}/orders-db/password)" \
    psql -X -tA -c 'SELECT item FROM orders' 2>&1
}}
trap 'query > /reports/at-term; exit 0' TERM
query
echo started
sleep 3600 & wait"#,
        port = database.port()
    );
    let mut spec = pod_spec("checkout", json!({"runAsUser": 1000}), &script);
    spec["containers"][0]["image"] = json!(PSQL_IMAGE);
    let reports = mount_reports(node, &app, &mut spec);
    let secrets = [
        format!("{owner}/orders-api-key"),
        format!("{owner}/orders-db"),
    ];
    create_pod(&client, &app, &opted_in("api", &secrets, spec)).await;
    let log = wait_log_line(&client, &app, "api", "started").await;
    assert_eq!(log.lines().collect::<Vec<_>>(), ["tea", "started"]);
    let pod = wait_app_running(&client, &app, "api").await;
    let uid = pod.metadata.uid.clone().unwrap();
    let sidecar = follow_log(&client, &app, "api", SIDECAR_CONTAINER_NAME);

    // A session opened with the same files, as a connection pool keeps one.
    let read = |path| String::from_utf8(secret_file(node, &uid, path).unwrap()).unwrap();
    let (username, password) = (read("orders-db/username"), read("orders-db/password"));
    let session = database.connect_as(&username, &password).await.unwrap();
    assert_eq!(
        session
            .query("SELECT item FROM orders", &[])
            .await
            .unwrap()
            .len(),
        1
    );

    delete_pod(&client, &app, "api", &uid).await;
    let at_term = std::fs::read_to_string(reports.join("at-term")).unwrap();
    assert_eq!(
        at_term.trim(),
        "tea",
        "the credentials no longer worked when the app was stopped"
    );
    assert!(!role_exists(&username).await, "the role outlived the pod");
    assert!(
        session.query("SELECT 1", &[]).await.is_err(),
        "the session outlived the pod"
    );
    assert!(database.connect_as(&username, &password).await.is_err());

    let sidecar = sidecar_log_to_end(sidecar).await;
    assert_not_in_logs(
        &[
            ("the planted value", PLANTED),
            ("the issued password", &password),
        ],
        &every_log(&sidecar),
    );
}

#[tokio::test]
async fn a_short_lived_jwt_is_renewed_before_it_expires() {
    let (client, owner, app) = scenario("renew").await;
    let node = env().await.node;
    create_app(
        &client,
        &app,
        ("api", "checkout"),
        &[format!("{owner}/orders-token")],
        IDLE_APP,
    )
    .await;
    wait_log_line(&client, &app, "api", "started").await;
    let pod = wait_app_running(&client, &app, "api").await;
    let uid = pod.metadata.uid.clone().unwrap();
    let sidecar = follow_log(&client, &app, "api", SIDECAR_CONTAINER_NAME);
    let first = secret_file(node, &uid, "orders-token/token").unwrap();
    let first_exp = claims(&first)["exp"].as_i64().unwrap();

    // The time is read after the file: the change came no later.
    let (seen_at, renewed) = eventually("a renewed token", WAIT, || async {
        let current = secret_file(node, &uid, "orders-token/token")?;
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        (!current.is_empty() && current != first).then_some((now, current))
    })
    .await;
    assert!(
        seen_at < first_exp,
        "the token was replaced only at {seen_at}, after the first one expired at {first_exp}"
    );
    assert!(claims(&renewed)["exp"].as_i64().unwrap() > first_exp);

    delete_pod(&client, &app, "api", &uid).await;
    let sidecar = sidecar_log_to_end(sidecar).await;
    let (first, renewed) = (
        String::from_utf8(first).unwrap(),
        String::from_utf8(renewed).unwrap(),
    );
    assert_not_in_logs(
        &[("the first JWT", &first), ("the renewed JWT", &renewed)],
        &every_log(&sidecar),
    );
}

#[tokio::test]
async fn a_stopped_sidecars_role_is_reaped_once_its_pod_is_force_deleted() {
    let (client, owner, app) = scenario("reap").await;
    let node = env().await.node;
    let script = format!("cat {SECRETS}/orders-db/username; echo\n{IDLE_APP}");
    create_app(
        &client,
        &app,
        ("api", "checkout"),
        &[format!("{owner}/orders-db")],
        &script,
    )
    .await;
    let log = wait_log_line(&client, &app, "api", "started").await;
    let username = log.lines().next().unwrap().to_owned();
    let pod = wait_app_running(&client, &app, "api").await;
    let uid = pod.metadata.uid.clone().unwrap();

    // Stopped, not killed: the kubelet would restart a dead sidecar, and a
    // stopped one can neither revoke nor exit.
    let pid = sidecar_pid(node, &pod);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    eventually("the sidecar to be stopped", WAIT, || async {
        proc_status_field(pid, "State")
            .starts_with('T')
            .then_some(())
    })
    .await;
    assert!(role_exists(&username).await);

    let pods: Api<Pod> = Api::namespaced(client.clone(), &app);
    pods.delete("api", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    // The audit line follows the drop: wait for the line.
    let reaped = eventually("the reaper to drop the role", WAIT, || async {
        let lines = audit_lines(|line| line["action"] == "reap" && line["role"] == username);
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    assert!(!role_exists(&username).await);
    // Each BrokeredSecret's admin connection reaps the server's roles:
    // several tests' namespaces here share one server, so one drop may be
    // audited more than once, each for the same reason.
    for line in &reaped {
        assert_eq!(line["reason"], "pod_gone", "{line}");
        assert_eq!(line["pod_uid"], uid.as_str(), "{line}");
    }
    let revoked =
        audit_lines(|line| line["action"] == "revoke" && line["pod"] == format!("{app}/api"));
    assert!(
        revoked.is_empty(),
        "the stopped sidecar revoked: {revoked:?}"
    );
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
    create_app(
        &client,
        &app,
        ("api", "checkout"),
        &[format!("{owner}/orders-token")],
        &script,
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
async fn an_ungranted_pod_is_refused_and_one_whose_grant_goes_loses_its_files_and_readiness_at_once()
 {
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
    assert!(
        Api::<Pod>::namespaced(client.clone(), &app)
            .get_opt("greedy")
            .await
            .unwrap()
            .is_none(),
        "the refused pod was stored"
    );

    let script = watch_expiry_script("orders-token/token");
    create_app(
        &client,
        &app,
        ("api", "checkout"),
        &[format!("{owner}/orders-token")],
        &script,
    )
    .await;
    wait_log_line(&client, &app, "api", "started").await;
    Api::<AccessPolicy>::namespaced(client.clone(), &owner)
        .delete("checkout", &DeleteParams::default())
        .await
        .unwrap();
    wait_log_line(&client, &app, "api", "gone").await;
    // At once, not at the lease's expiry: the broker told the sidecar,
    // whose watch was waiting, and it wiped the file as revoked.
    let sidecar = container_log(&client, &app, "api", SIDECAR_CONTAINER_NAME).await;
    assert!(
        sidecar
            .lines()
            .any(|line| line.contains("\"event\":\"secret_revoked\"")),
        "the file went without a revocation:\n{sidecar}"
    );
    assert!(
        !sidecar.contains("\"event\":\"secret_expired\""),
        "wiped at expiry, not revoked:\n{sidecar}"
    );
    // Without its secret the sidecar no longer reports ready (the marker
    // its probe reads is gone), and the broker refuses it a new lease.
    wait_log_line(&client, &app, "api", "not-ready").await;
    // The kubelet sees it too: the sidecar's readiness probe fails, so the
    // pod turns NotReady and leaves its Services' endpoints.
    let pods = Api::<Pod>::namespaced(client.clone(), &app);
    eventually("the revoked pod to turn NotReady", WAIT, || async {
        let pod = pods.get("api").await.ok()?;
        let status = pod.status?;
        let ready = status
            .conditions?
            .into_iter()
            .find(|condition| condition.type_ == "Ready")?;
        let sidecar_ready = status
            .init_container_statuses?
            .into_iter()
            .find(|container| container.name == SIDECAR_CONTAINER_NAME)?
            .ready;
        (ready.status == "False" && !sidecar_ready).then_some(())
    })
    .await;
    let denied = audit_lines(|line| {
        (line["action"] == "issue" || line["action"] == "renew")
            && line["result"] == "denied"
            && line["pod"] == format!("{app}/api")
    });
    let withdrawn =
        audit_lines(|line| line["action"] == "withdraw" && line["pod"] == format!("{app}/api"));
    assert!(!withdrawn.is_empty(), "the revocation was not audited");
    assert!(!denied.is_empty(), "no refused lease was audited");
}

#[tokio::test]
async fn an_app_logs_into_postgresql_with_a_certificate_for_a_key_made_in_its_pod() {
    import_psql_image().await;
    let (client, owner, app) = scenario("x509-pod").await;
    let node = env().await.node;
    // The team's CA, which PostgreSQL trusts for client certificates
    // (`hostssl ... cert`: the certificate alone logs in, as its CN).
    let team_ca = Authority::generate("x509-pod team CA").unwrap();
    create_object::<Secret>(
        &client,
        &owner,
        json!({
            "metadata": {"name": "team-ca", "labels": {"ferry.dev/brokerable": "true"}},
            "type": "kubernetes.io/tls",
            "stringData": {
                "tls.crt": team_ca.cert_pem(),
                "tls.key": team_ca.key_pem(),
                "ca.crt": team_ca.cert_pem(),
            },
        }),
    )
    .await
    .unwrap();
    let mut cert = ferry_api::testing::brokered_secret(&owner, "db-cert")
        .x509("team-ca")
        .build();
    cert.spec.source.x509.as_mut().unwrap().common_name = Some("{{ serviceAccount }}".into());
    create_brokered_secret(&client, &cert).await.unwrap();
    let policy = ferry_api::testing::access_policy(&owner, "checkout-cert")
        .service_account(&app, "checkout")
        .secret("db-cert");
    grant(&client, policy.build()).await.unwrap();

    let (database, server_ca) =
        Postgres::start_certificate_logins(&team_ca.cert_pem(), &["checkout", "intruder"])
            .await
            .unwrap();

    // The app logs in as its own role with the files alone (no password
    // exists), verifying the server; and tries another account's role.
    let script = format!(
        r#"login() {{
  psql -X -tA "host=127.0.0.1 port={port} dbname=postgres user=$1 sslmode=verify-full sslrootcert=/reports/server-ca.crt sslcert={SECRETS}/db-cert/tls.crt sslkey={SECRETS}/db-cert/tls.key" -c 'SELECT current_user' 2>&1
}}
login checkout
login intruder
echo started
trap 'exit 0' TERM
sleep 3600 & wait"#,
        port = database.port()
    );
    let mut spec = pod_spec("checkout", json!({"runAsUser": 1000}), &script);
    spec["containers"][0]["image"] = json!(PSQL_IMAGE);
    let reports = mount_reports(node, &app, &mut spec);
    std::fs::write(reports.join("server-ca.crt"), server_ca).unwrap();
    create_pod(
        &client,
        &app,
        &opted_in("api", &[format!("{owner}/db-cert")], spec),
    )
    .await;
    let log = wait_log_line(&client, &app, "api", "started").await;
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], "checkout", "the certificate logs in: {log}");
    assert!(
        lines[1].contains("certificate authentication failed for user \"intruder\""),
        "another account's role is refused: {log}"
    );

    // The key was made in the pod: the broker audited a certificate for
    // the pod's identity, and never saw the key.
    let pod = wait_app_running(&client, &app, "api").await;
    let uid = pod.metadata.uid.clone().unwrap();
    let key = String::from_utf8(secret_file(node, &uid, "db-cert/tls.key").unwrap()).unwrap();
    let certificate = secret_file(node, &uid, "db-cert/tls.crt").unwrap();
    let (_, der) = x509_parser::pem::parse_x509_pem(&certificate).unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(&der.contents).unwrap();
    let serial = parsed.raw_serial_as_string().replace(':', "");
    assert!(
        audit_lines(|fields| fields["action"] == "certify")
            .iter()
            .any(|fields| fields["serial"] == serial.as_str()
                && fields["pod"] == format!("{app}/api").as_str()),
        "no audit line for serial {serial}"
    );
    let sidecar = follow_log(&client, &app, "api", SIDECAR_CONTAINER_NAME);
    delete_pod(&client, &app, "api", &uid).await;
    let sidecar = sidecar_log_to_end(sidecar).await;
    let key_body: String = key
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    assert_not_in_logs(
        &[("the pod's private key", &key_body)],
        &every_log(&sidecar),
    );
    assert!(!captured_logs().contains(&key_body));
}

#[tokio::test]
async fn the_app_is_signalled_and_called_once_each_renewal_has_swapped_its_files() {
    let (client, owner, app) = scenario("reload").await;
    let token = format!("{owner}/orders-token");
    // Signalled: the app's shell traps HUP and says which token it then
    // finds (a digest, not the token), so each signal can be matched to a
    // complete new file.
    let signalled = format!(
        r#"trap 'echo "hup $(md5sum < {SECRETS}/orders-token/token | cut -c1-12)"' HUP
echo "start $(md5sum < {SECRETS}/orders-token/token | cut -c1-12)"
echo started
while true; do sleep 1 & wait; done"#
    );
    let mut spec = pod_spec("checkout", json!({"runAsUser": 1000}), &signalled);
    spec["terminationGracePeriodSeconds"] = json!(2);
    let mut pod = opted_in("signalled", std::slice::from_ref(&token), spec);
    let annotations = pod.metadata.annotations.get_or_insert_default();
    annotations.insert("ferry.dev/reload-signal".into(), "HUP".into());
    annotations.insert("ferry.dev/reload-process".into(), "sh".into());
    create_pod(&client, &app, &pod).await;

    // Called: a one-connection-at-a-time HTTP server on the pod's (here
    // the host's) loopback that answers 204 and logs each call.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let called = format!(
        r#"echo started
while true; do printf 'HTTP/1.0 204 No Content\r\n\r\n' | nc -l -p {port} > /dev/null; echo posted; done"#
    );
    let mut pod = opted_in(
        "called",
        std::slice::from_ref(&token),
        pod_spec("checkout", json!({"runAsUser": 1000}), &called),
    );
    pod.metadata.annotations.get_or_insert_default().insert(
        "ferry.dev/reload-url".into(),
        format!("http://127.0.0.1:{port}/-/reload"),
    );
    create_pod(&client, &app, &pod).await;

    wait_log_line(&client, &app, "signalled", "started").await;
    // The 10 s JWT renews about every 5 s: two renewals, two signals.
    let log = eventually("two reload signals", WAIT, || async {
        let log = app_log(&client, &app, "signalled").await;
        (log.lines().filter(|line| line.starts_with("hup ")).count() >= 2).then_some(log)
    })
    .await;
    let digests: Vec<&str> = log
        .lines()
        .filter_map(|line| {
            line.strip_prefix("start ")
                .or_else(|| line.strip_prefix("hup "))
        })
        .collect();
    for pair in digests.windows(2) {
        assert_ne!(
            pair[0], pair[1],
            "each signal came after a new token was in place: {log}"
        );
    }
    let sidecar = container_log(&client, &app, "signalled", SIDECAR_CONTAINER_NAME).await;
    assert!(
        sidecar.contains("\"event\":\"reload_signalled\"")
            && sidecar.contains("\"signal\":\"SIGHUP\""),
        "{sidecar}"
    );
    assert!(!sidecar.contains("reload_failed"), "{sidecar}");
    // The app shares the sidecar's process namespace and user: the
    // sidecar made itself non-dumpable, so its /proc files are root's and
    // the app cannot read its memory, environment or broker token there.
    let pod = wait_app_running(&client, &app, "signalled").await;
    let pid = sidecar_pid(env().await.node, &pod);
    assert_eq!(
        proc_status_field(pid, "Uid").split_whitespace().next(),
        Some("1000")
    );
    for file in ["environ", "mem", "root"] {
        let owner = std::os::unix::fs::MetadataExt::uid(
            &std::fs::symlink_metadata(format!("/proc/{pid}/{file}")).unwrap(),
        );
        assert_eq!(
            owner, 0,
            "/proc/{pid}/{file} of the sidecar is owned by {owner}"
        );
    }

    wait_log_line(&client, &app, "called", "started").await;
    eventually("two reload calls", WAIT, || async {
        let log = app_log(&client, &app, "called").await;
        (log.lines().filter(|line| *line == "posted").count() >= 2).then_some(())
    })
    .await;
    let sidecar = container_log(&client, &app, "called", SIDECAR_CONTAINER_NAME).await;
    assert!(
        sidecar.contains("\"event\":\"reload_requested\"") && sidecar.contains("\"status\":204"),
        "{sidecar}"
    );
}
