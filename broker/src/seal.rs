//! Sealed values: a secret a lease id must carry without showing it. An
//! `oauth2` lease's handle is its access token, which any replica needs to
//! revoke the token upstream (RFC 7009) when the lease ends; lease ids are
//! names only and may be logged (see [`crate::lease_id`]), so the token
//! goes in encrypted, with AES-256-GCM under a key derived from the lease
//! key every replica shares (HMAC-SHA256 of a fixed purpose, a PRF under a
//! uniformly random key). The previous lease keys open what they sealed,
//! so a key rotation does not strand a revocation.
//!
//! Format: `base64url(nonce || ciphertext || tag)`.

use std::sync::{Arc, PoisonError, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// What the derived keys are for; a different purpose derives another key.
const PURPOSE: &[u8] = b"ferry.dev/v1 sealed lease handle";

/// An AES-256 key's bytes.
type KeyBytes = Zeroizing<[u8; 32]>;

/// The derived keys in use: `current` seals, all open.
struct SealKeys {
    current: KeyBytes,
    previous: Vec<KeyBytes>,
}

/// The keys values are sealed and opened with. Cheap to clone; clones
/// share the keys, so a rotation of the lease keys
/// ([`crate::lease_id::LeaseKeys::replace`]) reaches every clone.
#[derive(Clone)]
pub struct Seal {
    keys: Arc<RwLock<Arc<SealKeys>>>,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seal")
            .field("previous", &self.load().previous.len())
            .finish_non_exhaustive()
    }
}

/// Why a value could not be sealed or opened; never says more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The system's random number generator or the cipher failed.
    #[error("sealing failed: the system's random number generator or cipher failed")]
    Seal,
    /// Not sealed by any of these keys, or altered.
    #[error("the sealed value does not open: altered, or sealed by another installation")]
    Open,
}

impl Seal {
    /// Keys derived from the lease keys' bytes: `current` seals, all open.
    pub fn new(current: &[u8], previous: &[&[u8]]) -> Self {
        Self {
            keys: Arc::new(RwLock::new(Arc::new(SealKeys::derive(current, previous)))),
        }
    }

    /// Makes keys derived from `current` and `previous` the ones in use,
    /// for this seal and every clone of it.
    pub fn replace(&self, current: &[u8], previous: &[&[u8]]) {
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) =
            Arc::new(SealKeys::derive(current, previous));
    }

    fn load(&self) -> Arc<SealKeys> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// `value`, sealed.
    pub fn seal(&self, value: &[u8]) -> Result<String, SealError> {
        let keys = self.load();
        let key = cipher(&keys.current).ok_or(SealError::Seal)?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Seal)?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + value.len() + AES_256_GCM.tag_len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(value);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(PURPOSE),
                &mut sealed[NONCE_LEN..],
            )
            .map_err(|_| SealError::Seal)?;
        sealed.extend_from_slice(tag.as_ref());
        Ok(BASE64URL.encode(sealed))
    }

    /// The value `sealed` holds.
    pub fn open(&self, sealed: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let bytes = BASE64URL.decode(sealed).map_err(|_| SealError::Open)?;
        if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SealError::Open);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let keys = self.load();
        for key in std::iter::once(&keys.current).chain(keys.previous.iter()) {
            let Some(key) = cipher(key) else { continue };
            let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
            let mut buffer = Zeroizing::new(ciphertext.to_vec());
            if let Ok(plain) = key.open_in_place(nonce, Aad::from(PURPOSE), &mut buffer) {
                return Ok(Zeroizing::new(plain.to_vec()));
            }
        }
        Err(SealError::Open)
    }
}

impl SealKeys {
    fn derive(current: &[u8], previous: &[&[u8]]) -> Self {
        Self {
            current: derive(current),
            previous: previous.iter().map(|bytes| derive(bytes)).collect(),
        }
    }
}

fn derive(lease_key: &[u8]) -> KeyBytes {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, lease_key), PURPOSE);
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(tag.as_ref());
    key
}

/// The cipher of a key (a 32-byte key always makes one).
fn cipher(key: &KeyBytes) -> Option<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, key.as_slice())
        .ok()
        .map(LessSafeKey::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_to_itself_and_does_not_show_it() {
        let seal = Seal::new(&[7; 32], &[]);
        let sealed = seal.seal(b"ory_at_secret-token").unwrap();
        assert!(!sealed.contains("ory_at"));
        assert_eq!(
            seal.open(&sealed).unwrap().as_slice(),
            b"ory_at_secret-token"
        );
    }

    #[test]
    fn sealing_twice_gives_different_text() {
        let seal = Seal::new(&[7; 32], &[]);
        assert_ne!(seal.seal(b"token").unwrap(), seal.seal(b"token").unwrap());
    }

    #[test]
    fn another_key_or_an_altered_value_does_not_open() {
        let sealed = Seal::new(&[7; 32], &[]).seal(b"token").unwrap();
        assert_eq!(Seal::new(&[8; 32], &[]).open(&sealed), Err(SealError::Open));
        let mut altered = sealed.into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        assert_eq!(
            Seal::new(&[7; 32], &[]).open(&altered),
            Err(SealError::Open)
        );
        assert_eq!(Seal::new(&[7; 32], &[]).open("short"), Err(SealError::Open));
    }

    #[test]
    fn a_rotated_key_still_opens_what_the_previous_one_sealed() {
        let sealed = Seal::new(&[1; 32], &[]).seal(b"token").unwrap();
        let rotated = Seal::new(&[2; 32], &[&[1; 32]]);
        assert_eq!(rotated.open(&sealed).unwrap().as_slice(), b"token");
    }

    #[test]
    fn replacing_the_keys_reaches_every_clone() {
        let seal = Seal::new(&[1; 32], &[]);
        let clone = seal.clone();
        let old = seal.seal(b"token").unwrap();
        seal.replace(&[2; 32], &[&[1; 32]]);
        let new = clone.seal(b"token").unwrap();
        assert_eq!(clone.open(&old).unwrap().as_slice(), b"token");
        assert_eq!(Seal::new(&[1; 32], &[]).open(&new), Err(SealError::Open));
        assert_eq!(
            Seal::new(&[2; 32], &[]).open(&new).unwrap().as_slice(),
            b"token"
        );
    }
}
