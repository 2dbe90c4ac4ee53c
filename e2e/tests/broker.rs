//! The broker over real TLS against a real apiserver: a granted pod gets
//! a kubernetesSecret lease, renews and revokes it, each decision one
//! audit line; every refusal has its status and reason; and the planted
//! secret value never appears in a log line. With exactly its documented
//! RBAC it does its job, and the admission policy narrows its Secret
//! updates to what its refresh-token custody writes into a brokerable
//! Secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::Engine as _;
use ferry_api::checks::oauth2_keys::REFRESH_TOKEN;
use ferry_api::resources::JwtAlgorithm;
use ferry_api::testing::{self, secret_access};
use ferry_broker::jwt_keys::parse_rotation_period;
use ferry_broker::keys::{refresh_jwt_keys, refresh_lease_keys};
use ferry_broker::lease_id::LeaseKeys;
use ferry_broker::lease_id::{CLAIMS_VERSION, LeaseClaims};
use ferry_broker::lease_keys::parse_lease_key_rotation_period;
use ferry_broker::providers::ProviderError;
use ferry_broker::providers::oauth2::custody::Custody;
use ferry_broker::providers::oauth2::token::{Refused, Token};
use ferry_broker::seal::Seal;
use ferry_contract::{
    BROKER_JWT_KEY_SECRET, BROKERABLE, BROKERABLE_LABEL, CURRENT_ACCESS_TOKEN_KEY,
    REFRESH_TOKEN_CLAIM_ANNOTATION, ROTATED_AT_ANNOTATION,
};
use ferry_e2e::https_client::{HttpsClient, HttpsReply};
use ferry_e2e::{
    Cluster, LEASE_KEY, RunningBroker, Tenant, World, audit_lines, capture_logs, captured_logs,
    create_object, create_resource, eventually, grant, install_crds, pod_bound_token,
};
use ferry_operator::admission::broker_secrets::{BROKER_SECRET_POLICY_NAME, broker_username};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use zeroize::Zeroizing;

const WAIT: Duration = Duration::from_secs(60);

/// The value planted in the Secret behind the BrokeredSecret: it must reach
/// the pod and no log line.
const PLANTED: &str = "planted-secret-value-7f3a9c";

async fn world() -> &'static World {
    World::shared()
        .await
        .expect("the cluster, operator and broker")
}

/// A secrets namespace with Secret + BrokeredSecret `orders-api-key`, a JWT
/// `orders-jwt` and a PostgreSQL `orders-db`; an app namespace with service
/// accounts `checkout` (granted all three; the key for at most 30m, the JWT
/// narrowed to audience `orders` and scope `read`) and `intruder` (granted
/// nothing).
async fn scenario(prefix: &str) -> Tenant {
    world().await;
    let tenant = Tenant::create(prefix).await.unwrap();
    tenant
        .secret("orders-api-key", json!({"token": PLANTED}))
        .await
        .unwrap();
    for secret in [
        tenant
            .brokered_secret("orders-api-key")
            .kubernetes_secret("orders-api-key"),
        tenant
            .brokered_secret("orders-jwt")
            .jwt(&["orders", "billing"])
            .scopes(&["read", "write"])
            .claim("team", "payments"),
        tenant
            .brokered_secret("orders-db")
            .postgres("db-admin", "dsn"),
    ] {
        tenant.create_brokered_secret(secret).await.unwrap();
    }
    let policy = testing::access_policy(&tenant.owner, "checkout")
        .service_account(&tenant.app, "checkout")
        .narrowed(secret_access("orders-api-key").max_ttl("30m"))
        .narrowed(
            secret_access("orders-jwt")
                .audience(&["orders"])
                .scopes(&["read"]),
        )
        .secret("orders-db")
        .build();
    grant(&tenant.client, policy).await.unwrap();
    create_object::<ServiceAccount>(
        &tenant.client,
        &tenant.app,
        json!({"metadata": {"name": "intruder"}}),
    )
    .await
    .unwrap();
    tenant
}

fn lease_request(namespace: &str, name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"secrets": [{"namespace": namespace, "name": name}]})).unwrap()
}

/// Issues, retrying while the broker's indexes catch up with a pod or a
/// Grant just created (401 unknown pod, 403 no Grant yet).
async fn issue_when_ready(broker: &HttpsClient, token: &str, body: &[u8]) -> HttpsReply {
    eventually("the broker to know the pod and its Grant", WAIT, || async {
        let reply = broker
            .request("POST", "/v1/leases", Some(token), body)
            .await
            .unwrap();
        (reply.status == 200).then_some(reply)
    })
    .await
}

/// Backdates the creation time of every `next` key in the key Secret
/// `namespace/name` by 40 days, so a 30-day rotation is due.
async fn age_next_keys(client: &Client, namespace: &str, name: &str) {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let mut secret = secrets.get(name).await.unwrap();
    let old = k8s_openapi::jiff::Timestamp::now()
        - k8s_openapi::jiff::SignedDuration::from_hours(40 * 24);
    for (key, value) in secret.data.as_mut().unwrap().iter_mut() {
        if key.ends_with("next-created") {
            *value = k8s_openapi::ByteString(old.to_string().into_bytes());
        }
    }
    secrets
        .replace(name, &Default::default(), &secret)
        .await
        .unwrap();
}

