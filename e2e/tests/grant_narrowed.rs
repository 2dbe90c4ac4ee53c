//! A lease whose Grant narrows while it is live: the owner of a JWT secret
//! takes an audience and a scope away from a running workload. The next
//! renewal of the wider lease is refused (403), the sidecar asks for a new
//! lease, and the token it then writes carries only what the narrowed
//! Grant allows. Real broker, operator, apiserver and sidecar binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::Engine as _;
use ferry_api::resources::{AccessPolicy, Grant};
use ferry_api::testing::{self, secret_access};
use ferry_e2e::sidecar_process::{SidecarProcess, SidecarSpec};
use ferry_e2e::{Cluster, Tenant, World, eventually, grant};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// The claims of the JWT in `file`.
fn claims(file: &std::path::Path) -> Value {
    let token = std::fs::read_to_string(file).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap()
}

/// A JWT's `aud`, one string or a list, as a sorted list.
fn audience(claims: &Value) -> Vec<String> {
    match &claims["aud"] {
        Value::String(one) => vec![one.clone()],
        list => {
            let mut audience: Vec<String> = serde_json::from_value(list.clone()).unwrap();
            audience.sort();
            audience
        }
    }
}

/// The policy granting `orders-jwt` to `checkout`, narrowed to `audience`
/// and `scopes`.
fn policy(tenant: &Tenant, audience: &[&str], scopes: &[&str]) -> AccessPolicy {
    testing::access_policy(&tenant.owner, "checkout")
        .service_account(&tenant.app, "checkout")
        .narrowed(
            secret_access("orders-jwt")
                .audience(audience)
                .scopes(scopes),
        )
        .build()
}

#[tokio::test]
async fn a_grant_narrowed_under_a_live_lease_refuses_its_renewal_and_the_new_token_is_narrower() {
    let world = World::shared().await.unwrap();
    let cluster = Cluster::shared().await.unwrap();
    let tenant = Tenant::create("narrowed").await.unwrap();
    tenant
        .create_brokered_secret(
            tenant
                .brokered_secret("orders-jwt")
                .ttl("10s")
                .jwt(&["orders", "billing"])
                .scopes(&["read", "write"]),
        )
        .await
        .unwrap();
    grant(
        &tenant.client,
        policy(&tenant, &["orders", "billing"], &["read", "write"]),
    )
    .await
    .unwrap();
    let (_, token) = tenant.pod("api", "checkout").await.unwrap();

    // A new pod's sidecar retries while the broker's watches catch up.
    let sidecar = SidecarProcess::start(&SidecarSpec {
        broker_url: &world.broker.url(),
        broker_ca_pem: &cluster.authority().cert_pem(),
        token: &token,
        secrets: &[format!("{}/orders-jwt", tenant.owner)],
        pod_namespace: &tenant.app,
        pod_name: "api",
    })
    .unwrap();
    sidecar
        .wait_for_line("secret_written", WAIT, |line| line["how"] == "issued")
        .await;
    let file = sidecar.volume().join("orders-jwt/token");
    let wide = claims(&file);
    assert_eq!(audience(&wide), ["billing", "orders"], "{wide}");

    // The secret's owner narrows the policy; the operator rewrites the Grant.
    let narrowed = policy(&tenant, &["orders"], &["read"]);
    Api::<AccessPolicy>::namespaced(tenant.client.clone(), &tenant.owner)
        .patch(
            "checkout",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": narrowed.spec})),
        )
        .await
        .unwrap();
    let grants = Api::<Grant>::namespaced(tenant.client.clone(), &tenant.app);
    eventually("the Grant to narrow", WAIT, || async {
        grants
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|grant| grant.spec.audience == ["orders"])
            .then_some(())
    })
    .await;

    // The wider lease's renewal is refused; a new lease follows.
    // The wider lease's renewal is refused (403, and the sidecar's next
    // step is a new lease); a new lease follows.
    let is_refusal = |line: &Value| {
        line["event"] == "renew_failed" && line["status"] == 403 && line["next"] == "issue"
    };
    let (refused, replaced) = eventually("a refused renewal, then a new token", WAIT, || {
        let lines = sidecar.log_lines();
        let refused = lines.iter().position(is_refusal);
        std::future::ready(refused.and_then(|refused| {
            lines[refused..]
                .iter()
                .find(|line| line["event"] == "secret_written" && line["how"] == "issued")
                .map(|replaced| (lines[refused].clone(), replaced.clone()))
        }))
    })
    .await;
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("is not granted"),
        "{refused}"
    );
    assert_ne!(replaced["lease"], refused["lease"]);
    let narrow = claims(&file);
    assert_eq!(audience(&narrow), ["orders"], "{narrow}");
    assert_eq!(narrow["scope"], "read", "{narrow}");
}
