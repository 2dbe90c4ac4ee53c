//! `x509` signing: a short-lived certificate for a key the pod made. The
//! pod sends a PKCS #10 CSR; its signature must verify and its key must be
//! of an allowed type, and everything else in it (subject, requested
//! extensions) is ignored: the names come from the pod's identity and the
//! BrokeredSecret's spec, the lifetime from the lease.
//!
//! The pure part (parse the CA, check the CSR, sign) is apart from the
//! provider, which reads the CA's Secret and renders the names.
//!
//! Nothing is revoked upstream: a certificate lives no longer than its
//! lease (minutes to hours), so no CRL or OCSP is published; revoking a
//! lease stops its renewal and the pod's sidecar wipes the key, and the
//! audit log records the serial number of every certificate issued and of
//! each one whose lease was revoked.

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer as _;

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_api::checks::X509_CA_KEYS;
use ferry_api::confinement::SecretUse;
use ferry_api::resources::{BrokeredSecret, CertificateUsage, KeyAlgorithm, X509Source};
use zeroize::Zeroizing;

use super::secret_reader::SecretReader;
use super::{IssueRequest, Issued, Provider, ProviderError};
use crate::lease_id::LeaseClaims;
use crate::templates::{Variables, render_files};

/// The key types a pod's key may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA over P-256 (signed with SHA-256).
    EcdsaP256,
    /// Ed25519.
    Ed25519,
}

impl KeyType {
    /// The name in the API (`ecdsa-p256`, `ed25519`).
    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::Ed25519 => "ed25519",
        }
    }

    fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

/// What a certificate may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS client authentication.
    ClientAuth,
    /// TLS server authentication.
    ServerAuth,
}

/// The names a certificate carries, all decided by the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The URI SAN, such as `spiffe://cluster.local/ns/shop/sa/orders`.
    pub uri: String,
    /// The subject's common name, if any.
    pub common_name: Option<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
}

/// A CA that signs pods' certificates: its certificate and key from a
/// Secret, checked to belong together.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// The CA of `cert_pem` (its first certificate) with `key_pem`. `what`
    /// names the Secret in errors; errors never quote the key.
    pub fn from_pem(cert_pem: &str, key_pem: &str, what: &str) -> Result<Self, ProviderError> {
        let invalid = |reason: &str| ProviderError::Invalid(format!("{what}: {reason}"));
        let key = KeyPair::from_pem(key_pem)
            .map_err(|_| invalid("the key is not a PKCS #8, SEC1 or PKCS #1 PEM private key"))?;
        let der = rustls_pki_types_pem_first(cert_pem)
            .ok_or_else(|| invalid("the certificate is not a PEM certificate"))?;
        let (_, certificate) = x509_parser::parse_x509_certificate(&der)
            .map_err(|_| invalid("the certificate does not parse"))?;
        if !certificate.is_ca() {
            return Err(invalid(
                "the certificate is not a CA (no basicConstraints cA)",
            ));
        }
        if certificate.tbs_certificate.subject_pki.raw != key.subject_public_key_info() {
            return Err(invalid("the key does not match the certificate"));
        }
        let issuer = Issuer::from_ca_cert_der(&der.into(), key)
            .map_err(|_| invalid("the certificate cannot issue"))?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
        })
    }

    /// The CA certificate as read, for `ca.crt`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }
}

/// The first certificate of a PEM bundle, DER-encoded.
fn rustls_pki_types_pem_first(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()
        .map(|der| der.to_vec())
}

/// A CSR's public key, once checked.
struct CheckedKey {
    key_type: KeyType,
    raw: Vec<u8>,
}

impl PublicKeyData for CheckedKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.key_type.signature_algorithm()
    }
}

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_PRIME256V1: &str = "1.2.840.10045.3.1.7";
const OID_ED25519: &str = "1.3.101.112";

