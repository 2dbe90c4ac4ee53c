//! The `ferry-operator` binary answers `--help` and `--version`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn run(arg: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_ferry-operator"))
        .arg(arg)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "ferry-operator {arg} failed: {output:?}"
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn version_prints_name_and_crate_version() {
    assert_eq!(
        run("--version").trim(),
        format!("ferry-operator {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_describes_the_binary() {
    assert!(run("--help").contains("Usage: ferry-operator"));
}
