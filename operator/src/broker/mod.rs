//! The broker: the trust boundary that authenticates pods, authorizes them
//! against their Grants, and issues, renews and revokes short-lived
//! credentials. This module holds its parts; the server that joins them
//! comes with the providers.

pub mod auth;
pub mod lease_id;
pub mod pods;
pub mod terms;
