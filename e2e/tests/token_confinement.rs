//! Minted JWTs stay their owner's: two namespaces minting with the same
//! settings get tokens a relying party tells apart by `ferry.dev/secret`,
//! which no spec can set; an issuer the installation does not allow for a
//! namespace makes its BrokeredSecret `Ready=False` and nothing is minted;
//! a request narrowing the audience to nothing is refused. Real apiserver,
//! operator and broker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::Engine as _;
use ferry_api::confinement::Installation;
use ferry_api::resources::BrokeredSecret;
use ferry_broker::lease_id::LeaseKeys;
use ferry_broker::routes::default_rate_limit;
use ferry_contract::SECRET_CLAIM;
use ferry_e2e::https_client::HttpsClient;
use ferry_e2e::{
    Cluster, RunningBroker, RunningOperator, Subject, broker_pod, capture_logs,
    create_brokered_secret_from, eventually, grant_to, install_crds,
};
use kube::Client;
use kube::api::Api;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

/// A client for this test's runtime (a client made on another test's
/// runtime dies with it).
async fn client() -> Client {
    Cluster::shared().await.unwrap().client().unwrap()
}

const WAIT: Duration = Duration::from_secs(60);

/// The issuer the installation allows for namespace `a` only.
const PARTNER_ISSUER: &str = "https://auth.partner.example";

struct World {
    _operator: RunningOperator,
    broker: RunningBroker,
    /// Two team namespaces; only `a` may use [`PARTNER_ISSUER`].
    a: String,
    b: String,
    token: String,
}

/// Team namespaces `a` and `b` each with a JWT BrokeredSecret `token`
/// (same audience, scopes and claims) and, naming [`PARTNER_ISSUER`],
/// `partner`; all granted to `app/checkout`.
async fn world() -> &'static World {
    static WORLD: OnceCell<World> = OnceCell::const_new();
    capture_logs();
    WORLD.get_or_init(start).await
}

async fn start() -> World {
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    install_crds(&client).await.unwrap();
    let a = cluster.create_namespace("tc-a").await.unwrap();
    let b = cluster.create_namespace("tc-b").await.unwrap();
    let app = cluster.create_namespace("tc-app").await.unwrap();
    let installation = Installation::new(
        ferry_contract::DEFAULT_NAMESPACE,
        &format!("{a}={PARTNER_ISSUER}"),
    )
    .unwrap();
    let operator =
        RunningOperator::start_in(cluster.config().clone(), installation.clone()).unwrap();
    let broker = RunningBroker::start_in(
        cluster,
        cluster.config().clone(),
        LeaseKeys::new(&[11; 32], &[]),
        default_rate_limit(),
        installation,
    )
    .unwrap();
    for owner in [&a, &b] {
        let jwt =
            json!({"audience": ["orders"], "scopes": ["read"], "claims": {"team": "payments"}});
        create_brokered_secret_from(&client, owner, "token", json!({"source": {"jwt": jwt}}))
            .await
            .unwrap();
        let mut partner = jwt.clone();
        partner["issuer"] = json!(PARTNER_ISSUER);
        create_brokered_secret_from(
            &client,
            owner,
            "partner",
            json!({"source": {"jwt": partner}}),
        )
        .await
        .unwrap();
        let subject = Subject {
            namespace: &app,
            name: "checkout",
        };
        grant_to(
            &client,
            owner,
            "checkout",
            subject,
            json!([{"name": "token"}, {"name": "partner"}]),
        )
        .await
        .unwrap();
    }
    let (_pod, token) = broker_pod(&client, &app, "api", "checkout").await.unwrap();
    World {
        _operator: operator,
        broker,
        a,
        b,
        token,
    }
}

async fn ask(broker: &HttpsClient, token: &str, asked: Value) -> (u16, Value) {
    let body = serde_json::to_vec(&json!({"secrets": [asked]})).unwrap();
    let reply = broker
        .request("POST", "/v1/leases", Some(token), &body)
        .await
        .unwrap();
    (reply.status, reply.json().unwrap_or(Value::Null))
}

