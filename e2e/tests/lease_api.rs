//! The broker's live-lease API as the apiserver's aggregation layer calls
//! it: over TLS with a front-proxy client certificate, the caller named in
//! headers. A caller sees a lease only where a real SubjectAccessReview
//! lets it `get` BrokeredSecrets; no lease id or material leaves; a
//! client without the front proxy's certificate cannot even connect.
//!
//! (The apiserver routes an APIService only to endpoints off loopback, so
//! this test, with the broker on loopback, plays the aggregator with
//! `curl`; `chart_on_node.rs` goes through the real apiserver.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;

use ferry_broker::lease_api::FrontProxy;
use ferry_broker::lease_id::LeaseKeys;
use ferry_e2e::pki::{Authority, CertFiles};
use ferry_e2e::{
    Cluster, LEASE_KEY, RunningBroker, RunningOperator, Tenant, create_object, install_crds,
    issue_once_known,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde_json::{Value, json};

/// What curl got: its exit code and the body.
struct Answer {
    code: i32,
    body: String,
}

/// GETs `path` of the lease API at `addr` as curl would, presenting
/// `client` and the headers `headers`.
async fn get(
    addr: SocketAddr,
    ca: &Path,
    client: Option<&CertFiles>,
    headers: &[&str],
    path: &str,
) -> Answer {
    let mut curl = tokio::process::Command::new("curl");
    curl.args(["-sS", "--max-time", "20", "--cacert"]).arg(ca);
    if let Some(client) = client {
        curl.arg("--cert")
            .arg(&client.cert)
            .arg("--key")
            .arg(&client.key);
    }
    for header in headers {
        curl.args(["-H", header]);
    }
    curl.arg(format!("https://{addr}{path}"));
    let output = curl.output().await.unwrap();
    Answer {
        code: output.status.code().unwrap_or(-1),
        body: String::from_utf8_lossy(&output.stdout).into_owned(),
    }
}

#[tokio::test]
async fn a_caller_sees_only_the_leases_of_namespaces_where_it_may_get_brokered_secrets() {
    let cluster = Cluster::shared().await.unwrap();
    let admin = cluster.client().unwrap();
    install_crds(&admin).await.unwrap();
    let _operator = RunningOperator::start(cluster.config().clone()).unwrap();
    let pki = tempfile::tempdir().unwrap();
    let front_proxy_ca = Authority::generate("front-proxy-ca").unwrap();
    let aggregator = front_proxy_ca
        .client_cert("front-proxy-client", None, pki.path(), "aggregator")
        .unwrap();
    let intruder = front_proxy_ca
        .client_cert("intruder", None, pki.path(), "intruder")
        .unwrap();
    let broker = RunningBroker::start_with_lease_api(
        cluster,
        LeaseKeys::new(&LEASE_KEY, &[]),
        FrontProxy {
            ca_pem: front_proxy_ca.cert_pem(),
            allowed_names: vec!["front-proxy-client".into()],
            username_headers: vec!["X-Remote-User".into()],
            group_headers: vec!["X-Remote-Group".into()],
            extra_prefixes: vec!["X-Remote-Extra-".into()],
        },
    )
    .unwrap();
    let addr = broker.lease_api_addr().unwrap();
    let ca = pki.path().join("cluster-ca.crt");
    std::fs::write(&ca, cluster.ca_pem()).unwrap();

    let tenant = Tenant::create_in(cluster, "leaseapi").await.unwrap();
    tenant
        .create_brokered_secret(tenant.brokered_secret("orders-token").jwt(&["orders"]))
        .await
        .unwrap();
    tenant.grant("checkout", &["orders-token"]).await.unwrap();
    let (_pod, token) = tenant.pod("checkout-1", "checkout").await.unwrap();
    let request = json!({"secrets": [{"namespace": tenant.owner, "name": "orders-token"}]});
    let issued = issue_once_known(
        &broker.client().unwrap(),
        &token,
        request.to_string().as_bytes(),
    )
    .await;
    assert_eq!(issued.status, 200);
    let lease = issued.json().unwrap()["leases"][0].clone();
    let lease_id = lease["id"].as_str().unwrap().to_owned();

    // The owner's viewer may get BrokeredSecrets in the owner's namespace.
    create_object::<Role>(
        &admin,
        &tenant.owner,
        json!({"metadata": {"name": "view-secrets"},
               "rules": [{"apiGroups": ["ferry.dev"], "resources": ["brokeredsecrets"], "verbs": ["get"]}]}),
    )
    .await
    .unwrap();
    create_object::<RoleBinding>(
        &admin,
        &tenant.owner,
        json!({"metadata": {"name": "view-secrets"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "view-secrets"},
               "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "owners"}]}),
    )
    .await
    .unwrap();

    let path = format!(
        "/apis/leases.ferry.dev/v1alpha1/namespaces/{}/liveleases",
        tenant.owner
    );
    let viewer = get(
        addr,
        &ca,
        Some(&aggregator),
        &["X-Remote-User: olivia", "X-Remote-Group: owners"],
        &path,
    )
    .await;
    assert_eq!(viewer.code, 0, "{}", viewer.body);
    let list: Value = serde_json::from_str(&viewer.body).unwrap();
    assert_eq!(list["kind"], "LiveLeaseList");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["secretName"], "orders-token");
    assert_eq!(items[0]["podName"], "checkout-1");
    assert_eq!(items[0]["podNamespace"], tenant.app.as_str());
    assert_eq!(items[0]["serviceAccount"], "checkout");
    assert_eq!(items[0]["kind"], "jwt");
    let jwt = lease["files"]["token"].as_str().unwrap();
    assert!(
        !viewer.body.contains(&lease_id) && !viewer.body.contains(jwt),
        "material left the broker: {}",
        viewer.body
    );

    // Every namespace at once: still only what the caller may see.
    let all = get(
        addr,
        &ca,
        Some(&aggregator),
        &["X-Remote-User: olivia", "X-Remote-Group: owners"],
        "/apis/leases.ferry.dev/v1alpha1/liveleases",
    )
    .await;
    let all: Value = serde_json::from_str(&all.body).unwrap();
    assert!(
        all["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["secretNamespace"] == tenant.owner.as_str()),
        "{all}"
    );

    let stranger = get(
        addr,
        &ca,
        Some(&aggregator),
        &["X-Remote-User: mallory"],
        &path,
    )
    .await;
    let stranger: Value = serde_json::from_str(&stranger.body).unwrap();
    assert_eq!(stranger["items"], json!([]), "{stranger}");

    let anonymous = get(addr, &ca, Some(&aggregator), &[], &path).await;
    assert!(
        anonymous.body.contains("\"code\":401"),
        "{}",
        anonymous.body
    );

    // Without the front proxy's certificate, headers count for nothing:
    // the handshake fails before any request.
    for (who, client) in [
        ("no certificate", None),
        ("another common name", Some(&intruder)),
    ] {
        let refused = get(
            addr,
            &ca,
            client,
            &["X-Remote-User: olivia", "X-Remote-Group: owners"],
            &path,
        )
        .await;
        assert_ne!(refused.code, 0, "{who}: {}", refused.body);
        assert!(
            !refused.body.contains("orders-token"),
            "{who}: {}",
            refused.body
        );
    }

    let discovery = get(
        addr,
        &ca,
        Some(&aggregator),
        &["X-Remote-User: olivia"],
        "/apis/leases.ferry.dev/v1alpha1",
    )
    .await;
    let discovery: Value = serde_json::from_str(&discovery.body).unwrap();
    assert_eq!(discovery["resources"][0]["name"], "liveleases");
}
