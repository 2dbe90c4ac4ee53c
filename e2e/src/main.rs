//! `ferry-e2e`: runs ferry's local demo on a real control plane built from
//! Kubernetes' published Go modules.

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferry_e2e::Cluster;

/// Command-line interface of the e2e harness.
#[derive(Debug, Parser)]
#[command(name = "ferry-e2e", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Start a local control plane (etcd, kube-apiserver,
    /// kube-controller-manager), show it with kubectl, and keep it running
    /// until Ctrl-C.
    Demo,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_client::client::builder=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Commands::Demo => demo().await,
    }
}

async fn demo() -> anyhow::Result<()> {
    eprintln!(
        "starting a local control plane (the first run builds it from Go modules: many minutes)..."
    );
    let cluster = Cluster::start()
        .await
        .context("starting the control plane")?;
    println!("apiserver: {}", cluster.server());
    println!("kubeconfig: {}", cluster.kubeconfig().display());
    println!("control-plane process group: {}", cluster.process_group());
    println!("logs: {}", cluster.dir().join("logs").display());
    println!();
    println!("$ kubectl get ns");
    let status = cluster
        .kubectl()
        .args(["get", "ns"])
        .status()
        .context("running kubectl")?;
    anyhow::ensure!(status.success(), "kubectl get ns failed: {status}");
    println!();
    println!(
        "Try it: export KUBECONFIG={}",
        cluster.kubeconfig().display()
    );
    println!("Press Ctrl-C to stop the control plane.");

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("stopping the control plane...");
    drop(cluster);
    eprintln!("stopped; nothing left behind.");
    Ok(())
}
