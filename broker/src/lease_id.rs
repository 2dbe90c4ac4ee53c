//! Lease ids: self-describing and MAC'd, so any broker replica can renew or
//! revoke any lease without shared state. An id carries the secret, the pod
//! it was issued to, the provider's handle (such as a PostgreSQL role name),
//! and when it was issued and expires; HMAC-SHA256 under a key the replicas
//! share makes a tampered id fail to open.
//!
//! Format: `<base64url(JSON claims)>.<base64url(HMAC)>`. The claims hold no
//! secret material, only names, so an id may be logged.

use std::sync::{Arc, PoisonError, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::seal::Seal;

/// The longest id accepted, in bytes; longer input is refused unparsed.
/// Sized to the largest claims the schema admits (16 audiences of 253
/// characters and 32 scopes of 128, every character escaped as JSON), so
/// that every id the broker seals also opens: 2 KiB did not even hold 32
/// long scopes, and such a lease could be neither renewed nor revoked.
/// A server in front of the broker must admit a request line this long.
pub const MAX_LEASE_ID_BYTES: usize = 48 * 1024;

/// The bytes of a lease-signing key.
pub const LEASE_KEY_BYTES: usize = 32;

/// What a lease id says.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LeaseClaims {
    /// Format version.
    #[serde(rename = "v")]
    pub version: u8,
    /// Namespace of the BrokeredSecret.
    #[serde(rename = "sn")]
    pub secret_namespace: String,
    /// Name of the BrokeredSecret.
    #[serde(rename = "s")]
    pub secret_name: String,
    /// The uid of the pod the lease was issued to.
    #[serde(rename = "p")]
    pub pod_uid: String,
    /// The provider's handle on what it issued (empty when there is
    /// nothing to revoke).
    #[serde(rename = "h", default, skip_serializing_if = "String::is_empty")]
    pub handle: String,
    /// When the lease was issued, in Unix seconds.
    #[serde(rename = "i")]
    pub issued_at: i64,
    /// When the lease expires, in Unix seconds.
    #[serde(rename = "e")]
    pub expires_at: i64,
    /// The latest any renewal may extend it to (issuance + the Grant's
    /// maxTtl), in Unix seconds.
    #[serde(rename = "m")]
    pub max_expires_at: i64,
    /// The JWT audiences the lease was narrowed to, kept for renewal.
    #[serde(rename = "a", default, skip_serializing_if = "Vec::is_empty")]
    pub audience: Vec<String>,
    /// The JWT scopes the lease was narrowed to, kept for renewal.
    #[serde(rename = "sc", default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// The lease's serial: random at issuance and kept by every renewal,
    /// so a revocation names the lease, not one of its ids. Empty in ids
    /// sealed before serials existed (see [`LeaseClaims::serial`]).
    #[serde(rename = "n", default, skip_serializing_if = "String::is_empty")]
    pub serial: String,
}

/// The length of a serial in hex digits (128 random bits).
pub const SERIAL_HEX_DIGITS: usize = 32;

impl LeaseClaims {
    /// The serial that names this lease and all its renewals: the one it
    /// carries, or for an id sealed without one, a digest of what all its
    /// renewals share (its pod, secret and handle), so revoking such a
    /// lease also refuses that pod's other serial-less leases of the
    /// secret, never another pod's. Always [`SERIAL_HEX_DIGITS`] lowercase
    /// hex digits, fit for an object name.
    pub fn serial(&self) -> String {
        let carried = self.serial.len() == SERIAL_HEX_DIGITS
            && self
                .serial
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if carried {
            return self.serial.clone();
        }
        use sha2::Digest as _;
        let mut digest = sha2::Sha256::new();
        for part in [
            &self.pod_uid,
            &self.secret_namespace,
            &self.secret_name,
            &self.handle,
            &self.serial,
        ] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part.as_bytes());
        }
        hex(&digest.finalize()[..SERIAL_HEX_DIGITS / 2])
    }
}

/// A new random serial from the OS's CSPRNG.
pub fn generate_serial() -> Result<String, ring::error::Unspecified> {
    use ring::rand::SecureRandom;
    let mut serial = [0u8; SERIAL_HEX_DIGITS / 2];
    ring::rand::SystemRandom::new().fill(&mut serial)?;
    Ok(hex(&serial))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// The current claims version.
pub const CLAIMS_VERSION: u8 = 1;

/// Why a lease id was refused. Messages say what is wrong, never echo the id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseIdError {
    /// Not of the lease-id shape at all.
    #[error("malformed lease id: {0}")]
    Malformed(&'static str),
    /// Well-formed, but the MAC does not match: altered, or from another
    /// installation.
    #[error("lease id failed verification: it was altered or issued by another ferry installation")]
    Tampered,
    /// Issued by a newer broker.
    #[error("lease id version {0} is not supported by this broker")]
    Version(u8),
}

/// The MAC keys in use: `current` seals, all open.
struct MacKeys {
    current: hmac::Key,
    previous: Vec<hmac::Key>,
}

impl MacKeys {
    fn new(current: &[u8], previous: &[&[u8]]) -> Self {
        let key = |bytes: &[u8]| hmac::Key::new(hmac::HMAC_SHA256, bytes);
        Self {
            current: key(current),
            previous: previous.iter().map(|bytes| key(bytes)).collect(),
        }
    }
}

/// The keys lease ids are sealed and opened with: the current one seals;
/// it and the others (the next key, published before it seals, and the
/// previous one) open, so rotating the key voids no lease already out.
/// Cheap to clone; clones share the keys, so [`LeaseKeys::replace`] after
/// a rotation reaches every clone (and the [`Seal`] derived from them).
#[derive(Clone)]
pub struct LeaseKeys {
    macs: Arc<RwLock<Arc<MacKeys>>>,
    seal: Seal,
}

impl std::fmt::Debug for LeaseKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseKeys")
            .field("previous", &self.load().previous.len())
            .finish_non_exhaustive()
    }
}

