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
}

impl ServingArgs {
    /// The certificate and key files, loaded and watched.
    pub fn certificate(&self) -> Result<Arc<ReloadingCertificate>, TlsError> {
        ReloadingCertificate::load(&self.tls_cert, &self.tls_key)
    }

    /// How often the certificate files are checked (at least every second).
    pub fn reload_interval(&self) -> Duration {
        Duration::from_secs(self.tls_reload_seconds.max(1))
    }
}
