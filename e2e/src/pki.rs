//! Certificates and keys for a local control plane: a CA, the apiserver's
//! serving certificate, client certificates for identities, and the
//! service-account signing key. Everything is generated fresh per cluster.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::HarnessError;

/// A certificate authority that signs every certificate of one cluster.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A PEM certificate and its PEM private key, written to files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// Path of the PEM certificate.
    pub cert: PathBuf,
    /// Path of the PEM private key (PKCS#8).
    pub key: PathBuf,
}

impl Authority {
    /// Generates a new self-signed CA.
    pub fn generate(common_name: &str) -> Result<Self, HarnessError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Self { issuer })
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA's private key, PKCS#8 PEM: for tests that hand the CA to
    /// ferry to sign with (an x509 BrokeredSecret's CA Secret).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a serving certificate for the given DNS names and IP addresses.
    pub fn serving_cert(
        &self,
        sans: &[&str],
        dir: &Path,
        stem: &str,
    ) -> Result<CertFiles, HarnessError> {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, stem);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, dir, stem)
    }

    /// Issues a client certificate for a Kubernetes user: the common name is
    /// the user name, the organization (if any) its group.
    pub fn client_cert(
        &self,
        user: &str,
        group: Option<&str>,
        dir: &Path,
        stem: &str,
    ) -> Result<CertFiles, HarnessError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        if let Some(group) = group {
            params
                .distinguished_name
                .push(DnType::OrganizationName, group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, dir, stem)
    }

    fn issue(
        &self,
        mut params: CertificateParams,
        dir: &Path,
        stem: &str,
    ) -> Result<CertFiles, HarnessError> {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let files = CertFiles {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        write_file(&files.cert, cert.pem().as_bytes())?;
        write_file(&files.key, key.serialize_pem().as_bytes())?;
        Ok(files)
    }
}

/// Generates the key pair the apiserver signs service-account tokens with;
/// the certificate slot of the result holds the public key (PEM).
pub fn service_account_key(dir: &Path) -> Result<CertFiles, HarnessError> {
    let key = KeyPair::generate()?;
    let files = CertFiles {
        cert: dir.join("service-account.pub"),
        key: dir.join("service-account.key"),
    };
    write_file(&files.cert, key.public_key_pem().as_bytes())?;
    write_file(&files.key, key.serialize_pem().as_bytes())?;
    Ok(files)
}

/// Writes a file readable by its owner only (keys live in these files).
pub(crate) fn write_file(path: &Path, contents: &[u8]) -> Result<(), HarnessError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| HarnessError::Io {
            what: format!("writing {}", path.display()),
            source,
        })?;
    file.write_all(contents).map_err(|source| HarnessError::Io {
        what: format!("writing {}", path.display()),
        source,
    })
}
