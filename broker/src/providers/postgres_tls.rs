//! TLS for the postgres provider's admin connections: rustls with the
//! system's roots. `sslmode=disable` connects in the clear, `prefer` (the
//! default) uses TLS when the server offers it, `require` insists; in both
//! TLS cases the server's certificate is verified.

use std::sync::{Arc, OnceLock};

use tokio_postgres_rustls::MakeRustlsConnect;

use super::ProviderError;

/// The connector every admin connection uses, built once.
pub fn connector() -> Result<MakeRustlsConnect, ProviderError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(build)
        .as_ref()
        .map(|config| MakeRustlsConnect::new(rustls::ClientConfig::clone(config)))
        .map_err(|error| ProviderError::Unavailable(error.clone()))
}

fn build() -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for certificate in native.certs {
        // A system certificate rustls cannot parse is skipped, as curl does.
        let _ = roots.add(certificate);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|builder| Arc::new(builder.with_root_certificates(roots).with_no_client_auth()))
        .map_err(|error| format!("building TLS for PostgreSQL: {error}"))
}
