//! Grants only the operator writes, and Grants that count only with their
//! provenance, against a real apiserver:
//!
//! - the ValidatingAdmissionPolicy the harness installs (the chart's, built
//!   by `ferry_operator::admission::grants`) refuses a tenant whom RBAC allows
//!   to create, update and delete Grants in its own namespace;
//! - the webhook and the broker, independently, ignore a Grant without the
//!   operator's label, one naming an AccessPolicy uid that does not exist,
//!   and one whose policy does not name its subject; and stop honouring a
//!   Grant once its policy no longer names the secret;
//! - an app container mounting the `ferry-token` volume is refused;
//! - the chart renders the admission policies Rust builds: this one, and
//!   the one narrowing the broker's Secret updates.
//!
//! No operator runs here: Grants are written as the operator would (by the
//! harness's admin, a writer the policy allows), so nothing repairs the
//! forged ones behind the test's back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ferry_api::resources::{AccessPolicy, BrokeredSecret, Grant};
use ferry_broker::lease_id::LeaseKeys;
use ferry_contract::{
    BROKERABLE, BROKERABLE_LABEL, DEFAULT_BROKER_AUDIENCE, INJECT_LABEL, MANAGED_BY_LABEL,
    OPERATOR_MANAGER, SECRETS_ANNOTATION,
};
use ferry_e2e::https_client::HttpsClient;
use ferry_e2e::{
    Cluster, RunningBroker, RunningWebhook, Subject, controlplane_bin_dir, create_object,
    direct_grant, eventually, install_crds, pod_bound_token, wait_webhook_active,
};
use ferry_operator::admission::broker_secrets::broker_secret_policy;
use ferry_operator::admission::grants::{grant_admission_policy, operator_username};
use ferry_webhook::config::InjectionConfig;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

const WAIT: Duration = Duration::from_secs(60);

const FERRY_NAMESPACE: &str = "ferry-system";

/// The message of the admission policy's refusal.
const POLICY_REFUSAL: &str = "Grants are written by the ferry operator only";

struct World {
    _webhook: RunningWebhook,
    broker: RunningBroker,
}

/// The shared cluster with the CRDs (and so the Grant admission policy), a
/// registered webhook and a broker; no operator.
async fn world() -> &'static World {
    static WORLD: OnceCell<World> = OnceCell::const_new();
    WORLD
        .get_or_init(|| async {
            let cluster = Cluster::shared().await.unwrap();
            let client = cluster.client().unwrap();
            install_crds(&client).await.unwrap();
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
            let broker = RunningBroker::start(cluster, LeaseKeys::new(&[7; 32], &[])).unwrap();
            World {
                _webhook: webhook,
                broker,
            }
        })
        .await
}

/// A namespace whose service account `admin` may do anything to Grants by
/// RBAC (as a namespace-admin role with wildcards allows), and a client
/// acting as that account.
async fn tenant(cluster: &Cluster, client: &Client) -> (String, Client) {
    let ns = cluster.create_namespace("tenant").await.unwrap();
    create_object::<ServiceAccount>(client, &ns, json!({"metadata": {"name": "admin"}}))
        .await
        .unwrap();
    create_object::<Role>(
        client,
        &ns,
        json!({"metadata": {"name": "grant-editor"},
               "rules": [{"apiGroups": ["ferry.dev"], "resources": ["*"], "verbs": ["*"]}]}),
    )
    .await
    .unwrap();
    create_object::<RoleBinding>(
        client,
        &ns,
        json!({"metadata": {"name": "grant-editor"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "grant-editor"},
               "subjects": [{"kind": "ServiceAccount", "name": "admin", "namespace": ns}]}),
    )
    .await
    .unwrap();
    let user = format!("system:serviceaccount:{ns}:admin");
    let groups = [
        "system:serviceaccounts".to_string(),
        format!("system:serviceaccounts:{ns}"),
        "system:authenticated".to_string(),
    ];
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    let as_tenant = cluster.impersonating_client(&user, &groups).unwrap();
    (ns, as_tenant)
}

fn forged_grant(name: &str, service_account: &str, secret: (&str, &str), uid: &str) -> Grant {
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "Grant",
        "metadata": {"name": name, "labels": {MANAGED_BY_LABEL: OPERATOR_MANAGER}},
        "spec": {"serviceAccount": service_account,
                 "secret": {"namespace": secret.0, "name": secret.1},
                 "maxTtl": "1h",
                 "policy": {"namespace": secret.0, "name": "checkout", "uid": uid}},
    }))
    .unwrap()
}

