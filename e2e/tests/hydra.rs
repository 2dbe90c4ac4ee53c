//! The hydra harness against the real server: the URLs, the CA, client
//! registration, introspection, the headless authorization-code flow and
//! pausing do what the oauth2 provider's tests will rely on. Each test
//! starts its own hydra.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::Engine as _;
use ferry_e2e::https_client::{HttpsClient, HttpsReply, form_body};
use ferry_e2e::{ClientSpec, HEADLESS_SUBJECT, Hydra, HydraOptions, client_secret_basic};
use serde_json::Value;

const CLIENT_ID: &str = "ferry-e2e-client";
const CLIENT_SECRET: &str = "a-client-secret-long-enough-for-hydra";
const REDIRECT_URI: &str = "http://127.0.0.1:1/callback";

async fn start_hydra() -> Hydra {
    Hydra::start(HydraOptions::default())
        .await
        .expect("hydra starts")
}

/// POSTs the form `pairs` to `url` (one of hydra's public endpoints) as
/// the client, authenticated with client_secret_basic.
async fn post_form(hydra: &Hydra, url: &str, pairs: &[(&str, &str)]) -> HttpsReply {
    let path = url
        .strip_prefix(&hydra.issuer())
        .expect("the endpoint is on hydra's public origin");
    let authorization = client_secret_basic(CLIENT_ID, CLIENT_SECRET);
    let client = HttpsClient::new(hydra.public_addr(), &hydra.ca_pem()).expect("an HTTPS client");
    client
        .request_with_headers(
            "POST",
            path,
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", &authorization),
            ],
            form_body(pairs).as_bytes(),
        )
        .await
        .expect("hydra answers")
}

/// The body of a 200 from the token endpoint; the status and hydra's
/// error otherwise (its errors carry no secrets).
fn tokens(reply: &HttpsReply) -> Value {
    assert_eq!(
        reply.status,
        200,
        "the token endpoint refused: {}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json().expect("the token endpoint answers JSON")
}

fn field<'a>(value: &'a Value, name: &str) -> &'a str {
    value[name]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} in the reply"))
}

async fn client_credentials_client(hydra: &Hydra) {
    hydra
        .create_client(&ClientSpec {
            client_id: CLIENT_ID.into(),
            client_secret: Some(CLIENT_SECRET.into()),
            grant_types: vec!["client_credentials".into()],
            scope: "orders.read orders.write".into(),
            token_endpoint_auth_method: Some("client_secret_basic".into()),
            ..ClientSpec::default()
        })
        .await
        .expect("hydra registers the client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_token_introspects_active_with_the_requested_scope() {
    let hydra = start_hydra().await;
    client_credentials_client(&hydra).await;

    let issued = tokens(
        &post_form(
            &hydra,
            &hydra.token_url(),
            &[
                ("grant_type", "client_credentials"),
                ("scope", "orders.read"),
            ],
        )
        .await,
    );
    let introspection = hydra
        .introspect(field(&issued, "access_token"))
        .await
        .expect("hydra introspects");

    assert_eq!(introspection["active"], true);
    assert_eq!(introspection["scope"], "orders.read");
    assert_eq!(introspection["client_id"], CLIENT_ID);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_introspects_inactive() {
    let hydra = start_hydra().await;
    client_credentials_client(&hydra).await;
    let issued = tokens(
        &post_form(
            &hydra,
            &hydra.token_url(),
            &[
                ("grant_type", "client_credentials"),
                ("scope", "orders.read"),
            ],
        )
        .await,
    );
    let access_token = field(&issued, "access_token");
    assert_eq!(
        hydra.introspect(access_token).await.expect("introspects")["active"],
        true,
        "a fresh token is active"
    );

    let revoked = post_form(
        &hydra,
        &hydra.revocation_url(),
        &[("token", access_token), ("token_type_hint", "access_token")],
    )
    .await;

    assert_eq!(revoked.status, 200, "RFC 7009: revocation answers 200");
    assert_eq!(
        hydra.introspect(access_token).await.expect("introspects")["active"],
        false
    );
}

/// A PKCE verifier (RFC 7636: 32 random bytes, base64url) and its S256
/// challenge.
fn pkce() -> (String, String) {
    let mut random = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
        .expect("the OS has randomness");
    let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let verifier = encode(&random);
    let challenge =
        encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref());
    (verifier, challenge)
}

/// Registers a client for the authorization-code flow, runs the flow
/// headlessly with PKCE, and redeems the code: hydra's token reply.
async fn authorization_code_tokens(hydra: &Hydra) -> Value {
    hydra
        .create_client(&ClientSpec {
            client_id: CLIENT_ID.into(),
            client_secret: Some(CLIENT_SECRET.into()),
            grant_types: vec!["authorization_code".into(), "refresh_token".into()],
            scope: "offline_access orders.read".into(),
            token_endpoint_auth_method: Some("client_secret_basic".into()),
            redirect_uris: vec![REDIRECT_URI.into()],
            ..ClientSpec::default()
        })
        .await
        .expect("hydra registers the client");
    let (verifier, challenge) = pkce();
    let state = "state-long-enough-for-hydra";
    let request = format!(
        "{}?{}",
        hydra.authorization_url(),
        form_body(&[
            ("response_type", "code"),
            ("client_id", CLIENT_ID),
            ("redirect_uri", REDIRECT_URI),
            ("scope", "offline_access orders.read"),
            ("state", state),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])
    );

    let redirect = hydra
        .authorize_headless(&request)
        .await
        .expect("the flow ends at the client's redirect URI");
    let query = redirect
        .strip_prefix(&format!("{REDIRECT_URI}?"))
        .expect("hydra redirects to the registered URI");
    let returned = |name: &str| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    };
    assert_eq!(returned("error"), None, "hydra refused the authorization");
    assert_eq!(returned("state").as_deref(), Some(state));
    let code = returned("code").expect("the redirect carries a code");

    tokens(
        &post_form(
            hydra,
            &hydra.token_url(),
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", &verifier),
            ],
        )
        .await,
    )
}

