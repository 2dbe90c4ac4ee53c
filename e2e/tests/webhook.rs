//! The webhook registered with a real apiserver at https://127.0.0.1:PORT
//! with its caBundle: opted-in pods are stored with the sidecar exactly
//! once, others are untouched, ungranted pods are refused with the reason,
//! updates never re-inject, Deployment pods are injected, and a stopped
//! webhook fails only opted-in pods.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ferry_api::testing;
use ferry_contract as contract;
use ferry_e2e::{
    Cluster, RunningOperator, RunningWebhook, capture_logs_at, captured_logs,
    create_brokered_secret, create_object, eventually, grant, install_crds, wait_webhook_active,
};
use ferry_webhook::config::InjectionConfig;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

const WAIT: Duration = Duration::from_secs(60);

/// ferry's namespace in these tests (excluded from injection).
const FERRY_NAMESPACE: &str = "ferry-system";

/// The shared cluster with the CRDs, the operator and one registered
/// webhook for the whole test binary; a fresh namespace per test.
async fn setup(prefix: &str) -> (Client, String) {
    // Initialised once even when tests race here: a second webhook would
    // overwrite the registration and then stop when dropped.
    static RUNNING: OnceCell<(RunningOperator, RunningWebhook)> = OnceCell::const_new();
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    // At debug, the webhook logs every review it answers, admitted
    // untouched ones too: tests can tell which pods reached it.
    capture_logs_at("debug");
    RUNNING
        .get_or_init(|| async {
            install_crds(&client).await.unwrap();
            let operator = RunningOperator::start(cluster.config().clone()).unwrap();
            let webhook = RunningWebhook::start(cluster, webhook_config()).unwrap();
            webhook.register(&client, FERRY_NAMESPACE).await.unwrap();
            (operator, webhook)
        })
        .await;
    let ns = cluster.create_namespace(prefix).await.unwrap();
    wait_webhook_active(&client, &ns).await.unwrap();
    (client, ns)
}

fn webhook_config() -> InjectionConfig {
    InjectionConfig {
        ferry_namespace: FERRY_NAMESPACE.into(),
        sidecar_image: "ferry-sidecar:e2e".into(),
        broker_url: "https://127.0.0.1:1".into(),
        ..InjectionConfig::default()
    }
}

/// Grants service account `checkout` (created here) the BrokeredSecret
/// `orders-db` in `ns`, and waits for the Grant.
async fn grant_orders_db_to_checkout(client: &Client, ns: &str) {
    let secret = testing::brokered_secret(ns, "orders-db")
        .ttl("15m")
        .max_ttl("1h")
        .postgres("db-admin", "dsn");
    create_brokered_secret(client, &secret.build())
        .await
        .unwrap();
    let policy = testing::access_policy(ns, "checkout-orders")
        .service_account(ns, "checkout")
        .secret("orders-db");
    grant(client, policy.build()).await.unwrap();
}

fn pod_spec(name: &str, labels: Value, annotations: Value) -> Value {
    json!({
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            "serviceAccountName": "checkout",
            "containers": [
                {"name": "app", "image": "registry.example/app:1"},
                {"name": "proxy", "image": "registry.example/proxy:1"},
            ],
        },
    })
}

fn opted_in(name: &str, secrets: &str) -> Value {
    pod_spec(
        name,
        json!({contract::INJECT_LABEL: "true"}),
        json!({contract::SECRETS_ANNOTATION: secrets}),
    )
}

/// Creates `pod`, retrying while the webhook's Grant index has not yet seen
/// a Grant the operator just wrote.
async fn create_granted_pod(client: &Client, ns: &str, pod: Value) -> Pod {
    let pod: Pod = serde_json::from_value(pod).unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    eventually("the webhook to admit the pod", WAIT, || async {
        match pods.create(&PostParams::default(), &pod).await {
            Ok(created) => Some(created),
            Err(kube::Error::Api(status)) if status.message.contains("has no Grant") => None,
            Err(error) => panic!("creating the pod: {error}"),
        }
    })
    .await
}

fn sidecar_count(pod: &Pod) -> usize {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter(|c| c.name == contract::SIDECAR_CONTAINER_NAME)
        .count()
}

fn volume_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.clone())
        .collect()
}

