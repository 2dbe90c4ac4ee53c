//! The broker's process: the Grant, BrokeredSecret and pod indexes kept by
//! watches, the keys from Secrets the replicas share, the routes, the
//! reaper, the admin port and certificate reload, wired together by
//! [`run`] from the command line of `ferry-operator broker`.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use governor::Quota;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::{reflector, watcher};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, CacheLimits, ReviewLimits};
use crate::custody::{self, CustodyLog};
use crate::held_watches::HeldWatches;
use crate::lease_api::{FrontProxy, LeaseApi, LeaseApiError, lease_api_routes};
use crate::lease_book::LeaseBook;
use crate::lease_id::LeaseKeys;
use crate::live_leases::LiveLeases;
use crate::metrics::BrokerMetrics;
use crate::pods::PodIndex;
use crate::providers::jwt::JwtProvider;
use crate::providers::jwt::jose_name;
use crate::providers::kubernetes_secret::KubernetesSecretProvider;
use crate::providers::oauth2::OAuth2Provider;
use crate::providers::oauth2::custody::Custody;
use crate::providers::postgres::PostgresProvider;
use crate::providers::postgres::rotation::CRASH_AFTER_STEP_ENV;
use crate::providers::secret_reader::SecretReader;
use crate::providers::x509::X509Provider;
use crate::revocation_index::RevocationIndex;
use crate::revoked_leases::RevokedLeases;
use crate::routes::{BrokerState, broker_routes};
use crate::service::Broker;
use crate::{admin_rotation, jwt_keys, keys, lease_keys, reaper, sweeper};
use ferry_api::confinement::Installation;
use ferry_api::resources::{AccessPolicy, BrokeredSecret, Grant};
use ferry_runtime::admin::{self, AdminError, AdminState, Readiness};
use ferry_runtime::args::ServingArgs;
use ferry_runtime::grant_index::GrantIndex;
use ferry_runtime::https::{self, ReloadingCertificate, ServedPorts, TlsError};
use ferry_runtime::lifecycle::{cancel_on_signal, init_tracing};
use ferry_runtime::serving::{ServingLimits, ServingMetrics};

/// Options of `ferry-operator broker`.
#[derive(Debug, clap::Args)]
#[command(mut_arg("listen_addr", |arg| arg
    .env("FERRY_BROKER_ADDR")
    .help("Address of the HTTPS API")))]
#[command(mut_arg("admin_addr", |arg| arg.default_value("0.0.0.0:8081")))]
// The default is routes::MAX_BODY_BYTES.
#[command(mut_arg("max_body_bytes", |arg| arg
    .default_value("65536")
    .value_parser(clap::value_parser!(u64).range(1024..=crate::routes::MAX_BODY_BYTES))))]
