//! The broker's HTTPS API (see `ferry_contract::wire`) and its process: the
//! Grant, BrokeredSecret and pod indexes kept by watches, the lease keys
//! from a Secret the replicas share, the admin port, certificate reload.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_contract::wire::{LeaseRequest, LeasesResponse};
use ferry_contract::{BROKER_MANAGER, MANAGED_BY_LABEL};
use futures::StreamExt;
use governor::Quota;
use governor::clock::{Clock as _, DefaultClock};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::WatchStreamExt;
use kube::runtime::{reflector, watcher};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::auth::{AuthError, Authenticator, CacheLimits};
use super::jwt_keys::{StoredJwtKeys, maintain};
use super::lease_id::{LEASE_KEY_BYTES, LeaseKeys, generate_lease_key};
use super::metrics::BrokerMetrics;
use super::pods::PodIndex;
use super::providers::jwt::{JwtKeyHandle, JwtProvider, generate_key};
use super::providers::kubernetes_secret::KubernetesSecretProvider;
use super::providers::postgres::PostgresProvider;
use super::providers::secret_reader::SecretReader;
use super::service::{Broker, BrokerError, audit_refused};
use ferry_api::resources::{BrokeredSecret, Grant};
use ferry_runtime::admin::{AdminState, Readiness};
use ferry_runtime::grant_index::GrantIndex;
use ferry_runtime::https::{
    self, ReloadingCertificate, ServedPorts, TlsError, json_error, rejection_reply,
};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: u64 = 64 * 1024;

/// The key of the lease-key Secret holding the current key.
pub const LEASE_KEY_CURRENT: &str = "current";

/// The key of the lease-key Secret holding the previous key, if any.
pub const LEASE_KEY_PREVIOUS: &str = "previous";

/// Requests per service account, across all its pods.
pub type ServiceAccountLimiter = governor::DefaultKeyedRateLimiter<(String, String)>;

/// The default rate per service account: 50 requests a second, bursts of 100.
pub fn default_rate_limit() -> Quota {
    Quota::per_second(NonZeroU32::new(50).unwrap_or(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN))
}

/// The broker and its authenticator, shared by every request.
pub struct BrokerState {
    /// Decisions.
    pub broker: Broker,
    /// Who is asking.
    pub authenticator: Authenticator,
    /// How often each service account may ask.
    pub limiter: ServiceAccountLimiter,
}

/// The broker's routes, answering every failure with a JSON error body.
pub fn broker_routes(state: Arc<BrokerState>) -> BoxedFilter<(Response,)> {
    let bearer = warp::header::optional::<String>("authorization");
    let with_state = {
        let state = Arc::clone(&state);
        warp::any().map(move || Arc::clone(&state))
    };
    let issue = warp::path!("v1" / "leases")
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .and(bearer)
        .and(with_state.clone())
        .then(
            |body: Bytes, bearer: Option<String>, state: Arc<BrokerState>| async move {
                issue(&state, bearer, &body).await
            },
        );
    let renew = warp::path!("v1" / "leases" / String / "renew")
        .and(warp::post())
        .and(bearer)
        .and(with_state.clone())
        .then(
            |id: String, bearer: Option<String>, state: Arc<BrokerState>| async move {
                renew(&state, bearer, &id).await
            },
        );
    let revoke = warp::path!("v1" / "leases" / String)
        .and(warp::delete())
        .and(bearer)
        .and(with_state)
        .then(
            |id: String, bearer: Option<String>, state: Arc<BrokerState>| async move {
                revoke(&state, bearer, &id).await
            },
        );
    let jwks = {
        let state = Arc::clone(&state);
        warp::path!("v1" / "jwks")
            .and(warp::get())
            .map(move || warp::reply::json(&state.broker.jwt.jwks()).into_response())
    };
    let discovery = {
        let state = Arc::clone(&state);
        warp::path!(".well-known" / "openid-configuration")
            .and(warp::get())
            .map(move || {
                let jwt = &state.broker.jwt;
                let jwks_uri = format!("{}/v1/jwks", jwt.issuer().trim_end_matches('/'));
                warp::reply::json(&jwt.openid_configuration(&jwks_uri)).into_response()
            })
    };
    issue
        .or(renew)
        .unify()
        .or(revoke)
        .unify()
        .or(jwks)
        .unify()
        .or(discovery)
        .unify()
        .recover(|rejection: warp::Rejection| async move {
            Ok::<_, Infallible>(rejection_reply(
                &rejection,
                "POST /v1/leases, POST /v1/leases/{id}/renew, DELETE /v1/leases/{id}, GET /v1/jwks",
                MAX_BODY_BYTES,
            ))
        })
        .unify()
        .boxed()
}

