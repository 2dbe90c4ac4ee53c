//! The ValidatingAdmissionPolicy that lets only the operator write Grants.
//!
//! Grants are what the broker and the webhook read to decide who may have a
//! secret. Namespace-admin roles with wildcards often allow creating any
//! custom resource in one's own namespace, so without this policy a tenant
//! could write itself a Grant for another namespace's secret. The broker
//! and webhook also check each Grant's provenance (see
//! `ferry_runtime::grant_index`); this policy keeps forged Grants out of
//! etcd in the first place.

use ferry_contract::API_GROUP;
use k8s_openapi::api::admissionregistration::v1::{
    MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicySpec, Variable,
};

use super::{cel_list, deny_binding, forbidden, metadata};

/// Name of the policy and of its binding.
pub const GRANT_POLICY_NAME: &str = "ferry-grant-writers";

/// Who may delete Grants besides the writers: the namespace controller
/// empties a namespace being deleted, and the garbage collector follows
/// owner references (as service accounts of their own, or as the
/// controller-manager when it runs without per-controller credentials).
pub const GRANT_CLEANERS: [&str; 3] = [
    "system:serviceaccount:kube-system:namespace-controller",
    "system:serviceaccount:kube-system:generic-garbage-collector",
    "system:kube-controller-manager",
];

/// The username of the operator's service account in `namespace`.
pub fn operator_username(namespace: &str) -> String {
    format!("system:serviceaccount:{namespace}:ferry-operator")
}

/// The policy letting only `writers` (usernames) create, update or delete
/// Grants, and [`GRANT_CLEANERS`] delete them; and its binding, which
/// denies everything else.
pub fn grant_admission_policy(
    writers: &[String],
) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let policy = ValidatingAdmissionPolicy {
        metadata: metadata(GRANT_POLICY_NAME),
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![NamedRuleWithOperations {
                    api_groups: Some(vec![API_GROUP.into()]),
                    api_versions: Some(vec!["*".into()]),
                    operations: Some(vec!["CREATE".into(), "UPDATE".into(), "DELETE".into()]),
                    resources: Some(vec!["grants".into(), "grants/*".into()]),
                    ..NamedRuleWithOperations::default()
                }]),
                ..MatchResources::default()
            }),
            variables: Some(vec![
                Variable {
                    name: "writers".into(),
                    expression: cel_list(writers.iter().map(String::as_str)),
                },
                Variable {
                    name: "cleaners".into(),
                    expression: cel_list(GRANT_CLEANERS),
                },
            ]),
            validations: Some(vec![forbidden(
                "request.userInfo.username in variables.writers || \
                 (request.operation == 'DELETE' && \
                 request.userInfo.username in variables.cleaners)",
                "\"Grants are written by the ferry operator only, not by \" + \
                 request.userInfo.username + \
                 \": write an AccessPolicy in the namespace of the secret instead\"",
            )]),
            ..ValidatingAdmissionPolicySpec::default()
        }),
        ..ValidatingAdmissionPolicy::default()
    };
    (policy, deny_binding(GRANT_POLICY_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_become_a_cel_list_of_quoted_names() {
        let (policy, binding) = grant_admission_policy(&[operator_username("ferry-system")]);
        let spec = policy.spec.unwrap();
        let variables = spec.variables.unwrap();
        assert_eq!(
            variables[0].expression,
            "['system:serviceaccount:ferry-system:ferry-operator']"
        );
        assert_eq!(
            binding.spec.unwrap().policy_name.as_deref(),
            Some(GRANT_POLICY_NAME)
        );
    }
}
