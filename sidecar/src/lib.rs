//! ferry's sidecar: the names and wire types that the sidecar shares with
//! the broker and the webhook, and the pieces of the `ferry-sidecar` binary.
//!
//! It sits at the root of the workspace's dependency graph (the operator and
//! the webhook depend on it, never the other way round) and must stay free of
//! kube, k8s-openapi, tokio and JSON-schema crates, so the sidecar binary
//! stays small: blocking I/O on a few std threads, rustls over std sockets.

pub mod broker_client;
pub mod config;
pub mod contract;
pub mod http1;
pub mod keeper;
pub mod log;
pub mod names;
pub mod random;
pub mod schedule;
pub mod volume;
pub mod wire;
