//! Who may have a secret, and may this service account: answered from the
//! Grants, AccessPolicies and BrokeredSecret the caller can read, with the
//! broker's own rules. A Grant counts only if the runtime's `GrantIndex`
//! (what the broker and the webhook consult) honours it — the operator
//! wrote it and its AccessPolicy still names that subject and secret — and
//! `grant_is_valid_at` says it has not ended; the BrokeredSecret must exist
//! and not be refused by the installation (the operator's `Ready` reason);
//! and no Revocation in force may block the service account or the secret,
//! or void the Grant's policy (`ferry_api::revocation`, as the broker
//! applies it).

use ferry_api::grants::grant_is_valid_at;
use ferry_api::resources::{
    AccessPolicy, AccessRequest, BrokeredSecret, Grant, PolicyReference, RequestPhase, Revocation,
    SecretReference,
};
use ferry_api::revocation::{Holder, blocks_holder, in_force, voids_policy};
use ferry_runtime::grant_index::GrantIndex;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;

use crate::target::Target;

/// Ready reasons the broker refuses a secret for, whatever the Grants say
/// (the installation's limits and the Secret's opt-in).
const REFUSING_REASONS: [&str; 3] = [
    "NamespaceRefused",
    "IssuerNotAllowed",
    "SecretNotBrokerable",
];

/// What the answers are computed from.
#[derive(Debug, Clone, Default)]
pub struct AccessWorld {
    /// Grants (of one namespace for can-i, of all for who-can).
    pub grants: Vec<Grant>,
    /// The AccessPolicies of the secret's namespace.
    pub policies: Vec<AccessPolicy>,
    /// The AccessRequests of the secret's namespace (may be empty).
    pub requests: Vec<AccessRequest>,
    /// The BrokeredSecret, if it exists.
    pub secret: Option<BrokeredSecret>,
    /// The Revocations of the service account's and the secret's
    /// namespaces; `None` when the caller may not read them (then a yes
    /// says so).
    pub revocations: Option<Vec<Revocation>>,
}

/// One Grant of a secret, as who-can and can-i show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantView {
    /// The service account, `namespace/name`.
    pub service_account: String,
    /// The Grant, `namespace/name`.
    pub grant: String,
    /// The AccessPolicy it comes from, `namespace/name`.
    pub policy: String,
    /// Its maxTtl.
    pub max_ttl: String,
    /// JWT/OAuth2 audiences, if narrowed to any.
    pub audience: Vec<String>,
    /// JWT/OAuth2 scopes.
    pub scopes: Vec<String>,
    /// When it ends (RFC 3339), if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<String>,
    /// The approved AccessRequest behind it, if its policy needs approval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// `Active`, `Ended` (validUntil passed), `Revoked` (a Revocation
    /// blocks its service account or secret, or voids its policy) or
    /// `NotHonoured` (the broker ignores it: its policy no longer names
    /// this subject and secret, or the operator did not write it).
    pub state: &'static str,
    /// The Revocation that takes it away, `namespace/name`, when Revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
}

/// The Revocation in force, of `revocations`, that takes `grant`'s access
/// away: one blocking its service account or its secret, or voiding its
/// policy.
fn revocation_of<'a>(grant: &Grant, revocations: &'a [Revocation]) -> Option<&'a Revocation> {
    let namespace = grant.metadata.namespace.as_deref().unwrap_or_default();
    let holder = Holder {
        namespace,
        // A service account's question names no pod.
        pod: "",
        service_account: &grant.spec.service_account,
        secret: &grant.spec.secret,
    };
    let policy: &PolicyReference = &grant.spec.policy;
    revocations
        .iter()
        .filter(|r| in_force(r))
        .find(|revocation| blocks_holder(revocation, &holder) || voids_policy(revocation, policy))
}

fn qualified(revocation: &Revocation) -> String {
    format!(
        "{}/{}",
        revocation.namespace().unwrap_or_default(),
        revocation.name_any()
    )
}

fn reference(secret: &Target) -> SecretReference {
    SecretReference {
        namespace: secret.namespace.clone(),
        name: secret.name.clone(),
    }
}

