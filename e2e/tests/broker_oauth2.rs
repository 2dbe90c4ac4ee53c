//! oauth2 leases over the broker's real API against a real authorization
//! server (ory/hydra, built here from its Go module): the broker holds the
//! client's credentials and the pod gets an access token alone, narrowed
//! by the server itself (its introspection says so), renewed before it
//! expires and revoked upstream when its lease ends or its pod goes away.
//! A token exchange (RFC 8693, against node-oidc-provider: hydra has none)
//! gets a token naming the pod's own service account.
//! Shared tokens coalesce concurrent pod starts into one upstream call;
//! rotating refresh tokens survive two broker replicas racing; a server
//! that is down or misconfigured is reported by name, with no secret in
//! any answer or log line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD as BASE64URL};
use ferry_api::resources::{AudienceParameter, ClientAuthentication, OAuth2Grant, TokenSharing};
use ferry_api::testing::{self, secret_access};
use ferry_broker::auth::ReviewLimits;
use ferry_broker::lease_id::LeaseKeys;
use ferry_e2e::https_client::{HttpsClient, HttpsReply};
use ferry_e2e::oidc_provider::{
    OidcProvider, OidcProviderOptions, TOKEN_EXCHANGE_GRANT, TokenExchangeTrust,
};
use ferry_e2e::{
    BrokerLimits, ClientSpec, Cluster, Hydra, HydraOptions, LEASE_KEY, RunningBroker, Tenant,
    World, captured_logs, error_message, eventually, grant, issue_once_known, lease_file,
};
use futures::future::join_all;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::DeleteParams;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// The CRM's scopes and API, as its authorization server knows them.
const SCOPES: [&str; 2] = ["contacts.read", "contacts.write"];
const AUDIENCE: &str = "https://crm.example/api";

async fn world() -> &'static World {
    World::shared()
        .await
        .expect("the cluster, operator and broker")
}

async fn hydra() -> Hydra {
    Hydra::start(HydraOptions::default())
        .await
        .expect("hydra starts")
}

/// Registers the confidential client `id` with secret `secret`,
/// authenticating with `method`, for the CRM's scopes and audience.
async fn crm_client(hydra: &Hydra, id: &str, secret: &str, method: &str) {
    hydra
        .create_client(&ClientSpec {
            client_id: id.into(),
            client_secret: Some(secret.into()),
            grant_types: vec!["client_credentials".into()],
            scope: SCOPES.join(" "),
            audience: vec![AUDIENCE.into()],
            token_endpoint_auth_method: Some(method.into()),
            ..ClientSpec::default()
        })
        .await
        .unwrap();
}

/// A hydra with the CRM's confidential client `id` (secret `secret`,
/// `client_secret_basic`), and a tenant whose Secret `crm-client` holds it.
async fn crm_tenant(prefix: &str, id: &str, secret: &str) -> (Hydra, Tenant) {
    let hydra = hydra().await;
    crm_client(&hydra, id, secret, "client_secret_basic").await;
    let tenant = Tenant::create(prefix).await.unwrap();
    credentials(
        &tenant,
        "crm-client",
        &hydra.ca_pem(),
        json!({"client_id": id, "client_secret": secret}),
    )
    .await;
    (hydra, tenant)
}

/// The tenant's credentials Secret `name`: the client, and `ca_pem`, the
/// CA that signed the server's certificate.
async fn credentials(tenant: &Tenant, name: &str, ca_pem: &str, data: Value) {
    let mut data = data;
    data["ca.crt"] = json!(ca_pem);
    tenant.secret(name, data).await.unwrap();
}

/// An oauth2 BrokeredSecret `name` of the tenant at `hydra`, reading
/// `credentials`, for the CRM's scopes and audience; `tune` sets the rest.
async fn crm_secret(
    tenant: &Tenant,
    name: &str,
    hydra: &Hydra,
    credentials: &str,
    tune: impl FnOnce(&mut ferry_api::resources::OAuth2Source),
) {
    let urls = (hydra.token_url(), hydra.revocation_url());
    oauth2_secret(tenant, name, urls, credentials, tune).await;
}

/// An oauth2 BrokeredSecret `name` of the tenant at the server of `urls`
/// (token and revocation endpoints), reading `credentials` (the server's
/// CA in `ca.crt`), for the CRM's scopes and audience; `tune` sets the
/// rest.
async fn oauth2_secret(
    tenant: &Tenant,
    name: &str,
    (token_url, revocation_url): (String, String),
    credentials: &str,
    tune: impl FnOnce(&mut ferry_api::resources::OAuth2Source),
) {
    let mut secret = tenant
        .brokered_secret(name)
        .oauth2(&token_url, credentials, &[AUDIENCE])
        .scopes(&SCOPES)
        .build();
    let source = secret.spec.source.oauth2.as_mut().unwrap();
    source.ca_key = Some("ca.crt".into());
    source.revocation_url = Some(revocation_url);
    tune(source);
    ferry_e2e::create_brokered_secret(&tenant.client, &secret)
        .await
        .unwrap();
}

