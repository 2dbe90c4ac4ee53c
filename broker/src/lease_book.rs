//! The live leases this replica knows of: those it issued or renewed, and
//! those a sidecar watching for revocation showed it. Names only, never
//! material: what a revocation must reach, and what `kubectl ferry leases`
//! lists.
//!
//! Lease ids are stateless, so the book is this replica's view, filled
//! again after a restart as sidecars watch and renew. What must survive a
//! restart is elsewhere: PostgreSQL roles carry their pod and secret in
//! their comment (the reaper finds them), revoked leases are recorded for
//! every replica ([`crate::revoked_leases`]).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::auth::PodIdentity;
use crate::lease_id::LeaseClaims;

/// Entries past their maxTtl are swept out once the book holds this many.
const SWEEP_AT: usize = 8192;

/// One live lease, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveLease {
    /// What the lease id says (no material; the handle names a role,
    /// certificate serial or token id).
    pub claims: LeaseClaims,
    /// The source kind: `postgres`, `jwt`, `kubernetesSecret`, `x509`,
    /// `oauth2`.
    pub kind: &'static str,
    /// The pod's namespace.
    pub pod_namespace: String,
    /// The pod's name.
    pub pod_name: String,
    /// The pod's service account.
    pub service_account: String,
}

/// The live leases by serial. Shared by reference.
#[derive(Debug, Default)]
pub struct LeaseBook {
    leases: Mutex<HashMap<String, LiveLease>>,
}

impl LeaseBook {
    /// Records (or refreshes, after a renewal) the lease `claims` names,
    /// held by `pod`.
    pub fn record(&self, claims: &LeaseClaims, kind: &'static str, pod: &PodIdentity, now: i64) {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        if leases.len() >= SWEEP_AT {
            leases.retain(|_, lease| lease.claims.max_expires_at > now);
        }
        leases.insert(
            claims.serial(),
            LiveLease {
                claims: claims.clone(),
                kind,
                pod_namespace: pod.namespace.clone(),
                pod_name: pod.pod_name.clone(),
                service_account: pod.service_account.clone(),
            },
        );
    }

    /// Forgets the lease with `serial` (revoked or given back).
    pub fn forget(&self, serial: &str) {
        self.leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(serial);
    }

    /// Every live lease at `now` (past its expiry: gone, and forgotten).
    pub fn list(&self, now: i64) -> Vec<LiveLease> {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        leases.retain(|_, lease| lease.claims.expires_at > now);
        leases.values().cloned().collect()
    }

    /// Takes out of the book, and returns, the live leases `refused` says
    /// may no longer be held.
    pub fn take_refused(&self, now: i64, refused: impl Fn(&LiveLease) -> bool) -> Vec<LiveLease> {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        leases.retain(|_, lease| lease.claims.expires_at > now);
        let serials: Vec<String> = leases
            .iter()
            .filter(|(_, lease)| refused(lease))
            .map(|(serial, _)| serial.clone())
            .collect();
        serials
            .iter()
            .filter_map(|serial| leases.remove(serial))
            .collect()
    }

    /// How many leases the book holds.
    pub fn len(&self) -> usize {
        self.leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether the book holds no lease.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> PodIdentity {
        PodIdentity {
            namespace: "shop".into(),
            service_account: "web".into(),
            pod_name: name.into(),
            pod_uid: format!("uid-{name}"),
            terminating: false,
        }
    }

    /// Claims with the serial `letter` repeated (a well-formed serial).
    fn claims(letter: &str, expires_at: i64) -> LeaseClaims {
        LeaseClaims {
            version: 1,
            secret_namespace: "payments".into(),
            secret_name: "orders-db".into(),
            pod_uid: "uid".into(),
            handle: String::new(),
            issued_at: 0,
            expires_at,
            max_expires_at: expires_at,
            audience: vec![],
            scopes: None,
            serial: letter.repeat(32),
        }
    }

    #[test]
    fn a_renewal_refreshes_its_entry_and_expired_leases_are_not_listed() {
        let book = LeaseBook::default();
        book.record(&claims("a", 100), "postgres", &pod("web-1"), 0);
        book.record(&claims("a", 200), "postgres", &pod("web-1"), 50);
        book.record(&claims("b", 100), "jwt", &pod("web-2"), 50);
        assert_eq!(book.len(), 2);
        let live = book.list(150);
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].claims.expires_at, 200);
        assert_eq!(live[0].pod_name, "web-1");
    }

    #[test]
    fn refused_leases_are_taken_out_and_the_others_stay() {
        let book = LeaseBook::default();
        book.record(&claims("a", 100), "postgres", &pod("web-1"), 0);
        book.record(&claims("b", 100), "postgres", &pod("web-2"), 0);
        let taken = book.take_refused(10, |lease| lease.pod_name == "web-1");
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].claims.serial, "a".repeat(32));
        assert_eq!(book.len(), 1);
        book.forget(&"b".repeat(32));
        assert!(book.is_empty());
    }
}
