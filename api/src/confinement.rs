//! What a BrokeredSecret may reach, whoever wrote it: the installation's
//! limits, applied the same way by the operator (the `Ready` condition) and
//! by the broker (before anything is issued).
//!
//! - No BrokeredSecret is served in ferry's own namespace (its lease key,
//!   JWT keys and CA key live there) or in `kube-system`.
//! - A JWT source may name an `issuer` other than the broker's only if the
//!   installation allows that issuer for the BrokeredSecret's namespace,
//!   so one namespace cannot mint tokens that claim another's issuer.
//! - A Secret is read for a BrokeredSecret only if its owner labelled it
//!   [`BROKERABLE_LABEL`]`: "true"`; a Secret holding Kubernetes' own
//!   credentials (service-account token, bootstrap token, TLS key) only
//!   with the stronger value [`BROKERABLE_SENSITIVE`].

use std::collections::{BTreeMap, BTreeSet};

use ferry_contract::{
    BROKERABLE, BROKERABLE_LABEL, BROKERABLE_SENSITIVE, DEFAULT_NAMESPACE, REFUSED_NAMESPACES,
    SENSITIVE_SECRET_TYPES,
};

use crate::resources::BrokeredSecret;

/// The installation's limits on BrokeredSecrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    /// ferry's own namespace: no BrokeredSecret there is served.
    pub namespace: String,
    /// For each namespace, the JWT issuers its BrokeredSecrets may name
    /// besides the broker's own (`*` as the namespace: every namespace).
    pub allowed_issuers: BTreeMap<String, BTreeSet<String>>,
}

impl Default for Installation {
    fn default() -> Self {
        Self {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            allowed_issuers: BTreeMap::new(),
        }
    }
}

/// Why a BrokeredSecret may not be served: a CamelCase reason for the
/// `Ready` condition and what a person reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `NamespaceRefused`, `IssuerNotAllowed` or `SecretNotBrokerable`.
    pub reason: &'static str,
    /// What to change, naming objects, never values of a Secret.
    pub message: String,
}

impl Installation {
    /// ferry's namespace is `namespace`; issuers are allowed as
    /// [`parse_allowed_issuers`] reads `allowed_issuers`.
    pub fn new(namespace: &str, allowed_issuers: &str) -> Result<Self, String> {
        Ok(Self {
            namespace: namespace.to_owned(),
            allowed_issuers: parse_allowed_issuers(allowed_issuers)?,
        })
    }

    /// Why `secret` may not be served in this installation, if it may not:
    /// its namespace, or a JWT issuer the installation does not allow it.
    pub fn refusal(&self, secret: &BrokeredSecret) -> Option<Refusal> {
        let namespace = secret.metadata.namespace.as_deref().unwrap_or_default();
        let name = secret.metadata.name.as_deref().unwrap_or_default();
        if namespace == self.namespace || REFUSED_NAMESPACES.contains(&namespace) {
            return Some(Refusal {
                reason: "NamespaceRefused",
                message: format!(
                    "BrokeredSecret {namespace}/{name}: BrokeredSecrets in namespace \
                     {namespace} are never served (ferry's own namespace and kube-system \
                     hold credentials no tenant may reach through the broker)"
                ),
            });
        }
        let issuer = secret.spec.source.jwt.as_ref()?.issuer.as_deref()?;
        if self.issuer_allowed(namespace, issuer) {
            return None;
        }
        Some(Refusal {
            reason: "IssuerNotAllowed",
            message: format!(
                "BrokeredSecret {namespace}/{name}: issuer {issuer:?} is not allowed for \
                 namespace {namespace}; remove spec.source.jwt.issuer to use the broker's, \
                 or have the installation allow it (--allowed-issuers / \
                 FERRY_ALLOWED_ISSUERS, chart value allowedIssuers)"
            ),
        })
    }

    fn issuer_allowed(&self, namespace: &str, issuer: &str) -> bool {
        [namespace, "*"].iter().any(|key| {
            self.allowed_issuers
                .get(*key)
                .is_some_and(|issuers| issuers.contains(issuer))
        })
    }
}

/// Reads an issuer allow-list: comma-separated `namespace=issuer` entries
/// (`*=issuer` for every namespace), such as
/// `payments=https://auth.example.com,shop=https://shop.example.com`.
/// Empty: no issuer besides the broker's.
pub fn parse_allowed_issuers(text: &str) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    let mut allowed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (namespace, issuer) = entry
            .split_once('=')
            .map(|(n, i)| (n.trim(), i.trim()))
            .filter(|(n, i)| !n.is_empty() && !i.is_empty())
            .ok_or_else(|| {
                format!("allowed issuer {entry:?} is not namespace=issuer (or *=issuer)")
            })?;
        allowed
            .entry(namespace.to_owned())
            .or_default()
            .insert(issuer.to_owned());
    }
    Ok(allowed)
}

/// How a BrokeredSecret uses a Secret it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecretUse {
    /// Its values reach pods or backends (`kubernetesSecret`, `postgres`).
    Read,
    /// Its key signs and never leaves the broker (`x509`'s CA): a
    /// `kubernetes.io/tls` Secret needs only `true` then.
    Sign,
}

