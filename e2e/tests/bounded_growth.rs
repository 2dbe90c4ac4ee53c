//! Bounded growth against a real apiserver: the operator (with small caps)
//! writes no Grant past `--max-grants-per-policy` or
//! `--max-grants-per-namespace` and says so in `Ready=False TooManyGrants`;
//! Grant names of dotted policies and secrets never collide; the broker
//! refuses a lease request naming one secret twice and caps the live leases
//! of one pod for one secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ferry_api::resources::{AccessPolicy, BrokeredSecret, Grant};
use ferry_broker::lease_id::LeaseKeys;
use ferry_broker::live_leases::DEFAULT_MAX_LIVE_LEASES;
use ferry_contract::{BROKERABLE, BROKERABLE_LABEL};
use ferry_e2e::https_client::HttpsClient;
use ferry_e2e::{
    Cluster, RunningBroker, RunningOperator, broker_pod, create_object, eventually, install_crds,
};
use ferry_operator::controller::{GrantLimits, TOO_MANY_GRANTS};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

const WAIT: Duration = Duration::from_secs(60);

/// The caps the operator runs with here.
const LIMITS: GrantLimits = GrantLimits {
    per_policy: 3,
    per_namespace: 5,
};

struct World {
    _operator: RunningOperator,
    broker: RunningBroker,
}

async fn world() -> &'static World {
    static WORLD: OnceCell<World> = OnceCell::const_new();
    WORLD
        .get_or_init(|| async {
            let cluster = Cluster::shared().await.unwrap();
            install_crds(&cluster.client().unwrap()).await.unwrap();
            World {
                _operator: RunningOperator::start_with_limits(cluster.config().clone(), LIMITS)
                    .unwrap(),
                broker: RunningBroker::start(cluster, LeaseKeys::new(&[9; 32], &[])).unwrap(),
            }
        })
        .await
}

/// An owner namespace with kubernetesSecret BrokeredSecrets `secrets` (all
/// copies of one Secret), and an app namespace with `accounts`.
async fn namespaces(prefix: &str, secrets: &[&str], accounts: &[&str]) -> (Client, String, String) {
    world().await;
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    let owner = cluster
        .create_namespace(&format!("{prefix}-owner"))
        .await
        .unwrap();
    let app = cluster
        .create_namespace(&format!("{prefix}-app"))
        .await
        .unwrap();
    create_object::<Secret>(
        &client,
        &owner,
        json!({"metadata": {"name": "api-key", "labels": {BROKERABLE_LABEL: BROKERABLE}},
               "stringData": {"token": "t0k3n"}}),
    )
    .await
    .unwrap();
    for name in secrets {
        create_object::<BrokeredSecret>(
            &client,
            &owner,
            json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "BrokeredSecret",
                   "metadata": {"name": name},
                   "spec": {"source": {"kubernetesSecret": {"name": "api-key"}}}}),
        )
        .await
        .unwrap();
    }
    for account in accounts {
        create_object::<ServiceAccount>(&client, &app, json!({"metadata": {"name": account}}))
            .await
            .unwrap();
    }
    (client, owner, app)
}

async fn create_policy(
    client: &Client,
    owner: &str,
    name: &str,
    app: &str,
    accounts: &[&str],
    secrets: &[&str],
) {
    let subjects: Vec<Value> = accounts
        .iter()
        .map(|a| json!({"serviceAccount": {"name": a, "namespace": app}}))
        .collect();
    let secrets: Vec<Value> = secrets.iter().map(|s| json!({"name": s})).collect();
    create_object::<AccessPolicy>(
        client,
        owner,
        json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "AccessPolicy",
               "metadata": {"name": name},
               "spec": {"subjects": subjects, "secrets": secrets}}),
    )
    .await
    .unwrap();
}

/// Waits until the policy's Ready condition has `reason`, and returns its
/// message.
async fn ready_reason(client: &Client, owner: &str, policy: &str, reason: &str) -> String {
    let api = Api::<AccessPolicy>::namespaced(client.clone(), owner);
    eventually(
        &format!("{owner}/{policy} Ready reason {reason}"),
        WAIT,
        || async {
            let policy = api.get(policy).await.unwrap();
            let status = policy.status?;
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
            (ready.reason == reason && status.observed_generation == policy.metadata.generation)
                .then(|| ready.message.clone())
        },
    )
    .await
}

/// The names of the Grants in `app` from policy `owner/policy`.
async fn grants_of(client: &Client, app: &str, owner: &str, policy: &str) -> Vec<String> {
    let mut names: Vec<String> = Api::<Grant>::namespaced(client.clone(), app)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|g| g.spec.policy.namespace == owner && g.spec.policy.name == policy)
        .map(|g| g.metadata.name.unwrap_or_default())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_policy_over_the_per_policy_cap_writes_no_new_grant_and_says_so() {
    let (client, owner, app) = namespaces("cap-policy", &["a", "b"], &["one", "two"]).await;
    // 2 accounts x 2 secrets = 4 Grants, over the cap of 3.
    create_policy(&client, &owner, "wide", &app, &["one", "two"], &["a", "b"]).await;
    let message = ready_reason(&client, &owner, "wide", TOO_MANY_GRANTS).await;
    assert!(
        message.contains("would produce 4 Grants, over the cap of 3 per AccessPolicy"),
        "{message}"
    );
    assert!(message.contains("--max-grants-per-policy"), "{message}");
    assert!(grants_of(&client, &app, &owner, "wide").await.is_empty());

    // Narrowed to 2 Grants: granted.
    let policies = Api::<AccessPolicy>::namespaced(client.clone(), &owner);
    policies
        .patch(
            "wide",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"secrets": [{"name": "a"}]}})),
        )
        .await
        .unwrap();
    ready_reason(&client, &owner, "wide", "Granted").await;
    let granted = eventually("the 2 Grants", WAIT, || async {
        let names = grants_of(&client, &app, &owner, "wide").await;
        (names.len() == 2).then_some(names)
    })
    .await;

    // Widened again: over the cap; what it holds stays, nothing is added.
    policies
        .patch(
            "wide",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"secrets": [{"name": "a"}, {"name": "b"}]}})),
        )
        .await
        .unwrap();
    ready_reason(&client, &owner, "wide", TOO_MANY_GRANTS).await;
    assert_eq!(grants_of(&client, &app, &owner, "wide").await, granted);
    let status = policies.get("wide").await.unwrap().status.unwrap();
    assert_eq!(status.grants, Some(2));
}

