//! The operator's admin HTTP server: `/livez`, `/readyz` and `/metrics`.
//!
//! Plain HTTP on its own port, meant for the kubelet's probes and for
//! Prometheus; it never carries a secret. Readiness is a shared flag that
//! controllers flip ([`Readiness`]); metrics are whatever is registered on the
//! [`prometheus::Registry`] the server is given.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};

use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use warp::Filter;
use warp::http::StatusCode;
use warp::http::header::CONTENT_TYPE;
use warp::reply::{Reply, Response};

use crate::serving::{Plain, ServingLimits, ServingMetrics, serve_limited};

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The listen address could not be bound.
    #[error("admin server: cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Whether this replica is ready, and if not, why; cheap to clone and shared
/// between the admin server and whatever decides readiness.
#[derive(Clone, Debug)]
pub struct Readiness {
    // `None` when ready, else the reason `/readyz` reports.
    not_ready: Arc<RwLock<Option<String>>>,
}

impl Readiness {
    /// A flag that starts not ready, reporting `reason`.
    pub fn not_ready(reason: impl Into<String>) -> Self {
        Self {
            not_ready: Arc::new(RwLock::new(Some(reason.into()))),
        }
    }

    /// Marks the replica ready.
    pub fn set_ready(&self) {
        *self
            .not_ready
            .write()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Marks the replica not ready, reporting `reason`.
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self
            .not_ready
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(reason.into());
    }

    /// `Ok(())` when ready, else the reason it is not.
    pub fn check(&self) -> Result<(), String> {
        match &*self
            .not_ready
            .read()
            .unwrap_or_else(PoisonError::into_inner)
        {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }

    /// Whether the replica is ready.
    pub fn is_ready(&self) -> bool {
        self.check().is_ok()
    }
}

impl Default for Readiness {
    /// Not ready, because the process is still starting.
    fn default() -> Self {
        Self::not_ready("starting")
    }
}

/// What the admin server reports from.
#[derive(Clone, Debug)]
pub struct AdminState {
    /// Backs `/readyz`.
    pub readiness: Readiness,
    /// Rendered by `/metrics`.
    pub registry: Registry,
}

/// Binds the admin listener on `addr` (such as `0.0.0.0:8080`, or
/// `127.0.0.1:0` for a free port in tests).
pub async fn bind_admin(addr: &str) -> Result<TcpListener, AdminError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind {
            addr: addr.to_owned(),
            source,
        })
}

/// Serves the admin routes on `listener` until `shutdown` completes, then
/// stops accepting and lets in-flight requests finish. Clients are held to
/// [`ServingLimits::ADMIN`]: the port answers probes and scrapes, not a
/// flood.
pub async fn serve_admin(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let local: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(addr = ?local, "admin server listening");
    // Counted on a registry of its own: the admin port's refusals are not
    // the served API's, and the caller's registry may already hold the
    // API server's serving metrics.
    let metrics = match ServingMetrics::new(&Registry::new(), "admin") {
        Ok(metrics) => metrics,
        Err(error) => return tracing::error!(%error, "admin server metrics"),
    };
    let routes = admin_routes(state)
        .recover(|rejection: warp::Rejection| async move {
            Ok::<_, std::convert::Infallible>(crate::https::rejection_reply(
                &rejection,
                "GET /livez, /readyz, /metrics",
                ServingLimits::ADMIN.max_body_bytes,
            ))
        })
        .unify()
        .boxed();
    serve_limited(
        listener,
        Plain,
        routes,
        ServingLimits::ADMIN,
        metrics,
        shutdown,
    )
    .await;
    tracing::info!(addr = ?local, "admin server stopped");
}

/// The admin routes as a warp filter, for serving alongside other routes.
pub fn admin_routes(
    state: AdminState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let livez = warp::path("livez")
        .and(warp::path::end())
        .map(livez_response);
    let readiness = state.readiness;
    let readyz = warp::path("readyz")
        .and(warp::path::end())
        .map(move || readyz_response(&readiness));
    let registry = state.registry;
    let metrics = warp::path("metrics")
        .and(warp::path::end())
        .map(move || metrics_response(&registry));
    warp::get().and(livez.or(readyz).unify().or(metrics).unify())
}

fn livez_response() -> Response {
    "ok\n".into_response()
}

fn readyz_response(readiness: &Readiness) -> Response {
    match readiness.check() {
        Ok(()) => "ok\n".into_response(),
        Err(reason) => warp::reply::with_status(
            format!("not ready: {reason}\n"),
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .into_response(),
    }
}

fn metrics_response(registry: &Registry) -> Response {
    match render_metrics(registry) {
        Ok(text) => warp::reply::with_header(text, CONTENT_TYPE, TextEncoder::new().format_type())
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot render metrics");
            warp::reply::with_status(
                format!("cannot render metrics: {error}\n"),
                StatusCode::INTERNAL_SERVER_ERROR,
            )
            .into_response()
        }
    }
}

/// Renders every metric on `registry` in the Prometheus text format.
pub fn render_metrics(registry: &Registry) -> Result<String, prometheus::Error> {
    let mut text = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut text)?;
    String::from_utf8(text).map_err(|error| prometheus::Error::Msg(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn readiness_starts_not_ready_and_flips_both_ways() {
        let readiness = Readiness::default();
        assert_eq!(readiness.check(), Err("starting".to_owned()));

        let shared = readiness.clone();
        shared.set_ready();
        assert!(readiness.is_ready());

        shared.set_not_ready("lost connection to the apiserver");
        assert_eq!(
            readiness.check(),
            Err("lost connection to the apiserver".to_owned())
        );
    }

    #[test]
    fn rendered_metrics_include_registered_metric_names() {
        let registry = Registry::new();
        let leader = prometheus::IntGauge::new("ferry_operator_leader", "leading").unwrap();
        registry.register(Box::new(leader.clone())).unwrap();
        leader.set(1);

        let text = render_metrics(&registry).unwrap();

        assert!(text.contains("ferry_operator_leader 1"), "{text}");
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    #[tokio::test]
    async fn admin_server_answers_probes_and_stops_on_shutdown() {
        let listener = bind_admin("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let readiness = Readiness::not_ready("waiting for caches");
        let state = AdminState {
            readiness: readiness.clone(),
            registry: Registry::new(),
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(serve_admin(listener, state, stop.clone().cancelled_owned()));

        assert_eq!(get(addr, "/livez").await, (200, "ok\n".to_owned()));
        assert_eq!(
            get(addr, "/readyz").await,
            (503, "not ready: waiting for caches\n".to_owned())
        );
        readiness.set_ready();
        assert_eq!(get(addr, "/readyz").await, (200, "ok\n".to_owned()));
        assert_eq!(get(addr, "/nope").await.0, 404);

        stop.cancel();
        server.await.unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn binding_a_taken_address_names_it() {
        let taken = bind_admin("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();

        let error = bind_admin(&addr).await.unwrap_err();

        assert!(error.to_string().contains(&addr), "{error}");
    }
}
