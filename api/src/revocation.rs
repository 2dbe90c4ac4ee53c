//! What a Revocation takes away, as pure functions over names: whether it
//! blocks a holder (a pod asking for, or holding, a lease of a secret) and
//! whether it voids a Grant's policy. The broker applies these to every
//! request and every live lease; the operator and `kubectl ferry` use the
//! same words for the target.

use kube::ResourceExt;

use crate::resources::{PolicyReference, Revocation, RevocationPhase, SecretReference};

/// What a Revocation names, in its own namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// One pod (by name: the next pod of that name is blocked too).
    Pod(&'a str),
    /// Every pod of one service account.
    ServiceAccount(&'a str),
    /// Every lease of one BrokeredSecret.
    Secret(&'a str),
    /// Every Grant of one AccessPolicy.
    Policy(&'a str),
}

impl Target<'_> {
    /// The kind of thing named, as `kubectl` spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Pod(_) => "pod",
            Self::ServiceAccount(_) => "serviceaccount",
            Self::Secret(_) => "brokeredsecret",
            Self::Policy(_) => "accesspolicy",
        }
    }

    /// The name of the thing named.
    pub fn name(&self) -> &str {
        match self {
            Self::Pod(name)
            | Self::ServiceAccount(name)
            | Self::Secret(name)
            | Self::Policy(name) => name,
        }
    }
}

/// The one target a Revocation names (the schema admits exactly one).
pub fn target(revocation: &Revocation) -> Option<Target<'_>> {
    let spec = &revocation.spec;
    match (&spec.pod, &spec.service_account, &spec.secret, &spec.policy) {
        (Some(pod), None, None, None) => Some(Target::Pod(pod)),
        (None, Some(account), None, None) => Some(Target::ServiceAccount(account)),
        (None, None, Some(secret), None) => Some(Target::Secret(secret)),
        (None, None, None, Some(policy)) => Some(Target::Policy(policy)),
        _ => None,
    }
}

/// The target as status shows it: `kind namespace/name`.
pub fn describe(revocation: &Revocation) -> String {
    let namespace = revocation.namespace().unwrap_or_default();
    match target(revocation) {
        Some(target) => format!("{} {namespace}/{}", target.kind(), target.name()),
        None => "nothing (name exactly one target)".into(),
    }
}

/// Whether the Revocation is in force: any Revocation not judged Invalid
/// (the broker acts before the operator has looked, so a responder's
/// order takes effect at once).
pub fn in_force(revocation: &Revocation) -> bool {
    revocation.metadata.deletion_timestamp.is_none()
        && revocation.status.as_ref().and_then(|status| status.phase)
            != Some(RevocationPhase::Invalid)
}

/// Who holds, or asks for, a lease.
#[derive(Debug, Clone, Copy)]
pub struct Holder<'a> {
    /// The pod's namespace.
    pub namespace: &'a str,
    /// The pod's name.
    pub pod: &'a str,
    /// The pod's service account.
    pub service_account: &'a str,
    /// The BrokeredSecret.
    pub secret: &'a SecretReference,
}

/// Whether `revocation` takes every lease of `holder` away, whatever Grant
/// allowed it (a pod, service account or secret target).
pub fn blocks_holder(revocation: &Revocation, holder: &Holder<'_>) -> bool {
    let Some(namespace) = revocation.metadata.namespace.as_deref() else {
        return false;
    };
    match target(revocation) {
        Some(Target::Pod(pod)) => namespace == holder.namespace && pod == holder.pod,
        Some(Target::ServiceAccount(account)) => {
            namespace == holder.namespace && account == holder.service_account
        }
        Some(Target::Secret(secret)) => {
            namespace == holder.secret.namespace && secret == holder.secret.name
        }
        Some(Target::Policy(_)) | None => false,
    }
}

