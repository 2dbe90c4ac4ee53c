//! How long deriving one policy's Grants takes (the pure core of every
//! AccessPolicy reconcile), from the smallest policy to a wide one.
//! Run with `make bench`; prints criterion's time per derivation.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use criterion::{Criterion, criterion_group, criterion_main};
use ferry_api::grants::{PolicyWorld, derive_grants};
use ferry_api::resources::{AccessPolicy, BrokeredSecret};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

fn secrets(n: usize) -> BTreeMap<String, BrokeredSecret> {
    (0..n)
        .map(|i| {
            let name = format!("secret-{i}");
            let secret: BrokeredSecret = serde_json::from_value(json!({
                "apiVersion": "ferry.dev/v1alpha1", "kind": "BrokeredSecret",
                "metadata": {"name": name, "namespace": "payments"},
                "spec": {"ttl": "5m", "maxTtl": "1h", "source": {"jwt": {"audience": ["a", "b"], "scopes": ["read", "write"]}}},
            }))
            .unwrap();
            (name, secret)
        })
        .collect()
}

fn policy(subjects: serde_json::Value, secrets: usize) -> AccessPolicy {
    let entries: Vec<_> = (0..secrets)
        .map(|i| json!({"name": format!("secret-{i}"), "maxTtl": "10m", "audience": ["a"]}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": "p", "namespace": "payments", "uid": "uid"},
        "spec": {"subjects": subjects, "secrets": entries},
    }))
    .unwrap()
}

fn namespaces(n: usize) -> Vec<Namespace> {
    (0..n)
        .map(|i| {
            let team = if i % 2 == 0 { "payments" } else { "shop" };
            serde_json::from_value(
                json!({"metadata": {"name": format!("ns-{i}"), "labels": {"team": team}}}),
            )
            .unwrap()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let now: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
    let one = policy(
        json!([{"serviceAccount": {"name": "checkout", "namespace": "shop"}}]),
        1,
    );
    let wide_subjects: Vec<_> = (0..64)
        .map(|i| json!({"serviceAccount": {"name": format!("sa-{i}"), "namespace": "shop"}}))
        .collect();
    let wide = policy(json!(wide_subjects), 32);
    let selector = policy(
        json!([{"namespaceSelector": {"matchLabels": {"team": "payments"}}, "serviceAccountName": "batch"}]),
        4,
    );
    let few_secrets = secrets(32);
    let many_namespaces = namespaces(1000);

    let mut group = c.benchmark_group("derive_grants");
    group.bench_function("1 subject x 1 secret", |b| {
        b.iter(|| {
            derive_grants(
                &one,
                PolicyWorld {
                    secrets: &few_secrets,
                    namespaces: &[],
                    now,
                    approved: &[],
                },
            )
        })
    });
    group.bench_function("64 subjects x 32 secrets (2048 grants)", |b| {
        b.iter(|| {
            derive_grants(
                &wide,
                PolicyWorld {
                    secrets: &few_secrets,
                    namespaces: &[],
                    now,
                    approved: &[],
                },
            )
        })
    });
    group.bench_function(
        "selector over 1000 namespaces x 4 secrets (2000 grants)",
        |b| {
            b.iter(|| {
                derive_grants(
                    &selector,
                    PolicyWorld {
                        secrets: &few_secrets,
                        namespaces: &many_namespaces,
                        now,
                        approved: &[],
                    },
                )
            })
        },
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