fn is_policy_refusal(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.message.contains(POLICY_REFUSAL))
}

#[tokio::test]
async fn a_tenant_allowed_by_rbac_cannot_create_update_or_delete_grants() {
    world().await;
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    let (ns, as_tenant) = tenant(cluster, &client).await;
    let owner = cluster.create_namespace("payments").await.unwrap();
    // A Grant the operator wrote (the harness's admin is the operator here).
    let existing = direct_grant(
        &client,
        Subject {
            namespace: &ns,
            name: "admin",
        },
        &owner,
        "orders-db",
        "checkout",
        "existing",
    )
    .await
    .unwrap();
    let tenant_grants = Api::<Grant>::namespaced(as_tenant.clone(), &ns);
    // RBAC lets the tenant read them; only the admission policy stands in
    // the way of writes. It takes effect within moments of installation.
    tenant_grants.get("existing").await.unwrap();
    let forged = forged_grant("forged", "admin", (&owner, "orders-db"), "0000");
    let refusal = eventually(
        "the admission policy to refuse a tenant's Grant",
        WAIT,
        || {
            let (tenant_grants, forged, client, ns) = (
                tenant_grants.clone(),
                forged.clone(),
                client.clone(),
                ns.clone(),
            );
            async move {
                match tenant_grants.create(&PostParams::default(), &forged).await {
                    Err(error) if is_policy_refusal(&error) => Some(error),
                    Err(error) => panic!("unexpected refusal: {error}"),
                    // The policy was not yet in force: undo, and try again.
                    Ok(_) => {
                        Api::<Grant>::namespaced(client, &ns)
                            .delete("forged", &DeleteParams::default())
                            .await
                            .unwrap();
                        None
                    }
                }
            }
        },
    )
    .await;
    let kube::Error::Api(status) = &refusal else {
        unreachable!()
    };
    assert_eq!(status.code, 403, "{status:?}");
    assert!(
        status
            .message
            .contains(&format!("not by system:serviceaccount:{ns}:admin")),
        "{}",
        status.message
    );

    let widen = json!({"spec": {"maxTtl": "24h", "serviceAccount": "someone-else"}});
    let error = tenant_grants
        .patch("existing", &PatchParams::default(), &Patch::Merge(&widen))
        .await
        .unwrap_err();
    assert!(is_policy_refusal(&error), "update: {error}");
    let error = tenant_grants
        .delete("existing", &DeleteParams::default())
        .await
        .unwrap_err();
    assert!(is_policy_refusal(&error), "delete: {error}");

    let after = Api::<Grant>::namespaced(client.clone(), &ns)
        .get("existing")
        .await
        .unwrap();
    assert_eq!(after.spec, existing.spec, "the tenant changed nothing");
    assert!(
        Api::<Grant>::namespaced(client, &ns)
            .get_opt("forged")
            .await
            .unwrap()
            .is_none()
    );
}

/// Creates `pod` (labelled and annotated for `secrets`), retrying while the
/// webhook's indexes catch up; returns the pod or the final refusal.
async fn create_pod(client: &Client, ns: &str, pod: Value) -> Result<Pod, String> {
    let pod: Pod = serde_json::from_value(pod).unwrap();
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .map_err(|error| match error {
            kube::Error::Api(status) => status.message,
            other => panic!("creating the pod: {other}"),
        })
}

fn opted_in_pod(name: &str, secrets: &str) -> Value {
    json!({"metadata": {"name": name, "labels": {INJECT_LABEL: "true"},
                        "annotations": {SECRETS_ANNOTATION: secrets}},
           "spec": {"serviceAccountName": "checkout",
                    "containers": [{"name": "app", "image": "app:1"}]}})
}

fn lease_request(namespace: &str, name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"secrets": [{"namespace": namespace, "name": name}]})).unwrap()
}

async fn issue(broker: &HttpsClient, token: &str, owner: &str, secret: &str) -> (u16, Value) {
    let reply = broker
        .request(
            "POST",
            "/v1/leases",
            Some(token),
            &lease_request(owner, secret),
        )
        .await
        .unwrap();
    (reply.status, reply.json().unwrap_or(Value::Null))
}

