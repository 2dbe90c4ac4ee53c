//! Taking access away now: a Revocation (by pod, secret or policy) and the
//! loss of a Grant revoke live leases at once, not at their expiry. A
//! PostgreSQL role is dropped, a watching sidecar wipes the files and its
//! readiness marker long before its renewal, a JWT's id is published as
//! revoked, and nothing is issued to the target while the Revocation
//! stands. A Revocation naming nothing is Invalid and does nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::Engine as _;
use ferry_api::resources::{AccessPolicy, Revocation, RevocationPhase, RevocationSpec};
use ferry_contract::READY_MARKER;
use ferry_e2e::https_client::HttpsClient;
use ferry_e2e::sidecar_process::{SidecarProcess, SidecarSpec};
use ferry_e2e::{Cluster, Postgres, Tenant, World, error_message, eventually};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// The shared world; in the shared database a role `reader` and the
/// broker's admin role `broker_admin`.
async fn world() -> &'static World {
    Postgres::shared_with_broker_admin().await.unwrap();
    World::shared()
        .await
        .expect("the cluster, operator and broker")
}

/// A tenant whose `checkout` account is granted `db` (postgres) and
/// `api-jwt` (jwt), both with a 15-minute ttl: renewal would be ten
/// minutes away, so anything that happens within a minute is revocation.
async fn scenario(prefix: &str) -> Tenant {
    world().await;
    let database = Postgres::shared().await.unwrap();
    let tenant = Tenant::create(prefix).await.unwrap();
    tenant
        .secret(
            "db-admin",
            json!({"dsn": database.dsn("broker_admin", "admin-password")}),
        )
        .await
        .unwrap();
    for secret in [
        tenant.brokered_secret("api-jwt").jwt(&["orders"]),
        tenant
            .brokered_secret("db")
            .postgres("db-admin", "dsn")
            .member_of(&["reader"]),
    ] {
        tenant.create_brokered_secret(secret).await.unwrap();
    }
    tenant.grant("checkout", &["db", "api-jwt"]).await.unwrap();
    tenant
}

/// Creates a Revocation in `namespace` naming `target` (`{"pod": ...}`).
async fn revoke(client: &kube::Client, namespace: &str, name: &str, target: Value) -> Revocation {
    let mut spec = json!({"reason": "incident 42: malicious code seen"});
    spec.as_object_mut()
        .unwrap()
        .extend(target.as_object().unwrap().clone());
    let revocation: Revocation = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "Revocation",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
    .unwrap();
    Api::<Revocation>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &revocation)
        .await
        .unwrap()
}

/// The Revocation once the operator has judged it.
async fn judged(client: &kube::Client, namespace: &str, name: &str) -> Revocation {
    let api = Api::<Revocation>::namespaced(client.clone(), namespace);
    eventually("the operator to judge the Revocation", WAIT, || async {
        let revocation = api.get(name).await.unwrap();
        revocation
            .status
            .as_ref()
            .and_then(|status| status.phase)
            .is_some()
            .then_some(revocation)
    })
    .await
}

async fn role_exists(role: &str) -> bool {
    Postgres::shared()
        .await
        .unwrap()
        .role_exists(role)
        .await
        .unwrap()
}

async fn post(broker: &HttpsClient, token: &str, path: &str, body: Value) -> (u16, Value) {
    let reply = broker
        .request(
            "POST",
            path,
            Some(token),
            &serde_json::to_vec(&body).unwrap(),
        )
        .await
        .unwrap();
    (reply.status, reply.json().unwrap_or(Value::Null))
}

/// A lease of `owner/name`, retried while the broker's indexes catch up.
async fn issue(broker: &HttpsClient, token: &str, owner: &str, name: &str) -> Value {
    let body = json!({"secrets": [{"namespace": owner, "name": name}]});
    eventually(&format!("a lease of {name}"), WAIT, || async {
        let (status, reply) = post(broker, token, "/v1/leases", body.clone()).await;
        (status == 200).then(|| reply["leases"][0].clone())
    })
    .await
}

