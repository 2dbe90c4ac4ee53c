//! `kubectl ferry request`, `approve` and `deny`: just-in-time access
//! (see the README's "Just-in-time access"). The requester and approver
//! are the caller as the apiserver authenticates it (a SelfSubjectReview),
//! which is what the admission policy `ferry-access-requests` checks
//! `spec.requester` and `spec.decision.approver` against.

use ferry_api::resources::{AccessRequest, AccessRequestSpec, ServiceAccountRef, Verdict};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use serde::Serialize;
use serde_json::{Value, json};

use crate::target::Target;

/// What `request` asks for.
#[derive(Debug, Clone)]
pub struct Ask {
    /// The AccessPolicy, `namespace/name`.
    pub policy: Target,
    /// Only these of its secrets (empty: all).
    pub secrets: Vec<String>,
    /// Only this service account (default: every subject).
    pub service_account: Option<Target>,
    /// How long, like `30m`.
    pub duration: String,
    /// Why.
    pub reason: String,
    /// The request's name; `None`: `<policy>-` and a suffix the apiserver
    /// generates.
    pub name: Option<String>,
}

/// The AccessRequest `requester` creates for `ask`.
pub fn access_request(ask: &Ask, requester: &str) -> AccessRequest {
    let metadata = ObjectMeta {
        name: ask.name.clone(),
        generate_name: ask.name.is_none().then(|| format!("{}-", ask.policy.name)),
        namespace: Some(ask.policy.namespace.clone()),
        ..ObjectMeta::default()
    };
    AccessRequest {
        metadata,
        spec: AccessRequestSpec {
            policy: ask.policy.name.clone(),
            secrets: ask.secrets.clone(),
            service_account: ask.service_account.as_ref().map(|sa| ServiceAccountRef {
                namespace: sa.namespace.clone(),
                name: sa.name.clone(),
            }),
            duration: ask.duration.clone(),
            reason: ask.reason.clone(),
            requester: requester.to_owned(),
            decision: None,
        },
        status: None,
    }
}

/// The merge patch that records `approver`'s `verdict`.
pub fn decision_patch(verdict: Verdict, approver: &str, reason: &str) -> Value {
    json!({"spec": {"decision": {"verdict": verdict, "approver": approver, "reason": reason}}})
}

/// An AccessRequest as the plugin reports it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestView {
    /// `namespace/name`.
    pub request: String,
    /// The policy.
    pub policy: String,
    /// Who asked.
    pub requester: String,
    /// The phase, once the operator has judged it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Who decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    /// Until when approved access lasts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<String>,
    /// The Ready condition's message: why it stands where it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl From<&AccessRequest> for RequestView {
    fn from(request: &AccessRequest) -> Self {
        let status = request.status.as_ref();
        Self {
            request: format!(
                "{}/{}",
                request.namespace().unwrap_or_default(),
                request.name_any()
            ),
            policy: request.spec.policy.clone(),
            requester: request.spec.requester.clone(),
            phase: status.and_then(|s| s.phase).map(|p| p.as_str().to_owned()),
            approver: status.and_then(|s| s.approver.clone()),
            valid_until: status
                .and_then(|s| s.valid_until.as_ref())
                .map(|t| t.0.to_string()),
            message: status
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.message.clone()),
        }
    }
}

impl RequestView {
    /// One line for people.
    pub fn line(&self, action: &str) -> String {
        let mut text = format!("accessrequest {} {action}", self.request);
        match &self.phase {
            Some(phase) => text.push_str(&format!(": {phase}")),
            None => text.push_str(": not judged by the operator yet"),
        }
        if let Some(approver) = &self.approver {
            text.push_str(&format!(", approver {approver}"));
        }
        if let Some(until) = &self.valid_until {
            text.push_str(&format!(", access until {until}"));
        }
        if let Some(message) = self.message.as_ref().filter(|m| !m.is_empty()) {
            text.push_str(&format!(" ({message})"));
        }
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_its_requester_and_lets_the_apiserver_name_it() {
        let ask = Ask {
            policy: Target {
                namespace: "payments".into(),
                name: "orders-jit".into(),
            },
            secrets: vec!["orders-db".into()],
            service_account: Some(Target {
                namespace: "shop".into(),
                name: "checkout".into(),
            }),
            duration: "30m".into(),
            reason: "INC-4711".into(),
            name: None,
        };
        let request = access_request(&ask, "alice");
        assert_eq!(
            request.metadata.generate_name.as_deref(),
            Some("orders-jit-")
        );
        assert_eq!(request.spec.requester, "alice");
        assert_eq!(request.spec.service_account.unwrap().name, "checkout");
    }

    #[test]
    fn a_decision_is_one_merge_patch_of_spec_decision() {
        assert_eq!(
            decision_patch(Verdict::Denied, "bob", "not on call"),
            json!({"spec": {"decision": {"verdict": "Denied", "approver": "bob", "reason": "not on call"}}})
        );
    }
}
