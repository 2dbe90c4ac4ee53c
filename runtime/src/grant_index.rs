//! An in-memory index of Grants, fed by a watch and looked up in O(1) by
//! (namespace, service account, secret). The webhook asks it whether a pod
//! may request a secret; the broker asks it before issuing. Neither makes
//! an API call per request.
//!
//! A Grant is a cache of an AccessPolicy's decision, never an authority of
//! its own: the index keeps only Grants labelled as the operator's, and a
//! lookup counts a Grant only while the AccessPolicy it names (by uid)
//! lives in the secret's namespace and still names that subject and that
//! secret. So a Grant a tenant wrote by hand, or edited, grants nothing
//! even where the admission policy that keeps tenants from writing Grants
//! is missing. The policies come from a second watch ([`PolicyIndex`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use std::sync::{Arc, PoisonError, RwLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::watch_index::{self, WatchedIndex};
use ferry_api::duration::parse_duration;
use ferry_api::grants::{GrantLookup, grant_is_valid_at};
use ferry_api::resources::{
    AccessPolicy, Grant, GrantSpec, PolicyReference, SecretAccess, SecretReference,
};
use ferry_contract::{MANAGED_BY_LABEL, OPERATOR_MANAGER};

/// What the Grants one policy derives for one secret share: the whole spec
/// but the service account. Kept once however many subjects hold it, so a
/// policy over thousands of service accounts costs one of these.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Terms {
    secret: SecretReference,
    max_ttl: String,
    audience: Vec<String>,
    scopes: Vec<String>,
    dns_names: Option<Vec<String>>,
    valid_until: Option<Timestamp>,
    policy: PolicyReference,
}

/// One Grant as the index keeps it: its names (shared with every other
/// Grant of the namespace and service account) and its [`Terms`]. Nothing
/// else of the object is kept: watch events carry managedFields, labels
/// and more, which would cost several times the index's memory.
#[derive(Debug, Clone)]
pub struct IndexedGrant {
    namespace: Arc<str>,
    name: Arc<str>,
    service_account: Arc<str>,
    terms: Arc<Terms>,
}

