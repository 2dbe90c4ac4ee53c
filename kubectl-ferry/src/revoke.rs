//! `kubectl ferry revoke`: an incident responder's Revocation (see
//! `ferry_api::revocation`), created, listed and lifted. Creating one
//! takes the target's live leases away at once and refuses new ones while
//! it exists; deleting it (`lift`) lifts the block.

use ferry_api::resources::{Revocation, RevocationSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use serde::Serialize;

use crate::output::{Output, Table};
use crate::target::Target;

/// What a Revocation can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A pod (and the next pod of that name).
    Pod,
    /// Every pod of a service account.
    ServiceAccount,
    /// Every lease of a BrokeredSecret.
    Secret,
    /// Every Grant of an AccessPolicy.
    Policy,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Self::Pod => "pod",
            Self::ServiceAccount => "sa",
            Self::Secret => "secret",
            Self::Policy => "policy",
        }
    }
}

/// The longest generated prefix: names are at most 253 characters, and
/// the apiserver appends five.
const MAX_PREFIX: usize = 200;

/// The Revocation of `target` (in the target's namespace) for `reason`,
/// named `name` or `<kind>-<target>-` and a generated suffix.
pub fn revocation(kind: Kind, target: &Target, reason: &str, name: Option<&str>) -> Revocation {
    let mut prefix = format!("{}-{}-", kind.word(), target.name);
    prefix.truncate(MAX_PREFIX);
    let named = Some(target.name.clone());
    let spec = RevocationSpec {
        pod: named.clone().filter(|_| kind == Kind::Pod),
        service_account: named.clone().filter(|_| kind == Kind::ServiceAccount),
        secret: named.clone().filter(|_| kind == Kind::Secret),
        policy: named.filter(|_| kind == Kind::Policy),
        reason: reason.to_owned(),
    };
    Revocation {
        metadata: ObjectMeta {
            name: name.map(str::to_owned),
            generate_name: name.is_none().then_some(prefix),
            namespace: Some(target.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}

/// A Revocation as the plugin shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevocationView {
    /// `namespace/name`.
    pub revocation: String,
    /// `kind namespace/name` of what it revokes.
    pub target: String,
    /// `Active`, `Invalid`, or none before the operator has looked (it is
    /// in force from the moment it exists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Why.
    pub reason: String,
    /// When it was created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

impl From<&Revocation> for RevocationView {
    fn from(revocation: &Revocation) -> Self {
        Self {
            revocation: format!(
                "{}/{}",
                revocation.namespace().unwrap_or_default(),
                revocation.name_any()
            ),
            target: ferry_api::revocation::describe(revocation),
            phase: revocation
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .map(|p| p.as_str().to_owned()),
            reason: revocation.spec.reason.clone(),
            created: revocation
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string()),
        }
    }
}

/// The Revocations as a table.
pub fn table(revocations: &[RevocationView], output: &Output) -> String {
    if revocations.is_empty() && !output.no_headers {
        return "No Revocations found.\n".to_owned();
    }
    let mut table = Table::new(&["revocation", "target", "phase", "created", "reason"]);
    for view in revocations {
        table.row(vec![
            view.revocation.clone(),
            view.target.clone(),
            view.phase.clone().unwrap_or_default(),
            view.created.clone().unwrap_or_default(),
            view.reason.clone(),
        ]);
    }
    table.render(output.no_headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_names_exactly_its_one_target_in_the_targets_namespace() {
        let target = Target {
            namespace: "shop".into(),
            name: "checkout".into(),
        };
        let revocation = revocation(Kind::ServiceAccount, &target, "INC-4711", None);
        assert_eq!(revocation.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(
            revocation.metadata.generate_name.as_deref(),
            Some("sa-checkout-")
        );
        assert_eq!(revocation.spec.service_account.as_deref(), Some("checkout"));
        assert_eq!(
            (
                revocation.spec.pod.as_ref(),
                revocation.spec.secret.as_ref(),
                revocation.spec.policy.as_ref()
            ),
            (None, None, None)
        );
        assert_eq!(
            RevocationView::from(&revocation).target,
            "serviceaccount shop/checkout"
        );
    }
}
