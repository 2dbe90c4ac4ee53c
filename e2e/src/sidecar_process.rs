//! The `ferry-sidecar` binary run as a local process, with the environment
//! the webhook injects and a volume and token file of its own, for tests of
//! what it does against a broker: the real one, or one in front of which a
//! test breaks the connection.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use ferry_contract::env;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use crate::{HarnessError, KillOnDrop, eventually, workspace_binary};

/// What the sidecar is started for.
#[derive(Debug, Clone)]
pub struct SidecarSpec<'a> {
    /// The broker's URL.
    pub broker_url: &'a str,
    /// The CA the broker's certificate chains to, PEM.
    pub broker_ca_pem: &'a str,
    /// The pod's projected token for the broker.
    pub token: &'a str,
    /// The secrets, `namespace/name` each.
    pub secrets: &'a [String],
    /// The pod's namespace.
    pub pod_namespace: &'a str,
    /// The pod's name.
    pub pod_name: &'a str,
}

/// A running sidecar. Killed on drop.
pub struct SidecarProcess {
    child: KillOnDrop,
    binary: PathBuf,
    volume: PathBuf,
    log: PathBuf,
    _work: tempfile::TempDir,
}

impl SidecarProcess {
    /// Starts the sidecar (the workspace's build, or `FERRY_E2E_SIDECAR_BIN`
    /// to run another, such as the release one) as `spec` says.
    pub fn start(spec: &SidecarSpec<'_>) -> Result<Self, HarnessError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| HarnessError::Io { what, source }
        };
        let work = tempfile::tempdir().map_err(io("creating the sidecar's directory"))?;
        let token_file = work.path().join("token");
        std::fs::write(&token_file, spec.token).map_err(io("writing the token file"))?;
        let volume = work.path().join("volume");
        std::fs::create_dir(&volume).map_err(io("creating the volume"))?;
        let log = work.path().join("sidecar.log");
        let binary: PathBuf = match std::env::var_os("FERRY_E2E_SIDECAR_BIN") {
            Some(path) => path.into(),
            None => workspace_binary("ferry-sidecar")?,
        };
        let stderr = std::fs::File::create(&log).map_err(io("creating the sidecar's log"))?;
        let child = Command::new(&binary)
            .arg("run")
            .env_clear()
            .env(env::BROKER_URL, spec.broker_url)
            .env(env::BROKER_CA, spec.broker_ca_pem)
            .env(env::SECRETS, spec.secrets.join(","))
            .env(env::SECRETS_DIR, &volume)
            .env(env::TOKEN_FILE, &token_file)
            .env(env::POD_NAME, spec.pod_name)
            .env(env::POD_NAMESPACE, spec.pod_namespace)
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(io("starting ferry-sidecar"))?;
        Ok(Self {
            child: KillOnDrop(child),
            binary,
            volume,
            log,
            _work: work,
        })
    }

    /// The binary that runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The secrets volume (what the pod mounts).
    pub fn volume(&self) -> &Path {
        &self.volume
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log so far, one JSON object a line (a line that is not JSON
    /// becomes a string, for the assertion that shows it).
    pub fn log_lines(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|_| Value::from(line)))
            .collect()
    }

    /// The first log line of `event` for which `matches` holds, once there
    /// is one, within `deadline`.
    pub async fn wait_for_line(
        &self,
        event: &str,
        deadline: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        eventually(&format!("a {event} line"), deadline, || {
            std::future::ready(
                self.log_lines()
                    .into_iter()
                    .find(|line| line["event"] == event && matches(line)),
            )
        })
        .await
    }

    /// Waits, within `deadline`, for the process to exit.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let child = &mut self.child.0;
        eventually("the sidecar to exit", deadline, || {
            std::future::ready(child.try_wait().ok().flatten())
        })
        .await
    }
}

/// From a sidecar's log: when the lease of `secret` that the sidecar let
/// expire was due to end (the `expires_at` of the last `secret_written`
/// line before its `secret_expired` line), and when the sidecar logged the
/// expiry. `None` until the log holds both.
pub fn expiry_in_log(log: &str, secret: &str) -> Option<(Timestamp, Timestamp)> {
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|line: &Value| line["secret"] == secret)
        .collect();
    let expired = lines
        .iter()
        .position(|line| line["event"] == "secret_expired")?;
    let written = lines[..expired]
        .iter()
        .rev()
        .find(|line| line["event"] == "secret_written")?;
    let time = |value: &Value| value.as_str()?.parse::<Timestamp>().ok();
    Some((time(&written["expires_at"])?, time(&lines[expired]["ts"])?))
}
