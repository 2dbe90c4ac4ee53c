//! Every log line of a test binary, captured as JSON, so tests can check
//! audit lines and that no planted secret value was ever logged.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

fn buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    buffer_at("info")
}

/// The capture buffer, installing the subscriber with `directives` (as
/// `RUST_LOG` would say them) on first use.
fn buffer_at(directives: &str) -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl Write for Capture {
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
        let writer = Arc::clone(&buffer);
        // A test binary installs one subscriber; a second attempt is a no-op.
        // The filter ferry's binaries install, capped dependencies and all.
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_writer(move || Capture(Arc::clone(&writer)))
            .with_filter(ferry_runtime::lifecycle::log_filter(directives));
        let _ = tracing_subscriber::registry().with(layer).try_init();
        buffer
    })
}

/// Starts capturing this process's log lines (idempotent). Call it before
/// starting components whose logs a test checks.
pub fn capture_logs() {
    buffer();
}

/// Starts capturing this process's log lines at `directives` (`RUST_LOG`'s
/// syntax, such as `trace`) through the filter ferry's binaries use; the
/// first capture call of a test binary decides the level.
pub fn capture_logs_at(directives: &str) {
    buffer_at(directives);
}

/// Every line logged since [`capture_logs`].
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&buffer().lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
}

/// The fields of every audit line (`target: ferry::audit`) logged since
/// [`capture_logs`] for which `matches` holds: tests check the lines of
/// their own pod, lease or role, never just "some line of this kind".
pub fn audit_lines(matches: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
    captured_logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["target"] == "ferry::audit")
        .map(|mut line| line["fields"].take())
        .filter(|fields| matches(fields))
        .collect()
}
