//! `ferry-operator oauth2-consent`: a person consents once, and the
//! broker holds the result. For an `oauth2` BrokeredSecret with grant
//! `RefreshToken`, this runs the authorization-code flow with PKCE (RFC
//! 7636) as a native app does (RFC 8252): it listens on a loopback port,
//! prints the authorization URL for the person to open, takes the code the
//! server redirects back with, exchanges it (authenticating as the client
//! from the credentials Secret), and stores the refresh token into that
//! Secret's `refresh_token` key. Neither the code nor any token is printed.
//!
//! The person running it needs `get` on the BrokeredSecret and `get` and
//! `update` on its credentials Secret: their own team's objects.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use zeroize::Zeroizing;

use crate::providers::ProviderError;
use crate::providers::oauth2::token::{self, Refused};
use crate::providers::oauth2::upstream::{self, Endpoint, Form, form_encode};
use crate::providers::oauth2::{client_of, tls_for};
use crate::providers::secret_reader::files_of;
use ferry_api::checks::oauth2_keys;
use ferry_api::resources::{BrokeredSecret, OAuth2Grant};

/// The path the server redirects back to.
const CALLBACK_PATH: &str = "/callback";

/// Options of `ferry-operator oauth2-consent`.
#[derive(Debug, clap::Args)]
pub struct ConsentArgs {
    /// The BrokeredSecret (an oauth2 source with grant RefreshToken).
    #[arg(value_name = "BROKEREDSECRET")]
    pub name: String,
    /// Its namespace.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// The loopback address to receive the redirect on. The client must be
    /// registered with the redirect URI `http://127.0.0.1/callback` (RFC
    /// 8252 servers accept any port of it) or with this exact port.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Scopes to ask for instead of the BrokeredSecret's own and
    /// `offline_access` (which OpenID Connect servers need before they
    /// issue a refresh token). Repeat for several.
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// How long to wait for the person to consent.
    #[arg(long, default_value = "5m", value_parser = parse_timeout)]
    pub timeout: Duration,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    ferry_api::duration::parse_duration(text).map_err(|error| error.to_string())
}

/// Why consent failed. Messages name objects and steps, never a token.
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    /// The BrokeredSecret or its Secret is missing or not fit.
    #[error("{0}")]
    Setup(String),
    /// The apiserver did not answer as expected.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The apiserver's error.
        #[source]
        source: kube::Error,
    },
    /// The authorization server refused or failed.
    #[error("{0}")]
    Server(ProviderError),
    /// The person did not consent in time, or the server said no.
    #[error("{0}")]
    Consent(String),
}

