//! What each crate must never link, checked against `cargo tree`: the
//! crate docs say why (the sidecar's size, the webhook's small surface,
//! the contract and the API types usable anywhere). A dependency that
//! creeps in through a convenient import fails here, not in review.

#![allow(clippy::expect_used)]

use std::process::Command;

/// A crate and the packages that must not be in its normal (non-dev)
/// dependency tree.
const NEVER: &[(&str, &[&str])] = &[
    (
        "ferry-contract",
        &["kube", "k8s-openapi", "tokio", "schemars"],
    ),
    (
        "ferry-sidecar",
        &[
            "kube",
            "k8s-openapi",
            "tokio",
            "hyper",
            "schemars",
            "ferry-api",
        ],
    ),
    (
        "ferry-api",
        &[
            "tokio",
            "hyper",
            "kube-client",
            "tokio-postgres",
            "rcgen",
            "warp",
        ],
    ),
    (
        "ferry-runtime",
        &[
            "tokio-postgres",
            "minijinja",
            "governor",
            "rcgen",
            "jsonwebtoken",
        ],
    ),
    (
        "ferry-webhook",
        &[
            "tokio-postgres",
            "minijinja",
            "governor",
            "rcgen",
            "jsonwebtoken",
            "ferry-broker",
            "ferry-operator",
        ],
    ),
    // The broker signs x509 leases' certificates with rcgen.
    ("ferry-broker", &["ferry-operator", "ferry-webhook"]),
    ("ferry-operator", &["ferry-webhook", "ferry-sidecar"]),
];

/// The package names in `krate`'s normal dependency tree, host target.
fn tree(krate: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["tree", "--offline", "--edges", "normal", "--prefix", "none"])
        .args(["--format", "{p}", "--package", krate])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree -p {krate} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn no_crate_links_what_its_docs_say_it_never_depends_on() {
    let mut offences = Vec::new();
    for (krate, never) in NEVER {
        let packages = tree(krate);
        assert!(
            packages.iter().any(|package| package == krate),
            "cargo tree -p {krate} did not list the crate itself: {packages:?}"
        );
        for forbidden in *never {
            if packages.iter().any(|package| package == forbidden) {
                offences.push(format!("{krate} depends on {forbidden}"));
            }
        }
    }
    assert!(offences.is_empty(), "{}", offences.join("\n"));
}
