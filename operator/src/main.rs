//! `ferry-operator`: reconciles BrokeredSecrets and AccessPolicies into
//! Grants, and serves the broker.

use std::io::Write;
use std::num::NonZeroU32;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ferry_operator::metrics::OperatorMetrics;
use ferry_operator::{certificates, controller};
use ferry_runtime::admin::{self, AdminState, Readiness};
use ferry_runtime::leader::{self, LeaderConfig, LeaderElector};
use ferry_runtime::lifecycle::{LogFormat, cancel_on_signal, init_tracing};
use tokio_util::sync::CancellationToken;

/// Command-line interface of the operator.
#[derive(Debug, Parser)]
#[command(name = "ferry-operator", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Run the controllers: AccessPolicies and BrokeredSecrets into Grants.
    /// Replicas elect a leader on a Lease; only the leader reconciles.
    Run(RunArgs),
    /// Serve the broker: authenticate pods by their projected tokens and
    /// issue, renew and revoke leases on the secrets their Grants allow.
    /// Replicas are stateless and interchangeable.
    Broker(BrokerArgs),
    /// Print ferry's CustomResourceDefinitions as YAML (for `kubectl apply -f -`).
    Crds {
        /// Write one `<crd name>.yaml` per CRD into DIR instead (created if
        /// missing; stale files of ferry's API group are removed).
        #[arg(long, value_name = "DIR")]
        out_dir: Option<std::path::PathBuf>,
    },
}

/// Options of `ferry-operator run`.
#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Address of the admin server (/livez, /readyz, /metrics).
    #[arg(long, env = "FERRY_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    admin_addr: String,
    /// Namespace of the leader-election Lease: the operator's own.
    #[arg(long, env = "POD_NAMESPACE", default_value = ferry_contract::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, env = "FERRY_LEASE_NAME", default_value = "ferry-operator")]
    lease_name: String,
    /// Log format: JSON lines for production, text for a terminal.
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    #[command(flatten)]
    certificates: CertificateArgs,
}

/// Options of the certificate manager of `ferry-operator run`.
#[derive(Debug, clap::Args)]
struct CertificateArgs {
    /// Generate a CA and the webhook's and broker's serving certificates
    /// into Secrets in the operator's namespace, renew them before they
    /// expire, and patch the CA into the webhook configuration's caBundle
    /// (the leader does this). Off when cert-manager does the job.
    #[arg(long, env = "FERRY_MANAGE_CERTIFICATES")]
    manage_certificates: bool,
    /// Secret of the CA certificate and key.
    #[arg(long, env = "FERRY_CA_SECRET", default_value = certificates::DEFAULT_CA_SECRET)]
    ca_secret: String,
    /// The webhook's Service (its certificate covers the Service's DNS names).
    #[arg(long, env = "FERRY_WEBHOOK_SERVICE", default_value = "ferry-webhook")]
    webhook_service: String,
    /// Secret of the webhook's serving certificate.
    #[arg(long, env = "FERRY_WEBHOOK_TLS_SECRET", default_value = certificates::DEFAULT_WEBHOOK_TLS_SECRET)]
    webhook_tls_secret: String,
    /// The broker's Service (its certificate covers the Service's DNS names).
    #[arg(long, env = "FERRY_BROKER_SERVICE", default_value = "ferry-broker")]
    broker_service: String,
    /// Secret of the broker's serving certificate.
    #[arg(long, env = "FERRY_BROKER_TLS_SECRET", default_value = certificates::DEFAULT_BROKER_TLS_SECRET)]
    broker_tls_secret: String,
    /// MutatingWebhookConfiguration whose caBundle is kept.
    #[arg(
        long,
        env = "FERRY_WEBHOOK_CONFIGURATION",
        default_value = ferry_contract::WEBHOOK_CONFIGURATION_NAME
    )]
    webhook_configuration: String,
    /// The cluster's DNS domain.
    #[arg(long, env = "FERRY_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// Lifetime of serving certificates, in days (renewed with a third left).
    #[arg(long, env = "FERRY_CERTIFICATE_DAYS", default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..=3650))]
    certificate_days: u64,
    /// Lifetime of the CA, in days (renewed with a third left).
    #[arg(long, env = "FERRY_CA_DAYS", default_value_t = 3650, value_parser = clap::value_parser!(u64).range(2..=36500))]
    ca_days: u64,
}

