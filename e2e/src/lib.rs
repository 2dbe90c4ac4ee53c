//! ferry's end-to-end harness.
//!
//! [`Cluster`] runs a real Kubernetes control plane — etcd, kube-apiserver
//! and kube-controller-manager, built from Kubernetes' published Go modules by
//! `e2e/controlplane/build.sh` — on 127.0.0.1 with free ports and a private
//! temporary directory, so that everything ferry does at the boundary with
//! Kubernetes (admission, TokenRequest/TokenReview, RBAC, watches) is proven
//! against the real thing. There is no kubelet: pods are stored and stay
//! Pending unless a test stands in for the node.

mod admission_policies;
mod background;
mod broker;
mod cluster;
mod crds;
mod fixtures;
pub mod https_client;
mod hydra;
pub mod images;
pub mod invalid;
mod kubelet;
pub mod load;
mod log_capture;
mod node;
pub mod oidc_provider;
mod operator;
pub mod pki;
mod pod_network;
mod pod_stack;
mod postgres;
mod process;
pub mod sidecar_process;
mod stack;
mod webhook;
mod world;

pub use admission_policies::{
    harness_grant_writers, install_access_request_policy, install_broker_secret_policy,
    install_grant_policy,
};
pub use broker::{BrokerLimits, RunningBroker};
pub use cluster::{Cluster, controlplane_bin_dir};
pub use crds::install_crds;
pub use fixtures::{
    ColdPod, Subject, bench_cold_pods, bench_tenant, create_brokered_secret,
    create_brokered_secret_from, create_resource, direct_grant, grant, grant_to,
    rotatable_orders_db,
};
pub use hydra::{
    ClientSpec, HEADLESS_SUBJECT, Hydra, HydraOptions, client_secret_basic, hydra_bin_dir,
};
pub use kubelet::{REAL_NODE_NAME, RealNode};
pub use log_capture::{audit_lines, capture_logs, capture_logs_at, captured_logs};
pub use node::{NODE_NAME, NodeStandIn, PodRun, SeenFile};
pub use operator::RunningOperator;
pub use pod_stack::PodStack;
pub use postgres::{Postgres, postgres_bin_dir};
pub use stack::{FERRY_NAMESPACE, Stack};
pub use webhook::{RunningWebhook, wait_webhook_active};
pub use world::{LEASE_KEY, Tenant, World, broker_pod};

/// Polls `check` until it returns `Some`, and returns that; panics naming
/// `what` after `deadline`. Tests wait on conditions, never fixed sleeps.
pub async fn eventually<T, F, Fut>(what: &str, deadline: std::time::Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match poll_until(what, deadline, check).await {
        Ok(value) => value,
        Err(error) => panic!("{error}"),
    }
}

/// Like [`eventually`], for the harness's own waits: an error naming
/// `what` instead of a panic after `deadline`.
pub async fn poll_until<T, F, Fut>(
    what: &str,
    deadline: std::time::Duration,
    mut check: F,
) -> Result<T, HarnessError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = std::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if std::time::Instant::now() > end {
            return Err(HarnessError::TimedOut {
                what: what.to_owned(),
                deadline,
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Creates the namespaced object `value` (JSON, as a manifest would say it)
/// in `namespace`, and returns it as stored.
pub async fn create_object<K>(
    client: &kube::Client,
    namespace: &str,
    value: serde_json::Value,
) -> Result<K, HarnessError>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let mut object: K = serde_json::from_value(value)
        .map_err(|e| HarnessError::Process(format!("not a valid object: {e}")))?;
    object.meta_mut().namespace = Some(namespace.to_owned());
    create_resource(client, &object).await
}

/// A token for `pod`'s service account, bound to the pod (as the kubelet
/// mints for a projected token volume), for `audience`, valid for
/// `expiration_seconds`.
pub async fn pod_bound_token(
    client: &kube::Client,
    pod: &k8s_openapi::api::core::v1::Pod,
    audience: &str,
    expiration_seconds: i64,
) -> Result<String, HarnessError> {
    use k8s_openapi::api::authentication::v1::{
        BoundObjectReference, TokenRequest, TokenRequestSpec,
    };
    use k8s_openapi::api::core::v1::ServiceAccount;
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let service_account = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.service_account_name.as_deref())
        .unwrap_or("default");
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.to_owned()],
            expiration_seconds: Some(expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..TokenRequest::default()
    };
    let issued = kube::Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(service_account, &kube::api::PostParams::default(), &request)
        .await?;
    issued
        .status
        .map(|status| status.token)
        .ok_or_else(|| HarnessError::Process("TokenRequest returned no token".into()))
}

/// A child process (one of ferry's binaries) killed and reaped when
/// dropped, so a failing test leaves nothing running.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback address with a port free at the time of the call, for a
/// binary that binds its own listener.
pub fn free_port() -> Result<std::net::SocketAddr, HarnessError> {
    let io = |source| HarnessError::Io {
        what: "finding a free loopback port".into(),
        source,
    };
    std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(io)?
        .local_addr()
        .map_err(io)
}

