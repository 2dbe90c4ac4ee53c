//! The pure heart of the reconciler: from one AccessPolicy, the
//! BrokeredSecrets of its namespace and the cluster's namespaces, compute
//! the Grants that should exist, and what is wrong with the policy.
//!
//! Each Grant traces to exactly one policy; permissions are never merged
//! across policies. A policy can only narrow a secret (maxTtl, audience,
//! scopes), and only grant secrets of its own namespace.
//!
//! Also the question the webhook and the broker ask of Grants
//! ([`GrantLookup`]), and when a Grant counts ([`grant_is_valid_at`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use sha2::{Digest, Sha256};

use ferry_contract::{MANAGED_BY_LABEL, OPERATOR_MANAGER, POLICY_UID_LABEL};

use crate::duration::{format_duration, parse_duration};
use crate::resources::{
    AccessPolicy, BrokeredSecret, Grant, GrantSpec, PolicyReference, SecretAccess, SecretReference,
    ServiceAccountRef,
};

/// What is wrong with one entry of a policy (the entry grants nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The BrokeredSecret does not exist (or is being deleted).
    SecretNotFound {
        /// The secret's name.
        secret: String,
    },
    /// The entry asks for more than the secret allows, or for something
    /// the secret's source does not have.
    InvalidNarrowing {
        /// The secret's name.
        secret: String,
        /// What exceeds the secret.
        detail: String,
    },
}

impl Problem {
    /// The condition reason for this problem.
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::SecretNotFound { .. } => "SecretNotFound",
            Problem::InvalidNarrowing { .. } => "InvalidNarrowing",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::SecretNotFound { secret } => {
                write!(
                    f,
                    "BrokeredSecret {secret} not found in the policy's namespace"
                )
            }
            Problem::InvalidNarrowing { secret, detail } => write!(f, "secret {secret}: {detail}"),
        }
    }
}

/// The outcome of deriving one policy's grants.
#[derive(Debug, Clone)]
pub struct Derivation {
    /// The Grants that should exist for this policy, by name.
    pub grants: Vec<Grant>,
    /// Entries that grant nothing, and why.
    pub problems: Vec<Problem>,
    /// The policy's validUntil has passed: it grants nothing.
    pub expired: bool,
    /// The distinct service accounts the policy resolves to.
    pub subjects: usize,
}

/// Everything [`derive_grants`] reads.
#[derive(Debug, Clone, Copy)]
pub struct PolicyWorld<'a> {
    /// BrokeredSecrets in the policy's namespace, by name.
    pub secrets: &'a BTreeMap<String, BrokeredSecret>,
    /// Every namespace of the cluster (for namespaceSelector subjects).
    pub namespaces: &'a [Namespace],
    /// The time to judge validUntil against.
    pub now: Timestamp,
    /// The policy's approved AccessRequests (read only when the policy
    /// requires approval).
    pub approved: &'a [ApprovedAccess],
}

/// The access one approved AccessRequest gives, as the policy counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovedAccess {
    /// The one service account granted; `None`: every subject.
    pub service_account: Option<ServiceAccountRef>,
    /// The secrets granted; empty: all the policy's.
    pub secrets: Vec<String>,
    /// When the approved access ends.
    pub valid_until: Timestamp,
}

impl ApprovedAccess {
    /// Whether this approval covers `secret` for the service account
    /// `namespace/name` at `now`.
    fn covers(&self, namespace: &str, name: &str, secret: &str, now: Timestamp) -> bool {
        self.valid_until > now
            && self
                .service_account
                .as_ref()
                .is_none_or(|sa| sa.namespace == namespace && sa.name == name)
            && (self.secrets.is_empty() || self.secrets.iter().any(|s| s == secret))
    }
}

/// The latest end of the approvals covering `secret` for `namespace/name`
/// at `now`, if any covers it.
fn approved_until(
    approved: &[ApprovedAccess],
    namespace: &str,
    name: &str,
    secret: &str,
    now: Timestamp,
) -> Option<Timestamp> {
    approved
        .iter()
        .filter(|a| a.covers(namespace, name, secret, now))
        .map(|a| a.valid_until)
        .max()
}

