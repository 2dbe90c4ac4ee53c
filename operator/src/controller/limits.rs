//! Caps on how many Grants policies may produce, so one AccessPolicy with
//! many `namespaceSelector: {}` subjects times many secrets cannot fill the
//! memory of the webhook and the broker (each keeps every Grant).

/// Default of `--max-grants-per-policy`.
pub const DEFAULT_MAX_GRANTS_PER_POLICY: usize = 1000;

/// Default of `--max-grants-per-namespace`.
pub const DEFAULT_MAX_GRANTS_PER_NAMESPACE: usize = 10_000;

/// The condition reason of a policy over a cap.
pub const TOO_MANY_GRANTS: &str = "TooManyGrants";

/// How many Grants policies may produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantLimits {
    /// Most Grants one AccessPolicy may produce.
    pub per_policy: usize,
    /// Most Grants the AccessPolicies of one namespace may produce together.
    pub per_namespace: usize,
}

impl Default for GrantLimits {
    fn default() -> Self {
        Self {
            per_policy: DEFAULT_MAX_GRANTS_PER_POLICY,
            per_namespace: DEFAULT_MAX_GRANTS_PER_NAMESPACE,
        }
    }
}

impl GrantLimits {
    /// Why a policy in `namespace` deriving `derived` Grants, while the
    /// namespace's other policies hold `others`, is over a cap; `None` if
    /// it is within both.
    pub fn exceeded(&self, namespace: &str, derived: usize, others: usize) -> Option<String> {
        if derived > self.per_policy {
            return Some(format!(
                "the policy would produce {derived} Grants, over the cap of {} per AccessPolicy \
                 (--max-grants-per-policy); no new Grant is written until it names fewer \
                 subjects or secrets",
                self.per_policy
            ));
        }
        let total = derived.saturating_add(others);
        if total > self.per_namespace {
            return Some(format!(
                "with the {others} Grants of other AccessPolicies in namespace {namespace}, the \
                 policy's {derived} would make {total}, over the cap of {} per namespace \
                 (--max-grants-per-namespace); no new Grant is written",
                self.per_namespace
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cap_is_named_when_exceeded() {
        let limits = GrantLimits {
            per_policy: 10,
            per_namespace: 15,
        };
        assert_eq!(limits.exceeded("payments", 10, 5), None);
        let policy = limits.exceeded("payments", 11, 0).unwrap();
        assert!(policy.contains("cap of 10 per AccessPolicy"), "{policy}");
        let namespace = limits.exceeded("payments", 10, 6).unwrap();
        assert!(namespace.contains("cap of 15 per namespace"), "{namespace}");
        assert!(namespace.contains("namespace payments"), "{namespace}");
    }
}
