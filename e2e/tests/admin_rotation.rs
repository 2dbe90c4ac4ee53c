//! Rotating a postgres source's admin credential, against a real
//! PostgreSQL and a real apiserver, with the broker as the real process
//! (`ferry-operator broker`) acting as its service account under
//! `rbac/broker.yaml` and the admission policy narrowing its Secret
//! writes: the broker is made to abort right after each step of a
//! rotation (staged, database changed, promoted); each time the Secret
//! still holds a credential that logs in, and the next broker completes
//! the rotation. Then the custody inventory: the BrokeredSecret's status,
//! the installation's ConfigMap and the age metric, with no value in any.
//! Its own test binary: its brokers are the only ones rotating.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ferry_api::resources::BrokeredSecret;
use ferry_api::testing;
use ferry_broker::providers::postgres::rotation::CRASH_AFTER_STEP_ENV;
use ferry_e2e::https_client::HttpsClient;
use ferry_e2e::{
    Cluster, Postgres, RunningOperator, broker_pod, create_object, eventually, free_port, grant,
    http_get, install_broker_secret_policy, install_crds, lease_file, rotatable_orders_db,
    wait_admin_ready, workspace_binary,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);
const BROKER: &str = "system:serviceaccount:ferry-system:ferry-broker";

/// A `ferry-operator broker` process, killed on drop.
struct BrokerProcess {
    child: Child,
    api: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    log: PathBuf,
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kubeconfig acting as the broker's service account.
fn broker_kubeconfig(cluster: &Cluster) -> PathBuf {
    let text = std::fs::read_to_string(cluster.kubeconfig()).unwrap();
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    for user in config["users"].as_sequence_mut().unwrap() {
        let user = &mut user["user"];
        user["as"] = BROKER.into();
        user["as-groups"] = serde_yaml::to_value([
            "system:serviceaccounts",
            "system:serviceaccounts:ferry-system",
        ])
        .unwrap();
    }
    let path = cluster.dir().join("broker-kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

/// Starts a broker process; with `crash_after`, one that aborts after
/// that rotation step.
fn start_broker(cluster: &Cluster, stem: &str, crash_after: Option<u8>) -> BrokerProcess {
    let binary = workspace_binary("ferry-operator").unwrap();
    let files = cluster
        .authority()
        .serving_cert(&["127.0.0.1"], cluster.dir(), stem)
        .unwrap();
    let (api, admin) = (free_port().unwrap(), free_port().unwrap());
    let log = cluster.dir().join(format!("{stem}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let mut command = Command::new(binary);
    command
        .args([
            "broker",
            "--namespace",
            "ferry-system",
            "--shutdown-delay-seconds",
            "0",
        ])
        .arg("--listen-addr")
        .arg(api.to_string())
        .arg("--admin-addr")
        .arg(admin.to_string())
        .arg("--issuer")
        .arg(format!("https://{api}"))
        .arg("--tls-cert")
        .arg(&files.cert)
        .arg("--tls-key")
        .arg(&files.key)
        .env("KUBECONFIG", broker_kubeconfig(cluster))
        .env_remove(CRASH_AFTER_STEP_ENV)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    if let Some(step) = crash_after {
        command.env(CRASH_AFTER_STEP_ENV, step.to_string());
    }
    BrokerProcess {
        child: command.spawn().unwrap(),
        api,
        admin,
        log,
    }
}

/// Whether `dsn` logs in to the database.
async fn logs_in(dsn: &str) -> bool {
    match tokio_postgres::connect(dsn, tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client.simple_query("SELECT 1").await.is_ok()
        }
        Err(_) => false,
    }
}

/// The password in a `postgres://user:password@...` string.
fn password(dsn: &str) -> String {
    let rest = dsn.strip_prefix("postgres://").unwrap();
    let userinfo = rest.split('@').next().unwrap();
    userinfo.split_once(':').unwrap().1.to_owned()
}

/// The admin Secret's `dsn` and `dsn.next`.
async fn stored(secrets: &Api<Secret>) -> (String, Option<String>) {
    let data = secrets.get("db-admin").await.unwrap().data.unwrap();
    let text = |key: &str| {
        data.get(key)
            .map(|value| String::from_utf8(value.0.clone()).unwrap())
    };
    (text("dsn").unwrap(), text("dsn.next"))
}

async fn ensure_namespace(client: &kube::Client, name: &str) {
    let created = Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
        )
        .await;
    match created {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => panic!("creating namespace {name}: {error}"),
    }
}

/// The shared cluster with ferry's CRDs, namespace, the broker's RBAC and
/// the admission policy narrowing its Secret writes.
async fn cluster() -> &'static Cluster {
    static READY: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let cluster = Cluster::shared().await.unwrap();
    READY
        .get_or_init(|| async {
            let client = cluster.client().unwrap();
            install_crds(&client).await.unwrap();
            ensure_namespace(&client, "ferry-system").await;
            let rbac = concat!(env!("CARGO_MANIFEST_DIR"), "/../rbac/broker.yaml");
            let applied = cluster
                .kubectl()
                .args(["apply", "-f", rbac])
                .output()
                .unwrap();
            assert!(applied.status.success(), "{applied:?}");
            install_broker_secret_policy(&client).await.unwrap();
            // In force once it refuses the broker a Secret not opted in.
            let ns = cluster.create_namespace("policy-probe").await.unwrap();
            create_object::<Secret>(
                &client,
                &ns,
                json!({"metadata": {"name": "probe"}, "stringData": {"key": "value"}}),
            )
            .await
            .unwrap();
            let groups = [
                "system:serviceaccounts",
                "system:serviceaccounts:ferry-system",
            ];
            let as_broker = Api::<Secret>::namespaced(
                cluster.impersonating_client(BROKER, &groups).unwrap(),
                &ns,
            );
            eventually("the admission policy to be in force", WAIT, || async {
                let mut probe = as_broker.get("probe").await.ok()?;
                set(&mut probe, "key", "changed");
                match as_broker
                    .replace("probe", &PostParams::default(), &probe)
                    .await
                {
                    Err(kube::Error::Api(status)) if status.code == 403 => Some(()),
                    _ => None,
                }
            })
            .await;
        })
        .await;
    cluster
}

/// Sets `key` of a Secret's data to `value`.
fn set(secret: &mut Secret, key: &str, value: &str) {
    secret.data.get_or_insert_default().insert(
        key.to_owned(),
        k8s_openapi::ByteString(value.as_bytes().to_vec()),
    );
}

#[tokio::test]
async fn the_broker_may_rotate_only_the_key_the_secrets_owner_named() {
    let cluster = cluster().await;
    let client = cluster.client().unwrap();
    let ns = cluster.create_namespace("rotatable").await.unwrap();
    for (name, annotations) in [
        ("named", json!({"ferry.dev/rotatable-key": "dsn"})),
        ("unnamed", json!({})),
    ] {
        create_object::<Secret>(
            &client,
            &ns,
            json!({"metadata": {"name": name, "labels": {"ferry.dev/brokerable": "true"},
                                "annotations": annotations},
                   "stringData": {"dsn": "old", "other": "kept"}}),
        )
        .await
        .unwrap();
    }
    let groups = [
        "system:serviceaccounts",
        "system:serviceaccounts:ferry-system",
    ];
    let as_broker =
        Api::<Secret>::namespaced(cluster.impersonating_client(BROKER, &groups).unwrap(), &ns);
    let update = |name: &'static str, change: fn(&mut Secret)| {
        let as_broker = as_broker.clone();
        async move {
            let mut secret = as_broker.get(name).await.unwrap();
            change(&mut secret);
            as_broker
                .replace(name, &PostParams::default(), &secret)
                .await
                .map(|_| ())
        }
    };
    let refused = |result: Result<(), kube::Error>, what: &str| match result {
        Err(kube::Error::Api(status))
            if status.code == 403 && status.message.contains("ferry-broker-secret-writes") => {}
        other => panic!("{what}: {other:?}"),
    };
    // The named key and its staging key: allowed, with the rotation time.
    update("named", |s| set(s, "dsn.next", "new"))
        .await
        .unwrap();
    update("named", |s| {
        let data = s.data.get_or_insert_default();
        let next = data.remove("dsn.next").unwrap();
        data.insert("dsn".into(), next);
        s.metadata
            .annotations
            .get_or_insert_default()
            .insert("ferry.dev/rotated-at".into(), "2026-01-01T00:00:00Z".into());
    })
    .await
    .unwrap();
    refused(
        update("named", |s| set(s, "other", "x")).await,
        "another key",
    );
    refused(
        update("named", |s| {
            s.data.get_or_insert_default().remove("dsn");
        })
        .await,
        "removing the named key",
    );
    refused(
        update("named", |s| {
            s.metadata
                .annotations
                .get_or_insert_default()
                .insert("ferry.dev/rotatable-key".into(), "other".into());
        })
        .await,
        "renaming the rotatable key",
    );
    // Without the owner's annotation, neither the key nor a staged one.
    refused(
        update("unnamed", |s| set(s, "dsn", "new")).await,
        "a key no owner named",
    );
    refused(
        update("unnamed", |s| set(s, "dsn.next", "new")).await,
        "staging without the owner's consent",
    );
}

#[tokio::test]
async fn a_broker_killed_after_any_rotation_step_leaves_a_working_credential_the_next_completes() {
    let database = Postgres::shared().await.unwrap();
    let cluster = cluster().await;
    let client = cluster.client().unwrap();
    let _operator = RunningOperator::start(cluster.config().clone()).unwrap();
    database
        .admin()
        .await
        .unwrap()
        .batch_execute(
            "CREATE ROLE rotated_reader NOLOGIN;
             CREATE ROLE rotated_admin LOGIN CREATEROLE PASSWORD 'rotated-admin-initial';
             GRANT rotated_reader TO rotated_admin WITH ADMIN OPTION;
             GRANT pg_signal_backend TO rotated_admin;",
        )
        .await
        .unwrap();
    let ns = cluster.create_namespace("rotation").await.unwrap();
    let initial = database.dsn("rotated_admin", "rotated-admin-initial");
    rotatable_orders_db(&client, &ns, &initial, "rotated_reader")
        .await
        .unwrap();
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let brokered = Api::<BrokeredSecret>::namespaced(client.clone(), &ns);
    let mut passwords = vec![password(&initial)];
    let mut logs = Vec::new();

    for step in 1..=3u8 {
        let request = format!("crash-after-{step}");
        brokered
            .patch(
                "orders-db",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {
                    "ferry.dev/rotate-admin-credential": request,
                }}})),
            )
            .await
            .unwrap();
        let (before, _) = stored(&secrets).await;
        let mut crashing = start_broker(cluster, &format!("crashing-{step}"), Some(step));
        let status = eventually(
            &format!("the broker to abort after step {step}"),
            WAIT,
            || std::future::ready(crashing.child.try_wait().unwrap()),
        )
        .await;
        assert_eq!(status.signal(), Some(6), "step {step}: {status:?}");
        logs.push(std::fs::read_to_string(&crashing.log).unwrap());

        let (dsn, next) = stored(&secrets).await;
        let working = [Some(&dsn), next.as_ref()].into_iter().flatten();
        let mut any = false;
        for candidate in working {
            any |= logs_in(candidate).await;
        }
        assert!(any, "step {step}: no stored credential logs in");
        match step {
            1 => {
                assert_eq!(dsn, before, "step 1 changes only dsn.next");
                assert!(logs_in(&dsn).await, "step 1: the stored one still works");
                let next = next.expect("step 1 stages dsn.next");
                assert!(!logs_in(&next).await, "step 1 has not changed the database");
                passwords.push(password(&next));
            }
            2 => {
                assert_eq!(dsn, before);
                assert!(!logs_in(&dsn).await, "step 2 changed the database");
                let next = next.expect("dsn.next is kept until promoted");
                assert!(logs_in(&next).await, "step 2: the staged one works");
                passwords.push(password(&next));
            }
            _ => {
                assert!(next.is_none(), "step 3 promotes and removes dsn.next");
                assert_ne!(dsn, before);
                assert!(logs_in(&dsn).await);
                assert!(!logs_in(&before).await, "the old password is gone");
                passwords.push(password(&dsn));
            }
        }

        // A broker without the hook completes (or repeats) the rotation.
        let healthy = start_broker(cluster, &format!("healthy-{step}"), None);
        wait_admin_ready(healthy.admin, "the broker", WAIT)
            .await
            .unwrap();
        let done = eventually(
            &format!("the rotation after step {step} to complete"),
            WAIT,
            || async {
                let (dsn, next) = stored(&secrets).await;
                let satisfied = brokered
                    .get("orders-db")
                    .await
                    .unwrap()
                    .status
                    .and_then(|status| status.custody)
                    .and_then(|custody| custody.rotation_request);
                (next.is_none() && satisfied.as_deref() == Some(request.as_str())).then_some(dsn)
            },
        )
        .await;
        assert!(
            logs_in(&done).await,
            "after step {step}: the promoted one works"
        );
        passwords.push(password(&done));
        for old in passwords.iter().filter(|p| **p != password(&done)) {
            assert!(
                !logs_in(&database.dsn("rotated_admin", old)).await,
                "after step {step}: an earlier password still logs in"
            );
        }
        drop(healthy);
    }

    // The last broker issues with the rotated credential and lists custody.
    let broker = start_broker(cluster, "serving", None);
    wait_admin_ready(broker.admin, "the broker", WAIT)
        .await
        .unwrap();
    let policy = testing::access_policy(&ns, "app")
        .service_account(&ns, "app")
        .secret("orders-db")
        .build();
    grant(&client, policy).await.unwrap();
    let (_pod, token) = broker_pod(&client, &ns, "app", "app").await.unwrap();
    let https = HttpsClient::new(broker.api, &cluster.authority().cert_pem()).unwrap();
    let body =
        serde_json::to_vec(&json!({"secrets": [{"namespace": ns, "name": "orders-db"}]})).unwrap();
    let lease: Value = eventually(
        "a lease with the rotated admin credential",
        WAIT,
        || async {
            let reply = https
                .request("POST", "/v1/leases", Some(&token), &body)
                .await
                .ok()?;
            (reply.status == 200).then(|| reply.json().unwrap()["leases"][0].clone())
        },
    )
    .await;
    assert!(lease_file(&lease, "username").starts_with("ferry_"));
    // Status is not written per issuance: lastUsed alone moves once a
    // minute at most, so a burst and a writer pass make at most one write.
    let writes = || async {
        let text = http_get(broker.admin, "/metrics").await.unwrap().body;
        text.lines()
            .find_map(|line| line.strip_prefix("ferry_broker_custody_status_writes_total "))
            .map_or(0, |count| count.trim().parse::<u64>().unwrap())
    };
    let before = writes().await;
    for _ in 0..5 {
        let reply = https
            .request("POST", "/v1/leases", Some(&token), &body)
            .await
            .unwrap();
        assert_eq!(reply.status, 200);
        let id = reply.json().unwrap()["leases"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        https
            .request("DELETE", &format!("/v1/leases/{id}"), Some(&token), b"")
            .await
            .unwrap();
    }
    tokio::time::sleep(ferry_broker::custody::WRITE_INTERVAL * 2).await;
    let after = writes().await;
    assert!(
        after - before <= 1,
        "{} status writes for 5 issuances",
        after - before
    );

    let (dsn, _) = stored(&secrets).await;
    let rotated_at = secrets
        .get("db-admin")
        .await
        .unwrap()
        .metadata
        .annotations
        .unwrap()["ferry.dev/rotated-at"]
        .clone();
    // Status says when, to the second metav1.Time keeps.
    let rotated_at = rotated_at
        .parse::<k8s_openapi::jiff::Timestamp>()
        .unwrap()
        .as_second();
    let custody = eventually("custody in status with the last rotation", WAIT, || async {
        let custody = brokered.get("orders-db").await.unwrap().status?.custody?;
        let held = custody.credentials.first()?;
        (held.last_used.is_some() && held.last_rotated.as_ref()?.0.as_second() == rotated_at)
            .then_some(custody)
    })
    .await;
    let held = &custody.credentials[0];
    assert_eq!(held.secret, "db-admin");
    assert_eq!(held.keys.len(), 1, "only the key the source uses: {held:?}");
    assert_eq!(held.keys[0].name, "dsn");
    let fingerprint = &held.keys[0].fingerprint;
    assert!(
        fingerprint.starts_with("hmac-sha256:") && fingerprint.len() == 44,
        "{fingerprint}"
    );
    let plain: String = ring::digest::digest(&ring::digest::SHA256, dsn.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        !plain.contains(&fingerprint["hmac-sha256:".len()..]),
        "a plain hash"
    );
    assert_eq!(custody.rotation_error, None);
    // The operator's own status writes leave the broker's custody alone.
    let status = brokered.get("orders-db").await.unwrap().status.unwrap();
    assert_eq!(status.conditions[0].type_, "Ready");

    // Installation-wide: the lease and JWT keys, with no key in sight.
    let inventory = eventually("the custody ConfigMap", WAIT, || async {
        Api::<ConfigMap>::namespaced(client.clone(), "ferry-system")
            .get_opt("ferry-broker-custody")
            .await
            .unwrap()?
            .data
    })
    .await;
    for name in ["lease-key", "jwt-es256", "jwt-eddsa"] {
        let entry = &inventory[name];
        assert!(
            entry.contains("current:") && entry.contains("nextRotation:"),
            "{name}: {entry}"
        );
    }
    assert!(inventory["lease-key"].contains("hmac-sha256:"));
    assert!(inventory["jwt-es256"].contains("kid:"));
    let key_secret = Api::<Secret>::namespaced(client.clone(), "ferry-system")
        .get("ferry-broker-lease-key")
        .await
        .unwrap();
    let shown = serde_json::to_string(&inventory).unwrap();
    for (name, value) in key_secret.data.unwrap() {
        if name.ends_with("-created") {
            continue;
        }
        let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &value.0);
        assert!(
            !shown.contains(&encoded),
            "the lease-key Secret's {name} is in the ConfigMap"
        );
    }
    let metrics = eventually("the custody age metric", WAIT, || async {
        let text = http_get(broker.admin, "/metrics").await.ok()?.body;
        (text.contains("credential=\"postgres_admin\"")
            && text.contains("credential=\"lease_key\""))
        .then_some(text)
    })
    .await;
    assert!(
        metrics.contains(&format!(
            "ferry_broker_custody_age_seconds{{credential=\"postgres_admin\",namespace=\"{ns}\",secret=\"db-admin\"}}"
        )),
        "{metrics}"
    );

    // No password, old or new, in a broker's log or the database's.
    logs.push(std::fs::read_to_string(&broker.log).unwrap());
    // (Not the first: the test itself set it in plain SQL.)
    let database_log = database.log();
    for (made_by_the_broker, password) in passwords.iter().enumerate() {
        assert!(
            made_by_the_broker == 0 || !database_log.contains(password.as_str()),
            "a password in PostgreSQL's log"
        );
        for log in &logs {
            assert!(
                !log.contains(password.as_str()),
                "a password in a broker's log"
            );
        }
    }
}
