//! ferry's broker running in-process against a harness cluster, served
//! over real TLS on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ferry_api::confinement::Installation;
use ferry_api::resources::JwtAlgorithm;
use ferry_broker::auth::ReviewLimits;
use ferry_broker::custody::CustodyLog;
use ferry_broker::lease_id::{LeaseKeys, generate_lease_key};
use ferry_broker::providers::jwt::{JwtProvider, SigningKeys, generate_key};
use ferry_broker::routes::default_rate_limit;
use ferry_broker::server::{BrokerOptions, LeaseApiPort, serve};
use ferry_contract::DEFAULT_BROKER_AUDIENCE;
use ferry_runtime::admin::Readiness;
use ferry_runtime::https::ReloadingCertificate;
use ferry_runtime::serving::ServingLimits;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;

use crate::background::{Background, bind_loopback, wait_ready};
use crate::https_client::HttpsClient;
use crate::{Cluster, HarnessError};

/// How long [`RunningBroker::start`] waits for the indexes to fill.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What the broker allows its clients, for [`RunningBroker::start_limited`].
#[derive(Debug, Clone, Copy)]
pub struct BrokerLimits {
    /// What the HTTPS port allows each client.
    pub serving: ServingLimits,
    /// How many TokenReviews may be made.
    pub reviews: ReviewLimits,
    /// How many revocation watches may be held at once.
    pub max_watches: usize,
    /// Admin connections to each PostgreSQL database at most.
    pub postgres_admin_connections: usize,
}

impl Default for BrokerLimits {
    fn default() -> Self {
        Self {
            serving: ServingLimits::default(),
            reviews: ReviewLimits::default(),
            max_watches: ferry_broker::held_watches::DEFAULT_MAX_WATCHES,
            postgres_admin_connections:
                ferry_broker::providers::postgres::DEFAULT_ADMIN_CONNECTIONS,
        }
    }
}

/// The broker on a thread of its own, serving HTTPS on a free loopback
/// port. Stopped on drop.
pub struct RunningBroker {
    background: Background,
    addr: SocketAddr,
    lease_api_addr: Option<SocketAddr>,
    ca_pem: String,
    registry: prometheus::Registry,
}

impl RunningBroker {
    /// Starts the broker against `cluster` with lease keys `keys`, and waits
    /// until it is ready.
    pub fn start(cluster: &Cluster, keys: LeaseKeys) -> Result<Self, HarnessError> {
        Self::start_as(
            cluster,
            cluster.config().clone(),
            keys,
            default_rate_limit(),
        )
    }

    /// Like [`Self::start`], reaching the apiserver with `kube_config`
    /// (such as one impersonating the broker's service account) and
    /// limiting each service account to `rate_limit`.
    pub fn start_as(
        cluster: &Cluster,
        kube_config: kube::Config,
        keys: LeaseKeys,
        rate_limit: governor::Quota,
    ) -> Result<Self, HarnessError> {
        Self::start_with(
            cluster,
            kube_config,
            keys,
            rate_limit,
            Installation::default(),
            BrokerLimits::default(),
            None,
        )
    }

    /// Like [`Self::start`], also serving the live-lease API on a free
    /// loopback port to clients of `front_proxy` (as the apiserver's
    /// aggregation layer calls it; [`Self::lease_api_addr`]).
    pub fn start_with_lease_api(
        cluster: &Cluster,
        keys: LeaseKeys,
        front_proxy: ferry_broker::lease_api::FrontProxy,
    ) -> Result<Self, HarnessError> {
        Self::start_with(
            cluster,
            cluster.config().clone(),
            keys,
            default_rate_limit(),
            Installation::default(),
            BrokerLimits::default(),
            Some(front_proxy),
        )
    }

    /// Where the live-lease API listens, when it is served.
    pub fn lease_api_addr(&self) -> Option<SocketAddr> {
        self.lease_api_addr
    }

    /// Like [`Self::start_as`], with `installation`'s limits (ferry's
    /// namespace, allowed JWT issuers).
    pub fn start_in(
        cluster: &Cluster,
        kube_config: kube::Config,
        keys: LeaseKeys,
        rate_limit: governor::Quota,
        installation: Installation,
    ) -> Result<Self, HarnessError> {
        Self::start_with(
            cluster,
            kube_config,
            keys,
            rate_limit,
            installation,
            BrokerLimits::default(),
            None,
        )
    }

    /// Like [`Self::start_as`], holding clients to `limits`: what the HTTPS
    /// port allows each, how many TokenReviews may be made, how many
    /// watches held.
    pub fn start_limited(
        cluster: &Cluster,
        kube_config: kube::Config,
        keys: LeaseKeys,
        rate_limit: governor::Quota,
        limits: BrokerLimits,
    ) -> Result<Self, HarnessError> {
        Self::start_with(
            cluster,
            kube_config,
            keys,
            rate_limit,
            Installation::default(),
            limits,
            None,
        )
    }