/// Claims of a lease id, for sealing and opening across key rotations.
fn sample_claims() -> LeaseClaims {
    LeaseClaims {
        version: CLAIMS_VERSION,
        secret_namespace: "payments".into(),
        secret_name: "orders-db".into(),
        pod_uid: "0b6d3b38-4a0e-4f43-9d0b-3c2d6c8a9e11".into(),
        handle: String::new(),
        issued_at: 1_800_000_000,
        expires_at: 1_800_000_900,
        max_expires_at: 1_800_003_600,
        audience: vec![],
        scopes: None,
        serial: "00112233445566778899aabbccddeeff".into(),
    }
}

fn message(reply: &HttpsReply) -> String {
    let body = reply.json().unwrap();
    assert_eq!(body["error"]["code"], reply.status, "{body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_granted_pod_gets_renews_and_revokes_a_kubernetes_secret_lease() {
    let tenant = scenario("lease").await;
    let secrets = tenant.owner.clone();
    let app = tenant.app.clone();
    let broker = world().await.broker.client().unwrap();
    let (_, token) = tenant.pod("api", "checkout").await.unwrap();

    let issued =
        issue_when_ready(&broker, &token, &lease_request(&secrets, "orders-api-key")).await;
    let lease = issued.json().unwrap()["leases"][0].clone();
    let content = base64::engine::general_purpose::STANDARD
        .decode(lease["files"]["token"].as_str().unwrap())
        .unwrap();
    assert_eq!(content, PLANTED.as_bytes());
    assert_eq!(
        lease["secret"],
        json!({"namespace": secrets, "name": "orders-api-key"})
    );
    assert_eq!(
        lease["ttl"], 900,
        "the secret's default ttl, within the grant's 30m"
    );
    assert_eq!(lease["renewAfter"], 600);
    let id = lease["id"].as_str().unwrap();

    let renewed = broker
        .request("POST", &format!("/v1/leases/{id}/renew"), Some(&token), b"")
        .await
        .unwrap();
    assert_eq!(renewed.status, 200, "{:?}", renewed.json());
    let renewed = renewed.json().unwrap()["leases"][0].clone();
    // The renewed lease runs from now for the same ttl, with the current
    // content of the Secret.
    assert_eq!(renewed["ttl"], 900);
    assert!(renewed["expiresAt"].as_str() >= lease["expiresAt"].as_str());
    assert_eq!(renewed["files"], lease["files"]);

    let revoked = broker
        .request("DELETE", &format!("/v1/leases/{id}"), Some(&token), b"")
        .await
        .unwrap();
    assert_eq!(revoked.status, 204);

    let logs = captured_logs();
    for action in ["issue", "renew", "revoke"] {
        assert!(
            logs.lines()
                .any(|line| line.contains("\"target\":\"ferry::audit\"")
                    && line.contains(&format!("\"action\":\"{action}\""))
                    && line.contains("\"result\":\"allowed\"")
                    && line.contains(&format!("system:serviceaccount:{app}:checkout"))),
            "no audit line for {action}"
        );
    }
}

#[tokio::test]
async fn refusals_carry_their_status_and_reason() {
    let tenant = scenario("refuse").await;
    let client = tenant.client.clone();
    let secrets = tenant.owner.clone();
    let app = tenant.app.clone();
    let broker = world().await.broker.client().unwrap();
    let (_, token) = tenant.pod("api", "checkout").await.unwrap();
    let granted = lease_request(&secrets, "orders-api-key");
    let issued = issue_when_ready(&broker, &token, &granted).await;
    let id = issued.json().unwrap()["leases"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let post = |token: Option<String>, body: Vec<u8>| {
        let broker = broker.clone();
        async move {
            broker
                .request("POST", "/v1/leases", token.as_deref(), &body)
                .await
                .unwrap()
        }
    };

    // 403: a service account without a Grant, named in the message.
    let (_, intruder) = tenant.pod("intruder", "intruder").await.unwrap();
    let refused = eventually("the intruder pod to be known", WAIT, || async {
        let reply = post(Some(intruder.clone()), granted.clone()).await;
        (reply.status == 403).then_some(reply)
    })
    .await;
    assert!(
        message(&refused).contains(&format!(
            "service account {app}/intruder has no Grant for BrokeredSecret {secrets}/orders-api-key"
        )),
        "{}",
        message(&refused)
    );

    // 403: wider than the Grant.
    let wider = serde_json::to_vec(
        &json!({"secrets": [{"namespace": secrets, "name": "orders-api-key", "ttl": "2h"}]}),
    )
    .unwrap();
    let reply = post(Some(token.clone()), wider).await;
    assert_eq!(reply.status, 403);
    assert!(message(&reply).contains("longer than the grant's maxTtl 30m"));

    // 400: malformed JSON, and an unknown field.
    let reply = post(Some(token.clone()), b"{\"secrets\": [".to_vec()).await;
    assert_eq!(reply.status, 400);
    assert!(message(&reply).contains("not a lease request"));
    let typo = serde_json::to_vec(
        &json!({"secrets": [{"namespace": secrets, "name": "orders-api-key", "tll": "5m"}]}),
    )
    .unwrap();
    let reply = post(Some(token.clone()), typo).await;
    assert_eq!(reply.status, 400);
    assert!(message(&reply).contains("unknown field `tll`"));

    // 413: an oversized body, refused on its declared length alone.
    let status = broker
        .raw_status(
            format!(
                "POST /v1/leases HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                65 * 1024
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(status, 413);

    // 401: no token, a token for another audience.
    let reply = post(None, granted.clone()).await;
    assert_eq!(reply.status, 401);
    let api_pod = Api::<Pod>::namespaced(client.clone(), &app)
        .get("api")
        .await
        .unwrap();
    let other = pod_bound_token(&client, &api_pod, "https://kubernetes.default.svc", 600)
        .await
        .unwrap();
    let reply = post(Some(other), granted.clone()).await;
    assert_eq!(reply.status, 401);
    assert!(message(&reply).contains("not accepted for audience ferry.dev/broker"));

    // 400: a tampered lease id.
    let mut tampered = id.clone().into_bytes();
    tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let reply = broker
        .request(
            "POST",
            &format!("/v1/leases/{tampered}/renew"),
            Some(&token),
            b"",
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 400);
    assert!(message(&reply).contains("lease id"), "{}", message(&reply));

    // 403: another pod replaying this pod's lease id.
    let (_, twin) = tenant.pod("twin", "checkout").await.unwrap();
    issue_when_ready(&broker, &twin, &granted).await;
    let reply = broker
        .request("POST", &format!("/v1/leases/{id}/renew"), Some(&twin), b"")
        .await
        .unwrap();
    assert_eq!(reply.status, 403);
    assert!(message(&reply).contains("belongs to another pod"));

    // 404: the backend object behind the secret is missing.
    let reply = post(Some(token.clone()), lease_request(&secrets, "orders-db")).await;
    assert_eq!(reply.status, 404);
    assert!(message(&reply).contains("db-admin not found"));

    // 403: a JWT audience the Grant narrowed away.
    let billing = serde_json::to_vec(
        &json!({"secrets": [{"namespace": secrets, "name": "orders-jwt", "audience": ["billing"]}]}),
    )
    .unwrap();
    let reply = post(Some(token.clone()), billing).await;
    assert_eq!(reply.status, 403);
    assert!(message(&reply).contains("audience [\"billing\"] is not granted"));

    // 401: the pod is gone; its token no longer works.
    Api::<Pod>::namespaced(client.clone(), &app)
        .delete("api", &DeleteParams::default())
        .await
        .unwrap();
    let reply = eventually("the deleted pod to be refused", WAIT, || async {
        let reply = post(Some(token.clone()), granted.clone()).await;
        (reply.status == 401).then_some(reply)
    })
    .await;
    assert!(message(&reply).contains("no longer exists"));

    // Every refusal above was audited, and nothing leaked.
    // Every refusal above was audited as this test's pods' own.
    let denied = |reason: &str| {
        audit_lines(|line| {
            line["result"] == "denied"
                && line["reason"] == reason
                && line["pod"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with(&format!("{app}/"))
        })
        .len()
    };
    for reason in ["forbidden", "bad_request", "not_found"] {
        assert!(
            denied(reason) > 0,
            "no {reason} refusal of {app}'s pods audited"
        );
    }
    let logs = captured_logs();
    assert!(
        !logs.contains(PLANTED),
        "the planted secret appears in a log line"
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(PLANTED);
    assert!(
        !logs.contains(&encoded),
        "the planted secret's base64 appears in a log line"
    );
    assert!(
        !logs.contains(&token),
        "a bearer token appears in a log line"
    );
}

#[tokio::test]
async fn renewal_is_refused_once_the_policy_is_removed() {
    let tenant = scenario("unpolicy").await;
    let client = tenant.client.clone();
    let secrets = tenant.owner.clone();
    let broker = world().await.broker.client().unwrap();
    let (_, token) = tenant.pod("api", "checkout").await.unwrap();
    let issued =
        issue_when_ready(&broker, &token, &lease_request(&secrets, "orders-api-key")).await;
    let id = issued.json().unwrap()["leases"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    Api::<ferry_api::resources::AccessPolicy>::namespaced(client.clone(), &secrets)
        .delete("checkout", &DeleteParams::default())
        .await
        .unwrap();
    let reply = eventually("renewal to be refused", WAIT, || async {
        let reply = broker
            .request("POST", &format!("/v1/leases/{id}/renew"), Some(&token), b"")
            .await
            .unwrap();
        (reply.status == 403).then_some(reply)
    })
    .await;
    assert!(message(&reply).contains("has no Grant"));
}

#[tokio::test]
async fn replicas_racing_to_rotate_the_lease_key_rotate_once_and_open_each_others_ids() {
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    let ns = cluster.create_namespace("lease-rotation").await.unwrap();
    let period = parse_lease_key_rotation_period("30d").unwrap();
    let first = refresh_lease_keys(&client, &ns, "keys", period)
        .await
        .unwrap();
    let fingerprint_key = first.fingerprint.clone().unwrap();
    // Two replicas on the keys as created: each opens what the other seals.
    let (one, two) = (first.lease_keys().unwrap(), first.lease_keys().unwrap());
    let sealed_before = one.seal(&sample_claims());
    assert_eq!(two.open(&sealed_before).unwrap(), sample_claims());

    age_next_keys(&client, &ns, "keys").await;
    let replicas =
        futures::future::join_all((0..4).map(|_| refresh_lease_keys(&client, &ns, "keys", period)))
            .await;
    let created: Vec<_> = replicas
        .iter()
        .map(|keys| keys.as_ref().unwrap().created())
        .collect();
    assert!(
        created.iter().all(|c| *c == created[0]),
        "rotated more than once: {created:?}"
    );
    let rotated = replicas[0].as_ref().unwrap();
    // Rotated once: the old next seals, the old current opens as previous.
    let key =
        |slot: &Option<ferry_broker::key_slots::StoredKey>| slot.as_ref().unwrap().key.clone();
    assert_eq!(key(&rotated.slots.current), key(&first.slots.next));
    assert_eq!(key(&rotated.slots.previous), key(&first.slots.current));
    assert_ne!(key(&rotated.slots.next), key(&first.slots.next));
    assert_eq!(rotated.fingerprint.as_deref(), Some(&*fingerprint_key));

    // Replica one adopts the rotation; two has not re-read the Secret yet.
    assert!(rotated.install(&one));
    let sealed_after = one.seal(&sample_claims());
    assert_eq!(
        two.open(&sealed_after).unwrap(),
        sample_claims(),
        "next opens before it seals"
    );
    assert_eq!(
        one.open(&sealed_before).unwrap(),
        sample_claims(),
        "previous still opens"
    );
    let stored = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("keys")
        .await
        .unwrap();
    let mut names: Vec<_> = stored.data.unwrap().into_keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "current",
            "current-created",
            "fingerprint",
            "next",
            "next-created",
            "previous",
            "previous-created"
        ]
    );
}

/// A private cluster with ferry's CRDs and admission policies, ferry's
/// namespace and the broker's RBAC as `rbac/broker.yaml` has it; and a
/// client config that acts as the broker's service account.
async fn cluster_with_broker_rbac() -> (Cluster, kube::Config) {
    let cluster = Cluster::start().await.unwrap();
    install_crds(&cluster.client().unwrap()).await.unwrap();
    let rbac = concat!(env!("CARGO_MANIFEST_DIR"), "/../rbac/broker.yaml");
    for args in [
        vec!["create", "namespace", "ferry-system"],
        vec!["apply", "-f", rbac],
    ] {
        let output = cluster.kubectl().args(&args).output().unwrap();
        assert!(output.status.success(), "kubectl {args:?}: {output:?}");
    }
    let mut as_broker = cluster.config().clone();
    as_broker.auth_info.impersonate = Some(broker_username("ferry-system"));
    as_broker.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        "system:serviceaccounts:ferry-system".into(),
    ]);
    (cluster, as_broker)
}

#[tokio::test]
async fn broker_does_its_job_with_exactly_its_documented_rbac() {
    capture_logs();
    let (cluster, as_broker) = cluster_with_broker_rbac().await;
    let client = cluster.client().unwrap();
    let subject = format!("--as={}", broker_username("ferry-system"));
    for (verb, resource, namespace, expected) in [
        ("create", "tokenreviews.authentication.k8s.io", None, "yes"),
        ("watch", "grants.ferry.dev", None, "yes"),
        ("get", "secrets", Some("default"), "yes"),
        ("list", "secrets", None, "no"),
        ("watch", "secrets", None, "no"),
        ("create", "secrets", Some("default"), "no"),
        ("create", "secrets", Some("ferry-system"), "yes"),
        // Rotated refresh tokens are written back (oauth2 sources); the
        // ferry-broker-secret-writes admission policy narrows it.
        ("update", "secrets", Some("default"), "yes"),
        (
            "update",
            "secrets/ferry-broker-jwt-keys",
            Some("ferry-system"),
            "yes",
        ),
        ("watch", "configmaps", Some("ferry-system"), "yes"),
        ("create", "configmaps", Some("ferry-system"), "yes"),
        ("delete", "configmaps", Some("ferry-system"), "yes"),
        ("update", "configmaps", Some("ferry-system"), "no"),
        ("create", "configmaps", Some("default"), "no"),
        ("create", "pods/exec", Some("default"), "no"),
        ("create", "grants.ferry.dev", None, "no"),
    ] {
        let mut args = vec!["auth", "can-i", verb, resource, subject.as_str()];
        match namespace {
            Some(ns) => args.extend(["-n", ns]),
            None => args.push("--all-namespaces"),
        }
        let output = cluster.kubectl().args(&args).output().unwrap();
        let answer = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            answer.trim(),
            expected,
            "can the broker {verb} {resource} in {namespace:?}?"
        );
    }

    let broker_client = Client::try_from(as_broker.clone()).unwrap();
    let lease_period = parse_lease_key_rotation_period("30d").unwrap();
    let (keys, _) = ferry_broker::keys::load_or_create_lease_keys(
        &broker_client,
        "ferry-system",
        "ferry-broker-lease-key",
        lease_period,
    )
    .await
    .unwrap();
    // The lease key: rotated (an update) under the same role, and the ids
    // the keys in use sealed still open with the rotated ones.
    let sealed_before = keys.seal(&sample_claims());
    age_next_keys(&client, "ferry-system", "ferry-broker-lease-key").await;
    let rotated_lease_keys = refresh_lease_keys(
        &broker_client,
        "ferry-system",
        "ferry-broker-lease-key",
        lease_period,
    )
    .await
    .unwrap();
    assert!(rotated_lease_keys.install(&keys));
    assert_eq!(keys.open(&sealed_before).unwrap(), sample_claims());
    // The JWT keys: created, then rotated (an update) under the same role;
    // the policy narrowing the broker's Secret updates leaves them alone.
    let jwt_keys = |period: &str| {
        let client = broker_client.clone();
        let period = parse_rotation_period(period).unwrap();
        async move {
            refresh_jwt_keys(&client, "ferry-system", "ferry-broker-jwt-keys", period)
                .await
                .unwrap()
                .signing_keys()
                .unwrap()
        }
    };
    let created = jwt_keys("30d").await;
    age_next_keys(&client, "ferry-system", "ferry-broker-jwt-keys").await;
    let rotated = jwt_keys("30d").await;
    assert_eq!(
        rotated.signing_kid(JwtAlgorithm::EdDSA),
        created.kids().get(3).copied(),
        "the next EdDSA key signs after a rotation"
    );
    let broker = RunningBroker::start_as(
        &cluster,
        as_broker,
        keys,
        ferry_broker::routes::default_rate_limit(),
    )
    .unwrap();
    let https = broker.client().unwrap();

    let tenant = Tenant::create_in(&cluster, "rbac").await.unwrap();
    let (owner, app) = (tenant.owner.clone(), tenant.app.clone());
    tenant
        .secret("api-key", json!({"token": PLANTED}))
        .await
        .unwrap();
    tenant
        .create_brokered_secret(
            tenant
                .brokered_secret("api-key")
                .kubernetes_secret("api-key"),
        )
        .await
        .unwrap();
    // A Grant as the operator would write it (no operator runs here).
    ferry_e2e::direct_grant(
        &client,
        ferry_e2e::Subject {
            namespace: &app,
            name: "checkout",
        },
        &owner,
        "api-key",
        "p",
        "api-key-for-checkout",
    )
    .await
    .unwrap();
    create_object::<ServiceAccount>(&client, &app, json!({"metadata": {"name": "checkout"}}))
        .await
        .unwrap();
    let (_, token) = tenant.pod("api", "checkout").await.unwrap();
    let issued = issue_when_ready(&https, &token, &lease_request(&owner, "api-key")).await;
    let lease = issued.json().unwrap()["leases"][0].clone();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(lease["files"]["token"].as_str().unwrap())
            .unwrap(),
        PLANTED.as_bytes()
    );
    // Revocation is recorded, and checked at renewal, under the same rules.
    let id = lease["id"].as_str().unwrap();
    let revoked = https
        .request("DELETE", &format!("/v1/leases/{id}"), Some(&token), b"")
        .await
        .unwrap();
    assert_eq!(revoked.status, 204, "{:?}", revoked.json());
    let renewed = https
        .request("POST", &format!("/v1/leases/{id}/renew"), Some(&token), b"")
        .await
        .unwrap();
    assert_eq!(renewed.status, 409, "{:?}", renewed.json());
}

/// Reads Secret `name` through `secrets`, applies `edit` and replaces it
/// under the resourceVersion it read, as the broker's custody does.
async fn replace_secret(
    secrets: &Api<Secret>,
    name: &str,
    edit: impl FnOnce(&mut Secret),
) -> Result<Secret, kube::Error> {
    let mut secret = secrets.get(name).await?;
    edit(&mut secret);
    secrets.replace(name, &PostParams::default(), &secret).await
}

/// The message of the broker-secret-writes policy's refusal in `result`.
fn policy_refusal(result: Result<Secret, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(status))
            if status.code == 403 && status.message.contains(BROKER_SECRET_POLICY_NAME) =>
        {
            status.message.clone()
        }
        other => panic!("expected the policy's 403, got {other:?}"),
    }
}

