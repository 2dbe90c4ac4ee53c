//! ferry's end-to-end harness.
//!
//! [`Cluster`] runs a real Kubernetes control plane — etcd, kube-apiserver
//! and kube-controller-manager, built from Kubernetes' published Go modules by
//! `e2e/controlplane/build.sh` — on 127.0.0.1 with free ports and a private
//! temporary directory, so that everything ferry does at the boundary with
//! Kubernetes (admission, TokenRequest/TokenReview, RBAC, watches) is proven
//! against the real thing. There is no kubelet: pods are stored and stay
//! Pending unless a test stands in for the node.

mod cluster;
mod crds;
mod operator;
pub mod pki;
mod process;

pub use cluster::{Cluster, controlplane_bin_dir};
pub use crds::install_crds;
pub use operator::RunningOperator;

/// Polls `check` until it returns `Some`, and returns that; panics with
/// `what` after `deadline`. Tests wait on conditions, never fixed sleeps.
pub async fn eventually<T, F, Fut>(what: &str, deadline: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = std::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if std::time::Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
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
    /// The control-plane binaries could not be built or found.
    #[error("control-plane binaries: {0}")]
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
}
