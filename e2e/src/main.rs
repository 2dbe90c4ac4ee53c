//! `ferry-e2e`: runs ferry's local demo on a real control plane built from
//! Kubernetes' published Go modules.

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferry_e2e::{Cluster, RunningOperator, RunningWebhook, install_crds, wait_webhook_active};
use ferry_operator::resources::Grant;
use ferry_webhook::config::InjectionConfig;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};

/// ferry's namespace in the demo.
const FERRY_NAMESPACE: &str = "ferry-system";

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
    /// kube-controller-manager) with ferry's operator and webhook, apply the
    /// examples, show the injected pod and a refused one, and keep it all
    /// running until Ctrl-C.
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

/// The repository, whose examples/ the demo applies (the README's examples,
/// also applied by the tests).
const REPOSITORY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

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
    let client = cluster.client()?;

    eprintln!("installing ferry: CRDs, operator and webhook (as local processes)...");
    install_crds(&client).await?;
    kubectl(&cluster, &["create", "namespace", FERRY_NAMESPACE])?;
    let _operator = RunningOperator::start(cluster.config().clone())?;
    let webhook = RunningWebhook::start(
        &cluster,
        InjectionConfig {
            ferry_namespace: FERRY_NAMESPACE.into(),
            ..InjectionConfig::default()
        },
    )?;
    webhook.register(&client, FERRY_NAMESPACE).await?;
    println!(
        "webhook: {} (registered as inject.ferry.dev)",
        webhook.url()
    );
    println!();

    // The Secret behind the BrokeredSecret first, so it is Ready at once.
    // Its value is random and shown nowhere: the point is that it never is.
    kubectl(&cluster, &["create", "namespace", "payments"])?;
    // Through the API rather than kubectl's command line, where any local
    // user could read it.
    let token = format!("{:032x}", rand_u128());
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "orders-api-key"},
        "stringData": {"token": token},
    }))?;
    Api::<Secret>::namespaced(client.clone(), "payments")
        .create(&PostParams::default(), &secret)
        .await?;
    println!("(created Secret payments/orders-api-key with a random token)");
    println!();
    show(&cluster, &["apply", "-f", "examples/access.yaml"])?;
    wait_webhook_active(&client, "shop").await?;
    let grants = Api::<Grant>::namespaced(client.clone(), "shop");
    wait_for("the Grant for shop/checkout", || async {
        Ok(!grants.list(&ListParams::default()).await?.items.is_empty())
    })
    .await?;
    // The webhook's Grant index follows the operator's write within moments.
    wait_for("the webhook to admit the example pod", || async {
        let output = cluster
            .kubectl()
            .current_dir(REPOSITORY)
            .args(["apply", "-f", "examples/pod.yaml"])
            .output()?;
        Ok(output.status.success())
    })
    .await?;
    println!("$ kubectl apply -f examples/pod.yaml");
    println!("pod/checkout created");
    println!();
    show(&cluster, &["get", "bs,ap,grants", "-A"])?;
    show(
        &cluster,
        &[
            "-n",
            "shop",
            "get",
            "pod",
            "checkout",
            "-o",
            "custom-columns=POD:.metadata.name,INIT:.spec.initContainers[*].name,\
             RESTART:.spec.initContainers[0].restartPolicy,VOLUMES:.spec.volumes[*].name,\
             STATUS:.metadata.annotations.ferry\\.dev/status",
        ],
    )?;
    println!("A pod asking for a secret its service account has no Grant for is refused:");
    let refused = cluster
        .kubectl()
        .args([
            "-n",
            "shop",
            "run",
            "greedy",
            "--image=registry.example/greedy:1",
            "--labels=ferry.dev/inject=true",
            "--annotations=ferry.dev/secrets=payments/orders-api-key,payments/cards",
        ])
        .output()?;
    println!(
        "$ kubectl -n shop run greedy --labels=ferry.dev/inject=true --annotations=ferry.dev/secrets=payments/orders-api-key,payments/cards ..."
    );
    print!("{}", String::from_utf8_lossy(&refused.stderr));
    println!();
    println!("The pod stays Pending: this control plane has no node. The sidecar,");
    println!("broker and node stand-in that fetch and write the secret come next.");
    println!();
    println!(
        "Try it: export KUBECONFIG={}",
        cluster.kubeconfig().display()
    );
    println!("Press Ctrl-C to stop everything.");

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("stopping ferry and the control plane...");
    drop(webhook);
    drop(cluster);
    eprintln!("stopped; nothing left behind.");
    Ok(())
}

/// Runs kubectl quietly, failing with its stderr.
fn kubectl(cluster: &Cluster, args: &[&str]) -> anyhow::Result<()> {
    let output = cluster.kubectl().args(args).output()?;
    anyhow::ensure!(
        output.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Runs kubectl with the command and its output shown.
fn show(cluster: &Cluster, args: &[&str]) -> anyhow::Result<()> {
    println!(
        "$ kubectl {}",
        args.join(" ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    );
    let status = cluster
        .kubectl()
        .current_dir(REPOSITORY)
        .args(args)
        .status()?;
    anyhow::ensure!(
        status.success(),
        "kubectl {} failed: {status}",
        args.join(" ")
    );
    println!();
    Ok(())
}

/// Polls `check` until it holds, for at most a minute.
async fn wait_for<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !check().await? {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Ok(())
}

/// 128 random bits from the OS, for the demo's throwaway token.
fn rand_u128() -> u128 {
    let mut bytes = [0u8; 16];
    if let Ok(mut urandom) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = urandom.read_exact(&mut bytes);
    }
    u128::from_le_bytes(bytes)
}