/// The approval behind `grant`: the approved request whose status lists it.
fn approval_of(grant: &Grant, requests: &[AccessRequest]) -> Option<String> {
    let qualified = format!(
        "{}/{}",
        grant.namespace().unwrap_or_default(),
        grant.name_any()
    );
    requests.iter().find_map(|request| {
        let status = request.status.as_ref()?;
        status.grants.contains(&qualified).then(|| {
            let phase = status.phase.map_or("Unknown", RequestPhase::as_str);
            let approver = status.approver.as_deref().unwrap_or("nobody yet");
            format!(
                "AccessRequest {} by {} ({phase}, approver {approver})",
                request.name_any(),
                request.spec.requester
            )
        })
    })
}

/// Every Grant in `world` of `secret`, judged as the broker would judge it.
pub fn grants_of(secret: &Target, world: &AccessWorld, now: Timestamp) -> Vec<GrantView> {
    let wanted = reference(secret);
    let index = GrantIndex::from_objects(world.grants.clone(), world.policies.clone());
    let mut views: Vec<GrantView> = world
        .grants
        .iter()
        .filter(|grant| grant.spec.secret == wanted)
        .map(|grant| {
            let namespace = grant.namespace().unwrap_or_default();
            let honoured = index
                .grants_for(&namespace, &grant.spec.service_account, &wanted)
                .iter()
                .any(|g| g.name_any() == grant.name_any());
            let revoked = world
                .revocations
                .as_deref()
                .and_then(|revocations| revocation_of(grant, revocations));
            let state = if !honoured {
                "NotHonoured"
            } else if !grant_is_valid_at(grant, now) {
                "Ended"
            } else if revoked.is_some() {
                "Revoked"
            } else {
                "Active"
            };
            GrantView {
                service_account: format!("{namespace}/{}", grant.spec.service_account),
                grant: format!("{namespace}/{}", grant.name_any()),
                policy: format!("{}/{}", grant.spec.policy.namespace, grant.spec.policy.name),
                max_ttl: grant.spec.max_ttl.clone(),
                audience: grant.spec.audience.clone(),
                scopes: grant.spec.scopes.clone(),
                valid_until: grant.spec.valid_until.as_ref().map(|t| t.0.to_string()),
                approval: approval_of(grant, &world.requests),
                state,
                revoked_by: revoked.map(qualified),
            }
        })
        .collect();
    views.sort_by(|a, b| (&a.service_account, &a.grant).cmp(&(&b.service_account, &b.grant)));
    views
}

/// The answer to `can-i`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// Whether the broker would issue the secret to a pod of the service
    /// account now.
    pub allowed: bool,
    /// Why, in a sentence that names what to change.
    pub reason: String,
    /// The Grant that allows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantView>,
}

/// Whether pods of `service_account` may get `secret` now, and why.
pub fn decide(
    service_account: &Target,
    secret: &Target,
    world: &AccessWorld,
    now: Timestamp,
) -> Decision {
    let views = grants_of(secret, world, now);
    let own: Vec<&GrantView> = views
        .iter()
        .filter(|v| v.service_account == service_account.to_string())
        .collect();
    let no = |reason: String| Decision {
        allowed: false,
        reason,
        grant: None,
    };
    // A Revocation of the service account or the secret refuses whatever
    // the Grants say, as the broker's first check does.
    let holder_revoked = world.revocations.as_deref().and_then(|revocations| {
        let reference = reference(secret);
        let holder = Holder {
            namespace: &service_account.namespace,
            pod: "",
            service_account: &service_account.name,
            secret: &reference,
        };
        revocations
            .iter()
            .find(|r| in_force(r) && blocks_holder(r, &holder))
    });
    if let Some(revocation) = holder_revoked {
        return no(format!(
            "Revocation {} ({}) takes access of service account {service_account} to {secret} away: {}",
            qualified(revocation),
            ferry_api::revocation::describe(revocation),
            revocation.spec.reason
        ));
    }
    let Some(active) = own.iter().find(|v| v.state == "Active") else {
        if let Some(revoked) = own.iter().find(|v| v.state == "Revoked") {
            let by = revoked.revoked_by.as_deref().unwrap_or("a Revocation");
            let why = world
                .revocations
                .iter()
                .flatten()
                .find(|r| qualified(r) == by)
                .map(|r| format!(": {}", r.spec.reason))
                .unwrap_or_default();
            return no(format!(
                "Grant {} from AccessPolicy {} is revoked by Revocation {by}{why}",
                revoked.grant, revoked.policy
            ));
        }
        if let Some(ended) = own.iter().find(|v| v.state == "Ended") {
            return no(format!(
                "Grant {} from AccessPolicy {} ended at {}",
                ended.grant,
                ended.policy,
                ended.valid_until.as_deref().unwrap_or("its validUntil")
            ));
        }
        if let Some(ignored) = own.first() {
            return no(format!(
                "Grant {} is not honoured: AccessPolicy {} no longer names service account \
                 {service_account} and BrokeredSecret {secret} as the Grant says (or the \
                 operator did not write it)",
                ignored.grant, ignored.policy
            ));
        }
        return no(no_grant_reason(service_account, secret, world));
    };
    let Some(found) = &world.secret else {
        return no(format!(
            "Grant {} allows it, but BrokeredSecret {secret} does not exist",
            active.grant
        ));
    };
    let ready = found
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    if let Some(ready) =
        ready.filter(|c| c.status == "False" && REFUSING_REASONS.contains(&c.reason.as_str()))
    {
        return no(format!(
            "Grant {} allows it, but the broker refuses BrokeredSecret {secret}: {}: {}",
            active.grant, ready.reason, ready.message
        ));
    }
    let mut reason = format!(
        "Grant {} from AccessPolicy {}: maxTtl {}",
        active.grant, active.policy, active.max_ttl
    );
    if !active.audience.is_empty() {
        reason.push_str(&format!(", audience {}", active.audience.join(",")));
    }
    if !active.scopes.is_empty() {
        reason.push_str(&format!(", scopes {}", active.scopes.join(",")));
    }
    if let Some(until) = &active.valid_until {
        reason.push_str(&format!(", until {until}"));
    }
    if let Some(approval) = &active.approval {
        reason.push_str(&format!(", approved through {approval}"));
    }
    if let Some(ready) = ready.filter(|c| c.status == "False") {
        reason.push_str(&format!(
            "; but BrokeredSecret {secret} is not Ready ({}: {}), so issuing will fail",
            ready.reason, ready.message
        ));
    }
    if world.revocations.is_none() {
        reason.push_str(" (Revocations could not be read: one may still block it)");
    }
    Decision {
        allowed: true,
        reason,
        grant: Some((*active).clone()),
    }
}

