//! A ferry HTTPS server told to stop keeps answering for its shutdown
//! delay, while its pod leaves the Service's endpoints: a request sent over
//! a keep-alive connection opened before the stop is answered, not cut off
//! (the apiserver would report `EOF` and refuse the pod it was admitting),
//! and every reply asks the client to reconnect elsewhere. `/readyz` says
//! not ready meanwhile. After the delay both ports close.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_e2e::http_get;
use ferry_e2e::pki::Authority;
use ferry_runtime::admin::{AdminState, Readiness};
use ferry_runtime::https::{ReloadingCertificate, ServedPorts, serve_until_shutdown};
use ferry_runtime::serving::ServingLimits;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use warp::Filter as _;

const WAIT: Duration = Duration::from_secs(30);

struct Server {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    tls: TlsConnector,
    shutdown: CancellationToken,
    stopped: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start(shutdown_delay: Duration) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::generate("graceful-shutdown-ca").unwrap();
    let files = authority
        .serving_cert(&["127.0.0.1"], dir.path(), "server")
        .unwrap();
    let certificate = ReloadingCertificate::load(&files.cert, &files.key).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (
        listener.local_addr().unwrap(),
        admin_listener.local_addr().unwrap(),
    );
    let readiness = Readiness::not_ready("starting");
    readiness.set_ready();
    let routes = warp::path("hello")
        .map(|| warp::reply::Reply::into_response("hello\n"))
        .boxed();
    let ports = ServedPorts {
        listener,
        admin_listener,
        certificate,
        reload_interval: Duration::from_secs(60),
        routes,
        limits: ServingLimits::default(),
        shutdown_delay,
        server: "graceful",
        admin: AdminState {
            readiness,
            registry: prometheus::Registry::new(),
        },
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let stopped = tokio::spawn(async move {
        serve_until_shutdown(tokio::task::JoinSet::new(), ports, &stop)
            .await
            .unwrap();
    });
    Server {
        addr,
        admin_addr,
        tls: connector(&authority.cert_pem()),
        shutdown,
        stopped,
        _dir: dir,
    }
}

fn connector(ca_pem: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

impl Server {
    async fn connect(&self) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        self.tls
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap()
    }
}

/// One reply's head, lowercased, and its body; the body is sized by
/// Content-Length, so the connection can carry another request.
async fn get(stream: &mut TlsStream<TcpStream>) -> (String, String) {
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(WAIT, read_reply(stream))
        .await
        .expect("the server answered")
}

async fn read_reply(stream: &mut (impl AsyncRead + Unpin)) -> (String, String) {
    let mut read = Vec::new();
    let mut buffer = [0_u8; 1024];
    loop {
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "closed before a whole reply: {read:?}");
        read.extend_from_slice(&buffer[..n]);
        let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&read[..end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map(|value| value.trim().parse().unwrap())
            .unwrap();
        if read.len() >= end + 4 + length {
            let body = String::from_utf8_lossy(&read[end + 4..end + 4 + length]).into_owned();
            return (head, body);
        }
    }
}

/// Whether the server closed `stream` (rather than leaving it open).
async fn closed(stream: &mut TlsStream<TcpStream>) -> bool {
    let mut buffer = [0_u8; 64];
    matches!(
        tokio::time::timeout(WAIT, stream.read(&mut buffer)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn a_stopping_server_answers_requests_on_open_connections_and_sends_clients_elsewhere() {
    // Longer than the test: it ends while the delay runs.
    let server = start(Duration::from_secs(3600)).await;
    let mut kept_alive = server.connect().await;
    let (head, body) = get(&mut kept_alive).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "hello\n");
    assert!(!head.contains("connection: close"), "{head}");

    server.shutdown.cancel();
    let ready = tokio::time::timeout(WAIT, async {
        loop {
            let readyz = http_get(server.admin_addr, "/readyz").await.unwrap();
            if readyz.status == 503 {
                return readyz.body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("/readyz turned not ready");
    assert!(ready.contains("shutting down"), "{ready}");
    assert_eq!(
        http_get(server.admin_addr, "/livez").await.unwrap().status,
        200
    );

    // The connection opened before the stop still carries a request...
    let (head, body) = get(&mut kept_alive).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "hello\n");
    // ...whose reply sends the client elsewhere, and then it is closed.
    assert!(head.contains("connection: close"), "{head}");
    assert!(closed(&mut kept_alive).await);

    // A client that has not heard yet is still answered, and sent away.
    let mut late = server.connect().await;
    let (head, _) = get(&mut late).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(!server.stopped.is_finished());
}

#[tokio::test]
async fn after_its_shutdown_delay_a_server_closes_both_ports() {
    let server = start(Duration::from_millis(200)).await;
    let mut idle = server.connect().await;
    assert!(get(&mut idle).await.0.starts_with("http/1.1 200"));

    server.shutdown.cancel();
    tokio::time::timeout(WAIT, server.stopped)
        .await
        .expect("the server stopped after its delay")
        .unwrap();
    assert!(closed(&mut idle).await);
    assert!(TcpStream::connect(server.addr).await.is_err());
    assert!(TcpStream::connect(server.admin_addr).await.is_err());
}