impl IndexedGrant {
    /// The Grant object callers see, rebuilt on lookup.
    fn grant(&self) -> Grant {
        let terms = &self.terms;
        Grant {
            metadata: ObjectMeta {
                name: Some(self.name.to_string()),
                namespace: Some(self.namespace.to_string()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY_LABEL.to_owned(),
                    OPERATOR_MANAGER.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            spec: GrantSpec {
                service_account: self.service_account.to_string(),
                secret: terms.secret.clone(),
                max_ttl: terms.max_ttl.clone(),
                audience: terms.audience.clone(),
                scopes: terms.scopes.clone(),
                dns_names: terms.dns_names.clone(),
                valid_until: terms.valid_until.map(Time),
                policy: terms.policy.clone(),
            },
        }
    }
}

/// Shared copies of the names and terms the Grants repeat. An entry no
/// Grant uses any more is dropped by [`Interner::sweep`].
#[derive(Default)]
struct Interner {
    strings: HashSet<Arc<str>>,
    terms: HashSet<Arc<Terms>>,
}

impl Interner {
    fn string(&mut self, value: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(value) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(value);
        self.strings.insert(Arc::clone(&shared));
        shared
    }

    fn terms(&mut self, terms: Terms) -> Arc<Terms> {
        if let Some(shared) = self.terms.get(&terms) {
            return Arc::clone(shared);
        }
        let shared = Arc::new(terms);
        self.terms.insert(Arc::clone(&shared));
        shared
    }

    /// The Grant in the index's form, unless it is not the operator's.
    fn intern(&mut self, grant: Grant) -> Option<IndexedGrant> {
        if !is_operators(&grant) {
            return None;
        }
        let namespace = self.string(grant.metadata.namespace.as_deref()?);
        let name: Arc<str> = Arc::from(grant.metadata.name.as_deref()?);
        let spec = grant.spec;
        let service_account = self.string(&spec.service_account);
        let terms = self.terms(Terms {
            secret: spec.secret,
            max_ttl: spec.max_ttl,
            audience: spec.audience,
            scopes: spec.scopes,
            dns_names: spec.dns_names,
            valid_until: spec.valid_until.map(|time| time.0),
            policy: spec.policy,
        });
        Some(IndexedGrant {
            namespace,
            name,
            service_account,
            terms,
        })
    }

    /// Forgets what no Grant holds any more.
    fn sweep(&mut self) {
        self.strings.retain(|shared| Arc::strong_count(shared) > 1);
        self.terms.retain(|shared| Arc::strong_count(shared) > 1);
    }
}

/// Removals between two sweeps of the interner at least.
const SWEEP_AFTER: usize = 64;

/// (namespace, service account): who a Grant is for.
type Subject = (Arc<str>, Arc<str>);

#[derive(Default)]
struct Entries {
    /// Subject -> its Grants (a service account holds a few; several
    /// policies may grant it the same secret).
    by_subject: HashMap<Subject, Vec<IndexedGrant>>,
    /// (namespace, Grant name) -> the service account it is for, so a
    /// deletion or an edit that changes the subject finds the old entry.
    by_name: HashMap<(Arc<str>, Arc<str>), Arc<str>>,
    interner: Interner,
    /// Removals since the interner was last swept.
    removed: usize,
}

/// Whether `grant` carries the operator's managed-by label.
fn is_operators(grant: &Grant) -> bool {
    grant
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(MANAGED_BY_LABEL))
        .is_some_and(|manager| manager == OPERATOR_MANAGER)
}

impl Entries {
    /// Adds `grant` (an edit that removed the managed-by label drops it).
    fn apply(&mut self, grant: Grant) {
        let key = grant
            .metadata
            .namespace
            .clone()
            .zip(grant.metadata.name.clone());
        match self.interner.intern(grant) {
            Some(indexed) => self.insert(indexed),
            None => {
                if let Some((namespace, name)) = key {
                    self.remove(&namespace, &name);
                }
            }
        }
    }

    fn insert(&mut self, grant: IndexedGrant) {
        self.remove(&grant.namespace, &grant.name);
        self.by_name.insert(
            (Arc::clone(&grant.namespace), Arc::clone(&grant.name)),
            Arc::clone(&grant.service_account),
        );
        self.by_subject
            .entry((
                Arc::clone(&grant.namespace),
                Arc::clone(&grant.service_account),
            ))
            .or_default()
            .push(grant);
    }

    fn remove(&mut self, namespace: &str, name: &str) {
        let Some(namespace) = self.interner.strings.get(namespace).cloned() else {
            return;
        };
        let name: Arc<str> = Arc::from(name);
        let Some(service_account) = self
            .by_name
            .remove(&(Arc::clone(&namespace), Arc::clone(&name)))
        else {
            return;
        };
        let subject = (namespace, service_account);
        if let Some(grants) = self.by_subject.get_mut(&subject) {
            grants.retain(|grant| grant.name != name);
            if grants.is_empty() {
                self.by_subject.remove(&subject);
            }
        }
        self.removed += 1;
        // Sweeping costs a pass over the interner, whose size is bounded
        // by what the live Grants hold plus what the removals since the
        // last sweep left: once per as many removals as there are live
        // Grants (at least SWEEP_AFTER), it is amortised O(1) per removal
        // and the garbage stays a fraction of the index.
        if self.removed >= SWEEP_AFTER.max(self.by_name.len()) {
            drop(subject);
            self.interner.sweep();
            self.removed = 0;
        }
    }
}

/// The Grants of the whole cluster, indexed for lookup. Cheap to clone;
/// clones share the index.
#[derive(Clone)]
pub struct GrantIndex {
    entries: Arc<RwLock<Entries>>,
    /// The AccessPolicies the Grants must still follow from.
    policies: PolicyIndex,
    /// Whether the Grants have been listed once.
    grants_listed: watch::Sender<bool>,
    /// Counts every change to the Grants or the AccessPolicies.
    changed: watch::Sender<u64>,
}

fn bump(changed: &watch::Sender<u64>) {
    changed.send_modify(|count| *count = count.wrapping_add(1));
}

impl Default for GrantIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for GrantIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantIndex")
            .field("grants", &self.len())
            .field("synced", &self.is_synced())
            .finish()
    }
}

