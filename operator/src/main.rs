//! `ferry-operator`: reconciles BrokeredSecrets and AccessPolicies into
//! Grants, and serves the broker.

use clap::Parser;

/// Command-line interface of the operator.
#[derive(Debug, Parser)]
#[command(name = "ferry-operator", version, about, long_about = None, arg_required_else_help = true)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