    /// The broker with every setting given.
    fn start_with(
        cluster: &Cluster,
        kube_config: kube::Config,
        keys: LeaseKeys,
        rate_limit: governor::Quota,
        installation: Installation,
        limits: BrokerLimits,
        front_proxy: Option<ferry_broker::lease_api::FrontProxy>,
    ) -> Result<Self, HarnessError> {
        let BrokerLimits {
            serving: limits,
            reviews: review_limits,
            max_watches,
            postgres_admin_connections,
        } = limits;
        let lease_api_listener = front_proxy
            .is_some()
            .then(|| bind_loopback("the broker's lease API"))
            .transpose()?;
        let lease_api_addr = lease_api_listener.as_ref().map(|(_, addr)| *addr);
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let stem = format!("broker-{}", STARTED.fetch_add(1, Ordering::Relaxed));
        let files = cluster
            .authority()
            .serving_cert(&["127.0.0.1"], cluster.dir(), &stem)?;
        let certificate = ReloadingCertificate::load(&files.cert, &files.key)
            .map_err(|e| HarnessError::Process(format!("broker certificate: {e}")))?;
        let (listener, addr) = bind_loopback("the broker")?;
        let (admin_listener, _) = bind_loopback("the broker's admin server")?;
        let mut signing_keys = SigningKeys::new();
        for algorithm in [JwtAlgorithm::ES256, JwtAlgorithm::EdDSA] {
            let key = generate_key(algorithm)
                .map_err(|_| HarnessError::Process("generating a JWT signing key".into()))?;
            signing_keys = signing_keys
                .with_algorithm(algorithm, &key, &[])
                .map_err(|e| HarnessError::Process(format!("JWT provider: {e}")))?;
        }
        let jwt = JwtProvider::with_keys(&format!("https://{addr}"), signing_keys);
        let readiness = Readiness::not_ready("starting");
        // Fingerprints keyed as a real broker keys them: by a key of its own.
        let custody = Arc::new(CustodyLog::default());
        custody.set_fingerprint_key(
            &generate_lease_key()
                .map_err(|_| HarnessError::Process("generating a fingerprint key".into()))?,
        );
        let registry = prometheus::Registry::new();
        let (thread_readiness, thread_registry) = (readiness.clone(), registry.clone());
        let admin_config = cluster.config().clone();
        let background = Background::spawn("ferry-broker", move |shutdown| async move {
            // ferry's namespace holds the records of revoked leases; an
            // installation creates it before the broker starts.
            if let Err(error) = ensure_namespace(admin_config, &installation.namespace).await {
                return tracing::error!(%error, "creating ferry's namespace for the broker");
            }
            let client = match kube::Client::try_from(kube_config) {
                Ok(client) => client,
                Err(error) => return tracing::error!(%error, "broker client"),
            };
            let (Ok(listener), Ok(admin_listener)) = (
                tokio::net::TcpListener::from_std(listener),
                tokio::net::TcpListener::from_std(admin_listener),
            ) else {
                return tracing::error!("broker listeners");
            };
            let lease_api = match (lease_api_listener, front_proxy) {
                (Some((listener, _)), Some(front_proxy)) => {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return tracing::error!("lease API listener");
                    };
                    Some(LeaseApiPort {
                        listener,
                        front_proxy,
                    })
                }
                _ => None,
            };
            let options = BrokerOptions {
                listener,
                admin_listener,
                certificate,
                reload_interval: Duration::from_secs(1),
                audience: DEFAULT_BROKER_AUDIENCE.into(),
                keys,
                jwt,
                readiness: thread_readiness,
                rate_limit,
                review_limits,
                limits,
                max_watches,
                postgres_admin_connections,
                // Tests stop it on purpose: no clients to move elsewhere.
                shutdown_delay: Duration::ZERO,
                // Tests wait on the reaper; production passes every minute.
                reap_interval: Duration::from_secs(2),
                unknown_pod_grace: Duration::from_secs(5),
                installation,
                lease_api,
                custody,
                crash_after_rotation_step: None,
            };
            if let Err(error) = serve(client, options, thread_registry, shutdown).await {
                tracing::error!(%error, "broker stopped");
            }
        })?;
        let broker = Self {
            background,
            addr,
            lease_api_addr,
            ca_pem: cluster.authority().cert_pem(),
            registry,
        };
        wait_ready(&readiness, "broker", READY_TIMEOUT)?;
        Ok(broker)
    }

    /// A client for the broker's API, trusting its CA.
    pub fn client(&self) -> Result<HttpsClient, HarnessError> {
        HttpsClient::new(self.addr, &self.ca_pem)
    }

    /// The broker's base URL.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The broker's metrics, rendered in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        ferry_runtime::admin::render_metrics(&self.registry).unwrap_or_default()
    }

    /// Stops the broker and waits for it to drain.
    pub fn stop(mut self) {
        self.background.stop();
    }
}

/// Creates the namespace `name` unless it exists.
async fn ensure_namespace(admin: kube::Config, name: &str) -> Result<(), kube::Error> {
    let namespace = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Namespace::default()
    };
    match Api::<Namespace>::all(kube::Client::try_from(admin)?)
        .create(&PostParams::default(), &namespace)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(error),
    }
}
