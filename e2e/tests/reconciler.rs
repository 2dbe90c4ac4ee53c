//! The AccessPolicy and BrokeredSecret controllers against a real
//! apiserver: policies become Grants, edits narrow them, deletions and
//! expiry remove them, hand edits are repaired, and bad objects get a
//! reason without stopping the rest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ferry_api::resources::{AccessPolicy, BrokeredSecret, Grant};
use ferry_e2e::{Cluster, RunningOperator, create_object, eventually, install_crds};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::OnceCell;

const WAIT: Duration = Duration::from_secs(60);

/// The shared cluster with the CRDs installed and one operator running for
/// the whole test binary.
async fn setup(prefix: &str) -> (&'static Cluster, Client, String) {
    // Initialised once even when tests race here; with a check-then-set,
    // racing tests each started an operator and dropped all but one.
    static OPERATOR: OnceCell<RunningOperator> = OnceCell::const_new();
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    OPERATOR
        .get_or_init(|| async {
            install_crds(&client).await.unwrap();
            RunningOperator::start(cluster.config().clone()).unwrap()
        })
        .await;
    let ns = cluster.create_namespace(prefix).await.unwrap();
    (cluster, client, ns)
}

fn postgres_secret(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "BrokeredSecret",
        "metadata": {"name": name},
        "spec": {"ttl": "15m", "maxTtl": "1h", "source": {"postgres": {"connectionSecretRef": {"name": "db-admin"}}}},
    })
}

fn policy(
    name: &str,
    subjects: serde_json::Value,
    secrets: serde_json::Value,
) -> serde_json::Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": name},
        "spec": {"subjects": subjects, "secrets": secrets},
    })
}

fn service_account(name: &str, ns: &str) -> serde_json::Value {
    json!([{"serviceAccount": {"name": name, "namespace": ns}}])
}

/// Creates BrokeredSecret `orders-db` and policy `p` giving `checkout` in
/// `shop` the access `entry`; returns the Grant once it exists.
async fn grant_orders_db_to_checkout(
    client: &Client,
    ns: &str,
    shop: &str,
    entry: serde_json::Value,
) -> Grant {
    create_object::<BrokeredSecret>(client, ns, postgres_secret("orders-db"))
        .await
        .unwrap();
    let p = policy("p", service_account("checkout", shop), json!([entry]));
    create_object::<AccessPolicy>(client, ns, p).await.unwrap();
    wait_grants(client, shop, "p", 1).await.remove(0)
}

/// Grants in `ns` that come from policy `policy`.
async fn grants_of(client: &Client, ns: &str, policy: &str) -> Vec<Grant> {
    let all = Api::<Grant>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    all.items
        .into_iter()
        .filter(|g| g.spec.policy.name == policy)
        .collect()
}

/// Waits until `ns` holds exactly `count` grants from `policy`.
async fn wait_grants(client: &Client, ns: &str, policy: &str, count: usize) -> Vec<Grant> {
    eventually(
        &format!("{count} grants from {policy} in {ns}"),
        WAIT,
        || async {
            let grants = grants_of(client, ns, policy).await;
            (grants.len() == count).then_some(grants)
        },
    )
    .await
}

/// Waits until the policy's Ready condition has `status` and `reason`;
/// returns its message.
async fn wait_ready(client: &Client, ns: &str, policy: &str, status: &str, reason: &str) -> String {
    let api = Api::<AccessPolicy>::namespaced(client.clone(), ns);
    eventually(
        &format!("{policy} Ready={status} ({reason})"),
        WAIT,
        || async {
            let p = api.get(policy).await.unwrap();
            let ready = p
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (ready.status == status && ready.reason == reason).then_some(ready.message)
        },
    )
    .await
}

