//! ferry's operator: the controllers that turn AccessPolicies and
//! BrokeredSecrets into Grants and status ([`controller`]), and the
//! certificate manager that issues the webhook's and broker's serving
//! certificates ([`certificates`]); and the admission policies installed
//! with ferry ([`admission`]).
//!
//! It depends on `ferry-contract`, `ferry-api` and `ferry-runtime`; the
//! package depends on `ferry-broker` only for its binary's `broker`
//! subcommand, and the library uses none of it. It must never depend on
//! the webhook or the sidecar.

pub mod admission;
pub mod certificates;
pub mod controller;
pub mod metrics;
