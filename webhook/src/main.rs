//! `ferry-webhook`: the mutating admission webhook that injects the ferry
//! sidecar into opted-in pods.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ferry_runtime::args::ServingArgs;
use ferry_runtime::https;
use ferry_runtime::lifecycle::{cancel_on_signal, init_tracing};
use ferry_webhook::config::{InjectionConfig, MissingGrant};
use ferry_webhook::configuration::{WebhookEndpoint, mutating_webhook_configuration_yaml};
use ferry_webhook::server::{self, ServeOptions};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use tokio_util::sync::CancellationToken;

/// Command-line interface of the webhook.
#[derive(Debug, Parser)]
#[command(name = "ferry-webhook", version, about, long_about = None, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Serve AdmissionReviews over HTTPS and inject the sidecar into
    /// opted-in pods.
    Run(Box<RunArgs>),
    /// Print the MutatingWebhookConfiguration that routes opted-in pods to
    /// this webhook, as YAML (for `kubectl apply -f -`).
    Configuration(ConfigurationArgs),
}

/// Options of `ferry-webhook run`.
#[derive(Debug, clap::Args)]
#[command(mut_arg("listen_addr", |arg| arg
    .env("FERRY_WEBHOOK_ADDR")
    .help("Address of the HTTPS admission server")))]
// The defaults are server::MAX_BODY_BYTES and server::DEFAULT_MAX_CONNECTIONS.
#[command(mut_arg("max_body_bytes", |arg| arg
    .default_value("1048576")
    .value_parser(clap::value_parser!(u64).range(1024..=server::MAX_BODY_BYTES))))]
#[command(mut_arg("max_connections", |arg| arg
    .default_value("128")))]
struct RunArgs {
    #[command(flatten)]
    serving: ServingArgs,
    /// ferry's own namespace, whose pods are never touched.
    #[arg(long, env = "POD_NAMESPACE", default_value = ferry_contract::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Image of the injected sidecar.
    #[arg(long, env = "FERRY_SIDECAR_IMAGE")]
    sidecar_image: Option<String>,
    /// imagePullPolicy of the injected sidecar.
    #[arg(
        long,
        env = "FERRY_SIDECAR_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    sidecar_pull_policy: String,
    /// HTTPS URL of the broker, as sidecars reach it.
    #[arg(
        long,
        env = "FERRY_BROKER_URL",
        default_value = ferry_contract::DEFAULT_BROKER_URL
    )]
    broker_url: String,
    /// PEM bundle the sidecars trust for the broker (default: system roots).
    #[arg(long, env = "FERRY_BROKER_CA_FILE")]
    broker_ca_file: Option<PathBuf>,
    /// Audience of the token sidecars present to the broker.
    #[arg(long, env = "FERRY_BROKER_AUDIENCE", default_value = ferry_contract::DEFAULT_BROKER_AUDIENCE)]
    broker_audience: String,
    /// Lifetime of the sidecar's projected token, in seconds (600 to 86400).
    #[arg(long, env = "FERRY_TOKEN_EXPIRATION_SECONDS", default_value_t = 600)]
    token_expiration_seconds: i64,
    /// Size limit of the memory-backed secrets volume.
    #[arg(long, env = "FERRY_VOLUME_SIZE_LIMIT", default_value = "1Mi")]
    volume_size_limit: String,
    /// CPU request of the sidecar.
    #[arg(long, env = "FERRY_SIDECAR_CPU_REQUEST", default_value = "5m")]
    sidecar_cpu_request: String,
    /// Memory request of the sidecar.
    #[arg(long, env = "FERRY_SIDECAR_MEMORY_REQUEST", default_value = "8Mi")]
    sidecar_memory_request: String,
    /// CPU limit of the sidecar (default: none).
    #[arg(long, env = "FERRY_SIDECAR_CPU_LIMIT")]
    sidecar_cpu_limit: Option<String>,
    /// Memory limit of the sidecar.
    #[arg(long, env = "FERRY_SIDECAR_MEMORY_LIMIT", default_value = "16Mi")]
    sidecar_memory_limit: String,
    /// uid of the sidecar when the pod sets none.
    #[arg(long, env = "FERRY_SIDECAR_USER", default_value_t = 65532)]
    sidecar_user: i64,
    /// How long the sidecar may take to write every secret, in seconds.
    #[arg(long, env = "FERRY_STARTUP_TIMEOUT_SECONDS", default_value_t = 120)]
    startup_timeout_seconds: i32,
    /// Most secrets one pod may ask for.
    #[arg(long, env = "FERRY_MAX_SECRETS", default_value_t = 16)]
    max_secrets: usize,
    /// What to do with a pod whose service account lacks a Grant.
    #[arg(long, env = "FERRY_MISSING_GRANT", value_enum, default_value_t = MissingGrant::Deny)]
    missing_grant: MissingGrant,
}

