//! ferry's sidecar library: the names and wire types that the sidecar shares
//! with the broker and the webhook.
//!
//! It sits at the root of the workspace's dependency graph (the operator and
//! the webhook depend on it, never the other way round) and must stay free of
//! kube, k8s-openapi and JSON-schema crates, so the sidecar binary stays small.

pub mod contract;
pub mod wire;
