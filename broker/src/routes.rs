//! The broker's HTTPS API (see `ferry_contract::wire`): authenticate the
//! bearer token, rate-limit its service account, hand the request to the
//! [`Broker`], and answer every failure with a JSON error body.

use std::convert::Infallible;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ferry_contract::wire::{
    DEFAULT_WATCH_SECONDS, ErrorDetail, ErrorResponse, LeaseRequest, LeasesResponse,
    MAX_WATCH_SECONDS, RenewRequest, RevokedToken, RevokedTokens, WatchRequest, WatchResponse,
};
use governor::Quota;
use governor::clock::{Clock as _, DefaultClock};
use k8s_openapi::jiff::Timestamp;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::auth::{AuthError, Authenticator};
use crate::held_watches::{HeldWatches, RETRY_AFTER_SECONDS, WatchRefused};
use crate::service::{Broker, BrokerError, audit_refused};
use ferry_runtime::https::{json_error, rejection_reply};
use ferry_runtime::serving::{ConnectionSlot, PeerAddr};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: u64 = 64 * 1024;

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
    /// What this replica knows of the credentials it holds.
    pub custody: Arc<crate::custody::CustodyLog>,
    /// Cancelled when the broker begins to shut down: held watches answer
    /// at once, so draining does not wait for them.
    pub stopping: tokio_util::sync::CancellationToken,
    /// The revocation watches held now, bounded.
    pub watches: Arc<HeldWatches>,
}

/// The broker's routes, answering every failure with a JSON error body.
pub fn broker_routes(state: Arc<BrokerState>) -> BoxedFilter<(Response,)> {
    let bearer = warp::header::optional::<String>("authorization")
        .and(warp::ext::optional::<PeerAddr>())
        .map(|bearer, peer: Option<PeerAddr>| Caller {
            bearer,
            peer: peer.map(|PeerAddr(addr)| addr.ip()),
        });
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
            |body: Bytes, caller: Caller, state: Arc<BrokerState>| async move {
                issue(&state, caller, &body).await
            },
        );
    let renew = warp::path!("v1" / "leases" / String / "renew")
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .and(bearer)
        .and(with_state.clone())
        .then(
            |id: String, body: Bytes, caller: Caller, state: Arc<BrokerState>| async move {
                renew(&state, caller, &id, &body).await
            },
        );
    let watch = warp::path!("v1" / "leases" / "watch")
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .and(bearer)
        .and(warp::ext::optional::<ConnectionSlot>())
        .and(with_state.clone())
        .then(
            |body: Bytes,
             caller: Caller,
             connection: Option<ConnectionSlot>,
             state: Arc<BrokerState>| async move {
                watch(&state, caller, connection, &body).await
            },
        );
    let revoke = warp::path!("v1" / "leases" / String)
        .and(warp::delete())
        .and(bearer)
        .and(with_state)
        .then(
            |id: String, caller: Caller, state: Arc<BrokerState>| async move {
                revoke(&state, caller, &id).await
            },
        );
    let jwks = {
        let state = Arc::clone(&state);
        warp::path!("v1" / "jwks")
            .and(warp::get())
            .map(move || warp::reply::json(&state.broker.jwt.jwks()).into_response())
    };
    let revoked_tokens = {
        let state = Arc::clone(&state);
        warp::path!("v1" / "jwks" / "revoked")
            .and(warp::get())
            .map(move || {
                let now = Timestamp::now().as_second();
                let revoked = state
                    .broker
                    .revoked_leases
                    .revoked_tokens(now)
                    .into_iter()
                    .map(|(jti, exp)| RevokedToken { jti, exp })
                    .collect();
                warp::reply::json(&RevokedTokens { revoked }).into_response()
            })
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
        .or(watch)
        .unify()
        .or(renew)
        .unify()
        .or(revoke)
        .unify()
        .or(jwks)
        .unify()
        .or(revoked_tokens)
        .unify()
        .or(discovery)
        .unify()
        .recover(|rejection: warp::Rejection| async move {
            Ok::<_, Infallible>(rejection_reply(
                &rejection,
                "POST /v1/leases, POST /v1/leases/{id}/renew, DELETE /v1/leases/{id}, POST /v1/leases/watch, GET /v1/jwks, GET /v1/jwks/revoked",
                MAX_BODY_BYTES,
            ))
        })
        .unify()
        .boxed()
}

/// Who sent a request: its bearer token and the address it came from.
struct Caller {
    bearer: Option<String>,
    peer: Option<IpAddr>,
}