impl GrantIndex {
    /// An empty index that has not yet seen a complete list.
    pub fn new() -> Self {
        let changed = watch::Sender::new(0);
        Self {
            entries: Arc::default(),
            policies: PolicyIndex {
                changed: changed.clone(),
                ..PolicyIndex::default()
            },
            grants_listed: watch::Sender::new(false),
            changed,
        }
    }

    /// An index holding exactly `grants` and `policies`, marked synced (for
    /// tests and benchmarks that need no apiserver).
    pub fn from_objects(
        grants: impl IntoIterator<Item = Grant>,
        policies: impl IntoIterator<Item = AccessPolicy>,
    ) -> Self {
        let index = Self::new();
        index.replace(grants);
        index.policies.replace_all(policies);
        index
    }

    /// The AccessPolicy half of the index, to be kept by
    /// [`PolicyIndex::maintain`] next to [`GrantIndex::maintain`].
    pub fn policies(&self) -> &PolicyIndex {
        &self.policies
    }

    /// Changes whenever a Grant or an AccessPolicy does, so whoever acts
    /// on what the Grants allow (the broker's revocations) looks again.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The Grants for `secret` held by `service_account` in `namespace`.
    pub fn grants_for(
        &self,
        namespace: &str,
        service_account: &str,
        secret: &SecretReference,
    ) -> Vec<Arc<Grant>> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let strings = &entries.interner.strings;
        let (Some(namespace_key), Some(account)) = (
            strings.get(namespace).cloned(),
            strings.get(service_account).cloned(),
        ) else {
            return Vec::new();
        };
        let Some(grants) = entries.by_subject.get(&(namespace_key, account)) else {
            return Vec::new();
        };
        let policies = self
            .policies
            .facts
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        grants
            .iter()
            .filter(|indexed| indexed.terms.secret == *secret)
            .map(IndexedGrant::grant)
            .filter(|grant| {
                policies
                    .get(&grant.spec.policy.uid)
                    .is_some_and(|policy| policy.still_grants(grant, namespace))
            })
            .map(Arc::new)
            .collect()
    }

    /// How many Grants the index holds.
    pub fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_name
            .len()
    }

    /// Whether the index holds no Grant.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the Grants and the AccessPolicies have each been filled from
    /// a complete list at least once.
    pub fn is_synced(&self) -> bool {
        *self.grants_listed.borrow() && *self.policies.listed.borrow()
    }

    /// Waits until the Grants and the AccessPolicies have each been filled
    /// from a complete list.
    pub async fn wait_synced(&self) {
        // The senders live in `self`, so these only end when listed.
        let mut grants = self.grants_listed.subscribe();
        let _ = grants.wait_for(|listed| *listed).await;
        let mut policies = self.policies.listed.subscribe();
        let _ = policies.wait_for(|listed| *listed).await;
    }

    /// Adds or replaces one Grant.
    pub fn apply(&self, grant: Grant) {
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .apply(grant);
        bump(&self.changed);
    }

    /// Removes one Grant.
    pub fn delete(&self, grant: &Grant) {
        if let (Some(namespace), Some(name)) = (&grant.metadata.namespace, &grant.metadata.name) {
            self.entries
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(namespace, name);
            bump(&self.changed);
        }
    }

    /// Replaces the whole content with `grants` and marks the index synced.
    pub fn replace(&self, grants: impl IntoIterator<Item = Grant>) {
        let indexed: Vec<IndexedGrant> = grants
            .into_iter()
            .filter_map(|grant| WatchedIndex::entry(self, grant))
            .collect();
        self.replace_indexed(indexed);
    }

    /// Replaces the whole content with `grants`, already in the index's
    /// form (interned as they were listed), and marks the index synced.
    fn replace_indexed(&self, grants: Vec<IndexedGrant>) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        let interner = std::mem::take(&mut entries.interner);
        *entries = Entries {
            interner,
            ..Entries::default()
        };
        for grant in grants {
            entries.insert(grant);
        }
        entries.interner.sweep();
        entries.removed = 0;
        drop(entries);
        self.grants_listed.send_replace(true);
        bump(&self.changed);
    }

    /// Keeps the index in step with the Grants `api` can see until
    /// `shutdown` is cancelled. Watch errors are logged and retried with
    /// backoff; the index keeps serving what it last knew meanwhile.
    pub async fn maintain(&self, api: Api<Grant>, shutdown: CancellationToken) {
        watch_index::maintain(self, api, watcher::Config::default(), shutdown).await;
    }
}

