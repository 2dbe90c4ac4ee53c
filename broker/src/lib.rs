//! ferry's broker: the trust boundary that authenticates pods by their
//! projected tokens, authorizes them against their Grants, and issues,
//! renews, revokes and reaps short-lived credentials.
//!
//! The decision core is [`service`], the sources of credentials are
//! [`providers`], the HTTPS API is [`routes`], the keys the replicas share
//! are kept by [`keys`], revoked leases are remembered by [`revoked_leases`],
//! expired credentials are dropped by [`reaper`],
//! and [`server::run`] wires it all into the `ferry-operator broker`
//! process. It depends on `ferry-contract` (the wire types), `ferry-api`
//! and `ferry-runtime`; no other ferry crate depends on it but the
//! `ferry-operator` binary, which serves it as `ferry-operator broker`. It
//! must never depend on the operator's library, the webhook or the sidecar
//! (`e2e/tests/dependencies.rs` checks). It signs the `x509` source's
//! certificates (rcgen) but makes no key for them: pods make their own.

pub mod admin_rotation;
pub mod auth;
pub mod consent;
pub mod custody;
pub mod held_watches;
pub mod jwt_keys;
pub mod key_slots;
pub mod keys;
pub mod lease_api;
pub mod lease_book;
pub mod lease_id;
pub mod lease_keys;
pub mod live_leases;
pub mod metrics;
pub mod pods;
pub mod providers;
pub mod reaper;
pub mod revocation_index;
pub mod revoked_leases;
pub mod routes;
pub mod seal;
pub mod server;
pub mod service;
pub mod sweeper;
pub mod templates;
pub mod terms;
