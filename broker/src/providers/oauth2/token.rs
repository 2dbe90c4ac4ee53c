//! Token requests and what comes back: the form a grant sends, the
//! client's authentication (Basic, form, or an RFC 7523 assertion), and
//! the token response read strictly (RFC 6749 section 5). Errors name the
//! endpoint, the status and the server's error code, never a value.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject as _;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::upstream::{Endpoint, Form, Reply, basic_authorization};
use crate::providers::ProviderError;
use ferry_api::resources::ClientAuthentication;

/// The longest access token accepted (Hydra's are ~90 bytes, JWTs a few
/// KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The longest lifetime believed: a server saying more is cut to this.
pub const MAX_EXPIRES_IN: i64 = 24 * 3600;

/// How long a client assertion is valid.
const ASSERTION_LIFETIME: i64 = 60;

/// The client's credentials, as read from its Secret.
pub struct Client<'a> {
    /// How it authenticates.
    pub authentication: ClientAuthentication,
    /// `client_id`.
    pub id: &'a str,
    /// `client_secret`, or the PKCS #8 PEM `private_key`.
    pub secret: &'a [u8],
    /// `key_id`, the assertion's `kid`.
    pub key_id: Option<&'a str>,
}

/// Adds the client's authentication to `form`, and returns the
/// `Authorization` header when it goes there.
pub fn authenticate(
    client: &Client<'_>,
    endpoint: &Endpoint,
    form: &mut Form,
    now: i64,
) -> Result<Option<Zeroizing<String>>, ProviderError> {
    match client.authentication {
        ClientAuthentication::ClientSecretBasic => {
            Ok(Some(basic_authorization(client.id, client.secret)))
        }
        ClientAuthentication::ClientSecretPost => {
            form.add("client_id", client.id.as_bytes())
                .add("client_secret", client.secret);
            Ok(None)
        }
        ClientAuthentication::PrivateKeyJwt => {
            let assertion = client_assertion(client, endpoint.url(), now)?;
            form.add("client_id", client.id.as_bytes())
                .add(
                    "client_assertion_type",
                    b"urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                )
                .add("client_assertion", assertion.as_bytes());
            Ok(None)
        }
    }
}

/// An RFC 7523 client assertion for `audience` (the token endpoint),
/// signed ES256 with the client's key.
fn client_assertion(
    client: &Client<'_>,
    audience: &str,
    now: i64,
) -> Result<Zeroizing<String>, ProviderError> {
    let invalid = |why: &str| ProviderError::Invalid(format!("private_key: {why}"));
    let der = PrivateKeyDer::from_pem_slice(client.secret)
        .map_err(|_| invalid("not a PEM private key"))?;
    let PrivateKeyDer::Pkcs8(pkcs8) = der else {
        return Err(invalid("not a PKCS #8 key (BEGIN PRIVATE KEY)"));
    };
    let random = SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.secret_pkcs8_der(),
        &random,
    )
    .map_err(|_| invalid("not an ECDSA P-256 key (privateKeyJwt signs ES256)"))?;
    let mut jti = [0u8; 16];
    random.fill(&mut jti).map_err(|_| {
        ProviderError::Unavailable("the system's random number generator failed".into())
    })?;
    let mut header = serde_json::json!({"alg": "ES256", "typ": "JWT"});
    if let Some(kid) = client.key_id {
        header["kid"] = kid.into();
    }
    let claims = serde_json::json!({
        "iss": client.id,
        "sub": client.id,
        "aud": audience,
        "jti": BASE64URL.encode(jti),
        "iat": now,
        "exp": now + ASSERTION_LIFETIME,
    });
    let signing_input = format!(
        "{}.{}",
        BASE64URL.encode(header.to_string()),
        BASE64URL.encode(claims.to_string())
    );
    let signature = key
        .sign(&random, signing_input.as_bytes())
        .map_err(|_| ProviderError::Unavailable("signing the client assertion failed".into()))?;
    Ok(Zeroizing::new(format!(
        "{signing_input}.{}",
        BASE64URL.encode(signature.as_ref())
    )))
}

