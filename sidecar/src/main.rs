//! `ferry-sidecar`: runs next to a workload and keeps its brokered secrets
//! in a memory-backed volume for exactly as long as the pod lives.

use clap::Parser;

/// Command-line interface of the sidecar.
#[derive(Debug, Parser)]
#[command(name = "ferry-sidecar", version, about, long_about = None, arg_required_else_help = true)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
