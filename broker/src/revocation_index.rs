//! The Revocations of the cluster, kept in memory from a watch: whether an
//! incident responder's order takes a holder's access away is a lookup on
//! every issuance, renewal and sweep, never an API call.
//!
//! Revocations are few (orders, not state), so a lookup scans them all.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use ferry_api::resources::{PolicyReference, Revocation};
use ferry_api::revocation::{Holder, blocks_holder, in_force, voids_policy};
use ferry_runtime::watch_index::{self, WatchedIndex};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The Revocation that takes access away, as the audit log names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// `namespace/name` of the Revocation.
    pub revocation: String,
    /// The responder's reason: for the audit log only, never for the pod.
    pub reason: String,
}

impl Block {
    fn of(revocation: &Revocation) -> Self {
        Self {
            revocation: format!(
                "{}/{}",
                revocation.namespace().unwrap_or_default(),
                revocation.name_any()
            ),
            reason: revocation.spec.reason.clone(),
        }
    }
}

/// Revocations in force by (namespace, name).
type Orders = HashMap<(String, String), Arc<Revocation>>;

/// The Revocations in force, by (namespace, name). Cheap to clone; clones
/// share the index.
#[derive(Clone, Debug)]
pub struct RevocationIndex {
    orders: Arc<RwLock<Orders>>,
    synced: watch::Sender<bool>,
    changed: watch::Sender<u64>,
}

impl Default for RevocationIndex {
    fn default() -> Self {
        Self {
            orders: Arc::default(),
            synced: watch::Sender::new(false),
            changed: watch::Sender::new(0),
        }
    }
}

fn key(revocation: &Revocation) -> Option<(String, String)> {
    Some((
        revocation.metadata.namespace.clone()?,
        revocation.metadata.name.clone()?,
    ))
}

impl RevocationIndex {
    /// An index holding exactly `revocations`, marked synced (for tests).
    pub fn from_objects(revocations: impl IntoIterator<Item = Revocation>) -> Self {
        let index = Self::default();
        WatchedIndex::replace(&index, revocations.into_iter().collect());
        index
    }

    /// The first Revocation in force that blocks `holder` (a pod, service
    /// account or secret target).
    pub fn blocking(&self, holder: &Holder<'_>) -> Option<Block> {
        self.find(|revocation| blocks_holder(revocation, holder))
    }

    /// The first Revocation in force that voids the Grants of `policy`.
    pub fn voiding(&self, policy: &PolicyReference) -> Option<Block> {
        self.find(|revocation| voids_policy(revocation, policy))
    }

    fn find(&self, matches: impl Fn(&Revocation) -> bool) -> Option<Block> {
        self.orders
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .find(|revocation| matches(revocation))
            .map(|revocation| Block::of(revocation))
    }

    /// How many Revocations are in force.
    pub fn len(&self) -> usize {
        self.orders
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no Revocation is in force.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes whenever a Revocation comes, goes or changes phase.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether the index has been filled from a complete list.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until the index has been filled from a complete list.
    pub async fn wait_synced(&self) {
        let mut synced = self.synced.subscribe();
        let _ = synced.wait_for(|synced| *synced).await;
    }

    /// Keeps the index in step with the cluster's Revocations until
    /// `shutdown` is cancelled.
    pub async fn maintain(&self, client: kube::Client, shutdown: CancellationToken) {
        watch_index::maintain(
            self,
            Api::<Revocation>::all(client),
            watcher::Config::default(),
            shutdown,
        )
        .await;
    }

    fn bump(&self) {
        self.changed
            .send_modify(|count| *count = count.wrapping_add(1));
    }
}

impl WatchedIndex<Revocation> for RevocationIndex {
    type Entry = Revocation;
    const KIND: &'static str = "Revocation";

    fn entry(&self, revocation: Revocation) -> Option<Revocation> {
        Some(revocation)
    }

    fn apply(&self, revocation: Revocation) {
        let Some(key) = key(&revocation) else {
            return;
        };
        {
            let mut orders = self.orders.write().unwrap_or_else(PoisonError::into_inner);
            if in_force(&revocation) {
                orders.insert(key, Arc::new(revocation));
            } else {
                orders.remove(&key);
            }
        }
        self.bump();
    }

    fn delete(&self, revocation: Revocation) {
        if let Some(key) = key(&revocation) {
            self.orders
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
            self.bump();
        }
    }

    fn replace(&self, revocations: Vec<Revocation>) {
        let fresh = revocations
            .into_iter()
            .filter(in_force)
            .filter_map(|revocation| Some((key(&revocation)?, Arc::new(revocation))))
            .collect();
        *self.orders.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        self.synced.send_replace(true);
        self.bump();
    }
}