/// An access token as the server issued it.
pub struct Token {
    /// The token.
    pub access_token: Zeroizing<String>,
    /// `Bearer`, usually.
    pub token_type: String,
    /// When it was issued (asked for), in Unix seconds.
    pub issued_at: i64,
    /// When it expires, in Unix seconds.
    pub expires_at: i64,
    /// The scopes granted, when the server says (else those asked).
    pub scope: Option<String>,
    /// A new refresh token, when the server rotates it.
    pub refresh_token: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Why the server did not issue: it refused (the request or the client is
/// wrong: fix the BrokeredSecret or its Secret) or it is unavailable
/// (retry, after `retry_after` when it said).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// 4xx but 429: the credentials, grant or scopes are wrong.
    Request(ProviderError),
    /// 429 or 5xx, or no answer: retry later.
    Unavailable {
        /// What happened.
        error: ProviderError,
        /// How long the server asked to wait.
        retry_after: Option<std::time::Duration>,
    },
}

impl Refused {
    /// The error a pod is told.
    pub fn error(&self) -> &ProviderError {
        match self {
            Self::Request(error) | Self::Unavailable { error, .. } => error,
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Number>,
    scope: Option<String>,
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: Option<String>,
}

/// Reads the server's answer to a token request made at `now`.
pub fn read_token_reply(endpoint: &Endpoint, reply: &Reply, now: i64) -> Result<Token, Refused> {
    let url = endpoint.url();
    match reply.status {
        200 => {}
        429 | 500..=599 => {
            return Err(Refused::Unavailable {
                error: ProviderError::Unavailable(format!(
                    "token endpoint {url} answered {}{}",
                    reply.status,
                    error_code(&reply.body)
                )),
                retry_after: reply.retry_after,
            });
        }
        status => {
            return Err(Refused::Request(ProviderError::Invalid(format!(
                "token endpoint {url} refused the request: {status}{}",
                error_code(&reply.body)
            ))));
        }
    }
    let malformed = |why: &str| {
        Refused::Request(ProviderError::Invalid(format!(
            "token endpoint {url} answered 200 with {why}"
        )))
    };
    // Parsed as a whole; a copy of the token is wiped when dropped.
    let response: TokenResponse = serde_json::from_slice(&reply.body)
        .map_err(|_| malformed("a body that is not a JSON token response"))?;
    let access_token = Zeroizing::new(
        response
            .access_token
            .filter(|token| !token.is_empty())
            .ok_or_else(|| malformed("no access_token"))?,
    );
    if access_token.len() > MAX_TOKEN_BYTES || !access_token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(malformed(
            "an access_token that is too long or not printable ASCII",
        ));
    }
    let token_type = response
        .token_type
        .filter(|t| is_token_word(t))
        .ok_or_else(|| malformed("no token_type (or one that is not a plain word)"))?;
    let expires_in = response
        .expires_in
        .and_then(|n| n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)))
        .ok_or_else(|| {
            malformed("no expires_in: ferry needs to know when a token expires to renew it")
        })?;
    if expires_in <= 0 {
        return Err(malformed("an expires_in that is not positive"));
    }
    let scope = response.scope.filter(|scope| {
        scope.len() <= 4096 && scope.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
    });
    Ok(Token {
        access_token,
        token_type,
        issued_at: now,
        expires_at: now + expires_in.min(MAX_EXPIRES_IN),
        scope,
        refresh_token: response
            .refresh_token
            .filter(|token| !token.is_empty())
            .map(Zeroizing::new),
    })
}

/// `, <error code>` when the body is an RFC 6749 error response with a
/// well-formed code; never the description (servers echo input there).
fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorResponse>(body)
        .ok()
        .and_then(|response| response.error)
        .filter(|code| {
            !code.is_empty()
                && code.len() <= 64
                && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        })
        .map(|code| format!(" {code}"))
        .unwrap_or_default()
}

