//! How a ferry server process starts and stops, the same for every binary:
//! its log format, and cancelling on SIGTERM or SIGINT.

use tokio_util::sync::CancellationToken;
use tracing_subscriber::Layer as _;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (production).
    Json,
    /// Human-readable text (a terminal).
    Text,
}

/// Dependencies held at INFO whatever `RUST_LOG` asks, because below it
/// they log what ferry must never log: tokio-postgres every statement at
/// DEBUG (the broker's `CREATE ROLE … PASSWORD 'SCRAM-SHA-256$…'`); kube's
/// client the apiserver's replies at DEBUG and TRACE; the HTTP and TLS
/// stacks connection internals (headers carry bearer tokens) at TRACE.
/// `log` records (rustls) arrive under their module path, so are held too.
pub const CAPPED_TARGETS: &[&str] = &[
    "tokio_postgres",
    "postgres_protocol",
    "postgres_types",
    "kube_client",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "tokio_rustls",
    "tower",
    "tower_http",
    "warp",
];

/// The filter every ferry log goes through: `directives` (`RUST_LOG`'s
/// syntax) and, whatever they say, [`CAPPED_TARGETS`] at INFO or above.
pub fn log_filter<S>(
    directives: &str,
) -> impl tracing_subscriber::layer::Filter<S> + Send + Sync + use<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
    let asked = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .parse_lossy(directives);
    // Targets picks the most specific match, so a RUST_LOG naming a module
    // inside a capped crate cannot get past its cap.
    let caps = CAPPED_TARGETS.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |caps, target| caps.with_target(*target, LevelFilter::INFO),
    );
    asked.and(caps)
}

/// Installs the global tracing subscriber: `format` on stderr, level from
/// `RUST_LOG` (default `info`), with [`CAPPED_TARGETS`] held at INFO.
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry();
    match format {
        LogFormat::Json => registry
            .with(layer.json().with_filter(log_filter(&directives)))
            .init(),
        LogFormat::Text => registry
            .with(layer.with_filter(log_filter(&directives)))
            .init(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex, PoisonError};
    use tracing_subscriber::layer::SubscriberExt as _;

    /// What a subscriber filtered by `log_filter(directives)` writes while
    /// `log` runs.
    fn logged(directives: &str, log: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(move || writer.clone())
                .with_filter(log_filter(directives)),
        );
        tracing::subscriber::with_default(subscriber, log);
        String::from_utf8_lossy(&lines.0.lock().unwrap()).into_owned()
    }

    fn statement_and_ferry_debug() {
        tracing::debug!(
            target: "tokio_postgres::simple_query",
            "executing statement batch: CREATE ROLE r PASSWORD 'SCRAM-SHA-256$planted'"
        );
        tracing::trace!(target: "h2::codec", "authorization: Bearer planted-token");
        tracing::trace!(target: "ferry_broker::auth", "ferry's own trace line");
        tracing::info!(target: "tokio_postgres::connection", "an info line");
    }

    #[test]
    fn capped_dependencies_stay_quiet_below_info_whatever_rust_log_says() {
        for directives in [
            "trace",
            "debug",
            "tokio_postgres=trace,h2=trace,trace",
            "info,tokio_postgres::simple_query=trace,h2::codec=trace,ferry_broker=trace",
        ] {
            let text = logged(directives, statement_and_ferry_debug);
            assert!(!text.contains("planted"), "{directives}: {text}");
            assert!(text.contains("an info line"), "{directives}: {text}");
        }
        assert!(logged("trace", statement_and_ferry_debug).contains("ferry's own trace line"));
        assert!(!logged("info", statement_and_ferry_debug).contains("ferry's own trace line"));
    }
}
