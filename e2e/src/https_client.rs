//! A small HTTPS client for tests and benchmarks: HTTP/1.1 over rustls,
//! trusting one CA, as the sidecar and the apiserver reach ferry's servers.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::HarnessError;

/// A client for one HTTPS server.
#[derive(Clone)]
pub struct HttpsClient {
    addr: SocketAddr,
    tls: TlsConnector,
}

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsReply {
    /// The status code.
    pub status: u16,
    /// The headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpsReply {
    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, HarnessError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| HarnessError::Process(format!("reply is not JSON: {e}")))
    }
}

fn failed(what: &str, error: impl std::fmt::Display) -> HarnessError {
    HarnessError::Process(format!("{what}: {error}"))
}

impl HttpsClient {
    /// A client for `addr` (a loopback address; the certificate must name
    /// 127.0.0.1) trusting the PEM CA `ca_pem`.
    pub fn new(addr: SocketAddr, ca_pem: &str) -> Result<Self, HarnessError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(cert.map_err(|e| failed("CA PEM", e))?)
                .map_err(|e| failed("CA certificate", e))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| failed("TLS versions", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            addr,
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Opens a keep-alive connection.
    pub async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, HarnessError> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| failed("connecting", e))?;
        tcp.set_nodelay(true)
            .map_err(|e| failed("TCP_NODELAY", e))?;
        let name = ServerName::IpAddress(self.addr.ip().into());
        let stream = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| failed("TLS handshake", e))?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| failed("HTTP handshake", e))?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// Writes `request` (raw HTTP/1.1 bytes) on a fresh TLS connection and
    /// returns the status code of the reply; for requests a well-behaved
    /// client cannot send, such as a Content-Length over a server's limit
    /// without the body.
    pub async fn raw_status(&self, request: &[u8]) -> Result<u16, HarnessError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| failed("connecting", e))?;
        let name = ServerName::IpAddress(self.addr.ip().into());
        let mut stream = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| failed("TLS handshake", e))?;
        stream
            .write_all(request)
            .await
            .map_err(|e| failed("writing the request", e))?;
        let mut head = vec![0u8; 64];
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut head))
            .await
            .map_err(|_| failed("reading the reply", "timed out"))?
            .map_err(|e| failed("reading the reply", e))?;
        let head = String::from_utf8_lossy(&head[..read]);
        head.split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| failed("reading the reply", "no status line"))
    }

    /// Sends one request with `headers` on a fresh connection; a
    /// `content-type` among them replaces the JSON default (OAuth2
    /// endpoints take forms, see [`form_body`]).
    pub async fn request_with_headers(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<HttpsReply, HarnessError> {
        let mut sender = self.connect().await?;
        send_with_headers(
            &mut sender,
            method,
            path,
            headers,
            Bytes::copy_from_slice(body),
        )
        .await
    }

    /// Sends one request on a fresh connection.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: &[u8],
    ) -> Result<HttpsReply, HarnessError> {
        let mut sender = self.connect().await?;
        send(
            &mut sender,
            method,
            path,
            bearer,
            Bytes::copy_from_slice(body),
        )
        .await
    }
}

/// An `application/x-www-form-urlencoded` body of `pairs`.
pub fn form_body(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Sends one request on `sender`.
pub async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Bytes,
) -> Result<HttpsReply, HarnessError> {
    let authorization = bearer.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = authorization
        .as_deref()
        .map(|value| ("authorization", value))
        .into_iter()
        .collect();
    send_with_headers(sender, method, path, &headers, body).await
}

/// Sends one request with `headers` on `sender`; JSON unless they name
/// another `content-type`, to `Host: 127.0.0.1` unless they name another
/// `host` (a server that builds its own URLs from it needs the port).
pub async fn send_with_headers(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<HttpsReply, HarnessError> {
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("content-length", body.len());
    let given = |header: &str| {
        headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case(header))
    };
    if !given("host") {
        request = request.header("host", "127.0.0.1");
    }
    if !given("content-type") {
        request = request.header("content-type", "application/json");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(body))
        .map_err(|e| failed("building the request", e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| failed("sending the request", e))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| failed("reading the reply", e))?
        .to_bytes()
        .to_vec();
    Ok(HttpsReply {
        status,
        headers,
        body,
    })
}
