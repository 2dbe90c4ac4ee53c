//! ferry's broker: the trust boundary that authenticates pods by their
//! projected tokens, authorizes them against their Grants, and issues,
//! renews, revokes and reaps short-lived credentials.
//!
//! The decision core is [`service`], the sources of credentials are
//! [`providers`], and [`server`] serves the HTTPS API. It depends on
//! `ferry-contract` (the wire types), `ferry-api` and `ferry-runtime`;
//! no other ferry crate depends on it but the `ferry-operator` binary,
//! which serves it as `ferry-operator broker`.

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