pub struct BrokerArgs {
    /// Where it listens, its certificate, the admin port, the log format.
    #[command(flatten)]
    pub serving: ServingArgs,
    /// The audience sidecar tokens must carry.
    #[arg(long, env = "FERRY_BROKER_AUDIENCE", default_value = ferry_contract::DEFAULT_BROKER_AUDIENCE)]
    pub audience: String,
    /// ferry's namespace, where the lease-key Secret and the records of
    /// revoked leases live.
    #[arg(long, env = "POD_NAMESPACE", default_value = ferry_contract::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Name of the Secret holding the key that seals lease ids (created
    /// when absent; shared by all replicas).
    #[arg(
        long,
        env = "FERRY_LEASE_KEY_SECRET",
        default_value = ferry_contract::BROKER_LEASE_KEY_SECRET
    )]
    pub lease_key_secret: String,
    /// How often the lease key rotates, like `30d` or `720h` (at least
    /// `168h`, the longest maxTtl). A key opens lease ids one period
    /// before it seals them and one after, so no lease id is voided.
    #[arg(
        long,
        env = "FERRY_LEASE_KEY_ROTATION_PERIOD",
        default_value = lease_keys::DEFAULT_ROTATION_PERIOD,
        value_parser = lease_keys::parse_lease_key_rotation_period
    )]
    pub lease_key_rotation_period: Duration,
    /// The default `iss` of minted JWTs, and where the JWKS is published
    /// (`<issuer>/v1/jwks`): the broker's URL as clients reach it.
    #[arg(
        long,
        env = "FERRY_ISSUER",
        default_value = ferry_contract::DEFAULT_BROKER_URL
    )]
    pub issuer: String,
    /// Name of the Secret holding the JWT signing keys (created when
    /// absent; shared by all replicas).
    #[arg(
        long,
        env = "FERRY_JWT_KEY_SECRET",
        default_value = ferry_contract::BROKER_JWT_KEY_SECRET
    )]
    pub jwt_key_secret: String,
    /// How often the JWT signing keys rotate, like `30d` or `720h` (at
    /// least 24h). A key is published one period before it signs and one
    /// after, so tokens (ttl at most 24h) verify until they expire.
    #[arg(
        long,
        env = "FERRY_JWT_ROTATION_PERIOD",
        default_value = jwt_keys::DEFAULT_ROTATION_PERIOD,
        value_parser = jwt_keys::parse_rotation_period
    )]
    pub jwt_rotation_period: Duration,
    /// Requests a second each service account may make (all its pods together).
    #[arg(long, env = "FERRY_RATE_LIMIT", default_value_t = NonZeroU32::new(50).unwrap_or(NonZeroU32::MIN))]
    pub rate_limit: NonZeroU32,
    /// Requests a service account may make at once after a quiet spell.
    #[arg(long, env = "FERRY_RATE_LIMIT_BURST", default_value_t = NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN))]
    pub rate_limit_burst: NonZeroU32,
    /// TokenReviews a second the broker makes for tokens it has not
    /// reviewed lately, from all clients together; past it (and its burst)
    /// such requests get 429 before any review.
    #[arg(long, env = "FERRY_REVIEW_RATE_LIMIT", default_value_t = NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN))]
    pub review_rate_limit: NonZeroU32,
    /// Reviews the broker makes at once, from all clients, after a quiet spell.
    #[arg(long, env = "FERRY_REVIEW_RATE_LIMIT_BURST", default_value_t = NonZeroU32::new(200).unwrap_or(NonZeroU32::MIN))]
    pub review_rate_limit_burst: NonZeroU32,
    /// TokenReviews a second for one client address (an IPv6 client by its
    /// /64).
    #[arg(long, env = "FERRY_REVIEW_RATE_LIMIT_PER_ADDRESS", default_value_t = NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN))]
    pub review_rate_limit_per_address: NonZeroU32,
    /// Reviews one client address may cause at once after a quiet spell.
    #[arg(long, env = "FERRY_REVIEW_RATE_LIMIT_PER_ADDRESS_BURST", default_value_t = NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN))]
    pub review_rate_limit_per_address_burst: NonZeroU32,
    /// Seconds between reaper passes, which drop revocable credentials
    /// (PostgreSQL roles) that expired or whose pod is gone. Pod deletions
    /// also start a pass at once.
    #[arg(long, env = "FERRY_REAP_INTERVAL_SECONDS", default_value_t = 60)]
    pub reap_interval_seconds: u64,
    /// JWT issuers BrokeredSecrets may name besides `--issuer`, per
    /// namespace: comma-separated `namespace=issuer` (`*=issuer` for every
    /// namespace). Give the operator the same list, so that status agrees.
    #[arg(long, env = "FERRY_ALLOWED_ISSUERS", default_value = "")]
    pub allowed_issuers: String,
    /// Address of the live-lease API the apiserver aggregates (APIService
    /// v1alpha1.leases.ferry.dev), such as `0.0.0.0:8444`; empty: not
    /// served. Needs the apiserver's front-proxy settings (ConfigMap
    /// kube-system/extension-apiserver-authentication).
    #[arg(long, env = "FERRY_LEASE_API_ADDR", default_value = "")]
    pub lease_api_addr: String,
    /// Revocation watches (one per running pod) this replica holds at once,
    /// about 69 KiB of memory each; more are answered 429 and learn of
    /// revocation at their next renewal. Held watches do not count against
    /// `--max-connections` or `--max-connections-per-address`.
    #[arg(long, env = "FERRY_MAX_WATCHES", default_value_t = crate::held_watches::DEFAULT_MAX_WATCHES)]
    pub max_watches: usize,
    /// Admin connections the broker opens to each PostgreSQL database (1
    /// to 32); every role created, renewed or dropped there takes one for
    /// its round trip. Each database has its own, so a slow one never
    /// holds up another.
    #[arg(
        long,
        env = "FERRY_POSTGRES_ADMIN_CONNECTIONS",
        default_value_t = crate::providers::postgres::DEFAULT_ADMIN_CONNECTIONS,
        value_parser = parse_admin_connections
    )]
    pub postgres_admin_connections: usize,
}