/// Deletes the tenant's pod `api` at once (its sidecar never revokes),
/// then waits until the reaper has revoked its token upstream:
/// `introspect`, the server's introspection of it, says inactive.
async fn vanish_and_await_revocation<F, Fut>(tenant: &Tenant, introspect: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Value, ferry_e2e::HarnessError>>,
{
    Api::<Pod>::namespaced(tenant.client.clone(), &tenant.app)
        .delete("api", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually(
        "the reaper to revoke the pod's token upstream",
        WAIT,
        || async { (introspect().await.unwrap()["active"] == false).then_some(()) },
    )
    .await;
}

fn request(namespace: &str, name: &str, scopes: Option<&[&str]>) -> Vec<u8> {
    let mut asked = json!({"namespace": namespace, "name": name});
    if let Some(scopes) = scopes {
        asked["scopes"] = json!(scopes);
    }
    serde_json::to_vec(&json!({"secrets": [asked]})).unwrap()
}

fn lease_of(reply: &HttpsReply) -> Value {
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    reply.json().unwrap()["leases"][0].clone()
}

#[tokio::test]
async fn a_pod_gets_an_access_token_the_server_narrowed_renewed_and_revoked_upstream() {
    world().await;
    let (hydra, tenant) = crm_tenant("oauth2", "crm-app", "crm-secret-planted-1").await;
    crm_secret(&tenant, "crm", &hydra, "crm-client", |_| {}).await;
    // The policy allows reading contacts only.
    let policy = testing::access_policy(&tenant.owner, "checkout")
        .service_account(&tenant.app, "checkout")
        .narrowed(secret_access("crm").scopes(&["contacts.read"]))
        .build();
    grant(&tenant.client, policy).await.unwrap();
    let broker = world().await.broker.client().unwrap();
    let (_, token) = tenant.pod("api", "checkout").await.unwrap();

    let lease =
        lease_of(&issue_once_known(&broker, &token, &request(&tenant.owner, "crm", None)).await);
    let mut names: Vec<&str> = lease["files"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["access_token", "expires_at", "token_type"]);
    assert_eq!(lease_file(&lease, "token_type").to_lowercase(), "bearer");
    let access_token = lease_file(&lease, "access_token");
    let introspected = hydra.introspect(&access_token).await.unwrap();
    assert_eq!(introspected["active"], true, "{introspected}");
    assert_eq!(introspected["client_id"], "crm-app");
    assert_eq!(
        introspected["scope"], "contacts.read",
        "the server issued the policy's narrowing, not the client's scopes"
    );
    assert_eq!(introspected["aud"], json!([AUDIENCE]));
    // The lease ends no later than the token.
    let token_expires: k8s_openapi::jiff::Timestamp =
        lease_file(&lease, "expires_at").parse().unwrap();
    // Counted from when it was asked for: at most a second early.
    let exp = introspected["exp"].as_i64().unwrap();
    assert!(
        (0..=2).contains(&(exp - token_expires.as_second())),
        "{exp} vs {token_expires}"
    );
    let lease_expires: k8s_openapi::jiff::Timestamp =
        lease["expiresAt"].as_str().unwrap().parse().unwrap();
    assert!(lease_expires <= token_expires);

    // Wider than the Grant: refused before the server is asked.
    let wider = broker
        .request(
            "POST",
            "/v1/leases",
            Some(&token),
            &request(&tenant.owner, "crm", Some(&["contacts.write"])),
        )
        .await
        .unwrap();
    assert_eq!(wider.status, 403, "{:?}", wider.json());

    // Renewal gets a fresh token.
    let id = lease["id"].as_str().unwrap();
    let renewed = broker
        .request(
            "POST",
            &format!("/v1/leases/{id}/renew"),
            Some(&token),
            b"{}",
        )
        .await
        .unwrap();
    let renewed = lease_of(&renewed);
    let fresh = lease_file(&renewed, "access_token");
    assert_ne!(fresh, access_token);
    assert_eq!(hydra.introspect(&fresh).await.unwrap()["active"], true);

    // Revoking the lease revokes its token upstream.
    let renewed_id = renewed["id"].as_str().unwrap();
    let revoked = broker
        .request(
            "DELETE",
            &format!("/v1/leases/{renewed_id}"),
            Some(&token),
            b"",
        )
        .await
        .unwrap();
    assert_eq!(revoked.status, 204, "{:?}", revoked.json());
    assert_eq!(
        hydra.introspect(&fresh).await.unwrap()["active"],
        false,
        "a revoked lease's token no longer works"
    );
    assert!(!lease["id"].as_str().unwrap().contains(&access_token));

    let logs = captured_logs();
    for planted in ["crm-secret-planted-1", &access_token, &fresh] {
        assert!(!logs.contains(planted), "a secret reached the logs");
    }
}

#[tokio::test]
async fn client_secret_post_and_a_private_key_jwt_authenticate_the_client_too() {
    world().await;
    let hydra = hydra().await;
    crm_client(
        &hydra,
        "crm-post",
        "crm-secret-planted-2",
        "client_secret_post",
    )
    .await;
    // private_key_jwt: the server knows the public half of the broker's key.
    let random = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &random,
    )
    .unwrap();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
        &random,
    )
    .unwrap();
    let point = ring::signature::KeyPair::public_key(&pair)
        .as_ref()
        .to_vec();
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "broker-1",
        "x": BASE64URL.encode(&point[1..33]), "y": BASE64URL.encode(&point[33..65]),
    });
    hydra
        .create_client(&ClientSpec {
            client_id: "crm-jwt".into(),
            grant_types: vec!["client_credentials".into()],
            scope: SCOPES.join(" "),
            audience: vec![AUDIENCE.into()],
            token_endpoint_auth_method: Some("private_key_jwt".into()),
            token_endpoint_auth_signing_alg: Some("ES256".into()),
            jwks: Some(json!({"keys": [jwk]})),
            ..ClientSpec::default()
        })
        .await
        .unwrap();
    let tenant = Tenant::create("oauth2-auth").await.unwrap();
    credentials(
        &tenant,
        "post-client",
        &hydra.ca_pem(),
        json!({"client_id": "crm-post", "client_secret": "crm-secret-planted-2"}),
    )
    .await;
    let key_pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        BASE64.encode(pkcs8.as_ref())
    );
    credentials(
        &tenant,
        "jwt-client",
        &hydra.ca_pem(),
        json!({"client_id": "crm-jwt", "private_key": key_pem, "key_id": "broker-1"}),
    )
    .await;
    crm_secret(&tenant, "crm-post", &hydra, "post-client", |source| {
        source.client_authentication = ClientAuthentication::ClientSecretPost;
    })
    .await;
    crm_secret(&tenant, "crm-jwt", &hydra, "jwt-client", |source| {
        source.client_authentication = ClientAuthentication::PrivateKeyJwt;
    })
    .await;
    tenant
        .grant("checkout", &["crm-post", "crm-jwt"])
        .await
        .unwrap();
    let broker = world().await.broker.client().unwrap();
    let (_, token) = tenant.pod("api", "checkout").await.unwrap();
    for (secret, client) in [("crm-post", "crm-post"), ("crm-jwt", "crm-jwt")] {
        let lease = lease_of(
            &issue_once_known(&broker, &token, &request(&tenant.owner, secret, None)).await,
        );
        let introspected = hydra
            .introspect(&lease_file(&lease, "access_token"))
            .await
            .unwrap();
        assert_eq!(introspected["active"], true, "{secret}: {introspected}");
        assert_eq!(introspected["client_id"], client);
    }
}

