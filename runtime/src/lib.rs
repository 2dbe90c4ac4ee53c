//! ferry's server runtime: what every ferry server process is made of, the
//! same way in each. HTTPS serving with certificate reload ([`https`]), the
//! admin port ([`admin`]), logging and signals ([`lifecycle`]), leader
//! election ([`leader`]), and the Grant index the webhook and the broker
//! answer from ([`grant_index`]).
//!
//! It depends on `ferry-contract`, `ferry-api`, kube and the HTTP stack;
//! never on what only one component needs (database clients, templating,
//! certificate generation, JWT signing), so the webhook links none of that.

pub mod admin;
pub mod grant_index;
pub mod https;
pub mod leader;
pub mod lifecycle;
