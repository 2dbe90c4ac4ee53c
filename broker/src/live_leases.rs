//! How many leases each (pod, secret) holds, so a pod that asks again and
//! again (a crash-looping sidecar, or a hostile one) cannot pile up
//! credentials: every postgres lease is a role in the database.
//!
//! A lease counts from issuance until it is revoked or its maxTtl (the end
//! of any renewal) passes. The count is this replica's: lease ids are
//! stateless, so with N replicas a pod may hold up to N times the cap.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// The default cap on live leases per (pod, secret).
pub const DEFAULT_MAX_LIVE_LEASES: usize = 8;

/// Entries are swept whole once this many (pod, secret) keys are held, so
/// keys of pods that went away do not stay.
const SWEEP_AT: usize = 4096;

/// (pod uid, secret namespace, secret name).
type Key = (String, String, String);

/// Live leases per (pod, secret): the maxTtl end of each, in Unix seconds.
#[derive(Debug)]
pub struct LiveLeases {
    cap: usize,
    ends: Mutex<HashMap<Key, Vec<i64>>>,
}

impl Default for LiveLeases {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LIVE_LEASES)
    }
}

impl LiveLeases {
    /// A tally allowing `cap` live leases per (pod, secret).
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            ends: Mutex::default(),
        }
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Counts one more lease of the pod for the secret, live until `end`,
    /// if the pod holds fewer than the cap at `now`; false otherwise.
    pub fn reserve(&self, pod_uid: &str, namespace: &str, name: &str, end: i64, now: i64) -> bool {
        let mut ends = self.ends.lock().unwrap_or_else(PoisonError::into_inner);
        if ends.len() >= SWEEP_AT {
            ends.retain(|_, live| {
                live.retain(|end| *end > now);
                !live.is_empty()
            });
        }
        let live = ends
            .entry((pod_uid.to_owned(), namespace.to_owned(), name.to_owned()))
            .or_default();
        live.retain(|end| *end > now);
        if live.len() >= self.cap {
            return false;
        }
        live.push(end);
        true
    }

    /// Forgets one revoked lease: the one ending at `end`, else the oldest.
    pub fn forget(&self, pod_uid: &str, namespace: &str, name: &str, end: i64) {
        let mut ends = self.ends.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (pod_uid.to_owned(), namespace.to_owned(), name.to_owned());
        let Some(live) = ends.get_mut(&key) else {
            return;
        };
        let at = live
            .iter()
            .position(|e| *e == end)
            .or_else(|| (!live.is_empty()).then_some(0));
        if let Some(at) = at {
            live.remove(at);
        }
        if live.is_empty() {
            ends.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_counts_live_leases_of_one_pod_and_secret() {
        let tally = LiveLeases::new(2);
        assert!(tally.reserve("pod", "ns", "db", 200, 100));
        assert!(tally.reserve("pod", "ns", "db", 300, 100));
        assert!(!tally.reserve("pod", "ns", "db", 300, 100));
        // Another pod or another secret has its own count.
        assert!(tally.reserve("other", "ns", "db", 300, 100));
        assert!(tally.reserve("pod", "ns", "api", 300, 100));
        // An ended lease no longer counts; a revoked one neither.
        assert!(tally.reserve("pod", "ns", "db", 400, 200));
        assert!(!tally.reserve("pod", "ns", "db", 400, 200));
        tally.forget("pod", "ns", "db", 300);
        assert!(tally.reserve("pod", "ns", "db", 400, 200));
    }
}
