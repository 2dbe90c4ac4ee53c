//! The ValidatingAdmissionPolicy that narrows the broker's Secret updates
//! to what it needs them for.
//!
//! The broker writes a rotated refresh token back into the credentials
//! Secret of an oauth2 BrokeredSecret (grant RefreshToken), with the
//! annotation by which one replica at a time claims that token, and the
//! sealed access token its replicas share. Its RBAC therefore allows
//! updating Secrets cluster-wide, and RBAC cannot say "only Secrets their
//! owner opted in, only those entries". This policy says it: an update by
//! the broker's service account must leave everything but those entries
//! as it was, on a Secret its owner labelled brokerable, outside ferry's
//! own namespace (and the namespaces no BrokeredSecret is served from). The broker's JWT-key
//! and lease-key Secrets in ferry's namespace, which a Role lets it
//! rotate, are not matched. Should the broker's credentials leak, they
//! cannot rewrite anyone's Secret.
//!
//! An admin connection string the broker rotates (postgres sources) is the
//! one exception the Secret's owner grants: with the annotation
//! `ferry.dev/rotatable-key: <key>` (which the broker cannot change) the
//! broker may change that key (never add or remove it) and add, change or
//! remove `<key>.next`, where it stages the new string, and note the
//! rotation in the annotation `ferry.dev/rotated-at`.

use ferry_api::checks::oauth2_keys;
use ferry_contract::{
    BROKER_JWT_KEY_SECRET, BROKER_LEASE_KEY_SECRET, BROKERABLE, BROKERABLE_LABEL,
    BROKERABLE_SENSITIVE, CURRENT_ACCESS_TOKEN_KEY, NEXT_KEY_SUFFIX,
    REFRESH_TOKEN_CLAIM_ANNOTATION, REFUSED_NAMESPACES, ROTATABLE_KEY_ANNOTATION,
    ROTATED_AT_ANNOTATION, SENSITIVE_SECRET_TYPES,
};
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicySpec, Validation, Variable,
};

use super::{cel_list, cel_string, deny_binding, forbidden, metadata};

/// Name of the policy and of its binding.
pub const BROKER_SECRET_POLICY_NAME: &str = "ferry-broker-secret-writes";

/// The data keys the broker may change, but never add or remove: the
/// refresh token it rotates, which the Secret's owner put there.
pub const ROTATED_KEYS: [&str; 1] = [oauth2_keys::REFRESH_TOKEN];

/// The data keys the broker may add, change or remove: its own, the access
/// token its replicas share.
pub const BROKER_KEYS: [&str; 1] = [CURRENT_ACCESS_TOKEN_KEY];

/// The annotations the broker may add, change or remove: its claim on the
/// refresh token, and when it last rotated an admin credential.
pub const WRITABLE_ANNOTATIONS: [&str; 2] = [REFRESH_TOKEN_CLAIM_ANNOTATION, ROTATED_AT_ANNOTATION];

/// The username of the broker's service account in `namespace`.
pub fn broker_username(namespace: &str) -> String {
    format!("system:serviceaccount:{namespace}:ferry-broker")
}

fn variable(name: &str, expression: impl Into<String>) -> Variable {
    Variable {
        name: name.into(),
        expression: expression.into(),
    }
}

/// A validation refusing with `Forbidden` and a message that names the
/// Secret (`variables.denied`) and goes on with `why`, a CEL string
/// expression naming what was refused (never a value).
fn refusal(expression: impl Into<String>, why: &str) -> Validation {
    forbidden(expression, format!("variables.denied + {why}"))
}