impl CertificateArgs {
    fn config(&self, namespace: &str) -> certificates::CertificateConfig {
        use certificates::{CertificateConfig, ServingCertificate, service_dns_names};
        const DAY: u64 = 86_400;
        let serving = |service: &str, secret: &str| ServingCertificate {
            secret: secret.to_owned(),
            dns_names: service_dns_names(service, namespace, &self.cluster_domain),
        };
        CertificateConfig {
            namespace: namespace.to_owned(),
            ca_secret: self.ca_secret.clone(),
            serving: vec![
                serving(&self.webhook_service, &self.webhook_tls_secret),
                serving(&self.broker_service, &self.broker_tls_secret),
            ],
            webhook_configuration: self.webhook_configuration.clone(),
            ca_validity: std::time::Duration::from_secs(self.ca_days * DAY),
            serving_validity: std::time::Duration::from_secs(self.certificate_days * DAY),
        }
    }
}

/// Options of `ferry-operator broker`.
#[derive(Debug, clap::Args)]
struct BrokerArgs {
    /// Address of the HTTPS API.
    #[arg(long, env = "FERRY_BROKER_ADDR", default_value = "0.0.0.0:8443")]
    listen_addr: String,
    /// Address of the admin server (/livez, /readyz, /metrics).
    #[arg(long, env = "FERRY_ADMIN_ADDR", default_value = "0.0.0.0:8081")]
    admin_addr: String,
    /// PEM certificate chain served; reloaded when the file changes.
    #[arg(long, env = "FERRY_TLS_CERT", default_value = "/etc/ferry/tls/tls.crt")]
    tls_cert: std::path::PathBuf,
    /// PEM private key of the certificate; reloaded with it.
    #[arg(long, env = "FERRY_TLS_KEY", default_value = "/etc/ferry/tls/tls.key")]
    tls_key: std::path::PathBuf,
    /// How often the certificate files are checked for changes, in seconds.
    #[arg(long, env = "FERRY_TLS_RELOAD_SECONDS", default_value_t = 10)]
    tls_reload_seconds: u64,
    /// The audience sidecar tokens must carry.
    #[arg(long, env = "FERRY_BROKER_AUDIENCE", default_value = ferry_contract::DEFAULT_BROKER_AUDIENCE)]
    audience: String,
    /// ferry's namespace, where the lease-key Secret lives.
    #[arg(long, env = "POD_NAMESPACE", default_value = ferry_contract::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Name of the Secret holding the key that seals lease ids (created
    /// when absent; shared by all replicas).
    #[arg(
        long,
        env = "FERRY_LEASE_KEY_SECRET",
        default_value = "ferry-broker-lease-key"
    )]
    lease_key_secret: String,
    /// The default `iss` of minted JWTs, and where the JWKS is published
    /// (`<issuer>/v1/jwks`): the broker's URL as clients reach it.
    #[arg(
        long,
        env = "FERRY_ISSUER",
        default_value = ferry_contract::DEFAULT_BROKER_URL
    )]
    issuer: String,
    /// Name of the Secret holding the JWT signing keys (created when
    /// absent; shared by all replicas).
    #[arg(
        long,
        env = "FERRY_JWT_KEY_SECRET",
        default_value = "ferry-broker-jwt-keys"
    )]
    jwt_key_secret: String,
    /// How often the JWT signing keys rotate, like `30d` or `720h` (at
    /// least 24h). A key is published one period before it signs and one
    /// after, so tokens (ttl at most 24h) verify until they expire.
    #[arg(
        long,
        env = "FERRY_JWT_ROTATION_PERIOD",
        default_value = ferry_broker::jwt_keys::DEFAULT_ROTATION_PERIOD,
        value_parser = ferry_broker::jwt_keys::parse_rotation_period
    )]
    jwt_rotation_period: std::time::Duration,
    /// Requests a second each service account may make (all its pods together).
    #[arg(long, env = "FERRY_RATE_LIMIT", default_value_t = NonZeroU32::new(50).unwrap_or(NonZeroU32::MIN))]
    rate_limit: NonZeroU32,
    /// Requests a service account may make at once after a quiet spell.
    #[arg(long, env = "FERRY_RATE_LIMIT_BURST", default_value_t = NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN))]
    rate_limit_burst: NonZeroU32,
    /// Seconds between reaper passes, which drop revocable credentials
    /// (PostgreSQL roles) that expired or whose pod is gone. Pod deletions
    /// also start a pass at once.
    #[arg(long, env = "FERRY_REAP_INTERVAL_SECONDS", default_value_t = 60)]
    reap_interval_seconds: u64,
    /// Log format: JSON lines for production, text for a terminal.
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Commands::Run(args) => run(args).await,
        Commands::Broker(args) => broker(args).await,
        Commands::Crds { out_dir } => print_crds(out_dir.as_deref()),
    }
}

