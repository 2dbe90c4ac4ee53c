//! The bounds every ferry server holds a client to, whoever it is: how many
//! connections it keeps open (in all, and from one address), how long a
//! client may take to send a request's headers (idle keep-alive included)
//! and its body, and how large a body may be. A client past a bound is cut
//! off with a JSON error or a closed connection; it never holds memory or a
//! task the bound does not allow.
//!
//! The servers speak HTTP/1.1 only: the apiserver calls webhooks with ALPN
//! `http/1.1` only (k8s.io/apiserver `pkg/util/webhook/client.go`, so that
//! concurrent calls spread over replicas; it allows h2 only for loopback
//! URLs), the sidecar speaks HTTP/1.1, and leaving HTTP/2 out leaves out
//! its stream multiplexing, whose limits (concurrent streams, resets,
//! window sizes) would be more to bound.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, Request, StatusCode, header};
use warp::reply::Response;

/// How long in-flight connections get to finish after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What one server allows each client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServingLimits {
    /// Connections open at once, from all clients; further clients wait in
    /// the kernel's accept queue until one closes.
    pub max_connections: usize,
    /// Connections open at once from one IP address; further connections
    /// from it are closed at once.
    pub max_connections_per_address: usize,
    /// How long a connection may go without sending a complete request's
    /// headers: after it opens (TLS handshake included) and after each
    /// response (the idle keep-alive timeout).
    pub idle_timeout: Duration,
    /// How long a request's body may take to arrive once its headers have.
    pub body_timeout: Duration,
    /// The largest request body read.
    pub max_body_bytes: u64,
}

impl Default for ServingLimits {
    /// The defaults of the command-line flags (`--max-connections` and on).
    fn default() -> Self {
        Self {
            max_connections: 512,
            max_connections_per_address: 128,
            idle_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_body_bytes: 64 * 1024,
        }
    }
}

impl ServingLimits {
    /// The admin port's limits: probes and scrapes are few, small GETs.
    pub const ADMIN: Self = Self {
        max_connections: 64,
        max_connections_per_address: 64,
        idle_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(5),
        max_body_bytes: 4 * 1024,
    };
}

/// The address a request came from, in its extensions (read it with
/// `warp::ext::optional::<PeerAddr>()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Counts what the limits refused, on the server's registry.
#[derive(Clone, Debug)]
pub struct ServingMetrics {
    open: IntGauge,
    refused: IntCounterVec,
}

impl ServingMetrics {
    /// Registers `ferry_<server>_connections_open` and
    /// `ferry_<server>_limited_total{limit}` on `registry`.
    pub fn new(registry: &Registry, server: &str) -> Result<Self, prometheus::Error> {
        let open = IntGauge::new(
            format!("ferry_{server}_connections_open"),
            "Connections open now.",
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                format!("ferry_{server}_limited_total"),
                "Connections and requests cut off by a serving limit (connections_per_address, idle_timeout, body_timeout, body_too_large).",
            ),
            &["limit"],
        )?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        Ok(Self { open, refused })
    }

    fn limited(&self, limit: &str) {
        self.refused.with_label_values(&[limit]).inc();
    }
}

/// Connections held per address, released when a [`AddressSlot`] drops.
#[derive(Debug, Default)]
struct AddressCounts {
    held: Mutex<HashMap<IpAddr, usize>>,
}

struct AddressSlot {
    counts: Arc<AddressCounts>,
    address: IpAddr,
}

impl AddressCounts {
    fn claim(self: &Arc<Self>, address: IpAddr, max: usize) -> Option<AddressSlot> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(address).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counts: Arc::clone(self),
            address,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self
            .counts
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.address);
            }
        }
    }
}

/// A connection's shares of `max_connections` and of
/// `max_connections_per_address`, in the extensions of each request it
/// carries (read it with `warp::ext::optional::<ConnectionSlot>()`). A
/// handler that holds a request open for long (a long poll) lends them
/// back while it waits ([`ConnectionSlot::lend`]), so held requests never
/// keep other clients waiting in the accept queue nor crowd out the pods
/// behind one address; the handler bounds them with limits of its own.
#[derive(Clone)]
pub struct ConnectionSlot(Arc<SlotState>);

