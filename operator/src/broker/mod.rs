//! The broker: the trust boundary that authenticates pods, authorizes them
//! against their Grants, and issues, renews and revokes short-lived
//! credentials.

pub mod auth;
pub mod jwt_keys;
pub mod lease_id;
pub mod metrics;
pub mod pods;
pub mod providers;
pub mod server;
pub mod service;
pub mod templates;
pub mod terms;