/// Authenticates the bearer token, counting the cache use and auditing a
/// refusal.
async fn authenticate(
    state: &BrokerState,
    action: &'static str,
    bearer: Option<String>,
) -> Result<super::auth::PodIdentity, BrokerError> {
    let token = bearer
        .as_deref()
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    // A pod shutting down may still give its leases back.
    let (identity, used) = if action == "revoke" {
        state.authenticator.authenticate_ending(token).await
    } else {
        state.authenticator.authenticate(token).await
    };
    // Without a token no review is made, so there is nothing to count.
    if !token.is_empty() {
        state.broker.metrics.observe_review(used);
    }
    let pod = identity.map_err(|error| {
        let error = match error {
            AuthError::Unavailable(_) => BrokerError::Unavailable(error.to_string()),
            _ => BrokerError::Unauthenticated(error.to_string()),
        };
        audit_refused(&state.broker.metrics, action, None, &error);
        error
    })?;
    let key = (pod.namespace.clone(), pod.service_account.clone());
    if let Err(not_until) = state.limiter.check_key(&key) {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let error = BrokerError::RateLimited(wait.as_secs().max(1));
        audit_refused(&state.broker.metrics, action, Some(&pod), &error);
        return Err(error);
    }
    Ok(pod)
}

async fn issue(state: &BrokerState, bearer: Option<String>, body: &[u8]) -> Response {
    let started = Instant::now();
    let result = async {
        let pod = authenticate(state, "issue", bearer).await?;
        let request: LeaseRequest = serde_json::from_slice(body).map_err(|error| {
            BrokerError::BadRequest(format!("request body is not a lease request: {error}"))
        })?;
        state.broker.issue(&pod, request, Timestamp::now()).await
    }
    .await;
    state
        .broker
        .metrics
        .observe_duration("issue", started.elapsed());
    match result {
        Ok(leases) => warp::reply::json(&LeasesResponse { leases }).into_response(),
        Err(error) => error_reply(&error),
    }
}

async fn renew(state: &BrokerState, bearer: Option<String>, id: &str) -> Response {
    let started = Instant::now();
    let result = async {
        let pod = authenticate(state, "renew", bearer).await?;
        state.broker.renew(&pod, id, Timestamp::now()).await
    }
    .await;
    state
        .broker
        .metrics
        .observe_duration("renew", started.elapsed());
    match result {
        Ok(lease) => warp::reply::json(&LeasesResponse {
            leases: vec![lease],
        })
        .into_response(),
        Err(error) => error_reply(&error),
    }
}

async fn revoke(state: &BrokerState, bearer: Option<String>, id: &str) -> Response {
    let started = Instant::now();
    let result = async {
        let pod = authenticate(state, "revoke", bearer).await?;
        state.broker.revoke(&pod, id).await
    }
    .await;
    state
        .broker
        .metrics
        .observe_duration("revoke", started.elapsed());
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => error_reply(&error),
    }
}

fn error_reply(error: &BrokerError) -> Response {
    let code = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reply = json_error(code, error.to_string());
    match error {
        BrokerError::RateLimited(seconds) => {
            warp::reply::with_header(reply, "retry-after", seconds.to_string()).into_response()
        }
        _ => reply,
    }
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
    #[error("key Secret {0}")]
    KeySecret(String),
}

/// A signing key as the broker keeps it: the `current` key, and the
/// `previous` one after a rotation.
struct StoredKeys {
    current: Vec<u8>,
    previous: Option<Vec<u8>>,
}

impl StoredKeys {
    fn previous(&self) -> Vec<&[u8]> {
        self.previous.as_deref().into_iter().collect()
    }
}