/// The CSR's key, if its signature verifies and its type is in `allowed`.
fn checked_key(csr_der: &[u8], allowed: &[KeyType]) -> Result<CheckedKey, ProviderError> {
    let invalid = |reason: String| ProviderError::Invalid(format!("the CSR {reason}"));
    let (rest, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|_| invalid("is not a DER PKCS #10 certification request".into()))?;
    if !rest.is_empty() {
        return Err(invalid("has trailing bytes".into()));
    }
    let info = &csr.certification_request_info.subject_pki;
    let algorithm = info.algorithm.algorithm.to_id_string();
    let key_type = match algorithm.as_str() {
        OID_EC_PUBLIC_KEY => {
            let curve = info
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string());
            if curve.as_deref() == Some(OID_PRIME256V1) {
                Some(KeyType::EcdsaP256)
            } else {
                None
            }
        }
        OID_ED25519 => Some(KeyType::Ed25519),
        _ => None,
    };
    let allowed_names = || {
        allowed
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(key_type) = key_type.filter(|t| allowed.contains(t)) else {
        return Err(invalid(format!(
            "has a key type that is not allowed here (allowed: {})",
            allowed_names()
        )));
    };
    csr.verify_signature()
        .map_err(|_| invalid("signature does not verify".into()))?;
    Ok(CheckedKey {
        key_type,
        raw: info.subject_public_key.data.to_vec(),
    })
}

/// A signed certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its serial number in hex, for the audit log.
    pub serial: String,
}

