//! The operator as a process sees it: restarted, it converges without
//! rewriting anything; run with exactly its documented RBAC (rbac/
//! operator.yaml), it still does its whole job. This file has a cluster of
//! its own, so the operator here is the only one running.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_api::resources::{AccessPolicy, BrokeredSecret, Grant};
use ferry_e2e::{Cluster, RunningOperator, eventually, install_crds};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

async fn apply_example(client: &Client, ns: &str, shop: &str) {
    let secret: BrokeredSecret = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "BrokeredSecret",
        "metadata": {"name": "orders-db"},
        "spec": {"source": {"postgres": {"connectionSecretRef": {"name": "db-admin"}}}},
    }))
    .unwrap();
    Api::<BrokeredSecret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let policy: AccessPolicy = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": "shop-reads"},
        "spec": {
            "subjects": [
                {"serviceAccount": {"name": "checkout", "namespace": shop}},
                {"serviceAccount": {"name": "refunds", "namespace": shop}},
            ],
            "secrets": [{"name": "orders-db", "maxTtl": "10m"}],
        },
    }))
    .unwrap();
    Api::<AccessPolicy>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
}

/// resourceVersions of everything the operator writes in these namespaces.
async fn versions(client: &Client, ns: &str, shop: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for g in Api::<Grant>::namespaced(client.clone(), shop)
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        out.insert(
            format!("grant/{}", g.name_any()),
            g.resource_version().unwrap(),
        );
    }
    for p in Api::<AccessPolicy>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        out.insert(
            format!("policy/{}", p.name_any()),
            p.resource_version().unwrap(),
        );
    }
    for s in Api::<BrokeredSecret>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        out.insert(
            format!("secret/{}", s.name_any()),
            s.resource_version().unwrap(),
        );
    }
    out
}

async fn settled(client: &Client, ns: &str, shop: &str) {
    let policies = Api::<AccessPolicy>::namespaced(client.clone(), ns);
    let secrets = Api::<BrokeredSecret>::namespaced(client.clone(), ns);
    let grants = Api::<Grant>::namespaced(client.clone(), shop);
    eventually(
        "two grants, the policy Ready and the secret's status written",
        WAIT,
        || async {
            let policy = policies.get("shop-reads").await.unwrap();
            let secret = secrets.get("orders-db").await.unwrap();
            let ready = policy.status.is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            let n = grants
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .len();
            (ready && secret.status.is_some() && n == 2).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn restarted_operator_converges_without_rewriting_anything() {
    let cluster = Cluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    install_crds(&client).await.unwrap();
    let ns = cluster.create_namespace("restart").await.unwrap();
    let shop = cluster.create_namespace("restart-shop").await.unwrap();
    apply_example(&client, &ns, &shop).await;

    let first = RunningOperator::start(cluster.config().clone()).unwrap();
    settled(&client, &ns, &shop).await;
    first.stop();
    let before = versions(&client, &ns, &shop).await;

    let second = RunningOperator::start(cluster.config().clone()).unwrap();
    // Wait until the new operator has reconciled the policy at least once.
    eventually("the restarted operator to reconcile", WAIT, || async {
        (second.metrics().reconciles("accesspolicy", "ok") > 0
            && second.metrics().reconciles("brokeredsecret", "ok") > 0)
            .then_some(())
    })
    .await;
    let after = versions(&client, &ns, &shop).await;
    assert_eq!(
        before, after,
        "a restart must not rewrite grants, policies or secrets"
    );
}

#[tokio::test]
async fn operator_does_its_job_with_exactly_its_documented_rbac() {
    let cluster = Cluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    install_crds(&client).await.unwrap();
    let rbac = concat!(env!("CARGO_MANIFEST_DIR"), "/../rbac/operator.yaml");
    let created = cluster
        .kubectl()
        .args(["create", "namespace", "ferry-system"])
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let applied = cluster
        .kubectl()
        .args(["apply", "-f", rbac])
        .output()
        .unwrap();
    assert!(
        applied.status.success(),
        "kubectl apply {rbac}: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let ns = cluster.create_namespace("rbac").await.unwrap();
    let shop = cluster.create_namespace("rbac-shop").await.unwrap();
    apply_example(&client, &ns, &shop).await;

    let mut config = cluster.config().clone();
    config.auth_info.impersonate = Some("system:serviceaccount:ferry-system:ferry-operator".into());
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        "system:serviceaccounts:ferry-system".into(),
    ]);
    let _operator = RunningOperator::start(config).unwrap();

    settled(&client, &ns, &shop).await;
    Api::<AccessPolicy>::namespaced(client.clone(), &ns)
        .delete("shop-reads", &Default::default())
        .await
        .unwrap();
    eventually("the grants to be deleted by the operator", WAIT, || async {
        Api::<Grant>::namespaced(client.clone(), &shop)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
            .then_some(())
    })
    .await;
}