#[tokio::test]
async fn shared_tokens_make_one_upstream_call_per_scope_set_for_fifty_pods_starting_at_once() {
    world().await;
    let cluster = Cluster::shared().await.unwrap();
    // A broker of this test's own, so its token-request count is this
    // test's alone.
    // Every pod here comes from 127.0.0.1 and one service account, which
    // the default limits would throttle as one client.
    let many = governor::Quota::per_second(std::num::NonZeroU32::new(1000).unwrap());
    let broker_process = RunningBroker::start_limited(
        cluster,
        cluster.config().clone(),
        LeaseKeys::new(&LEASE_KEY, &[]),
        many,
        BrokerLimits {
            reviews: ReviewLimits {
                global: many,
                per_address: many,
            },
            ..BrokerLimits::default()
        },
    )
    .unwrap();
    let broker = broker_process.client().unwrap();
    let (hydra, tenant) = crm_tenant("oauth2-shared", "crm-shared", "crm-secret-planted-3").await;
    crm_secret(&tenant, "crm-shared", &hydra, "crm-client", |source| {
        source.token_sharing = TokenSharing::Shared;
        source.revocation_url = None;
    })
    .await;
    crm_secret(&tenant, "crm-own", &hydra, "crm-client", |source| {
        source.revocation_url = None;
    })
    .await;
    tenant
        .grant("checkout", &["crm-shared", "crm-own"])
        .await
        .unwrap();
    let mut tokens = Vec::new();
    for index in 0..50 {
        let (_, token) = tenant
            .pod(&format!("api-{index}"), "checkout")
            .await
            .unwrap();
        tokens.push(token);
    }
    // Every pod known and granted before the burst.
    issue_once_known(
        &broker,
        &tokens[49],
        &request(&tenant.owner, "crm-own", None),
    )
    .await;
    let before = token_requests(&broker_process);

    let read: &[&str] = &["contacts.read"];
    let shared = join_all(tokens.iter().enumerate().map(|(index, token)| {
        let scopes = if index % 2 == 0 { None } else { Some(read) };
        let body = request(&tenant.owner, "crm-shared", scopes);
        let broker = &broker;
        async move {
            broker
                .request("POST", "/v1/leases", Some(token), &body)
                .await
                .unwrap()
        }
    }))
    .await;
    let coalesced = token_requests(&broker_process) - before;
    let mut issued_tokens = std::collections::BTreeSet::new();
    for reply in &shared {
        issued_tokens.insert(lease_file(&lease_of(reply), "access_token"));
    }
    assert_eq!(
        (coalesced, issued_tokens.len()),
        (2, 2),
        "50 pods, two scope sets: one upstream call and one token each"
    );

    let before = token_requests(&broker_process);
    let own = join_all(tokens.iter().map(|token| {
        let body = request(&tenant.owner, "crm-own", None);
        let broker = &broker;
        async move {
            broker
                .request("POST", "/v1/leases", Some(token), &body)
                .await
                .unwrap()
        }
    }))
    .await;
    assert!(own.iter().all(|reply| reply.status == 200));
    assert_eq!(
        token_requests(&broker_process) - before,
        50,
        "PerLease: a token each"
    );
}