/// Why there is no Grant at all: a policy that needs approval, or none.
fn no_grant_reason(service_account: &Target, secret: &Target, world: &AccessWorld) -> String {
    let names_subject = |policy: &AccessPolicy| {
        policy.spec.secrets.iter().any(|s| s.name == secret.name)
            && policy.spec.subjects.iter().any(|subject| {
                subject.service_account.as_ref().is_some_and(|sa| {
                    sa.namespace == service_account.namespace && sa.name == service_account.name
                }) || subject.service_account_name.as_deref() == Some(service_account.name.as_str())
            })
    };
    let candidates: Vec<&AccessPolicy> =
        world.policies.iter().filter(|p| names_subject(p)).collect();
    if let Some(policy) = candidates.iter().find(|p| p.spec.approval.is_some()) {
        return format!(
            "AccessPolicy {}/{} names service account {service_account} for {secret} but \
             requires approval: ask with kubectl ferry request {}/{} --service-account \
             {service_account} --duration 30m --reason ...",
            secret.namespace,
            policy.name_any(),
            secret.namespace,
            policy.name_any()
        );
    }
    if let Some(policy) = candidates.first() {
        let ready = policy
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
        return match ready.filter(|c| c.status == "False") {
            Some(c) => format!(
                "AccessPolicy {}/{} names service account {service_account} but grants \
                 nothing: {}: {}",
                secret.namespace,
                policy.name_any(),
                c.reason,
                c.message
            ),
            None => format!(
                "AccessPolicy {}/{} names service account {service_account}, but no Grant \
                 exists yet (the operator writes it; is it running?)",
                secret.namespace,
                policy.name_any()
            ),
        };
    }
    format!(
        "service account {service_account} has no Grant for BrokeredSecret {secret}: an \
         AccessPolicy in namespace {} must name it",
        secret.namespace
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::grants::{PolicyWorld, derive_grants};
    use ferry_api::testing;
    use std::collections::BTreeMap;

    fn now() -> Timestamp {
        "2026-06-01T00:00:00Z".parse().unwrap()
    }

    fn world(policy: AccessPolicy) -> AccessWorld {
        let secret = testing::brokered_secret("payments", "orders-db")
            .postgres("admin", "dsn")
            .build();
        let secrets = BTreeMap::from([("orders-db".to_owned(), secret.clone())]);
        let grants = derive_grants(
            &policy,
            PolicyWorld {
                secrets: &secrets,
                namespaces: &[],
                now: now(),
                approved: &[],
            },
        )
        .grants;
        AccessWorld {
            grants,
            policies: vec![policy],
            requests: vec![],
            secret: Some(secret),
            revocations: Some(vec![]),
        }
    }

    fn policy() -> testing::AccessPolicyBuilder {
        testing::access_policy("payments", "checkout-reads")
            .uid("uid-1")
            .service_account("shop", "checkout")
    }

    fn target(ns: &str, name: &str) -> Target {
        Target {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_granted_service_account_may_and_the_reason_names_the_grant() {
        let world = world(
            policy()
                .narrowed(testing::secret_access("orders-db").max_ttl("10m"))
                .build(),
        );
        let decision = decide(
            &target("shop", "checkout"),
            &target("payments", "orders-db"),
            &world,
            now(),
        );
        assert!(decision.allowed, "{decision:?}");
        assert!(
            decision
                .reason
                .contains("payments.checkout-reads.orders-db.checkout"),
            "{}",
            decision.reason
        );
        assert!(
            decision.reason.contains("maxTtl 10m"),
            "{}",
            decision.reason
        );
    }

    #[test]
    fn another_service_account_may_not_and_is_told_a_policy_must_name_it() {
        let world = world(
            policy()
                .narrowed(testing::secret_access("orders-db"))
                .build(),
        );
        let decision = decide(
            &target("shop", "refunds"),
            &target("payments", "orders-db"),
            &world,
            now(),
        );
        assert!(!decision.allowed);
        assert!(
            decision
                .reason
                .contains("an AccessPolicy in namespace payments must name it"),
            "{}",
            decision.reason
        );
    }

    #[test]
    fn a_grant_its_policy_no_longer_names_is_not_honoured() {
        let mut world = world(
            policy()
                .narrowed(testing::secret_access("orders-db"))
                .build(),
        );
        world.policies[0].spec.subjects.clear();
        let decision = decide(
            &target("shop", "checkout"),
            &target("payments", "orders-db"),
            &world,
            now(),
        );
        assert!(!decision.allowed);
        assert!(
            decision.reason.contains("is not honoured"),
            "{}",
            decision.reason
        );
        assert_eq!(
            grants_of(&target("payments", "orders-db"), &world, now())[0].state,
            "NotHonoured"
        );
    }

    fn revocation(namespace: &str, spec: serde_json::Value) -> Revocation {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "Revocation",
            "metadata": {"name": "incident", "namespace": namespace},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn a_revocation_of_the_account_the_secret_or_the_policy_is_a_no() {
        for (namespace, spec) in [
            (
                "shop",
                serde_json::json!({"serviceAccount": "checkout", "reason": "INC-1"}),
            ),
            (
                "payments",
                serde_json::json!({"secret": "orders-db", "reason": "INC-1"}),
            ),
            (
                "payments",
                serde_json::json!({"policy": "checkout-reads", "reason": "INC-1"}),
            ),
        ] {
            let mut world = world(
                policy()
                    .narrowed(testing::secret_access("orders-db"))
                    .build(),
            );
            world.revocations = Some(vec![revocation(namespace, spec.clone())]);
            let decision = decide(
                &target("shop", "checkout"),
                &target("payments", "orders-db"),
                &world,
                now(),
            );
            assert!(!decision.allowed, "{spec}: {decision:?}");
            assert!(
                decision
                    .reason
                    .contains(&format!("Revocation {namespace}/incident")),
                "{}",
                decision.reason
            );
            assert!(decision.reason.contains("INC-1"), "{}", decision.reason);
        }
        // A pod's Revocation does not answer for its service account.
        let mut world = world(
            policy()
                .narrowed(testing::secret_access("orders-db"))
                .build(),
        );
        world.revocations = Some(vec![revocation(
            "shop",
            serde_json::json!({"pod": "checkout-1", "reason": "INC-1"}),
        )]);
        assert!(
            decide(
                &target("shop", "checkout"),
                &target("payments", "orders-db"),
                &world,
                now()
            )
            .allowed
        );
    }

    #[test]
    fn a_missing_brokered_secret_is_a_no() {
        let mut world = world(
            policy()
                .narrowed(testing::secret_access("orders-db"))
                .build(),
        );
        world.secret = None;
        let decision = decide(
            &target("shop", "checkout"),
            &target("payments", "orders-db"),
            &world,
            now(),
        );
        assert!(!decision.allowed);
        assert!(
            decision.reason.contains("does not exist"),
            "{}",
            decision.reason
        );
    }
}