impl WatchedIndex<Grant> for GrantIndex {
    type Entry = IndexedGrant;
    const KIND: &'static str = "Grant";

    /// Interned as listed, so a relist of many Grants never holds them
    /// whole: only the compact form waits for the list to end.
    fn entry(&self, grant: Grant) -> Option<IndexedGrant> {
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .interner
            .intern(grant)
    }

    fn apply(&self, grant: Grant) {
        GrantIndex::apply(self, grant);
    }

    fn delete(&self, grant: Grant) {
        GrantIndex::delete(self, &grant);
    }

    fn replace(&self, grants: Vec<IndexedGrant>) {
        tracing::debug!(grants = grants.len(), "grant index synced");
        self.replace_indexed(grants);
    }
}

/// What the index keeps of one AccessPolicy: enough to tell whether a
/// Grant still follows from it.
#[derive(Debug, Clone)]
struct PolicyFacts {
    namespace: String,
    name: String,
    /// The BrokeredSecrets it names (in its own namespace), with the
    /// narrowing of each entry.
    secrets: HashMap<String, SecretAccess>,
    /// Its `serviceAccount` subjects: (namespace, name).
    accounts: HashSet<(String, String)>,
    /// The `serviceAccountName` of its `namespaceSelector` subjects. The
    /// selector itself is the operator's to evaluate (the broker and the
    /// webhook do not watch namespaces): a Grant for one of these names
    /// follows only from the operator's evaluation.
    selected_accounts: HashSet<String>,
    valid_until: Option<Timestamp>,
}

impl PolicyFacts {
    fn of(policy: &AccessPolicy) -> Option<(String, Self)> {
        if policy.metadata.deletion_timestamp.is_some() {
            return None;
        }
        let uid = policy.metadata.uid.clone()?;
        let namespace = policy.metadata.namespace.clone()?;
        let name = policy.metadata.name.clone()?;
        let spec = &policy.spec;
        let facts = Self {
            namespace,
            name,
            secrets: spec
                .secrets
                .iter()
                .map(|s| (s.name.clone(), s.clone()))
                .collect(),
            accounts: spec
                .subjects
                .iter()
                .filter_map(|s| s.service_account.as_ref())
                .map(|sa| (sa.namespace.clone(), sa.name.clone()))
                .collect(),
            selected_accounts: spec
                .subjects
                .iter()
                .filter(|s| s.namespace_selector.is_some())
                .filter_map(|s| s.service_account_name.clone())
                .collect(),
            valid_until: spec.valid_until.as_ref().map(|t| t.0),
        };
        Some((uid, facts))
    }