/// Computes the Grants `policy` should produce, and its problems.
pub fn derive_grants(policy: &AccessPolicy, world: PolicyWorld<'_>) -> Derivation {
    let policy_ns = policy.namespace().unwrap_or_default();
    let valid_until = policy.spec.valid_until.clone();
    let expired = valid_until.as_ref().is_some_and(|t| t.0 <= world.now);
    let subjects = resolve_subjects(policy, world.namespaces);
    let mut derivation = Derivation {
        grants: Vec::new(),
        problems: Vec::new(),
        expired,
        subjects: 0,
    };
    if expired {
        return derivation;
    }
    derivation.subjects = subjects.len();
    let policy_ref = PolicyReference {
        namespace: policy_ns.clone(),
        name: policy.name_any(),
        uid: policy.uid().unwrap_or_default(),
    };
    for access in &policy.spec.secrets {
        let secret = world
            .secrets
            .get(&access.name)
            .filter(|s| s.metadata.deletion_timestamp.is_none());
        let Some(secret) = secret else {
            derivation.problems.push(Problem::SecretNotFound {
                secret: access.name.clone(),
            });
            continue;
        };
        match narrow(access, secret) {
            Err(detail) => derivation.problems.push(Problem::InvalidNarrowing {
                secret: access.name.clone(),
                detail,
            }),
            Ok(limits) => {
                for (namespace, service_account) in &subjects {
                    // Under approval, a subject holds a Grant only while an
                    // approved request covers it, and no longer than the
                    // policy's own validUntil.
                    let valid_until = if policy.spec.approval.is_some() {
                        let Some(until) = approved_until(
                            world.approved,
                            namespace,
                            service_account,
                            &access.name,
                            world.now,
                        ) else {
                            continue;
                        };
                        Some(Time(match &valid_until {
                            Some(Time(policy_until)) => until.min(*policy_until),
                            None => until,
                        }))
                    } else {
                        valid_until.clone()
                    };
                    let spec = GrantSpec {
                        service_account: service_account.clone(),
                        secret: SecretReference {
                            namespace: policy_ns.clone(),
                            name: access.name.clone(),
                        },
                        max_ttl: limits.max_ttl.clone(),
                        audience: limits.audience.clone(),
                        scopes: limits.scopes.clone(),
                        dns_names: limits.dns_names.clone(),
                        valid_until,
                        policy: policy_ref.clone(),
                    };
                    derivation.grants.push(grant(namespace, spec));
                }
            }
        }
    }
    if policy.spec.approval.is_some() {
        // Only the service accounts an approval reached hold anything.
        derivation.subjects = derivation
            .grants
            .iter()
            .map(|g| (g.namespace(), &g.spec.service_account))
            .collect::<BTreeSet<_>>()
            .len();
    }
    derivation
}

/// The limits one entry grants, after narrowing.
struct Limits {
    max_ttl: String,
    audience: Vec<String>,
    scopes: Vec<String>,
    dns_names: Option<Vec<String>>,
}

/// Applies an entry's narrowing to a secret, refusing anything wider.
fn narrow(access: &SecretAccess, secret: &BrokeredSecret) -> Result<Limits, String> {
    let secret_max =
        parse_duration(&secret.spec.max_ttl).map_err(|e| format!("the secret's maxTtl: {e}"))?;
    let max_ttl = match &access.max_ttl {
        None => secret_max,
        Some(text) => {
            let asked = parse_duration(text).map_err(|e| format!("maxTtl: {e}"))?;
            if asked > secret_max {
                return Err(format!(
                    "maxTtl {text} exceeds the secret's maxTtl {}",
                    secret.spec.max_ttl
                ));
            }
            asked
        }
    };
    let narrowable = secret.spec.source.audience_and_scopes();
    let audience = subset(
        "audience",
        access.audience.as_deref(),
        narrowable.map(|(audience, _)| audience),
    )?;
    let scopes = subset(
        "scopes",
        access.scopes.as_deref(),
        narrowable.map(|(_, scopes)| scopes),
    )?;
    let dns_names = match (&access.dns_names, &secret.spec.source.x509) {
        (None, _) => None,
        (Some(_), None) => return Err("dnsNames applies to x509 secrets only".into()),
        (Some(asked), Some(x509)) => Some(subset("dnsNames", Some(asked), Some(&x509.dns_names))?),
    };
    Ok(Limits {
        max_ttl: format_duration(max_ttl),
        audience,
        scopes,
        dns_names,
    })
}

