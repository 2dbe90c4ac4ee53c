//! The operator's certificate manager against a real apiserver, under
//! exactly its documented RBAC (rbac/operator.yaml and
//! rbac/operator-certificates.yaml): it creates the CA and serving
//! certificate Secrets, patches the webhook configuration's and the
//! live-lease APIService's caBundle, the
//! certificates verify for the Services' DNS names, a second pass changes
//! nothing, and a wrong or ageing certificate is reissued.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use ferry_contract::WEBHOOK_CONFIGURATION_NAME;
use ferry_contract::lease_api::API_SERVICE_NAME;
use ferry_e2e::Cluster;
use ferry_operator::certificates::{
    CA_KEY, CERT_KEY, CertificateConfig, DEFAULT_BROKER_TLS_SECRET, DEFAULT_CA_SECRET,
    DEFAULT_WEBHOOK_TLS_SECRET, PRIVATE_KEY_KEY, ServingCertificate, ensure_certificates,
    service_dns_names,
};
use ferry_webhook::configuration::{WebhookEndpoint, mutating_webhook_configuration};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use time::OffsetDateTime;

/// The namespace the RBAC files name.
const NAMESPACE: &str = "ferry-system";
const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

fn config() -> CertificateConfig {
    let serving = |service: &str, secret: &str| ServingCertificate {
        secret: secret.into(),
        dns_names: service_dns_names(service, NAMESPACE, "cluster.local"),
    };
    CertificateConfig {
        namespace: NAMESPACE.into(),
        ca_secret: DEFAULT_CA_SECRET.into(),
        serving: vec![
            serving("ferry-webhook", DEFAULT_WEBHOOK_TLS_SECRET),
            serving("ferry-broker", DEFAULT_BROKER_TLS_SECRET),
        ],
        webhook_configuration: WEBHOOK_CONFIGURATION_NAME.into(),
        api_service: Some(API_SERVICE_NAME.into()),
        ca_validity: 3650 * DAY,
        serving_validity: 365 * DAY,
    }
}

