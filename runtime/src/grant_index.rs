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

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::watch_index::{self, WatchedIndex};
use ferry_api::duration::parse_duration;
use ferry_api::grants::{GrantLookup, grant_is_valid_at};
use ferry_api::resources::{AccessPolicy, Grant, SecretAccess, SecretReference};
use ferry_contract::{MANAGED_BY_LABEL, OPERATOR_MANAGER};

/// (namespace, service account): who a Grant is for.
type Subject = (String, String);

#[derive(Default)]
struct Entries {
    /// Subject -> secret -> Grants by name (several policies may grant the
    /// same secret to the same service account).
    by_subject: HashMap<Subject, HashMap<SecretReference, BTreeMap<String, Arc<Grant>>>>,
    /// (namespace, Grant name) -> where the Grant sits in `by_subject`, so
    /// a deletion or an edit that changes the subject finds the old entry.
    by_name: HashMap<(String, String), (Subject, SecretReference)>,
}

/// The Grant as the index keeps it: the spec, and of the metadata only what
/// names it and the managed-by label. Watch events carry managedFields,
/// other labels and more, which would triple the index's memory for
/// nothing. Compacting twice changes nothing: a relist's entries are
/// compacted before the index inserts them.
fn compact(grant: Grant) -> Grant {
    let metadata = grant.metadata;
    let managed_by = metadata
        .labels
        .and_then(|mut labels| labels.remove_entry(MANAGED_BY_LABEL));
    Grant {
        metadata: ObjectMeta {
            name: metadata.name,
            namespace: metadata.namespace,
            uid: metadata.uid,
            resource_version: metadata.resource_version,
            labels: managed_by.map(|label| BTreeMap::from([label])),
            ..ObjectMeta::default()
        },
        spec: grant.spec,
    }
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
    fn insert(&mut self, grant: Grant) {
        if !is_operators(&grant) {
            // An edit that removed the label drops the Grant.
            if let (Some(namespace), Some(name)) = (&grant.metadata.namespace, &grant.metadata.name)
            {
                self.remove(&(namespace.clone(), name.clone()));
            }
            return;
        }
        let grant = compact(grant);
        let Some(namespace) = grant.metadata.namespace.clone() else {
            return;
        };
        let Some(name) = grant.metadata.name.clone() else {
            return;
        };
        let key = (namespace.clone(), name.clone());
        self.remove(&key);
        let subject = (namespace, grant.spec.service_account.clone());
        let secret = grant.spec.secret.clone();
        self.by_subject
            .entry(subject.clone())
            .or_default()
            .entry(secret.clone())
            .or_default()
            .insert(name, Arc::new(grant));
        self.by_name.insert(key, (subject, secret));
    }

    fn remove(&mut self, key: &(String, String)) {
        let Some((subject, secret)) = self.by_name.remove(key) else {
            return;
        };
        if let Some(secrets) = self.by_subject.get_mut(&subject) {
            if let Some(grants) = secrets.get_mut(&secret) {
                grants.remove(&key.1);
                if grants.is_empty() {
                    secrets.remove(&secret);
                }
            }
            if secrets.is_empty() {
                self.by_subject.remove(&subject);
            }
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
        // Borrowed lookups would need a custom key type; two short string
        // copies cost less than the lock.
        let subject = (namespace.to_owned(), service_account.to_owned());
        let Some(grants) = entries
            .by_subject
            .get(&subject)
            .and_then(|secrets| secrets.get(secret))
        else {
            return Vec::new();
        };
        let policies = self
            .policies
            .facts
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        grants
            .values()
            .filter(|grant| {
                policies
                    .get(&grant.spec.policy.uid)
                    .is_some_and(|policy| policy.still_grants(grant, namespace))
            })
            .cloned()
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
            .insert(grant);
        bump(&self.changed);
    }

    /// Removes one Grant.
    pub fn delete(&self, grant: &Grant) {
        if let (Some(namespace), Some(name)) = (&grant.metadata.namespace, &grant.metadata.name) {
            self.entries
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&(namespace.clone(), name.clone()));
            bump(&self.changed);
        }
    }

    /// Replaces the whole content with `grants` and marks the index synced.
    pub fn replace(&self, grants: impl IntoIterator<Item = Grant>) {
        let mut fresh = Entries::default();
        for grant in grants {
            fresh.insert(grant);
        }
        *self.entries.write().unwrap_or_else(PoisonError::into_inner) = fresh;
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
    type Entry = Grant;
    const KIND: &'static str = "Grant";

    fn entry(&self, grant: Grant) -> Option<Grant> {
        is_operators(&grant).then(|| compact(grant))
    }

    fn apply(&self, grant: Grant) {
        GrantIndex::apply(self, grant);
    }

    fn delete(&self, grant: Grant) {
        GrantIndex::delete(self, &grant);
    }

    fn replace(&self, grants: Vec<Grant>) {
        tracing::debug!(grants = grants.len(), "grant index synced");
        GrantIndex::replace(self, grants);
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