/// `asked` must be a subset of `allowed`; no request means all of it.
/// `allowed` is `None` when the secret has no audiences or scopes.
fn subset(
    field: &str,
    asked: Option<&[String]>,
    allowed: Option<&[String]>,
) -> Result<Vec<String>, String> {
    match (asked, allowed) {
        (None, allowed) => Ok(allowed.unwrap_or_default().to_vec()),
        (Some(_), None) => Err(format!("{field} applies to jwt and oauth2 secrets only")),
        (Some(asked), Some(allowed)) => {
            let wider: Vec<&str> = asked
                .iter()
                .filter(|a| !allowed.contains(a))
                .map(String::as_str)
                .collect();
            if wider.is_empty() {
                let unique: BTreeSet<&String> = asked.iter().collect();
                Ok(unique.into_iter().cloned().collect())
            } else {
                Err(format!(
                    "{field} {wider:?} not among the secret's {allowed:?}"
                ))
            }
        }
    }
}

/// The distinct (namespace, service account) pairs a policy names.
fn resolve_subjects(policy: &AccessPolicy, namespaces: &[Namespace]) -> BTreeSet<(String, String)> {
    let mut subjects = BTreeSet::new();
    for subject in &policy.spec.subjects {
        if let Some(sa) = &subject.service_account {
            subjects.insert((sa.namespace.clone(), sa.name.clone()));
        }
        if let (Some(selector), Some(name)) =
            (&subject.namespace_selector, &subject.service_account_name)
        {
            // A selector the apiserver admitted but we cannot parse matches
            // nothing: deny by default.
            let Ok(selector) = Selector::try_from(selector.clone()) else {
                continue;
            };
            for ns in namespaces {
                if ns.metadata.deletion_timestamp.is_none()
                    && selector.matches(ns.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()))
                {
                    subjects.insert((ns.name_any(), name.clone()));
                }
            }
        }
    }
    subjects
}

/// A Grant object in `namespace` with its deterministic name and labels.
fn grant(namespace: &str, spec: GrantSpec) -> Grant {
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), OPERATOR_MANAGER.to_string()),
        (POLICY_UID_LABEL.to_string(), spec.policy.uid.clone()),
    ]);
    let name = grant_name(&spec);
    Grant {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec,
    }
}

/// How a shortened or disambiguated Grant name ends: `-` and 16 hex digits.
const HASH_SUFFIX_LEN: usize = 17;

/// `<secret namespace>.<policy>.<secret>.<service account>`, readable in
/// `kubectl get grants`, when that is unambiguous: no part but the
/// separators holds a dot, it fits in 253 characters, and it does not end
/// like a hashed name. Otherwise the readable prefix (cut to fit) and `-`
/// with a hash of the four parts. So two different (namespace, policy,
/// secret, service account) never share a name: policy `a.b` with secret
/// `c` and policy `a` with secret `b.c` would both read `ns.a.b.c`.
pub fn grant_name(spec: &GrantSpec) -> String {
    let parts = [
        spec.secret.namespace.as_str(),
        spec.policy.name.as_str(),
        spec.secret.name.as_str(),
        spec.service_account.as_str(),
    ];
    let full = parts.join(".");
    let unambiguous = parts.iter().all(|part| !part.contains('.'))
        && full.len() <= 253
        && !ends_like_hashed(&full);
    if unambiguous {
        return full;
    }
    // `/` appears in no Kubernetes name, so the joined parts are unique.
    let digest = Sha256::digest(parts.join("/").as_bytes());
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let mut cut = full.len().min(253 - HASH_SUFFIX_LEN);
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    let prefix = full[..cut].trim_end_matches(['.', '-']);
    format!("{prefix}-{hash}")
}

