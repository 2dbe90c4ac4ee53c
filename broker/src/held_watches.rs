//! How many revocation watches a replica holds: in all, and per pod.
//!
//! A held watch lends its connection's shares of the serving limits back
//! ([`ferry_runtime::serving::ConnectionSlot::lend`]): one idle request per
//! running pod would otherwise fill `--max-connections` and make issuance
//! and renewal wait behind watches in the accept queue. Watches are bounded
//! here instead, by their own limit (`--max-watches`, sized to memory) and
//! per pod (a sidecar holds one; two leave room for a retry that overlaps
//! the old one), so one tenant's pod cannot hold many. A watch refused for
//! either reason is answered 429 with a Retry-After; the sidecar backs off
//! and its leases are still refused at their next renewal if withdrawn.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::IntGauge;

/// Watches one replica holds at once by default. The revocation benchmark
/// measured 69 KiB of broker memory per watching pod (its TLS connection,
/// task and pod cache entry together), so 2,048 stay near 140 MiB, inside
/// the chart's 256Mi limit with the indexes.
pub const DEFAULT_MAX_WATCHES: usize = 2048;

/// Watches one pod may hold at once.
pub const MAX_WATCHES_PER_POD: usize = 2;

/// Seconds a refused watch is told to wait before asking again.
pub const RETRY_AFTER_SECONDS: u64 = 60;

/// The watches held now, bounded in all and per pod.
#[derive(Debug)]
pub struct HeldWatches {
    max: usize,
    held: Mutex<Counts>,
    gauge: IntGauge,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_pod: HashMap<String, usize>,
}

/// Why a watch was not held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchRefused {
    /// The replica holds `--max-watches` already.
    ReplicaFull,
    /// The pod holds [`MAX_WATCHES_PER_POD`] already.
    PodFull,
}

impl HeldWatches {
    /// At most `max` at once (at least one); `gauge` shows how many.
    pub fn new(max: usize, gauge: IntGauge) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            held: Mutex::default(),
            gauge,
        })
    }

    /// Holds one watch for the pod `pod_uid` until the returned guard
    /// drops (also when the client goes away and the request is dropped).
    pub fn hold(self: &Arc<Self>, pod_uid: &str) -> Result<HeldWatch, WatchRefused> {
        let mut counts = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.max {
            return Err(WatchRefused::ReplicaFull);
        }
        let pod = counts.per_pod.entry(pod_uid.to_owned()).or_insert(0);
        if *pod >= MAX_WATCHES_PER_POD {
            return Err(WatchRefused::PodFull);
        }
        *pod += 1;
        counts.total += 1;
        self.gauge.inc();
        Ok(HeldWatch {
            watches: Arc::clone(self),
            pod_uid: pod_uid.to_owned(),
        })
    }
}

/// One held watch, counted until it drops.
#[derive(Debug)]
pub struct HeldWatch {
    watches: Arc<HeldWatches>,
    pod_uid: String,
}

impl Drop for HeldWatch {
    fn drop(&mut self) {
        let mut counts = self
            .watches
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(pod) = counts.per_pod.get_mut(&self.pod_uid) {
            *pod = pod.saturating_sub(1);
            if *pod == 0 {
                counts.per_pod.remove(&self.pod_uid);
            }
        }
        self.watches.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watches(max: usize) -> Arc<HeldWatches> {
        HeldWatches::new(max, IntGauge::new("watches", "held").unwrap())
    }

    #[test]
    fn a_pod_holds_at_most_two_and_the_replica_at_most_its_limit() {
        let held = watches(3);
        let first = held.hold("pod-a").unwrap();
        let _second = held.hold("pod-a").unwrap();
        assert_eq!(held.hold("pod-a").unwrap_err(), WatchRefused::PodFull);
        let _other = held.hold("pod-b").unwrap();
        assert_eq!(held.hold("pod-c").unwrap_err(), WatchRefused::ReplicaFull);
        assert_eq!(held.gauge.get(), 3);

        drop(first);
        assert_eq!(held.gauge.get(), 2);
        let _again = held.hold("pod-a").unwrap();
        assert_eq!(held.hold("pod-c").unwrap_err(), WatchRefused::ReplicaFull);
    }

    #[test]
    fn a_pod_that_stops_watching_is_forgotten() {
        let held = watches(8);
        drop(held.hold("pod-a").unwrap());
        let counts = held.held.lock().unwrap();
        assert_eq!(counts.total, 0);
        assert!(counts.per_pod.is_empty());
    }
}