fn assert_injected_once(pod: &Pod) {
    assert_eq!(sidecar_count(pod), 1, "{:#?}", pod.spec);
    let spec = pod.spec.as_ref().unwrap();
    let sidecar = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(sidecar.name, contract::SIDECAR_CONTAINER_NAME);
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    let volumes = volume_names(pod);
    for name in [contract::SECRETS_VOLUME_NAME, contract::TOKEN_VOLUME_NAME] {
        assert_eq!(
            volumes.iter().filter(|v| *v == name).count(),
            1,
            "{volumes:?}"
        );
    }
    for container in &spec.containers {
        let mounts: Vec<_> = container
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| m.name == contract::SECRETS_VOLUME_NAME)
            .collect();
        assert_eq!(mounts.len(), 1, "{}", container.name);
        assert_eq!(mounts[0].read_only, Some(true));
        assert_eq!(mounts[0].mount_path, contract::DEFAULT_MOUNT_PATH);
    }
    assert!(pod.annotations().contains_key(contract::STATUS_ANNOTATION));
}

#[tokio::test]
async fn opted_in_pod_is_stored_with_the_sidecar_and_volumes_exactly_once() {
    let (client, ns) = setup("inject").await;
    grant_orders_db_to_checkout(&client, &ns).await;
    let created = create_granted_pod(&client, &ns, opted_in("api", "orders-db")).await;
    assert_injected_once(&created);
    // What etcd holds, read back, is the same.
    let stored = Api::<Pod>::namespaced(client.clone(), &ns)
        .get("api")
        .await
        .unwrap();
    assert_injected_once(&stored);
    // The apiserver accepted the projected token the kubelet will mint.
    let token = stored
        .spec
        .unwrap()
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == contract::TOKEN_VOLUME_NAME)
        .unwrap();
    let projection = token.projected.unwrap().sources.unwrap()[0]
        .service_account_token
        .clone()
        .unwrap();
    assert_eq!(
        projection.audience.as_deref(),
        Some(contract::DEFAULT_BROKER_AUDIENCE)
    );
}

#[tokio::test]
async fn unlabelled_pod_is_untouched() {
    let (client, ns) = setup("untouched").await;
    grant_orders_db_to_checkout(&client, &ns).await;
    // The annotation alone does not opt in: the label routes pods to ferry.
    let pod = pod_spec(
        "plain",
        json!({"app": "plain"}),
        json!({contract::SECRETS_ANNOTATION: "orders-db"}),
    );
    let created = create_object::<Pod>(&client, &ns, pod).await.unwrap();
    assert_eq!(sidecar_count(&created), 0);
    assert!(created.spec.as_ref().unwrap().init_containers.is_none());
    assert!(
        !created
            .annotations()
            .contains_key(contract::STATUS_ANNOTATION)
    );
}

#[tokio::test]
async fn pod_asking_for_an_ungranted_secret_is_refused_with_the_reason() {
    let (client, ns) = setup("refused").await;
    grant_orders_db_to_checkout(&client, &ns).await;
    let pod: Pod = serde_json::from_value(opted_in("greedy", "orders-db, payments/cards")).unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    // The webhook's Grant index follows the operator's write within
    // moments: until then it names orders-db as missing too.
    let status = eventually("the webhook to know the orders-db Grant", WAIT, || async {
        match pods.create(&PostParams::default(), &pod).await {
            Err(kube::Error::Api(status)) => {
                (!status.message.contains(&format!("{ns}/orders-db"))).then_some(status)
            }
            other => panic!("expected an API error, got {other:?}"),
        }
    })
    .await;
    assert!(
        status
            .message
            .contains("admission webhook \"inject.ferry.dev\" denied the request"),
        "{}",
        status.message
    );
    assert!(
        status.message.contains(&format!(
            "service account {ns}/checkout has no Grant for BrokeredSecret payments/cards"
        )),
        "{}",
        status.message
    );
    assert!(
        Api::<Pod>::namespaced(client.clone(), &ns)
            .get_opt("greedy")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn malformed_annotation_is_refused_with_the_reason() {
    let (client, ns) = setup("malformed").await;
    create_object::<ServiceAccount>(&client, &ns, json!({"metadata": {"name": "checkout"}}))
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(opted_in("bad", "orders-db,,../etc")).unwrap();
    let error = Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("entry 2 is empty"), "{error}");
}

#[tokio::test]
async fn pod_updates_do_not_reinject() {
    let (client, ns) = setup("update").await;
    grant_orders_db_to_checkout(&client, &ns).await;
    let created = create_granted_pod(&client, &ns, opted_in("api", "orders-db")).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let patched = pods
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {
                "labels": {"tier": "backend"},
                "annotations": {"note": "edited", contract::SECRETS_ANNOTATION: "orders-db, other"},
            }})),
        )
        .await
        .unwrap();
    assert_ne!(patched.resource_version(), created.resource_version());
    assert_injected_once(&patched);
    assert_eq!(
        patched.spec.as_ref().unwrap().volumes,
        created.spec.as_ref().unwrap().volumes
    );
}

