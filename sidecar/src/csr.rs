//! A key pair made inside the pod and a PKCS #10 certificate signing
//! request for it: what an `x509` lease sends instead of asking for a key.
//! The private key goes to the pod's tmpfs and nowhere else; the broker
//! sees only the CSR, whose subject is empty because the broker sets every
//! name itself from the pod's identity.
//!
//! ring makes the keys and signatures (it is already linked for TLS); the
//! few DER structures a CSR needs are written here rather than pulling an
//! ASN.1 or X.509 crate into the sidecar, whose size is a feature.

use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use zeroize::Zeroizing;

/// The key algorithms a pod's key may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// ECDSA over P-256 with SHA-256 (the default).
    EcdsaP256,
    /// Ed25519.
    Ed25519,
}

impl KeyAlgorithm {
    /// The name the broker's API uses (`ecdsa-p256`, `ed25519`).
    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::Ed25519 => "ed25519",
        }
    }

    /// The algorithm named `name` in the broker's API.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ecdsa-p256" => Some(Self::EcdsaP256),
            "ed25519" => Some(Self::Ed25519),
            _ => None,
        }
    }
}

/// A new key pair and the CSR that proves it.
pub struct KeyAndCsr {
    /// The private key as PKCS #8 PEM (`PRIVATE KEY`), for `tls.key`.
    pub key_pem: Zeroizing<String>,
    /// The CSR, DER-encoded.
    pub csr_der: Vec<u8>,
}

impl std::fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("csr_der", &self.csr_der.len())
            .finish_non_exhaustive()
    }
}

/// Why no key could be made: the OS gave no randomness.
#[derive(Debug, thiserror::Error)]
#[error("cannot generate a {0} key pair: no randomness from the OS")]
pub struct KeyError(&'static str);

// Object identifiers, DER-encoded with their tag and length.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_PRIME256V1: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_ECDSA_WITH_SHA256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// Makes a key pair of `algorithm` and a CSR for it with an empty subject.
pub fn generate(algorithm: KeyAlgorithm) -> Result<KeyAndCsr, KeyError> {
    let rng = SystemRandom::new();
    let failed = || KeyError(algorithm.name());
    let (pkcs8, info, signature_algorithm, signature) = match algorithm {
        KeyAlgorithm::EcdsaP256 => {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                .map_err(|_| failed())?;
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
                    .map_err(|_| failed())?;
            let info = request_info(&sequence(&[
                &sequence(&[OID_EC_PUBLIC_KEY, OID_PRIME256V1]),
                &bit_string(pair.public_key().as_ref()),
            ]));
            let signature = pair.sign(&rng, &info).map_err(|_| failed())?;
            let signature = signature.as_ref().to_vec();
            (pkcs8, info, sequence(&[OID_ECDSA_WITH_SHA256]), signature)
        }
        KeyAlgorithm::Ed25519 => {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| failed())?;
            let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| failed())?;
            let info = request_info(&sequence(&[
                &sequence(&[OID_ED25519]),
                &bit_string(pair.public_key().as_ref()),
            ]));
            let signature = pair.sign(&info).as_ref().to_vec();
            (pkcs8, info, sequence(&[OID_ED25519]), signature)
        }
    };
    let csr_der = sequence(&[&info, &signature_algorithm, &bit_string(&signature)]);
    Ok(KeyAndCsr {
        key_pem: pem("PRIVATE KEY", pkcs8.as_ref()),
        csr_der,
    })
}

/// CertificationRequestInfo for `public_key_info`: version 0, an empty
/// subject, the key, and no attributes (`[0] IMPLICIT SET OF`, empty).
fn request_info(public_key_info: &[u8]) -> Vec<u8> {
    sequence(&[
        &[0x02, 0x01, 0x00],
        &sequence(&[]),
        public_key_info,
        &[0xa0, 0x00],
    ])
}

/// A DER SEQUENCE of already-encoded `parts`.
fn sequence(parts: &[&[u8]]) -> Vec<u8> {
    tagged(0x30, &parts.concat())
}

/// A DER BIT STRING of whole bytes.
fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(bytes.len() + 1);
    content.push(0);
    content.extend_from_slice(bytes);
    tagged(0x03, &content)
}

/// `content` under `tag`, with its DER length.
fn tagged(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let length = content.len();
    if length < 0x80 {
        out.push(length as u8);
    } else {
        let bytes = length.to_be_bytes();
        let significant: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(&significant);
    }
    out.extend_from_slice(content);
    out
}

/// `der` as PEM with `label`, lines of 64 characters.
fn pem(label: &str, der: &[u8]) -> Zeroizing<String> {
    use base64::Engine as _;
    let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der));
    let mut out = Zeroizing::new(format!("-----BEGIN {label}-----\n"));
    for line in encoded.as_bytes().chunks(64) {
        // base64 is ASCII: no copy of the key's text is made here.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::prelude::FromDer as _;

    fn parsed(algorithm: KeyAlgorithm) -> (KeyAndCsr, String) {
        let made = generate(algorithm).unwrap();
        let (rest, csr) = X509CertificationRequest::from_der(&made.csr_der).unwrap();
        assert!(rest.is_empty());
        csr.verify_signature().unwrap();
        assert_eq!(csr.certification_request_info.subject.iter().count(), 0);
        let oid = csr
            .certification_request_info
            .subject_pki
            .algorithm
            .algorithm
            .to_id_string();
        (made, oid)
    }

    #[test]
    fn a_p256_csr_parses_and_its_signature_verifies() {
        let (made, oid) = parsed(KeyAlgorithm::EcdsaP256);
        assert_eq!(oid, "1.2.840.10045.2.1");
        assert!(made.key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let key = rcgen::KeyPair::from_pem(&made.key_pem).unwrap();
        assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    }

    #[test]
    fn an_ed25519_csr_parses_and_its_signature_verifies() {
        let (made, oid) = parsed(KeyAlgorithm::Ed25519);
        assert_eq!(oid, "1.3.101.112");
        let key = rcgen::KeyPair::from_pem(&made.key_pem).unwrap();
        assert_eq!(key.algorithm(), &rcgen::PKCS_ED25519);
    }

    #[test]
    fn every_key_is_new() {
        let (first, second) = (
            generate(KeyAlgorithm::EcdsaP256).unwrap(),
            generate(KeyAlgorithm::EcdsaP256).unwrap(),
        );
        assert_ne!(*first.key_pem, *second.key_pem);
        assert_ne!(first.csr_der, second.csr_der);
    }

    #[test]
    fn long_contents_get_long_form_lengths() {
        assert_eq!(tagged(0x04, &[7; 0x7f])[..2], [0x04, 0x7f]);
        assert_eq!(tagged(0x04, &[7; 0x80])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(tagged(0x04, &[7; 0x1234])[..4], [0x04, 0x82, 0x12, 0x34]);
    }

    #[test]
    fn algorithms_round_trip_through_their_names() {
        for algorithm in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Ed25519] {
            assert_eq!(KeyAlgorithm::from_name(algorithm.name()), Some(algorithm));
        }
        assert_eq!(KeyAlgorithm::from_name("rsa-2048"), None);
    }
}