#[tokio::test]
async fn revoking_a_pod_drops_its_role_and_its_sidecar_wipes_the_files_long_before_renewal() {
    let tenant = scenario("rv-pod").await;
    let world = world().await;
    let cluster = Cluster::shared().await.unwrap();
    let (_pod, token) = tenant.pod("web-1", "checkout").await.unwrap();
    let sidecar = SidecarProcess::start(&SidecarSpec {
        broker_url: &world.broker.url(),
        broker_ca_pem: &cluster.authority().cert_pem(),
        token: &token,
        secrets: &[format!("{}/db", tenant.owner)],
        pod_namespace: &tenant.app,
        pod_name: "web-1",
    })
    .unwrap();
    let volume = sidecar.volume().to_path_buf();
    let username = volume.join("db/username");
    eventually("the secret and the ready marker", WAIT, || async {
        (volume.join(READY_MARKER).exists() && username.exists()).then_some(())
    })
    .await;
    let role = std::fs::read_to_string(&username).unwrap();
    assert!(role_exists(&role).await);

    revoke(
        &tenant.client,
        &tenant.app,
        "web-1-incident",
        json!({"pod": "web-1"}),
    )
    .await;
    eventually(
        "the role dropped, the files and the ready marker gone",
        WAIT,
        || async {
            (!role_exists(&role).await && !username.exists() && !volume.join(READY_MARKER).exists())
                .then_some(())
        },
    )
    .await;
    let revoked: Vec<Value> = sidecar
        .log_lines()
        .into_iter()
        .filter(|line| line["event"] == "secret_revoked")
        .collect();
    assert_eq!(revoked.len(), 1, "{}", sidecar.log_text());
    assert!(
        !sidecar.log_text().contains("secret_expired"),
        "wiped because revoked, not expired"
    );
    let status = judged(&tenant.client, &tenant.app, "web-1-incident")
        .await
        .status
        .unwrap();
    assert_eq!(status.phase, Some(RevocationPhase::Active));
    assert_eq!(
        status.target.as_deref(),
        Some(format!("pod {}/web-1", tenant.app).as_str())
    );

    // Nothing is issued to the pod while the Revocation stands, and the
    // refusal names the Revocation but not the responder's reason.
    let broker = world.broker.client().unwrap();
    let body = json!({"secrets": [{"namespace": tenant.owner, "name": "db"}]});
    let reply = broker
        .request(
            "POST",
            "/v1/leases",
            Some(&token),
            &serde_json::to_vec(&body).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 403);
    let message = error_message(&reply);
    assert!(message.contains("revoked by Revocation"), "{message}");
    assert!(message.contains("web-1-incident"), "{message}");
    assert!(!message.contains("malicious"), "{message}");

    // Lifting it lets the sidecar in again.
    Api::<Revocation>::namespaced(tenant.client.clone(), &tenant.app)
        .delete("web-1-incident", &DeleteParams::default())
        .await
        .unwrap();
    eventually("a new lease written after the lift", WAIT, || async {
        (volume.join(READY_MARKER).exists() && username.exists()).then_some(())
    })
    .await;
    assert_ne!(std::fs::read_to_string(&username).unwrap(), role);
}