fn set_data(secret: &mut Secret, key: &str, value: &str) {
    secret
        .data
        .get_or_insert_default()
        .insert(key.into(), ByteString(value.as_bytes().to_vec()));
}

/// Edits of a Secret, each boxed so a table can hold several.
type Edit = Box<dyn FnOnce(&mut Secret) + Send>;

/// Spends the refresh token of Secret `namespace/name` through the
/// broker's own `custody`, checking it is `expected`; the server answers
/// with a token rotating it to `rotated`, or (none) refuses.
async fn spend_through_custody(
    custody: &Custody,
    namespace: &str,
    name: &str,
    expected: &str,
    rotated: Option<&str>,
) -> Result<Token, Refused> {
    let now = || k8s_openapi::jiff::Timestamp::now().as_second();
    let spend = |refresh_token: Zeroizing<Vec<u8>>, _| async move {
        assert_eq!(refresh_token.as_slice(), expected.as_bytes());
        let rotated = rotated
            .ok_or_else(|| Refused::Request(ProviderError::Invalid("invalid_grant".into())))?;
        Ok(Token {
            access_token: Zeroizing::new(format!("access-from-{expected}")),
            token_type: "Bearer".into(),
            issued_at: now(),
            expires_at: now() + 3600,
            scope: None,
            refresh_token: Some(Zeroizing::new(rotated.into())),
        })
    };
    custody
        .current_or_spend(namespace, name, now, |_| false, spend)
        .await
}

