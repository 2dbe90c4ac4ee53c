//! The `ferry-webhook` binary answers `--help` and `--version`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn run(arg: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_ferry-webhook"))
        .arg(arg)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "ferry-webhook {arg} failed: {output:?}"
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn version_prints_name_and_crate_version() {
    assert_eq!(
        run("--version").trim(),
        format!("ferry-webhook {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_describes_the_binary() {
    assert!(run("--help").contains("Usage: ferry-webhook"));
}

#[test]
fn configuration_prints_the_mutating_webhook_configuration_for_a_service() {
    let output = Command::new(env!("CARGO_BIN_EXE_ferry-webhook"))
        .args(["configuration", "--namespace", "ferry", "--service", "hook"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let yaml = String::from_utf8(output.stdout).unwrap();
    let configuration: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(configuration["kind"], "MutatingWebhookConfiguration");
    let service = &configuration["webhooks"][0]["clientConfig"]["service"];
    assert_eq!(service["namespace"], "ferry");
    assert_eq!(service["name"], "hook");
    assert_eq!(service["path"], "/mutate");
}

#[test]
fn run_refuses_a_token_lifetime_the_kubelet_would_reject() {
    let output = Command::new(env!("CARGO_BIN_EXE_ferry-webhook"))
        .args([
            "run",
            "--token-expiration-seconds",
            "60",
            "--log-format",
            "text",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("token expiration 60s"), "{stderr}");
}
