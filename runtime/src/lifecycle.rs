//! How a ferry server process starts and stops, the same for every binary:
//! its log format, and cancelling on SIGTERM or SIGINT.

use tokio_util::sync::CancellationToken;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (production).
    Json,
    /// Human-readable text (a terminal).
    Text,
}

/// Installs the global tracing subscriber: `format` on stderr, level from
/// `RUST_LOG` (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Cancels `shutdown` on SIGTERM (the kubelet deleting the pod) or SIGINT
/// (Ctrl-C).
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        },
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("SIGINT: shutting down");
        }
    }
    shutdown.cancel();
}

/// Logs a failed watch of `what` that the watcher retries: a watch whose
/// resourceVersion expired (410 Gone) is the apiserver's normal way of
/// asking for a fresh list, so only other failures are warnings.
pub fn log_watch_error(what: &str, error: &kube::runtime::watcher::Error) {
    use kube::runtime::watcher::Error;
    match error {
        Error::WatchError(status) if status.code == 410 => {
            tracing::debug!(%error, "{what} watch expired; listing afresh");
        }
        _ => tracing::warn!(%error, "{what} watch failed; retrying"),
    }
}