/// The `q` quantile (0 to 1) of `sorted`, which must not be empty: the
/// smallest value at least a fraction `q` of the values do not exceed.
pub fn percentile(sorted: &[std::time::Duration], q: f64) -> std::time::Duration {
    let rank = (sorted.len() as f64 * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A benchmark setting from the environment variable `name`, or `default`.
pub fn bench_setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// The resident memory of process `pid` now and at its peak (VmRSS and
/// VmHWM), in KiB; zeros once it is gone. For benchmarks.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One plain-HTTP reply, as read by [`http_get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// The Content-Type header, if any.
    pub content_type: Option<String>,
    /// The body.
    pub body: String,
}

/// One HTTP/1.1 GET over a fresh connection, enough for admin ports
/// (`/livez`, `/readyz`, `/metrics`).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<HttpReply, HarnessError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = |source| HarnessError::Io {
        what: format!("GET http://{addr}{path}"),
        source,
    };
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut response = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read_to_string(&mut response),
    )
    .await
    .map_err(|_| HarnessError::Process(format!("GET http://{addr}{path} timed out")))?
    .map_err(io)?;
    let malformed = || HarnessError::Process(format!("GET http://{addr}{path}: malformed reply"));
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(malformed)?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(malformed)?;
    let content_type = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|(_, value)| value.trim().to_owned());
    Ok(HttpReply {
        status,
        content_type,
        body: body.to_owned(),
    })
}

/// Waits until the admin server on `admin` of a component started as a
/// process (`what`, for the error) answers `/readyz` with 200.
pub async fn wait_admin_ready(
    admin: std::net::SocketAddr,
    what: &str,
    deadline: std::time::Duration,
) -> Result<(), HarnessError> {
    poll_until(&format!("{what} to be ready"), deadline, || async {
        let reply = http_get(admin, "/readyz").await.ok()?;
        (reply.status == 200).then_some(())
    })
    .await
}

/// Posts the lease request `body` with `token` until the broker knows the
/// pod and its Grant (401 and 403 mean "not yet"), and returns the first
/// other answer.
pub async fn issue_once_known(
    broker: &https_client::HttpsClient,
    token: &str,
    body: &[u8],
) -> https_client::HttpsReply {
    eventually(
        "the broker to know the pod and its Grant",
        std::time::Duration::from_secs(60),
        || async {
            let reply = broker
                .request("POST", "/v1/leases", Some(token), body)
                .await
                .ok()?;
            (!matches!(reply.status, 401 | 403)).then_some(reply)
        },
    )
    .await
}

/// The file `name` of a lease in the broker's JSON, decoded (UTF-8).
pub fn lease_file(lease: &serde_json::Value, name: &str) -> String {
    use base64::Engine as _;
    let encoded = lease["files"][name].as_str().unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The message of the broker's error answer `reply` (empty if none).
pub fn error_message(reply: &https_client::HttpsReply) -> String {
    reply
        .json()
        .ok()
        .and_then(|body| body["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The bin directory a build script of the e2e crate prints last
/// (`script`, relative to it, such as `hydra/build.sh`; a no-op when its
/// cache is up to date), or the directory the variable `override_var`
/// names. Progress goes to stderr.
pub(crate) fn build_script_bin_dir(
    script: &str,
    override_var: &str,
) -> Result<std::path::PathBuf, String> {
    use std::path::{Path, PathBuf};
    if let Some(dir) = std::env::var_os(override_var) {
        return Ok(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let output = std::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} failed with {}",
            script.display(),
            output.status
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .last()
        .map(|line| PathBuf::from(line.trim()))
        .ok_or_else(|| format!("{} printed no bin directory", script.display()))
}

/// Builds the binary of workspace package `package` (a no-op when up to
/// date, in the same profile and target directory as the caller) and
/// returns its path. For tests and the demo, which run ferry's binaries as
/// a Deployment would.
pub fn workspace_binary(package: &str) -> Result<std::path::PathBuf, HarnessError> {
    // Tests run from <target>/<profile>/deps/, binaries from <target>/<profile>/.
    let exe = std::env::current_exe().map_err(|source| HarnessError::Io {
        what: "locating the running executable".into(),
        source,
    })?;
    let mut dir = exe
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .args(["build", "--quiet", "-p", package, "--bin", package])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    // Benchmarks run from the release directory: build the binary there.
    if dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().map_err(|source| HarnessError::Io {
        what: format!("running cargo build -p {package}"),
        source,
    })?;
    if !status.success() {
        return Err(HarnessError::Build(format!(
            "cargo build -p {package} failed: {status}"
        )));
    }
    Ok(dir.join(package))
}

/// Why the harness could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What the harness was doing.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A program the harness runs (the control plane, PostgreSQL, hydra)
    /// could not be built or found.
    #[error("harness binaries: {0}")]
    Build(String),
    /// Generating a certificate or key failed.
    #[error("generating certificates: {0}")]
    Pki(#[from] rcgen::Error),
    /// A process of the control plane misbehaved.
    #[error("{0}")]
    Process(String),
    /// A component exited while the cluster was starting.
    #[error(
        "{component} exited with {status} while the cluster was starting; last lines of its log:\n{log_tail}"
    )]
    Exited {
        /// The component that exited.
        component: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its log.
        log_tail: String,
    },
    /// The cluster did not become ready in time.
    #[error(
        "kube-apiserver was not ready after {seconds}s (last error: {last_error}); its log ends with:\n{log_tail}"
    )]
    NotReady {
        /// How long the harness waited.
        seconds: u64,
        /// The last readiness error seen.
        last_error: String,
        /// The end of the apiserver's log.
        log_tail: String,
    },
    /// Building a client or writing a kubeconfig failed.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// A call to the apiserver failed.
    #[error("apiserver: {0}")]
    Kube(#[from] kube::Error),
    /// A condition the harness waited on did not come true in time.
    #[error("timed out after {deadline:?} waiting for {what}")]
    TimedOut {
        /// What was awaited.
        what: String,
        /// How long the harness waited.
        deadline: std::time::Duration,
    },
}