/// Authenticates the bearer token, counting the cache use and auditing a
/// refusal.
async fn authenticate(
    state: &BrokerState,
    action: &'static str,
    caller: Caller,
) -> Result<super::auth::PodIdentity, BrokerError> {
    let token = caller
        .bearer
        .as_deref()
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    // A pod shutting down may still give its leases back.
    let (identity, used) = state
        .authenticator
        .authenticate_from(token, caller.peer, action == "revoke")
        .await;
    // Without a token no review is made, so there is nothing to count.
    if !token.is_empty() {
        state.broker.metrics.observe_review(used);
    }
    let pod = identity.map_err(|error| {
        let error = match error {
            AuthError::Unavailable(_) => BrokerError::Unavailable(error.to_string()),
            AuthError::Throttled {
                retry_after_seconds,
                ..
            } => BrokerError::RateLimited(retry_after_seconds),
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

async fn issue(state: &BrokerState, caller: Caller, body: &[u8]) -> Response {
    let started = Instant::now();
    let result = async {
        let pod = authenticate(state, "issue", caller).await?;
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

async fn renew(state: &BrokerState, caller: Caller, id: &str, body: &[u8]) -> Response {
    let started = Instant::now();
    let result = async {
        let pod = authenticate(state, "renew", caller).await?;
        // An empty body is `{}`: sidecars before x509 sent nothing else.
        let request: RenewRequest = if body.trim_ascii().is_empty() {
            RenewRequest::default()
        } else {
            serde_json::from_slice(body).map_err(|error| {
                BrokerError::BadRequest(format!("request body is not a renew request: {error}"))
            })?
        };
        state
            .broker
            .renew(&pod, id, request.csr.as_deref(), Timestamp::now())
            .await
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

async fn revoke(state: &BrokerState, caller: Caller, id: &str) -> Response {
    let started = Instant::now();
    let result = async {
        let pod = authenticate(state, "revoke", caller).await?;
        state.broker.revoke(&pod, id, Timestamp::now()).await
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

async fn watch(
    state: &BrokerState,
    caller: Caller,
    connection: Option<ConnectionSlot>,
    body: &[u8],
) -> Response {
    let result = async {
        let pod = authenticate(state, "watch", caller).await?;
        let request: WatchRequest = serde_json::from_slice(body).map_err(|error| {
            BrokerError::BadRequest(format!("request body is not a watch request: {error}"))
        })?;
        let wait = request
            .wait_seconds
            .unwrap_or(DEFAULT_WATCH_SECONDS)
            .clamp(1, MAX_WATCH_SECONDS);
        let _held = state.watches.hold(&pod.pod_uid).map_err(|refused| {
            BrokerError::TooManyWatches(match refused {
                WatchRefused::ReplicaFull => "this broker replica holds as many revocation \
                    watches as --max-watches allows; revocations reach the pod at its next \
                    renewal until a watch is held"
                    .to_owned(),
                WatchRefused::PodFull => format!(
                    "this pod holds {} revocation watches already",
                    crate::held_watches::MAX_WATCHES_PER_POD
                ),
            })
        })?;
        // While held, the watch counts against --max-watches, not against
        // the connection limits issuance and renewal need.
        let _lent = connection.as_ref().map(ConnectionSlot::lend);
        state
            .broker
            .watch(
                &pod,
                &request.leases,
                std::time::Duration::from_secs(wait),
                &state.stopping,
                Timestamp::now(),
            )
            .await
    }
    .await;
    match result {
        Ok(revoked) => warp::reply::json(&WatchResponse { revoked }).into_response(),
        Err(error) => error_reply(&error),
    }
}

fn error_reply(error: &BrokerError) -> Response {
    let code = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match error {
        BrokerError::RateLimited(seconds) => warp::reply::with_header(
            json_error(code, error.to_string()),
            "retry-after",
            seconds.to_string(),
        )
        .into_response(),
        BrokerError::TooManyWatches(_) => warp::reply::with_header(
            json_error(code, error.to_string()),
            "retry-after",
            RETRY_AFTER_SECONDS.to_string(),
        )
        .into_response(),
        BrokerError::KeysRequired(keys) => {
            let body = ErrorResponse {
                error: ErrorDetail {
                    code: code.as_u16(),
                    message: error.to_string(),
                    keys_required: keys.clone(),
                },
            };
            warp::reply::with_status(warp::reply::json(&body), code).into_response()
        }
        _ => json_error(code, error.to_string()),
    }
}
