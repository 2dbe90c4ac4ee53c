//! The one request the broker makes of an authorization server: a form
//! POST over verified TLS, one connection each, bounded in time and in the
//! size of what comes back. Only `https://` endpoints are reached.
//!
//! Nothing here logs or echoes what it sends or receives: the form holds
//! client secrets and refresh tokens, the answer access tokens.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

use crate::providers::ProviderError;

/// How long one request may take, connection and TLS included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The most bytes of an answer read; a token response is a few hundred.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The longest `Retry-After` honoured; a longer one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// An `https://` endpoint, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL as written, for messages (it holds no secret).
    url: String,
    host: String,
    port: u16,
    path_and_query: String,
}

impl Endpoint {
    /// `url` if it is an `https://` URL with a host; `field` names it in
    /// the error.
    pub fn parse(url: &str, field: &str) -> Result<Self, ProviderError> {
        let invalid = |why: &str| ProviderError::Invalid(format!("{field} {url:?}: {why}"));
        let uri: http::Uri = url.parse().map_err(|_| invalid("not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(invalid("must be an https:// URL"));
        }
        let authority = uri.authority().ok_or_else(|| invalid("has no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("must not carry a user name or password"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(invalid("has no host"));
        }
        Ok(Self {
            url: url.to_owned(),
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(443),
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }

    /// The URL as written.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// What came back.
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// `Retry-After`, in seconds (the date form is not honoured), capped.
    pub retry_after: Option<Duration>,
    /// The body, wiped when dropped (it may hold tokens).
    pub body: Zeroizing<Vec<u8>>,
}

/// How the client authenticates with HTTP Basic, if it does: the
/// `Authorization` header's value.
pub fn basic_authorization(client_id: &str, client_secret: &[u8]) -> Zeroizing<String> {
    // RFC 6749 section 2.3.1: both are form-encoded before Basic.
    let mut credentials = Zeroizing::new(form_encode(client_id.as_bytes()));
    credentials.push(':');
    credentials.push_str(&form_encode(client_secret));
    Zeroizing::new(format!("Basic {}", BASE64.encode(credentials.as_bytes())))
}

/// `application/x-www-form-urlencoded` for one value.
pub fn form_encode(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for &byte in value {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'*') {
            out.push(char::from(byte));
        } else if byte == b' ' {
            out.push('+');
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A form body under construction, wiped when dropped.
#[derive(Default)]
pub struct Form(Zeroizing<String>);

impl Form {
    /// Appends `name=value`.
    pub fn add(&mut self, name: &str, value: &[u8]) -> &mut Self {
        if !self.0.is_empty() {
            self.0.push('&');
        }
        self.0.push_str(&form_encode(name.as_bytes()));
        self.0.push('=');
        self.0.push_str(&Zeroizing::new(form_encode(value)));
        self
    }
}

/// POSTs `form` to `endpoint` over TLS verified by `tls`.
pub async fn post_form(
    tls: Arc<ClientConfig>,
    endpoint: &Endpoint,
    form: Form,
    authorization: Option<Zeroizing<String>>,
) -> Result<Reply, ProviderError> {
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        post_form_unbounded(tls, endpoint, form, authorization),
    )
    .await
    .map_err(|_| {
        ProviderError::Unavailable(format!(
            "{} did not answer within {REQUEST_TIMEOUT:?}",
            endpoint.url
        ))
    })?
}

async fn post_form_unbounded(
    tls: Arc<ClientConfig>,
    endpoint: &Endpoint,
    form: Form,
    authorization: Option<Zeroizing<String>>,
) -> Result<Reply, ProviderError> {
    let unavailable = |what: &str| ProviderError::Unavailable(format!("{}: {what}", endpoint.url));
    let server_name = ServerName::try_from(endpoint.host.clone())
        .map_err(|_| ProviderError::Invalid(format!("{}: not a valid host name", endpoint.url)))?;
    let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|error| unavailable(&format!("cannot connect: {}", error.kind())))?;
    let stream = TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .map_err(|error| unavailable(&format!("TLS handshake failed: {error}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| unavailable(&format!("HTTP handshake failed: {error}")))?;
    let driver = tokio::spawn(async move {
        // Its error shows as the request's.
        let _ = connection.await;
    });
    let host = if endpoint.port == 443 {
        endpoint.host.clone()
    } else {
        format!("{}:{}", endpoint.host, endpoint.port)
    };
    let mut request = hyper::Request::post(endpoint.path_and_query.as_str())
        .header(http::header::HOST, host)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json");
    if let Some(authorization) = &authorization {
        request = request.header(http::header::AUTHORIZATION, authorization.as_str());
    }
    // The body is copied into the request; the form is wiped when dropped.
    let body = Full::new(Bytes::copy_from_slice(form.0.as_bytes()));
    let request = request
        .body(body)
        .map_err(|_| ProviderError::Invalid(format!("{}: not a valid request", endpoint.url)))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| unavailable(&format!("request failed: {error}")));
    let response = match response {
        Ok(response) => response,
        Err(error) => {
            driver.abort();
            return Err(error);
        }
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(|seconds| Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
    let collected = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await;
    driver.abort();
    let body = collected
        .map_err(|_| {
            unavailable(&format!(
                "the answer was cut off or longer than {MAX_RESPONSE_BYTES} bytes"
            ))
        })?
        .to_bytes();
    Ok(Reply {
        status,
        retry_after,
        body: Zeroizing::new(body.to_vec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_urls_with_a_host_are_endpoints() {
        let endpoint =
            Endpoint::parse("https://auth.example:8443/oauth2/token?x=1", "tokenUrl").unwrap();
        assert_eq!(
            (
                endpoint.host.as_str(),
                endpoint.port,
                endpoint.path_and_query.as_str()
            ),
            ("auth.example", 8443, "/oauth2/token?x=1")
        );
        assert_eq!(
            Endpoint::parse("https://auth.example", "t").unwrap().port,
            443
        );
        for (url, why) in [
            ("http://auth.example/token", "must be an https:// URL"),
            ("ftp://auth.example/token", "must be an https:// URL"),
            ("/token", "must be an https:// URL"),
            (
                "https://user:pw@auth.example/token",
                "must not carry a user name",
            ),
            ("not a url", "not a URL"),
        ] {
            let error = Endpoint::parse(url, "tokenUrl").unwrap_err().to_string();
            assert!(error.contains(why), "{url}: {error}");
            assert!(error.starts_with("tokenUrl"), "{error}");
        }
    }

    #[test]
    fn form_values_are_encoded_and_basic_credentials_form_encoded_first() {
        let mut form = Form::default();
        form.add("grant_type", b"client_credentials")
            .add("scope", b"read write:all");
        assert_eq!(
            form.0.as_str(),
            "grant_type=client_credentials&scope=read+write%3Aall"
        );
        // RFC 6749 2.3.1: "a b:c" is form-encoded, then Basic-encoded.
        let header = basic_authorization("app", b"a b:c");
        let decoded = BASE64.decode(header.trim_start_matches("Basic ")).unwrap();
        assert_eq!(decoded, b"app:a+b%3Ac");
    }
}