/// The policy narrowing the updates of Secrets by the broker of ferry's
/// `namespace`, and its binding, which denies what the policy refuses.
pub fn broker_secret_policy(
    namespace: &str,
) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let closed_namespaces: Vec<&str> = std::iter::once(namespace)
        .chain(REFUSED_NAMESPACES)
        .collect();
    // Labels, annotations and data are absent, not empty, on a Secret
    // without any: each is read through `?` with an empty default.
    let variables = vec![
        variable(
            "denied",
            "'the ferry broker may not update Secret ' + request.namespace + '/' + \
             request.name + ': '",
        ),
        variable("oldLabels", "oldObject.metadata.?labels.orValue({})"),
        variable("newLabels", "object.metadata.?labels.orValue({})"),
        variable(
            "optIn",
            format!(
                "variables.oldLabels[?{}].orValue('')",
                cel_string(BROKERABLE_LABEL)
            ),
        ),
        variable(
            "changedLabels",
            "variables.oldLabels.filter(k, !(k in variables.newLabels) || \
             variables.newLabels[k] != variables.oldLabels[k]) + \
             variables.newLabels.filter(k, !(k in variables.oldLabels))",
        ),
        variable(
            "oldAnnotations",
            "oldObject.metadata.?annotations.orValue({})",
        ),
        // The key the owner lets the broker rotate (an admin connection
        // string), as the Secret said before this update.
        variable(
            "rotatable",
            format!(
                "variables.oldAnnotations[?{}].orValue('')",
                cel_string(ROTATABLE_KEY_ANNOTATION)
            ),
        ),
        variable(
            "rotatedKeys",
            format!(
                "{} + (variables.rotatable == '' ? [] : [variables.rotatable])",
                cel_list(ROTATED_KEYS)
            ),
        ),
        variable(
            "brokerKeys",
            format!(
                "{} + (variables.rotatable == '' ? [] : [variables.rotatable + {}])",
                cel_list(BROKER_KEYS),
                cel_string(NEXT_KEY_SUFFIX)
            ),
        ),
        variable("oldData", "oldObject.?data.orValue({})"),
        variable("newData", "object.?data.orValue({})"),
        variable(
            "changedKeys",
            "variables.oldData.filter(k, !(k in variables.brokerKeys) && \
             (!(k in variables.newData) || (!(k in variables.rotatedKeys) && \
             variables.newData[k] != variables.oldData[k]))) + \
             variables.newData.filter(k, !(k in variables.brokerKeys) && \
             !(k in variables.oldData))",
        ),
        variable("writableAnnotations", cel_list(WRITABLE_ANNOTATIONS)),
        variable("newAnnotations", "object.metadata.?annotations.orValue({})"),
        variable(
            "changedAnnotations",
            "variables.oldAnnotations.filter(k, !(k in variables.writableAnnotations) && \
             (!(k in variables.newAnnotations) || \
             variables.newAnnotations[k] != variables.oldAnnotations[k])) + \
             variables.newAnnotations.filter(k, !(k in variables.writableAnnotations) && \
             !(k in variables.oldAnnotations))",
        ),
    ];
    let validations = vec![
        refusal(
            format!("!(request.namespace in {})", cel_list(closed_namespaces)),
            "'no BrokeredSecret is served from namespace ' + request.namespace",
        ),
        refusal(
            format!(
                "variables.optIn == {sensitive} || (variables.optIn == {plain} && \
                 !(oldObject.?type.orValue('') in {types}))",
                sensitive = cel_string(BROKERABLE_SENSITIVE),
                plain = cel_string(BROKERABLE),
                types = cel_list(SENSITIVE_SECRET_TYPES),
            ),
            &cel_string(&format!(
                "its owner has not opted it in with the label \
                 {BROKERABLE_LABEL}={BROKERABLE} \
                 ({BROKERABLE_SENSITIVE} for a type holding Kubernetes credentials)"
            )),
        ),
        refusal(
            "variables.changedLabels.size() == 0",
            "'it may not change labels (refused: ' + variables.changedLabels.join(', ') + ')'",
        ),
        refusal(
            "object.?type.orValue('') == oldObject.?type.orValue('')",
            "'it may not change the type'",
        ),
        refusal(
            "variables.changedKeys.size() == 0",
            "'it may change data key ' + variables.rotatedKeys.join(', ') + \
             ' (never adding or removing it) and write ' + variables.brokerKeys.join(', ') + \
             ' only (refused: ' + variables.changedKeys.join(', ') + ')'",
        ),
        refusal(
            "variables.changedAnnotations.size() == 0",
            "'it may change annotation ' + variables.writableAnnotations.join(', ') + \
             ' only (refused: ' + variables.changedAnnotations.join(', ') + ')'",
        ),
        refusal(
            "object.metadata.?ownerReferences.orValue([]) == \
             oldObject.metadata.?ownerReferences.orValue([]) && \
             object.metadata.?finalizers.orValue([]) == \
             oldObject.metadata.?finalizers.orValue([]) && \
             object.?immutable.orValue(false) == oldObject.?immutable.orValue(false)",
            "'it may not change owner references, finalizers or immutable'",
        ),
    ];
    let policy = ValidatingAdmissionPolicy {
        metadata: metadata(BROKER_SECRET_POLICY_NAME),
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![NamedRuleWithOperations {
                    api_groups: Some(vec![String::new()]),
                    api_versions: Some(vec!["v1".into()]),
                    operations: Some(vec!["UPDATE".into()]),
                    resources: Some(vec!["secrets".into()]),
                    ..NamedRuleWithOperations::default()
                }]),
                ..MatchResources::default()
            }),
            match_conditions: Some(vec![
                MatchCondition {
                    name: "by-the-broker".into(),
                    expression: format!(
                        "request.userInfo.username == {}",
                        cel_string(&broker_username(namespace))
                    ),
                },
                MatchCondition {
                    name: "not-its-own-keys".into(),
                    expression: format!(
                        "!(request.namespace == {} && request.name in {})",
                        cel_string(namespace),
                        cel_list([BROKER_JWT_KEY_SECRET, BROKER_LEASE_KEY_SECRET])
                    ),
                },
            ]),
            variables: Some(variables),
            validations: Some(validations),
            ..ValidatingAdmissionPolicySpec::default()
        }),
        ..ValidatingAdmissionPolicy::default()
    };
    (policy, deny_binding(BROKER_SECRET_POLICY_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_the_broker_and_the_jwt_keys_of_its_namespace() {
        let (policy, binding) = broker_secret_policy("ferry-system");
        let spec = policy.spec.unwrap();
        let conditions: Vec<String> = spec
            .match_conditions
            .unwrap()
            .into_iter()
            .map(|condition| condition.expression)
            .collect();
        assert_eq!(
            conditions,
            [
                "request.userInfo.username == 'system:serviceaccount:ferry-system:ferry-broker'",
                "!(request.namespace == 'ferry-system' && request.name in ['ferry-broker-jwt-keys', 'ferry-broker-lease-key'])",
            ]
        );
        assert_eq!(
            spec.validations.unwrap()[0].expression,
            "!(request.namespace in ['ferry-system', 'kube-system'])"
        );
        assert_eq!(
            binding.spec.unwrap().policy_name.as_deref(),
            Some(BROKER_SECRET_POLICY_NAME)
        );
    }
}