#[tokio::test]
async fn broker_and_webhook_honour_only_grants_with_a_live_policy_naming_them() {
    let world = world().await;
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    let owner = cluster.create_namespace("owner").await.unwrap();
    let app = cluster.create_namespace("app").await.unwrap();
    wait_webhook_active(&client, &app).await.unwrap();
    create_object::<Secret>(
        &client,
        &owner,
        json!({"metadata": {"name": "api-key", "labels": {BROKERABLE_LABEL: BROKERABLE}},
               "stringData": {"token": "t0k3n"}}),
    )
    .await
    .unwrap();
    for name in ["api-key", "other-key"] {
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
    create_object::<ServiceAccount>(&client, &app, json!({"metadata": {"name": "checkout"}}))
        .await
        .unwrap();
    // A real policy in the owner's namespace, naming someone else.
    let decoy = create_object::<AccessPolicy>(
        &client,
        &owner,
        json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "AccessPolicy",
               "metadata": {"name": "decoy"},
               "spec": {"subjects": [{"serviceAccount": {"name": "someone-else", "namespace": app}}],
                        "secrets": [{"name": "api-key"}]}}),
    )
    .await
    .unwrap();
    // Forged Grants for checkout -> owner/api-key, written before the
    // genuine one, so once the indexes show the genuine one they hold these.
    let grants = Api::<Grant>::namespaced(client.clone(), &app);
    let mut unlabelled = forged_grant("no-label", "checkout", (&owner, "api-key"), "0001");
    unlabelled.metadata.labels = None;
    let unknown_policy = forged_grant("unknown-policy", "checkout", (&owner, "api-key"), "0002");
    let mut wrong_subject = forged_grant(
        "wrong-subject",
        "checkout",
        (&owner, "api-key"),
        &decoy.uid().unwrap(),
    );
    wrong_subject.spec.policy.name = "decoy".into();
    for forged in [&unlabelled, &unknown_policy, &wrong_subject] {
        grants.create(&PostParams::default(), forged).await.unwrap();
    }
    // The genuine Grant: checkout may have owner/other-key.
    direct_grant(
        &client,
        Subject {
            namespace: &app,
            name: "checkout",
        },
        &owner,
        "other-key",
        "checkout",
        "genuine",
    )
    .await
    .unwrap();

    // The webhook admits the genuine request once its indexes have it...
    let pod = eventually(
        "the webhook to admit a pod asking for other-key",
        WAIT,
        || {
            let (client, app, owner) = (client.clone(), app.clone(), owner.clone());
            async move {
                create_pod(
                    &client,
                    &app,
                    opted_in_pod("genuine", &format!("{owner}/other-key")),
                )
                .await
                .ok()
            }
        },
    )
    .await;
    // ...and refuses the one only forged Grants would allow.
    let refusal = create_pod(
        &client,
        &app,
        opted_in_pod("forged", &format!("{owner}/api-key")),
    )
    .await
    .unwrap_err();
    assert!(
        refusal.contains(&format!(
            "service account {app}/checkout has no Grant for BrokeredSecret {owner}/api-key"
        )),
        "{refusal}"
    );

    // The broker: the genuine lease is issued, the forged one refused.
    let broker = world.broker.client().unwrap();
    let token = pod_bound_token(&client, &pod, DEFAULT_BROKER_AUDIENCE, 600)
        .await
        .unwrap();
    eventually("the broker to issue other-key", WAIT, || async {
        (issue(&broker, &token, &owner, "other-key").await.0 == 200).then_some(())
    })
    .await;
    let (status, body) = issue(&broker, &token, &owner, "api-key").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has no Grant for BrokeredSecret"),
        "{body}"
    );

    // A policy that stops naming the secret takes the Grant's force with
    // it at once, before any operator would delete the Grant.
    Api::<AccessPolicy>::namespaced(client.clone(), &owner)
        .patch(
            "checkout",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"secrets": [{"name": "api-key"}]}})),
        )
        .await
        .unwrap();
    eventually("the broker to refuse other-key", WAIT, || async {
        (issue(&broker, &token, &owner, "other-key").await.0 == 403).then_some(())
    })
    .await;
    assert!(grants.get_opt("genuine").await.unwrap().is_some());
    let refusal = create_pod(
        &client,
        &app,
        opted_in_pod("after-edit", &format!("{owner}/other-key")),
    )
    .await
    .unwrap_err();
    assert!(refusal.contains("has no Grant"), "{refusal}");
}