fn is_token_word(word: &str) -> bool {
    !word.is_empty()
        && word.len() <= 32
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        Endpoint::parse("https://auth.example/oauth2/token", "tokenUrl").unwrap()
    }

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            retry_after: None,
            body: Zeroizing::new(body.as_bytes().to_vec()),
        }
    }

    #[test]
    fn a_token_response_gives_the_token_and_when_it_expires() {
        let token = read_token_reply(
            &endpoint(),
            &reply(
                200,
                r#"{"access_token":"at-1","token_type":"bearer","expires_in":3599,"scope":"read","refresh_token":"rt-2"}"#,
            ),
            1000,
        )
        .unwrap();
        assert_eq!(token.access_token.as_str(), "at-1");
        assert_eq!(token.token_type, "bearer");
        assert_eq!(token.expires_at, 4599);
        assert_eq!(token.scope.as_deref(), Some("read"));
        assert_eq!(
            token.refresh_token.as_deref().map(String::as_str),
            Some("rt-2")
        );
    }

    #[test]
    fn malformed_answers_are_refused_without_echoing_them() {
        for (body, why) in [
            ("not json ory_at_planted", "not a JSON token response"),
            (
                r#"{"token_type":"bearer","expires_in":60}"#,
                "no access_token",
            ),
            (
                r#"{"access_token":"ory_at_planted","token_type":"bearer"}"#,
                "no expires_in",
            ),
            (
                r#"{"access_token":"ory_at_planted","expires_in":60}"#,
                "no token_type",
            ),
            (
                r#"{"access_token":"ory_at_planted","token_type":"bearer","expires_in":-5}"#,
                "not positive",
            ),
            (
                r#"{"access_token":"ory_at planted\n","token_type":"bearer","expires_in":60}"#,
                "not printable ASCII",
            ),
        ] {
            let Err(Refused::Request(error)) = read_token_reply(&endpoint(), &reply(200, body), 0)
            else {
                panic!("{body} was accepted or called unavailable");
            };
            let message = error.to_string();
            assert!(message.contains(why), "{body}: {message}");
            assert!(!message.contains("planted"), "{message}");
        }
    }

    #[test]
    fn refusals_name_the_status_and_error_code_never_the_description() {
        let Err(Refused::Request(error)) = read_token_reply(
            &endpoint(),
            &reply(
                401,
                r#"{"error":"invalid_client","error_description":"secret s3cret-planted is wrong"}"#,
            ),
            0,
        ) else {
            panic!("a 401 was not a refusal");
        };
        assert_eq!(
            error.to_string(),
            "token endpoint https://auth.example/oauth2/token refused the request: 401 invalid_client"
        );
        let Err(Refused::Request(error)) =
            read_token_reply(&endpoint(), &reply(400, r#"{"error":"Planted Value"}"#), 0)
        else {
            panic!("a 400 was not a refusal");
        };
        assert!(!error.to_string().contains("Planted"));
    }

    #[test]
    fn too_many_requests_and_server_errors_are_unavailable_with_retry_after() {
        let mut busy = reply(429, "");
        busy.retry_after = Some(std::time::Duration::from_secs(7));
        let Err(Refused::Unavailable { retry_after, .. }) = read_token_reply(&endpoint(), &busy, 0)
        else {
            panic!("429 was not unavailable");
        };
        assert_eq!(retry_after, Some(std::time::Duration::from_secs(7)));
        assert!(matches!(
            read_token_reply(&endpoint(), &reply(503, "down"), 0),
            Err(Refused::Unavailable {
                retry_after: None,
                ..
            })
        ));
    }

    #[test]
    fn a_client_assertion_is_an_es256_jwt_for_the_token_endpoint() {
        let random = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &random).unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref())
        );
        let client = Client {
            authentication: ClientAuthentication::PrivateKeyJwt,
            id: "app",
            secret: pem.as_bytes(),
            key_id: Some("k1"),
        };
        let assertion =
            client_assertion(&client, "https://auth.example/oauth2/token", 100).unwrap();
        let parts: Vec<&str> = assertion.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&BASE64URL.decode(parts[0]).unwrap()).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&BASE64URL.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], "k1");
        assert_eq!(claims["iss"], "app");
        assert_eq!(claims["sub"], "app");
        assert_eq!(claims["aud"], "https://auth.example/oauth2/token");
        assert_eq!(claims["exp"], 160);
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &random)
                .unwrap();
        use ring::signature::KeyPair as _;
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            key.public_key().as_ref(),
        );
        let signed = format!("{}.{}", parts[0], parts[1]);
        public
            .verify(signed.as_bytes(), &BASE64URL.decode(parts[2]).unwrap())
            .expect("the signature verifies");

        let wrong = Client {
            secret: b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            ..client
        };
        let error = client_assertion(&wrong, "aud", 0).unwrap_err().to_string();
        assert!(error.starts_with("private_key: "), "{error}");
    }
}
