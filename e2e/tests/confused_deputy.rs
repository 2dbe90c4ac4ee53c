//! The broker is no confused deputy: who may create a BrokeredSecret and an
//! AccessPolicy in a namespace cannot use the broker's own reach to read
//! what the namespace's owner did not hand over. Secrets must be opted in
//! (`ferry.dev/brokerable`), Kubernetes credential types explicitly so;
//! BrokeredSecrets in ferry's namespace and kube-system are never served;
//! `memberOf` roles that carry power beyond data access, and superuser
//! admin connections, are refused at issue time with the reason. Real
//! apiserver, operator, broker and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ferry_api::resources::BrokeredSecret;
use ferry_broker::lease_id::LeaseKeys;
use ferry_contract::{
    BROKERABLE, BROKERABLE_LABEL, BROKERABLE_SENSITIVE, DEFAULT_BROKER_AUDIENCE, DEFAULT_NAMESPACE,
};
use ferry_e2e::https_client::HttpsClient;
use ferry_e2e::{
    Cluster, Postgres, RunningBroker, RunningOperator, Subject, capture_logs,
    create_brokered_secret_from, create_object, eventually, grant_to, install_crds,
    pod_bound_token,
};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

const WAIT: Duration = Duration::from_secs(60);

struct World {
    _operator: RunningOperator,
    broker: RunningBroker,
}

async fn client() -> Client {
    Cluster::shared().await.unwrap().client().unwrap()
}

/// The operator and broker with the default installation (ferry's
/// namespace `ferry-system`), and the database's roles: `cd_reader` (plain),
/// `cd_super` (SUPERUSER), `cd_creator` (CREATEROLE), `cd_bypass`
/// (BYPASSRLS), `cd_wrapper` (a member of `pg_read_server_files`), and the
/// broker's admin `cd_admin` (CREATEROLE, not a superuser).
async fn world() -> &'static World {
    static WORLD: OnceCell<World> = OnceCell::const_new();
    capture_logs();
    WORLD
        .get_or_init(|| async {
            Postgres::shared()
                .await
                .unwrap()
                .admin()
                .await
                .unwrap()
                .batch_execute(
                    "CREATE ROLE cd_reader NOLOGIN;
                     CREATE ROLE cd_super NOLOGIN SUPERUSER;
                     CREATE ROLE cd_creator NOLOGIN CREATEROLE;
                     CREATE ROLE cd_bypass NOLOGIN BYPASSRLS;
                     CREATE ROLE cd_wrapper NOLOGIN;
                     GRANT pg_read_server_files TO cd_wrapper;
                     CREATE ROLE cd_admin LOGIN CREATEROLE PASSWORD 'cd-admin-password';
                     GRANT cd_reader TO cd_admin WITH ADMIN OPTION;
                     GRANT pg_signal_backend TO cd_admin;",
                )
                .await
                .unwrap();
            let cluster = Cluster::shared().await.unwrap();
            install_crds(&cluster.client().unwrap()).await.unwrap();
            World {
                _operator: RunningOperator::start(cluster.config().clone()).unwrap(),
                broker: RunningBroker::start(cluster, LeaseKeys::new(&[12; 32], &[])).unwrap(),
            }
        })
        .await
}

/// A consuming namespace with service account `checkout`, granted
/// `secrets` of `owner`, and a token of a pod running as it.
async fn consumer(client: &Client, owner: &str, secrets: &[&str]) -> String {
    let cluster = Cluster::shared().await.unwrap();
    let app = cluster.create_namespace("cd-app").await.unwrap();
    let entries: Vec<Value> = secrets.iter().map(|name| json!({"name": name})).collect();
    let subject = Subject {
        namespace: &app,
        name: "checkout",
    };
    grant_to(client, owner, "checkout", subject, json!(entries))
        .await
        .unwrap();
    let pod: Pod = create_object(
        client,
        &app,
        json!({"metadata": {"name": "api", "labels": {"ferry.dev/inject": "true"}},
               "spec": {"serviceAccountName": "checkout",
                        "containers": [{"name": "app", "image": "app:1"}]}}),
    )
    .await
    .unwrap();
    pod_bound_token(client, &pod, DEFAULT_BROKER_AUDIENCE, 600)
        .await
        .unwrap()
}