/// Options of `ferry-webhook configuration`.
#[derive(Debug, clap::Args)]
struct ConfigurationArgs {
    /// ferry's namespace: excluded from injection, and the Service's.
    #[arg(long, default_value = ferry_contract::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Name of the webhook's Service.
    #[arg(long, default_value = "ferry-webhook")]
    service: String,
    /// Port of the webhook's Service.
    #[arg(long, default_value_t = 443)]
    port: i32,
    /// Reach the webhook at this base URL instead of a Service.
    #[arg(long, conflicts_with_all = ["service", "port"])]
    url: Option<String>,
    /// PEM file of the CA that signed the webhook's certificate.
    #[arg(long)]
    ca_bundle_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Commands::Run(args) => run(*args).await,
        Commands::Configuration(args) => print_configuration(&args),
    }
}

fn injection_config(args: &RunArgs) -> anyhow::Result<InjectionConfig> {
    let defaults = InjectionConfig::default();
    let broker_ca_pem = match &args.broker_ca_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading broker CA {}", path.display()))?,
        ),
        None => None,
    };
    let config = InjectionConfig {
        ferry_namespace: args.namespace.clone(),
        sidecar_image: args.sidecar_image.clone().unwrap_or(defaults.sidecar_image),
        image_pull_policy: args.sidecar_pull_policy.clone(),
        broker_url: args.broker_url.clone(),
        broker_ca_pem,
        broker_audience: args.broker_audience.clone(),
        token_expiration_seconds: args.token_expiration_seconds,
        volume_size_limit: Quantity(args.volume_size_limit.clone()),
        cpu_request: Quantity(args.sidecar_cpu_request.clone()),
        memory_request: Quantity(args.sidecar_memory_request.clone()),
        cpu_limit: args.sidecar_cpu_limit.clone().map(Quantity),
        memory_limit: Quantity(args.sidecar_memory_limit.clone()),
        default_run_as_user: args.sidecar_user,
        startup_timeout_seconds: args.startup_timeout_seconds,
        max_secrets: args.max_secrets,
        missing_grant: args.missing_grant,
    };
    config.validate()?;
    Ok(config)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_tracing(args.serving.admin.log_format);
    let config = injection_config(&args)?;
    let certificate = args.serving.certificate()?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let listener = https::bind(&args.serving.listen_addr).await?;
    let admin_listener = ferry_runtime::admin::bind_admin(&args.serving.admin.admin_addr).await?;

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    server::serve(
        client,
        ServeOptions {
            listener,
            admin_listener,
            certificate,
            reload_interval: args.serving.reload_interval(),
            config,
            readiness: ferry_runtime::admin::Readiness::not_ready("starting"),
            limits: args.serving.limits(),
            shutdown_delay: args.serving.shutdown_delay(),
        },
        prometheus::Registry::new(),
        shutdown,
    )
    .await?;
    tracing::info!("ferry-webhook stopped");
    Ok(())
}

fn print_configuration(args: &ConfigurationArgs) -> anyhow::Result<()> {
    let ca_bundle = match &args.ca_bundle_file {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("reading CA bundle {}", path.display()))?
        }
        None => Vec::new(),
    };
    let endpoint = match &args.url {
        Some(url) => WebhookEndpoint::Url(url.clone()),
        None => WebhookEndpoint::Service {
            namespace: args.namespace.clone(),
            name: args.service.clone(),
            port: args.port,
        },
    };
    let yaml = mutating_webhook_configuration_yaml(&endpoint, &ca_bundle, &args.namespace)?;
    std::io::stdout().write_all(yaml.as_bytes())?;
    Ok(())
}