/// `--postgres-admin-connections`: 1 to [`MAX_ADMIN_CONNECTIONS`].
///
/// [`MAX_ADMIN_CONNECTIONS`]: crate::providers::postgres::MAX_ADMIN_CONNECTIONS
fn parse_admin_connections(text: &str) -> Result<usize, String> {
    use crate::providers::postgres::MAX_ADMIN_CONNECTIONS;
    text.parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_ADMIN_CONNECTIONS).contains(n))
        .ok_or_else(|| format!("must be a whole number from 1 to {MAX_ADMIN_CONNECTIONS}"))
}

/// How often every replica re-reads the key Secrets: a rotation by one
/// reaches the others within this, far inside the overlap a key has.
const KEY_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// Serves the broker as `args` say until SIGTERM or SIGINT, then drains
/// and returns.
pub async fn run(args: BrokerArgs) -> Result<(), BrokerStartError> {
    init_tracing(args.serving.admin.log_format);
    let certificate = args.serving.certificate()?;
    let installation = Installation::new(&args.namespace, &args.allowed_issuers)
        .map_err(BrokerStartError::Config)?;
    let client = kube::Client::try_default()
        .await
        .map_err(BrokerStartError::Connect)?;
    let (lease_keys, stored_lease_keys) = keys::load_or_create_lease_keys(
        &client,
        &args.namespace,
        &args.lease_key_secret,
        args.lease_key_rotation_period,
    )
    .await?;
    let (jwt, stored_jwt_keys) = keys::load_or_create_jwt_provider(
        &client,
        &args.namespace,
        &args.jwt_key_secret,
        &args.issuer,
        args.jwt_rotation_period,
    )
    .await?;
    let custody = Arc::new(CustodyLog::default());
    if let Some(key) = &stored_lease_keys.fingerprint {
        custody.set_fingerprint_key(key);
    }
    let observe_lease_keys = {
        let (custody, secret, period) = (
            Arc::clone(&custody),
            format!("{}/{}", args.namespace, args.lease_key_secret),
            args.lease_key_rotation_period,
        );
        move |stored: &lease_keys::StoredLeaseKeys| {
            let fingerprinter = custody.fingerprinter();
            custody.installation_credential(
                "lease-key",
                custody::lease_key_inventory(
                    secret.clone(),
                    stored,
                    period,
                    fingerprinter.as_deref(),
                ),
            );
        }
    };
    let observe_jwt_keys = {
        let (custody, secret, period) = (
            Arc::clone(&custody),
            format!("{}/{}", args.namespace, args.jwt_key_secret),
            args.jwt_rotation_period,
        );
        move |stored: &jwt_keys::StoredJwtKeys| {
            for algorithm in jwt_keys::ALGORITHMS {
                custody.installation_credential(
                    &format!("jwt-{}", jose_name(algorithm).to_ascii_lowercase()),
                    custody::jwt_inventory(
                        secret.clone(),
                        stored.slots(algorithm),
                        algorithm,
                        period,
                    ),
                );
            }
        }
    };
    observe_lease_keys(&stored_lease_keys);
    observe_jwt_keys(&stored_jwt_keys);
    let crash_after_rotation_step = std::env::var(CRASH_AFTER_STEP_ENV)
        .ok()
        .and_then(|step| step.parse().ok());
    if let Some(step) = crash_after_rotation_step {
        tracing::warn!(
            step,
            "{CRASH_AFTER_STEP_ENV} is set: this broker aborts after that step of an admin credential rotation (for tests only)"
        );
    }
    let listener = https::bind(&args.serving.listen_addr).await?;
    let lease_api = if args.lease_api_addr.is_empty() {
        None
    } else {
        Some(LeaseApiPort {
            listener: https::bind(&args.lease_api_addr).await?,
            front_proxy: FrontProxy::from_cluster(&client).await?,
        })
    };
    let admin_listener = admin::bind_admin(&args.serving.admin.admin_addr).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    // Other replicas' rotations reach this one within a minute.
    tokio::spawn(keys::refresh_lease_keys_periodically(
        client.clone(),
        args.namespace.clone(),
        args.lease_key_secret.clone(),
        args.lease_key_rotation_period,
        lease_keys.clone(),
        KEY_REFRESH_INTERVAL,
        shutdown.clone(),
        observe_lease_keys,
    ));
    tokio::spawn(keys::refresh_jwt_keys_periodically(
        client.clone(),
        args.namespace.clone(),
        args.jwt_key_secret.clone(),
        args.jwt_rotation_period,
        jwt.key_handle(),
        KEY_REFRESH_INTERVAL,
        shutdown.clone(),
        observe_jwt_keys,
    ));
    serve(
        client,
        BrokerOptions {
            listener,
            admin_listener,
            certificate,
            reload_interval: args.serving.reload_interval(),
            limits: args.serving.limits(),
            max_watches: args.max_watches,
            postgres_admin_connections: args.postgres_admin_connections,
            shutdown_delay: args.serving.shutdown_delay(),
            audience: args.audience,
            keys: lease_keys,
            jwt,
            readiness: Readiness::not_ready("starting"),
            rate_limit: Quota::per_second(args.rate_limit).allow_burst(args.rate_limit_burst),
            review_limits: ReviewLimits {
                global: Quota::per_second(args.review_rate_limit)
                    .allow_burst(args.review_rate_limit_burst),
                per_address: Quota::per_second(args.review_rate_limit_per_address)
                    .allow_burst(args.review_rate_limit_per_address_burst),
            },
            reap_interval: Duration::from_secs(args.reap_interval_seconds.max(1)),
            unknown_pod_grace: Duration::from_secs(120),
            installation,
            lease_api,
            custody,
            crash_after_rotation_step,
        },
        Registry::new(),
        shutdown,
    )
    .await?;
    tracing::info!("ferry broker stopped");
    Ok(())
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerStartError {
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Metrics could not be registered.
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A key Secret (lease or JWT keys) could not be read or created.
    #[error(transparent)]
    KeySecret(#[from] keys::KeyError),
    /// The apiserver could not be reached.
    #[error("connecting to Kubernetes (in-cluster config or KUBECONFIG): {0}")]
    Connect(#[source] kube::Error),
    /// The lease API could not be set up.
    #[error(transparent)]
    LeaseApi(#[from] LeaseApiError),
    /// A flag's value is malformed.
    #[error("{0}")]
    Config(String),
    /// The admin port could not be bound.
    #[error(transparent)]
    Admin(#[from] AdminError),
}

/// Everything [`serve`] needs besides the apiserver client.
pub struct BrokerOptions {
    /// Where the API is served (TLS).
    pub listener: TcpListener,
    /// Where `/livez`, `/readyz` and `/metrics` are served.
    pub admin_listener: TcpListener,
    /// The serving certificate.
    pub certificate: Arc<ReloadingCertificate>,
    /// How often the certificate files are checked.
    pub reload_interval: Duration,
    /// What the HTTPS port allows each client.
    pub limits: ServingLimits,
    /// Revocation watches held at once.
    pub max_watches: usize,
    /// Admin connections to each PostgreSQL database at most.
    pub postgres_admin_connections: usize,
    /// How long both ports keep answering once shutdown begins.
    pub shutdown_delay: Duration,
    /// The audience tokens must carry.
    pub audience: String,
    /// The lease keys.
    pub keys: LeaseKeys,
    /// The JWT provider, with its signing keys.
    pub jwt: JwtProvider,
    /// Ready once every index is filled.
    pub readiness: Readiness,
    /// How often each service account may ask.
    pub rate_limit: Quota,
    /// How many TokenReviews may be made, in all and per client address.
    pub review_limits: ReviewLimits,
    /// How often the reaper looks for credentials to drop, besides right
    /// after pods go away.
    pub reap_interval: Duration,
    /// How long the reaper leaves a credential whose pod this replica has
    /// never seen: another replica's pod watch may be ahead. A pod seen
    /// deleted loses its credentials at once.
    pub unknown_pod_grace: Duration,
    /// ferry's namespace and the allowed JWT issuers: what BrokeredSecrets
    /// may reach.
    pub installation: Installation,
    /// The port of the live-lease API the apiserver aggregates, if served.
    pub lease_api: Option<LeaseApiPort>,
    /// What this replica knows of the credentials it holds (with the
    /// fingerprint key set, and the installation's keys listed).
    pub custody: Arc<CustodyLog>,
    /// Tests only: abort after this step of an admin credential rotation
    /// (`FERRY_TEST_CRASH_AFTER_ROTATION_STEP`).
    pub crash_after_rotation_step: Option<u8>,
}

/// Where the live-lease API is served, and how the apiserver's front
/// proxy identifies itself there.
pub struct LeaseApiPort {
    /// The TLS listener (the APIService's Service points at it).
    pub listener: TcpListener,
    /// The front-proxy CA and headers.
    pub front_proxy: FrontProxy,
}

/// Runs the broker until `shutdown` is cancelled.
pub async fn serve(
    client: kube::Client,
    options: BrokerOptions,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), BrokerStartError> {
    let metrics = BrokerMetrics::new(&registry)?;
    let grants = GrantIndex::new();
    let pods = PodIndex::default();
    let (secrets, writer) = reflector::store::<BrokeredSecret>();
    let readiness = options.readiness;
    readiness.set_not_ready("indexes are not filled yet");

    let mut tasks = tokio::task::JoinSet::new();
    {
        let (grants, client, shutdown) = (grants.clone(), client.clone(), shutdown.clone());
        tasks.spawn(async move { grants.maintain(Api::<Grant>::all(client), shutdown).await });
    }
    {
        let (policies, client, shutdown) =
            (grants.policies().clone(), client.clone(), shutdown.clone());
        tasks.spawn(async move {
            policies
                .maintain(Api::<AccessPolicy>::all(client), shutdown)
                .await
        });
    }
    {
        let (pods, client, shutdown) = (pods.clone(), client.clone(), shutdown.clone());
        tasks.spawn(async move { pods.maintain(client, shutdown).await });
    }
    {
        let stream = reflector::reflector(
            writer,
            watcher::watcher(
                Api::<BrokeredSecret>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    event = stream.next() => match event {
                        None => return,
                        Some(Err(error)) => ferry_runtime::lifecycle::log_watch_error("BrokeredSecret", &error),
                        Some(Ok(_)) => {}
                    },
                }
            }
        });
    }
    let revoked_leases = RevokedLeases::new(client.clone(), &options.installation.namespace);
    {
        let (revoked_leases, shutdown) = (revoked_leases.clone(), shutdown.clone());
        tasks.spawn(async move { revoked_leases.maintain(shutdown).await });
    }
    let revocation_orders = RevocationIndex::default();
    {
        let (orders, client, shutdown) =
            (revocation_orders.clone(), client.clone(), shutdown.clone());
        tasks.spawn(async move { orders.maintain(client, shutdown).await });
    }
    let grants_synced = grants.clone();
    let secret_reader =
        Arc::new(SecretReader::new(client.clone()).with_custody(Arc::clone(&options.custody)));
    let custody_client = client.clone();
    let ferry_namespace = options.installation.namespace.clone();
    let seal = options.keys.value_seal();
    let lease_api_client = client.clone();
    let watches_gauge = metrics.watches();
    let state = Arc::new(BrokerState {
        broker: Broker {
            grants,
            secrets,
            keys: options.keys,
            kubernetes_secret: KubernetesSecretProvider::new(Arc::clone(&secret_reader)),
            x509: X509Provider::new(Arc::clone(&secret_reader)),
            oauth2: OAuth2Provider::new(
                Arc::clone(&secret_reader),
                options.jwt.identity_tokens(),
                Custody::new(
                    client.clone(),
                    &ferry_runtime::leader::default_identity(),
                    seal.clone(),
                ),
                seal,
                metrics.oauth2_token_requests(),
            ),
            jwt: options.jwt,
            postgres: PostgresProvider::new(secret_reader, options.postgres_admin_connections),
            metrics,
            installation: options.installation,
            live_leases: LiveLeases::default(),
            revoked_leases,
            revocation_orders,
            lease_book: LeaseBook::default(),
            access_changed: tokio::sync::watch::Sender::new(0),
        },
        authenticator: Authenticator::new(
            client,
            &options.audience,
            pods.clone(),
            CacheLimits::default(),
        )
        .with_review_limits(options.review_limits),
        limiter: governor::RateLimiter::keyed(options.rate_limit),
        custody: options.custody,
        stopping: shutdown.clone(),
        watches: HeldWatches::new(options.max_watches, watches_gauge),
    });
    {
        // Forget service accounts and addresses that have been quiet long enough to be
        // back at a full burst, so the limiter's memory stays bounded.
        let (state, shutdown) = (Arc::clone(&state), shutdown.clone());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(60)) => {
                        state.limiter.retain_recent();
                        state.authenticator.forget_quiet_addresses();
                    }
                }
            }
        });
    }
    {
        // Ready once every index is filled; only then may the reaper ask
        // whether a pod exists. One task waits on the BrokeredSecret store:
        // kube-runtime 5 wakes only one of several concurrent waiters.
        let (grants, pods, state, readiness, shutdown) = (
            grants_synced,
            pods,
            Arc::clone(&state),
            readiness.clone(),
            shutdown.clone(),
        );
        let (interval, unknown_pod_grace) = (options.reap_interval, options.unknown_pod_grace);
        let crash_after_rotation_step = options.crash_after_rotation_step;
        tasks.spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = async {
                    grants.wait_synced().await;
                    pods.wait_synced().await;
                    state.broker.revoked_leases.wait_synced().await;
                    state.broker.revocation_orders.wait_synced().await;
                    state.broker.secrets.wait_until_ready().await
                } => readiness.set_ready(),
            }
            // Both read the BrokeredSecret store, filled by now.
            tokio::spawn(admin_rotation::rotate_admin_credentials_until(
                custody_client.clone(),
                Arc::clone(&state),
                crash_after_rotation_step,
                shutdown.clone(),
            ));
            tokio::spawn(custody::write_custody_until(
                custody_client,
                state.broker.secrets.clone(),
                Arc::clone(&state.custody),
                state.broker.metrics.clone(),
                ferry_namespace,
                shutdown.clone(),
            ));
            {
                // Only once every index is filled may access be judged lost.
                let (state, shutdown) = (Arc::clone(&state), shutdown.clone());
                tokio::spawn(async move { sweeper::sweep_until(&state.broker, &shutdown).await });
            }
            reaper::reap_until(&state, &pods, interval, unknown_pod_grace, &shutdown).await;
        });
    }
    if let Some(port) = options.lease_api {
        let config = port
            .front_proxy
            .server_config(Arc::clone(&options.certificate))?;
        let api = Arc::new(LeaseApi::new(
            Arc::clone(&state),
            lease_api_client,
            port.front_proxy,
        ));
        tasks.spawn(https::serve(
            port.listener,
            Arc::new(config),
            lease_api_routes(api),
            options.limits,
            ServingMetrics::new(&registry, "broker_lease_api")?,
            shutdown.clone().cancelled_owned(),
        ));
    }
    https::serve_until_shutdown(
        tasks,
        ServedPorts {
            listener: options.listener,
            admin_listener: options.admin_listener,
            certificate: options.certificate,
            reload_interval: options.reload_interval,
            routes: broker_routes(state),
            limits: options.limits,
            shutdown_delay: options.shutdown_delay,
            server: "broker",
            admin: AdminState {
                readiness,
                registry,
            },
        },
        &shutdown,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_connections_are_bounded_from_one_to_thirty_two() {
        assert_eq!(parse_admin_connections("1"), Ok(1));
        assert_eq!(parse_admin_connections("32"), Ok(32));
        for bad in ["0", "33", "-1", "four", ""] {
            let error = parse_admin_connections(bad).unwrap_err();
            assert!(error.contains("from 1 to 32"), "{bad}: {error}");
        }
    }
}
