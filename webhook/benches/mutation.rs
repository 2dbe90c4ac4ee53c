//! The webhook's CPU path, without I/O: the pure mutation of one pod, and a
//! whole AdmissionReview (parse the apiserver's body, mutate, serialise the
//! answer). Run with `make bench`; prints criterion's time per pod.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use ferry_api::resources::Grant;
use ferry_runtime::grant_index::GrantIndex;
use ferry_webhook::admission::review_pod_admission;
use ferry_webhook::config::InjectionConfig;
use ferry_webhook::mutation::{Injection, inject_sidecar};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

fn fixture() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/create_opted_in_pod.json"
    ))
    .unwrap()
}

fn grant(sa: &str, secret: (&str, &str), i: usize) -> Grant {
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "Grant",
        "metadata": {"name": format!("g-{i}"), "namespace": "orders",
                     "labels": {"app.kubernetes.io/managed-by": "ferry-operator"}},
        "spec": {"serviceAccount": sa, "secret": {"namespace": secret.0, "name": secret.1},
                 "maxTtl": "1h", "policy": {"namespace": secret.0, "name": "p", "uid": format!("u-{}", secret.0)}},
    }))
    .unwrap()
}

/// The fixture's two Grants among 10,000 others, as in a busy cluster.
fn grants() -> GrantIndex {
    let mut all = vec![
        grant("api", ("orders", "orders-db"), 0),
        grant("api", ("payments", "orders-key"), 1),
    ];
    all.extend((2..10_000).map(|i| grant(&format!("sa-{i}"), ("orders", "orders-db"), i)));
    // The AccessPolicy behind the Grants of each secret namespace.
    let policies: [ferry_api::resources::AccessPolicy; 2] =
        ["orders", "payments"].map(|namespace| {
            serde_json::from_value(json!({
                "apiVersion": "ferry.dev/v1alpha1", "kind": "AccessPolicy",
                "metadata": {"name": "p", "namespace": namespace, "uid": format!("u-{namespace}")},
                "spec": {"subjects": [{"namespaceSelector": {}, "serviceAccountName": "api"}],
                         "secrets": [{"name": "orders-db"}, {"name": "orders-key"}]},
            }))
            .unwrap()
        });
    GrantIndex::from_objects(all, policies)
}

fn bench(c: &mut Criterion) {
    let body = fixture();
    let review: Value = serde_json::from_slice(&body).unwrap();
    let pod: Pod = serde_json::from_value(review["request"]["object"].clone()).unwrap();
    let config = InjectionConfig::default();
    let grants = grants();
    let now = Timestamp::now();

    assert!(matches!(
        inject_sidecar(&pod, "orders", &config, &grants, now),
        Ok(Injection::Injected { .. })
    ));
    c.bench_function("inject_sidecar (pure mutation, one pod)", |b| {
        b.iter(|| inject_sidecar(&pod, "orders", &config, &grants, now))
    });
    c.bench_function(
        "review_pod_admission (parse + mutate + serialise, one pod)",
        |b| {
            b.iter(|| {
                let reviewed = review_pod_admission(&body, &config, &grants, now).unwrap();
                serde_json::to_vec(&reviewed.review).unwrap()
            })
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