    /// Whether `grant`, found for a service account in `namespace`, still
    /// follows from this policy.
    fn still_grants(&self, grant: &Grant, namespace: &str) -> bool {
        let spec = &grant.spec;
        let subject = (namespace.to_owned(), spec.service_account.clone());
        spec.secret.namespace == self.namespace
            && spec.policy.namespace == self.namespace
            && spec.policy.name == self.name
            && self
                .secrets
                .get(&spec.secret.name)
                .is_some_and(|access| within_narrowing(grant, access))
            && (self.accounts.contains(&subject)
                || self.selected_accounts.contains(&spec.service_account))
            && self
                .valid_until
                .is_none_or(|until| until > Timestamp::now())
    }
}

/// Whether `grant` is no wider than the policy entry `access` narrowed it
/// to (a hand edit cannot widen a Grant beyond its policy; the secret's own
/// limits are applied again at issuance).
fn within_narrowing(grant: &Grant, access: &SecretAccess) -> bool {
    let spec = &grant.spec;
    let ttl_ok = match &access.max_ttl {
        None => true,
        Some(cap) => match (parse_duration(&spec.max_ttl), parse_duration(cap)) {
            (Ok(granted), Ok(cap)) => granted <= cap,
            _ => false,
        },
    };
    let subset = |granted: &[String], allowed: &Option<Vec<String>>| {
        allowed
            .as_ref()
            .is_none_or(|allowed| granted.iter().all(|value| allowed.contains(value)))
    };
    ttl_ok && subset(&spec.audience, &access.audience) && subset(&spec.scopes, &access.scopes)
}

/// The AccessPolicies of the cluster by uid, as the [`GrantIndex`] checks
/// Grants against them. Shares its state with the GrantIndex it came from.
#[derive(Clone)]
pub struct PolicyIndex {
    facts: Arc<RwLock<HashMap<String, PolicyFacts>>>,
    listed: watch::Sender<bool>,
    /// Shared with the GrantIndex: see [`GrantIndex::changes`].
    changed: watch::Sender<u64>,
}

impl Default for PolicyIndex {
    fn default() -> Self {
        Self {
            facts: Arc::default(),
            listed: watch::Sender::new(false),
            changed: watch::Sender::new(0),
        }
    }
}

impl PolicyIndex {
    /// How many AccessPolicies the index holds.
    pub fn len(&self) -> usize {
        self.facts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether the index holds no AccessPolicy.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn replace_all(&self, policies: impl IntoIterator<Item = AccessPolicy>) {
        let fresh = policies
            .into_iter()
            .filter_map(|policy| PolicyFacts::of(&policy))
            .collect();
        *self.facts.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        self.listed.send_replace(true);
        bump(&self.changed);
    }

    /// Keeps the index in step with the AccessPolicies `api` can see until
    /// `shutdown` is cancelled.
    pub async fn maintain(&self, api: Api<AccessPolicy>, shutdown: CancellationToken) {
        watch_index::maintain(self, api, watcher::Config::default(), shutdown).await;
    }
}

impl WatchedIndex<AccessPolicy> for PolicyIndex {
    type Entry = AccessPolicy;
    const KIND: &'static str = "AccessPolicy";

    fn entry(&self, policy: AccessPolicy) -> Option<AccessPolicy> {
        Some(policy)
    }

    fn apply(&self, policy: AccessPolicy) {
        let mut facts = self.facts.write().unwrap_or_else(PoisonError::into_inner);
        match PolicyFacts::of(&policy) {
            Some((uid, fresh)) => {
                facts.insert(uid, fresh);
            }
            // Being deleted: it grants nothing any more.
            None => {
                if let Some(uid) = &policy.metadata.uid {
                    facts.remove(uid);
                }
            }
        }
        bump(&self.changed);
    }

    fn delete(&self, policy: AccessPolicy) {
        if let Some(uid) = &policy.metadata.uid {
            self.facts
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(uid);
            bump(&self.changed);
        }
    }