#[tokio::test]
async fn pods_created_by_a_deployment_are_injected() {
    let (client, ns) = setup("deploy").await;
    grant_orders_db_to_checkout(&client, &ns).await;
    // Make sure the webhook's index holds the Grant before the ReplicaSet
    // controller creates pods (it would back off on a refusal).
    create_granted_pod(&client, &ns, opted_in("warmup", "orders-db")).await;
    let template = opted_in("ignored", "orders-db");
    create_object::<Deployment>(
        &client,
        &ns,
        json!({
            "metadata": {"name": "checkout"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "checkout"}},
                "template": {
                    "metadata": {
                        "labels": {"app": "checkout", contract::INJECT_LABEL: "true"},
                        "annotations": template["metadata"]["annotations"],
                    },
                    "spec": template["spec"],
                },
            },
        }),
    )
    .await
    .unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let created = eventually("two pods from the Deployment", WAIT, || async {
        let list = pods
            .list(&ListParams::default().labels("app=checkout"))
            .await
            .unwrap();
        (list.items.len() == 2).then_some(list.items)
    })
    .await;
    for pod in &created {
        assert!(pod.metadata.generate_name.is_some());
        assert_injected_once(pod);
    }
}

#[tokio::test]
async fn with_the_webhook_stopped_opted_in_pods_fail_clearly_and_others_still_create() {
    // A cluster of its own: stopping the shared webhook would fail the
    // other tests' pods.
    let cluster = Cluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    install_crds(&client).await.unwrap();
    let webhook = RunningWebhook::start(&cluster, webhook_config()).unwrap();
    webhook.register(&client, FERRY_NAMESPACE).await.unwrap();
    let ns = cluster.create_namespace("stopped").await.unwrap();
    wait_webhook_active(&client, &ns).await.unwrap();
    webhook.stop();

    create_object::<ServiceAccount>(&client, &ns, json!({"metadata": {"name": "checkout"}}))
        .await
        .unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(opted_in("api", "orders-db")).unwrap();
    let error = pods
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("failed calling webhook \"inject.ferry.dev\""),
        "{error}"
    );
    let plain: Pod =
        serde_json::from_value(pod_spec("plain", json!({"app": "plain"}), json!({}))).unwrap();
    let created = pods.create(&PostParams::default(), &plain).await.unwrap();
    assert_eq!(sidecar_count(&created), 0);
}

#[tokio::test]
async fn opted_in_pods_in_ferrys_namespace_are_never_sent_to_the_webhook() {
    let (client, ns) = setup("protected").await;
    let namespace: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": FERRY_NAMESPACE}})).unwrap();
    match Api::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => panic!("creating {FERRY_NAMESPACE}: {error}"),
    }
    // The default service account appears a moment after the namespace.
    let pods = Api::<Pod>::namespaced(client.clone(), FERRY_NAMESPACE);
    let mut pod = opted_in("ferry-own", "orders-db");
    pod["spec"]["serviceAccountName"] = json!("default");
    let pod: Pod = serde_json::from_value(pod).unwrap();
    let created = eventually("the pod in ferry's namespace", WAIT, || async {
        match pods.create(&PostParams::default(), &pod).await {
            Ok(created) => Some(created),
            Err(kube::Error::Api(status)) if status.message.contains("serviceaccount") => None,
            Err(error) => panic!("creating the pod: {error}"),
        }
    })
    .await;
    assert_eq!(sidecar_count(&created), 0);
    assert!(
        !created
            .annotations()
            .contains_key(contract::STATUS_ANNOTATION)
    );
    // Not merely left untouched by the webhook: never sent to it. The
    // webhook logs every review it answers; a pod of the test's own
    // namespace, reviewed after, shows that its log is being read.
    let mut control = opted_in("control", "orders-db");
    control["spec"]["serviceAccountName"] = json!("default");
    let control: Pod = serde_json::from_value(control).unwrap();
    let refused = Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &control)
        .await;
    assert!(
        format!("{refused:?}").contains("no Grant"),
        "refused by the webhook: {refused:?}"
    );
    let reviews_of = |pod: &str| {
        captured_logs()
            .lines()
            .filter(|line| {
                line.contains("\"target\":\"ferry_webhook")
                    && line.contains(&format!("\"pod\":\"{pod}\""))
            })
            .count()
    };
    assert!(
        reviews_of(&format!("{ns}/control")) > 0,
        "the webhook's review of {ns}/control was not logged"
    );
    assert_eq!(
        reviews_of(&format!("{FERRY_NAMESPACE}/ferry-own")),
        0,
        "the webhook reviewed a pod of ferry's namespace"
    );
}

