//! ferry's API: the custom resources (`ferry.dev/v1alpha1`) and the pure
//! rules over them that several components apply the same way — durations
//! as the resources spell them, file templates (checked here, rendered by
//! the broker), and the derivation of Grants from an AccessPolicy.
//!
//! Shared by the operator, the broker, the webhook and the kubectl plugin.
//! It depends on `ferry-contract`, kube's types and serde; never on tokio's
//! runtime, an HTTP server, a database client or a certificate library.
//! The template checker (minijinja) is behind the `templates` feature, which
//! the webhook does not enable. Builders for tests are behind `testing`,
//! which only dev-dependencies and the e2e harness enable.

pub mod approval;
#[cfg(feature = "templates")]
pub mod checks;
pub mod confinement;
pub mod duration;
pub mod files;
pub mod grants;
pub mod resources;
pub mod revocation;
#[cfg(feature = "templates")]
pub mod templates;
#[cfg(feature = "testing")]
pub mod testing;

pub use resources::{crds, crds_yaml};