struct SlotState {
    connections: Arc<Semaphore>,
    addresses: Arc<AddressCounts>,
    address: IpAddr,
    max_per_address: usize,
    shares: Mutex<Option<(OwnedSemaphorePermit, AddressSlot)>>,
    /// The shares could not be taken back after a loan: the connection
    /// closes after its current response.
    closing: AtomicBool,
}

impl ConnectionSlot {
    fn new(
        connections: Arc<Semaphore>,
        addresses: Arc<AddressCounts>,
        max_per_address: usize,
        shares: (OwnedSemaphorePermit, AddressSlot),
    ) -> Self {
        Self(Arc::new(SlotState {
            connections,
            addresses,
            address: shares.1.address,
            max_per_address,
            shares: Mutex::new(Some(shares)),
            closing: AtomicBool::new(false),
        }))
    }

    /// Gives the connection's shares back until the returned guard drops.
    /// Then they are taken again if free; if not, the connection closes
    /// after the response (its client reconnects and waits its turn like
    /// any other).
    pub fn lend(&self) -> LentSlot {
        drop(
            self.0
                .shares
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        LentSlot(self.clone())
    }

    fn closing(&self) -> bool {
        self.0.closing.load(Ordering::Relaxed)
    }
}

/// A connection's shares lent back; see [`ConnectionSlot::lend`].
pub struct LentSlot(ConnectionSlot);

impl Drop for LentSlot {
    fn drop(&mut self) {
        let state = &self.0.0;
        let mut shares = state.shares.lock().unwrap_or_else(PoisonError::into_inner);
        if shares.is_some() {
            return;
        }
        let taken = Arc::clone(&state.connections)
            .try_acquire_owned()
            .ok()
            .zip(state.addresses.claim(state.address, state.max_per_address));
        match taken {
            Some(taken) => *shares = Some(taken),
            None => state.closing.store(true, Ordering::Relaxed),
        }
    }
}

/// What a connection holds until it closes.
struct Held {
    _connection: ConnectionSlot,
    open: IntGauge,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Turns an accepted TCP stream into the stream HTTP is spoken on (a TLS
/// handshake, or nothing for plain HTTP), within the idle timeout.
pub trait Handshake: Clone + Send + Sync + 'static {
    /// The stream HTTP is spoken on.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Completes the handshake on `stream`.
    fn handshake(
        &self,
        stream: TcpStream,
    ) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

/// Plain HTTP: no handshake.
#[derive(Clone, Copy, Debug)]
pub struct Plain;

impl Handshake for Plain {
    type Stream = TcpStream;
    async fn handshake(&self, stream: TcpStream) -> std::io::Result<TcpStream> {
        Ok(stream)
    }
}

/// Serves `filter` over HTTP/1.1 on `listener`, each connection through
/// `handshake`, within `limits`, until `shutdown` completes; then stops
/// accepting, lets in-flight requests finish (bounded), and returns.
pub async fn serve_limited<H: Handshake>(
    listener: TcpListener,
    handshake: H,
    filter: BoxedFilter<(Response,)>,
    limits: ServingLimits,
    metrics: ServingMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let local: Option<SocketAddr> = listener.local_addr().ok();
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let addresses = Arc::new(AddressCounts::default());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // At the limit, stop accepting: clients wait in the accept queue
        // rather than being refused while a slot may free up soon.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = addresses.claim(peer.ip(), limits.max_connections_per_address) else {
            metrics.limited("connections_per_address");
            tracing::debug!(%peer, "connection refused: too many from this address");
            drop(stream);
            continue;
        };
        metrics.open.inc();
        let connection = ConnectionSlot::new(
            Arc::clone(&connections),
            Arc::clone(&addresses),
            limits.max_connections_per_address,
            (permit, slot),
        );
        let held = Held {
            _connection: connection.clone(),
            open: metrics.open.clone(),
        };
        // Replies are small and latency matters more than packet count.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        let (handshake, filter, metrics) = (handshake.clone(), filter.clone(), metrics.clone());
        let request_connection = connection;
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _held = held;
            let io = match tokio::time::timeout(limits.idle_timeout, handshake.handshake(stream))
                .await
            {
                Ok(Ok(io)) => io,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "handshake failed");
                    return;
                }
                Err(_) => {
                    metrics.limited("idle_timeout");
                    tracing::debug!(%peer, "handshake timed out");
                    return;
                }
            };
            let request_metrics = metrics.clone();
            let service = hyper::service::service_fn(move |request| {
                let (filter, metrics, connection) = (
                    filter.clone(),
                    request_metrics.clone(),
                    request_connection.clone(),
                );
                async move {
                    Ok::<_, Infallible>(
                        answer(request, peer, connection, filter, limits, &metrics).await,
                    )
                }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                // hyper restarts this timer whenever it waits for a request's
                // head, so it bounds slow headers and idle keep-alive alike.
                .header_read_timeout(limits.idle_timeout)
                .max_buf_size(64 * 1024);
            let connection = builder.serve_connection(TokioIo::new(io), service);
            if let Err(error) = watcher.watch(connection).await {
                if error.is_timeout() {
                    metrics.limited("idle_timeout");
                }
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(addr = ?local, "connections still open after the drain timeout");
    }
}

/// Reads the body within the limits, then hands the request to `filter`.
async fn answer(
    request: Request<Incoming>,
    peer: SocketAddr,
    connection: ConnectionSlot,
    filter: BoxedFilter<(Response,)>,
    limits: ServingLimits,
    metrics: &ServingMetrics,
) -> Response {
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(PeerAddr(peer));
    parts.extensions.insert(connection.clone());
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.max_body_bytes) {
        metrics.limited("body_too_large");
        return closing(too_large(limits.max_body_bytes));
    }
    let max = usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX);
    let body =
        match tokio::time::timeout(limits.body_timeout, Limited::new(body, max).collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(error)) if error.downcast_ref::<LengthLimitError>().is_some() => {
                metrics.limited("body_too_large");
                return closing(too_large(limits.max_body_bytes));
            }
            Ok(Err(error)) => {
                return closing(crate::https::json_error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {error}"),
                ));
            }
            Err(_) => {
                metrics.limited("body_timeout");
                return closing(crate::https::json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "request body not received within {}s",
                        limits.body_timeout.as_secs_f64()
                    ),
                ));
            }
        };
    let service = TowerToHyperService::new(warp::service(filter));
    match hyper::service::Service::call(
        &service,
        Request::from_parts(parts, Full::<Bytes>::new(body)),
    )
    .await
    {
        Ok(response) if connection.closing() => closing(response),
        Ok(response) => response,
        Err(never) => match never {},
    }
}

