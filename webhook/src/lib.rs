//! ferry's admission webhook library: the pure mutation from a pod to the
//! patch that injects the ferry sidecar, the AdmissionReview handling
//! around it, and the MutatingWebhookConfiguration that routes pods to it.

pub mod admission;
pub mod annotations;
pub mod config;
pub mod configuration;
pub mod metrics;
pub mod mutation;
pub mod server;
