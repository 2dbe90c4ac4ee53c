//! `kubectl ferry` against a real apiserver, run as a user would run it:
//! the binary, a kubeconfig with a client certificate the apiserver
//! authenticates, RBAC deciding what that user may read.
//!
//! - every subcommand on the README's examples, in tables and in
//!   `-o json` that parses;
//! - a caller without rights sees nothing it may not see;
//! - `lint` reaches the apiserver's verdict on every object the CRD tests
//!   see refused, and the operator's on every object the reconciler tests
//!   see marked not Ready (`ferry_e2e::invalid`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_api::resources::{AccessPolicy, AccessRequest, BrokeredSecret, RequestPhase};
use ferry_e2e::invalid::{NotReady, Refused};
use ferry_e2e::{
    Cluster, RunningOperator, RunningWebhook, create_object, eventually,
    install_access_request_policy, install_crds, wait_webhook_active, workspace_binary,
};
use ferry_webhook::config::InjectionConfig;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

const WAIT: Duration = Duration::from_secs(60);

const FERRY_NAMESPACE: &str = "ferry-system";

/// The shared cluster with the CRDs, the access-request admission policy,
/// one operator and one webhook for the whole binary.
async fn setup() -> (&'static Cluster, Client) {
    static RUNNING: OnceCell<(RunningOperator, RunningWebhook)> = OnceCell::const_new();
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    RUNNING
        .get_or_init(|| async {
            install_crds(&client).await.unwrap();
            install_access_request_policy(&client).await.unwrap();
            let operator = RunningOperator::start(cluster.config().clone()).unwrap();
            let webhook = RunningWebhook::start(
                cluster,
                InjectionConfig {
                    ferry_namespace: FERRY_NAMESPACE.into(),
                    sidecar_image: "ferry-sidecar:e2e".into(),
                    broker_url: "https://127.0.0.1:1".into(),
                    ..InjectionConfig::default()
                },
            )
            .unwrap();
            webhook.register(&client, FERRY_NAMESPACE).await.unwrap();
            (operator, webhook)
        })
        .await;
    (cluster, client)
}

fn plugin() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| workspace_binary("kubectl-ferry").unwrap())
        .clone()
}

