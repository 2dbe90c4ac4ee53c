//! `kubectl ferry`: the kubectl plugin that answers who can get which
//! secret, how narrowly and until when, and who holds it right now; and
//! lints, requests, approves, denies and revokes access.
//!
//! The decisions are never restated here: Grants are judged by the
//! runtime's `GrantIndex` (what the broker and the webhook consult),
//! objects by `ferry_api`'s checks and Grant derivation (what the operator
//! runs), and by the CRDs' own schemas and CEL rules (what the apiserver
//! applies). This crate fetches, calls those, and prints.

#![forbid(unsafe_code)]

pub mod access;
pub mod cluster;
pub mod explain;
pub mod leases;
pub mod lint;
pub mod output;
pub mod requests;
pub mod revoke;
pub mod schema;
pub mod target;
