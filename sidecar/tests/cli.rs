//! The `ferry-sidecar` binary: `--help`/`--version`, the `probe` exit codes,
//! and `run` refusing an incomplete environment with a clear error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use ferry_contract::{READY_MARKER, env};

fn sidecar() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry-sidecar"));
    // Whatever the test runner's environment holds, the sidecar sees none.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FERRY_") {
            command.env_remove(name);
        }
    }
    command
}

fn run(arg: &str) -> String {
    let output = sidecar().arg(arg).output().unwrap();
    assert!(
        output.status.success(),
        "ferry-sidecar {arg} failed: {output:?}"
    );
    String::from_utf8(output.stdout).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn version_prints_name_and_crate_version() {
    assert_eq!(
        run("--version").trim(),
        format!("ferry-sidecar {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_describes_the_binary() {
    let help = run("--help");
    assert!(help.contains("Usage: ferry-sidecar"));
    for command in ["run", "init", "probe"] {
        assert!(help.contains(command), "{help}");
    }
}

#[test]
fn probe_fails_with_a_reason_until_the_ready_marker_exists() {
    let dir = tempfile::tempdir().unwrap();
    let output = sidecar()
        .arg("probe")
        .env(env::SECRETS_DIR, dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let reason = stderr(&output);
    assert!(reason.starts_with("not ready:"), "{reason}");
    assert_eq!(reason.trim_end().lines().count(), 1, "{reason}");

    std::fs::write(dir.path().join(READY_MARKER), "{}").unwrap();
    let output = sidecar()
        .arg("probe")
        .env(env::SECRETS_DIR, dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
}

#[test]
fn probe_without_a_directory_is_not_ready_rather_than_a_usage_error() {
    let output = sidecar().arg("probe").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("FERRY_SECRETS_DIR is not set"));
}

#[test]
fn probe_takes_the_directory_as_a_flag_too() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(READY_MARKER), "{}").unwrap();
    let status = sidecar()
        .args(["probe", "--dir"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn run_without_its_environment_names_the_missing_variable() {
    let output = sidecar().arg("run").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let log = stderr(&output);
    let line: serde_json::Value = serde_json::from_str(log.trim()).unwrap();
    assert_eq!(line["event"], "config_invalid");
    assert!(
        line["error"].as_str().unwrap().contains(env::BROKER_URL),
        "{log}"
    );
}

#[test]
fn run_refuses_a_malformed_secret_list_before_calling_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let output = sidecar()
        .arg("init")
        .env(env::BROKER_URL, "https://127.0.0.1:1")
        .env(env::SECRETS, "payments/orders-db,no-namespace")
        .env(env::SECRETS_DIR, dir.path())
        .env(env::TOKEN_FILE, dir.path().join("token"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let log = stderr(&output);
    let line: serde_json::Value = serde_json::from_str(log.trim()).unwrap();
    let error = line["error"].as_str().unwrap();
    assert!(
        error.contains("\"no-namespace\" is not namespace/name"),
        "{log}"
    );
}

#[test]
fn run_gives_up_at_the_startup_deadline_when_the_broker_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "not-a-real-token").unwrap();
    // A port nothing listens on: connection refused, retried until the deadline.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = sidecar()
        .args(["run", "--startup-timeout-seconds", "1"])
        .env(env::BROKER_URL, format!("https://127.0.0.1:{port}"))
        .env(env::SECRETS, "payments/orders-db")
        .env(env::SECRETS_DIR, dir.path().join("volume"))
        .env(env::TOKEN_FILE, dir.path().join("token"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let log = stderr(&output);
    assert!(log.contains("no leases within 1s"), "{log}");
    assert!(log.contains("issue_failed"), "{log}");
    assert!(!log.contains("not-a-real-token"), "{log}");
}

#[test]
fn sigterm_during_start_stops_retrying_and_exits_zero() {
    use std::io::{BufRead, BufReader};

    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "t").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = sidecar()
        .arg("run")
        .env(env::BROKER_URL, format!("https://127.0.0.1:{port}"))
        .env(env::SECRETS, "payments/orders-db")
        .env(env::SECRETS_DIR, dir.path())
        .env(env::TOKEN_FILE, dir.path().join("token"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Signal once it is retrying, i.e. well into its start-up.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let retrying = lines
        .by_ref()
        .map(Result::unwrap)
        .find(|l| l.contains("issue_failed"));
    assert!(retrying.is_some());
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    // Giving up at the start-up deadline instead would exit 1 and say so;
    // exit 0 with "stopped" as the last word means the signal ended it.
    assert_eq!(status.code(), Some(0));
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(
        rest.last().is_some_and(|l| l.contains("\"stopped\"")),
        "{rest:?}"
    );
    assert!(
        !rest.iter().any(|l| l.contains("no leases within")),
        "{rest:?}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only the token is left"
    );
}