/// What one run of the plugin printed and how it exited.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "-o json did not parse ({e}):\n{}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `kubectl-ferry` with `kubeconfig` and `args`.
async fn ferry(kubeconfig: &Path, args: &[&str]) -> Run {
    let output = tokio::process::Command::new(plugin())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .await
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// The README's example, in fresh namespaces: `payments` owns
/// `orders-db` (its admin Secret opted in) and grants it to `checkout` in
/// `shop` for at most 10m.
struct Example {
    payments: String,
    shop: String,
}

async fn example(cluster: &Cluster, client: &Client, prefix: &str) -> Example {
    let payments = cluster
        .create_namespace(&format!("{prefix}-payments"))
        .await
        .unwrap();
    let shop = cluster
        .create_namespace(&format!("{prefix}-shop"))
        .await
        .unwrap();
    create_object::<Secret>(
        client,
        &payments,
        json!({"metadata": {"name": "orders-db-admin", "labels": {"ferry.dev/brokerable": "true"}},
               "stringData": {"dsn": "postgres://admin:planted-admin-password@db/orders"}}),
    )
    .await
    .unwrap();
    create_object::<BrokeredSecret>(
        client,
        &payments,
        json!({"metadata": {"name": "orders-db"},
               "spec": {"source": {"postgres": {"connectionSecretRef": {"name": "orders-db-admin"},
                                                "memberOf": ["orders_reader"]}}}}),
    )
    .await
    .unwrap();
    create_object::<AccessPolicy>(
        client,
        &payments,
        json!({"metadata": {"name": "checkout-reads-orders"},
               "spec": {"subjects": [{"serviceAccount": {"name": "checkout", "namespace": shop}}],
                        "secrets": [{"name": "orders-db", "maxTtl": "10m"}]}}),
    )
    .await
    .unwrap();
    for account in ["checkout", "refunds"] {
        create_object::<ServiceAccount>(client, &shop, json!({"metadata": {"name": account}}))
            .await
            .unwrap();
    }
    let grants: Api<ferry_api::resources::Grant> = Api::namespaced(client.clone(), &shop);
    eventually("the Grant for shop/checkout", WAIT, || async {
        (grants.list(&Default::default()).await.unwrap().items.len() == 1).then_some(())
    })
    .await;
    Example { payments, shop }
}

/// A kubeconfig of `user` who may read Grants, AccessPolicies,
/// BrokeredSecrets and AccessRequests everywhere (a platform engineer).
async fn reader_kubeconfig(cluster: &Cluster, client: &Client, user: &str) -> PathBuf {
    let role = format!("ferry-reader-{user}");
    create_cluster_object::<ClusterRole>(
        client,
        json!({"metadata": {"name": role},
               "rules": [
                   {"apiGroups": ["ferry.dev"], "resources": ["grants", "accesspolicies", "brokeredsecrets", "accessrequests", "revocations"], "verbs": ["get", "list"]},
                   {"apiGroups": [""], "resources": ["pods", "events"], "verbs": ["get", "list"]},
               ]}),
    )
    .await;
    create_cluster_object::<ClusterRoleBinding>(
        client,
        json!({"metadata": {"name": role},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
               "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}]}),
    )
    .await;
    cluster.user_kubeconfig(user, None).unwrap()
}

/// Creates the cluster-scoped `object`.
async fn create_cluster_object<K>(client: &Client, object: Value)
where
    K: kube::Resource<Scope = kube::core::ClusterResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object).unwrap();
    Api::<K>::all(client.clone())
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
}

#[tokio::test]
async fn can_i_answers_yes_with_the_grant_and_no_with_what_to_change() {
    let (cluster, client) = setup().await;
    let ex = example(cluster, &client, "kf-cani").await;
    let kubeconfig = reader_kubeconfig(cluster, &client, "platform-cani").await;
    let secret = format!("{}/orders-db", ex.payments);

    let checkout = format!("system:serviceaccount:{}:checkout", ex.shop);
    let yes = ferry(&kubeconfig, &["can-i", "--as", &checkout, "get", &secret]).await;
    assert_eq!(yes.code, 0, "{yes:?}");
    assert!(yes.stdout.starts_with("yes - Grant "), "{yes:?}");
    assert!(
        yes.stdout.contains(&format!(
            "AccessPolicy {}/checkout-reads-orders",
            ex.payments
        )),
        "{yes:?}"
    );
    assert!(yes.stdout.contains("maxTtl 10m"), "{yes:?}");
    assert!(!yes.stdout.contains("planted-admin-password"));

    let as_json = ferry(
        &kubeconfig,
        &["can-i", "--as", &checkout, "get", &secret, "-o", "json"],
    )
    .await;
    let decision = as_json.json();
    assert_eq!(decision["allowed"], true);
    assert_eq!(decision["grant"]["maxTtl"], "10m");
    assert_eq!(decision["grant"]["state"], "Active");

    let refunds = format!("system:serviceaccount:{}:refunds", ex.shop);
    let no = ferry(&kubeconfig, &["can-i", "--as", &refunds, "get", &secret]).await;
    assert_eq!(no.code, 1, "{no:?}");
    assert!(no.stdout.starts_with("no - service account"), "{no:?}");
    assert!(
        no.stdout.contains(&format!(
            "an AccessPolicy in namespace {} must name it",
            ex.payments
        )),
        "{no:?}"
    );

    let quiet = ferry(
        &kubeconfig,
        &["can-i", "--as", &refunds, "get", &secret, "-q"],
    )
    .await;
    assert_eq!((quiet.code, quiet.stdout.as_str()), (1, ""));

    let not_an_sa = ferry(&kubeconfig, &["can-i", "--as", "alice", "get", &secret]).await;
    assert_eq!(not_an_sa.code, 1);
    assert!(
        not_an_sa
            .stderr
            .contains("system:serviceaccount:NAMESPACE:NAME"),
        "{not_an_sa:?}"
    );
}

#[tokio::test]
async fn who_can_lists_every_grant_of_a_secret_in_a_table_and_in_json() {
    let (cluster, client) = setup().await;
    let ex = example(cluster, &client, "kf-who").await;
    let kubeconfig = reader_kubeconfig(cluster, &client, "platform-who").await;
    let secret = format!("{}/orders-db", ex.payments);

    let table = ferry(&kubeconfig, &["who-can", &secret]).await;
    assert_eq!(table.code, 0, "{table:?}");
    let header = table.stdout.lines().next().unwrap();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        [
            "SERVICEACCOUNT",
            "POLICY",
            "MAXTTL",
            "AUDIENCE",
            "SCOPES",
            "VALIDUNTIL",
            "APPROVAL",
            "STATE"
        ],
        "{table:?}"
    );
    let row = table.stdout.lines().nth(1).unwrap();
    assert!(
        row.starts_with(&format!("{}/checkout", ex.shop)),
        "{table:?}"
    );
    assert!(row.contains("10m") && row.contains("Active"), "{table:?}");

    let headless = ferry(&kubeconfig, &["who-can", &secret, "--no-headers"]).await;
    assert!(
        headless
            .stdout
            .starts_with(&format!("{}/checkout", ex.shop)),
        "{headless:?}"
    );

    let report = ferry(&kubeconfig, &["who-can", &secret, "-o", "json"])
        .await
        .json();
    assert_eq!(report["secret"], secret.as_str());
    let grants = report["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 1, "{report}");
    assert_eq!(grants[0]["serviceAccount"], format!("{}/checkout", ex.shop));
    assert_eq!(
        grants[0]["policy"],
        format!("{}/checkout-reads-orders", ex.payments)
    );

    let yaml = ferry(&kubeconfig, &["who-can", &secret, "-o", "yaml"]).await;
    let parsed: Value = serde_yaml::from_str(&yaml.stdout).unwrap();
    assert_eq!(parsed["grants"][0]["maxTtl"], "10m");

    let missing = ferry(&kubeconfig, &["who-can", &format!("{}/nope", ex.payments)]).await;
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("BrokeredSecret") && missing.stderr.contains("not found"),
        "{missing:?}"
    );
}