/// The keys in the broker's own Secret `namespace/name`, creating it with a
/// `current` key from `generate()` when absent. Replicas racing to create
/// it all end up with the one that was stored.
async fn load_or_create_keys(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    generate: impl Fn() -> Option<Vec<u8>>,
) -> Result<StoredKeys, BrokerStartError> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let fail = |what: String| BrokerStartError::KeySecret(format!("{namespace}/{name}: {what}"));
    for _ in 0..3 {
        if let Some(secret) = secrets
            .get_opt(name)
            .await
            .map_err(|e| fail(e.to_string()))?
        {
            let mut data = secret.data.unwrap_or_default();
            let current = data
                .remove(LEASE_KEY_CURRENT)
                .ok_or_else(|| fail(format!("has no {LEASE_KEY_CURRENT} key")))?;
            return Ok(StoredKeys {
                current: current.0,
                previous: data.remove(LEASE_KEY_PREVIOUS).map(|key| key.0),
            });
        }
        let key = generate().ok_or_else(|| fail("the OS random source failed".into()))?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY_LABEL.to_owned(),
                    BROKER_MANAGER.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                LEASE_KEY_CURRENT.to_owned(),
                ByteString(key),
            )])),
            ..Secret::default()
        };
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(secret = %format!("{namespace}/{name}"), "created the broker's key Secret")
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => return Err(fail(error.to_string())),
        }
    }
    Err(fail("could not be read after creating it".into()))
}

