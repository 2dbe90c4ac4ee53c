//! `ferry-webhook`: the mutating admission webhook that injects the ferry
//! sidecar into opted-in pods.

use clap::Parser;

/// Command-line interface of the webhook.
#[derive(Debug, Parser)]
#[command(name = "ferry-webhook", version, about, long_about = None, arg_required_else_help = true)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
