//! The broker's three calls over HTTPS (rustls on a std socket, one
//! connection per call, every step under one deadline), with the pod's
//! token re-read for each call and the leases' files decoded into wiped
//! buffers. Blocking: the caller decides which thread waits.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use zeroize::{Zeroize, Zeroizing};

use crate::config::BrokerUrl;
use crate::csr::{self, KeyAlgorithm, KeyAndCsr};
use crate::http1::{self, HttpError, Response};
use crate::names::check_file_name;
use crate::schedule;
use crate::volume::SecretFile;
use ferry_contract::wire::{
    ErrorResponse, KeyRequired, LEASES_PATH, Lease, LeaseRequest, LeasesResponse, RenewRequest,
    SecretRef, SecretRequest, WATCH_PATH, WatchRequest, WatchResponse,
};

/// A lease's `expiresAt` is kept (for logs) up to this many characters.
const MAX_EXPIRES_AT_CHARS: usize = 64;

/// Why the client cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The CA bundle holds no usable certificate.
    #[error("the broker CA bundle holds no usable certificate: {0}")]
    NoCertificate(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Why a call to the broker did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker refused the request (4xx other than 429): asking again
    /// the same way will not help.
    #[error("broker refused to {action} ({status}): {message}")]
    Refused {
        /// What was asked.
        action: String,
        /// The HTTP status.
        status: u16,
        /// The broker's message.
        message: String,
    },
    /// The broker is overloaded or its backend is down (429, 5xx).
    #[error("broker could not {action} ({status}): {message}")]
    Unavailable {
        /// What was asked.
        action: String,
        /// The HTTP status.
        status: u16,
        /// The broker's message.
        message: String,
        /// How long the broker asked to wait.
        retry_after: Option<Duration>,
    },
    /// No answer: DNS, connect, TLS, timeout or a malformed response.
    #[error("cannot reach the broker to {action}: {message}")]
    Transport {
        /// What was asked.
        action: String,
        /// What failed.
        message: String,
    },
    /// The token file could not be read.
    #[error("cannot read the pod's token {}: {message}", path.display())]
    Token {
        /// The token file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The broker asks for CSRs: these secrets are certificates.
    #[error("broker needs a CSR to {action} for {}", keys.iter().map(|k| format!("{}/{}", k.secret.namespace, k.secret.name)).collect::<Vec<_>>().join(", "))]
    KeysRequired {
        /// What was asked.
        action: String,
        /// The secrets and their key types.
        keys: Vec<KeyRequired>,
    },
    /// No key pair could be made here.
    #[error("cannot {action}: {message}")]
    Key {
        /// What was asked.
        action: String,
        /// What failed.
        message: String,
    },
    /// The broker answered 2xx with leases the sidecar cannot use.
    #[error("broker answered {action} with an unusable lease: {message}")]
    InvalidLease {
        /// What was asked.
        action: String,
        /// What is wrong with it.
        message: String,
    },
}

impl BrokerError {
    /// Whether repeating the same request cannot succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::Refused { .. } | Self::InvalidLease { .. } | Self::KeysRequired { .. }
        )
    }

    /// Whether retrying cannot help while the pod starts. Unlike
    /// [`Self::is_permanent`], 401, 403 and 404 are retried then: the
    /// broker's watches may trail a pod, Grant or BrokeredSecret created
    /// moments ago, and a restart by the kubelet would only add its
    /// back-off. The startup deadline still ends a refusal that lasts.
    pub fn is_permanent_at_start(&self) -> bool {
        match self {
            Self::Refused { status, .. } => !matches!(status, 401 | 403 | 404),
            other => other.is_permanent(),
        }
    }

    /// The HTTP status, if the broker answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Refused { status, .. } | Self::Unavailable { status, .. } => Some(*status),
            Self::KeysRequired { .. } => Some(422),
            _ => None,
        }
    }

    /// How long the broker asked to wait before the next try.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A lease whose files are decoded and checked, ready to write.
