//! The MutatingWebhookConfiguration that routes opted-in pods to the webhook,
//! defined once: the e2e tests register it, `ferry-webhook configuration`
//! prints it, and the Helm chart is generated from it.

use std::collections::BTreeMap;

use ferry_contract::{API_GROUP, INJECT_LABEL, PART_OF, PART_OF_LABEL, WEBHOOK_CONFIGURATION_NAME};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};

use crate::mutation::SYSTEM_NAMESPACES;
use crate::server::MUTATE_PATH;

/// Name of the one webhook in it (what the apiserver quotes in messages).
pub const WEBHOOK_NAME: &str = "inject.ferry.dev";

/// How long the apiserver waits for an answer, in seconds.
pub const TIMEOUT_SECONDS: i32 = 5;

/// Where the apiserver reaches the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEndpoint {
    /// A Service in the cluster (production).
    Service {
        /// The Service's namespace.
        namespace: String,
        /// The Service's name.
        name: String,
        /// The Service's port.
        port: i32,
    },
    /// A URL (tests, and webhooks run outside the cluster).
    Url(String),
}

/// The MutatingWebhookConfiguration for a webhook at `endpoint`, trusting
/// `ca_bundle` (PEM), with ferry installed in `ferry_namespace`.
pub fn mutating_webhook_configuration(
    endpoint: &WebhookEndpoint,
    ca_bundle: &[u8],
    ferry_namespace: &str,
) -> MutatingWebhookConfiguration {
    let client_config = match endpoint {
        WebhookEndpoint::Service {
            namespace,
            name,
            port,
        } => WebhookClientConfig {
            service: Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                path: Some(MUTATE_PATH.into()),
                port: Some(*port),
            }),
            url: None,
            ca_bundle: ca_bundle_field(ca_bundle),
        },
        WebhookEndpoint::Url(base) => WebhookClientConfig {
            service: None,
            url: Some(format!("{}{MUTATE_PATH}", base.trim_end_matches('/'))),
            ca_bundle: ca_bundle_field(ca_bundle),
        },
    };
    let mut protected: Vec<String> = SYSTEM_NAMESPACES
        .iter()
        .map(|ns| (*ns).to_owned())
        .collect();
    protected.push(ferry_namespace.to_owned());
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(WEBHOOK_CONFIGURATION_NAME.into()),
            labels: Some(BTreeMap::from([(
                PART_OF_LABEL.to_owned(),
                PART_OF.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: WEBHOOK_NAME.into(),
            admission_review_versions: vec!["v1".into()],
            client_config,
            // Scoped by the selectors below, so only opted-in pods depend
            // on the webhook: better no pod than a pod without its secrets.
            failure_policy: Some("Fail".into()),
            match_policy: Some("Equivalent".into()),
            // Only pods that opted in ever reach the webhook.
            object_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    INJECT_LABEL.to_owned(),
                    "true".to_owned(),
                )])),
                match_expressions: None,
            }),
            namespace_selector: Some(LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "kubernetes.io/metadata.name".into(),
                    operator: "NotIn".into(),
                    values: Some(protected),
                }]),
            }),
            reinvocation_policy: Some("IfNeeded".into()),
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".into()]),
                operations: Some(vec!["CREATE".into()]),
                resources: Some(vec!["pods".into()]),
                scope: Some("Namespaced".into()),
            }]),
            side_effects: "None".into(),
            timeout_seconds: Some(TIMEOUT_SECONDS),
            match_conditions: None,
        }]),
    }
}

/// An empty bundle is left out (the chart, or cert-manager's CA injector,
/// fills it in later); the apiserver then trusts its own roots.
fn ca_bundle_field(ca_bundle: &[u8]) -> Option<ByteString> {
    (!ca_bundle.is_empty()).then(|| ByteString(ca_bundle.to_vec()))
}

/// The configuration as YAML, with a header saying where it comes from.
pub fn mutating_webhook_configuration_yaml(
    endpoint: &WebhookEndpoint,
    ca_bundle: &[u8],
    ferry_namespace: &str,
) -> Result<String, serde_yaml::Error> {
    let configuration = mutating_webhook_configuration(endpoint, ca_bundle, ferry_namespace);
    Ok(format!(
        "# Generated by `ferry-webhook configuration` ({API_GROUP}). Do not edit.\n{}",
        serde_yaml::to_string(&configuration)?
    ))
}
