//! TLS client configurations for the backends providers reach (PostgreSQL
//! servers, authorization servers), through rustls, which always verifies
//! the server's certificate chain and host name: against the system's
//! roots, or against PEM certificates a Secret holds.

use std::sync::{Arc, OnceLock};

use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::ProviderError;

/// A configuration trusting the PEM certificates `ca_pem` (from the
/// Secret key `key`, named in errors), or the system's roots without them.
pub fn client_config(ca_pem: Option<&[u8]>, key: &str) -> Result<Arc<ClientConfig>, ProviderError> {
    let Some(pem) = ca_pem else {
        return system_config();
    };
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(pem) {
        let certificate = certificate
            .map_err(|_| ProviderError::Invalid(format!("key {key} is not PEM certificates")))?;
        roots
            .add(certificate)
            .map_err(|error| ProviderError::Invalid(format!("key {key}: {error}")))?;
    }
    if roots.is_empty() {
        return Err(ProviderError::Invalid(format!(
            "key {key} holds no certificate"
        )));
    }
    build(roots)
}

fn system_config() -> Result<Arc<ClientConfig>, ProviderError> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, ProviderError>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            for certificate in native.certs {
                let _ = roots.add(certificate);
            }
            build(roots)
        })
        .clone()
}

fn build(roots: rustls::RootCertStore) -> Result<Arc<ClientConfig>, ProviderError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|builder| Arc::new(builder.with_root_certificates(roots).with_no_client_auth()))
        .map_err(|error| ProviderError::Unavailable(format!("building a TLS client: {error}")))
}
