#![allow(clippy::unwrap_used, clippy::expect_used)]
//! AdmissionReview fixtures, shaped exactly as the apiserver sends them,
//! through the `/mutate` HTTP handler.

use std::sync::Arc;

use base64::Engine as _;
use ferry_api::resources::{Grant, GrantSpec, PolicyReference, SecretReference};
use ferry_contract as contract;
use ferry_runtime::grant_index::GrantIndex;
use ferry_webhook::config::InjectionConfig;
use ferry_webhook::metrics::WebhookMetrics;
use ferry_webhook::server::{MAX_BODY_BYTES, WebhookState, mutate_route};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn grant(service_account: &str, secret: (&str, &str)) -> Grant {
    Grant {
        metadata: ObjectMeta {
            namespace: Some("orders".into()),
            name: Some(format!("{}.p.{}.{service_account}", secret.0, secret.1)),
            labels: Some(
                [(
                    contract::MANAGED_BY_LABEL.to_string(),
                    contract::OPERATOR_MANAGER.to_string(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec: GrantSpec {
            service_account: service_account.into(),
            secret: SecretReference {
                namespace: secret.0.into(),
                name: secret.1.into(),
            },
            max_ttl: "1h".into(),
            audience: vec![],
            scopes: vec![],
            dns_names: None,
            valid_until: None,
            policy: PolicyReference {
                namespace: secret.0.into(),
                name: "p".into(),
                uid: format!("uid-{}", secret.0),
            },
        },
    }
}

/// The fixtures' world: `orders/api` holds both secrets it asks for.
fn state(grants: GrantIndex) -> WebhookState {
    WebhookState {
        config: Arc::new(InjectionConfig::default()),
        grants,
        metrics: WebhookMetrics::new(&prometheus::Registry::new()).unwrap(),
    }
}

fn granted() -> WebhookState {
    let grants = [
        grant("api", ("orders", "orders-db")),
        grant("api", ("payments", "orders-key")),
    ];
    // The AccessPolicy behind each Grant, as the operator derived it.
    let policies = grants.iter().map(|grant| {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "AccessPolicy",
            "metadata": {"name": "p", "namespace": grant.spec.secret.namespace,
                         "uid": grant.spec.policy.uid},
            "spec": {"subjects": [{"serviceAccount": {"namespace": "orders", "name": "api"}}],
                     "secrets": [{"name": grant.spec.secret.name}]},
        }))
        .unwrap()
    });
    let policies: Vec<ferry_api::resources::AccessPolicy> = policies.collect();
    state(GrantIndex::from_objects(grants, policies))
}

async fn post(state: &WebhookState, body: &[u8]) -> (u16, Value) {
    let response = warp::test::request()
        .method("POST")
        .path("/mutate")
        .header("content-type", "application/json")
        .body(body)
        .reply(&mutate_route(state.clone()))
        .await;
    let status = response.status().as_u16();
    (status, serde_json::from_slice(response.body()).unwrap())
}

fn request_uid(body: &[u8]) -> String {
    let review: Value = serde_json::from_slice(body).unwrap();
    review["request"]["uid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn opted_in_pod_review_is_answered_with_a_patch_that_injects_the_sidecar() {
    let body = fixture("create_opted_in_pod.json");
    let state = granted();
    let (status, review) = post(&state, &body).await;
    assert_eq!(status, 200, "{review}");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    let response = &review["response"];
    assert_eq!(response["uid"], request_uid(&body).as_str());
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    assert_eq!(
        response["auditAnnotations"]["decision"],
        "injected: granted"
    );

    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut pod: Value =
        serde_json::from_slice::<Value>(&body).unwrap()["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    let pod: Pod = serde_json::from_value(pod).unwrap();
    let spec = pod.spec.unwrap();
    let sidecar = &spec.init_containers.unwrap()[0];
    assert_eq!(sidecar.name, contract::SIDECAR_CONTAINER_NAME);
    // The fixture's pod runs as 1000 with fsGroup 2000.
    assert_eq!(
        sidecar.security_context.as_ref().unwrap().run_as_user,
        Some(1000)
    );
    assert!(
        sidecar
            .env
            .iter()
            .flatten()
            .any(|v| v.name == contract::env::FS_GROUP && v.value.as_deref() == Some("2000"))
    );
    assert_eq!(spec.volumes.unwrap().len(), 3);
    assert_eq!(spec.containers[0].volume_mounts.as_ref().unwrap().len(), 2);
    assert_eq!(state.metrics.admissions("injected"), 1);
}

#[tokio::test]
async fn pod_without_grant_is_denied_with_the_missing_grant_in_the_status() {
    let body = fixture("create_pod_without_grant.json");
    let state = granted();
    let (status, review) = post(&state, &body).await;
    assert_eq!(status, 200);
    let response = &review["response"];
    assert_eq!(response["uid"], request_uid(&body).as_str());
    assert_eq!(response["allowed"], false);
    assert!(response.get("patch").is_none());
    let message = response["status"]["message"].as_str().unwrap();
    assert!(message.contains("orders/web"), "{message}");
    assert!(
        message.contains("orders/orders-db, payments/orders-key"),
        "{message}"
    );
    assert_eq!(state.metrics.admissions("refused"), 1);
}

#[tokio::test]
async fn pod_with_a_malformed_annotation_is_denied_with_the_reason() {
    let (status, review) = post(&granted(), &fixture("create_pod_with_bad_annotation.json")).await;
    assert_eq!(status, 200);
    assert_eq!(review["response"]["allowed"], false);
    let message = review["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("entry 2 is empty"), "{message}");
}

#[tokio::test]
async fn an_update_is_allowed_untouched() {
    let (status, review) = post(&granted(), &fixture("update_injected_pod.json")).await;
    assert_eq!(status, 200);
    assert_eq!(review["response"]["allowed"], true);
    assert!(review["response"].get("patch").is_none());
    assert_eq!(
        review["response"]["auditAnnotations"]["decision"],
        "untouched: not_a_create"
    );
}

#[tokio::test]
async fn a_review_of_another_kind_is_a_bad_request_naming_the_kind() {
    let (status, error) = post(&granted(), &fixture("create_deployment.json")).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["code"], 400);
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("apps/v1 Deployment"), "{message}");
}

#[tokio::test]
async fn malformed_bodies_are_bad_requests_that_do_not_quote_the_body() {
    let body = fixture("create_opted_in_pod.json");
    let truncated = &body[..body.len() / 2];
    let wrong_type = String::from_utf8(body.clone()).unwrap().replace(
        "\"terminationGracePeriodSeconds\": 30",
        "\"terminationGracePeriodSeconds\": \"orders-secret-value\"",
    );
    for bad in [
        truncated,
        b"not json".as_slice(),
        b"{}".as_slice(),
        b"{\"request\": null}".as_slice(),
        wrong_type.as_bytes(),
    ] {
        let (status, error) = post(&granted(), bad).await;
        assert_eq!(status, 400, "{error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(!message.contains("orders-secret-value"), "{message}");
        assert!(!message.contains("registry.example.com"), "{message}");
    }
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_413() {
    let huge = vec![b' '; usize::try_from(MAX_BODY_BYTES).unwrap() + 1];
    let (status, error) = post(&granted(), &huge).await;
    assert_eq!(status, 413);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("larger than")
    );
}

#[tokio::test]
async fn wrong_method_and_path_get_405_and_404() {
    let route = mutate_route(granted());
    let get = warp::test::request()
        .method("GET")
        .path("/mutate")
        .reply(&route)
        .await;
    assert_eq!(get.status(), 405);
    let elsewhere = warp::test::request()
        .method("POST")
        .path("/validate")
        .body("{}")
        .reply(&route)
        .await;
    assert_eq!(elsewhere.status(), 404);
}

#[tokio::test]
async fn before_the_grant_index_is_filled_reviews_get_503() {
    let (status, error) = post(
        &state(GrantIndex::new()),
        &fixture("create_opted_in_pod.json"),
    )
    .await;
    assert_eq!(status, 503);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Grant index")
    );
}
