//! ferry's admission webhook library: the pure mutation from a pod to the
//! patch that injects the ferry sidecar, the AdmissionReview handling
//! around it, and the MutatingWebhookConfiguration that routes pods to it.
//!
//! It depends on `ferry-contract`, `ferry-api` (without templates) and
//! `ferry-runtime`. It must never link what only the broker or the
//! operator needs (a database client, the template engine, the rate
//! limiter, certificate generation, JWT signing): it sits in the path of
//! every pod creation and should be small. `e2e/tests/dependencies.rs`
//! checks.

pub mod admission;
pub mod annotations;
pub mod config;
pub mod configuration;
pub mod metrics;
pub mod mutation;
pub mod server;
