//! What an x509 lease costs the broker beyond any lease: reading the CA
//! from its Secret's PEM (done per issuance) and checking and signing the
//! pod's CSR, for P-256 and Ed25519 keys. Run with `make bench`; prints
//! criterion's time per operation (its inverse is the issuance rate one
//! core sustains for this part).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use ferry_broker::providers::x509::{Authority, KeyType, Names, Usage, sign};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SignatureAlgorithm,
};
use time::OffsetDateTime;

fn ca() -> (String, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "bench CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

fn csr(alg: &'static SignatureAlgorithm) -> Vec<u8> {
    let key = KeyPair::generate_for(alg).unwrap();
    CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec()
}

fn bench(c: &mut Criterion) {
    let (cert, key) = ca();
    c.bench_function("x509 CA from PEM (per issuance)", |b| {
        b.iter(|| Authority::from_pem(&cert, &key, "Secret bench/ca").unwrap())
    });
    let authority = Authority::from_pem(&cert, &key, "Secret bench/ca").unwrap();
    let names = Names {
        uri: "spiffe://cluster.local/ns/shop/sa/orders".into(),
        common_name: Some("orders".into()),
        dns_names: vec!["orders.shop.svc".into()],
    };
    let now = OffsetDateTime::now_utc();
    let window = (now, now + time::Duration::minutes(15));
    let allowed = [KeyType::EcdsaP256, KeyType::Ed25519];
    for (label, alg) in [
        (
            "x509 check + sign a P-256 CSR",
            &rcgen::PKCS_ECDSA_P256_SHA256,
        ),
        ("x509 check + sign an Ed25519 CSR", &rcgen::PKCS_ED25519),
    ] {
        let request = csr(alg);
        c.bench_function(label, |b| {
            b.iter(|| {
                sign(
                    &authority,
                    &request,
                    &allowed,
                    &names,
                    &[Usage::ClientAuth],
                    window,
                )
                .unwrap()
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
