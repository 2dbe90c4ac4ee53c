//! `ferry-operator`: reconciles BrokeredSecrets and AccessPolicies into
//! Grants, and serves the broker.

use std::io::Write;

use clap::{Parser, Subcommand};

/// Command-line interface of the operator.
#[derive(Debug, Parser)]
#[command(name = "ferry-operator", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Print ferry's CustomResourceDefinitions as YAML (for `kubectl apply -f -`).
    Crds,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Commands::Crds => print_crds(),
    }
}

fn print_crds() -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(ferry_operator::crds_yaml()?.as_bytes())?;
    Ok(())
}