#[tokio::test]
async fn an_app_container_mounting_the_token_volume_is_refused() {
    world().await;
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    let owner = cluster.create_namespace("token-owner").await.unwrap();
    let app = cluster.create_namespace("token-app").await.unwrap();
    wait_webhook_active(&client, &app).await.unwrap();
    create_object::<BrokeredSecret>(
        &client,
        &owner,
        json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "BrokeredSecret",
               "metadata": {"name": "api-key"},
               "spec": {"source": {"kubernetesSecret": {"name": "api-key"}}}}),
    )
    .await
    .unwrap();
    create_object::<ServiceAccount>(&client, &app, json!({"metadata": {"name": "checkout"}}))
        .await
        .unwrap();
    direct_grant(
        &client,
        Subject {
            namespace: &app,
            name: "checkout",
        },
        &owner,
        "api-key",
        "checkout",
        "api-key",
    )
    .await
    .unwrap();
    let secrets = format!("{owner}/api-key");
    // The control: a pod like it, without the mount, is admitted.
    let injected = eventually("the webhook to admit the plain pod", WAIT, || {
        let (client, app, secrets) = (client.clone(), app.clone(), secrets.clone());
        async move {
            create_pod(&client, &app, opted_in_pod("plain", &secrets))
                .await
                .ok()
        }
    })
    .await;
    let spec = injected.spec.unwrap();
    let holders: Vec<String> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter(|c| {
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == "ferry-token")
        })
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(
        holders,
        ["ferry-sidecar"],
        "only the sidecar holds the token"
    );

    for (name, field) in [
        ("app-mount", "containers"),
        ("init-mount", "initContainers"),
    ] {
        let mut pod = opted_in_pod(name, &secrets);
        let sneaky = json!({"name": "sneaky", "image": "app:1",
                            "volumeMounts": [{"name": "ferry-token", "mountPath": "/token"}]});
        match field {
            "containers" => pod["spec"]["containers"]
                .as_array_mut()
                .unwrap()
                .push(sneaky),
            _ => pod["spec"][field] = json!([sneaky]),
        }
        let refusal = create_pod(&client, &app, pod).await.unwrap_err();
        assert!(
            refusal.contains(
                "container \"sneaky\" mounts volume ferry-token: only ferry's sidecar may hold the pod's broker token"
            ),
            "{name}: {refusal}"
        );
    }
}

/// Parses a multi-document YAML stream into its (non-empty) documents.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The chart rendered by `helm template` in `namespace` with `sets`.
fn helm_template(namespace: &str, sets: &[String]) -> Vec<Value> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/ferry");
    let mut helm = Command::new(controlplane_bin_dir().unwrap().join("helm"));
    helm.args(["template", "ferry"])
        .arg(&chart)
        .args(["--namespace", namespace]);
    for set in sets {
        helm.args(["--set", set]);
    }
    let output = helm.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    documents(&String::from_utf8_lossy(&output.stdout))
}

/// Asserts that `rendered` holds `policy` and `binding`: the same kinds
/// and names, the same specs.
fn assert_rendered(
    rendered: &[Value],
    (policy, binding): (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding),
) {
    for rust in [
        serde_json::to_value(policy).unwrap(),
        serde_json::to_value(binding).unwrap(),
    ] {
        let (kind, name) = (&rust["kind"], &rust["metadata"]["name"]);
        let chart = rendered
            .iter()
            .find(|doc| doc["kind"] == *kind && doc["metadata"]["name"] == *name)
            .unwrap_or_else(|| panic!("{kind} {name} not rendered"));
        assert_eq!(chart["spec"], rust["spec"], "{kind} {name}");
    }
}

#[test]
fn the_chart_renders_the_grant_admission_policy_rust_builds() {
    for (namespace, extra) in [("ferry-system", None), ("broker", Some("ci-bot"))] {
        let sets: Vec<String> = extra
            .iter()
            .map(|extra| format!("operator.grantWriters={{{extra}}}"))
            .collect();
        let rendered = helm_template(namespace, &sets);
        let mut writers = vec![operator_username(namespace)];
        writers.extend(extra.map(str::to_owned));
        assert_rendered(&rendered, grant_admission_policy(&writers));
    }
}

#[test]
fn the_chart_renders_the_broker_secret_writes_policy_rust_builds() {
    for namespace in ["ferry-system", "broker"] {
        let rendered = helm_template(namespace, &[]);
        assert_rendered(&rendered, broker_secret_policy(namespace));
    }
}
