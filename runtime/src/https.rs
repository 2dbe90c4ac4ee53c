//! HTTPS serving for the broker and the webhook: warp filters served by
//! hyper on tokio-rustls streams, with a certificate that is reloaded when
//! its files change, so a rotated serving certificate (cert-manager, or the
//! operator's own) takes effect without a restart.
//!
//! Files are polled rather than watched with inotify: Kubernetes updates a
//! mounted Secret by swapping a `..data` symlink, which inotify on the
//! files themselves misses, and reading two small files every few seconds
//! costs nothing.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use ferry_contract::wire::{ErrorDetail, ErrorResponse};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use warp::Filter as _;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::{Reply, Response};
use zeroize::Zeroizing;

use crate::serving::{Handshake, ServingLimits, ServingMetrics, serve_limited};

/// Why a serving certificate could not be loaded. Messages name files, never
/// their content.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{path}: no PEM certificate found")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no usable PEM private key.
    #[error("{path}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The key does not belong to the certificate, or is of an unsupported type.
    #[error("{cert} and {key} do not form a usable pair: {reason}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The serving metrics could not be registered.
    #[error("registering serving metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The crypto provider every ferry TLS endpoint uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A serving certificate read from a PEM certificate chain and a PEM key,
/// swapped in place when [`ReloadingCertificate::reload`] finds the files
/// changed.
#[derive(Debug)]
pub struct ReloadingCertificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    state: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    // The raw files, to tell whether they changed. The key is private
    // material: it is wiped from memory when dropped.
    cert_pem: Vec<u8>,
    key_pem: Zeroizing<Vec<u8>>,
}

/// What a reload found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The files are as they were.
    Unchanged,
    /// New files were loaded and are now served.
    Replaced,
}

impl ReloadingCertificate {
    /// Loads the certificate chain at `cert_path` and the key at `key_path`.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let (cert_pem, key_pem) = read_pair(cert_path, key_path)?;
        let key = certified_key(cert_path, &cert_pem, key_path, &key_pem)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            state: RwLock::new(Loaded {
                key,
                cert_pem,
                key_pem,
            }),
        }))
    }

    /// Rereads the files and serves them from now on if they changed and
    /// form a valid pair; on error the current certificate stays in use.
    pub fn reload(&self) -> Result<Reload, TlsError> {
        let (cert_pem, key_pem) = read_pair(&self.cert_path, &self.key_path)?;
        {
            let current = self.state.read().unwrap_or_else(PoisonError::into_inner);
            if current.cert_pem == cert_pem && current.key_pem == key_pem {
                return Ok(Reload::Unchanged);
            }
        }
        let key = certified_key(&self.cert_path, &cert_pem, &self.key_path, &key_pem)?;
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = Loaded {
            key,
            cert_pem,
            key_pem,
        };
        Ok(Reload::Replaced)
    }

    /// Reloads every `interval` until `shutdown` is cancelled, logging
    /// replacements and failures.
    pub async fn reload_every(&self, interval: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            match self.reload() {
                Ok(Reload::Unchanged) => {}
                Ok(Reload::Replaced) => tracing::info!(
                    cert = %self.cert_path.display(),
                    "serving certificate reloaded"
                ),
                Err(error) => tracing::warn!(
                    %error,
                    "serving certificate not reloaded; keeping the current one"
                ),
            }
        }
    }

    /// The certificate currently served.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(
            &self
                .state
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .key,
        )
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn read_pair(cert_path: &Path, key_path: &Path) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    Ok((read(cert_path)?, Zeroizing::new(read(key_path)?)))
}

fn certified_key(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| TlsError::BadKey {
        path: key_path.to_owned(),
        reason: error.to_string(),
    })?;
    let certified =
        CertifiedKey::from_der(chain, key, &provider()).map_err(|error| TlsError::Mismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            reason: error.to_string(),
        })?;
    Ok(Arc::new(certified))
}

/// A rustls server configuration that serves whatever `certificate` holds
/// at each handshake, speaking HTTP/1.1 only (see [`crate::serving`]).
pub fn server_config(certificate: Arc<ReloadingCertificate>) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The JSON error every ferry HTTPS endpoint answers with:
/// `{"error": {"code": <status>, "message": <what to fix>}}`.
pub fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = ErrorResponse {
        error: ErrorDetail {
            code: status.as_u16(),
            message: message.into(),
            keys_required: Vec::new(),
        },
    };
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// Turns warp's rejections into JSON errors. `served` says what the server
/// serves (for a 404), `max_body` its body limit (for a 413).
pub fn rejection_reply(rejection: &warp::Rejection, served: &str, max_body: u64) -> Response {
    if rejection.is_not_found() {
        json_error(
            StatusCode::NOT_FOUND,
            format!("not found: this server serves {served}"),
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method not allowed: this server serves {served}"),
        )
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {max_body} bytes"),
        )
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        json_error(StatusCode::LENGTH_REQUIRED, "request has no Content-Length")
    } else {
        json_error(
            StatusCode::BAD_REQUEST,
            format!("bad request: {rejection:?}"),
        )
    }
}

/// A ferry server's two ports and what they serve.
pub struct ServedPorts {
    /// The TLS listener.
    pub listener: TcpListener,
    /// The admin listener (`/livez`, `/readyz`, `/metrics`).
    pub admin_listener: TcpListener,
    /// The serving certificate, reloaded every `reload_interval`.
    pub certificate: Arc<ReloadingCertificate>,
    /// How often the certificate files are checked.
    pub reload_interval: Duration,
    /// The routes served over TLS.
    pub routes: BoxedFilter<(Response,)>,
    /// What the TLS port allows each client.
    pub limits: ServingLimits,
    /// How long both ports keep answering once `shutdown` begins (see
    /// [`spawn_servers`]).
    pub shutdown_delay: Duration,
    /// Names the serving metrics: `ferry_<server>_connections_open` and
    /// `ferry_<server>_limited_total`.
    pub server: &'static str,
    /// What the admin port reports.
    pub admin: crate::admin::AdminState,
}

