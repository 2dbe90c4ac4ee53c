//! ferry's operator library: the custom resource types, the reconciler that
//! derives Grants, and the broker that issues short-lived credentials.

pub mod certificates;
pub mod controller;
pub mod metrics;