/// Whether `revocation` voids the Grants of `policy` (a policy target).
pub fn voids_policy(revocation: &Revocation, policy: &PolicyReference) -> bool {
    revocation.metadata.namespace.as_deref() == Some(policy.namespace.as_str())
        && target(revocation) == Some(Target::Policy(&policy.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{RevocationSpec, RevocationStatus};

    fn revocation(namespace: &str, spec: RevocationSpec) -> Revocation {
        let mut revocation = Revocation::new("incident", spec);
        revocation.metadata.namespace = Some(namespace.into());
        revocation
    }

    fn spec() -> RevocationSpec {
        RevocationSpec {
            pod: None,
            service_account: None,
            secret: None,
            policy: None,
            reason: "compromised".into(),
        }
    }

    fn db() -> SecretReference {
        SecretReference {
            namespace: "payments".into(),
            name: "orders-db".into(),
        }
    }

    fn holder<'a>(pod: &'a str, account: &'a str, secret: &'a SecretReference) -> Holder<'a> {
        Holder {
            namespace: "shop",
            pod,
            service_account: account,
            secret,
        }
    }

    #[test]
    fn a_pod_target_blocks_that_pod_in_its_namespace_only() {
        let rv = revocation(
            "shop",
            RevocationSpec {
                pod: Some("web-1".into()),
                ..spec()
            },
        );
        let secret = db();
        assert!(blocks_holder(&rv, &holder("web-1", "web", &secret)));
        assert!(!blocks_holder(&rv, &holder("web-2", "web", &secret)));
        let elsewhere = revocation(
            "other",
            RevocationSpec {
                pod: Some("web-1".into()),
                ..spec()
            },
        );
        assert!(!blocks_holder(&elsewhere, &holder("web-1", "web", &secret)));
        assert_eq!(describe(&rv), "pod shop/web-1");
    }

    #[test]
    fn a_service_account_target_blocks_all_its_pods() {
        let rv = revocation(
            "shop",
            RevocationSpec {
                service_account: Some("web".into()),
                ..spec()
            },
        );
        let secret = db();
        assert!(blocks_holder(&rv, &holder("web-1", "web", &secret)));
        assert!(blocks_holder(&rv, &holder("web-2", "web", &secret)));
        assert!(!blocks_holder(&rv, &holder("api-1", "api", &secret)));
    }

    #[test]
    fn a_secret_target_is_in_the_secrets_namespace_and_blocks_every_consumer() {
        let rv = revocation(
            "payments",
            RevocationSpec {
                secret: Some("orders-db".into()),
                ..spec()
            },
        );
        let secret = db();
        let other = SecretReference {
            namespace: "payments".into(),
            name: "ledger-db".into(),
        };
        assert!(blocks_holder(&rv, &holder("web-1", "web", &secret)));
        assert!(blocks_holder(&rv, &holder("api-1", "api", &secret)));
        assert!(!blocks_holder(&rv, &holder("web-1", "web", &other)));
        // A consumer cannot revoke the owner's secret for everyone.
        let consumer = revocation(
            "shop",
            RevocationSpec {
                secret: Some("orders-db".into()),
                ..spec()
            },
        );
        assert!(!blocks_holder(&consumer, &holder("web-1", "web", &secret)));
    }

    #[test]
    fn a_policy_target_voids_that_policys_grants_and_blocks_no_holder_by_itself() {
        let rv = revocation(
            "payments",
            RevocationSpec {
                policy: Some("web-reads-orders".into()),
                ..spec()
            },
        );
        let policy = |namespace: &str, name: &str| PolicyReference {
            namespace: namespace.into(),
            name: name.into(),
            uid: "u".into(),
        };
        assert!(voids_policy(&rv, &policy("payments", "web-reads-orders")));
        assert!(!voids_policy(&rv, &policy("payments", "api-reads-orders")));
        assert!(!voids_policy(&rv, &policy("shop", "web-reads-orders")));
        let secret = db();
        assert!(!blocks_holder(&rv, &holder("web-1", "web", &secret)));
        assert_eq!(describe(&rv), "accesspolicy payments/web-reads-orders");
    }

    #[test]
    fn an_invalid_or_deleted_revocation_is_not_in_force() {
        let mut rv = revocation(
            "shop",
            RevocationSpec {
                pod: Some("web-1".into()),
                ..spec()
            },
        );
        assert!(in_force(&rv));
        rv.status = Some(RevocationStatus {
            phase: Some(RevocationPhase::Active),
            ..RevocationStatus::default()
        });
        assert!(in_force(&rv));
        rv.status = Some(RevocationStatus {
            phase: Some(RevocationPhase::Invalid),
            ..RevocationStatus::default()
        });
        assert!(!in_force(&rv));
    }
}
