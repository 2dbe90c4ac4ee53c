//! TLS for the postgres provider's admin connections, through rustls, which
//! always verifies the server's certificate chain and host name.
//!
//! An admin connection string without `sslmode` is `verify-full`: TLS is
//! required and the server verified. `sslmode=verify-full`, `verify-ca` and
//! `require` mean the same here (rustls verifies the host name too);
//! `prefer` uses TLS when the server offers it; only `disable` connects in
//! the clear, and only when the connection string says so. The server is
//! verified against the system's roots, or against the PEM certificates in
//! the admin Secret's key [`CA_KEY`] when it has one.

use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::ProviderError;

/// The key of the admin Secret holding the CA certificates (PEM) the
/// database's server certificate must chain to, instead of the system's.
pub const CA_KEY: &str = "ca.crt";

/// How a connection string asks for TLS: the string with libpq's
/// `verify-full`/`verify-ca` (which tokio-postgres does not parse) made
/// `require`, and the mode to use — `require` when it names none.
pub fn tls_mode(dsn: &str) -> (String, Option<SslMode>) {
    let named = dsn.contains("sslmode=");
    let dsn = dsn
        .replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require");
    (dsn, (!named).then_some(SslMode::Require))
}

/// A connector trusting `ca_pem` (PEM certificates) when given, else the
/// system's roots.
pub fn connector(ca_pem: Option<&[u8]>) -> Result<MakeRustlsConnect, ProviderError> {
    let config = super::tls::client_config(ca_pem, CA_KEY)?;
    Ok(MakeRustlsConnect::new(rustls::ClientConfig::clone(&config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_string_without_sslmode_requires_verified_tls() {
        let (dsn, mode) = tls_mode("postgres://u:p@db:5432/x");
        assert_eq!(dsn, "postgres://u:p@db:5432/x");
        assert_eq!(mode, Some(SslMode::Require));
        assert_eq!(tls_mode("host=db user=u").1, Some(SslMode::Require));
    }

    #[test]
    fn an_explicit_sslmode_is_kept_and_verify_modes_are_understood() {
        assert_eq!(tls_mode("postgres://db/x?sslmode=disable").1, None);
        assert_eq!(tls_mode("postgres://db/x?sslmode=prefer").1, None);
        let (dsn, mode) = tls_mode("postgres://db/x?sslmode=verify-full");
        assert_eq!(
            (dsn.as_str(), mode),
            ("postgres://db/x?sslmode=require", None)
        );
        let (dsn, _) = tls_mode("host=db sslmode=verify-ca");
        assert_eq!(dsn, "host=db sslmode=require");
    }

    #[test]
    fn a_ca_that_is_not_pem_is_refused_with_the_key() {
        let error = connector(Some(b"not a certificate")).err().unwrap();
        assert!(error.to_string().contains(CA_KEY), "{error}");
    }
}