#[derive(Debug)]
pub struct IssuedLease {
    /// The lease id, for renewal and revocation.
    pub id: String,
    /// The secret it is for.
    pub secret: SecretRef,
    /// The decoded files. Secret: never logged.
    pub files: Vec<SecretFile>,
    /// Lifetime from issuance.
    pub ttl: Duration,
    /// When to renew, from issuance.
    pub renew_after: Duration,
    /// The broker's expiry time (RFC 3339), for logs; the sidecar times
    /// expiry from its own clock (`ttl` from when it asked).
    pub expires_at: String,
}

impl IssuedLease {
    /// The file names, for logs.
    pub fn file_names(&self) -> Vec<&str> {
        self.files.iter().map(|f| f.name.as_str()).collect()
    }
}

/// Trust for the broker: the PEM bundle given, or the system's roots.
pub fn tls_config(ca_pem: Option<&str>) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| TlsSetupError::NoCertificate(e.to_string()))?;
                roots.add(cert)?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                let errors: Vec<String> = native.errors.iter().map(|e| e.to_string()).collect();
                return Err(TlsSetupError::NoCertificate(format!(
                    "no system root certificates found ({}); set the broker CA",
                    errors.join("; ")
                )));
            }
        }
    }
    if roots.is_empty() {
        return Err(TlsSetupError::NoCertificate(
            "no PEM CERTIFICATE block".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The file a certificate lease's private key is written to, beside the
/// broker's `tls.crt` and `ca.crt`.
pub const PRIVATE_KEY_FILE: &str = "tls.key";

/// A blocking client for the broker's lease API.
#[derive(Clone)]
pub struct BrokerClient {
    url: BrokerUrl,
    tls: Arc<ClientConfig>,
    token_file: PathBuf,
    timeout: Duration,
    /// Certificate leases (by id) and their key type: each renewal sends
    /// a CSR for a new key of that type.
    certificates: Arc<Mutex<HashMap<String, KeyAlgorithm>>>,
}

impl BrokerClient {
    /// A client for the broker at `url`, trusting `tls`, presenting the
    /// token in `token_file`; each call takes at most `timeout`.
    pub fn new(
        url: BrokerUrl,
        tls: Arc<ClientConfig>,
        token_file: impl Into<PathBuf>,
        timeout: Duration,
    ) -> Self {
        Self {
            url,
            tls,
            token_file: token_file.into(),
            timeout,
            certificates: Arc::default(),
        }
    }

    /// `POST /v1/leases`: one lease per secret, in the same order, or none.
    /// When the broker answers that some are certificates, makes a key for
    /// each and asks once more with their CSRs; the keys join those leases'
    /// files and never leave the pod.
    pub fn issue(&self, secrets: &[SecretRef]) -> Result<Vec<IssuedLease>, BrokerError> {
        let action = format!("issue leases for {}", list(secrets));
        let mut keys: Vec<Option<(KeyAlgorithm, KeyAndCsr)>> =
            secrets.iter().map(|_| None).collect();
        let mut answered = self.post_leases(&action, secrets, &keys);
        if let Err(BrokerError::KeysRequired { keys: required, .. }) = &answered {
            for needed in required {
                let invalid = |message: String| BrokerError::InvalidLease {
                    action: action.clone(),
                    message,
                };
                let index = secrets
                    .iter()
                    .position(|secret| *secret == needed.secret)
                    .ok_or_else(|| invalid("asked for a key for a secret not requested".into()))?;
                let algorithm = KeyAlgorithm::from_name(&needed.algorithm).ok_or_else(|| {
                    invalid(format!(
                        "asked for an unknown key type {:?}",
                        needed.algorithm
                    ))
                })?;
                keys[index] = Some((algorithm, self.make_key(&action, algorithm)?));
            }
            answered = self.post_leases(&action, secrets, &keys);
        }
        let leases = answered?;
        if leases.len() != secrets.len() || leases.iter().zip(secrets).any(|(l, s)| &l.secret != s)
        {
            return Err(BrokerError::InvalidLease {
                action,
                message: format!(
                    "asked for {}, got leases for {}",
                    list(secrets),
                    list(&leases.iter().map(|l| l.secret.clone()).collect::<Vec<_>>())
                ),
            });
        }
        leases
            .into_iter()
            .zip(keys)
            .map(|(lease, key)| {
                let mut issued = decode_lease(&action, lease)?;
                if let Some((algorithm, made)) = key {
                    self.attach_key(&action, &mut issued, algorithm, made)?;
                }
                Ok(issued)
            })
            .collect()
    }

    fn post_leases(
        &self,
        action: &str,
        secrets: &[SecretRef],
        keys: &[Option<(KeyAlgorithm, KeyAndCsr)>],
    ) -> Result<Vec<Lease>, BrokerError> {
        let request = LeaseRequest {
            secrets: secrets
                .iter()
                .zip(keys)
                .map(|(s, key)| SecretRequest {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    ttl: None,
                    audience: None,
                    scopes: None,
                    csr: key.as_ref().map(|(_, made)| BASE64.encode(&made.csr_der)),
                })
                .collect(),
        };
        let body = serde_json::to_vec(&request).map_err(|e| BrokerError::Transport {
            action: action.to_owned(),
            message: e.to_string(),
        })?;
        let path = format!("{}{LEASES_PATH}", self.url.path_prefix);
        let response = self.call(action, "POST", &path, Some(&body), self.timeout)?;
        parse_leases(action, &response.body)
    }

    fn make_key(&self, action: &str, algorithm: KeyAlgorithm) -> Result<KeyAndCsr, BrokerError> {
        csr::generate(algorithm).map_err(|error| BrokerError::Key {
            action: action.to_owned(),
            message: error.to_string(),
        })
    }

    /// Adds the private key to a certificate lease's files and remembers
    /// the lease as a certificate.
    fn attach_key(
        &self,
        action: &str,
        issued: &mut IssuedLease,
        algorithm: KeyAlgorithm,
        made: KeyAndCsr,
    ) -> Result<(), BrokerError> {
        if issued
            .files
            .iter()
            .any(|file| file.name == PRIVATE_KEY_FILE)
        {
            return Err(BrokerError::InvalidLease {
                action: action.to_owned(),
                message: format!("lease {} brings its own {PRIVATE_KEY_FILE}", issued.id),
            });
        }
        issued.files.push(SecretFile {
            name: PRIVATE_KEY_FILE.to_owned(),
            content: Zeroizing::new(made.key_pem.as_bytes().to_vec()),
        });
        self.certificates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(issued.id.clone(), algorithm);
        Ok(())
    }

    /// `POST /v1/leases/{id}/renew`: the renewed lease, maybe with new files.
    /// A certificate's renewal sends a CSR for a new key.
    pub fn renew(&self, lease_id: &str) -> Result<IssuedLease, BrokerError> {
        let action = format!("renew lease {lease_id}");
        let path = format!(
            "{}{LEASES_PATH}/{}/renew",
            self.url.path_prefix,
            percent_encode(lease_id)
        );
        let algorithm = self
            .certificates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(lease_id)
            .copied();
        let made = algorithm
            .map(|algorithm| self.make_key(&action, algorithm))
            .transpose()?;
        let request = RenewRequest {
            csr: made.as_ref().map(|made| BASE64.encode(&made.csr_der)),
        };
        let body = serde_json::to_vec(&request).map_err(|e| BrokerError::Transport {
            action: action.clone(),
            message: e.to_string(),
        })?;
        let response = self.call(&action, "POST", &path, Some(&body), self.timeout)?;
        let mut leases = parse_leases(&action, &response.body)?;
        if leases.len() != 1 {
            return Err(BrokerError::InvalidLease {
                action,
                message: format!("{} leases instead of one", leases.len()),
            });
        }
        let lease = leases.remove(0);
        let mut issued = decode_lease(&action, lease)?;
        if let (Some(algorithm), Some(made)) = (algorithm, made) {
            self.attach_key(&action, &mut issued, algorithm, made)?;
            self.forget_certificate(lease_id);
        }
        Ok(issued)
    }

    /// `POST /v1/leases/watch`: the broker holds the request until one of
    /// the leases `lease_ids` is revoked or `wait` passes; the secrets
    /// revoked (none when the wait ended).
    pub fn watch(
        &self,
        lease_ids: &[String],
        wait: Duration,
    ) -> Result<Vec<SecretRef>, BrokerError> {
        let action = "watch for revocations".to_owned();
        let path = format!("{}{WATCH_PATH}", self.url.path_prefix);
        let request = WatchRequest {
            leases: lease_ids.to_vec(),
            wait_seconds: Some(wait.as_secs()),
        };
        let body = serde_json::to_vec(&request).map_err(|e| BrokerError::Transport {
            action: action.clone(),
            message: e.to_string(),
        })?;
        let response = self.call(&action, "POST", &path, Some(&body), wait + self.timeout)?;
        let answer: WatchResponse =
            serde_json::from_slice(&response.body).map_err(|e| BrokerError::InvalidLease {
                action,
                message: format!("not a watch answer: {e}"),
            })?;
        Ok(answer.revoked)
    }

    fn forget_certificate(&self, lease_id: &str) {
        self.certificates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(lease_id);
    }

    /// `DELETE /v1/leases/{id}`, taking at most `timeout`.
    pub fn revoke(&self, lease_id: &str, timeout: Duration) -> Result<(), BrokerError> {
        let action = format!("revoke lease {lease_id}");
        let path = format!(
            "{}{LEASES_PATH}/{}",
            self.url.path_prefix,
            percent_encode(lease_id)
        );
        self.call(&action, "DELETE", &path, None, timeout.min(self.timeout))?;
        self.forget_certificate(lease_id);
        Ok(())
    }

    fn read_token(&self) -> Result<Zeroizing<Vec<u8>>, BrokerError> {
        let token_error = |message: String| BrokerError::Token {
            path: self.token_file.clone(),
            message,
        };
        let mut raw = Zeroizing::new(Vec::with_capacity(4096));
        std::fs::File::open(&self.token_file)
            .and_then(|mut file| file.read_to_end(&mut raw))
            .map_err(|e| token_error(e.to_string()))?;
        let token = Zeroizing::new(raw.trim_ascii().to_vec());
        if token.is_empty() {
            return Err(token_error("the file is empty".into()));
        }
        if token.iter().any(|b| b.is_ascii_control() || *b == b' ') {
            return Err(token_error(
                "the token has whitespace or control characters".into(),
            ));
        }
        Ok(token)
    }

    fn call(
        &self,
        action: &str,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Response, BrokerError> {
        let deadline = Instant::now() + timeout;
        let token = self.read_token()?;
        let request = http1::encode_request(method, path, &self.url.host_header(), &token, body);
        drop(token);
        let transport = |message: String| BrokerError::Transport {
            action: action.into(),
            message,
        };
        let tcp = connect(&self.url, deadline).map_err(|e| transport(e.to_string()))?;
        let server_name = ServerName::try_from(self.url.host.clone())
            .map_err(|e| transport(format!("{:?}: {e}", self.url.host)))?;
        let tls = ClientConnection::new(Arc::clone(&self.tls), server_name)
            .map_err(|e| transport(e.to_string()))?;
        let mut stream = StreamOwned::new(tls, DeadlineStream { tcp, deadline });
        let response = http1::exchange(&mut stream, &request).map_err(|e| match e {
            HttpError::Io(io) if io.kind() == io::ErrorKind::TimedOut => {
                transport(format!("no answer within {timeout:?}"))
            }
            other => transport(other.to_string()),
        })?;
        match response.status {
            200..=299 => Ok(response),
            422 if !keys_required(&response.body).is_empty() => Err(BrokerError::KeysRequired {
                action: action.into(),
                keys: keys_required(&response.body),
            }),
            status => {
                let message = error_message(&response.body);
                // 501: the broker does not serve this source at all;
                // asking again cannot help, unlike 503.
                if status == 429 || (status >= 500 && status != 501) {
                    Err(BrokerError::Unavailable {
                        action: action.into(),
                        status,
                        message,
                        retry_after: response.retry_after,
                    })
                } else {
                    Err(BrokerError::Refused {
                        action: action.into(),
                        status,
                        message,
                    })
                }
            }
        }
    }
}

/// Connects to the first address of `url` that answers before `deadline`.
fn connect(url: &BrokerUrl, deadline: Instant) -> io::Result<TcpStream> {
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} has no address", url.host),
    );
    for address in (url.host.as_str(), url.port).to_socket_addrs()? {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
        }
        match TcpStream::connect_timeout(&address, remaining) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(error) => last = io::Error::new(error.kind(), format!("{address}: {error}")),
        }
    }
    Err(last)
}