#[tokio::test]
async fn the_broker_updates_a_brokerable_secret_only_as_its_custody_does() {
    let (cluster, as_broker) = cluster_with_broker_rbac().await;
    let admin = cluster.client().unwrap();
    let broker = Client::try_from(as_broker).unwrap();
    let ns = cluster.create_namespace("writes").await.unwrap();
    let opted_in = json!({BROKERABLE_LABEL: BROKERABLE});
    for (namespace, name, labels, kind, data) in [
        (
            ns.as_str(),
            "crm",
            &opted_in,
            "Opaque",
            json!({"client_id": "crm", "client_secret": PLANTED, REFRESH_TOKEN: "first"}),
        ),
        (ns.as_str(), "empty", &opted_in, "Opaque", json!({})),
        (
            ns.as_str(),
            "plain",
            &json!({}),
            "Opaque",
            json!({REFRESH_TOKEN: PLANTED}),
        ),
        (
            ns.as_str(),
            "tls",
            &opted_in,
            "kubernetes.io/tls",
            json!({"tls.crt": "c", "tls.key": PLANTED}),
        ),
        (
            "ferry-system",
            "other",
            &opted_in,
            "Opaque",
            json!({REFRESH_TOKEN: PLANTED}),
        ),
    ] {
        create_object::<Secret>(
            &admin,
            namespace,
            json!({"metadata": {"name": name, "labels": labels},
                   "type": kind, "stringData": data}),
        )
        .await
        .unwrap();
    }
    let as_broker = Api::<Secret>::namespaced(broker.clone(), &ns);
    let not_opted_in = |name: &str| {
        format!(
            "the ferry broker may not update Secret {ns}/{name}: its owner has not opted it in \
             with the label {BROKERABLE_LABEL}={BROKERABLE}"
        )
    };

    // A Secret its owner did not label: refused, once the new policy is
    // in force (the apiserver loads it within moments).
    let refusal = eventually("the policy to refuse the broker", WAIT, || {
        let as_broker = as_broker.clone();
        async move {
            let written = replace_secret(&as_broker, "plain", |secret| {
                set_data(secret, REFRESH_TOKEN, "rotated")
            })
            .await;
            match written {
                Ok(_) => None,
                refused => Some(policy_refusal(refused)),
            }
        }
    })
    .await;
    assert!(refusal.contains(&not_opted_in("plain")), "{refusal}");

    // Its own JWT keys in ferry's namespace are not the policy's: created,
    // then rotated (an update that adds and drops keys), as before.
    let period = parse_rotation_period("30d").unwrap();
    let jwt_keys = || async {
        refresh_jwt_keys(&broker, "ferry-system", BROKER_JWT_KEY_SECRET, period)
            .await
            .unwrap()
            .signing_keys()
            .unwrap()
    };
    let created = jwt_keys().await;
    age_next_keys(&admin, "ferry-system", BROKER_JWT_KEY_SECRET).await;
    let rotated = jwt_keys().await;
    assert_eq!(
        rotated.signing_kid(JwtAlgorithm::EdDSA),
        created.kids().get(3).copied(),
        "the next EdDSA key signs after a rotation"
    );

    // The broker's own custody, as the broker: a spend claims the refresh
    // token (the Secret had no annotations), stores the rotated one and the
    // sealed access token, and drops the claim (none left); the next spend
    // replaces both; one the server refuses removes the stored access
    // token. A Secret without data is claimed and released, and refused
    // for want of a refresh token.
    let custody = Custody::new(broker.clone(), "broker-0", Seal::new(&LEASE_KEY, &[]));
    let as_admin = Api::<Secret>::namespaced(admin.clone(), &ns);
    let mut shared = None;
    for (spent, rotated) in [
        ("first", Some("second")),
        ("second", Some("third")),
        ("third", None),
    ] {
        let answer = spend_through_custody(&custody, &ns, "crm", spent, rotated).await;
        assert_eq!(answer.is_ok(), rotated.is_some(), "{answer:?}");
        let stored = as_admin.get("crm").await.unwrap();
        assert_eq!(stored.metadata.annotations, None);
        let data = stored.data.unwrap();
        assert_eq!(data[REFRESH_TOKEN].0, rotated.unwrap_or(spent).as_bytes());
        assert_eq!(data["client_secret"].0, PLANTED.as_bytes());
        let current = data.get(CURRENT_ACCESS_TOKEN_KEY).cloned();
        assert_eq!(current.is_some(), rotated.is_some(), "{spent}");
        assert_ne!(
            current, shared,
            "the shared access token after spending {spent}"
        );
        shared = current;
    }
    match spend_through_custody(&custody, &ns, "empty", "none", None).await {
        Err(Refused::Request(ProviderError::NotFound(message))) => {
            assert!(message.contains("has no key"), "{message}");
        }
        other => panic!("expected no refresh token, got {other:?}"),
    }
    let empty = as_admin.get("empty").await.unwrap();
    assert_eq!((empty.metadata.annotations, empty.data), (None, None));

    // Anything else is refused, and the message says what, never a value.
    let refused = |key: &str| {
        format!(
            "the ferry broker may not update Secret {ns}/crm: it may change data key \
             {REFRESH_TOKEN} (never adding or removing it) and write \
             {CURRENT_ACCESS_TOKEN_KEY} only (refused: {key})"
        )
    };
    let cases: Vec<(&str, &str, Edit, String)> = vec![
        (
            "ferry-system",
            "other",
            Box::new(|secret| set_data(secret, REFRESH_TOKEN, "rotated")),
            "the ferry broker may not update Secret ferry-system/other: no BrokeredSecret is \
             served from namespace ferry-system"
                .into(),
        ),
        (
            &ns,
            "tls",
            Box::new(|secret| set_data(secret, "tls.key", "rotated")),
            not_opted_in("tls"),
        ),
        (
            &ns,
            "crm",
            Box::new(|secret| set_data(secret, "client_secret", "stolen")),
            refused("client_secret"),
        ),
        (
            &ns,
            "crm",
            Box::new(|secret| set_data(secret, "redirect_uri", "https://evil.example")),
            refused("redirect_uri"),
        ),
        (
            &ns,
            "crm",
            Box::new(|secret| {
                secret.data.get_or_insert_default().remove(REFRESH_TOKEN);
            }),
            refused(REFRESH_TOKEN),
        ),
        (
            &ns,
            "crm",
            Box::new(|secret| {
                secret.metadata.labels.get_or_insert_default().clear();
            }),
            format!(
                "the ferry broker may not update Secret {ns}/crm: it may not change labels \
                 (refused: {BROKERABLE_LABEL})"
            ),
        ),
        (
            &ns,
            "crm",
            Box::new(|secret| {
                secret
                    .metadata
                    .annotations
                    .get_or_insert_default()
                    .insert("example.com/note".into(), "x".into());
            }),
            format!(
                "the ferry broker may not update Secret {ns}/crm: it may change annotation \
                 {REFRESH_TOKEN_CLAIM_ANNOTATION}, {ROTATED_AT_ANNOTATION} only (refused: example.com/note)"
            ),
        ),
        (
            &ns,
            "crm",
            Box::new(|secret| {
                secret.metadata.finalizers = Some(vec!["example.com/keep".into()]);
            }),
            format!(
                "the ferry broker may not update Secret {ns}/crm: it may not change owner \
                 references, finalizers or immutable"
            ),
        ),
    ];
    for (namespace, name, edit, expected) in cases {
        let secrets = Api::<Secret>::namespaced(broker.clone(), namespace);
        let refusal = policy_refusal(replace_secret(&secrets, name, edit).await);
        assert!(refusal.contains(&expected), "{refusal}");
        assert!(!refusal.contains(PLANTED), "{refusal}");
    }

    // The policy narrows the broker only: the Secret's owner edits freely.
    let owner = "alice";
    create_object::<Role>(
        &admin,
        &ns,
        json!({"metadata": {"name": "secret-editor"},
               "rules": [{"apiGroups": [""], "resources": ["secrets"],
                          "verbs": ["get", "update"]}]}),
    )
    .await
    .unwrap();
    create_object::<RoleBinding>(
        &admin,
        &ns,
        json!({"metadata": {"name": "secret-editor"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                           "name": "secret-editor"},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                             "name": owner}]}),
    )
    .await
    .unwrap();
    let as_owner = cluster
        .impersonating_client(owner, &["system:authenticated"])
        .unwrap();
    let as_owner = Api::<Secret>::namespaced(as_owner, &ns);
    let edited = eventually("the owner's Role to be in force", WAIT, || {
        let as_owner = as_owner.clone();
        async move {
            replace_secret(&as_owner, "crm", |secret| {
                secret.metadata.labels = None;
                secret.metadata.annotations =
                    Some([("example.com/note".into(), "x".into())].into());
                set_data(secret, "client_secret", "new");
                set_data(secret, "redirect_uri", "https://crm.example");
            })
            .await
            .ok()
        }
    })
    .await;
    let data = edited.data.unwrap();
    assert_eq!(data["client_secret"].0, b"new");
    assert_eq!(edited.metadata.labels, None);
}