/// Signs the key of `csr_der` (DER) with `authority` for `names` and
/// `usages`, valid from `not_before` to `not_after`.
pub fn sign(
    authority: &Authority,
    csr_der: &[u8],
    allowed: &[KeyType],
    names: &Names,
    usages: &[Usage],
    validity: (OffsetDateTime, OffsetDateTime),
) -> Result<Signed, ProviderError> {
    let key = checked_key(csr_der, allowed)?;
    let invalid = |what: &str| ProviderError::Invalid(format!("cannot sign: {what}"));
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    if let Some(common_name) = &names.common_name {
        subject.push(DnType::CommonName, common_name.as_str());
    }
    params.distinguished_name = subject;
    let uri = names
        .uri
        .clone()
        .try_into()
        .map_err(|_| invalid("the URI name is not valid"))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    for dns in &names.dns_names {
        let name = dns
            .clone()
            .try_into()
            .map_err(|_| invalid("a DNS name is not valid"))?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages
        .iter()
        .map(|usage| match usage {
            Usage::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
            Usage::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
        })
        .collect();
    params.use_authority_key_identifier_extension = true;
    (params.not_before, params.not_after) = validity;
    let mut serial = [0_u8; 16];
    SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| ProviderError::Unavailable("no randomness for a serial number".into()))?;
    // Positive, and never shortened by a leading zero byte.
    serial[0] = (serial[0] & 0x7f) | 0x40;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let certificate = params
        .signed_by(&key, &authority.issuer)
        .map_err(|_| invalid("the CA cannot sign this key"))?;
    Ok(Signed {
        cert_pem: certificate.pem(),
        serial: serial.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

/// How an x509 lease's handle (the certificate's serial number) begins:
/// it tells the lease from a postgres one (whose handle is a role name)
/// once its BrokeredSecret is gone.
pub const HANDLE_PREFIX: &str = "x509:";

/// The `x509` provider.
pub struct X509Provider {
    secrets: Arc<SecretReader>,
}

impl X509Provider {
    /// A provider reading CA Secrets through `secrets`.
    pub fn new(secrets: Arc<SecretReader>) -> Self {
        Self { secrets }
    }

    async fn certify(&self, request: IssueRequest<'_>) -> Result<Issued, ProviderError> {
        let secret = request.secret;
        let source = secret
            .spec
            .source
            .x509
            .as_ref()
            .ok_or_else(|| ProviderError::Invalid("not an x509 BrokeredSecret".into()))?;
        let csr = request.csr.ok_or_else(|| {
            ProviderError::Invalid(format!(
                "BrokeredSecret {} issues certificates: send a CSR for a new {} key",
                qualified(secret),
                source.key_algorithm.wire_name()
            ))
        })?;
        let namespace = secret.metadata.namespace.as_deref().unwrap_or_default();
        let data = self
            .secrets
            .data_for(SecretUse::Sign, namespace, &source.ca_secret_name)
            .await?;
        let what = format!("Secret {namespace}/{}", source.ca_secret_name);
        let text = |key: &str| -> Result<&str, ProviderError> {
            let bytes = data
                .get(key)
                .ok_or_else(|| ProviderError::NotFound(format!("{what} has no key {key:?}")))?;
            std::str::from_utf8(bytes)
                .map_err(|_| ProviderError::Invalid(format!("{what}: {key} is not PEM text")))
        };
        let [cert_key, key_key, ca_key] = X509_CA_KEYS;
        let (ca_cert, ca_key_pem, trusted) = (text(cert_key)?, text(key_key)?, text(ca_key)?);
        let authority = Authority::from_pem(ca_cert, ca_key_pem, &what)?;
        let names = names(source, request)?;
        let allowed = [key_type(source.key_algorithm)];
        let usages: Vec<Usage> = source
            .usages
            .iter()
            .map(|usage| match usage {
                CertificateUsage::ClientAuth => Usage::ClientAuth,
                CertificateUsage::ServerAuth => Usage::ServerAuth,
            })
            .collect();
        let (not_before, not_after) = (
            // Backdated a little for clocks that lag the broker's.
            OffsetDateTime::from_unix_timestamp(request.now.as_second() - 60),
            OffsetDateTime::from_unix_timestamp(request.expires_at),
        );
        let (Ok(not_before), Ok(not_after)) = (not_before, not_after) else {
            return Err(ProviderError::Invalid(
                "the lease's times are out of range".into(),
            ));
        };
        let signed = sign(
            &authority,
            csr,
            &allowed,
            &names,
            &usages,
            (not_before, not_after),
        )?;
        tracing::info!(
            target: "ferry::audit",
            action = "certify",
            secret = %qualified(secret),
            pod = %format!("{}/{}", request.pod.namespace, request.pod.pod_name),
            serial = %signed.serial,
            subject = names.common_name.as_deref().unwrap_or_default(),
            uri = %names.uri,
            dns_names = %names.dns_names.join(","),
            not_after = request.expires_at,
        );
        // The chain: the certificate, then the CA's unless pods trust it
        // directly (the usual self-signed root).
        let mut chain = signed.cert_pem.clone();
        if ca_cert.trim() != trusted.trim() {
            chain.push_str(ca_cert.trim_end());
            chain.push('\n');
        }
        let mut files = BTreeMap::new();
        files.insert("tls.crt".to_owned(), Zeroizing::new(chain.into_bytes()));
        files.insert(
            "ca.crt".to_owned(),
            Zeroizing::new(trusted.as_bytes().to_vec()),
        );
        Ok(Issued {
            files,
            handle: format!("{HANDLE_PREFIX}{}", signed.serial),
            variables: BTreeMap::new(),
            expires_at: None,
        })
    }
}

fn qualified(secret: &BrokeredSecret) -> String {
    format!(
        "{}/{}",
        secret.metadata.namespace.as_deref().unwrap_or_default(),
        secret.metadata.name.as_deref().unwrap_or_default()
    )
}

fn key_type(algorithm: KeyAlgorithm) -> KeyType {
    match algorithm {
        KeyAlgorithm::ECDSAP256 => KeyType::EcdsaP256,
        KeyAlgorithm::Ed25519 => KeyType::Ed25519,
    }
}

/// The longest common name X.509 allows (`ub-common-name`).
const MAX_COMMON_NAME: usize = 64;

/// The certificate's names for the pod of `request`: the SPIFFE ID, and
/// the common and DNS names the spec's templates render to.
fn names(source: &X509Source, request: IssueRequest<'_>) -> Result<Names, ProviderError> {
    let pod = request.pod;
    let variables: Variables = [
        ("namespace", &pod.namespace),
        ("serviceAccount", &pod.service_account),
        ("podName", &pod.pod_name),
    ]
    .into_iter()
    .map(|(name, value)| (name, Zeroizing::new(value.as_bytes().to_vec())))
    .collect();
    let mut templates = BTreeMap::new();
    if let Some(common_name) = &source.common_name {
        templates.insert("commonName".to_owned(), common_name.clone());
    }
    // The secret's DNS names as far as the Grant allows (lease terms).
    let dns_templates = &request.terms.dns_names;
    for (index, dns_name) in dns_templates.iter().enumerate() {
        templates.insert(format!("dnsNames[{index}]"), dns_name.clone());
    }
    let rendered = render_files(&templates, &variables)
        .map_err(|error| ProviderError::Invalid(format!("spec.source.x509: {error}")))?;
    let text = |field: &str| {
        rendered
            .get(field)
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
    };
    let common_name = text("commonName");
    if let Some(common_name) = &common_name
        && (common_name.is_empty() || common_name.len() > MAX_COMMON_NAME)
    {
        return Err(ProviderError::Invalid(format!(
            "spec.source.x509.commonName renders to {} characters; it must have 1 to {MAX_COMMON_NAME}",
            common_name.len()
        )));
    }
    let mut dns_names = Vec::with_capacity(dns_templates.len());
    for (index, template) in dns_templates.iter().enumerate() {
        let name = text(&format!("dnsNames[{index}]")).unwrap_or_default();
        if !is_dns_name(&name) {
            return Err(ProviderError::Invalid(format!(
                "spec.source.x509.dnsNames: {template:?} renders to {name:?}, not a lower-case DNS name"
            )));
        }
        dns_names.push(name);
    }
    Ok(Names {
        uri: format!(
            "spiffe://{}/ns/{}/sa/{}",
            source.trust_domain, pod.namespace, pod.service_account
        ),
        common_name,
        dns_names,
    })
}

/// Whether `name` is a lower-case DNS name (RFC 1123 labels).
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

impl Provider for X509Provider {
    fn kind(&self) -> &'static str {
        "x509"
    }

    async fn issue(&self, request: IssueRequest<'_>) -> Result<Issued, ProviderError> {
        self.certify(request).await
    }

    async fn renew(
        &self,
        request: IssueRequest<'_>,
        _lease: &LeaseClaims,
    ) -> Result<Option<Issued>, ProviderError> {
        // A new key and certificate at each renewal.
        self.certify(request).await.map(Some)
    }

    async fn revoke(
        &self,
        secret: Option<&BrokeredSecret>,
        lease: &LeaseClaims,
    ) -> Result<(), ProviderError> {
        // Nothing to call: the certificate expires with the lease. Recorded
        // so an auditor can tell a revoked serial from one that lapsed.
        tracing::info!(
            target: "ferry::audit",
            action = "certificate_revoked",
            secret = %secret.map(qualified).unwrap_or_else(|| format!("{}/{}", lease.secret_namespace, lease.secret_name)),
            serial = %lease.handle.trim_start_matches(HANDLE_PREFIX),
            not_after = lease.expires_at,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, IsCa};
    use x509_parser::extensions::GeneralName;

    fn ca() -> (String, String) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "shop CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn csr(alg: &'static SignatureAlgorithm, subject: &str) -> Vec<u8> {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, subject);
        params.serialize_request(&key).unwrap().der().to_vec()
    }

    fn names() -> Names {
        Names {
            uri: "spiffe://cluster.local/ns/shop/sa/orders".into(),
            common_name: Some("orders.shop".into()),
            dns_names: vec!["orders.shop.svc".into()],
        }
    }

    fn window() -> (OffsetDateTime, OffsetDateTime) {
        let now = OffsetDateTime::now_utc();
        (now, now + time::Duration::minutes(10))
    }

    const BOTH: &[KeyType] = &[KeyType::EcdsaP256, KeyType::Ed25519];

    #[test]
    fn the_certificate_carries_the_brokers_names_not_the_csrs() {
        let (cert, key) = ca();
        let authority = Authority::from_pem(&cert, &key, "Secret shop/ca").unwrap();
        let request = csr(&rcgen::PKCS_ECDSA_P256_SHA256, "admin");
        let (not_before, not_after) = window();
        let signed = sign(
            &authority,
            &request,
            BOTH,
            &names(),
            &[Usage::ClientAuth],
            (not_before, not_after),
        )
        .unwrap();
        let der = rustls_pki_types_pem_first(&signed.cert_pem).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(parsed.subject().to_string(), "CN=orders.shop");
        assert_eq!(parsed.issuer().to_string(), "CN=shop CA");
        let sans = parsed.subject_alternative_name().unwrap().unwrap();
        let sans: Vec<String> = sans
            .value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::URI(uri) => format!("uri:{uri}"),
                GeneralName::DNSName(dns) => format!("dns:{dns}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            sans,
            [
                "uri:spiffe://cluster.local/ns/shop/sa/orders",
                "dns:orders.shop.svc"
            ]
        );
        let usage = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(usage.client_auth && !usage.server_auth);
        assert!(!parsed.is_ca());
        assert_eq!(
            parsed.validity().not_after.timestamp(),
            not_after.unix_timestamp()
        );
        assert_eq!(
            parsed.raw_serial_as_string().replace(':', ""),
            signed.serial
        );
        // The CA's signature verifies.
        let ca_der = rustls_pki_types_pem_first(&cert).unwrap();
        let (_, ca_parsed) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        parsed
            .verify_signature(Some(ca_parsed.public_key()))
            .unwrap();
    }

    #[test]
    fn ed25519_keys_are_signed_when_allowed_and_refused_when_not() {
        let (cert, key) = ca();
        let authority = Authority::from_pem(&cert, &key, "Secret shop/ca").unwrap();
        let request = csr(&rcgen::PKCS_ED25519, "x");
        sign(
            &authority,
            &request,
            BOTH,
            &names(),
            &[Usage::ServerAuth],
            window(),
        )
        .unwrap();
        let refused = sign(
            &authority,
            &request,
            &[KeyType::EcdsaP256],
            &names(),
            &[Usage::ServerAuth],
            window(),
        )
        .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "the CSR has a key type that is not allowed here (allowed: ecdsa-p256)"
        );
    }

    #[test]
    fn other_key_types_are_refused() {
        let (cert, key) = ca();
        let authority = Authority::from_pem(&cert, &key, "Secret shop/ca").unwrap();
        let p384 = csr(&rcgen::PKCS_ECDSA_P384_SHA384, "x");
        let error = sign(&authority, &p384, BOTH, &names(), &[], window()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the CSR has a key type that is not allowed here (allowed: ecdsa-p256, ed25519)"
        );
    }

    #[test]
    fn a_csr_whose_signature_does_not_verify_is_refused() {
        let (cert, key) = ca();
        let authority = Authority::from_pem(&cert, &key, "Secret shop/ca").unwrap();
        let mut request = csr(&rcgen::PKCS_ECDSA_P256_SHA256, "x");
        // The signature is the last bytes: flip one.
        let last = request.len() - 1;
        request[last] ^= 0x01;
        let error = sign(&authority, &request, BOTH, &names(), &[], window()).unwrap_err();
        assert_eq!(error.to_string(), "the CSR signature does not verify");
        let error = sign(&authority, b"not a csr", BOTH, &names(), &[], window()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the CSR is not a DER PKCS #10 certification request"
        );
    }

    #[test]
    fn a_ca_whose_key_does_not_match_is_refused_without_quoting_the_key() {
        let (cert, _) = ca();
        let (_, other_key) = ca();
        let error = Authority::from_pem(&cert, &other_key, "Secret shop/ca").unwrap_err();
        assert_eq!(
            error.to_string(),
            "Secret shop/ca: the key does not match the certificate"
        );
        let error = Authority::from_pem("junk", &other_key, "Secret shop/ca").unwrap_err();
        assert_eq!(
            error.to_string(),
            "Secret shop/ca: the certificate is not a PEM certificate"
        );
        let error = Authority::from_pem(&cert, "junk", "Secret shop/ca").unwrap_err();
        assert!(!error.to_string().contains("junk"), "{error}");
    }

    #[test]
    fn a_leaf_certificate_cannot_be_a_ca() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let leaf = CertificateParams::new(vec!["leaf".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let error =
            Authority::from_pem(&leaf.pem(), &key.serialize_pem(), "Secret shop/ca").unwrap_err();
        assert!(error.to_string().contains("not a CA"), "{error}");
    }
}