#[tokio::test]
async fn webhook_does_its_job_with_exactly_its_documented_rbac() {
    let cluster = Cluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    install_crds(&client).await.unwrap();
    let rbac = concat!(env!("CARGO_MANIFEST_DIR"), "/../rbac/webhook.yaml");
    for args in [
        vec!["create", "namespace", FERRY_NAMESPACE],
        vec!["apply", "-f", rbac],
    ] {
        let output = cluster.kubectl().args(&args).output().unwrap();
        assert!(output.status.success(), "kubectl {args:?}: {output:?}");
    }
    let subject = format!("--as=system:serviceaccount:{FERRY_NAMESPACE}:ferry-webhook");
    for (verb, resource, expected) in [
        ("watch", "grants.ferry.dev", "yes"),
        ("watch", "accesspolicies.ferry.dev", "yes"),
        ("get", "secrets", "no"),
        ("list", "pods", "no"),
        ("create", "grants.ferry.dev", "no"),
    ] {
        let output = cluster
            .kubectl()
            .args([
                "auth",
                "can-i",
                verb,
                resource,
                "--all-namespaces",
                &subject,
            ])
            .output()
            .unwrap();
        let answer = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            answer.trim(),
            expected,
            "can the webhook {verb} {resource}?"
        );
    }
    let ns = cluster.create_namespace("rbac").await.unwrap();
    create_object::<ServiceAccount>(&client, &ns, json!({"metadata": {"name": "checkout"}}))
        .await
        .unwrap();
    // A Grant as the operator would write it (no operator runs here).
    ferry_e2e::direct_grant(
        &client,
        ferry_e2e::Subject {
            namespace: &ns,
            name: "checkout",
        },
        &ns,
        "orders-db",
        "p",
        "orders-db-for-checkout",
    )
    .await
    .unwrap();

    let mut as_webhook = cluster.config().clone();
    as_webhook.auth_info.impersonate = Some(format!(
        "system:serviceaccount:{FERRY_NAMESPACE}:ferry-webhook"
    ));
    as_webhook.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{FERRY_NAMESPACE}"),
    ]);
    let webhook = RunningWebhook::start_as(&cluster, as_webhook, webhook_config()).unwrap();
    webhook.register(&client, FERRY_NAMESPACE).await.unwrap();
    wait_webhook_active(&client, &ns).await.unwrap();

    let injected = create_granted_pod(&client, &ns, opted_in("api", "orders-db")).await;
    assert_injected_once(&injected);
    let pod: Pod = serde_json::from_value(opted_in("greedy", "orders-db, cards")).unwrap();
    let error = Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&format!("has no Grant for BrokeredSecret {ns}/cards")),
        "{error}"
    );
}

#[tokio::test]
async fn the_readme_examples_apply_and_their_pod_is_injected() {
    let (client, _) = setup("examples").await;
    let cluster = Cluster::shared().await.unwrap();
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let applied = cluster
        .kubectl()
        .args(["apply", "-f", &format!("{examples}/access.yaml")])
        .output()
        .unwrap();
    assert!(applied.status.success(), "{applied:?}");
    let pod: Pod =
        serde_yaml::from_str(&std::fs::read_to_string(format!("{examples}/pod.yaml")).unwrap())
            .unwrap();
    let namespace = pod.namespace().unwrap();
    let created =
        create_granted_pod(&client, &namespace, serde_json::to_value(&pod).unwrap()).await;
    assert_injected_once(&created);
    // The example runs as 1000 with fsGroup 1000: so does the sidecar.
    let sidecar = &created
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        sidecar.security_context.as_ref().unwrap().run_as_user,
        Some(1000)
    );
}