#[tokio::test]
async fn a_service_account_asking_too_often_gets_429_with_retry_after() {
    let tenant = scenario("ratelimit").await;
    let secrets = tenant.owner.clone();
    let cluster = Cluster::shared().await.unwrap();
    // A broker of its own with a tight limit: one request a second, two at once.
    let limited = RunningBroker::start_as(
        cluster,
        cluster.config().clone(),
        LeaseKeys::new(&LEASE_KEY, &[]),
        governor::Quota::per_second(std::num::NonZeroU32::MIN)
            .allow_burst(std::num::NonZeroU32::new(2).unwrap()),
    )
    .unwrap();
    let https = limited.client().unwrap();
    let (_, token) = tenant.pod("api", "checkout").await.unwrap();
    let body = lease_request(&secrets, "orders-api-key");
    let limited_reply = eventually("a 429", WAIT, || async {
        let reply = https
            .request("POST", "/v1/leases", Some(&token), &body)
            .await
            .unwrap();
        (reply.status == 429).then_some(reply)
    })
    .await;
    let retry_after: u64 = limited_reply
        .header("retry-after")
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert!(message(&limited_reply).contains("too many requests from this service account"));
    let actor = format!("system:serviceaccount:{}:checkout", tenant.app);
    assert!(
        !audit_lines(|line| line["reason"] == "rate_limited" && line["actor"] == actor.as_str())
            .is_empty(),
        "the refusal of {actor} was not audited"
    );
}

