//! The broker over real TLS against a real apiserver: a JWT BrokeredSecret
//! with as many audiences and scopes as the schema admits gets a lease
//! whose id the broker itself accepts back, so the lease renews and
//! revokes. (Lease ids carry the audiences and scopes; they used to be
//! refused over 2 KiB, which 32 long scopes exceed.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ferry_api::resources::{AccessPolicy, BrokeredSecret, Grant};
use ferry_broker::lease_id::LeaseKeys;
use ferry_e2e::{
    Cluster, RunningBroker, RunningOperator, broker_pod, create_object, eventually, install_crds,
};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ListParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_lease_with_every_audience_and_scope_the_schema_allows_renews_and_revokes() {
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    install_crds(&client).await.unwrap();
    let _operator = RunningOperator::start(cluster.config().clone()).unwrap();
    let broker = RunningBroker::start(cluster, LeaseKeys::new(&[11; 32], &[])).unwrap();
    let owner = cluster.create_namespace("bigid-owner").await.unwrap();
    let app = cluster.create_namespace("bigid-app").await.unwrap();

    // The schema's maxima: 16 audiences of 253 characters, 32 scopes of 128.
    let audience: Vec<String> = (0..16)
        .map(|i| format!("{i:02}{}", "a".repeat(251)))
        .collect();
    let scopes: Vec<String> = (0..32)
        .map(|i| format!("{i:02}{}", "s".repeat(126)))
        .collect();
    create_object::<BrokeredSecret>(
        &client,
        &owner,
        json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "BrokeredSecret",
               "metadata": {"name": "wide-jwt"},
               "spec": {"source": {"jwt": {"audience": audience, "scopes": scopes}}}}),
    )
    .await
    .unwrap();
    create_object::<AccessPolicy>(
        &client,
        &owner,
        json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "AccessPolicy",
               "metadata": {"name": "wide"},
               "spec": {"subjects": [{"serviceAccount": {"name": "caller", "namespace": app}}],
                        "secrets": [{"name": "wide-jwt"}]}}),
    )
    .await
    .unwrap();
    create_object::<ServiceAccount>(&client, &app, json!({"metadata": {"name": "caller"}}))
        .await
        .unwrap();
    let grants = Api::<Grant>::namespaced(client.clone(), &app);
    eventually("the Grant for caller", WAIT, || async {
        (!grants
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty())
        .then_some(())
    })
    .await;
    let (_pod, token) = broker_pod(&client, &app, "caller-0", "caller")
        .await
        .unwrap();

    let http = broker.client().unwrap();
    let request =
        serde_json::to_vec(&json!({"secrets": [{"namespace": owner, "name": "wide-jwt"}]}))
            .unwrap();
    let issued = eventually("the broker to know the pod and its Grant", WAIT, || async {
        let reply = http
            .request("POST", "/v1/leases", Some(&token), &request)
            .await
            .unwrap();
        if reply.status != 200 {
            eprintln!("issue: {} {:?}", reply.status, reply.json());
        }
        (reply.status == 200).then_some(reply)
    })
    .await;
    let id = issued.json().unwrap()["leases"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    eprintln!("lease id of the widest JWT lease: {} bytes", id.len());
    assert!(id.len() > 2048, "the id should exceed the old limit");

    let renewed = http
        .request("POST", &format!("/v1/leases/{id}/renew"), Some(&token), b"")
        .await
        .unwrap();
    assert_eq!(renewed.status, 200, "{:?}", renewed.json());
    let renewed_id = renewed.json().unwrap()["leases"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked = http
        .request(
            "DELETE",
            &format!("/v1/leases/{renewed_id}"),
            Some(&token),
            b"",
        )
        .await
        .unwrap();
    assert_eq!(revoked.status, 204, "{:?}", revoked.json());
}