fn token_requests(broker: &RunningBroker) -> u64 {
    broker
        .metrics_text()
        .lines()
        .find_map(|line| line.strip_prefix("ferry_broker_oauth2_token_requests_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

/// Registers `client` for the authorization-code flow with refresh
/// tokens, redirecting to any loopback port (RFC 8252).
async fn delegating_client(hydra: &Hydra, client: &str, secret: &str) {
    hydra
        .create_client(&ClientSpec {
            client_id: client.into(),
            client_secret: Some(secret.into()),
            grant_types: vec!["authorization_code".into(), "refresh_token".into()],
            scope: format!("offline_access {}", SCOPES.join(" ")),
            audience: vec![AUDIENCE.into()],
            redirect_uris: vec!["http://127.0.0.1/callback".into()],
            ..ClientSpec::default()
        })
        .await
        .unwrap();
}

/// Runs `ferry-operator oauth2-consent` for the tenant's BrokeredSecret
/// `name` as its owner would, a person consenting in the (headless)
/// browser; returns what the command printed, stdout and stderr.
async fn consent_with_the_command(tenant: &Tenant, hydra: &Hydra, name: &str) -> String {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
    let cluster = Cluster::shared().await.unwrap();
    let binary = ferry_e2e::workspace_binary("ferry-operator").unwrap();
    let mut command = tokio::process::Command::new(binary)
        .args([
            "oauth2-consent",
            name,
            "--namespace",
            &tenant.owner,
            "--timeout",
            "2m",
        ])
        .env("KUBECONFIG", cluster.kubeconfig())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(command.stderr.take().unwrap()).lines();
    let mut said = String::new();
    let url = loop {
        let line = stderr
            .next_line()
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("the command ended before printing a URL: {said}"));
        said.push_str(&line);
        said.push('\n');
        if let Some(url) = line.trim().strip_prefix("https://") {
            break format!("https://{url}");
        }
    };
    let landed = hydra.authorize_headless(&url).await.unwrap();
    // The browser follows the redirect to the command's loopback listener.
    let rest = landed.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut browser = tokio::net::TcpStream::connect(host).await.unwrap();
    browser
        .write_all(
            format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut page = String::new();
    browser.read_to_string(&mut page).await.unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let output = command.wait_with_output().await.unwrap();
    while let Some(line) = stderr.next_line().await.unwrap() {
        said.push_str(&line);
        said.push('\n');
    }
    said.push_str(&String::from_utf8_lossy(&output.stdout));
    assert!(output.status.success(), "{said}");
    said
}

#[tokio::test]
async fn a_person_consents_once_and_the_broker_holds_the_refresh_token() {
    world().await;
    let hydra = hydra().await;
    delegating_client(&hydra, "crm-person", "crm-secret-planted-7").await;
    let tenant = Tenant::create("oauth2-consent").await.unwrap();
    credentials(
        &tenant,
        "crm-person",
        &hydra.ca_pem(),
        json!({"client_id": "crm-person", "client_secret": "crm-secret-planted-7"}),
    )
    .await;
    crm_secret(&tenant, "crm-delegated", &hydra, "crm-person", |source| {
        source.grant = OAuth2Grant::RefreshToken;
        source.token_sharing = TokenSharing::Shared;
        source.authorization_url = Some(hydra.authorization_url());
    })
    .await;
    let said = consent_with_the_command(&tenant, &hydra, "crm-delegated").await;
    let secrets: Api<Secret> = Api::namespaced(tenant.client.clone(), &tenant.owner);
    let stored = secrets.get("crm-person").await.unwrap().data.unwrap();
    let refresh_token = String::from_utf8(stored["refresh_token"].0.clone()).unwrap();
    assert!(!refresh_token.is_empty());
    assert!(
        !said.contains(&refresh_token),
        "the command printed the token: {said}"
    );
    assert!(said.contains("Stored a refresh token"), "{said}");

    // A pod gets the person's delegated token.
    tenant.grant("checkout", &["crm-delegated"]).await.unwrap();
    let broker = world().await.broker.client().unwrap();
    let (_, token) = tenant.pod("api", "checkout").await.unwrap();
    let body = request(&tenant.owner, "crm-delegated", None);
    let lease = lease_of(&issue_once_known(&broker, &token, &body).await);
    let introspected = hydra
        .introspect(&lease_file(&lease, "access_token"))
        .await
        .unwrap();
    assert_eq!(introspected["active"], true, "{introspected}");
    assert_eq!(introspected["sub"], "user");

    // Hydra does not narrow a refreshed token: a narrower lease is refused
    // rather than handed the person's wider token.
    let policy = testing::access_policy(&tenant.owner, "reporting")
        .service_account(&tenant.app, "reporting")
        .narrowed(secret_access("crm-delegated").scopes(&["contacts.read"]))
        .build();
    grant(&tenant.client, policy).await.unwrap();
    let (_, narrow_token) = tenant.pod("report", "reporting").await.unwrap();
    let refused = eventually("the broker to know the pod and its Grant", WAIT, || async {
        let reply = broker
            .request("POST", "/v1/leases", Some(&narrow_token), &body)
            .await
            .unwrap();
        // Not yet known: 401, or 403 for the missing Grant.
        error_message(&reply)
            .contains("granted scopes")
            .then_some(reply)
    })
    .await;
    assert_eq!(refused.status, 403, "{:?}", refused.json());
    assert!(
        error_message(&refused)
            .contains(r#"granted scopes ["contacts.write"] beyond the lease's ["contacts.read"]"#),
        "{}",
        error_message(&refused)
    );
}

#[tokio::test]
async fn a_rotating_refresh_token_is_spent_once_at_a_time_by_two_racing_broker_replicas() {
    world().await;
    let cluster = Cluster::shared().await.unwrap();
    // Tokens of 40s, leases ending 20s before: a token is fresh for its
    // first 10s, so each round below needs a new one.
    let hydra = Hydra::start(HydraOptions {
        access_token_ttl: Duration::from_secs(40),
    })
    .await
    .unwrap();
    delegating_client(&hydra, "crm-user", "crm-secret-planted-4").await;
    let tenant = Tenant::create("oauth2-refresh").await.unwrap();
    credentials(
        &tenant,
        "crm-user",
        &hydra.ca_pem(),
        json!({"client_id": "crm-user", "client_secret": "crm-secret-planted-4"}),
    )
    .await;
    crm_secret(&tenant, "crm-delegated", &hydra, "crm-user", |source| {
        source.grant = OAuth2Grant::RefreshToken;
        source.token_sharing = TokenSharing::Shared;
        source.min_remaining_lifetime = "1h".into();
        source.authorization_url = Some(hydra.authorization_url());
    })
    .await;
    consent_with_the_command(&tenant, &hydra, "crm-delegated").await;
    let secrets: Api<Secret> = Api::namespaced(tenant.client.clone(), &tenant.owner);
    let refresh_token = || async {
        let data = secrets.get("crm-user").await.unwrap().data.unwrap();
        String::from_utf8(data["refresh_token"].0.clone()).unwrap()
    };
    let first = refresh_token().await;
    tenant.grant("checkout", &["crm-delegated"]).await.unwrap();
    let mut tokens = Vec::new();
    for index in 0..8 {
        tokens.push(
            tenant
                .pod(&format!("api-{index}"), "checkout")
                .await
                .unwrap()
                .1,
        );
    }
    // Two replicas with one lease key, as a Deployment of two runs them.
    let replicas = [
        RunningBroker::start(cluster, LeaseKeys::new(&LEASE_KEY, &[])).unwrap(),
        RunningBroker::start(cluster, LeaseKeys::new(&LEASE_KEY, &[])).unwrap(),
    ];
    let clients: Vec<HttpsClient> = replicas.iter().map(|r| r.client().unwrap()).collect();
    let body = request(&tenant.owner, "crm-delegated", None);
    // Pod i asks replica i % 2; each knows its pods and their Grant.
    for (index, token) in tokens.iter().enumerate() {
        lease_of(&issue_once_known(&clients[index % 2], token, &body).await);
    }
    let spent = || replicas.iter().map(token_requests).sum::<u64>();
    let before = spent();

    // Three rounds of eight issuances at once, half on each replica. Each
    // round's token is stale for the next, so every round spends the
    // refresh token, which hydra rotates and would revoke whole (every
    // token of the chain) if it were ever spent twice.
    let mut rotated = vec![first.clone(), refresh_token().await];
    for round in 1..=3 {
        tokio::time::sleep(Duration::from_secs(11)).await;
        let replies = join_all(tokens.iter().enumerate().map(|(index, token)| {
            let (client, body) = (&clients[index % 2], &body);
            async move {
                client
                    .request("POST", "/v1/leases", Some(token), body)
                    .await
                    .unwrap()
            }
        }))
        .await;
        let issued: std::collections::BTreeSet<String> = replies
            .iter()
            .map(|reply| lease_file(&lease_of(reply), "access_token"))
            .collect();
        assert_eq!(
            issued.len(),
            1,
            "round {round}: one token for both replicas"
        );
        let current = issued.into_iter().next().unwrap();
        let introspected = hydra.introspect(&current).await.unwrap();
        assert_eq!(
            introspected["active"], true,
            "round {round}: {introspected}"
        );
        assert_eq!(introspected["sub"], "user", "a person's delegated token");
        assert_eq!(spent(), before + round, "round {round}: one spend");
        let held = refresh_token().await;
        assert!(
            !rotated.contains(&held),
            "round {round}: the rotated token was stored"
        );
        rotated.push(held);
    }
    let stored = secrets.get("crm-user").await.unwrap();
    assert!(
        stored
            .metadata
            .annotations
            .unwrap_or_default()
            .keys()
            .all(|key| key != "ferry.dev/refresh-token-claim"),
        "no claim is left behind"
    );
    let logs = captured_logs();
    for planted in rotated
        .iter()
        .map(String::as_str)
        .chain(["crm-secret-planted-4"])
    {
        assert!(!logs.contains(planted), "a secret reached the logs");
    }
}

#[tokio::test]
async fn a_pods_token_is_revoked_upstream_when_the_pod_goes_away_without_revoking() {
    world().await;
    let (hydra, tenant) = crm_tenant("oauth2-gone", "crm-gone", "crm-secret-planted-5").await;
    crm_secret(&tenant, "crm", &hydra, "crm-client", |_| {}).await;
    tenant.grant("checkout", &["crm"]).await.unwrap();
    let broker = world().await.broker.client().unwrap();
    let (_, token) = tenant.pod("api", "checkout").await.unwrap();
    let lease =
        lease_of(&issue_once_known(&broker, &token, &request(&tenant.owner, "crm", None)).await);
    let access_token = lease_file(&lease, "access_token");
    assert_eq!(
        hydra.introspect(&access_token).await.unwrap()["active"],
        true
    );

    vanish_and_await_revocation(&tenant, || hydra.introspect(&access_token)).await;
}

#[tokio::test]
async fn a_server_that_is_down_or_refuses_is_named_and_the_token_already_out_keeps_working() {
    world().await;
    let (hydra, tenant) = crm_tenant("oauth2-down", "crm-down", "crm-secret-planted-6").await;
    credentials(
        &tenant,
        "wrong-client",
        &hydra.ca_pem(),
        json!({"client_id": "crm-down", "client_secret": "not-the-secret-planted"}),
    )
    .await;
    crm_secret(&tenant, "crm", &hydra, "crm-client", |_| {}).await;
    crm_secret(&tenant, "crm-wrong", &hydra, "wrong-client", |_| {}).await;
    // Nothing listens there: a port just released on loopback.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("https://{}/oauth2/token", closed.local_addr().unwrap());
    drop(closed);
    crm_secret(&tenant, "crm-nowhere", &hydra, "crm-client", |source| {
        source.token_url = closed_url.clone();
    })
    .await;
    // Without caKey the system's roots must vouch for the server: they
    // do not know the test's CA.
    crm_secret(&tenant, "crm-untrusted", &hydra, "crm-client", |source| {
        source.ca_key = None;
    })
    .await;
    tenant
        .grant(
            "checkout",
            &["crm", "crm-wrong", "crm-nowhere", "crm-untrusted"],
        )
        .await
        .unwrap();
    let broker = world().await.broker.client().unwrap();
    let (_, token) = tenant.pod("api", "checkout").await.unwrap();

    let wrong = issue_once_known(&broker, &token, &request(&tenant.owner, "crm-wrong", None)).await;
    assert_eq!(wrong.status, 400, "{:?}", wrong.json());
    assert_eq!(
        error_message(&wrong),
        format!(
            "token endpoint {} refused the request: 401 invalid_client",
            hydra.token_url()
        )
    );
    let nowhere = issue_once_known(
        &broker,
        &token,
        &request(&tenant.owner, "crm-nowhere", None),
    )
    .await;
    assert_eq!(nowhere.status, 503, "{:?}", nowhere.json());
    assert!(
        error_message(&nowhere).starts_with(&format!("{closed_url}: cannot connect")),
        "{}",
        error_message(&nowhere)
    );

    let untrusted = issue_once_known(
        &broker,
        &token,
        &request(&tenant.owner, "crm-untrusted", None),
    )
    .await;
    assert_eq!(untrusted.status, 503, "{:?}", untrusted.json());
    assert!(
        error_message(&untrusted).contains("TLS handshake failed"),
        "{}",
        error_message(&untrusted)
    );

    let lease =
        lease_of(&issue_once_known(&broker, &token, &request(&tenant.owner, "crm", None)).await);
    let access_token = lease_file(&lease, "access_token");
    hydra.pause().unwrap();
    let id = lease["id"].as_str().unwrap();
    let renewal = broker
        .request(
            "POST",
            &format!("/v1/leases/{id}/renew"),
            Some(&token),
            b"{}",
        )
        .await
        .unwrap();
    assert_eq!(renewal.status, 503, "{:?}", renewal.json());
    assert!(
        error_message(&renewal).contains("did not answer within"),
        "{}",
        error_message(&renewal)
    );
    hydra.resume().unwrap();
    assert_eq!(
        hydra.introspect(&access_token).await.unwrap()["active"],
        true,
        "a failed renewal takes nothing away"
    );

    // The schema refuses a token URL that is not https.
    let mut plain = tenant
        .brokered_secret("crm-plain")
        .oauth2("http://127.0.0.1:1/token", "crm-client", &[AUDIENCE])
        .build();
    plain.spec.source.oauth2.as_mut().unwrap().ca_key = None;
    let refused = ferry_e2e::create_brokered_secret(&tenant.client, &plain)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("tokenUrl"), "{refused}");

    for reply in [&wrong, &nowhere, &untrusted, &renewal] {
        let body = String::from_utf8_lossy(&reply.body);
        assert!(
            !body.contains("planted"),
            "an answer echoed a secret: {body}"
        );
    }
    let logs = captured_logs();
    assert!(!logs.contains("crm-secret-planted-6") && !logs.contains(&access_token));
}

/// What the broker's identity tokens are for: the exchanging server alone.
const EXCHANGE_AUDIENCE: &str = "https://crm.example/token-exchange";

/// An oidc-provider trusting the broker's identity tokens (its issuer and
/// JWKS as the broker serves them, for [`EXCHANGE_AUDIENCE`]), with the
/// client `crm-exchange` that may exchange them for the CRM's scopes.
async fn exchanging_server(broker: &HttpsClient, client_secret: &str) -> OidcProvider {
    let jwks = broker
        .request("GET", "/v1/jwks", None, b"")
        .await
        .unwrap()
        .json()
        .unwrap();
    OidcProvider::start(OidcProviderOptions {
        clients: vec![json!({
            "client_id": "crm-exchange",
            "client_secret": client_secret,
            "grant_types": [TOKEN_EXCHANGE_GRANT],
            "scope": SCOPES.join(" "),
            "token_endpoint_auth_method": "client_secret_basic",
        })],
        token_exchange: Some(TokenExchangeTrust {
            subject_issuer: world().await.broker.url(),
            subject_audience: EXCHANGE_AUDIENCE.into(),
            subject_jwks: jwks,
        }),
        ..OidcProviderOptions::default()
    })
    .await
    .expect("oidc-provider starts")
}

#[tokio::test]
async fn a_token_exchange_gets_a_token_naming_the_pods_service_account_narrowed_and_revoked() {
    world().await;
    let broker = world().await.broker.client().unwrap();
    let server = exchanging_server(&broker, "crm-exchange-planted-7").await;
    let tenant = Tenant::create("oauth2-exchange").await.unwrap();
    credentials(
        &tenant,
        "crm-client",
        &server.ca_pem(),
        json!({"client_id": "crm-exchange", "client_secret": "crm-exchange-planted-7"}),
    )
    .await;
    // The pod's own token, and the same for an audience the server does
    // not accept.
    for (name, audience) in [
        ("crm", EXCHANGE_AUDIENCE),
        ("crm-stranger", "https://someone-else.example"),
    ] {
        let urls = (server.token_url(), server.revocation_url());
        oauth2_secret(&tenant, name, urls, "crm-client", |source| {
            source.grant = OAuth2Grant::TokenExchange;
            source.token_exchange = Some(ferry_api::resources::TokenExchange {
                subject_token_audience: audience.into(),
            });
        })
        .await;
    }
    let policy = testing::access_policy(&tenant.owner, "checkout")
        .service_account(&tenant.app, "checkout")
        .narrowed(secret_access("crm").scopes(&["contacts.read"]))
        .narrowed(secret_access("crm-stranger"))
        .build();
    grant(&tenant.client, policy).await.unwrap();
    let (_, token) = tenant.pod("api", "checkout").await.unwrap();

    let lease =
        lease_of(&issue_once_known(&broker, &token, &request(&tenant.owner, "crm", None)).await);
    let access_token = lease_file(&lease, "access_token");
    let introspected = server.introspect(&access_token).await.unwrap();
    assert_eq!(introspected["active"], true, "{introspected}");
    assert_eq!(
        introspected["sub"],
        format!("system:serviceaccount:{}:checkout", tenant.app),
        "the token is the pod's own, not the client's"
    );
    assert_eq!(introspected["client_id"], "crm-exchange");
    assert_eq!(
        introspected["scope"], "contacts.read",
        "the server issued the policy's narrowing"
    );
    assert_eq!(introspected["aud"], AUDIENCE);

    // Renewal exchanges again: a fresh token for the same pod.
    let id = lease["id"].as_str().unwrap();
    let renewed = lease_of(
        &broker
            .request(
                "POST",
                &format!("/v1/leases/{id}/renew"),
                Some(&token),
                b"{}",
            )
            .await
            .unwrap(),
    );
    let fresh = lease_file(&renewed, "access_token");
    assert_ne!(fresh, access_token);
    assert_eq!(
        server.introspect(&fresh).await.unwrap()["sub"],
        introspected["sub"]
    );

    // A server that does not take the broker's word for the pod.
    let refused = issue_once_known(
        &broker,
        &token,
        &request(&tenant.owner, "crm-stranger", None),
    )
    .await;
    assert_eq!(refused.status, 400, "{:?}", refused.json());
    assert_eq!(
        error_message(&refused),
        format!(
            "token endpoint {} refused the request: 400 invalid_grant",
            server.token_url()
        )
    );

    // The pod goes away: its token is revoked upstream.
    vanish_and_await_revocation(&tenant, || server.introspect(&fresh)).await;

    let logs = captured_logs() + &server.log();
    for planted in ["crm-exchange-planted-7", &access_token, &fresh] {
        assert!(!logs.contains(planted), "a secret reached the logs");
    }
}

#[tokio::test]
async fn audiences_go_out_as_resource_indicators_to_a_server_that_ignores_audience() {
    world().await;
    // node-oidc-provider drops `audience` on client_credentials and takes
    // RFC 8707's `resource` instead.
    let server = OidcProvider::start(OidcProviderOptions {
        clients: vec![json!({
            "client_id": "crm-resource",
            "client_secret": "crm-resource-planted-8",
            "grant_types": ["client_credentials"],
            "scope": SCOPES.join(" "),
            "token_endpoint_auth_method": "client_secret_basic",
        })],
        ..OidcProviderOptions::default()
    })
    .await
    .expect("oidc-provider starts");
    let tenant = Tenant::create("oauth2-resource").await.unwrap();
    credentials(
        &tenant,
        "crm-client",
        &server.ca_pem(),
        json!({"client_id": "crm-resource", "client_secret": "crm-resource-planted-8"}),
    )
    .await;
    let urls = (server.token_url(), server.revocation_url());
    oauth2_secret(&tenant, "crm", urls, "crm-client", |source| {
        source.audience_parameter = AudienceParameter::Resource;
    })
    .await;
    let policy = testing::access_policy(&tenant.owner, "checkout")
        .service_account(&tenant.app, "checkout")
        .narrowed(secret_access("crm").scopes(&["contacts.read"]))
        .build();
    grant(&tenant.client, policy).await.unwrap();
    let broker = world().await.broker.client().unwrap();
    let (_, token) = tenant.pod("api", "checkout").await.unwrap();

    let lease =
        lease_of(&issue_once_known(&broker, &token, &request(&tenant.owner, "crm", None)).await);
    let introspected = server
        .introspect(&lease_file(&lease, "access_token"))
        .await
        .unwrap();
    assert_eq!(introspected["active"], true, "{introspected}");
    assert_eq!(
        introspected["aud"], AUDIENCE,
        "the resource became the audience"
    );
    assert_eq!(introspected["scope"], "contacts.read");
}