/// Serves `ports` with [`spawn_servers`] until `shutdown`; then reports
/// not ready and waits for every task of `tasks`, the servers and the
/// caller's own background work, to finish.
pub async fn serve_until_shutdown(
    mut tasks: tokio::task::JoinSet<()>,
    ports: ServedPorts,
    shutdown: &CancellationToken,
) -> Result<(), TlsError> {
    let readiness = ports.admin.readiness.clone();
    spawn_servers(&mut tasks, ports, shutdown)?;
    shutdown.cancelled().await;
    readiness.set_not_ready("shutting down");
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Spawns, onto `tasks`, what every ferry HTTPS server runs: the
/// certificate reload, the admin server, and the TLS server.
///
/// A pod told to stop is still in its Service's endpoints for a moment,
/// and its clients (the apiserver calling the webhook, sidecars calling the
/// broker) hold keep-alive connections to it. Closing at once would cut
/// off a request already on its way over such a connection (the apiserver
/// reports `EOF` and refuses the pod it was admitting). So once `shutdown`
/// begins, both ports keep answering for `shutdown_delay`, and every reply
/// says `Connection: close`, so each client leaves after a complete answer
/// and reconnects to a replica that is not stopping. Then the TLS server
/// stops accepting and drains.
pub fn spawn_servers(
    tasks: &mut tokio::task::JoinSet<()>,
    ports: ServedPorts,
    shutdown: &CancellationToken,
) -> Result<(), TlsError> {
    let config = Arc::new(server_config(Arc::clone(&ports.certificate))?);
    let stopped = CancellationToken::new();
    {
        let (shutdown, stopped, delay) = (shutdown.clone(), stopped.clone(), ports.shutdown_delay);
        tasks.spawn(async move {
            shutdown.cancelled().await;
            tokio::time::sleep(delay).await;
            stopped.cancel();
        });
    }
    let (certificate, interval) = (ports.certificate, ports.reload_interval);
    let reload_shutdown = stopped.clone();
    tasks.spawn(async move { certificate.reload_every(interval, reload_shutdown).await });
    let metrics = ServingMetrics::new(&ports.admin.registry, ports.server)?;
    tasks.spawn(crate::admin::serve_admin(
        ports.admin_listener,
        ports.admin,
        stopped.clone().cancelled_owned(),
    ));
    tasks.spawn(serve(
        ports.listener,
        config,
        closing_once_stopping(ports.routes, shutdown.clone()),
        ports.limits,
        metrics,
        stopped.cancelled_owned(),
    ));
    Ok(())
}

/// `routes`, whose replies say `Connection: close` once `stopping` is
/// cancelled.
fn closing_once_stopping(
    routes: BoxedFilter<(Response,)>,
    stopping: CancellationToken,
) -> BoxedFilter<(Response,)> {
    routes
        .map(move |mut response: Response| {
            if stopping.is_cancelled() {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        })
        .boxed()
}

/// Binds `addr` (such as `0.0.0.0:8443`, or `127.0.0.1:0` in tests).
pub async fn bind(addr: &str) -> Result<TcpListener, TlsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| TlsError::Bind {
            addr: addr.to_owned(),
            source,
        })
}

/// The TLS handshake, for [`serve_limited`].
#[derive(Clone)]
struct Tls(TlsAcceptor);

impl Handshake for Tls {
    type Stream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    async fn handshake(&self, stream: tokio::net::TcpStream) -> std::io::Result<Self::Stream> {
        self.0.accept(stream).await
    }
}

/// Serves `filter` over TLS on `listener` within `limits` until `shutdown`
/// completes; then stops accepting, lets in-flight requests finish
/// (bounded), and returns.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    filter: BoxedFilter<(Response,)>,
    limits: ServingLimits,
    metrics: ServingMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let local: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(addr = ?local, ?limits, "https server listening");
    let tls = Tls(TlsAcceptor::from(config));
    serve_limited(listener, tls, filter, limits, metrics, shutdown).await;
    tracing::info!(addr = ?local, "https server stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let issued = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let cert = dir.join("tls.crt");
        let key = dir.join("tls.key");
        std::fs::write(&cert, issued.cert.pem()).unwrap();
        std::fs::write(&key, issued.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn reload_serves_new_files_and_keeps_the_old_pair_when_the_new_one_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "first.example");
        let served = ReloadingCertificate::load(&cert, &key).unwrap();
        let first = served.current();
        assert_eq!(served.reload().unwrap(), Reload::Unchanged);

        write_pair(dir.path(), "second.example");
        assert_eq!(served.reload().unwrap(), Reload::Replaced);
        let second = served.current();
        assert_ne!(first.cert, second.cert);

        std::fs::write(&key, "not a key").unwrap();
        let error = served.reload().unwrap_err().to_string();
        assert!(error.contains("tls.key"), "{error}");
        assert_eq!(served.current().cert, second.cert);
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let one = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let (cert, _) = write_pair(one.path(), "one.example");
        let (_, key) = write_pair(other.path(), "other.example");
        let error = ReloadingCertificate::load(&cert, &key).unwrap_err();
        assert!(matches!(error, TlsError::Mismatch { .. }), "{error}");
    }
}