async fn ask(broker: &HttpsClient, token: &str, namespace: &str, name: &str) -> (u16, String) {
    let body =
        serde_json::to_vec(&json!({"secrets": [{"namespace": namespace, "name": name}]})).unwrap();
    let reply = broker
        .request("POST", "/v1/leases", Some(token), &body)
        .await
        .unwrap();
    let message = reply
        .json()
        .ok()
        .and_then(|body| body["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (reply.status, message)
}

/// Asks until the answer is no longer one of the broker catching up (401
/// unknown pod, 403 no Grant yet), and returns it.
async fn decided(broker: &HttpsClient, token: &str, namespace: &str, name: &str) -> (u16, String) {
    eventually(
        &format!("a decision on {namespace}/{name}"),
        WAIT,
        || async {
            let (status, message) = ask(broker, token, namespace, name).await;
            let catching_up = status == 401 || message.contains("has no Grant");
            (!catching_up).then_some((status, message))
        },
    )
    .await
}

/// The BrokeredSecret's Ready condition once its reason is `reason`.
async fn ready(client: &Client, namespace: &str, name: &str, reason: &str) -> (String, String) {
    let api = Api::<BrokeredSecret>::namespaced(client.clone(), namespace);
    eventually(
        &format!("{namespace}/{name} Ready ({reason})"),
        WAIT,
        || async {
            let condition = api
                .get(name)
                .await
                .ok()?
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready" && c.reason == reason)?;
            Some((condition.status, condition.message))
        },
    )
    .await
}

async fn label(client: &Client, namespace: &str, name: &str, value: &str) {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {BROKERABLE_LABEL: value}}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_secret_its_owner_did_not_opt_in_is_not_brokered() {
    let world = world().await;
    let client = client().await;
    let owner = Cluster::shared()
        .await
        .unwrap()
        .create_namespace("cd-plain")
        .await
        .unwrap();
    create_object::<Secret>(
        &client,
        &owner,
        json!({"metadata": {"name": "team-key"}, "stringData": {"token": "planted-team-value"}}),
    )
    .await
    .unwrap();
    create_brokered_secret_from(
        &client,
        &owner,
        "team-key",
        json!({"source": {"kubernetesSecret": {"name": "team-key"}}}),
    )
    .await
    .unwrap();
    let token = consumer(&client, &owner, &["team-key"]).await;
    let broker = world.broker.client().unwrap();

    let (status, message) = ready(&client, &owner, "team-key", "SecretNotBrokerable").await;
    assert_eq!(status, "False");
    assert!(message.contains("ferry.dev/brokerable=true"), "{message}");
    let (code, error) = decided(&broker, &token, &owner, "team-key").await;
    assert_eq!(code, 403, "{error}");
    assert!(error.contains("is not opted in"), "{error}");
    assert!(!error.contains("planted-team-value"));

    // The owner opts in: ready, and served.
    label(&client, &owner, "team-key", BROKERABLE).await;
    let (status, _) = ready(&client, &owner, "team-key", "Resolved").await;
    assert_eq!(status, "True");
    eventually("the opted-in Secret to be served", WAIT, || async {
        (ask(&broker, &token, &owner, "team-key").await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn kubernetes_credential_secrets_need_the_explicit_opt_in() {
    let world = world().await;
    let client = client().await;
    let owner = Cluster::shared()
        .await
        .unwrap()
        .create_namespace("cd-creds")
        .await
        .unwrap();
    // A TLS key and a service-account token, both opted in with only `true`.
    create_object::<Secret>(
        &client,
        &owner,
        json!({"metadata": {"name": "ingress-tls", "labels": {BROKERABLE_LABEL: BROKERABLE}},
               "type": "kubernetes.io/tls",
               "stringData": {"tls.crt": "planted-cert", "tls.key": "planted-key"}}),
    )
    .await
    .unwrap();
    create_object::<Secret>(
        &client,
        &owner,
        json!({"metadata": {"name": "sa-token", "labels": {BROKERABLE_LABEL: BROKERABLE},
                            "annotations": {"kubernetes.io/service-account.name": "default"}},
               "type": "kubernetes.io/service-account-token"}),
    )
    .await
    .unwrap();
    for name in ["ingress-tls", "sa-token"] {
        create_brokered_secret_from(
            &client,
            &owner,
            name,
            json!({"source": {"kubernetesSecret": {"name": name}}}),
        )
        .await
        .unwrap();
    }
    let token = consumer(&client, &owner, &["ingress-tls", "sa-token"]).await;
    let broker = world.broker.client().unwrap();
    for name in ["ingress-tls", "sa-token"] {
        let (code, error) = decided(&broker, &token, &owner, name).await;
        assert_eq!(code, 403, "{name}: {error}");
        assert!(error.contains(BROKERABLE_SENSITIVE), "{name}: {error}");
        let (status, _) = ready(&client, &owner, name, "SecretNotBrokerable").await;
        assert_eq!(status, "False");
    }

    label(&client, &owner, "ingress-tls", BROKERABLE_SENSITIVE).await;
    eventually(
        "the explicitly opted-in TLS Secret to be served",
        WAIT,
        || async { (ask(&broker, &token, &owner, "ingress-tls").await.0 == 200).then_some(()) },
    )
    .await;
    let (status, _) = ready(&client, &owner, "ingress-tls", "Resolved").await;
    assert_eq!(status, "True");
}

#[tokio::test]
async fn brokered_secrets_in_ferrys_namespace_and_kube_system_are_refused() {
    let world = world().await;
    let client = client().await;
    let namespaces = Api::<Namespace>::all(client.clone());
    if namespaces
        .get_opt(DEFAULT_NAMESPACE)
        .await
        .unwrap()
        .is_none()
    {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": DEFAULT_NAMESPACE}})).unwrap(),
            )
            .await
            .unwrap();
    }
    let broker = world.broker.client().unwrap();
    for owner in [DEFAULT_NAMESPACE, "kube-system"] {
        // A JWT source needs no Secret: only the namespace is at fault.
        create_brokered_secret_from(
            &client,
            owner,
            "cd-token",
            json!({"source": {"jwt": {"audience": ["orders"]}}}),
        )
        .await
        .unwrap();
        let token = consumer(&client, owner, &["cd-token"]).await;
        let (status, message) = ready(&client, owner, "cd-token", "NamespaceRefused").await;
        assert_eq!(status, "False");
        assert!(message.contains("are never served"), "{message}");
        let (code, error) = decided(&broker, &token, owner, "cd-token").await;
        assert_eq!(code, 403, "{owner}: {error}");
        assert!(error.contains("are never served"), "{owner}: {error}");
    }
}

#[tokio::test]
async fn member_of_roles_with_power_beyond_data_and_superuser_admins_are_refused() {
    let world = world().await;
    let client = client().await;
    let database = Postgres::shared().await.unwrap();
    let owner = Cluster::shared()
        .await
        .unwrap()
        .create_namespace("cd-pg")
        .await
        .unwrap();
    for (name, dsn) in [
        ("db-admin", database.dsn("cd_admin", "cd-admin-password")),
        ("super-admin", database.admin_dsn()),
    ] {
        create_object::<Secret>(
            &client,
            &owner,
            json!({"metadata": {"name": name, "labels": {BROKERABLE_LABEL: BROKERABLE}},
                   "stringData": {"dsn": dsn}}),
        )
        .await
        .unwrap();
    }
    // BrokeredSecret name, admin Secret, memberOf, and what the refusal says
    // (None: issued).
    let cases: [(&str, &str, &str, Option<&str>); 7] = [
        ("reader", "db-admin", "cd_reader", None),
        (
            "files",
            "db-admin",
            "pg_read_server_files",
            Some("role pg_read_server_files is a predefined pg_* role"),
        ),
        (
            "wrapped",
            "db-admin",
            "cd_wrapper",
            Some("role cd_wrapper is a member of pg_read_server_files"),
        ),
        (
            "super",
            "db-admin",
            "cd_super",
            Some("role cd_super is SUPERUSER"),
        ),
        (
            "creator",
            "db-admin",
            "cd_creator",
            Some("role cd_creator is CREATEROLE"),
        ),
        (
            "bypass",
            "db-admin",
            "cd_bypass",
            Some("role cd_bypass is BYPASSRLS"),
        ),
        (
            "as-superuser",
            "super-admin",
            "cd_reader",
            Some("a superuser admin connection is refused"),
        ),
    ];
    for (name, admin, role, _) in &cases {
        create_brokered_secret_from(
            &client,
            &owner,
            name,
            json!({"source": {"postgres": {"connectionSecretRef": {"name": admin},
                                           "memberOf": [role]}}}),
        )
        .await
        .unwrap();
    }
    let names: Vec<&str> = cases.iter().map(|(name, ..)| *name).collect();
    let token = consumer(&client, &owner, &names).await;
    let broker = world.broker.client().unwrap();
    for (name, _, role, refusal) in &cases {
        let (code, error) = decided(&broker, &token, &owner, name).await;
        match refusal {
            None => assert_eq!(code, 200, "{name}: {error}"),
            Some(reason) => {
                assert_eq!(code, 403, "{name}: {error}");
                assert!(error.contains(reason), "{name}: {error}");
                assert!(!error.contains("postgres://"), "{name}: {error}");
                // Nothing was created for the pod.
                let made = database
                    .admin()
                    .await
                    .unwrap()
                    .query(
                        "SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid \
                         JOIN pg_roles p ON p.oid = m.member \
                         WHERE r.rolname = $1 AND p.rolname LIKE 'ferry\\_%'",
                        &[role],
                    )
                    .await
                    .unwrap();
                if *name != "as-superuser" {
                    assert!(
                        made.is_empty(),
                        "{name}: a role was made a member of {role}"
                    );
                }
            }
        }
    }
}
