//! The ValidatingAdmissionPolicies ferry installs, each defined once: the
//! e2e harness installs them, and the Helm chart renders the same objects
//! (tests compare the two).
//!
//! - [`grants`]: only the operator writes Grants.
//! - [`broker_secrets`]: the broker's Secret updates change only a
//!   brokerable Secret's refresh token, its claim annotation and the
//!   access token the broker's replicas share.
//! - [`access_requests`]: an AccessRequest's requester and approver are
//!   the users the apiserver authenticated, and never the same.

pub mod access_requests;
pub mod broker_secrets;
pub mod grants;

use std::collections::BTreeMap;

use ferry_contract::{PART_OF, PART_OF_LABEL};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec, Validation,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// A CEL string literal of `text`, single-quoted.
fn cel_string(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A CEL list literal of `items`, each a single-quoted string.
fn cel_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let quoted: Vec<String> = items.into_iter().map(cel_string).collect();
    format!("[{}]", quoted.join(", "))
}

/// A validation that refuses (`Forbidden`) what fails `expression`, with
/// the message the CEL string expression `message` makes.
fn forbidden(expression: impl Into<String>, message: impl Into<String>) -> Validation {
    Validation {
        expression: expression.into(),
        message_expression: Some(message.into()),
        reason: Some("Forbidden".into()),
        ..Validation::default()
    }
}

/// The metadata of a policy and of its binding, both named `name`.
fn metadata(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        labels: Some(BTreeMap::from([(PART_OF_LABEL.into(), PART_OF.into())])),
        ..ObjectMeta::default()
    }
}

/// The binding named `name` that applies the policy of that name to every
/// request it matches and denies what it refuses.
fn deny_binding(name: &str) -> ValidatingAdmissionPolicyBinding {
    ValidatingAdmissionPolicyBinding {
        metadata: metadata(name),
        spec: Some(ValidatingAdmissionPolicyBindingSpec {
            policy_name: Some(name.into()),
            validation_actions: Some(vec!["Deny".into()]),
            ..ValidatingAdmissionPolicyBindingSpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cel_literals_quote_and_escape() {
        assert_eq!(cel_string(r"a'b\c"), r"'a\'b\\c'");
        assert_eq!(cel_list(["a'b", "c"]), r"['a\'b', 'c']");
    }
}