#[tokio::test]
async fn policies_of_one_namespace_share_the_per_namespace_cap() {
    let (client, owner, app) = namespaces("cap-ns", &["a", "b", "c"], &["one"]).await;
    create_policy(&client, &owner, "first", &app, &["one"], &["a", "b", "c"]).await;
    ready_reason(&client, &owner, "first", "Granted").await;
    eventually("first's 3 Grants in the operator's view", WAIT, || async {
        (grants_of(&client, &app, &owner, "first").await.len() == 3).then_some(())
    })
    .await;
    // 3 more would make 6, over the namespace's cap of 5.
    create_policy(&client, &owner, "second", &app, &["one"], &["a", "b", "c"]).await;
    let message = ready_reason(&client, &owner, "second", TOO_MANY_GRANTS).await;
    assert!(
        message.contains(&format!(
            "with the 3 Grants of other AccessPolicies in namespace {owner}, the policy's 3 would make 6, over the cap of 5 per namespace"
        )),
        "{message}"
    );
    assert!(grants_of(&client, &app, &owner, "second").await.is_empty());
    assert_eq!(grants_of(&client, &app, &owner, "first").await.len(), 3);
}

#[tokio::test]
async fn dotted_policy_and_secret_names_get_distinct_grants() {
    // Policy `x.y` granting secret `z`, and policy `x` granting secret
    // `y.z`, both to `one`: both used to be named `<owner>.x.y.z.one`.
    let (client, owner, app) = namespaces("dotted", &["z", "y.z"], &["one"]).await;
    create_policy(&client, &owner, "x.y", &app, &["one"], &["z"]).await;
    create_policy(&client, &owner, "x", &app, &["one"], &["y.z"]).await;
    ready_reason(&client, &owner, "x.y", "Granted").await;
    ready_reason(&client, &owner, "x", "Granted").await;
    let (first, second) = eventually("a Grant from each policy", WAIT, || async {
        let first = grants_of(&client, &app, &owner, "x.y").await;
        let second = grants_of(&client, &app, &owner, "x").await;
        (first.len() == 1 && second.len() == 1).then_some((first, second))
    })
    .await;
    assert_ne!(first, second);
    // Deleting one policy leaves the other's Grant alone.
    Api::<AccessPolicy>::namespaced(client.clone(), &owner)
        .delete("x.y", &DeleteParams::default())
        .await
        .unwrap();
    eventually("x.y's Grant to go", WAIT, || async {
        grants_of(&client, &app, &owner, "x.y")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    assert_eq!(grants_of(&client, &app, &owner, "x").await, second);
}

async fn issue(broker: &HttpsClient, token: &str, body: &Value) -> (u16, Value) {
    let reply = broker
        .request(
            "POST",
            "/v1/leases",
            Some(token),
            &serde_json::to_vec(body).unwrap(),
        )
        .await
        .unwrap();
    (reply.status, reply.json().unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_broker_refuses_duplicate_secrets_and_caps_live_leases_per_pod_and_secret() {
    let (client, owner, app) = namespaces("leases", &["api-key"], &["checkout"]).await;
    create_policy(
        &client,
        &owner,
        "checkout",
        &app,
        &["checkout"],
        &["api-key"],
    )
    .await;
    ready_reason(&client, &owner, "checkout", "Granted").await;
    let (_pod, token) = broker_pod(&client, &app, "api", "checkout").await.unwrap();
    let broker = world().await.broker.client().unwrap();
    let one = json!({"secrets": [{"namespace": owner, "name": "api-key"}]});
    let first = eventually("the broker to issue the first lease", WAIT, || async {
        let (status, body) = issue(&broker, &token, &one).await;
        (status == 200).then_some(body)
    })
    .await;

    let twice = json!({"secrets": [{"namespace": owner, "name": "api-key"},
                                   {"namespace": owner, "name": "api-key", "ttl": "1m"}]});
    let (status, body) = issue(&broker, &token, &twice).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("secret {owner}/api-key asked for twice")),
        "{body}"
    );

    // The cap counts the first lease; fill it.
    for n in 1..DEFAULT_MAX_LIVE_LEASES {
        let (status, body) = issue(&broker, &token, &one).await;
        assert_eq!(status, 200, "lease {}: {body}", n + 1);
    }
    let (status, body) = issue(&broker, &token, &one).await;
    assert_eq!(status, 429, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "already holds {DEFAULT_MAX_LIVE_LEASES} live leases for {owner}/api-key, the cap"
        )),
        "{message}"
    );
    // Revoking one makes room for one.
    let id = first["leases"][0]["id"].as_str().unwrap();
    let reply = broker
        .request("DELETE", &format!("/v1/leases/{id}"), Some(&token), b"")
        .await
        .unwrap();
    assert_eq!(reply.status, 204);
    let (status, body) = issue(&broker, &token, &one).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = issue(&broker, &token, &one).await;
    assert_eq!(status, 429);
}
