#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Only ferry's sidecar may mount the `ferry-token` volume: at injection,
//! and on re-invocation after another webhook added a container.

use ferry_api::grants::GrantLookup;
use ferry_api::resources::SecretReference;
use ferry_webhook::config::InjectionConfig;
use ferry_webhook::mutation::{Injection, Refusal, Untouched, inject_sidecar};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

/// Every service account holds every secret: only the token rule decides.
struct Everything;

impl GrantLookup for Everything {
    fn is_granted(&self, _: &str, _: &str, _: &SecretReference, _: Timestamp) -> bool {
        true
    }
}

fn decide(pod: Value) -> Result<Injection, Refusal> {
    let pod: Pod = serde_json::from_value(pod).unwrap();
    inject_sidecar(
        &pod,
        "app",
        &InjectionConfig::default(),
        &Everything,
        Timestamp::now(),
    )
}

fn opted_in(containers: Value) -> Value {
    json!({
        "metadata": {"name": "api", "labels": {"ferry.dev/inject": "true"},
                     "annotations": {"ferry.dev/secrets": "orders-db"}},
        "spec": {"containers": containers},
    })
}

fn mounting_token(name: &str) -> Value {
    json!({"name": name, "image": "app:1",
           "volumeMounts": [{"name": "ferry-token", "mountPath": "/token"}]})
}

#[test]
fn an_app_container_mounting_the_token_volume_is_refused_before_injection() {
    let refusal = decide(opted_in(json!([mounting_token("app")]))).unwrap_err();
    assert_eq!(refusal, Refusal::TokenMounted("\"app\"".into()));
    assert_eq!(refusal.reason(), "token_mounted");
}

#[test]
fn a_container_added_after_injection_that_mounts_the_token_is_refused() {
    // The pod as ferry injected it: the status annotation, the sidecar (an
    // init container) holding the token, and then another webhook's
    // container mounting it too.
    let mut pod = opted_in(json!([{"name": "app", "image": "app:1"}, mounting_token("proxy")]));
    pod["metadata"]["annotations"]["ferry.dev/status"] = json!("{}");
    pod["spec"]["initContainers"] = json!([mounting_token("ferry-sidecar")]);
    let refusal = decide(pod.clone()).unwrap_err();
    assert_eq!(refusal, Refusal::TokenMounted("\"proxy\"".into()));

    // Without the intruder, the injected pod is left alone.
    pod["spec"]["containers"] = json!([{"name": "app", "image": "app:1"}]);
    assert!(matches!(
        decide(pod),
        Ok(Injection::Untouched(Untouched::AlreadyInjected))
    ));
}