fn too_large(max: u64) -> Response {
    crate::https::json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than {max} bytes"),
    )
}

/// Asks the client to close the connection after this response (one whose
/// body was cut off is never read further).
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lent_slot_frees_its_shares_and_closes_the_connection_when_none_is_left_on_return() {
        let connections = Arc::new(Semaphore::new(2));
        let addresses = Arc::new(AddressCounts::default());
        let address: IpAddr = [127, 0, 0, 2].into();
        let connect = || {
            let permit = Arc::clone(&connections).try_acquire_owned().unwrap();
            let slot = addresses.claim(address, 1).unwrap();
            ConnectionSlot::new(
                Arc::clone(&connections),
                Arc::clone(&addresses),
                1,
                (permit, slot),
            )
        };
        let slot = connect();
        assert_eq!(connections.available_permits(), 1);
        assert!(addresses.claim(address, 1).is_none());

        // Lent and returned while the shares are free: taken again, kept open.
        drop(slot.lend());
        assert_eq!(connections.available_permits(), 1);
        assert!(addresses.claim(address, 1).is_none());
        assert!(!slot.closing());

        // While lent, another connection from the same address fits; it
        // still holds the address's one share on return: close after this.
        let lent = slot.lend();
        assert_eq!(connections.available_permits(), 2);
        let other = connect();
        drop(lent);
        assert!(slot.closing());
        assert_eq!(connections.available_permits(), 1, "nothing half-taken");
        drop(other);
        drop(slot);
        assert_eq!(connections.available_permits(), 2);
        assert!(addresses.claim(address, 1).is_some());
    }

    #[test]
    fn an_address_holds_at_most_its_share_and_gets_it_back_on_close() {
        let counts = Arc::new(AddressCounts::default());
        let one: IpAddr = [127, 0, 0, 2].into();
        let other: IpAddr = [127, 0, 0, 3].into();
        let first = counts.claim(one, 2).unwrap();
        let _second = counts.claim(one, 2).unwrap();
        assert!(counts.claim(one, 2).is_none());
        assert!(counts.claim(other, 2).is_some());
        drop(first);
        assert!(counts.claim(one, 2).is_some());
    }
}
