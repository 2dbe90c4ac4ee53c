//! The ValidatingAdmissionPolicy that makes an AccessRequest's requester
//! and approver the users the apiserver authenticated, not what a client
//! wrote.
//!
//! The operator cannot tell who wrote a field; the apiserver can. So the
//! identity rules live here, over `request.userInfo`:
//!
//! - on CREATE, `spec.requester` is the creating user, and no decision is
//!   written yet;
//! - a decision is set only on a request the operator has judged Pending,
//!   by a user other than the requester, who is named in the request's
//!   `status.approvers` (the operator copies them from the AccessPolicy,
//!   which CEL here cannot read) by username or by one of their groups,
//!   and `spec.decision.approver` is that user.
//!
//! The CRD's own rules keep the rest of the spec immutable and a decision
//! final; RBAC keeps `accessrequests/status` the operator's.

use ferry_contract::API_GROUP;
use k8s_openapi::api::admissionregistration::v1::{
    MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicySpec, Variable,
};

use super::{deny_binding, forbidden, metadata};

/// Name of the policy and of its binding.
pub const ACCESS_REQUEST_POLICY_NAME: &str = "ferry-access-requests";

/// What each rule checks, in the order the apiserver reports the first
/// that fails, and the message it refuses with.
const RULES: [(&str, &str); 6] = [
    (
        "request.operation != 'CREATE' || object.spec.requester == request.userInfo.username",
        "\"spec.requester must be the user creating the request (\" + request.userInfo.username + \")\"",
    ),
    (
        "request.operation != 'CREATE' || !has(object.spec.decision)",
        "\"a request cannot be created decided: an approver decides it once it is Pending\"",
    ),
    (
        "!variables.newlyDecided || variables.phase == 'Pending'",
        "\"only a Pending request can be decided; this one is \" + \
         (variables.phase == '' ? 'not judged by the operator yet' : variables.phase)",
    ),
    (
        "!variables.newlyDecided || object.spec.decision.approver == request.userInfo.username",
        "\"spec.decision.approver must be the user deciding (\" + request.userInfo.username + \")\"",
    ),
    (
        "!variables.newlyDecided || request.userInfo.username != object.spec.requester",
        "\"self-approval is not allowed: \" + request.userInfo.username + \
         \" requested this access, another approver must decide\"",
    ),
    (
        "!variables.newlyDecided || request.userInfo.username in variables.approverUsers || \
         request.userInfo.groups.exists(g, g in variables.approverGroups)",
        "request.userInfo.username + \" is not an approver of this request (status.approvers)\"",
    ),
];

/// The policy checking who creates and who decides AccessRequests, and
/// its binding, which denies what it refuses.
pub fn access_request_policy() -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let variable = |name: &str, expression: &str| Variable {
        name: name.into(),
        expression: expression.into(),
    };
    let policy = ValidatingAdmissionPolicy {
        metadata: metadata(ACCESS_REQUEST_POLICY_NAME),
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                // The main resource only: status is the operator's (RBAC),
                // and a decision is a spec field.
                resource_rules: Some(vec![NamedRuleWithOperations {
                    api_groups: Some(vec![API_GROUP.into()]),
                    api_versions: Some(vec!["*".into()]),
                    operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                    resources: Some(vec!["accessrequests".into()]),
                    ..NamedRuleWithOperations::default()
                }]),
                ..MatchResources::default()
            }),
            variables: Some(vec![
                variable(
                    "newlyDecided",
                    "request.operation == 'UPDATE' && has(object.spec.decision) && \
                     !has(oldObject.spec.decision)",
                ),
                variable(
                    "phase",
                    "has(oldObject.status) && has(oldObject.status.phase) ? \
                     oldObject.status.phase : ''",
                ),
                variable(
                    "approverUsers",
                    "has(oldObject.status) && has(oldObject.status.approvers) && \
                     has(oldObject.status.approvers.users) ? oldObject.status.approvers.users : []",
                ),
                variable(
                    "approverGroups",
                    "has(oldObject.status) && has(oldObject.status.approvers) && \
                     has(oldObject.status.approvers.groups) ? oldObject.status.approvers.groups : []",
                ),
            ]),
            validations: Some(
                RULES
                    .iter()
                    .map(|(expression, message)| forbidden(*expression, *message))
                    .collect(),
            ),
            ..ValidatingAdmissionPolicySpec::default()
        }),
        ..ValidatingAdmissionPolicy::default()
    };
    (policy, deny_binding(ACCESS_REQUEST_POLICY_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_watches_only_the_main_resource_and_binds_to_deny() {
        let (policy, binding) = access_request_policy();
        let spec = policy.spec.unwrap();
        let rules = spec.match_constraints.unwrap().resource_rules.unwrap();
        assert_eq!(rules[0].resources, Some(vec!["accessrequests".to_string()]));
        assert_eq!(spec.validations.unwrap().len(), RULES.len());
        let binding = binding.spec.unwrap();
        assert_eq!(
            binding.policy_name.as_deref(),
            Some(ACCESS_REQUEST_POLICY_NAME)
        );
        assert_eq!(binding.validation_actions, Some(vec!["Deny".to_string()]));
    }

    /// Prints the policy as the chart's template spells it
    /// (`cargo test -p ferry-operator print_access_request_policy -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn print_access_request_policy() {
        let (policy, binding) = access_request_policy();
        println!("{}", serde_yaml::to_string(&policy).unwrap());
        println!("---\n{}", serde_yaml::to_string(&binding).unwrap());
    }
}