/// Whether `name` ends with `-` and 16 lowercase hex digits.
fn ends_like_hashed(name: &str) -> bool {
    let Some(start) = name.len().checked_sub(HASH_SUFFIX_LEN) else {
        return false;
    };
    let tail = &name.as_bytes()[start..];
    tail[0] == b'-'
        && tail[1..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// The longest [`secret_names`] summary before it is shortened.
pub const SECRET_NAMES_WIDTH: usize = 60;

/// The secrets `policy` lists, as its status shows them in `kubectl get`'s
/// SECRETS column: every name, comma-separated, when that fits in
/// [`SECRET_NAMES_WIDTH`] characters; otherwise as many names as fit and
/// `+N more`.
pub fn secret_names(policy: &AccessPolicy) -> String {
    let names: Vec<&str> = policy
        .spec
        .secrets
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    let all = names.join(",");
    if all.len() <= SECRET_NAMES_WIDTH {
        return all;
    }
    let mut shown = String::new();
    for (index, name) in names.iter().enumerate() {
        let more = format!(",+{} more", names.len() - index);
        let next = if shown.is_empty() {
            (*name).to_owned()
        } else {
            format!("{shown},{name}")
        };
        // Leave room for the count of the names after this one.
        let tail = format!(",+{} more", names.len() - index - 1);
        if next.len() + tail.len() > SECRET_NAMES_WIDTH {
            return if shown.is_empty() {
                format!("+{} more", names.len())
            } else {
                format!("{shown}{more}")
            };
        }
        shown = next;
    }
    shown
}

/// Answers whether a service account holds a Grant for a secret. The
/// webhook's pure mutation takes this trait, so its tests can use a plain
/// set while production uses the runtime's Grant index.
pub trait GrantLookup {
    /// Whether the service account `service_account` in `namespace` holds
    /// a Grant for `secret` that is valid at `now`.
    fn is_granted(
        &self,
        namespace: &str,
        service_account: &str,
        secret: &SecretReference,
        now: Timestamp,
    ) -> bool;
}

/// Whether `grant` has not passed its `validUntil` at `now`.
pub fn grant_is_valid_at(grant: &Grant, now: Timestamp) -> bool {
    grant
        .spec
        .valid_until
        .as_ref()
        .is_none_or(|until| until.0 > now)
}

/// When a policy's grants change next by the clock alone: the earliest of
/// its validUntil and its approvals' ends still ahead.
pub fn next_expiry(
    policy: &AccessPolicy,
    approved: &[ApprovedAccess],
    now: Timestamp,
) -> Option<std::time::Duration> {
    let policy_until = policy.spec.valid_until.as_ref().map(|Time(t)| *t);
    let approvals = approved
        .iter()
        .map(|a| a.valid_until)
        .filter(|_| policy.spec.approval.is_some());
    policy_until
        .into_iter()
        .chain(approvals)
        .filter(|until| *until >= now)
        .min()
        .and_then(|until| std::time::Duration::try_from(until.duration_since(now)).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, AccessPolicyBuilder, SecretAccessBuilder, secret_access as access};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use serde_json::json;

    fn now() -> Timestamp {
        "2026-06-01T00:00:00Z".parse().unwrap()
    }

    fn postgres(name: &str) -> BrokeredSecret {
        testing::brokered_secret("payments", name)
            .postgres("admin", "dsn")
            .build()
    }

    fn jwt(name: &str) -> BrokeredSecret {
        testing::brokered_secret("payments", name)
            .ttl("5m")
            .max_ttl("30m")
            .jwt(&["orders-api", "billing-api"])
            .scopes(&["read", "write"])
            .build()
    }

    fn policy() -> AccessPolicyBuilder {
        testing::access_policy("payments", "checkout-reads").uid("0000-policy-uid")
    }

    fn checkout(secrets: &[SecretAccessBuilder]) -> AccessPolicy {
        secrets
            .iter()
            .cloned()
            .fold(
                policy().service_account("shop", "checkout"),
                AccessPolicyBuilder::narrowed,
            )
            .build()
    }

    fn team(name: &str) -> LabelSelector {
        LabelSelector {
            match_labels: Some(BTreeMap::from([("team".into(), name.into())])),
            ..LabelSelector::default()
        }
    }

    fn namespace(name: &str, labels: serde_json::Value) -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    fn derive(
        policy: &AccessPolicy,
        secrets: &[BrokeredSecret],
        namespaces: &[Namespace],
    ) -> Derivation {
        let secrets = secrets.iter().map(|s| (s.name_any(), s.clone())).collect();
        derive_grants(
            policy,
            PolicyWorld {
                secrets: &secrets,
                namespaces,
                now: now(),
                approved: &[],
            },
        )
    }

    #[test]
    fn service_account_subject_gets_one_grant_per_secret_in_its_own_namespace() {
        let d = derive(
            &checkout(&[access("orders-db")]),
            &[postgres("orders-db")],
            &[],
        );

        assert!(d.problems.is_empty() && !d.expired);
        assert_eq!(d.subjects, 1);
        let [grant] = d.grants.as_slice() else {
            panic!("{:?}", d.grants)
        };
        assert_eq!(grant.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(
            grant.name_any(),
            "payments.checkout-reads.orders-db.checkout"
        );
        assert_eq!(grant.spec.service_account, "checkout");
        assert_eq!(
            grant.spec.secret,
            SecretReference {
                namespace: "payments".into(),
                name: "orders-db".into()
            }
        );
        assert_eq!(grant.spec.max_ttl, "1h");
        assert_eq!(grant.spec.policy.uid, "0000-policy-uid");
        assert_eq!(grant.labels()[POLICY_UID_LABEL], "0000-policy-uid");
        assert_eq!(grant.labels()[MANAGED_BY_LABEL], OPERATOR_MANAGER);
    }

    #[test]
    fn secret_names_lists_every_secret_or_says_how_many_more() {
        let two = checkout(&[access("orders-db"), access("orders-token")]);
        assert_eq!(secret_names(&two), "orders-db,orders-token");
        let many: Vec<SecretAccessBuilder> = (0..12)
            .map(|i| access(&format!("secret-number-{i}")))
            .collect();
        let summary = secret_names(&checkout(&many));
        assert!(summary.len() <= SECRET_NAMES_WIDTH, "{summary}");
        assert!(
            summary.starts_with("secret-number-0,secret-number-1,"),
            "{summary}"
        );
        let shown = summary.matches("secret-number-").count();
        assert!(
            summary.ends_with(&format!(",+{} more", 12 - shown)),
            "{summary}"
        );
    }

    #[test]
    fn narrower_max_ttl_is_granted_as_asked() {
        let d = derive(
            &checkout(&[access("orders-db").max_ttl("10m")]),
            &[postgres("orders-db")],
            &[],
        );
        assert_eq!(d.grants[0].spec.max_ttl, "10m");
    }

    #[test]
    fn wider_max_ttl_is_invalid_narrowing_and_grants_nothing() {
        let d = derive(
            &checkout(&[access("orders-db").max_ttl("2h")]),
            &[postgres("orders-db")],
            &[],
        );
        assert!(d.grants.is_empty());
        assert_eq!(d.problems[0].reason(), "InvalidNarrowing");
        assert!(
            d.problems[0]
                .to_string()
                .contains("maxTtl 2h exceeds the secret's maxTtl 1h"),
            "{}",
            d.problems[0]
        );
    }

    #[test]
    fn jwt_audience_and_scopes_default_to_the_secrets_and_may_be_narrowed() {
        let all = derive(&checkout(&[access("token")]), &[jwt("token")], &[]);
        assert_eq!(all.grants[0].spec.audience, ["orders-api", "billing-api"]);
        assert_eq!(all.grants[0].spec.scopes, ["read", "write"]);

        let narrow = derive(
            &checkout(&[access("token").audience(&["orders-api"]).scopes(&["read"])]),
            &[jwt("token")],
            &[],
        );
        assert_eq!(narrow.grants[0].spec.audience, ["orders-api"]);
        assert_eq!(narrow.grants[0].spec.scopes, ["read"]);
    }

    #[test]
    fn audience_or_scope_beyond_the_secret_is_invalid_narrowing() {
        for entry in [
            access("token").audience(&["orders-api", "admin-api"]),
            access("token").scopes(&["delete"]),
        ] {
            let d = derive(
                &checkout(std::slice::from_ref(&entry)),
                &[jwt("token")],
                &[],
            );
            assert!(d.grants.is_empty(), "{entry:?}");
            assert_eq!(d.problems[0].reason(), "InvalidNarrowing");
        }
    }

    #[test]
    fn oauth2_audience_and_scopes_are_narrowed_like_a_jwts() {
        let crm = testing::brokered_secret("payments", "crm")
            .oauth2("https://auth.example/token", "crm-client", &["crm-api"])
            .scopes(&["contacts.read", "contacts.write"])
            .build();
        let all = derive(&checkout(&[access("crm")]), std::slice::from_ref(&crm), &[]);
        assert_eq!(
            all.grants[0].spec.scopes,
            ["contacts.read", "contacts.write"]
        );
        assert_eq!(all.grants[0].spec.audience, ["crm-api"]);
        let narrowed = access("crm").scopes(&["contacts.read"]);
        let derived = derive(&checkout(&[narrowed]), std::slice::from_ref(&crm), &[]);
        assert_eq!(derived.grants[0].spec.scopes, ["contacts.read"]);
        let wider = access("crm").scopes(&["contacts.delete"]);
        let refused = derive(&checkout(&[wider]), std::slice::from_ref(&crm), &[]);
        assert!(refused.grants.is_empty());
    }

    #[test]
    fn x509_dns_names_default_to_the_secrets_and_may_only_be_narrowed() {
        let cert = testing::brokered_secret("payments", "cert")
            .x509("ca")
            .dns_names(&["{{ serviceAccount }}.svc", "{{ podName }}.pods"])
            .build();
        let all = derive(
            &checkout(&[access("cert")]),
            std::slice::from_ref(&cert),
            &[],
        );
        assert_eq!(all.grants[0].spec.dns_names, None);
        let narrow = derive(
            &checkout(&[access("cert").dns_names(&["{{ serviceAccount }}.svc"])]),
            std::slice::from_ref(&cert),
            &[],
        );
        assert_eq!(
            narrow.grants[0].spec.dns_names.as_deref(),
            Some(&["{{ serviceAccount }}.svc".to_owned()][..])
        );
        let wider = derive(
            &checkout(&[access("cert").dns_names(&["evil.example"])]),
            &[cert],
            &[],
        );
        assert!(wider.grants.is_empty());
        let not_x509 = derive(
            &checkout(&[access("orders-db").dns_names(&["x"])]),
            &[postgres("orders-db")],
            &[],
        );
        assert!(not_x509.grants.is_empty());
    }

    #[test]
    fn audience_on_a_non_jwt_secret_is_invalid_narrowing() {
        let d = derive(
            &checkout(&[access("orders-db").audience(&["x"])]),
            &[postgres("orders-db")],
            &[],
        );
        assert!(
            d.problems[0]
                .to_string()
                .contains("audience applies to jwt and oauth2 secrets only")
        );
    }

    #[test]
    fn missing_secret_is_reported_and_other_secrets_are_still_granted() {
        let d = derive(
            &checkout(&[access("gone"), access("orders-db")]),
            &[postgres("orders-db")],
            &[],
        );
        assert_eq!(
            d.problems,
            vec![Problem::SecretNotFound {
                secret: "gone".into()
            }]
        );
        assert_eq!(d.grants.len(), 1);
        assert_eq!(d.grants[0].spec.secret.name, "orders-db");
    }

    #[test]
    fn secret_being_deleted_counts_as_not_found() {
        let mut deleting = postgres("orders-db");
        deleting.metadata.deletion_timestamp = Some(Time(now()));
        let d = derive(&checkout(&[access("orders-db")]), &[deleting], &[]);
        assert_eq!(d.problems[0].reason(), "SecretNotFound");
        assert!(d.grants.is_empty());
    }

    #[test]
    fn namespace_selector_grants_the_named_account_in_each_matching_namespace() {
        let p = policy()
            .namespace_selector(team("payments"), "batch")
            .secret("orders-db")
            .build();
        let mut leaving = namespace("leaving", json!({"team": "payments"}));
        leaving.metadata.deletion_timestamp = Some(Time(now()));
        let namespaces = [
            namespace("a", json!({"team": "payments"})),
            namespace("b", json!({"team": "shop"})),
            namespace("c", json!({"team": "payments"})),
            leaving,
        ];

        let d = derive(&p, &[postgres("orders-db")], &namespaces);

        let placed: Vec<(String, String)> = d
            .grants
            .iter()
            .map(|g| (g.namespace().unwrap(), g.spec.service_account.clone()))
            .collect();
        assert_eq!(
            placed,
            [
                ("a".to_string(), "batch".to_string()),
                ("c".to_string(), "batch".to_string())
            ]
        );
        assert_eq!(d.subjects, 2);
    }

    #[test]
    fn repeated_subjects_yield_one_grant() {
        let p = policy()
            .service_account("a", "batch")
            .namespace_selector(team("payments"), "batch")
            .secret("orders-db")
            .build();
        let d = derive(
            &p,
            &[postgres("orders-db")],
            &[namespace("a", json!({"team": "payments"}))],
        );
        assert_eq!(d.grants.len(), 1);
    }

    #[test]
    fn expired_policy_grants_nothing() {
        let mut p = checkout(&[access("orders-db")]);
        p.spec.valid_until = Some(Time("2026-05-31T23:59:59Z".parse().unwrap()));
        let d = derive(&p, &[postgres("orders-db")], &[]);
        assert!(d.expired);
        assert!(d.grants.is_empty());
        assert_eq!(next_expiry(&p, &[], now()), None);
    }

    #[test]
    fn time_boxed_policy_passes_valid_until_to_its_grants_and_requeues_then() {
        let mut p = checkout(&[access("orders-db")]);
        let until = Time("2026-06-01T01:00:00Z".parse().unwrap());
        p.spec.valid_until = Some(until.clone());
        let d = derive(&p, &[postgres("orders-db")], &[]);
        assert_eq!(d.grants[0].spec.valid_until, Some(until));
        assert_eq!(
            next_expiry(&p, &[], now()),
            Some(std::time::Duration::from_secs(3600))
        );
    }

    #[test]
    fn under_approval_only_approved_subjects_and_secrets_hold_grants_until_the_approval_ends() {
        let p = policy()
            .service_account("shop", "checkout")
            .service_account("shop", "batch")
            .secret("orders-db")
            .secret("orders-cache")
            .approval(&["bob"], &[], "8h", "1h")
            .valid_until("2026-06-01T02:00:00Z".parse().unwrap())
            .build();
        let secrets: BTreeMap<String, BrokeredSecret> =
            [postgres("orders-db"), postgres("orders-cache")]
                .into_iter()
                .map(|s| (s.name_any(), s))
                .collect();
        let derive_with = |approved: &[ApprovedAccess]| {
            derive_grants(
                &p,
                PolicyWorld {
                    secrets: &secrets,
                    namespaces: &[],
                    now: now(),
                    approved,
                },
            )
        };
        assert!(derive_with(&[]).grants.is_empty());
        assert_eq!(derive_with(&[]).subjects, 0);

        let checkout_db = ApprovedAccess {
            service_account: Some(ServiceAccountRef {
                namespace: "shop".into(),
                name: "checkout".into(),
            }),
            secrets: vec!["orders-db".into()],
            valid_until: "2026-06-01T00:30:00Z".parse().unwrap(),
        };
        let d = derive_with(std::slice::from_ref(&checkout_db));
        assert_eq!(d.grants.len(), 1);
        assert_eq!(d.subjects, 1);
        assert_eq!(d.grants[0].spec.service_account, "checkout");
        assert_eq!(d.grants[0].spec.secret.name, "orders-db");
        assert_eq!(
            d.grants[0].spec.valid_until,
            Some(Time("2026-06-01T00:30:00Z".parse().unwrap()))
        );

        // An approval for everything, longer than the policy: capped by it.
        let everything = ApprovedAccess {
            service_account: None,
            secrets: Vec::new(),
            valid_until: "2026-06-01T05:00:00Z".parse().unwrap(),
        };
        let d = derive_with(&[checkout_db.clone(), everything.clone()]);
        assert_eq!(d.grants.len(), 4);
        assert!(
            d.grants
                .iter()
                .all(|g| g.spec.valid_until == Some(Time("2026-06-01T02:00:00Z".parse().unwrap())))
        );
        assert_eq!(
            next_expiry(&p, &[checkout_db.clone(), everything], now()),
            Some(std::time::Duration::from_secs(1800))
        );

        // An approval that has ended grants nothing.
        let ended = ApprovedAccess {
            valid_until: now(),
            ..checkout_db
        };
        assert!(derive_with(&[ended]).grants.is_empty());
    }

    #[test]
    fn grants_always_name_the_policys_own_namespace() {
        // A policy in `payments` naming `orders-db` grants payments/orders-db,
        // whatever other namespaces hold: it cannot reach across.
        let d = derive(
            &checkout(&[access("orders-db")]),
            &[postgres("orders-db")],
            &[namespace("shop", json!({}))],
        );
        assert!(
            d.grants
                .iter()
                .all(|g| g.spec.secret.namespace == "payments")
        );
    }

    #[test]
    fn long_grant_names_are_shortened_deterministically_within_the_limit() {
        let long = "x".repeat(200);
        let p = policy()
            .service_account("shop", &long)
            .secret("orders-db")
            .build();
        let a = derive(&p, &[postgres("orders-db")], &[]);
        let b = derive(&p, &[postgres("orders-db")], &[]);
        let name = a.grants[0].name_any();
        assert!(name.len() <= 253, "{}", name.len());
        assert_eq!(name, b.grants[0].name_any());
        assert!(name.starts_with("payments.checkout-reads.orders-db.xxx"));
    }

    fn spec(policy: &str, secret: &str, service_account: &str) -> GrantSpec {
        GrantSpec {
            service_account: service_account.into(),
            secret: SecretReference {
                namespace: "payments".into(),
                name: secret.into(),
            },
            max_ttl: "1h".into(),
            audience: vec![],
            scopes: vec![],
            dns_names: None,
            valid_until: None,
            policy: PolicyReference {
                namespace: "payments".into(),
                name: policy.into(),
                uid: "u".into(),
            },
        }
    }

    #[test]
    fn dotted_names_of_two_policies_never_share_a_grant_name() {
        let names = [
            grant_name(&spec("a.b", "c", "sa")),
            grant_name(&spec("a", "b.c", "sa")),
            grant_name(&spec("a", "b", "c.sa")),
            grant_name(&spec("a.b.c", "d", "sa")),
            grant_name(&spec("a", "b", "c")),
        ];
        let unique: BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        // Without dots, the name stays readable.
        assert_eq!(names[4], "payments.a.b.c");
        assert!(names.iter().all(|n| n.len() <= 253));
    }

    #[test]
    fn a_readable_name_that_looks_hashed_is_hashed_too() {
        // A tenant cannot choose a service account name that spells out
        // another tuple's hashed name.
        let hashed = grant_name(&spec("a.b", "c", "sa"));
        let suffix = &hashed[hashed.len() - 16..];
        let lookalike = spec("a", "b", &format!("c-{suffix}"));
        assert_ne!(grant_name(&lookalike), format!("payments.a.b.c-{suffix}"));
        assert_ne!(grant_name(&lookalike), hashed);
    }
}
