//! The webhook's servers: AdmissionReview over HTTPS at `/mutate`, and the
//! admin port (`/livez`, `/readyz`, `/metrics`), with the Grant index kept
//! in step by a watch and the serving certificate reloaded on change.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_api::resources::{AccessPolicy, Grant};
use ferry_runtime::admin::{AdminState, Readiness};
use ferry_runtime::grant_index::GrantIndex;
use ferry_runtime::https::{
    self, ReloadingCertificate, ServedPorts, TlsError, json_error, rejection_reply,
};
use ferry_runtime::serving::ServingLimits;
use k8s_openapi::jiff::Timestamp;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::admission::{Decision, review_pod_admission};
use crate::config::InjectionConfig;
use crate::metrics::WebhookMetrics;

/// The path the apiserver posts AdmissionReviews to.
pub const MUTATE_PATH: &str = "/mutate";

/// The largest request body accepted, and the default of `--max-body-bytes`
/// (which may lower it). The webhook sees pod CREATEs only, so a review
/// wraps one pod: a large one (10 containers of 70 env vars each, 20
/// volumes, long annotations, `last-applied-configuration` and
/// managedFields) makes a 275 KiB review, and 1 MiB leaves room for pods
/// several times larger while 128 connections (the webhook's default) can
/// hold at most 128 MiB of unauthenticated bodies.
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;

/// The default of `--max-connections` for the webhook: with
/// [`MAX_BODY_BYTES`], bounds the memory bodies in flight may take.
pub const DEFAULT_MAX_CONNECTIONS: usize = 128;

/// What the `/mutate` handler needs.
#[derive(Clone, Debug)]
pub struct WebhookState {
    /// What to inject.
    pub config: Arc<InjectionConfig>,
    /// Who holds which Grants.
    pub grants: GrantIndex,
    /// Counters and latencies.
    pub metrics: WebhookMetrics,
}

/// The `/mutate` route, answering every failure with a JSON error body.
pub fn mutate_route(state: WebhookState) -> BoxedFilter<(Response,)> {
    warp::path("mutate")
        .and(warp::path::end())
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .map(move |body: Bytes| answer(&state, &body))
        .recover(move |rejection: warp::Rejection| async move {
            Ok::<_, Infallible>(rejection_reply(
                &rejection,
                &format!("POST {MUTATE_PATH}"),
                MAX_BODY_BYTES,
            ))
        })
        .unify()
        .boxed()
}

fn answer(state: &WebhookState, body: &[u8]) -> Response {
    let started = Instant::now();
    if !state.grants.is_synced() {
        state.metrics.observe_bad_request(503);
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ferry webhook is starting: its Grant index has not been filled from the apiserver yet",
        );
    }
    match review_pod_admission(body, &state.config, &state.grants, Timestamp::now()) {
        Ok(reviewed) => {
            let reply = warp::reply::json(&reviewed.review).into_response();
            state.metrics.observe(&reviewed.decision, started.elapsed());
            match &reviewed.decision {
                Decision::Untouched(reason) => {
                    tracing::debug!(pod = %reviewed.pod, reason, "admitted untouched");
                }
                Decision::Injected { secrets, warned } => {
                    tracing::info!(pod = %reviewed.pod, secrets, warned, "sidecar injected");
                }
                Decision::Refused(reason) => {
                    tracing::info!(pod = %reviewed.pod, reason, "pod refused");
                }
            }
            reply
        }
        Err(bad) => {
            state.metrics.observe_bad_request(400);
            tracing::warn!(error = %bad, "malformed admission request");
            json_error(StatusCode::BAD_REQUEST, bad.to_string())
        }
    }
}

/// Everything [`serve`] needs besides the apiserver client.
pub struct ServeOptions {
    /// Where AdmissionReviews arrive (TLS).
    pub listener: TcpListener,
    /// Where `/livez`, `/readyz` and `/metrics` are served (plain HTTP).
    pub admin_listener: TcpListener,
    /// The serving certificate.
    pub certificate: Arc<ReloadingCertificate>,
    /// How often the certificate files are checked for changes.
    pub reload_interval: Duration,
    /// What to inject.
    pub config: InjectionConfig,
    /// Set ready once the Grant index is filled, and not ready again at
    /// shutdown; backs `/readyz`.
    pub readiness: Readiness,
    /// What the HTTPS port allows each client.
    pub limits: ServingLimits,
    /// How long both ports keep answering once shutdown begins.
    pub shutdown_delay: Duration,
}

/// Runs the webhook until `shutdown` is cancelled: watches Grants, serves
/// admission and admin requests, reloads the certificate. Ready once the
/// Grant index is filled. On shutdown, stops accepting and drains.
pub async fn serve(
    client: kube::Client,
    options: ServeOptions,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let metrics = WebhookMetrics::new(&registry)?;
    let grants = GrantIndex::new();
    let readiness = options.readiness;
    readiness.set_not_ready("the Grant index is not filled yet");
    let state = WebhookState {
        config: Arc::new(options.config),
        grants: grants.clone(),
        metrics: metrics.clone(),
    };

    let mut tasks = tokio::task::JoinSet::new();
    {
        let (grants, client, shutdown) = (grants.clone(), client.clone(), shutdown.clone());
        tasks.spawn(async move {
            grants
                .maintain(kube::Api::<Grant>::all(client), shutdown)
                .await
        });
    }
    {
        let (policies, shutdown) = (grants.policies().clone(), shutdown.clone());
        tasks.spawn(async move {
            policies
                .maintain(kube::Api::<AccessPolicy>::all(client), shutdown)
                .await
        });
    }
    {
        let (grants, readiness, shutdown) = (grants.clone(), readiness.clone(), shutdown.clone());
        tasks.spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = grants.wait_synced() => readiness.set_ready(),
            }
            // Keep the gauge current; the index changes with every watch event.
            loop {
                metrics.set_grants(grants.len());
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        });
    }
    https::serve_until_shutdown(
        tasks,
        ServedPorts {
            listener: options.listener,
            admin_listener: options.admin_listener,
            certificate: options.certificate,
            reload_interval: options.reload_interval,
            routes: mutate_route(state),
            limits: options.limits,
            shutdown_delay: options.shutdown_delay,
            server: "webhook",
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

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Metrics could not be registered.
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}