async fn refresh(hydra: &Hydra, refresh_token: &str) -> HttpsReply {
    post_form(
        hydra,
        &hydra.token_url(),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_code_with_pkce_yields_a_refresh_token_that_rotates() {
    let hydra = start_hydra().await;

    let issued = authorization_code_tokens(&hydra).await;
    let introspection = hydra
        .introspect(field(&issued, "access_token"))
        .await
        .expect("introspects");
    assert_eq!(introspection["sub"], HEADLESS_SUBJECT);
    assert_eq!(introspection["scope"], "offline_access orders.read");
    let refresh_token = field(&issued, "refresh_token");

    let rotated = tokens(&refresh(&hydra, refresh_token).await);
    assert_ne!(
        field(&rotated, "refresh_token"),
        refresh_token,
        "a refresh returns a new refresh token"
    );
    let reused = refresh(&hydra, refresh_token).await;
    assert_eq!(reused.status, 400, "a spent refresh token is refused");
    assert_eq!(
        reused.json().expect("an OAuth2 error")["error"],
        "invalid_grant"
    );
}

/// Hydra's reuse detection: what a client that retries a refresh with
/// the token it already spent (after a lost reply, say) runs into.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_a_spent_refresh_token_revokes_its_successors() {
    let hydra = start_hydra().await;
    let issued = authorization_code_tokens(&hydra).await;
    let spent = field(&issued, "refresh_token");
    let rotated = tokens(&refresh(&hydra, spent).await);

    assert_eq!(refresh(&hydra, spent).await.status, 400);

    let successor = hydra
        .introspect(field(&rotated, "access_token"))
        .await
        .expect("introspects");
    assert_eq!(
        successor["active"], false,
        "the rotated access token is revoked"
    );
    assert_eq!(
        refresh(&hydra, field(&rotated, "refresh_token"))
            .await
            .status,
        400,
        "the rotated refresh token is revoked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_token_ttl_option_sets_the_tokens_lifetime() {
    let hydra = Hydra::start(HydraOptions {
        access_token_ttl: Duration::from_secs(7),
    })
    .await
    .expect("hydra starts");
    client_credentials_client(&hydra).await;

    let issued = tokens(
        &post_form(
            &hydra,
            &hydra.token_url(),
            &[
                ("grant_type", "client_credentials"),
                ("scope", "orders.read"),
            ],
        )
        .await,
    );
    let introspection = hydra
        .introspect(field(&issued, "access_token"))
        .await
        .expect("introspects");

    let lifetime =
        introspection["exp"].as_i64().expect("exp") - introspection["iat"].as_i64().expect("iat");
    assert_eq!(lifetime, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_hydra_accepts_connections_but_answers_only_once_resumed() {
    let hydra = start_hydra().await;
    let client = HttpsClient::new(hydra.public_addr(), &hydra.ca_pem()).expect("an HTTPS client");

    hydra.pause().expect("hydra pauses");
    let connected = tokio::net::TcpStream::connect(hydra.public_addr()).await;
    let silent = tokio::time::timeout(
        Duration::from_secs(2),
        client.request("GET", "/health/alive", None, b""),
    )
    .await;
    hydra.resume().expect("hydra resumes");
    let answered = tokio::time::timeout(
        Duration::from_secs(10),
        client.request("GET", "/health/alive", None, b""),
    )
    .await;

    assert!(connected.is_ok(), "the kernel still accepts connections");
    assert!(silent.is_err(), "a paused hydra answers nothing");
    assert_eq!(
        answered
            .expect("a resumed hydra answers")
            .expect("hydra answers")
            .status,
        200
    );
}
