//! The broker's authentication against a real apiserver: a pod-bound
//! projected token for the broker's audience identifies its pod; a token
//! for another audience, one bound to no pod, a forged one, or one whose
//! pod is gone is refused; reviews are cached by token hash, but a deleted
//! pod's token stops working at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ferry_broker::auth::{AuthError, Authenticator, CacheLimits, CacheUse};
use ferry_broker::pods::PodIndex;
use ferry_contract::DEFAULT_BROKER_AUDIENCE;
use ferry_e2e::{Cluster, create_object, eventually, pod_bound_token};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

struct Broker {
    authenticator: Authenticator,
    pods: PodIndex,
    stop: CancellationToken,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn authenticator(client: &kube::Client) -> Broker {
    let pods = PodIndex::default();
    let stop = CancellationToken::new();
    {
        let (pods, client, stop) = (pods.clone(), client.clone(), stop.clone());
        tokio::spawn(async move { pods.maintain(client, stop).await });
    }
    pods.wait_synced().await;
    let authenticator = Authenticator::new(
        client.clone(),
        DEFAULT_BROKER_AUDIENCE,
        pods.clone(),
        CacheLimits::default(),
    );
    Broker {
        authenticator,
        pods,
        stop,
    }
}

async fn opted_in_pod(client: &kube::Client, ns: &str, name: &str) -> Pod {
    let pod: Pod = create_object(
        client,
        ns,
        json!({
            "metadata": {"name": name, "labels": {"ferry.dev/inject": "true"}},
            "spec": {"serviceAccountName": "checkout",
                     "containers": [{"name": "app", "image": "app:1"}]},
        }),
    )
    .await
    .unwrap();
    pod
}

async fn setup(prefix: &str) -> (kube::Client, String) {
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    let ns = cluster.create_namespace(prefix).await.unwrap();
    create_object::<ServiceAccount>(&client, &ns, json!({"metadata": {"name": "checkout"}}))
        .await
        .unwrap();
    (client, ns)
}

async fn wait_indexed(broker: &Broker, pod: &Pod) {
    let uid = pod.metadata.uid.clone().unwrap();
    eventually("the pod in the broker's index", WAIT, || async {
        broker.pods.get(&uid).map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn a_pod_bound_token_for_the_broker_identifies_its_pod_and_is_then_cached() {
    let (client, ns) = setup("auth-ok").await;
    let broker = authenticator(&client).await;
    let pod = opted_in_pod(&client, &ns, "api").await;
    wait_indexed(&broker, &pod).await;
    let token = pod_bound_token(&client, &pod, DEFAULT_BROKER_AUDIENCE, 600)
        .await
        .unwrap();

    let (identity, used) = broker.authenticator.authenticate(&token).await;
    let identity = identity.unwrap();
    assert_eq!(used, CacheUse::Miss);
    assert_eq!(identity.namespace, ns);
    assert_eq!(identity.service_account, "checkout");
    assert_eq!(identity.pod_name, "api");
    assert_eq!(Some(identity.pod_uid.clone()), pod.metadata.uid);
    assert_eq!(
        identity.subject(),
        format!("system:serviceaccount:{ns}:checkout")
    );

    let (again, used) = broker.authenticator.authenticate(&token).await;
    assert_eq!(again.unwrap(), identity);
    assert_eq!(used, CacheUse::Hit);
}

#[tokio::test]
async fn tokens_for_another_audience_unbound_tampered_or_forged_are_refused() {
    let (client, ns) = setup("auth-refused").await;
    let broker = authenticator(&client).await;
    let pod = opted_in_pod(&client, &ns, "api").await;
    wait_indexed(&broker, &pod).await;

    let other_audience = pod_bound_token(&client, &pod, "https://kubernetes.default.svc", 600)
        .await
        .unwrap();
    let (refused, _) = broker.authenticator.authenticate(&other_audience).await;
    assert!(
        matches!(refused, Err(AuthError::NotAuthenticated { .. })),
        "{refused:?}"
    );

    let unbound = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create_token_request(
            "checkout",
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![DEFAULT_BROKER_AUDIENCE.into()],
                    expiration_seconds: Some(600),
                    bound_object_ref: None,
                },
                ..TokenRequest::default()
            },
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let (refused, _) = broker.authenticator.authenticate(&unbound).await;
    assert_eq!(refused, Err(AuthError::NotPodBound));

    // A token whose signature was altered.
    let tampered = format!("{}x", &other_audience[..other_audience.len() - 1]);
    let (refused, _) = broker.authenticator.authenticate(&tampered).await;
    let error = refused.unwrap_err();
    assert_eq!(error.reason(), "not_authenticated");
    assert!(!error.to_string().contains(&tampered));

    // A forged token: exactly the claims of a real token for the broker,
    // bound to this live pod, with the issuer's key id, signed with a key
    // the attacker made.
    let genuine = pod_bound_token(&client, &pod, DEFAULT_BROKER_AUDIENCE, 600)
        .await
        .unwrap();
    let forged = forge(&genuine);
    let (refused, _) = broker.authenticator.authenticate(&forged).await;
    let error = refused.unwrap_err();
    assert_eq!(error.reason(), "not_authenticated");
    assert!(!error.to_string().contains(&forged));
    // The genuine one, for contrast, is accepted.
    broker.authenticator.authenticate(&genuine).await.0.unwrap();

    let (refused, _) = broker.authenticator.authenticate("").await;
    assert_eq!(refused, Err(AuthError::MissingToken));
}

#[tokio::test]
async fn a_deleted_pods_token_is_refused_as_soon_as_the_pod_watch_sees_it_though_its_review_is_cached()
 {
    let (client, ns) = setup("auth-gone").await;
    let broker = authenticator(&client).await;
    let pod = opted_in_pod(&client, &ns, "api").await;
    wait_indexed(&broker, &pod).await;
    let token = pod_bound_token(&client, &pod, DEFAULT_BROKER_AUDIENCE, 600)
        .await
        .unwrap();
    broker.authenticator.authenticate(&token).await.0.unwrap();

    Api::<Pod>::namespaced(client.clone(), &ns)
        .delete("api", &DeleteParams::default())
        .await
        .unwrap();
    let refused = eventually("the deleted pod's token to be refused", WAIT, || async {
        match broker.authenticator.authenticate(&token).await {
            (Err(error), CacheUse::Hit) => Some(error),
            _ => None,
        }
    })
    .await;
    assert_eq!(
        refused,
        AuthError::PodGone {
            namespace: ns.clone(),
            name: "api".into()
        }
    );
}

/// `token`'s header and claims, signed anew with an ES256 key made here.
fn forge(token: &str) -> String {
    use base64::Engine as _;
    let decode = |part: &str| -> serde_json::Value {
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    };
    let parts: Vec<&str> = token.split('.').collect();
    let (header, claims) = (decode(parts[0]), decode(parts[1]));
    let mut forged_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    forged_header.kid = header["kid"].as_str().map(str::to_owned);
    let key = rcgen::KeyPair::generate().unwrap();
    jsonwebtoken::encode(
        &forged_header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap()
}
