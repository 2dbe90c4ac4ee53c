//! The opted-in pods the broker serves, kept in memory from a watch of
//! pods labelled `ferry.dev/inject=true`: whether a token's pod still
//! exists and is not terminating is a lookup, not an API call.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use ferry_api::resources::SecretReference;
use ferry_api::revocation::Holder;
use ferry_contract::INJECT_LABEL;
use ferry_runtime::watch_index::{self, WatchedIndex};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the broker needs to know of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's service account.
    pub service_account: String,
    /// Whether deletion has begun.
    pub terminating: bool,
}

impl PodState {
    /// The pod as the holder of `secret`, as Revocations and Grants judge it.
    pub fn holder<'a>(&'a self, secret: &'a SecretReference) -> Holder<'a> {
        Holder {
            namespace: &self.namespace,
            pod: &self.name,
            service_account: &self.service_account,
            secret,
        }
    }
}

/// Whether a pod exists, as far as the index knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPresence {
    /// In the index (terminating or not).
    Present,
    /// Seen deleted by this index recently.
    Departed,
    /// Not in the index, and not seen leaving: gone long ago, or not yet
    /// seen by this replica.
    Unknown,
}

/// How many departed pods are remembered.
const DEPARTED_CAPACITY: usize = 4096;

/// Opted-in pods by uid. Cheap to clone; clones share the index.
#[derive(Clone, Debug)]
pub struct PodIndex {
    pods: Arc<RwLock<HashMap<String, PodState>>>,
    departed: Arc<Mutex<VecDeque<String>>>,
    synced: watch::Sender<bool>,
    departures: watch::Sender<u64>,
}

impl Default for PodIndex {
    fn default() -> Self {
        Self {
            pods: Arc::default(),
            departed: Arc::default(),
            synced: watch::Sender::new(false),
            departures: watch::Sender::new(0),
        }
    }
}

fn state(pod: &Pod) -> Option<(String, PodState)> {
    let metadata = &pod.metadata;
    Some((
        metadata.uid.clone()?,
        PodState {
            namespace: metadata.namespace.clone()?,
            name: metadata.name.clone()?,
            service_account: pod
                .spec
                .as_ref()
                .and_then(|spec| spec.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
            terminating: metadata.deletion_timestamp.is_some(),
        },
    ))
}

impl PodIndex {
    /// The pod with `uid`, if it exists.
    pub fn get(&self, uid: &str) -> Option<PodState> {
        self.pods
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(uid)
            .cloned()
    }

    /// Whether the pod with `uid` exists, left recently, or is unknown.
    pub fn presence(&self, uid: &str) -> PodPresence {
        if self.get(uid).is_some() {
            PodPresence::Present
        } else if self
            .departed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|departed| departed == uid)
        {
            PodPresence::Departed
        } else {
            PodPresence::Unknown
        }
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

    fn apply(&self, pod: &Pod) {
        if let Some((uid, state)) = state(pod) {
            self.pods
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(uid, state);
        }
    }

    /// Changes every time pods may have left the index (a deletion, or a
    /// relist that replaced it), so their credentials can be reaped.
    pub fn departures(&self) -> watch::Receiver<u64> {
        self.departures.subscribe()
    }

    fn departed(&self, uids: impl IntoIterator<Item = String>) {
        {
            let mut departed = self.departed.lock().unwrap_or_else(PoisonError::into_inner);
            for uid in uids {
                if departed.len() == DEPARTED_CAPACITY {
                    departed.pop_front();
                }
                departed.push_back(uid);
            }
        }
        self.departures
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    fn delete(&self, pod: &Pod) {
        if let Some(uid) = &pod.metadata.uid {
            self.pods
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(uid);
            self.departed([uid.clone()]);
        }
    }

    /// Keeps the index in step with the opted-in pods of the cluster until
    /// `shutdown` is cancelled.
    pub async fn maintain(&self, client: kube::Client, shutdown: CancellationToken) {
        let config = watcher::Config::default().labels(&format!("{INJECT_LABEL}=true"));
        watch_index::maintain(self, Api::<Pod>::all(client), config, shutdown).await;
    }
}

impl WatchedIndex<Pod> for PodIndex {
    type Entry = (String, PodState);
    const KIND: &'static str = "pod";

    fn entry(&self, pod: Pod) -> Option<(String, PodState)> {
        state(&pod)
    }

    fn apply(&self, pod: Pod) {
        PodIndex::apply(self, &pod);
    }

    fn delete(&self, pod: Pod) {
        PodIndex::delete(self, &pod);
    }

    /// Pods missing from the complete list count as departed.
    fn replace(&self, pods: Vec<(String, PodState)>) {
        let pods: HashMap<String, PodState> = pods.into_iter().collect();
        let gone: Vec<String> = {
            let mut current = self.pods.write().unwrap_or_else(PoisonError::into_inner);
            let gone = current
                .keys()
                .filter(|uid| !pods.contains_key(*uid))
                .cloned()
                .collect();
            *current = pods;
            gone
        };
        self.synced.send_replace(true);
        self.departed(gone);
    }
}
