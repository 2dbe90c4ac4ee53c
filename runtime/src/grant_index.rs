//! An in-memory index of Grants, fed by a watch and looked up in O(1) by
//! (namespace, service account, secret). The webhook asks it whether a pod
//! may request a secret; the broker asks it before issuing. Neither makes
//! an API call per request.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::watch_index::{self, WatchedIndex};
use ferry_api::grants::{GrantLookup, grant_is_valid_at};
use ferry_api::resources::{Grant, SecretReference};

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
/// names it. Watch events carry managedFields, labels and more, which would
/// triple the index's memory for nothing.
fn compact(grant: Grant) -> Grant {
    let metadata = grant.metadata;
    Grant {
        metadata: ObjectMeta {
            name: metadata.name,
            namespace: metadata.namespace,
            uid: metadata.uid,
            resource_version: metadata.resource_version,
            ..ObjectMeta::default()
        },
        spec: grant.spec,
    }
}

impl Entries {
    fn insert(&mut self, grant: Grant) {
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
    synced: watch::Sender<bool>,
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
        Self {
            entries: Arc::default(),
            synced: watch::Sender::new(false),
        }
    }

    /// An index holding exactly `grants`, marked synced (for tests and
    /// benchmarks that need no apiserver).
    pub fn from_grants(grants: impl IntoIterator<Item = Grant>) -> Self {
        let index = Self::new();
        index.replace(grants);
        index
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
        entries
            .by_subject
            .get(&subject)
            .and_then(|secrets| secrets.get(secret))
            .map(|grants| grants.values().cloned().collect())
            .unwrap_or_default()
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

    /// Whether the index has been filled from a complete list at least once.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until the index has been filled from a complete list.
    pub async fn wait_synced(&self) {
        let mut synced = self.synced.subscribe();
        // The sender lives in `self`, so this only ends when synced.
        let _ = synced.wait_for(|synced| *synced).await;
    }

    /// Adds or replaces one Grant.
    pub fn apply(&self, grant: Grant) {
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(grant);
    }

    /// Removes one Grant.
    pub fn delete(&self, grant: &Grant) {
        if let (Some(namespace), Some(name)) = (&grant.metadata.namespace, &grant.metadata.name) {
            self.entries
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&(namespace.clone(), name.clone()));
        }
    }

    /// Replaces the whole content with `grants` and marks the index synced.
    pub fn replace(&self, grants: impl IntoIterator<Item = Grant>) {
        let mut fresh = Entries::default();
        for grant in grants {
            fresh.insert(grant);
        }
        *self.entries.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        self.synced.send_replace(true);
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
        Some(compact(grant))
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
    use super::*;
    use ferry_api::testing;

    fn grant(namespace: &str, name: &str, sa: &str, secret: (&str, &str)) -> Grant {
        testing::grant(namespace, sa, secret).name(name).build()
    }

    fn secret(namespace: &str, name: &str) -> SecretReference {
        SecretReference {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    #[test]
    fn finds_a_grant_by_namespace_service_account_and_secret() {
        let index = GrantIndex::from_grants([grant("app", "g1", "api", ("db", "orders"))]);
        let now = Timestamp::now();
        assert!(index.is_granted("app", "api", &secret("db", "orders"), now));
        assert!(!index.is_granted("app", "web", &secret("db", "orders"), now));
        assert!(!index.is_granted("other", "api", &secret("db", "orders"), now));
        assert!(!index.is_granted("app", "api", &secret("db", "payments"), now));
    }

    #[test]
    fn an_edit_that_changes_the_subject_moves_the_grant() {
        let index = GrantIndex::from_grants([grant("app", "g1", "api", ("db", "orders"))]);
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
        let index = GrantIndex::from_grants([first.clone(), second.clone()]);
        index.delete(&first);
        assert!(index.is_granted("app", "api", &secret("db", "orders"), Timestamp::now()));
        index.delete(&second);
        assert!(!index.is_granted("app", "api", &secret("db", "orders"), Timestamp::now()));
        assert!(index.is_empty());
    }

    #[test]
    fn an_expired_grant_does_not_count() {
        let until = Timestamp::from_second(2_000_000_000).unwrap();
        let expiring = testing::grant("app", "api", ("db", "orders"))
            .valid_until(until)
            .build();
        let index = GrantIndex::from_grants([expiring]);
        let before = Timestamp::from_second(1_999_999_999).unwrap();
        assert!(index.is_granted("app", "api", &secret("db", "orders"), before));
        assert!(!index.is_granted("app", "api", &secret("db", "orders"), until));
    }

    #[test]
    fn replace_drops_what_the_new_list_does_not_have() {
        let index = GrantIndex::new();
        assert!(!index.is_synced());
        index.apply(grant("app", "g1", "api", ("db", "orders")));
        index.replace([grant("app", "g2", "web", ("db", "orders"))]);
        assert!(index.is_synced());
        let now = Timestamp::now();
        assert!(!index.is_granted("app", "api", &secret("db", "orders"), now));
        assert!(index.is_granted("app", "web", &secret("db", "orders"), now));
    }
}
