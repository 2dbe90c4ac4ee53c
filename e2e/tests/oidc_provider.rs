//! The oidc-provider harness against the real server: client_credentials
//! with each client authentication method, RFC 8693 token exchange of a
//! subject JWT signed here, what introspection says of the tokens, and
//! what is refused and how. Each test starts its own server; no Kubernetes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ferry_e2e::client_secret_basic;
use ferry_e2e::https_client::HttpsReply;
use ferry_e2e::oidc_provider::{
    ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE, OidcProvider, OidcProviderOptions, TOKEN_EXCHANGE_GRANT,
    TokenExchangeTrust,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::KeyPair;
use serde_json::{Value, json};

const SUBJECT_ISSUER: &str = "https://broker.ferry.test";
const SUBJECT_AUDIENCE: &str = "https://oidc-provider.ferry.test";
const SUBJECT: &str = "system:serviceaccount:payments:orders";
const ES256_KID: &str = "subject-es256";
const EDDSA_KID: &str = "subject-eddsa";

/// The broker's client: the token exchange only.
const EXCHANGER: &str = "ferry-broker";
const EXCHANGER_SECRET: &str = "a-secret-for-the-broker-client";
/// client_credentials with client_secret_basic.
const BASIC: &str = "orders-basic";
const BASIC_SECRET: &str = "a-secret-for-the-basic-client";
/// client_credentials with client_secret_post, one scope only.
const POST: &str = "orders-post";
const POST_SECRET: &str = "a-secret-for-the-post-client";
/// client_credentials with private_key_jwt (ES256).
const KEY_JWT: &str = "orders-private-key-jwt";
const KEY_JWT_KID: &str = "client-es256";

const TTL: Duration = Duration::from_secs(600);

/// The keys a test signs with: the subject tokens' (ES256 and EdDSA, both
/// trusted by the server) and the private_key_jwt client's.
struct Keys {
    subject_es256: KeyPair,
    subject_eddsa: KeyPair,
    client: KeyPair,
}

impl Keys {
    fn generate() -> Self {
        Self {
            subject_es256: KeyPair::generate().unwrap(),
            subject_eddsa: KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
            client: KeyPair::generate().unwrap(),
        }
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The public JWK of a P-256 key (its raw public key is 0x04 ‖ x ‖ y).
fn es256_jwk(key: &KeyPair, kid: &str) -> Value {
    let raw = key.public_key_raw();
    json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
        "x": b64url(&raw[1..33]), "y": b64url(&raw[33..65]),
    })
}

fn ed25519_jwk(key: &KeyPair, kid: &str) -> Value {
    json!({
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid,
        "x": b64url(key.public_key_raw()),
    })
}

async fn start(keys: &Keys) -> OidcProvider {
    let clients = vec![
        json!({
            "client_id": EXCHANGER,
            "client_secret": EXCHANGER_SECRET,
            "grant_types": [TOKEN_EXCHANGE_GRANT],
            "scope": "orders.read orders.write",
            "token_endpoint_auth_method": "client_secret_basic",
        }),
        json!({
            "client_id": BASIC,
            "client_secret": BASIC_SECRET,
            "grant_types": ["client_credentials"],
            "scope": "orders.read orders.write",
            "token_endpoint_auth_method": "client_secret_basic",
        }),
        json!({
            "client_id": POST,
            "client_secret": POST_SECRET,
            "grant_types": ["client_credentials"],
            "scope": "orders.read",
            "token_endpoint_auth_method": "client_secret_post",
        }),
        json!({
            "client_id": KEY_JWT,
            "grant_types": ["client_credentials"],
            "scope": "orders.read",
            "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": "ES256",
            "jwks": { "keys": [es256_jwk(&keys.client, KEY_JWT_KID)] },
        }),
    ];
    OidcProvider::start(OidcProviderOptions {
        access_token_ttl: TTL,
        clients,
        token_exchange: Some(TokenExchangeTrust {
            subject_issuer: SUBJECT_ISSUER.into(),
            subject_audience: SUBJECT_AUDIENCE.into(),
            subject_jwks: json!({ "keys": [
                es256_jwk(&keys.subject_es256, ES256_KID),
                ed25519_jwk(&keys.subject_eddsa, EDDSA_KID),
            ]}),
        }),
    })
    .await
    .expect("oidc-provider starts")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWT of `claims` signed by `key` with `alg`, header `kid`.
fn sign(claims: &Value, key: &KeyPair, alg: Algorithm, kid: &str) -> String {
    let pem = key.serialize_pem();
    let encoding = match alg {
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
        _ => EncodingKey::from_ec_pem(pem.as_bytes()),
    }
    .unwrap();
    let header = Header {
        kid: Some(kid.into()),
        ..Header::new(alg)
    };
    jsonwebtoken::encode(&header, claims, &encoding).unwrap()
}

/// The claims of a subject token the server trusts, valid for a minute.
fn subject_claims() -> Value {
    let now = now();
    json!({
        "iss": SUBJECT_ISSUER,
        "aud": SUBJECT_AUDIENCE,
        "sub": SUBJECT,
        "iat": now,
        "nbf": now,
        "exp": now + 60,
    })
}

fn subject_token(keys: &Keys) -> String {
    sign(
        &subject_claims(),
        &keys.subject_es256,
        Algorithm::ES256,
        ES256_KID,
    )
}

/// A token request as the broker's client (client_secret_basic).
async fn exchange(provider: &OidcProvider, pairs: &[(&str, &str)]) -> HttpsReply {
    post_as(
        provider,
        EXCHANGER,
        EXCHANGER_SECRET,
        &provider.token_url(),
        pairs,
    )
    .await
}

/// POSTs `pairs` to `url` authenticated as `client_id` with
/// client_secret_basic.
async fn post_as(
    provider: &OidcProvider,
    client_id: &str,
    secret: &str,
    url: &str,
    pairs: &[(&str, &str)],
) -> HttpsReply {
    let authorization = client_secret_basic(client_id, secret);
    provider
        .post_form(url, &[("authorization", &authorization)], pairs)
        .await
        .expect("oidc-provider answers")
}

/// The body of a 200 from the token endpoint.
fn tokens(reply: &HttpsReply) -> Value {
    assert_eq!(
        reply.status,
        200,
        "the token endpoint refused: {}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json().expect("the token endpoint answers JSON")
}

/// The OAuth2 error code of a 4xx from the token endpoint.
fn error_code(reply: &HttpsReply) -> String {
    assert!(
        (400..500).contains(&reply.status),
        "expected a refusal, got {}: {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );
    reply.json().unwrap()["error"]
        .as_str()
        .expect("an error code")
        .to_owned()
}

fn access_token(issued: &Value) -> &str {
    issued["access_token"].as_str().expect("an access_token")
}

fn exchange_pairs<'a>(
    subject_token: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut pairs = vec![
        ("grant_type", TOKEN_EXCHANGE_GRANT),
        ("subject_token", subject_token),
        ("subject_token_type", JWT_TOKEN_TYPE),
    ];
    pairs.extend_from_slice(extra);
    pairs
}

/// Asserts an introspection of a live client_credentials token of
/// `client_id` with `scope`.
fn assert_client_credentials_token(introspection: &Value, client_id: &str, scope: &str) {
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["client_id"], client_id);
    assert_eq!(introspection["scope"], scope);
    assert_eq!(introspection["token_type"], "Bearer");
    assert!(
        introspection.get("sub").is_none(),
        "a client's own token names no subject: {introspection}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_basic_client_gets_an_opaque_token_with_the_asked_scope() {
    let keys = Keys::generate();
    let provider = start(&keys).await;

    let issued = tokens(
        &post_as(
            &provider,
            BASIC,
            BASIC_SECRET,
            &provider.token_url(),
            &[
                ("grant_type", "client_credentials"),
                ("scope", "orders.read"),
            ],
        )
        .await,
    );

    assert_eq!(issued["token_type"], "Bearer");
    assert_eq!(issued["scope"], "orders.read");
    assert_eq!(issued["expires_in"], TTL.as_secs());
    let token = access_token(&issued);
    assert!(
        !token.contains('.'),
        "an opaque token, not a JWT: {} dots",
        token.matches('.').count()
    );
    let introspection = provider.introspect(token).await.expect("introspects");
    assert_client_credentials_token(&introspection, BASIC, "orders.read");
    let exp = introspection["exp"].as_u64().expect("an exp");
    assert!(exp.abs_diff(now() + TTL.as_secs()) <= 5, "exp {exp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_post_client_gets_a_token() {
    let keys = Keys::generate();
    let provider = start(&keys).await;

    let issued = tokens(
        &provider
            .post_form(
                &provider.token_url(),
                &[],
                &[
                    ("grant_type", "client_credentials"),
                    ("scope", "orders.read"),
                    ("client_id", POST),
                    ("client_secret", POST_SECRET),
                ],
            )
            .await
            .unwrap(),
    );

    let introspection = provider
        .introspect(access_token(&issued))
        .await
        .expect("introspects");
    assert_client_credentials_token(&introspection, POST, "orders.read");
}

/// A private_key_jwt client assertion (RFC 7523) for the token endpoint,
/// signed by `key`.
fn client_assertion(provider: &OidcProvider, key: &KeyPair) -> String {
    let mut jti = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut jti).unwrap();
    let now = now();
    let claims = json!({
        "iss": KEY_JWT,
        "sub": KEY_JWT,
        "aud": provider.token_url(),
        "jti": b64url(&jti),
        "iat": now,
        "exp": now + 60,
    });
    sign(&claims, key, Algorithm::ES256, KEY_JWT_KID)
}

async fn post_with_assertion(provider: &OidcProvider, assertion: &str) -> HttpsReply {
    provider
        .post_form(
            &provider.token_url(),
            &[],
            &[
                ("grant_type", "client_credentials"),
                ("scope", "orders.read"),
                ("client_id", KEY_JWT),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion),
            ],
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_client_gets_a_token_and_a_stranger_key_does_not() {
    let keys = Keys::generate();
    let provider = start(&keys).await;

    let issued =
        tokens(&post_with_assertion(&provider, &client_assertion(&provider, &keys.client)).await);
    let introspection = provider
        .introspect(access_token(&issued))
        .await
        .expect("introspects");
    assert_client_credentials_token(&introspection, KEY_JWT, "orders.read");

    let stranger = KeyPair::generate().unwrap();
    let refused = post_with_assertion(&provider, &client_assertion(&provider, &stranger)).await;
    assert_eq!(refused.status, 401);
    assert_eq!(error_code(&refused), "invalid_client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_resource_becomes_the_tokens_audience() {
    let keys = Keys::generate();
    let provider = start(&keys).await;

    let issued = tokens(
        &post_as(
            &provider,
            BASIC,
            BASIC_SECRET,
            &provider.token_url(),
            &[
                ("grant_type", "client_credentials"),
                ("scope", "orders.read"),
                ("resource", "https://orders.ferry.test"),
            ],
        )
        .await,
    );

    let introspection = provider
        .introspect(access_token(&issued))
        .await
        .expect("introspects");
    assert_client_credentials_token(&introspection, BASIC, "orders.read");
    assert_eq!(introspection["aud"], "https://orders.ferry.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanged_token_names_the_subject_with_the_narrowed_scope_and_audience() {
    let keys = Keys::generate();
    let provider = start(&keys).await;
    let subject_token = subject_token(&keys);

    let reply = exchange(
        &provider,
        &exchange_pairs(
            &subject_token,
            &[
                ("scope", "orders.read"),
                ("audience", "orders-api"),
                ("requested_token_type", ACCESS_TOKEN_TYPE),
            ],
        ),
    )
    .await;
    let issued = tokens(&reply);

    assert_eq!(issued["issued_token_type"], ACCESS_TOKEN_TYPE);
    assert_eq!(issued["token_type"], "Bearer");
    assert_eq!(issued["expires_in"], TTL.as_secs());
    assert_eq!(issued["scope"], "orders.read");
    let token = access_token(&issued);
    assert!(!token.contains('.'), "an opaque token, not a JWT");
    let introspection = provider.introspect(token).await.expect("introspects");
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["sub"], SUBJECT);
    assert_eq!(introspection["client_id"], EXCHANGER);
    assert_eq!(introspection["scope"], "orders.read");
    assert_eq!(introspection["aud"], "orders-api");
    assert_eq!(introspection["iss"], provider.issuer());
    let exp = introspection["exp"].as_u64().expect("an exp");
    assert!(exp.abs_diff(now() + TTL.as_secs()) <= 5, "exp {exp}");

    let log = provider.log();
    for secret in [&subject_token, token, EXCHANGER_SECRET] {
        assert!(!log.contains(secret), "the server logged a token or secret");
    }
    assert!(
        log.contains("POST /token 200"),
        "one line per request:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddsa_subject_token_is_exchanged_for_every_audience_asked() {
    let keys = Keys::generate();
    let provider = start(&keys).await;
    let subject_token = sign(
        &subject_claims(),
        &keys.subject_eddsa,
        Algorithm::EdDSA,
        EDDSA_KID,
    );

    let issued = tokens(
        &exchange(
            &provider,
            &exchange_pairs(
                &subject_token,
                &[("audience", "orders-api"), ("audience", "billing-api")],
            ),
        )
        .await,
    );

    assert!(
        issued.get("scope").is_none(),
        "no scope asked, none given: {issued}"
    );
    let introspection = provider
        .introspect(access_token(&issued))
        .await
        .expect("introspects");
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["sub"], SUBJECT);
    assert_eq!(introspection["aud"], json!(["orders-api", "billing-api"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_subject_tokens_are_refused_without_echoing_them() {
    let keys = Keys::generate();
    let provider = start(&keys).await;
    let with = |claim: &str, value: Value| {
        let mut claims = subject_claims();
        claims[claim] = value;
        sign(&claims, &keys.subject_es256, Algorithm::ES256, ES256_KID)
    };
    let without_sub = {
        let mut claims = subject_claims();
        claims.as_object_mut().unwrap().remove("sub");
        sign(&claims, &keys.subject_es256, Algorithm::ES256, ES256_KID)
    };
    // A key the server does not trust, under a kid it does.
    let stranger = KeyPair::generate().unwrap();
    // Each with what the refusal says of it.
    let cases = [
        (
            "another audience",
            with("aud", json!("https://elsewhere.ferry.test")),
            "aud claim",
        ),
        ("expired", with("exp", json!(now() - 120)), "expired"),
        (
            "not yet valid",
            with("nbf", json!(now() + 600)),
            "nbf claim",
        ),
        (
            "another issuer",
            with("iss", json!("https://impostor.ferry.test")),
            "iss claim",
        ),
        ("no subject", without_sub, "sub claim"),
        (
            "a stranger's signature",
            sign(&subject_claims(), &stranger, Algorithm::ES256, ES256_KID),
            "not from a trusted key",
        ),
        (
            "not a JWT",
            "not.a-jwt.at-all".to_owned(),
            "not a valid JWT",
        ),
    ];

    for (case, subject_token, why) in &cases {
        let reply = exchange(
            &provider,
            &exchange_pairs(subject_token, &[("scope", "orders.read")]),
        )
        .await;
        assert_eq!(error_code(&reply), "invalid_grant", "{case}");
        let description = reply.json().unwrap()["error_description"].to_string();
        assert!(description.contains(why), "{case}: {description}");
        let body = String::from_utf8_lossy(&reply.body);
        assert!(
            !body.contains(subject_token.as_str()),
            "{case}: the refusal echoes the token"
        );
        let signature = subject_token.rsplit('.').next().unwrap();
        assert!(
            !body.contains(signature),
            "{case}: the refusal echoes part of the token"
        );
    }
    let log = provider.log();
    for (case, subject_token, _) in &cases {
        assert!(
            !log.contains(subject_token.as_str()),
            "{case}: the server logged the token"
        );
    }
    assert!(log.contains("POST /token 400 invalid_grant"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_exchange_requests_are_invalid_requests() {
    let keys = Keys::generate();
    let provider = start(&keys).await;
    let subject_token = subject_token(&keys);

    let cases: [(&str, Vec<(&str, &str)>); 3] = [
        (
            "no subject token",
            vec![
                ("grant_type", TOKEN_EXCHANGE_GRANT),
                ("subject_token_type", JWT_TOKEN_TYPE),
            ],
        ),
        (
            "a subject token type other than JWT",
            vec![
                ("grant_type", TOKEN_EXCHANGE_GRANT),
                ("subject_token", subject_token.as_str()),
                ("subject_token_type", ACCESS_TOKEN_TYPE),
            ],
        ),
        (
            "a refresh token requested",
            exchange_pairs(
                &subject_token,
                &[(
                    "requested_token_type",
                    "urn:ietf:params:oauth:token-type:refresh_token",
                )],
            ),
        ),
    ];

    for (case, pairs) in &cases {
        let reply = exchange(&provider, pairs).await;
        assert_eq!(error_code(&reply), "invalid_request", "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_not_registered_for_the_exchange_is_an_unauthorized_client() {
    let keys = Keys::generate();
    let provider = start(&keys).await;
    let subject_token = subject_token(&keys);

    let reply = post_as(
        &provider,
        BASIC,
        BASIC_SECRET,
        &provider.token_url(),
        &exchange_pairs(&subject_token, &[]),
    )
    .await;

    assert_eq!(error_code(&reply), "unauthorized_client");
    assert!(!String::from_utf8_lossy(&reply.body).contains(&subject_token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_beyond_the_clients_is_refused() {
    let keys = Keys::generate();
    let provider = start(&keys).await;
    let subject_token = subject_token(&keys);

    let exchanged = exchange(
        &provider,
        &exchange_pairs(&subject_token, &[("scope", "orders.read orders.admin")]),
    )
    .await;
    assert_eq!(error_code(&exchanged), "invalid_scope");

    // orders.write is another client's: known to the server, not POST's.
    let client_credentials = provider
        .post_form(
            &provider.token_url(),
            &[],
            &[
                ("grant_type", "client_credentials"),
                ("scope", "orders.read orders.write"),
                ("client_id", POST),
                ("client_secret", POST_SECRET),
            ],
        )
        .await
        .unwrap();
    assert_eq!(error_code(&client_credentials), "invalid_scope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_introspect_inactive() {
    let keys = Keys::generate();
    let provider = start(&keys).await;
    let exchanged = tokens(&exchange(&provider, &exchange_pairs(&subject_token(&keys), &[])).await);
    let exchanged = access_token(&exchanged);
    let own = tokens(
        &post_as(
            &provider,
            BASIC,
            BASIC_SECRET,
            &provider.token_url(),
            &[("grant_type", "client_credentials")],
        )
        .await,
    );
    let own = access_token(&own);

    // Only the client a token was issued to may revoke it.
    let stranger = post_as(
        &provider,
        BASIC,
        BASIC_SECRET,
        &provider.revocation_url(),
        &[("token", exchanged)],
    )
    .await;
    assert_eq!(error_code(&stranger), "invalid_request");
    assert_eq!(
        provider.introspect(exchanged).await.unwrap()["active"],
        true
    );

    for (client_id, secret, token) in [
        (EXCHANGER, EXCHANGER_SECRET, exchanged),
        (BASIC, BASIC_SECRET, own),
    ] {
        let revoked = post_as(
            &provider,
            client_id,
            secret,
            &provider.revocation_url(),
            &[("token", token), ("token_type_hint", "access_token")],
        )
        .await;
        assert_eq!(revoked.status, 200, "RFC 7009: revocation answers 200");
        assert_eq!(
            provider.introspect(token).await.unwrap(),
            json!({ "active": false }),
            "{client_id}'s token"
        );
    }
}