#[tokio::test]
async fn policy_yields_a_grant_per_subject_and_secret_and_reports_ready() {
    let (cluster, client, ns) = setup("rec-basic").await;
    let shop = cluster.create_namespace("rec-basic-shop").await.unwrap();
    create_object::<BrokeredSecret>(&client, &ns, postgres_secret("orders-db"))
        .await
        .unwrap();
    create_object::<BrokeredSecret>(&client, &ns, postgres_secret("ledger-db"))
        .await
        .unwrap();
    let subjects = json!([
        {"serviceAccount": {"name": "checkout", "namespace": shop}},
        {"serviceAccount": {"name": "refunds", "namespace": shop}},
    ]);
    create_object::<AccessPolicy>(
        &client,
        &ns,
        policy(
            "shop-reads",
            subjects,
            json!([{"name": "orders-db", "maxTtl": "10m"}, {"name": "ledger-db"}]),
        ),
    )
    .await
    .unwrap();

    let grants = wait_grants(&client, &shop, "shop-reads", 4).await;
    let checkout_orders = grants
        .iter()
        .find(|g| g.spec.service_account == "checkout" && g.spec.secret.name == "orders-db")
        .unwrap();
    assert_eq!(checkout_orders.spec.secret.namespace, ns);
    assert_eq!(checkout_orders.spec.max_ttl, "10m");
    let message = wait_ready(&client, &ns, "shop-reads", "True", "Granted").await;
    assert!(
        message.contains("4 grants for 2 service accounts"),
        "{message}"
    );
    let policy = Api::<AccessPolicy>::namespaced(client.clone(), &ns)
        .get("shop-reads")
        .await
        .unwrap();
    assert_eq!(
        policy.status.unwrap().observed_generation,
        policy.metadata.generation
    );
}