#[tokio::test]
async fn a_jwt_lease_verifies_against_the_jwks_with_the_right_claims() {
    let tenant = scenario("jwt").await;
    let secrets = tenant.owner.clone();
    let app = tenant.app.clone();
    let running = &world().await.broker;
    let broker = running.client().unwrap();
    let (api, token) = tenant.pod("api", "checkout").await.unwrap();
    let issued = issue_when_ready(&broker, &token, &lease_request(&secrets, "orders-jwt")).await;
    let lease = issued.json().unwrap()["leases"][0].clone();
    let jwt = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(lease["files"]["token"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();

    let discovery = broker
        .request("GET", "/.well-known/openid-configuration", None, b"")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(discovery["issuer"], running.url());
    assert_eq!(discovery["jwks_uri"], format!("{}/v1/jwks", running.url()));
    let jwks = broker
        .request("GET", "/v1/jwks", None, b"")
        .await
        .unwrap()
        .json()
        .unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "EC");
    let header = jsonwebtoken::decode_header(&jwt).unwrap();
    assert_eq!(header.kid.as_deref(), key["kid"].as_str());
    let decoding = jsonwebtoken::DecodingKey::from_ec_components(
        key["x"].as_str().unwrap(),
        key["y"].as_str().unwrap(),
    )
    .unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["orders"]);
    validation.set_issuer(&[running.url()]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(&jwt, &decoding, &validation)
        .unwrap()
        .claims;
    assert_eq!(
        claims["sub"],
        format!("system:serviceaccount:{app}:checkout")
    );
    assert_eq!(claims["aud"], json!(["orders"]));
    assert_eq!(claims["scope"], "read");
    assert_eq!(claims["team"], "payments");
    assert_eq!(claims["pod_uid"], json!(api.metadata.uid));
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, lease["ttl"].as_i64().unwrap());
    assert!(claims["jti"].as_str().is_some_and(|jti| !jti.is_empty()));

    // A token for another audience does not verify as one for billing.
    let mut billing = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    billing.set_audience(&["billing"]);
    assert!(jsonwebtoken::decode::<serde_json::Value>(&jwt, &decoding, &billing).is_err());

    // Renewal mints a fresh token with the same narrowing.
    let id = lease["id"].as_str().unwrap();
    let renewed = broker
        .request("POST", &format!("/v1/leases/{id}/renew"), Some(&token), b"")
        .await
        .unwrap();
    assert_eq!(renewed.status, 200);
    let renewed_jwt = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(
                renewed.json().unwrap()["leases"][0]["files"]["token"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap(),
    )
    .unwrap();
    assert_ne!(renewed_jwt, jwt);
    let renewed_claims =
        jsonwebtoken::decode::<serde_json::Value>(&renewed_jwt, &decoding, &validation)
            .unwrap()
            .claims;
    assert_eq!(renewed_claims["scope"], "read");
    assert!(
        !captured_logs().contains(&jwt),
        "a minted JWT appears in a log line"
    );
}

#[tokio::test]
async fn an_eddsa_jwt_lease_verifies_against_the_jwks() {
    let tenant = scenario("eddsa").await;
    let client = tenant.client.clone();
    let secrets = tenant.owner.clone();
    let app = tenant.app.clone();
    tenant
        .create_brokered_secret(
            tenant
                .brokered_secret("orders-jwt-ed")
                .jwt(&["orders"])
                .algorithm(JwtAlgorithm::EdDSA),
        )
        .await
        .unwrap();
    let policy = testing::access_policy(&secrets, "checkout-ed")
        .service_account(&app, "checkout")
        .secret("orders-jwt-ed")
        .build();
    create_resource(&client, &policy).await.unwrap();
    let running = &world().await.broker;
    let broker = running.client().unwrap();
    let (_, token) = tenant.pod("api", "checkout").await.unwrap();
    let issued = issue_when_ready(&broker, &token, &lease_request(&secrets, "orders-jwt-ed")).await;
    let jwt = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(
                issued.json().unwrap()["leases"][0]["files"]["token"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap(),
    )
    .unwrap();
    let header = jsonwebtoken::decode_header(&jwt).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    let jwks = broker
        .request("GET", "/v1/jwks", None, b"")
        .await
        .unwrap()
        .json()
        .unwrap();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["kid"].as_str() == header.kid.as_deref())
        .unwrap();
    assert_eq!(
        (&key["kty"], &key["crv"]),
        (&json!("OKP"), &json!("Ed25519"))
    );
    let decoding =
        jsonwebtoken::DecodingKey::from_ed_components(key["x"].as_str().unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["orders"]);
    validation.set_issuer(&[running.url()]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(&jwt, &decoding, &validation)
        .unwrap()
        .claims;
    assert_eq!(
        claims["sub"],
        format!("system:serviceaccount:{app}:checkout")
    );
}

#[tokio::test]
async fn replicas_racing_to_rotate_the_jwt_keys_rotate_once() {
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    let ns = cluster.create_namespace("jwt-rotation").await.unwrap();
    let period = parse_rotation_period("30d").unwrap();
    let kids = |keys: &ferry_broker::jwt_keys::StoredJwtKeys| -> Vec<String> {
        keys.signing_keys()
            .unwrap()
            .kids()
            .into_iter()
            .map(str::to_owned)
            .collect()
    };
    let first = kids(
        &refresh_jwt_keys(&client, &ns, "keys", period)
            .await
            .unwrap(),
    );
    // Per algorithm: the signing key, then next.
    assert_eq!(first.len(), 4);
    // Nothing is due yet: a second replica adopts the same keys.
    assert_eq!(
        kids(
            &refresh_jwt_keys(&client, &ns, "keys", period)
                .await
                .unwrap()
        ),
        first
    );

    age_next_keys(&client, &ns, "keys").await;
    let replicas =
        futures::future::join_all((0..4).map(|_| refresh_jwt_keys(&client, &ns, "keys", period)))
            .await;
    let after: Vec<Vec<String>> = replicas
        .iter()
        .map(|keys| kids(keys.as_ref().unwrap()))
        .collect();
    assert!(after.iter().all(|kids| *kids == after[0]), "{after:?}");
    // Rotated once: next signs, the old signing key is previous, a new next.
    let after = &after[0];
    assert_eq!(after.len(), 6);
    assert_eq!(after[0], first[1], "ES256 next now signs");
    assert_eq!(after[2], first[0], "ES256's old signing key is published");
    assert_eq!(after[3], first[3], "EdDSA next now signs");
    assert_eq!(after[5], first[2], "EdDSA's old signing key is published");
}