fn data(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

fn verifies(ca_pem: &str, cert_pem: &str, name: &str) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    verifier
        .verify_server_cert(
            &cert,
            &[],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .is_ok()
}

#[tokio::test]
async fn operator_keeps_ca_serving_certificates_and_ca_bundle_with_exactly_its_rbac() {
    let cluster = Cluster::shared().await.unwrap();
    let admin = cluster.client().unwrap();
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for args in [
        vec!["create", "namespace", NAMESPACE],
        vec![
            "apply",
            "-f",
            &format!("{repo}/rbac/operator.yaml"),
            "-f",
            &format!("{repo}/rbac/operator-certificates.yaml"),
        ],
    ] {
        let output = cluster.kubectl().args(&args).output().unwrap();
        assert!(output.status.success(), "kubectl {args:?}: {output:?}");
    }
    // The configuration as the chart installs it: no caBundle yet.
    let configuration = mutating_webhook_configuration(
        &WebhookEndpoint::Service {
            namespace: NAMESPACE.into(),
            name: "ferry-webhook".into(),
            port: 443,
        },
        b"",
        NAMESPACE,
    );
    let configurations = Api::<MutatingWebhookConfiguration>::all(admin.clone());
    configurations
        .patch(
            WEBHOOK_CONFIGURATION_NAME,
            &PatchParams::apply("chart").force(),
            &Patch::Apply(&configuration),
        )
        .await
        .unwrap();
    // The live-lease APIService as the chart installs it: no caBundle yet.
    // (Its Service does not exist here: the group is simply unavailable.)
    let api_services = Api::<APIService>::all(admin.clone());
    let api_service: APIService = serde_json::from_value(serde_json::json!({
        "metadata": {"name": API_SERVICE_NAME},
        "spec": {
            "group": ferry_contract::lease_api::GROUP,
            "version": ferry_contract::lease_api::VERSION,
            "service": {"namespace": NAMESPACE, "name": "ferry-broker", "port": 8444},
            "groupPriorityMinimum": 1000,
            "versionPriority": 15,
        },
    }))
    .unwrap();
    api_services
        .create(&PostParams::default(), &api_service)
        .await
        .unwrap();

    let operator = cluster
        .impersonating_client(
            "system:serviceaccount:ferry-system:ferry-operator",
            &[
                "system:serviceaccounts",
                "system:serviceaccounts:ferry-system",
            ],
        )
        .unwrap();
    let config = config();
    let now = OffsetDateTime::now_utc();
    let first = ensure_certificates(&operator, &config, now).await.unwrap();
    assert_eq!(
        first.written,
        [
            DEFAULT_CA_SECRET,
            DEFAULT_WEBHOOK_TLS_SECRET,
            DEFAULT_BROKER_TLS_SECRET
        ]
    );
    assert!(first.ca_bundle_patched);
    assert!(first.api_service_patched);

    let secrets = Api::<Secret>::namespaced(admin.clone(), NAMESPACE);
    let ca = secrets.get(DEFAULT_CA_SECRET).await.unwrap();
    let ca_pem = data(&ca, CERT_KEY);
    for (secret, service) in [
        (DEFAULT_WEBHOOK_TLS_SECRET, "ferry-webhook"),
        (DEFAULT_BROKER_TLS_SECRET, "ferry-broker"),
    ] {
        let stored = secrets.get(secret).await.unwrap();
        assert_eq!(stored.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(data(&stored, CA_KEY), ca_pem);
        assert!(data(&stored, PRIVATE_KEY_KEY).contains("PRIVATE KEY"));
        let cert = data(&stored, CERT_KEY);
        for name in service_dns_names(service, NAMESPACE, "cluster.local") {
            assert!(verifies(&ca_pem, &cert, &name), "{secret} for {name}");
        }
        assert!(!verifies(&ca_pem, &cert, "kubernetes.default.svc"));
        assert!(!verifies(
            &cluster.ca_pem(),
            &cert,
            &format!("{service}.{NAMESPACE}.svc")
        ));
    }
    let patched = configurations
        .get(WEBHOOK_CONFIGURATION_NAME)
        .await
        .unwrap();
    let webhook = &patched.webhooks.unwrap()[0];
    assert_eq!(
        webhook.client_config.ca_bundle.as_ref().unwrap().0,
        ca_pem.as_bytes()
    );
    // Nothing else in the configuration changed.
    assert_eq!(
        webhook.namespace_selector,
        configuration.webhooks.as_ref().unwrap()[0].namespace_selector
    );

    let spec = api_services
        .get(API_SERVICE_NAME)
        .await
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(spec.ca_bundle.unwrap().0, ca_pem.as_bytes());
    assert_eq!(
        spec.service.unwrap().port,
        Some(8444),
        "only caBundle changed"
    );

    // A second pass writes nothing.
    let second = ensure_certificates(&operator, &config, now).await.unwrap();
    assert!(
        second.written.is_empty() && !second.ca_bundle_patched && !second.api_service_patched,
        "{second:?}"
    );

    // A serving Secret that no longer matches the CA is reissued, alone.
    let mut broker = secrets.get(DEFAULT_BROKER_TLS_SECRET).await.unwrap();
    broker.data.as_mut().unwrap().insert(
        CA_KEY.into(),
        k8s_openapi::ByteString(cluster.ca_pem().into_bytes()),
    );
    secrets
        .replace(DEFAULT_BROKER_TLS_SECRET, &PostParams::default(), &broker)
        .await
        .unwrap();
    let repaired = ensure_certificates(&operator, &config, now).await.unwrap();
    assert_eq!(repaired.written, [DEFAULT_BROKER_TLS_SECRET]);
    let broker = secrets.get(DEFAULT_BROKER_TLS_SECRET).await.unwrap();
    assert_eq!(data(&broker, CA_KEY), ca_pem);

    // A caBundle someone else changed is put back.
    let other = k8s_openapi::ByteString(cluster.ca_pem().into_bytes());
    configurations
        .patch(
            WEBHOOK_CONFIGURATION_NAME,
            &PatchParams::default(),
            &Patch::Strategic(serde_json::json!({"webhooks": [{
                "name": ferry_webhook::configuration::WEBHOOK_NAME,
                "clientConfig": {"caBundle": other},
            }]})),
        )
        .await
        .unwrap();
    let reset = ensure_certificates(&operator, &config, now).await.unwrap();
    assert!(
        reset.ca_bundle_patched && reset.written.is_empty(),
        "{reset:?}"
    );

    // Two thirds into their lifetime the serving certificates are renewed;
    // the CA, far from it, is kept.
    let later = now + time::Duration::days(250);
    let renewed = ensure_certificates(&operator, &config, later)
        .await
        .unwrap();
    assert_eq!(
        renewed.written,
        [DEFAULT_WEBHOOK_TLS_SECRET, DEFAULT_BROKER_TLS_SECRET]
    );
    assert_eq!(
        data(&secrets.get(DEFAULT_CA_SECRET).await.unwrap(), CERT_KEY),
        ca_pem
    );
    api_services
        .delete(API_SERVICE_NAME, &Default::default())
        .await
        .unwrap();
}
