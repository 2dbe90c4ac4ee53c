//! What an x509 lease costs the sidecar at start and at each renewal: a
//! new key pair and its CSR. Run with `make bench`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use ferry_sidecar::csr::{KeyAlgorithm, generate};

fn bench(c: &mut Criterion) {
    for (label, algorithm) in [
        ("sidecar P-256 key + CSR", KeyAlgorithm::EcdsaP256),
        ("sidecar Ed25519 key + CSR", KeyAlgorithm::Ed25519),
    ] {
        c.bench_function(label, |b| b.iter(|| generate(algorithm).unwrap()));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
