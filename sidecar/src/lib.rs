//! ferry's sidecar: the pieces of the `ferry-sidecar` binary that keeps a
//! pod's brokered secrets in its memory-backed volume.
//!
//! It depends on `ferry-contract` (the names and wire types it shares with
//! the broker and the webhook) and on nothing of the rest of ferry. It must
//! never link kube, k8s-openapi, tokio or a JSON-schema crate: it is
//! injected into every opted-in pod, so its size and memory are a feature.
//! Blocking I/O on a few std threads, rustls over std sockets;
//! `e2e/tests/dependencies.rs` checks what it links.

pub mod broker_client;
pub mod config;
pub mod csr;
pub mod http1;
pub mod keeper;
pub mod log;
pub mod names;
pub mod random;
pub mod reload;
pub mod schedule;
pub mod volume;