/// Runs the flow for `args`, printing what the person must do to `say`.
/// Returns what was stored (for the caller to print): the granted scopes.
pub async fn run(
    client: kube::Client,
    args: &ConsentArgs,
    say: &mut (dyn std::io::Write + Send),
) -> Result<String, ConsentError> {
    let (namespace, name) = (args.namespace.as_str(), args.name.as_str());
    if !args.listen.ip().is_loopback() {
        return Err(ConsentError::Setup(format!(
            "--listen {}: the redirect must come to a loopback address",
            args.listen
        )));
    }
    let kube_error = |what: String| move |source| ConsentError::Kube { what, source };
    let secret: BrokeredSecret = Api::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(kube_error(format!(
            "reading BrokeredSecret {namespace}/{name}"
        )))?;
    let source = secret
        .spec
        .source
        .oauth2
        .as_ref()
        .filter(|source| source.grant == OAuth2Grant::RefreshToken)
        .ok_or_else(|| {
            ConsentError::Setup(format!(
                "BrokeredSecret {namespace}/{name} is not an oauth2 source with grant \
                 RefreshToken: only those hold a refresh token"
            ))
        })?;
    let authorization_url = source.authorization_url.as_deref().ok_or_else(|| {
        ConsentError::Setup(format!(
            "BrokeredSecret {namespace}/{name} has no spec.source.oauth2.authorizationUrl"
        ))
    })?;
    let authorization =
        Endpoint::parse(authorization_url, "authorizationUrl").map_err(ConsentError::Server)?;
    let token_endpoint =
        Endpoint::parse(&source.token_url, "tokenUrl").map_err(ConsentError::Server)?;
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let credentials_name = source.credentials_secret_name.as_str();
    let credentials = secrets
        .get(credentials_name)
        .await
        .map_err(kube_error(format!(
            "reading Secret {namespace}/{credentials_name}"
        )))?;
    let data = files_of(credentials.data);
    let client_auth = client_of(source, namespace, &data)
        .map_err(|error| ConsentError::Setup(error.to_string()))?;

    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|error| ConsentError::Setup(format!("listening on {}: {error}", args.listen)))?;
    let port = listener
        .local_addr()
        .map_err(|error| ConsentError::Setup(format!("listening: {error}")))?
        .port();
    let redirect_uri = format!("http://{}:{port}{CALLBACK_PATH}", args.listen.ip());
    let random = SystemRandom::new();
    let verifier = random_text(&random)?;
    let state = random_text(&random)?;
    let challenge = BASE64URL.encode(digest(&SHA256, verifier.as_bytes()));
    let scopes = if args.scopes.is_empty() {
        let mut scopes = source.scopes.clone();
        if !scopes.iter().any(|scope| scope == "offline_access") {
            scopes.push("offline_access".into());
        }
        scopes
    } else {
        args.scopes.clone()
    };
    let mut query = vec![
        ("response_type", "code".to_owned()),
        ("client_id", client_auth.id.to_owned()),
        ("redirect_uri", redirect_uri.clone()),
        ("scope", scopes.join(" ")),
        ("state", state.to_string()),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256".to_owned()),
    ];
    query.extend(source.audience.iter().map(|a| ("audience", a.clone())));
    let query: Vec<String> = query
        .iter()
        .map(|(key, value)| format!("{key}={}", form_encode(value.as_bytes())))
        .collect();
    let separator = if authorization.url().contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!("{}{separator}{}", authorization.url(), query.join("&"));
    let _ = writeln!(
        say,
        "Open this URL in a browser, sign in and consent:\n\n  {url}\n\n\
         Waiting up to {:?} for the redirect to {redirect_uri} ...",
        args.timeout
    );
    let _ = say.flush();

    let code = tokio::time::timeout(args.timeout, receive_code(listener, &state))
        .await
        .map_err(|_| ConsentError::Consent(format!("no consent within {:?}", args.timeout)))??;

    let tls = tls_for(source, &data).map_err(ConsentError::Server)?;
    let mut form = Form::default();
    form.add("grant_type", b"authorization_code")
        .add("code", code.as_bytes())
        .add("redirect_uri", redirect_uri.as_bytes())
        .add("code_verifier", verifier.as_bytes());
    let now = Timestamp::now().as_second();
    let header = token::authenticate(&client_auth, &token_endpoint, &mut form, now)
        .map_err(ConsentError::Server)?;
    let reply = upstream::post_form(tls, &token_endpoint, form, header)
        .await
        .map_err(ConsentError::Server)?;
    let issued = token::read_token_reply(&token_endpoint, &reply, now).map_err(|refused| {
        ConsentError::Server(match refused {
            Refused::Request(error) | Refused::Unavailable { error, .. } => error,
        })
    })?;
    let refresh_token = issued.refresh_token.ok_or_else(|| {
        ConsentError::Consent(format!(
            "token endpoint {} issued no refresh token: ask for the scope the server needs \
             for one (offline_access for OpenID Connect servers; see --scope)",
            token_endpoint.url()
        ))
    })?;
    store(&secrets, namespace, credentials_name, &refresh_token).await?;
    Ok(issued.scope.unwrap_or_else(|| scopes.join(" ")))
}

/// 32 random bytes, base64url: a PKCE verifier or a state.
fn random_text(random: &SystemRandom) -> Result<Zeroizing<String>, ConsentError> {
    let mut bytes = [0u8; 32];
    random
        .fill(&mut bytes)
        .map_err(|_| ConsentError::Setup("the system's random number generator failed".into()))?;
    Ok(Zeroizing::new(BASE64URL.encode(bytes)))
}