/// A socket whose every read and write ends by one deadline.
struct DeadlineStream {
    tcp: TcpStream,
    deadline: Instant,
}

impl DeadlineStream {
    fn remaining(&self) -> io::Result<Duration> {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"))
        } else {
            Ok(remaining)
        }
    }
}

/// Socket timeouts report `WouldBlock` on Linux; callers see `TimedOut`.
fn timed_out(error: io::Error) -> io::Error {
    if error.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(io::ErrorKind::TimedOut, "deadline passed")
    } else {
        error
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.set_read_timeout(Some(self.remaining()?))?;
        self.tcp.read(buf).map_err(timed_out)
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.set_write_timeout(Some(self.remaining()?))?;
        self.tcp.write(buf).map_err(timed_out)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// Parses a 2xx answer's body as leases; `action` names the call in errors.
pub fn parse_leases(action: &str, body: &[u8]) -> Result<Vec<Lease>, BrokerError> {
    serde_json::from_slice::<LeasesResponse>(body)
        .map(|response| response.leases)
        .map_err(|e| BrokerError::Transport {
            action: action.into(),
            // Not serde_json's message: it may quote a value, a secret's.
            message: format!(
                "not a leases response ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
        })
}

/// Decodes a lease's files into wiped buffers and wipes the base64 text;
/// checks its file names and clamps its durations.
pub fn decode_lease(action: &str, mut lease: Lease) -> Result<IssuedLease, BrokerError> {
    let invalid = |message: String| BrokerError::InvalidLease {
        action: action.into(),
        message,
    };
    let mut files = Vec::with_capacity(lease.files.len());
    let mut failure = None;
    for (name, encoded) in &mut lease.files {
        if failure.is_none() {
            if let Err(error) = check_file_name(name) {
                failure = Some(format!("lease {} file name: {error}", lease.id));
            } else {
                let mut content = Zeroizing::new(Vec::with_capacity(encoded.len() / 4 * 3 + 3));
                match BASE64.decode_vec(encoded.as_bytes(), &mut content) {
                    Ok(()) => files.push(SecretFile {
                        name: name.clone(),
                        content,
                    }),
                    Err(_) => {
                        failure = Some(format!("lease {} file {name:?} is not base64", lease.id))
                    }
                }
            }
        }
        encoded.zeroize();
    }
    if let Some(message) = failure {
        return Err(invalid(message));
    }
    if files.is_empty() {
        return Err(invalid(format!("lease {} has no files", lease.id)));
    }
    let (ttl, renew_after) = schedule::lease_times(lease.ttl, lease.renew_after)
        .map_err(|reason| invalid(format!("lease {} has {reason}", lease.id)))?;
    // Only logged; a broker's odd string must not make a huge log line.
    let expires_at = lease
        .expires_at
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_EXPIRES_AT_CHARS)
        .collect();
    Ok(IssuedLease {
        id: lease.id,
        secret: lease.secret,
        files,
        ttl,
        renew_after,
        expires_at,
    })
}

/// The broker's error message, or the start of the body if it is not the
/// broker's JSON (a proxy's page, say).
fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorResponse>(body) {
        Ok(error) => error.error.message,
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
            if text.is_empty() {
                "no message".into()
            } else {
                text
            }
        }
    }
}