#[tokio::test]
async fn revoking_a_secret_answers_the_watch_refuses_renewal_and_publishes_the_token_id() {
    let tenant = scenario("rv-secret").await;
    let broker = world().await.broker.client().unwrap();
    let (_pod, token) = tenant.pod("api", "checkout").await.unwrap();
    let lease = issue(&broker, &token, &tenant.owner, "api-jwt").await;
    let id = lease["id"].as_str().unwrap().to_owned();
    let jwt = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(lease["files"]["token"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let jti = payload["jti"].as_str().unwrap().to_owned();
    let other = issue(&broker, &token, &tenant.owner, "db").await;

    // A watch with nothing revoked ends empty when its wait does.
    let (status, reply) = post(
        &broker,
        &token,
        "/v1/leases/watch",
        json!({"leases": [id], "waitSeconds": 1}),
    )
    .await;
    assert_eq!((status, &reply), (200, &json!({"revoked": []})));

    let watching = {
        let (broker, token, id) = (broker.clone(), token.clone(), id.clone());
        tokio::spawn(async move {
            post(
                &broker,
                &token,
                "/v1/leases/watch",
                json!({"leases": [id], "waitSeconds": 120}),
            )
            .await
        })
    };
    revoke(
        &tenant.client,
        &tenant.owner,
        "jwt-leak",
        json!({"secret": "api-jwt"}),
    )
    .await;
    let (status, reply) = tokio::time::timeout(WAIT, watching).await.unwrap().unwrap();
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply,
        json!({"revoked": [{"namespace": tenant.owner, "name": "api-jwt"}]})
    );

    let (status, reply) = post(
        &broker,
        &token,
        &format!("/v1/leases/{id}/renew"),
        json!({}),
    )
    .await;
    // The lease is refused: as revoked (409) once the sweep has recorded
    // the token, or as blocked by the Revocation (403) just before; and
    // no new one is issued (403).
    assert!(status == 409 || status == 403, "{reply}");
    let body = json!({"secrets": [{"namespace": tenant.owner, "name": "api-jwt"}]});
    let (status, reply) = post(&broker, &token, "/v1/leases", body).await;
    assert_eq!(status, 403, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("revoked by Revocation"), "{reply}");
    eventually("the token's id published as revoked", WAIT, || async {
        let reply = broker
            .request("GET", "/v1/jwks/revoked", None, b"")
            .await
            .unwrap();
        let body: Value = reply.json().unwrap();
        body["revoked"]
            .as_array()
            .unwrap()
            .iter()
            .any(|entry| entry["jti"] == jti.as_str() && entry["exp"].is_i64())
            .then_some(())
    })
    .await;
    // The pod's other secret is untouched.
    let (status, _) = post(
        &broker,
        &token,
        &format!("/v1/leases/{}/renew", other["id"].as_str().unwrap()),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn revoking_a_policy_or_deleting_it_drops_the_roles_it_allowed_at_once() {
    let tenant = scenario("rv-policy").await;
    let broker = world().await.broker.client().unwrap();
    let (_pod, token) = tenant.pod("api", "checkout").await.unwrap();
    let username = |lease: &Value| {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(lease["files"]["username"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    let first = username(&issue(&broker, &token, &tenant.owner, "db").await);
    // The policy is named after the account (Tenant::grant).
    revoke(
        &tenant.client,
        &tenant.owner,
        "pause",
        json!({"policy": "checkout"}),
    )
    .await;
    eventually(
        "the role dropped by the policy's Revocation",
        WAIT,
        || async { (!role_exists(&first).await).then_some(()) },
    )
    .await;
    Api::<Revocation>::namespaced(tenant.client.clone(), &tenant.owner)
        .delete("pause", &DeleteParams::default())
        .await
        .unwrap();

    let second = username(&issue(&broker, &token, &tenant.owner, "db").await);
    assert!(role_exists(&second).await);
    Api::<AccessPolicy>::namespaced(tenant.client.clone(), &tenant.owner)
        .delete("checkout", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the role dropped with its policy", WAIT, || async {
        (!role_exists(&second).await).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_revocation_naming_nothing_is_invalid_and_a_malformed_one_is_refused() {
    let tenant = scenario("rv-invalid").await;
    revoke(
        &tenant.client,
        &tenant.app,
        "typo",
        json!({"pod": "nobody"}),
    )
    .await;
    let status = judged(&tenant.client, &tenant.app, "typo")
        .await
        .status
        .unwrap();
    assert_eq!(status.phase, Some(RevocationPhase::Invalid));
    let ready = &status.conditions[0];
    assert_eq!(ready.reason, "PodNotFound");
    assert!(
        ready.message.contains("nothing was revoked"),
        "{}",
        ready.message
    );

    let api = Api::<Revocation>::namespaced(tenant.client.clone(), &tenant.app);
    let two_targets: Revocation = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "Revocation",
        "metadata": {"name": "both"},
        "spec": {"pod": "a", "serviceAccount": "b", "reason": "x"},
    }))
    .unwrap();
    let error = api
        .create(&PostParams::default(), &two_targets)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("name exactly one target"), "{error}");

    let mut edited = api.get("typo").await.unwrap();
    edited.spec = RevocationSpec {
        pod: Some("somebody".into()),
        ..edited.spec
    };
    let error = api
        .replace("typo", &PostParams::default(), &edited)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("cannot be edited"), "{error}");
}
