//! The command-line options every ferry server shares, defined once and
//! flattened into each binary's own: where the admin port listens and how
//! logs look ([`AdminArgs`]), and for the HTTPS servers also where they
//! listen and which certificate they serve ([`ServingArgs`]). A binary
//! adjusts a default or an environment variable with clap's `mut_arg`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::https::{ReloadingCertificate, TlsError};
use crate::lifecycle::LogFormat;
use crate::serving::ServingLimits;

/// Options of every ferry server: the admin port and the log format.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Address of the admin server (/livez, /readyz, /metrics).
    #[arg(long, env = "FERRY_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: String,
    /// Log format: JSON lines for production, text for a terminal.
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// Options of a ferry HTTPS server (the webhook, the broker).
#[derive(Debug, Clone, clap::Args)]
pub struct ServingArgs {
    /// Address of the HTTPS server.
    #[arg(long, env = "FERRY_LISTEN_ADDR", default_value = "0.0.0.0:8443")]
    pub listen_addr: String,
    /// The admin port and the log format.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// PEM certificate chain served; reloaded when the file changes.
    #[arg(long, env = "FERRY_TLS_CERT", default_value = "/etc/ferry/tls/tls.crt")]
    pub tls_cert: PathBuf,
    /// PEM private key of the certificate; reloaded with it.
    #[arg(long, env = "FERRY_TLS_KEY", default_value = "/etc/ferry/tls/tls.key")]
    pub tls_key: PathBuf,
    /// How often the certificate files are checked for changes, in seconds.
    #[arg(long, env = "FERRY_TLS_RELOAD_SECONDS", default_value_t = 10)]
    pub tls_reload_seconds: u64,
    /// Connections open at once from all clients; more wait in the accept
    /// queue.
    #[arg(long, env = "FERRY_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,
    /// Connections open at once from one IP address; more are closed at once.
    #[arg(long, env = "FERRY_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 128)]
    pub max_connections_per_address: usize,
    /// Seconds a connection may take to send a request's headers, from the
    /// TLS handshake on and after each response (idle keep-alive).
    #[arg(long, env = "FERRY_IDLE_TIMEOUT_SECONDS", default_value_t = 10)]
    pub idle_timeout_seconds: u64,
    /// Seconds a request's body may take to arrive once its headers have.
    #[arg(long, env = "FERRY_BODY_TIMEOUT_SECONDS", default_value_t = 10)]
    pub body_timeout_seconds: u64,
    /// The largest request body read, in bytes (each server sets its own
    /// default, sized to its API).
    #[arg(long, env = "FERRY_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: u64,
    /// Seconds both ports keep answering after SIGTERM, each reply asking
    /// its client to reconnect elsewhere, while the pod leaves its
    /// Service's endpoints; then the server stops accepting and drains.
    /// Keep it well under the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "FERRY_SHUTDOWN_DELAY_SECONDS", default_value_t = 5)]
    pub shutdown_delay_seconds: u64,
}

impl ServingArgs {
    /// The certificate and key files, loaded and watched.
    pub fn certificate(&self) -> Result<Arc<ReloadingCertificate>, TlsError> {
        ReloadingCertificate::load(&self.tls_cert, &self.tls_key)
    }

    /// What the HTTPS port allows each client.
    pub fn limits(&self) -> ServingLimits {
        ServingLimits {
            max_connections: self.max_connections.max(1),
            max_connections_per_address: self.max_connections_per_address.max(1),
            idle_timeout: Duration::from_secs(self.idle_timeout_seconds.max(1)),
            body_timeout: Duration::from_secs(self.body_timeout_seconds.max(1)),
            max_body_bytes: self.max_body_bytes,
        }
    }

    /// How long both ports keep answering after SIGTERM.
    pub fn shutdown_delay(&self) -> Duration {
        Duration::from_secs(self.shutdown_delay_seconds)
    }

    /// How often the certificate files are checked (at least every second).
    pub fn reload_interval(&self) -> Duration {
        Duration::from_secs(self.tls_reload_seconds.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serving: ServingArgs,
    }

    #[test]
    fn the_documented_serving_limits_are_the_flags_defaults() {
        let cli = Cli::try_parse_from(["server"]).unwrap();
        assert_eq!(cli.serving.limits(), ServingLimits::default());
    }
}