/// Serves the loopback redirect until one carries `state` and a code (or
/// an error), and answers the browser.
async fn receive_code(
    listener: TcpListener,
    state: &str,
) -> Result<Zeroizing<String>, ConsentError> {
    let (sender, receiver) = oneshot::channel::<Result<Zeroizing<String>, ConsentError>>();
    let sender = Arc::new(Mutex::new(Some(sender)));
    let state = state.to_owned();
    let server = async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (sender, state) = (Arc::clone(&sender), state.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let outcome = callback(request.uri(), &state);
                        let (status, text) = match &outcome {
                            Some(Ok(_)) => {
                                (200, "ferry: consent received; you can close this window.")
                            }
                            Some(Err(_)) => (
                                400,
                                "ferry: the authorization server did not grant access; see the terminal.",
                            ),
                            None => (
                                404,
                                "ferry: waiting for the authorization server's redirect.",
                            ),
                        };
                        if let Some(outcome) = outcome
                            && let Some(sender) =
                                sender.lock().unwrap_or_else(PoisonError::into_inner).take()
                        {
                            let _ = sender.send(outcome);
                        }
                        let response = hyper::Response::builder()
                            .status(status)
                            .header("content-type", "text/plain; charset=utf-8")
                            .body(Full::new(Bytes::from_static(text.as_bytes())));
                        std::future::ready(response)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    };
    tokio::select! {
        () = server => Err(ConsentError::Consent("the loopback listener stopped".into())),
        outcome = receiver => outcome.unwrap_or_else(|_| Err(ConsentError::Consent("the loopback listener stopped".into()))),
    }
}

/// What a request to the loopback listener says: `None` when it is not
/// the redirect (a favicon, another path, another state), else the code
/// or the server's refusal.
fn callback(uri: &hyper::Uri, state: &str) -> Option<Result<Zeroizing<String>, ConsentError>> {
    if uri.path() != CALLBACK_PATH {
        return None;
    }
    let pairs: Vec<(String, Zeroizing<String>)> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_owned(), Zeroizing::new(form_decode(value))))
        .collect();
    let value = |name: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    if value("state").as_deref().map(String::as_str) != Some(state) {
        return None;
    }
    if let Some(error) = value("error") {
        let code: String = error
            .chars()
            .filter(|c| c.is_ascii_lowercase() || *c == '_')
            .take(64)
            .collect();
        return Some(Err(ConsentError::Consent(format!(
            "the authorization server refused consent: {code}"
        ))));
    }
    value("code").filter(|code| !code.is_empty()).map(Ok)
}

/// Percent- and `+`-decoding of a query value.
fn form_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' if index + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).ok();
                match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        index += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Stores `refresh_token` into the Secret, retrying on conflicts.
async fn store(
    secrets: &Api<Secret>,
    namespace: &str,
    name: &str,
    refresh_token: &str,
) -> Result<(), ConsentError> {
    for _ in 0..5 {
        let mut secret = secrets
            .get(name)
            .await
            .map_err(|source| ConsentError::Kube {
                what: format!("reading Secret {namespace}/{name}"),
                source,
            })?;
        secret.data.get_or_insert_default().insert(
            oauth2_keys::REFRESH_TOKEN.to_owned(),
            ByteString(refresh_token.as_bytes().to_vec()),
        );
        match secrets.replace(name, &PostParams::default(), &secret).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(source) => {
                return Err(ConsentError::Kube {
                    what: format!("storing the refresh token into Secret {namespace}/{name}"),
                    source,
                });
            }
        }
    }
    Err(ConsentError::Setup(format!(
        "Secret {namespace}/{name} kept changing; the refresh token was not stored"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redirect_gives_the_code_only_with_the_right_state() {
        let uri: hyper::Uri = "/callback?code=abc%2Fdef&state=s1".parse().unwrap();
        let code = callback(&uri, "s1").unwrap().unwrap();
        assert_eq!(code.as_str(), "abc/def");
        assert!(
            callback(&uri, "other").is_none(),
            "a forged state is ignored"
        );
        let favicon: hyper::Uri = "/favicon.ico".parse().unwrap();
        assert!(callback(&favicon, "s1").is_none());
        let refused: hyper::Uri = "/callback?error=access_denied&state=s1".parse().unwrap();
        let error = callback(&refused, "s1").unwrap().unwrap_err().to_string();
        assert_eq!(
            error,
            "the authorization server refused consent: access_denied"
        );
    }

    #[test]
    fn query_values_are_form_decoded() {
        assert_eq!(form_decode("a+b%20c%2F%zz%4"), "a b c/%zz%4");
    }
}
