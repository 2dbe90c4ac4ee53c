//! `ferry-operator`: reconciles BrokeredSecrets and AccessPolicies into
//! Grants, and serves the broker.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ferry_operator::metrics::OperatorMetrics;
use ferry_operator::{certificates, controller};
use ferry_runtime::admin::{self, AdminState, Readiness};
use ferry_runtime::args::AdminArgs;
use ferry_runtime::leader::{self, LeaderConfig, LeaderElector};
use ferry_runtime::lifecycle::{cancel_on_signal, init_tracing};
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
    Run(Box<RunArgs>),
    /// Serve the broker: authenticate pods by their projected tokens and
    /// issue, renew and revoke leases on the secrets their Grants allow.
    /// Replicas are stateless and interchangeable.
    Broker(Box<ferry_broker::server::BrokerArgs>),
    /// Consent once to an oauth2 BrokeredSecret with grant RefreshToken:
    /// runs the authorization-code flow with PKCE in your browser and
    /// stores the refresh token into its credentials Secret, printing no
    /// token. Uses your kubeconfig.
    #[command(name = "oauth2-consent")]
    OAuth2Consent(Box<ferry_broker::consent::ConsentArgs>),
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
    #[command(flatten)]
    admin: AdminArgs,
    /// Namespace of the leader-election Lease: the operator's own.
    #[arg(long, env = "POD_NAMESPACE", default_value = ferry_contract::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, env = "FERRY_LEASE_NAME", default_value = "ferry-operator")]
    lease_name: String,
    /// Most Grants one AccessPolicy may produce; beyond it the policy is
    /// Ready=False with reason TooManyGrants and no new Grant is written.
    #[arg(long, env = "FERRY_MAX_GRANTS_PER_POLICY", default_value_t = controller::DEFAULT_MAX_GRANTS_PER_POLICY, value_parser = at_least_one)]
    max_grants_per_policy: usize,
    /// Most Grants the AccessPolicies of one namespace may produce together.
    #[arg(long, env = "FERRY_MAX_GRANTS_PER_NAMESPACE", default_value_t = controller::DEFAULT_MAX_GRANTS_PER_NAMESPACE, value_parser = at_least_one)]
    max_grants_per_namespace: usize,
    #[command(flatten)]
    certificates: CertificateArgs,
    /// JWT issuers BrokeredSecrets may name besides the broker's, per
    /// namespace: comma-separated `namespace=issuer` (`*=issuer` for every
    /// namespace). Must be the broker's `--allowed-issuers`, so that status
    /// says what the broker does.
    #[arg(long, env = "FERRY_ALLOWED_ISSUERS", default_value = "")]
    allowed_issuers: String,
}

/// A cap: a whole number of at least 1.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(value) => Ok(value),
        Err(error) => Err(format!("{text:?} is not a whole number: {error}")),
    }
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
    /// APIService of the broker's live-lease API whose caBundle is kept
    /// (`v1alpha1.leases.ferry.dev` when the chart installs it); empty: none.
    #[arg(long, env = "FERRY_API_SERVICE", default_value = "")]
    api_service: String,
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
            api_service: Some(self.api_service.clone()).filter(|name| !name.is_empty()),
            ca_validity: std::time::Duration::from_secs(self.ca_days * DAY),
            serving_validity: std::time::Duration::from_secs(self.certificate_days * DAY),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Commands::Run(args) => run(*args).await,
        Commands::Broker(args) => Ok(ferry_broker::server::run(*args).await?),
        Commands::OAuth2Consent(args) => consent(&args).await,
        Commands::Crds { out_dir } => print_crds(out_dir.as_deref()),
    }
}

/// `ferry-operator oauth2-consent`: instructions on stderr, the outcome on
/// stdout; never a token.
async fn consent(args: &ferry_broker::consent::ConsentArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (KUBECONFIG or in-cluster config)")?;
    let scopes = ferry_broker::consent::run(client, args, &mut std::io::stderr()).await?;
    println!(
        "Stored a refresh token for BrokeredSecret {}/{} in its credentials Secret \
         (key refresh_token). Scopes granted: {scopes}",
        args.namespace, args.name
    );
    Ok(())
}

/// Serves the admin port at once (standbys are live and ready too), waits
/// to lead, runs the controllers, and on SIGTERM stops them, releases the
/// lease so another replica takes over at once, and exits.
async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_tracing(args.admin.log_format);
    let installation =
        ferry_api::confinement::Installation::new(&args.namespace, &args.allowed_issuers)
            .map_err(anyhow::Error::msg)?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (in-cluster config or KUBECONFIG)")?;
    let registry = prometheus::Registry::new();
    let metrics = Arc::new(OperatorMetrics::new(&registry)?);
    let readiness = Readiness::default();
    let shutdown = CancellationToken::new();

    let listener = admin::bind_admin(&args.admin.admin_addr).await?;
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

    let limits = controller::GrantLimits {
        per_policy: args.max_grants_per_policy,
        per_namespace: args.max_grants_per_namespace,
    };
    let controllers = controller::run_with(
        client,
        metrics.clone(),
        Some(identity),
        installation,
        limits,
        shutdown.clone(),
    );
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