impl LeaseKeys {
    /// Keys from raw key bytes: `current` seals, all open.
    pub fn new(current: &[u8], previous: &[&[u8]]) -> Self {
        Self {
            macs: Arc::new(RwLock::new(Arc::new(MacKeys::new(current, previous)))),
            seal: Seal::new(current, previous),
        }
    }

    /// Makes `current` the sealing key and `previous` the other opening
    /// ones, for these keys, every clone and their [`Seal`].
    pub fn replace(&self, current: &[u8], previous: &[&[u8]]) {
        *self.macs.write().unwrap_or_else(PoisonError::into_inner) =
            Arc::new(MacKeys::new(current, previous));
        self.seal.replace(current, previous);
    }

    fn load(&self) -> Arc<MacKeys> {
        Arc::clone(&self.macs.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// What seals secrets a lease id carries (an `oauth2` lease's token),
    /// derived from the same keys.
    pub fn value_seal(&self) -> Seal {
        self.seal.clone()
    }

    /// Seals `claims` into a lease id.
    pub fn seal(&self, claims: &LeaseClaims) -> String {
        // Serialising a struct of strings and integers cannot fail.
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let tag = hmac::sign(&self.load().current, &payload);
        format!(
            "{}.{}",
            BASE64URL.encode(&payload),
            BASE64URL.encode(tag.as_ref())
        )
    }

    /// Opens a lease id: checks its shape and MAC, and returns its claims.
    /// Expiry is the caller's to judge.
    pub fn open(&self, id: &str) -> Result<LeaseClaims, LeaseIdError> {
        if id.len() > MAX_LEASE_ID_BYTES {
            return Err(LeaseIdError::Malformed("too long"));
        }
        let (payload, tag) = id
            .split_once('.')
            .ok_or(LeaseIdError::Malformed("expected <claims>.<mac>"))?;
        let payload = BASE64URL
            .decode(payload)
            .map_err(|_| LeaseIdError::Malformed("claims are not base64url"))?;
        let tag = BASE64URL
            .decode(tag)
            .map_err(|_| LeaseIdError::Malformed("mac is not base64url"))?;
        let keys = self.load();
        let verified = std::iter::once(&keys.current)
            .chain(&keys.previous)
            .any(|key| hmac::verify(key, &payload, &tag).is_ok());
        if !verified {
            return Err(LeaseIdError::Tampered);
        }
        #[derive(Deserialize)]
        struct Version {
            v: u8,
        }
        let version: Version = serde_json::from_slice(&payload)
            .map_err(|_| LeaseIdError::Malformed("claims are not JSON"))?;
        if version.v != CLAIMS_VERSION {
            return Err(LeaseIdError::Version(version.v));
        }
        serde_json::from_slice(&payload)
            .map_err(|_| LeaseIdError::Malformed("claims are incomplete"))
    }
}

/// A new random lease-signing key from the OS's CSPRNG.
pub fn generate_lease_key() -> Result<[u8; LEASE_KEY_BYTES], ring::error::Unspecified> {
    use ring::rand::SecureRandom;
    let mut key = [0u8; LEASE_KEY_BYTES];
    ring::rand::SystemRandom::new().fill(&mut key)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> LeaseClaims {
        LeaseClaims {
            version: CLAIMS_VERSION,
            secret_namespace: "payments".into(),
            secret_name: "orders-db".into(),
            pod_uid: "0b6d3b38-4a0e-4f43-9d0b-3c2d6c8a9e11".into(),
            handle: "ferry_3f2a".into(),
            issued_at: 1_800_000_000,
            expires_at: 1_800_000_900,
            max_expires_at: 1_800_003_600,
            audience: vec![],
            scopes: None,
            serial: "00112233445566778899aabbccddeeff".into(),
        }
    }

    fn keys() -> LeaseKeys {
        LeaseKeys::new(&[7; 32], &[])
    }

    #[test]
    fn a_sealed_id_opens_to_its_claims() {
        let id = keys().seal(&claims());
        assert_eq!(keys().open(&id).unwrap(), claims());
        assert!(id.len() < 300, "{}", id.len());
    }

    #[test]
    fn the_largest_claims_the_schema_admits_seal_into_an_id_that_opens() {
        // Found by the lease-id round-trip fuzz test: 32 scopes of 128
        // characters made an id over the old 2 KiB limit.
        let largest = LeaseClaims {
            secret_namespace: "\u{1}".repeat(63),
            secret_name: "\u{1}".repeat(253),
            pod_uid: "\u{1}".repeat(36),
            handle: "\u{1}".repeat(63),
            issued_at: i64::MIN,
            expires_at: i64::MIN,
            max_expires_at: i64::MIN,
            audience: vec!["\u{1}".repeat(253); 16],
            scopes: Some(vec!["!".repeat(128); 32]),
            ..claims()
        };
        let id = keys().seal(&largest);
        assert!(id.len() <= MAX_LEASE_ID_BYTES, "{}", id.len());
        assert_eq!(keys().open(&id).unwrap(), largest);
    }

    #[test]
    fn any_changed_byte_fails_verification_or_parsing() {
        let id = keys().seal(&claims());
        for at in 0..id.len() {
            let mut bytes = id.clone().into_bytes();
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(bytes).unwrap();
            if altered == id {
                continue;
            }
            assert!(
                keys().open(&altered).is_err(),
                "byte {at} changed, still opens"
            );
        }
    }

    #[test]
    fn claims_edited_and_resealed_with_another_key_are_tampered() {
        let mut stretched = claims();
        stretched.expires_at += 86_400;
        let forged = LeaseKeys::new(&[8; 32], &[]).seal(&stretched);
        assert_eq!(keys().open(&forged), Err(LeaseIdError::Tampered));
    }

    #[test]
    fn ids_sealed_with_the_previous_key_still_open_after_rotation() {
        let old = LeaseKeys::new(&[1; 32], &[]).seal(&claims());
        let rotated = LeaseKeys::new(&[2; 32], &[&[1; 32]]);
        assert_eq!(rotated.open(&old).unwrap(), claims());
        let fresh = rotated.seal(&claims());
        assert_eq!(
            LeaseKeys::new(&[1; 32], &[]).open(&fresh),
            Err(LeaseIdError::Tampered)
        );
    }

    #[test]
    fn replaced_keys_reach_every_clone_and_keep_old_ids_open() {
        let keys = LeaseKeys::new(&[1; 32], &[&[2; 32]]);
        let clone = keys.clone();
        let old = keys.seal(&claims());
        keys.replace(&[2; 32], &[&[3; 32], &[1; 32]]);
        assert_eq!(clone.open(&old).unwrap(), claims());
        let new = clone.seal(&claims());
        assert_eq!(LeaseKeys::new(&[2; 32], &[]).open(&new).unwrap(), claims());
        // The next key opens before it seals: a replica that has not
        // re-read the Secret yet opens what a rotated one seals.
        let lagging = LeaseKeys::new(&[1; 32], &[&[2; 32]]);
        assert_eq!(lagging.open(&new).unwrap(), claims());
    }

    #[test]
    fn malformed_ids_say_what_is_wrong_without_echoing_them() {
        for (id, expected) in [
            ("", "expected <claims>.<mac>"),
            ("no-dot-here", "expected <claims>.<mac>"),
            ("!!!.abc", "not base64url"),
            ("abc.!!!", "not base64url"),
        ] {
            let error = keys().open(id).unwrap_err().to_string();
            assert!(error.contains(expected), "{id:?}: {error}");
        }
        let long = "a".repeat(MAX_LEASE_ID_BYTES + 1);
        assert!(
            keys()
                .open(&long)
                .unwrap_err()
                .to_string()
                .contains("too long")
        );
    }

    #[test]
    fn a_lease_is_named_by_the_serial_it_carries() {
        assert_eq!(claims().serial(), "00112233445566778899aabbccddeeff");
        let renewed = LeaseClaims {
            issued_at: 1_800_000_600,
            expires_at: 1_800_001_500,
            ..claims()
        };
        assert_eq!(renewed.serial(), claims().serial());
        let serial = generate_serial().unwrap();
        assert_eq!(serial.len(), SERIAL_HEX_DIGITS);
        assert_ne!(serial, generate_serial().unwrap());
    }

    #[test]
    fn a_lease_without_a_serial_is_named_by_its_pod_secret_and_handle() {
        let legacy = LeaseClaims {
            serial: String::new(),
            ..claims()
        };
        let serial = legacy.serial();
        assert_eq!(serial.len(), SERIAL_HEX_DIGITS);
        assert!(
            serial
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        let renewed = LeaseClaims {
            expires_at: legacy.expires_at + 600,
            ..legacy.clone()
        };
        assert_eq!(renewed.serial(), serial);
        let other_pod = LeaseClaims {
            pod_uid: "another".into(),
            ..legacy.clone()
        };
        assert_ne!(other_pod.serial(), serial);
        // Not an object name: digested like a missing one, never used as is.
        let odd = LeaseClaims {
            serial: "../X".into(),
            ..claims()
        };
        assert_ne!(odd.serial(), "../X");
        assert_eq!(odd.serial().len(), SERIAL_HEX_DIGITS);
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(generate_lease_key().unwrap(), generate_lease_key().unwrap());
    }
}