#[tokio::test]
async fn editing_a_policy_narrows_its_grants() {
    let (cluster, client, ns) = setup("rec-edit").await;
    let shop = cluster.create_namespace("rec-edit-shop").await.unwrap();
    let granted =
        grant_orders_db_to_checkout(&client, &ns, &shop, json!({"name": "orders-db"})).await;
    assert_eq!(granted.spec.max_ttl, "1h");

    let patch = json!({"spec": {"secrets": [{"name": "orders-db", "maxTtl": "5m"}]}});
    Api::<AccessPolicy>::namespaced(client.clone(), &ns)
        .patch("p", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();

    eventually("the grant narrowed to 5m", WAIT, || async {
        grants_of(&client, &shop, "p")
            .await
            .first()
            .is_some_and(|g| g.spec.max_ttl == "5m")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn deleting_a_policy_deletes_its_grants_and_the_policy() {
    let (cluster, client, ns) = setup("rec-delete").await;
    let shop = cluster.create_namespace("rec-delete-shop").await.unwrap();
    grant_orders_db_to_checkout(&client, &ns, &shop, json!({"name": "orders-db"})).await;

    let policies = Api::<AccessPolicy>::namespaced(client.clone(), &ns);
    policies
        .delete("p", &DeleteParams::default())
        .await
        .unwrap();

    wait_grants(&client, &shop, "p", 0).await;
    eventually(
        "the policy to be gone (finalizer removed)",
        WAIT,
        || async { policies.get_opt("p").await.unwrap().is_none().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn grant_deleted_by_hand_is_recreated() {
    let (cluster, client, ns) = setup("rec-repair").await;
    let shop = cluster.create_namespace("rec-repair-shop").await.unwrap();
    let original =
        grant_orders_db_to_checkout(&client, &ns, &shop, json!({"name": "orders-db"})).await;

    Api::<Grant>::namespaced(client.clone(), &shop)
        .delete(&original.name_any(), &DeleteParams::default())
        .await
        .unwrap();

    eventually("the grant to be recreated", WAIT, || async {
        grants_of(&client, &shop, "p")
            .await
            .into_iter()
            .find(|g| g.uid() != original.uid())
    })
    .await;
}

#[tokio::test]
async fn grant_edited_by_hand_is_restored() {
    let (cluster, client, ns) = setup("rec-restore").await;
    let shop = cluster.create_namespace("rec-restore-shop").await.unwrap();
    let grant = grant_orders_db_to_checkout(
        &client,
        &ns,
        &shop,
        json!({"name": "orders-db", "maxTtl": "10m"}),
    )
    .await;

    let widen = json!({"spec": {"maxTtl": "24h"}});
    Api::<Grant>::namespaced(client.clone(), &shop)
        .patch(
            &grant.name_any(),
            &PatchParams::default(),
            &Patch::Merge(widen),
        )
        .await
        .unwrap();

    eventually("the grant's maxTtl restored to 10m", WAIT, || async {
        grants_of(&client, &shop, "p")
            .await
            .first()
            .is_some_and(|g| g.spec.max_ttl == "10m")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn deleting_the_secret_marks_the_policy_not_ready_and_removes_its_grants() {
    let (cluster, client, ns) = setup("rec-secret-gone").await;
    let shop = cluster
        .create_namespace("rec-secret-gone-shop")
        .await
        .unwrap();
    grant_orders_db_to_checkout(&client, &ns, &shop, json!({"name": "orders-db"})).await;

    Api::<BrokeredSecret>::namespaced(client.clone(), &ns)
        .delete("orders-db", &DeleteParams::default())
        .await
        .unwrap();

    let message = wait_ready(&client, &ns, "p", "False", "SecretNotFound").await;
    assert!(message.contains("orders-db"), "{message}");
    wait_grants(&client, &shop, "p", 0).await;

    let events = Api::<Event>::namespaced(client.clone(), &ns);
    eventually("a SecretNotFound Event on the policy", WAIT, || async {
        let list = events.list(&ListParams::default()).await.unwrap();
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("SecretNotFound")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("p")
        })
    })
    .await;
}

#[tokio::test]
async fn namespace_label_changes_add_and_remove_grants() {
    let (cluster, client, ns) = setup("rec-labels").await;
    let team = format!("team-{ns}");
    let a = cluster.create_namespace("rec-labels-a").await.unwrap();
    let namespaces = Api::<Namespace>::all(client.clone());
    let label = |value: Option<&str>| json!({"metadata": {"labels": {"ferry-e2e/team": value}}});
    namespaces
        .patch(
            &a,
            &PatchParams::default(),
            &Patch::Merge(label(Some(&team))),
        )
        .await
        .unwrap();
    create_object::<BrokeredSecret>(&client, &ns, postgres_secret("orders-db"))
        .await
        .unwrap();
    let subjects = json!([{"namespaceSelector": {"matchLabels": {"ferry-e2e/team": team}}, "serviceAccountName": "batch"}]);
    create_object::<AccessPolicy>(
        &client,
        &ns,
        policy("p", subjects, json!([{"name": "orders-db"}])),
    )
    .await
    .unwrap();
    assert_eq!(
        wait_grants(&client, &a, "p", 1).await[0]
            .spec
            .service_account,
        "batch"
    );

    let b = cluster.create_namespace("rec-labels-b").await.unwrap();
    namespaces
        .patch(
            &b,
            &PatchParams::default(),
            &Patch::Merge(label(Some(&team))),
        )
        .await
        .unwrap();
    wait_grants(&client, &b, "p", 1).await;

    namespaces
        .patch(&a, &PatchParams::default(), &Patch::Merge(label(None)))
        .await
        .unwrap();
    wait_grants(&client, &a, "p", 0).await;
    assert_eq!(grants_of(&client, &b, "p").await.len(), 1);
}

#[tokio::test]
async fn policy_cannot_grant_a_secret_of_another_namespace() {
    let (cluster, client, ns) = setup("rec-cross").await;
    let other = cluster.create_namespace("rec-cross-owner").await.unwrap();
    let shop = cluster.create_namespace("rec-cross-shop").await.unwrap();
    // The secret exists, but in `other`: a policy in `ns` cannot reach it.
    create_object::<BrokeredSecret>(&client, &other, postgres_secret("orders-db"))
        .await
        .unwrap();
    create_object::<AccessPolicy>(
        &client,
        &ns,
        policy(
            "p",
            service_account("checkout", &shop),
            json!([{"name": "orders-db"}]),
        ),
    )
    .await
    .unwrap();

    wait_ready(&client, &ns, "p", "False", "SecretNotFound").await;
    assert!(grants_of(&client, &shop, "p").await.is_empty());
}

#[tokio::test]
async fn valid_until_expiry_removes_the_grant() {
    let (cluster, client, ns) = setup("rec-expiry").await;
    let shop = cluster.create_namespace("rec-expiry-shop").await.unwrap();
    create_object::<BrokeredSecret>(&client, &ns, postgres_secret("orders-db"))
        .await
        .unwrap();
    let until =
        k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(6);
    let mut p = policy(
        "p",
        service_account("checkout", &shop),
        json!([{"name": "orders-db"}]),
    );
    p["spec"]["validUntil"] = json!(until.to_string());
    create_object::<AccessPolicy>(&client, &ns, p)
        .await
        .unwrap();

    let grant = wait_grants(&client, &shop, "p", 1).await.remove(0);
    assert!(grant.spec.valid_until.is_some());
    wait_ready(&client, &ns, "p", "False", "Expired").await;
    assert!(grants_of(&client, &shop, "p").await.is_empty());
}

#[tokio::test]
async fn bad_policies_get_reasons_and_do_not_stop_good_ones() {
    let (cluster, client, ns) = setup("rec-bad").await;
    let shop = cluster.create_namespace("rec-bad-shop").await.unwrap();
    create_object::<BrokeredSecret>(&client, &ns, postgres_secret("orders-db"))
        .await
        .unwrap();
    let sa = service_account("checkout", &shop);
    create_object::<AccessPolicy>(
        &client,
        &ns,
        policy(
            "too-wide",
            sa.clone(),
            json!([{"name": "orders-db", "maxTtl": "2h"}]),
        ),
    )
    .await
    .unwrap();
    create_object::<AccessPolicy>(
        &client,
        &ns,
        policy(
            "not-jwt",
            sa.clone(),
            json!([{"name": "orders-db", "audience": ["api"]}]),
        ),
    )
    .await
    .unwrap();
    create_object::<AccessPolicy>(
        &client,
        &ns,
        policy("missing", sa.clone(), json!([{"name": "nope"}])),
    )
    .await
    .unwrap();
    create_object::<AccessPolicy>(
        &client,
        &ns,
        policy("good", sa, json!([{"name": "orders-db"}])),
    )
    .await
    .unwrap();

    wait_grants(&client, &shop, "good", 1).await;
    let message = wait_ready(&client, &ns, "too-wide", "False", "InvalidNarrowing").await;
    assert!(message.contains("exceeds the secret's maxTtl"), "{message}");
    wait_ready(&client, &ns, "not-jwt", "False", "InvalidNarrowing").await;
    wait_ready(&client, &ns, "missing", "False", "SecretNotFound").await;
    for bad in ["too-wide", "not-jwt", "missing"] {
        assert!(
            grants_of(&client, &shop, bad).await.is_empty(),
            "{bad} must grant nothing"
        );
    }
}

#[tokio::test]
async fn brokered_secret_ready_follows_its_connection_secret() {
    let (_cluster, client, ns) = setup("rec-bs").await;
    create_object::<BrokeredSecret>(&client, &ns, postgres_secret("orders-db"))
        .await
        .unwrap();
    let api = Api::<BrokeredSecret>::namespaced(client.clone(), &ns);
    let condition = |reason: &'static str| {
        let api = api.clone();
        async move {
            let bs = api.get("orders-db").await.unwrap();
            let status = bs.status?;
            let ready = status.conditions.into_iter().find(|c| c.type_ == "Ready")?;
            (ready.reason == reason).then_some((ready, status.source))
        }
    };
    let (missing, source) = eventually("Ready=False SecretNotFound", WAIT, || {
        condition("SecretNotFound")
    })
    .await;
    assert_eq!(missing.status, "False");
    assert_eq!(source.as_deref(), Some("postgres"));

    let admin: Secret = serde_json::from_value(json!({
        "metadata": {"name": "db-admin", "labels": {"ferry.dev/brokerable": "true"}},
        "stringData": {"dsn": "postgres://admin:planted-admin-password@db/orders"},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &admin)
        .await
        .unwrap();
    let (resolved, _) = eventually("Ready=True", WAIT, || condition("Resolved")).await;
    assert_eq!(resolved.status, "True");
    assert!(!resolved.message.contains("planted-admin-password"));
}

#[tokio::test]
async fn brokered_secret_with_a_bad_template_is_not_ready_until_fixed() {
    let (_cluster, client, ns) = setup("rec-tpl").await;
    create_object::<BrokeredSecret>(
        &client,
        &ns,
        json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "BrokeredSecret",
            "metadata": {"name": "api-token"},
            "spec": {"source": {"jwt": {"audience": ["orders"]}},
                     "files": {"auth-header": "Bearer {{ tokne }}"}},
        }),
    )
    .await
    .unwrap();
    let api = Api::<BrokeredSecret>::namespaced(client.clone(), &ns);
    let ready = |reason: &'static str| {
        let api = api.clone();
        async move {
            let bs = api.get("api-token").await.unwrap();
            let ready = bs
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (ready.reason == reason).then_some(ready)
        }
    };
    let invalid = eventually("Ready=False InvalidTemplate", WAIT, || {
        ready("InvalidTemplate")
    })
    .await;
    assert_eq!(invalid.status, "False");
    assert_eq!(
        invalid.message,
        "spec.files: file \"auth-header\": undefined variable {{ tokne }} (the source provides: token)"
    );

    api.patch(
        "api-token",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"files": {"auth-header": "Bearer {{ token }}"}}})),
    )
    .await
    .unwrap();
    let fixed = eventually("Ready=True", WAIT, || ready("Resolved")).await;
    assert_eq!(fixed.status, "True");
}