    fn replace(&self, policies: Vec<AccessPolicy>) {
        self.replace_all(policies);
    }
}

impl GrantLookup for GrantIndex {
    fn is_granted(
        &self,
        namespace: &str,
        service_account: &str,
        secret: &SecretReference,
        now: Timestamp,
    ) -> bool {
        self.grants_for(namespace, service_account, secret)
            .iter()
            .any(|grant| grant_is_valid_at(grant, now))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    use super::*;
    use ferry_api::resources::{GrantSpec, PolicyReference};

    fn grant(namespace: &str, name: &str, sa: &str, secret: (&str, &str)) -> Grant {
        Grant {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY_LABEL.to_string(),
                    OPERATOR_MANAGER.to_string(),
                )])),
                ..ObjectMeta::default()
            },
            spec: GrantSpec {
                service_account: sa.into(),
                secret: SecretReference {
                    namespace: secret.0.into(),
                    name: secret.1.into(),
                },
                max_ttl: "1h".into(),
                audience: vec![],
                scopes: vec![],
                dns_names: None,
                valid_until: None,
                policy: PolicyReference {
                    namespace: secret.0.into(),
                    name: "p".into(),
                    uid: "u".into(),
                },
            },
        }
    }

    /// Policy `p` (uid `u`) in `namespace`, granting `secrets` to `subjects`.
    fn policy(namespace: &str, subjects: serde_json::Value, secrets: &[&str]) -> AccessPolicy {
        let secrets: Vec<_> = secrets.iter().map(|name| json!({"name": name})).collect();
        serde_json::from_value(json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "AccessPolicy",
            "metadata": {"name": "p", "namespace": namespace, "uid": "u"},
            "spec": {"subjects": subjects, "secrets": secrets},
        }))
        .unwrap()
    }

    /// An index of `grants` whose policy `db/p` names every subject and
    /// secret they hold.
    fn index(grants: impl IntoIterator<Item = Grant>) -> GrantIndex {
        let grants: Vec<Grant> = grants.into_iter().collect();
        let subjects: Vec<_> = grants
            .iter()
            .map(|g| json!({"serviceAccount": {"namespace": g.metadata.namespace, "name": g.spec.service_account}}))
            .collect();
        let secrets: Vec<&str> = grants.iter().map(|g| g.spec.secret.name.as_str()).collect();
        let policy = policy("db", json!(subjects), &secrets);
        GrantIndex::from_objects(grants, [policy])
    }

    fn secret(namespace: &str, name: &str) -> SecretReference {
        SecretReference {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_lookup_gives_back_the_grant_as_written() {
        let mut written = grant("app", "g1", "api", ("db", "orders"));
        written.spec.audience = vec!["orders".into()];
        written.spec.valid_until = Some(Time(Timestamp::from_second(4_000_000_000).unwrap()));
        let index = index([written.clone()]);
        let found = index.grants_for("app", "api", &secret("db", "orders"));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].spec, written.spec);
        assert_eq!(found[0].metadata.name, written.metadata.name);
        assert_eq!(found[0].metadata.namespace, written.metadata.namespace);
        assert!(is_operators(&found[0]));
    }

    #[test]
    fn grants_of_one_policy_and_secret_share_their_terms_and_leave_nothing_behind() {
        let index = index((0..100).map(|i| {
            grant(
                "app",
                &format!("g{i}"),
                &format!("sa-{i}"),
                ("db", "orders"),
            )
        }));
        {
            let entries = index.entries.read().unwrap();
            assert_eq!(
                entries.interner.terms.len(),
                1,
                "one copy of the shared terms"
            );
            assert_eq!(entries.by_name.len(), 100);
        }
        for i in 0..100 {
            index.delete(&grant(
                "app",
                &format!("g{i}"),
                &format!("sa-{i}"),
                ("db", "orders"),
            ));
        }
        {
            let entries = index.entries.read().unwrap();
            assert!(entries.by_subject.is_empty() && entries.by_name.is_empty());
            // Swept along the way: what is left is less than one sweep's worth.
            let left = entries.interner.strings.len() + entries.interner.terms.len();
            assert!(
                left <= 2 * SWEEP_AFTER,
                "{left} interned after deleting all"
            );
        }
        // A relist sweeps the rest.
        index.replace([]);
        let entries = index.entries.read().unwrap();
        assert!(entries.interner.strings.is_empty() && entries.interner.terms.is_empty());
    }

    #[test]
    fn finds_a_grant_by_namespace_service_account_and_secret() {
        let index = index([grant("app", "g1", "api", ("db", "orders"))]);
        let now = Timestamp::now();
        assert!(index.is_granted("app", "api", &secret("db", "orders"), now));
        assert!(!index.is_granted("app", "web", &secret("db", "orders"), now));
        assert!(!index.is_granted("other", "api", &secret("db", "orders"), now));
        assert!(!index.is_granted("app", "api", &secret("db", "payments"), now));
    }

    #[test]
    fn an_edit_that_changes_the_subject_moves_the_grant() {
        let index = index([
            grant("app", "g1", "api", ("db", "orders")),
            grant("app", "g0", "web", ("db", "orders")),
        ]);
        index.delete(&grant("app", "g0", "web", ("db", "orders")));
        index.apply(grant("app", "g1", "web", ("db", "orders")));
        let now = Timestamp::now();
        assert!(!index.is_granted("app", "api", &secret("db", "orders"), now));
        assert!(index.is_granted("app", "web", &secret("db", "orders"), now));
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn deleting_one_of_two_grants_for_the_same_secret_keeps_the_other() {
        let first = grant("app", "g1", "api", ("db", "orders"));
        let second = grant("app", "g2", "api", ("db", "orders"));
        let index = index([first.clone(), second.clone()]);
        index.delete(&first);
        assert!(index.is_granted("app", "api", &secret("db", "orders"), Timestamp::now()));
        index.delete(&second);
        assert!(!index.is_granted("app", "api", &secret("db", "orders"), Timestamp::now()));
        assert!(index.is_empty());
    }

    #[test]
    fn an_expired_grant_does_not_count() {
        let mut expiring = grant("app", "g1", "api", ("db", "orders"));
        let until = Timestamp::from_second(2_000_000_000).unwrap();
        expiring.spec.valid_until = Some(Time(until));
        let index = index([expiring]);
        let before = Timestamp::from_second(1_999_999_999).unwrap();
        assert!(index.is_granted("app", "api", &secret("db", "orders"), before));
        assert!(!index.is_granted("app", "api", &secret("db", "orders"), until));
    }

    #[test]
    fn replace_drops_what_the_new_list_does_not_have() {
        let index = index([grant("app", "g0", "web", ("db", "orders"))]);
        index.apply(grant("app", "g1", "api", ("db", "orders")));
        index.replace([grant("app", "g2", "web", ("db", "orders"))]);
        assert!(index.is_synced());
        let now = Timestamp::now();
        assert!(!index.is_granted("app", "api", &secret("db", "orders"), now));
        assert!(index.is_granted("app", "web", &secret("db", "orders"), now));
    }

    #[test]
    fn a_relist_keeps_the_operators_grants() {
        // The watch driver compacts a relist's Grants before the index
        // takes them whole.
        let index = index([grant("app", "g0", "web", ("db", "orders"))]);
        let listed = WatchedIndex::entry(&index, grant("app", "g1", "web", ("db", "orders")));
        WatchedIndex::replace(&index, listed.into_iter().collect());
        assert_eq!(index.len(), 1);
        assert!(index.is_granted("app", "web", &secret("db", "orders"), Timestamp::now()));
    }

    #[test]
    fn not_synced_until_grants_and_policies_are_both_listed() {
        let index = GrantIndex::new();
        assert!(!index.is_synced());
        index.replace([]);
        assert!(!index.is_synced());
        WatchedIndex::replace(index.policies(), vec![]);
        assert!(index.is_synced());
    }

    #[test]
    fn a_grant_without_the_operators_label_is_not_indexed() {
        let mut forged = grant("app", "g1", "api", ("db", "orders"));
        forged.metadata.labels = None;
        let index = index([forged.clone()]);
        assert!(index.is_empty());
        assert!(!index.is_granted("app", "api", &secret("db", "orders"), Timestamp::now()));
        // Removing the label from an indexed Grant drops it.
        let labelled = grant("app", "g1", "api", ("db", "orders"));
        index.apply(labelled);
        assert_eq!(index.len(), 1);
        index.apply(forged);
        assert!(index.is_empty());
    }

    #[test]
    fn a_grant_counts_only_while_its_policy_names_its_subject_and_secret() {
        let held = grant("app", "g1", "api", ("db", "orders"));
        let now = Timestamp::now();
        let granted = |policies: Vec<AccessPolicy>| {
            GrantIndex::from_objects([held.clone()], policies).is_granted(
                "app",
                "api",
                &secret("db", "orders"),
                now,
            )
        };
        let names_it = json!([{"serviceAccount": {"namespace": "app", "name": "api"}}]);
        assert!(granted(vec![policy("db", names_it.clone(), &["orders"])]));
        // No policy with that uid.
        assert!(!granted(vec![]));
        // The policy no longer names the secret, or the subject.
        assert!(!granted(vec![policy(
            "db",
            names_it.clone(),
            &["payments"]
        )]));
        let someone_else = json!([{"serviceAccount": {"namespace": "app", "name": "web"}}]);
        assert!(!granted(vec![policy("db", someone_else, &["orders"])]));
        // A policy with that uid in another namespace than the secret's.
        assert!(!granted(vec![policy("app", names_it.clone(), &["orders"])]));
        // A policy being deleted grants nothing.
        let mut deleting = policy("db", names_it.clone(), &["orders"]);
        deleting.metadata.deletion_timestamp = Some(Time(now));
        assert!(!granted(vec![deleting]));
        // A namespaceSelector subject naming the service account counts.
        let selected = json!([{"namespaceSelector": {"matchLabels": {"team": "a"}}, "serviceAccountName": "api"}]);
        assert!(granted(vec![policy("db", selected, &["orders"])]));
    }

    #[test]
    fn a_grant_wider_than_its_policy_entry_does_not_count() {
        let names_it = json!([{"serviceAccount": {"namespace": "app", "name": "api"}}]);
        let mut narrow = policy("db", names_it, &[]);
        narrow.spec.secrets = serde_json::from_value(json!([
            {"name": "orders", "maxTtl": "10m", "audience": ["orders-api"], "scopes": ["read"]}
        ]))
        .unwrap();
        let now = Timestamp::now();
        let granted = |edit: &dyn Fn(&mut Grant)| {
            let mut held = grant("app", "g1", "api", ("db", "orders"));
            held.spec.max_ttl = "10m".into();
            held.spec.audience = vec!["orders-api".into()];
            held.spec.scopes = vec!["read".into()];
            edit(&mut held);
            GrantIndex::from_objects([held], [narrow.clone()]).is_granted(
                "app",
                "api",
                &secret("db", "orders"),
                now,
            )
        };
        assert!(granted(&|_| {}));
        assert!(granted(&|g| g.spec.max_ttl = "5m".into()));
        assert!(!granted(&|g| g.spec.max_ttl = "1h".into()));
        assert!(!granted(&|g| g.spec.audience.push("admin-api".into())));
        assert!(!granted(&|g| g.spec.scopes.push("write".into())));
    }

    #[test]
    fn a_policy_edit_takes_effect_on_the_next_lookup() {
        let index = index([grant("app", "g1", "api", ("db", "orders"))]);
        let now = Timestamp::now();
        assert!(index.is_granted("app", "api", &secret("db", "orders"), now));
        let narrowed = policy(
            "db",
            json!([{"serviceAccount": {"namespace": "app", "name": "web"}}]),
            &["orders"],
        );
        WatchedIndex::apply(index.policies(), narrowed.clone());
        assert!(!index.is_granted("app", "api", &secret("db", "orders"), now));
        WatchedIndex::delete(index.policies(), narrowed);
        assert!(index.policies().is_empty());
    }
}
