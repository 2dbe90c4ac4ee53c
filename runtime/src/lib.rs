//! ferry's server runtime: what every ferry server process is made of, the
//! same way in each. HTTPS serving with certificate reload ([`https`]) within bounds
//! ([`serving`]), the
//! admin port ([`admin`]), the command-line options every server shares
//! ([`args`]), logging and signals ([`lifecycle`]), leader election
//! ([`leader`]), the one way to write a Secret ferry owns ([`secrets`]),
//! the one driver of an index kept from a watch ([`watch_index`]), and the
//! Grant index the webhook and the broker answer from ([`grant_index`]).
//!
//! It depends on `ferry-contract`, `ferry-api`, kube and the HTTP stack;
//! never on what only one component needs (database clients, templating,
//! certificate generation, JWT signing), so the webhook links none of that.

pub mod admin;
pub mod args;
pub mod grant_index;
pub mod https;
pub mod leader;
pub mod lifecycle;
pub mod secrets;
pub mod serving;
pub mod watch_index;