/// A minted token's claims, after the broker knows the pod and its Grant.
async fn mint(world: &World, namespace: &str, name: &str) -> Value {
    let broker = world.broker.client().unwrap();
    let asked = json!({"namespace": namespace, "name": name});
    let lease = eventually(&format!("a token of {namespace}/{name}"), WAIT, || async {
        let (status, body) = ask(&broker, &world.token, asked.clone()).await;
        (status == 200).then(|| body["leases"][0].clone())
    })
    .await;
    let jwt = base64::engine::general_purpose::STANDARD
        .decode(lease["files"]["token"].as_str().unwrap())
        .unwrap();
    let payload = String::from_utf8(jwt).unwrap();
    let payload = payload.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

/// The BrokeredSecret's Ready condition once it has `reason`.
async fn ready(client: &Client, namespace: &str, name: &str, reason: &str) -> (String, String) {
    let api = Api::<BrokeredSecret>::namespaced(client.clone(), namespace);
    eventually(
        &format!("{namespace}/{name} Ready ({reason})"),
        WAIT,
        || async {
            let condition = api
                .get(name)
                .await
                .ok()?
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready" && c.reason == reason)?;
            Some((condition.status, condition.message))
        },
    )
    .await
}

#[tokio::test]
async fn tokens_of_two_namespaces_with_the_same_settings_are_told_apart_by_their_owner() {
    let world = world().await;
    let (a, b) = (
        mint(world, &world.a, "token").await,
        mint(world, &world.b, "token").await,
    );
    // Everything a relying party usually checks is the same ...
    for claim in ["iss", "aud", "scope", "sub", "team"] {
        assert_eq!(a[claim], b[claim], "{claim}");
    }
    // ... but the owner claim names each BrokeredSecret.
    assert_eq!(a[SECRET_CLAIM], format!("{}/token", world.a));
    assert_eq!(b[SECRET_CLAIM], format!("{}/token", world.b));

    // No spec can set the owner claim itself.
    let forged = create_brokered_secret_from(
        &client().await,
        &world.b,
        "forged",
        json!({"source": {"jwt": {"audience": ["orders"],
                                  "claims": {SECRET_CLAIM: format!("{}/token", world.a)}}}}),
    )
    .await
    .unwrap_err();
    assert!(forged.to_string().contains("ferry.dev/secret"), "{forged}");
}

#[tokio::test]
async fn an_issuer_not_allowed_for_the_namespace_is_not_ready_and_mints_nothing() {
    let world = world().await;
    // Allowed for a: ready, and its tokens carry the partner issuer.
    let (status, _) = ready(&client().await, &world.a, "partner", "Resolved").await;
    assert_eq!(status, "True");
    assert_eq!(
        mint(world, &world.a, "partner").await["iss"],
        PARTNER_ISSUER
    );

    // Not allowed for b: Ready=False with the reason, and refused.
    let (status, message) = ready(&client().await, &world.b, "partner", "IssuerNotAllowed").await;
    assert_eq!(status, "False");
    assert!(message.contains(PARTNER_ISSUER), "{message}");
    assert!(message.contains(&world.b), "{message}");
    // b's own token proves the pod and Grant are known: the refusal is the
    // issuer's.
    mint(world, &world.b, "token").await;
    let broker = world.broker.client().unwrap();
    let (code, body) = ask(
        &broker,
        &world.token,
        json!({"namespace": world.b, "name": "partner"}),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    let error = body["error"]["message"].as_str().unwrap();
    assert!(error.contains("is not allowed for namespace"), "{error}");
    assert!(body.get("leases").is_none());
}

#[tokio::test]
async fn a_request_narrowing_the_audience_to_nothing_is_refused() {
    let world = world().await;
    mint(world, &world.a, "token").await;
    let broker = world.broker.client().unwrap();
    let (code, body) = ask(
        &broker,
        &world.token,
        json!({"namespace": world.a, "name": "token", "audience": []}),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    let error = body["error"]["message"].as_str().unwrap();
    assert!(error.contains("at least one audience"), "{error}");
}