/// Serves the admin port at once (standbys are live and ready too), waits
/// to lead, runs the controllers, and on SIGTERM stops them, releases the
/// lease so another replica takes over at once, and exits.
async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format);
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (in-cluster config or KUBECONFIG)")?;
    let registry = prometheus::Registry::new();
    let metrics = Arc::new(OperatorMetrics::new(&registry)?);
    let readiness = Readiness::default();
    let shutdown = CancellationToken::new();

    let listener = admin::bind_admin(&args.admin_addr).await?;
    let admin = tokio::spawn(admin::serve_admin(
        listener,
        AdminState {
            readiness: readiness.clone(),
            registry,
        },
        shutdown.clone().cancelled_owned(),
    ));
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let identity = leader::default_identity();
    let config = LeaderConfig::new(&args.namespace, &args.lease_name, &identity);
    let elector = LeaderElector::new(client.clone(), config)?;
    readiness.set_ready();
    tracing::info!(%identity, lease = %format!("{}/{}", args.namespace, args.lease_name), "waiting to lead");
    let guard = tokio::select! {
        guard = elector.run_until_leader() => guard?,
        () = shutdown.cancelled() => {
            let _ = admin.await;
            return Ok(());
        }
    };
    metrics.set_leader(true);
    tracing::info!(%identity, "leading; starting controllers");
    if args.certificates.manage_certificates {
        // Only the leader writes; it stops with the controllers.
        tokio::spawn(certificates::run_certificate_manager(
            client.clone(),
            args.certificates.config(&args.namespace),
            std::time::Duration::from_secs(60),
            shutdown.clone(),
        ));
    }

    let controllers = controller::run(client, metrics.clone(), Some(identity), shutdown.clone());
    tokio::pin!(controllers);
    let lost = guard.lost();
    let outcome = tokio::select! {
        () = &mut controllers => Ok(()),
        () = lost => Err(anyhow::anyhow!(
            "lost the leader lease; exiting so that a restart rejoins as a candidate"
        )),
    };
    shutdown.cancel();
    if outcome.is_err() {
        // Stop reconciling before anyone else may start.
        controllers.await;
    }
    metrics.set_leader(false);
    if let Err(error) = guard.release().await {
        tracing::warn!(%error, "could not release the leader lease; it will expire");
    }
    let _ = admin.await;
    tracing::info!("stopped");
    outcome
}

/// Serves the broker until SIGTERM, then drains and exits.
async fn broker(args: BrokerArgs) -> anyhow::Result<()> {
    use ferry_broker::server::{self, BrokerOptions};
    use ferry_runtime::https::{self, ReloadingCertificate};
    init_tracing(args.log_format);
    let certificate = ReloadingCertificate::load(&args.tls_cert, &args.tls_key)?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (in-cluster config or KUBECONFIG)")?;
    let keys =
        server::load_or_create_lease_keys(&client, &args.namespace, &args.lease_key_secret).await?;
    let jwt = server::load_or_create_jwt_provider(
        &client,
        &args.namespace,
        &args.jwt_key_secret,
        &args.issuer,
        args.jwt_rotation_period,
    )
    .await?;
    let listener = https::bind(&args.listen_addr).await?;
    let admin_listener = admin::bind_admin(&args.admin_addr).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    // Other replicas' rotations reach this one within a minute.
    tokio::spawn(server::refresh_jwt_keys_periodically(
        client.clone(),
        args.namespace.clone(),
        args.jwt_key_secret.clone(),
        args.jwt_rotation_period,
        jwt.key_handle(),
        std::time::Duration::from_secs(60),
        shutdown.clone(),
    ));
    server::serve(
        client,
        BrokerOptions {
            listener,
            admin_listener,
            certificate,
            reload_interval: std::time::Duration::from_secs(args.tls_reload_seconds.max(1)),
            audience: args.audience,
            keys,
            jwt,
            readiness: Readiness::not_ready("starting"),
            rate_limit: governor::Quota::per_second(args.rate_limit)
                .allow_burst(args.rate_limit_burst),
            reap_interval: std::time::Duration::from_secs(args.reap_interval_seconds.max(1)),
            unknown_pod_grace: std::time::Duration::from_secs(120),
        },
        prometheus::Registry::new(),
        shutdown,
    )
    .await?;
    tracing::info!("ferry broker stopped");
    Ok(())
}

fn print_crds(out_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let Some(dir) = out_dir else {
        let mut out = std::io::stdout().lock();
        out.write_all(ferry_api::crds_yaml()?.as_bytes())?;
        return Ok(());
    };
    let files = ferry_api::resources::crd_files()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // A renamed or removed CRD must not linger in the directory.
    let ours = format!(".{}.yaml", ferry_contract::API_GROUP);
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(&ours) && !files.iter().any(|(file, _)| file == name) {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
    }
    for (name, yaml) in files {
        let path = dir.join(name);
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