/// Like [`brokerable`], for a Secret used as `used`.
pub fn brokerable_for(
    used: SecretUse,
    namespace: &str,
    name: &str,
    secret_type: Option<&str>,
    label: Option<&str>,
) -> Result<(), Refusal> {
    let secret_type = match (used, secret_type) {
        (SecretUse::Sign, Some("kubernetes.io/tls")) => None,
        _ => secret_type,
    };
    brokerable(namespace, name, secret_type, label)
}

/// Whether the Secret `namespace/name`, of type `secret_type` and with
/// `label` as the value of [`BROKERABLE_LABEL`], may be read for a
/// BrokeredSecret; `Err` says why not and what its owner can do.
pub fn brokerable(
    namespace: &str,
    name: &str,
    secret_type: Option<&str>,
    label: Option<&str>,
) -> Result<(), Refusal> {
    let refuse = |message: String| {
        Err(Refusal {
            reason: "SecretNotBrokerable",
            message,
        })
    };
    let sensitive = secret_type.filter(|t| SENSITIVE_SECRET_TYPES.contains(t));
    match (sensitive, label) {
        (_, Some(BROKERABLE_SENSITIVE)) | (None, Some(BROKERABLE)) => Ok(()),
        (Some(kind), Some(BROKERABLE)) => refuse(format!(
            "Secret {namespace}/{name} is of type {kind}, which holds Kubernetes \
             credentials: its owner must label it {BROKERABLE_LABEL}={BROKERABLE_SENSITIVE} \
             for BrokeredSecrets to use it"
        )),
        _ => refuse(format!(
            "Secret {namespace}/{name} is not opted in: its owner must label it \
             {BROKERABLE_LABEL}={BROKERABLE} for BrokeredSecrets to use it"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret(namespace: &str, jwt_issuer: Option<&str>) -> BrokeredSecret {
        serde_json::from_value(json!({
            "apiVersion": "ferry.dev/v1alpha1",
            "kind": "BrokeredSecret",
            "metadata": {"namespace": namespace, "name": "token"},
            "spec": {"source": {"jwt": {"audience": ["api"], "issuer": jwt_issuer}}},
        }))
        .expect("a valid BrokeredSecret")
    }

    #[test]
    fn ferrys_namespace_and_kube_system_are_refused() {
        let installation = Installation::new("ferry", "").unwrap();
        for namespace in ["ferry", "kube-system"] {
            let refusal = installation.refusal(&secret(namespace, None)).unwrap();
            assert_eq!(refusal.reason, "NamespaceRefused");
        }
        assert_eq!(installation.refusal(&secret("shop", None)), None);
    }

    #[test]
    fn an_issuer_must_be_allowed_for_the_namespace() {
        let installation =
            Installation::new("ferry", "shop=https://a.example, *=https://all.example").unwrap();
        assert_eq!(
            installation.refusal(&secret("shop", Some("https://a.example"))),
            None
        );
        assert_eq!(
            installation.refusal(&secret("evil", Some("https://all.example"))),
            None
        );
        let refusal = installation
            .refusal(&secret("evil", Some("https://a.example")))
            .unwrap();
        assert_eq!(refusal.reason, "IssuerNotAllowed");
        assert!(refusal.message.contains("evil"), "{}", refusal.message);
    }

    #[test]
    fn malformed_allow_lists_are_refused_with_the_entry() {
        assert!(parse_allowed_issuers("").unwrap().is_empty());
        let error = parse_allowed_issuers("shop").unwrap_err();
        assert!(error.contains("\"shop\""), "{error}");
        assert!(parse_allowed_issuers("=x").is_err());
        assert!(parse_allowed_issuers("shop=").is_err());
    }

    #[test]
    fn secrets_are_brokerable_only_when_their_owner_opted_in() {
        assert!(brokerable("a", "b", Some("Opaque"), Some("true")).is_ok());
        assert!(brokerable("a", "b", None, Some("true")).is_ok());
        assert!(brokerable("a", "b", Some("Opaque"), None).is_err());
        assert!(brokerable("a", "b", Some("Opaque"), Some("yes")).is_err());
        // A CA's tls Secret signs and is never copied: `true` is enough.
        assert!(
            brokerable_for(
                SecretUse::Sign,
                "a",
                "b",
                Some("kubernetes.io/tls"),
                Some("true")
            )
            .is_ok()
        );
        assert!(
            brokerable_for(
                SecretUse::Read,
                "a",
                "b",
                Some("kubernetes.io/tls"),
                Some("true")
            )
            .is_err()
        );
        assert!(
            brokerable_for(SecretUse::Sign, "a", "b", Some("kubernetes.io/tls"), None).is_err()
        );
        let token = Some("kubernetes.io/service-account-token");
        assert!(brokerable_for(SecretUse::Sign, "a", "b", token, Some("true")).is_err());
        for kind in SENSITIVE_SECRET_TYPES {
            let refusal = brokerable("a", "b", Some(kind), Some("true")).unwrap_err();
            assert!(
                refusal.message.contains(BROKERABLE_SENSITIVE),
                "{}",
                refusal.message
            );
            assert!(brokerable("a", "b", Some(kind), Some(BROKERABLE_SENSITIVE)).is_ok());
        }
    }
}