#[tokio::test]
async fn a_caller_without_rights_sees_nothing_it_may_not_see() {
    let (cluster, client) = setup().await;
    let ex = example(cluster, &client, "kf-norights").await;
    let secret = format!("{}/orders-db", ex.payments);
    let nobody = cluster.user_kubeconfig("nobody", None).unwrap();

    for args in [
        vec!["who-can", secret.as_str()],
        vec!["who-can", secret.as_str(), "-o", "json"],
        vec![
            "can-i",
            "--as",
            &format!("system:serviceaccount:{}:checkout", ex.shop),
            "get",
            secret.as_str(),
        ],
    ] {
        let run = ferry(&nobody, &args).await;
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        assert_eq!(
            run.stdout, "",
            "{args:?} printed what nobody may see: {run:?}"
        );
        assert!(run.stderr.contains("forbidden"), "{args:?}: {run:?}");
        assert!(
            !run.stderr.contains("orders_reader") && !run.stderr.contains("checkout-reads-orders"),
            "{run:?}"
        );
    }

    // Someone who may read their own namespace's Grants, but not the
    // owner's policies, learns nothing about the owner's side either.
    create_object::<Role>(
        &client,
        &ex.shop,
        json!({"metadata": {"name": "grants"},
               "rules": [{"apiGroups": ["ferry.dev"], "resources": ["grants"], "verbs": ["get", "list"]}]}),
    )
    .await
    .unwrap();
    create_object::<RoleBinding>(
        &client,
        &ex.shop,
        json!({"metadata": {"name": "grants"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "grants"},
               "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "shop-dev"}]}),
    )
    .await
    .unwrap();
    let shop_dev = cluster.user_kubeconfig("shop-dev", None).unwrap();
    let run = ferry(
        &shop_dev,
        &[
            "can-i",
            "--as",
            &format!("system:serviceaccount:{}:checkout", ex.shop),
            "get",
            &secret,
        ],
    )
    .await;
    assert_eq!((run.code, run.stdout.as_str()), (1, ""), "{run:?}");
    assert!(
        run.stderr.contains("accesspolicies") && run.stderr.contains("forbidden"),
        "{run:?}"
    );
}

#[tokio::test]
async fn explain_pod_shows_what_the_webhook_injected_and_the_grant_behind_each_secret() {
    let (cluster, client) = setup().await;
    let ex = example(cluster, &client, "kf-explain").await;
    wait_webhook_active(&client, &ex.shop).await.unwrap();
    let kubeconfig = reader_kubeconfig(cluster, &client, "platform-explain").await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "checkout-1", "labels": {"ferry.dev/inject": "true"},
                     "annotations": {"ferry.dev/secrets": format!("{}/orders-db", ex.payments)}},
        "spec": {"serviceAccountName": "checkout",
                 "containers": [{"name": "app", "image": "app:e2e"}]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), &ex.shop)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let name = format!("{}/checkout-1", ex.shop);

    let text = ferry(&kubeconfig, &["explain", "pod", &name]).await;
    assert_eq!(text.code, 0, "{text:?}");
    assert!(
        text.stdout
            .contains(&format!("Service account:  {}/checkout", ex.shop)),
        "{text:?}"
    );
    assert!(
        text.stdout.contains("Injected:         yes, by webhook"),
        "{text:?}"
    );
    assert!(
        text.stdout
            .contains(&format!("{}/orders-db: allowed: Grant ", ex.payments)),
        "{text:?}"
    );

    let report = ferry(&kubeconfig, &["explain", "pod", &name, "-o", "json"])
        .await
        .json();
    assert_eq!(
        report["injected"]["secrets"],
        json!([format!("{}/orders-db", ex.payments)])
    );
    assert_eq!(report["secrets"][0]["decision"]["allowed"], true);
    assert_eq!(report["secrets"][0]["decision"]["grant"]["maxTtl"], "10m");

    let plain: Pod = serde_json::from_value(json!({
        "metadata": {"name": "plain"},
        "spec": {"containers": [{"name": "app", "image": "app:e2e"}]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), &ex.shop)
        .create(&PostParams::default(), &plain)
        .await
        .unwrap();
    let plain = ferry(
        &kubeconfig,
        &["explain", "pod", &format!("{}/plain", ex.shop)],
    )
    .await;
    assert!(
        plain
            .stdout
            .contains("Injected:         no: it has no ferry.dev/secrets annotation"),
        "{plain:?}"
    );
}

#[tokio::test]
async fn request_approve_and_deny_act_as_the_authenticated_user() {
    let (cluster, client) = setup().await;
    let ns = cluster.create_namespace("kf-jit").await.unwrap();
    let user = |who: &str| format!("{who}@{ns}");
    create_object::<Role>(
        &client,
        &ns,
        json!({"metadata": {"name": "requests"},
               "rules": [{"apiGroups": ["ferry.dev"], "resources": ["accessrequests"],
                          "verbs": ["get", "list", "create", "patch"]},
                         {"apiGroups": ["ferry.dev"], "resources": ["grants", "accesspolicies", "brokeredsecrets"],
                          "verbs": ["get", "list"]}]}),
    )
    .await
    .unwrap();
    create_object::<RoleBinding>(
        &client,
        &ns,
        json!({"metadata": {"name": "requests"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "requests"},
               "subjects": [
                   {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user("alice")},
                   {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user("bob")}]}),
    )
    .await
    .unwrap();
    create_object::<BrokeredSecret>(
        &client,
        &ns,
        json!({"metadata": {"name": "orders-db"},
               "spec": {"source": {"postgres": {"connectionSecretRef": {"name": "db-admin"}}}}}),
    )
    .await
    .unwrap();
    create_object::<AccessPolicy>(
        &client,
        &ns,
        json!({"metadata": {"name": "orders-jit"},
               "spec": {"subjects": [{"serviceAccount": {"name": "checkout", "namespace": ns}}],
                        "secrets": [{"name": "orders-db"}],
                        "approval": {"approvers": {"users": [user("bob")]}, "maxDuration": "1h"}}}),
    )
    .await
    .unwrap();
    let alice = cluster.user_kubeconfig(&user("alice"), None).unwrap();
    let bob = cluster.user_kubeconfig(&user("bob"), None).unwrap();
    let policy = format!("{ns}/orders-jit");
    let checkout = format!("system:serviceaccount:{ns}:checkout");
    let secret = format!("{ns}/orders-db");

    let before = ferry(&alice, &["can-i", "--as", &checkout, "get", &secret]).await;
    assert_eq!(before.code, 1, "{before:?}");
    assert!(
        before
            .stdout
            .contains("requires approval: ask with kubectl ferry request"),
        "{before:?}"
    );

    let asked = ferry(
        &alice,
        &[
            "request",
            &policy,
            "--duration",
            "30m",
            "--reason",
            "INC-4711: check the orders table",
            "--service-account",
            &format!("{ns}/checkout"),
            "--name",
            "alice-inc-4711",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(asked.code, 0, "{asked:?}");
    assert_eq!(asked.json()["requester"], user("alice"));
    let requests: Api<AccessRequest> = Api::namespaced(client.clone(), &ns);
    let phase = |name: &'static str, wanted: RequestPhase| {
        let requests = requests.clone();
        async move {
            eventually(&format!("{name} {wanted:?}"), WAIT, || async {
                let request = requests.get(name).await.unwrap();
                (request.status?.phase == Some(wanted)).then_some(())
            })
            .await
        }
    };
    phase("alice-inc-4711", RequestPhase::Pending).await;

    // alice may not approve her own request: the admission policy refuses.
    let own = ferry(
        &alice,
        &["approve", &format!("{ns}/alice-inc-4711"), "--reason", "me"],
    )
    .await;
    assert_eq!(own.code, 1, "{own:?}");
    assert!(own.stderr.contains("deciding AccessRequest"), "{own:?}");

    let approved = ferry(
        &bob,
        &[
            "approve",
            &format!("{ns}/alice-inc-4711"),
            "--reason",
            "on call, ticket checked",
        ],
    )
    .await;
    assert_eq!(approved.code, 0, "{approved:?}");
    assert!(
        approved
            .stdout
            .starts_with(&format!("accessrequest {ns}/alice-inc-4711 approved")),
        "{approved:?}"
    );
    phase("alice-inc-4711", RequestPhase::Approved).await;
    let stored = requests.get("alice-inc-4711").await.unwrap();
    assert_eq!(stored.spec.decision.unwrap().approver, user("bob"));

    let after = eventually("checkout may get orders-db", WAIT, || async {
        let run = ferry(&alice, &["can-i", "--as", &checkout, "get", &secret]).await;
        (run.code == 0).then_some(run)
    })
    .await;
    assert!(
        after
            .stdout
            .contains("approved through AccessRequest alice-inc-4711"),
        "{after:?}"
    );

    ferry(
        &alice,
        &[
            "request",
            &policy,
            "--duration",
            "10m",
            "--reason",
            "again",
            "--name",
            "alice-again",
        ],
    )
    .await;
    phase("alice-again", RequestPhase::Pending).await;
    let denied = ferry(
        &bob,
        &[
            "deny",
            &format!("{ns}/alice-again"),
            "--reason",
            "not needed",
        ],
    )
    .await;
    assert_eq!(denied.code, 0, "{denied:?}");
    phase("alice-again", RequestPhase::Denied).await;
}

#[tokio::test]
async fn revoke_takes_a_service_accounts_access_away_until_lifted() {
    let (cluster, client) = setup().await;
    let ex = example(cluster, &client, "kf-revoke").await;
    let reader = reader_kubeconfig(cluster, &client, "platform-revoke").await;
    let admin = cluster.kubeconfig().to_path_buf();
    let secret = format!("{}/orders-db", ex.payments);
    let checkout = format!("system:serviceaccount:{}:checkout", ex.shop);

    let created = ferry(
        &admin,
        &[
            "revoke",
            "sa",
            &format!("{}/checkout", ex.shop),
            "--reason",
            "INC-4712: leaked",
            "--name",
            "inc-4712",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(created.code, 0, "{created:?}");
    assert_eq!(
        created.json()["target"],
        format!("serviceaccount {}/checkout", ex.shop)
    );

    let no = ferry(&reader, &["can-i", "--as", &checkout, "get", &secret]).await;
    assert_eq!(no.code, 1, "{no:?}");
    assert!(
        no.stdout
            .contains(&format!("Revocation {}/inc-4712", ex.shop)),
        "{no:?}"
    );
    assert!(no.stdout.contains("INC-4712: leaked"), "{no:?}");
    let who = ferry(&reader, &["who-can", &secret, "-o", "json"])
        .await
        .json();
    assert_eq!(who["grants"][0]["state"], "Revoked", "{who}");
    assert_eq!(
        who["grants"][0]["revokedBy"],
        format!("{}/inc-4712", ex.shop)
    );

    let listed = ferry(&reader, &["revoke", "list", "-n", &ex.shop]).await;
    assert!(
        listed
            .stdout
            .lines()
            .any(|l| l.starts_with(&format!("{}/inc-4712", ex.shop))),
        "{listed:?}"
    );

    let lifted = ferry(
        &admin,
        &["revoke", "lift", &format!("{}/inc-4712", ex.shop)],
    )
    .await;
    assert_eq!(lifted.code, 0, "{lifted:?}");
    eventually("checkout may get orders-db again", WAIT, || async {
        (ferry(&reader, &["can-i", "--as", &checkout, "get", &secret, "-q"])
            .await
            .code
            == 0)
            .then_some(())
    })
    .await;
}

/// Writes `objects` (with `namespace`) as one YAML file in `dir`.
fn manifest(dir: &Path, name: &str, namespace: &str, objects: &[Value]) -> PathBuf {
    let mut text = String::new();
    for object in objects {
        let mut object = object.clone();
        object["metadata"]["namespace"] = json!(namespace);
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(&object).unwrap());
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn lint_refuses_what_the_apiserver_refuses_naming_the_same_fields() {
    let (cluster, client) = setup().await;
    let ns = cluster.create_namespace("kf-lint-schema").await.unwrap();
    let admin = cluster.kubeconfig().to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for Refused {
        object,
        field,
        message,
    } in ferry_e2e::invalid::refused_by_schema()
    {
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        // The apiserver's own answer, without storing anything.
        let resource = match object["kind"].as_str() {
            Some("BrokeredSecret") => ApiResource::erase::<BrokeredSecret>(&()),
            _ => ApiResource::erase::<AccessPolicy>(&()),
        };
        let dynamic: DynamicObject = serde_json::from_value(object.clone()).unwrap();
        let refused = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &resource)
            .create(
                &PostParams {
                    dry_run: true,
                    ..PostParams::default()
                },
                &dynamic,
            )
            .await;
        let apiserver = match refused {
            Err(kube::Error::Api(status)) if status.code == 422 => status.message,
            other => panic!("{name}: the apiserver did not refuse it: {other:?}"),
        };
        let file = manifest(dir.path(), &format!("{name}.yaml"), &ns, &[object]);
        let run = ferry(
            &admin,
            &["lint", "-f", file.to_str().unwrap(), "-o", "json"],
        )
        .await;
        let report = run.json();
        let findings = report["findings"].as_array().unwrap();
        let named = findings.iter().any(|f| {
            f["stage"] == "schema"
                && f["reason"] == field
                && f["message"].as_str().unwrap().contains(message)
        });
        // Every field lint names, the apiserver names too.
        let extra: Vec<&str> = findings
            .iter()
            .filter_map(|f| f["reason"].as_str())
            .filter(|field| !apiserver.contains(&format!("{field}: ")))
            .collect();
        if run.code != 1 || !named || !extra.is_empty() {
            failures.push(format!(
                "{name}: apiserver said {apiserver:?}; lint (exit {}) said {findings:?}",
                run.code
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "lint disagrees with the apiserver:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn lint_reports_what_the_operator_reports_on_every_object_it_marks_not_ready() {
    let (cluster, client) = setup().await;
    let ns = cluster.create_namespace("kf-lint-rec").await.unwrap();
    let shop = cluster.create_namespace("kf-lint-rec-shop").await.unwrap();
    let cases = ferry_e2e::invalid::not_ready_after_reconcile(&shop);
    for NotReady { object, .. } in &cases {
        let resource = match object["kind"].as_str() {
            Some("BrokeredSecret") => ApiResource::erase::<BrokeredSecret>(&()),
            _ => ApiResource::erase::<AccessPolicy>(&()),
        };
        let dynamic: DynamicObject = serde_json::from_value(object.clone()).unwrap();
        Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &resource)
            .create(&PostParams::default(), &dynamic)
            .await
            .unwrap();
    }
    // The operator's verdicts, from the Ready conditions.
    for NotReady { object, reason } in &cases {
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let kind = object["kind"].as_str().unwrap().to_owned();
        let client = client.clone();
        let ns = ns.clone();
        eventually(
            &format!("{kind} {name} Ready=False {reason}"),
            WAIT,
            move || {
                let (client, ns, name, kind) =
                    (client.clone(), ns.clone(), name.clone(), kind.clone());
                async move {
                    let status = if kind == "BrokeredSecret" {
                        Api::<BrokeredSecret>::namespaced(client, &ns)
                            .get(&name)
                            .await
                            .unwrap()
                            .status
                            .map(|s| s.conditions)
                    } else {
                        Api::<AccessPolicy>::namespaced(client, &ns)
                            .get(&name)
                            .await
                            .unwrap()
                            .status
                            .map(|s| s.conditions)
                    };
                    let ready = status?.into_iter().find(|c| c.type_ == "Ready")?;
                    (ready.status == "False" && ready.reason == *reason).then_some(())
                }
            },
        )
        .await;
    }

    let dir = tempfile::tempdir().unwrap();
    let objects: Vec<Value> = cases.iter().map(|c| c.object.clone()).collect();
    let file = manifest(dir.path(), "not-ready.yaml", &ns, &objects);
    let admin = cluster.kubeconfig().to_path_buf();
    // With --cluster lint sees what the operator saw: the same reasons, as errors.
    let online = ferry(
        &admin,
        &[
            "lint",
            "--cluster",
            "-f",
            file.to_str().unwrap(),
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(online.code, 1, "{online:?}");
    // Offline it sees only the file: what lies outside it is a warning.
    let offline = ferry(
        &admin,
        &["lint", "-f", file.to_str().unwrap(), "-o", "json"],
    )
    .await;
    for (run, outside) in [(&online, "error"), (&offline, "warning")] {
        let report = run.json();
        let findings = report["findings"].as_array().unwrap();
        for NotReady { object, reason } in &cases {
            let label = format!(
                "{} {ns}/{}",
                object["kind"].as_str().unwrap(),
                object["metadata"]["name"].as_str().unwrap()
            );
            let found: Vec<&Value> = findings
                .iter()
                .filter(|f| f["object"] == label.as_str())
                .collect();
            assert!(
                found
                    .iter()
                    .any(|f| f["reason"] == *reason && f["stage"] == "reconciler"),
                "{label}: the operator says {reason}; lint says {found:?}"
            );
            let level = if *reason == "SecretNotFound" {
                outside
            } else {
                "error"
            };
            assert!(
                found.iter().all(|f| f["level"] == level),
                "{label}: {found:?}"
            );
        }
    }
}

#[tokio::test]
async fn lint_passes_the_readmes_examples() {
    let (cluster, _client) = setup().await;
    let access = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/access.yaml");
    let run = ferry(
        cluster.kubeconfig(),
        &["lint", "-f", access.to_str().unwrap()],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!run.stdout.contains("error"), "{run:?}");
}