/// The secrets a 422 answer asks CSRs for (at most as many as a request
/// may name).
fn keys_required(body: &[u8]) -> Vec<KeyRequired> {
    serde_json::from_slice::<ErrorResponse>(body)
        .map(|error| error.error.keys_required)
        .unwrap_or_default()
        .into_iter()
        .take(64)
        .collect()
}

/// `namespace/name, ...` for messages.
fn list(secrets: &[SecretRef]) -> String {
    secrets
        .iter()
        .map(|s| format!("{}/{}", s.namespace, s.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Escapes everything but RFC 3986 unreserved characters, for a lease id in
/// a path (ids are base64url with dots, so this normally changes nothing).
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn lease(files: &[(&str, &str)]) -> Lease {
        Lease {
            id: "lease-1".into(),
            secret: SecretRef {
                namespace: "payments".into(),
                name: "orders-db".into(),
            },
            files: files
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            ttl: 900,
            renew_after: 600,
            expires_at: "2026-11-23T13:00:00Z".into(),
        }
    }

    #[test]
    fn refusals_a_just_created_pod_may_meet_are_retried_while_starting() {
        let refused = |status| BrokerError::Refused {
            action: "issue".into(),
            status,
            message: "m".into(),
        };
        for status in [401, 403, 404] {
            assert!(refused(status).is_permanent(), "{status}");
            assert!(!refused(status).is_permanent_at_start(), "{status}");
        }
        for status in [400, 409, 413, 501] {
            assert!(refused(status).is_permanent_at_start(), "{status}");
        }
    }

    #[test]
    fn lease_files_are_decoded_from_base64() {
        let issued = decode_lease("x", lease(&[("password", "czNjcmV0")])).unwrap();
        assert_eq!(issued.files[0].content.as_slice(), b"s3cret");
        assert_eq!(issued.ttl, Duration::from_secs(900));
        assert_eq!(issued.file_names(), vec!["password"]);
        assert!(!format!("{issued:?}").contains("s3cret"));
    }

    #[test]
    fn leases_with_escaping_names_or_bad_base64_are_refused() {
        for files in [vec![("../x", "YQ==")], vec![("ok", "not base64!")], vec![]] {
            let error = decode_lease("x", lease(&files)).unwrap_err();
            assert!(error.is_permanent(), "{error}");
            assert!(!error.to_string().contains("not base64!"), "{error}");
        }
    }

    #[test]
    fn absurd_durations_from_the_broker_are_clamped_or_refused() {
        let with = |ttl: u64, renew_after: u64| Lease {
            ttl,
            renew_after,
            ..lease(&[("password", "czNjcmV0")])
        };
        let issued = decode_lease("x", with(i64::MAX as u64, u64::MAX)).unwrap();
        assert_eq!(issued.ttl, schedule::MAX_LEASE_TTL);
        assert_eq!(issued.renew_after, schedule::MAX_LEASE_TTL);
        let issued = decode_lease("x", with(900, u64::MAX)).unwrap();
        assert_eq!(issued.renew_after, Duration::from_secs(900));
        let error = decode_lease("x", with(0, 0)).unwrap_err();
        assert!(error.is_permanent(), "{error}");
        assert!(error.to_string().contains("ttl of 0"), "{error}");
        // Negative numbers are not a leases response at all.
        let body = br#"{"leases":[{"id":"l","secret":{"namespace":"a","name":"b"},"files":{"f":"YQ=="},"ttl":-1,"renewAfter":-5,"expiresAt":"x"}]}"#;
        assert!(parse_leases("x", body).is_err());
        let long = Lease {
            expires_at: "9".repeat(100_000),
            ..with(900, 600)
        };
        assert_eq!(
            decode_lease("x", long).unwrap().expires_at.len(),
            MAX_EXPIRES_AT_CHARS
        );
    }

    #[test]
    fn broker_errors_carry_its_message() {
        assert_eq!(
            error_message(br#"{"error":{"code":403,"message":"no grant for sa"}}"#),
            "no grant for sa"
        );
        assert_eq!(error_message(b"<html>\nbad gateway"), "<html>bad gateway");
        assert_eq!(error_message(b""), "no message");
    }

    #[test]
    fn lease_ids_are_escaped_in_paths() {
        assert_eq!(percent_encode("abc-_.~XYZ09"), "abc-_.~XYZ09");
        assert_eq!(percent_encode("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn a_bundle_without_certificates_is_refused() {
        assert!(matches!(
            tls_config(Some("not pem")),
            Err(TlsSetupError::NoCertificate(_))
        ));
    }
}