/// The lease keys from the Secret `namespace/name` (keys `current` and,
/// after a rotation, `previous`), created with a random key when absent.
pub async fn load_or_create_lease_keys(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<LeaseKeys, BrokerStartError> {
    let keys = load_or_create_keys(client, namespace, name, || {
        generate_lease_key().ok().map(|key| key.to_vec())
    })
    .await?;
    if keys.current.len() < LEASE_KEY_BYTES {
        return Err(BrokerStartError::KeySecret(format!(
            "{namespace}/{name}: has no {LEASE_KEY_CURRENT} key of at least {LEASE_KEY_BYTES} bytes"
        )));
    }
    Ok(LeaseKeys::new(&keys.current, &keys.previous()))
}

/// The JWT provider with signing keys from the Secret `namespace/name`
/// (see [`super::jwt_keys`] for its layout), created when absent and
/// completed or rotated as `rotation_period` says; `issuer` is the default
/// `iss`. Keep its keys current with [`refresh_jwt_keys_periodically`].
pub async fn load_or_create_jwt_provider(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    issuer: &str,
    rotation_period: Duration,
) -> Result<JwtProvider, BrokerStartError> {
    let stored = refresh_jwt_keys(client, namespace, name, rotation_period).await?;
    let keys = stored
        .signing_keys()
        .map_err(|error| BrokerStartError::KeySecret(format!("{namespace}/{name}: {error}")))?;
    tracing::info!(secret = %format!("{namespace}/{name}"), kids = ?keys.kids(), "loaded the JWT signing keys");
    Ok(JwtProvider::with_keys(issuer, keys))
}

/// Reads the JWT key Secret `namespace/name` and, when keys are missing or
/// a rotation is due, writes the maintained keys back: created when absent,
/// replaced under the resourceVersion read, so of replicas racing only one
/// rotates and the others adopt what it stored.
pub async fn refresh_jwt_keys(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    rotation_period: Duration,
) -> Result<StoredJwtKeys, BrokerStartError> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let fail = |what: String| BrokerStartError::KeySecret(format!("{namespace}/{name}: {what}"));
    let generate = |algorithm| generate_key(algorithm).ok();
    for _ in 0..3 {
        let existing = secrets
            .get_opt(name)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let data: BTreeMap<String, Vec<u8>> = existing
            .as_ref()
            .and_then(|secret| secret.data.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key, value.0))
            .collect();
        let stored = StoredJwtKeys::from_data(&data);
        let Some((maintained, changes)) =
            maintain(&stored, Timestamp::now(), rotation_period, generate)
        else {
            return Ok(stored);
        };
        let data = maintained
            .to_data()
            .iter()
            .map(|(key, value)| (key.clone(), ByteString(value.to_vec())))
            .collect();
        let written = match existing {
            Some(mut secret) => {
                // The resourceVersion read is kept: a concurrent writer wins.
                secret.data = Some(data);
                secrets
                    .replace(name, &PostParams::default(), &secret)
                    .await
                    .map(drop)
            }
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.to_owned()),
                        labels: Some(BTreeMap::from([(
                            MANAGED_BY_LABEL.to_owned(),
                            BROKER_MANAGER.to_owned(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    type_: Some("Opaque".into()),
                    data: Some(data),
                    ..Secret::default()
                };
                secrets
                    .create(&PostParams::default(), &secret)
                    .await
                    .map(drop)
            }
        };
        match written {
            Ok(()) => {
                tracing::info!(secret = %format!("{namespace}/{name}"), ?changes, "updated the JWT signing keys");
                return Ok(maintained);
            }
            // Another replica wrote first: read what it stored.
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => return Err(fail(error.to_string())),
        }
    }
    Err(fail("kept changing while it was being updated".into()))
}

/// Re-reads the JWT key Secret every `every` until `shutdown`, rotating
/// when due and swapping changed keys into `handle`, so every replica
/// signs with the current key within `every` of a rotation. A failed
/// refresh keeps the keys in use and is retried at the next tick.
pub async fn refresh_jwt_keys_periodically(
    client: kube::Client,
    namespace: String,
    name: String,
    rotation_period: Duration,
    handle: JwtKeyHandle,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let keys = refresh_jwt_keys(&client, &namespace, &name, rotation_period)
            .await
            .and_then(|stored| {
                stored.signing_keys().map_err(|error| {
                    BrokerStartError::KeySecret(format!("{namespace}/{name}: {error}"))
                })
            });
        match keys {
            Ok(keys) if keys.kids() != handle.load().kids() => {
                tracing::info!(kids = ?keys.kids(), "now signing and publishing new JWT keys");
                handle.replace(keys);
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "could not refresh the JWT signing keys; keeping the current ones")
            }
        }
    }
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
    /// How often the reaper looks for credentials to drop, besides right
    /// after pods go away.
    pub reap_interval: Duration,
    /// How long the reaper leaves a credential whose pod this replica has
    /// never seen: another replica's pod watch may be ahead. A pod seen
    /// deleted loses its credentials at once.
    pub unknown_pod_grace: Duration,
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
    let grants_synced = grants.clone();
    let secret_reader = Arc::new(SecretReader::new(client.clone()));
    let state = Arc::new(BrokerState {
        broker: Broker {
            grants,
            secrets,
            keys: options.keys,
            kubernetes_secret: KubernetesSecretProvider::new(Arc::clone(&secret_reader)),
            jwt: options.jwt,
            postgres: PostgresProvider::new(secret_reader),
            metrics,
        },
        authenticator: Authenticator::new(
            client,
            &options.audience,
            pods.clone(),
            CacheLimits::default(),
        ),
        limiter: governor::RateLimiter::keyed(options.rate_limit),
    });
    {
        // Forget service accounts that have been quiet long enough to be
        // back at a full burst, so the limiter's memory stays bounded.
        let (state, shutdown) = (Arc::clone(&state), shutdown.clone());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(60)) => state.limiter.retain_recent(),
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
        tasks.spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = async {
                    grants.wait_synced().await;
                    pods.wait_synced().await;
                    state.broker.secrets.wait_until_ready().await
                } => readiness.set_ready(),
            }
            reap_until(&state, &pods, interval, unknown_pod_grace, &shutdown).await;
        });
    }
    https::serve_until_shutdown(
        tasks,
        ServedPorts {
            listener: options.listener,
            admin_listener: options.admin_listener,
            certificate: options.certificate,
            reload_interval: options.reload_interval,
            routes: broker_routes(state),
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

/// Reaps now, then every `interval` and soon after pods go away, until
/// `shutdown`. Every replica reaps; dropping a credential twice is harmless.
async fn reap_until(
    state: &BrokerState,
    pods: &PodIndex,
    interval: Duration,
    unknown_pod_grace: Duration,
    shutdown: &CancellationToken,
) {
    /// Lets a burst of deletions (a scaled-down Deployment) end first.
    const SETTLE: Duration = Duration::from_secs(1);
    let mut departures = pods.departures();
    departures.mark_unchanged();
    loop {
        let reaped = state
            .broker
            .reap(pods, unknown_pod_grace, Timestamp::now())
            .await;
        if reaped.expired + reaped.pod_gone + reaped.failed > 0 {
            tracing::info!(
                found = reaped.found,
                expired = reaped.expired,
                pod_gone = reaped.pod_gone,
                failed = reaped.failed,
                "reaper pass"
            );
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
            Ok(()) = departures.changed() => {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(SETTLE) => {}
                }
                departures.mark_unchanged();
            }
        }
    }
}
