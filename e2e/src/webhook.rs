//! ferry's webhook running in-process against a harness cluster, served
//! over real TLS on 127.0.0.1 and registered with the apiserver by the same
//! MutatingWebhookConfiguration the chart installs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::background::{Background, bind_loopback, wait_ready};
use crate::{Cluster, HarnessError};
use ferry_contract::WEBHOOK_CONFIGURATION_NAME;
use ferry_runtime::admin::Readiness;
use ferry_runtime::https::ReloadingCertificate;
use ferry_runtime::serving::ServingLimits;
use ferry_webhook::config::InjectionConfig;
use ferry_webhook::configuration::{WebhookEndpoint, mutating_webhook_configuration};
use ferry_webhook::server::{ServeOptions, serve};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

/// How long [`RunningWebhook::start`] waits for the Grant index to fill.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The webhook on a thread of its own (with its own tokio runtime), serving
/// HTTPS on a free loopback port. Stopped on drop.
pub struct RunningWebhook {
    background: Background,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    ca_pem: String,
    registry: prometheus::Registry,
}

impl RunningWebhook {
    /// Starts the webhook with `config` against `cluster`, with a serving
    /// certificate for 127.0.0.1 from the cluster's authority, and waits
    /// until it is ready (its Grant index filled).
    pub fn start(cluster: &Cluster, config: InjectionConfig) -> Result<Self, HarnessError> {
        Self::start_as(cluster, cluster.config().clone(), config)
    }

    /// Like [`Self::start`], reaching the apiserver with `kube_config`
    /// (such as one impersonating the webhook's service account).
    pub fn start_as(
        cluster: &Cluster,
        kube_config: kube::Config,
        config: InjectionConfig,
    ) -> Result<Self, HarnessError> {
        let limits = ServingLimits {
            max_connections: ferry_webhook::server::DEFAULT_MAX_CONNECTIONS,
            max_body_bytes: ferry_webhook::server::MAX_BODY_BYTES,
            ..ServingLimits::default()
        };
        Self::start_limited(cluster, kube_config, config, limits)
    }

    /// Like [`Self::start_as`], holding clients to `limits`.
    pub fn start_limited(
        cluster: &Cluster,
        kube_config: kube::Config,
        config: InjectionConfig,
        limits: ServingLimits,
    ) -> Result<Self, HarnessError> {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let stem = format!("webhook-{}", STARTED.fetch_add(1, Ordering::Relaxed));
        let files =
            cluster
                .authority()
                .serving_cert(&["127.0.0.1", "localhost"], cluster.dir(), &stem)?;
        let certificate = ReloadingCertificate::load(&files.cert, &files.key)
            .map_err(|e| HarnessError::Process(format!("webhook certificate: {e}")))?;
        let (listener, addr) = bind_loopback("the webhook")?;
        let (admin_listener, admin_addr) = bind_loopback("the webhook's admin server")?;

        let readiness = Readiness::not_ready("starting");
        let registry = prometheus::Registry::new();
        let (thread_readiness, thread_registry) = (readiness.clone(), registry.clone());
        let background = Background::spawn(&stem, move |shutdown| async move {
            let client = match kube::Client::try_from(kube_config) {
                Ok(client) => client,
                Err(error) => return tracing::error!(%error, "webhook client"),
            };
            let (listener, admin_listener) = match (
                tokio::net::TcpListener::from_std(listener),
                tokio::net::TcpListener::from_std(admin_listener),
            ) {
                (Ok(listener), Ok(admin)) => (listener, admin),
                _ => return tracing::error!("webhook listeners"),
            };
            let options = ServeOptions {
                listener,
                admin_listener,
                certificate,
                reload_interval: Duration::from_secs(1),
                config,
                readiness: thread_readiness,
                limits,
                // Tests stop it on purpose: no clients to move elsewhere.
                shutdown_delay: Duration::ZERO,
            };
            if let Err(error) = serve(client, options, thread_registry, shutdown).await {
                tracing::error!(%error, "webhook stopped");
            }
        })?;
        let webhook = Self {
            background,
            addr,
            admin_addr,
            ca_pem: cluster.authority().cert_pem(),
            registry,
        };
        wait_ready(&readiness, "webhook", READY_TIMEOUT)?;
        Ok(webhook)
    }

    /// The base URL the apiserver reaches the webhook at.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The admission server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin server's address (`/livez`, `/readyz`, `/metrics`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The PEM CA that signed the serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The webhook's metrics, rendered in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        ferry_runtime::admin::render_metrics(&self.registry).unwrap_or_default()
    }

    /// Registers this webhook with the apiserver (server-side apply of the
    /// one MutatingWebhookConfiguration, pointed at [`Self::url`]), with
    /// `ferry_namespace` excluded.
    pub async fn register(
        &self,
        client: &kube::Client,
        ferry_namespace: &str,
    ) -> Result<(), HarnessError> {
        let configuration = mutating_webhook_configuration(
            &WebhookEndpoint::Url(self.url()),
            self.ca_pem.as_bytes(),
            ferry_namespace,
        );
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .patch(
                WEBHOOK_CONFIGURATION_NAME,
                &PatchParams::apply("ferry-e2e").force(),
                &Patch::Apply(&configuration),
            )
            .await?;
        Ok(())
    }

    /// Removes the MutatingWebhookConfiguration, if present.
    pub async fn unregister(client: &kube::Client) -> Result<(), HarnessError> {
        match Api::<MutatingWebhookConfiguration>::all(client.clone())
            .delete(WEBHOOK_CONFIGURATION_NAME, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Stops the webhook and waits for it to drain.
    pub fn stop(mut self) {
        self.background.stop();
    }
}

/// Waits until the apiserver routes opted-in pods in `namespace` to ferry's
/// webhook: registration reaches the apiserver's admission chain a moment
/// after the object is stored. Probes with a dry-run create, which the
/// webhook refuses (the probe secret is never granted).
pub async fn wait_webhook_active(
    client: &kube::Client,
    namespace: &str,
) -> Result<(), HarnessError> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::PostParams;
    let probe: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "ferry-e2e-webhook-probe",
            "labels": {ferry_contract::INJECT_LABEL: "true"},
            "annotations": {ferry_contract::SECRETS_ANNOTATION: "ferry-e2e-probe"},
        },
        "spec": {"containers": [{"name": "probe", "image": "probe"}]},
    }))
    .map_err(|e| HarnessError::Process(format!("probe pod: {e}")))?;
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match pods.create(&params, &probe).await {
            Err(kube::Error::Api(status))
                if status
                    .message
                    .contains(ferry_webhook::configuration::WEBHOOK_NAME) =>
            {
                return Ok(());
            }
            Ok(_) | Err(_) if Instant::now() > deadline => {
                return Err(HarnessError::Process(format!(
                    "the apiserver did not call the webhook within {READY_TIMEOUT:?}"
                )));
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
