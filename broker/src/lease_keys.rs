//! The lease key as the broker keeps it in its Secret, and its rotation,
//! as pure functions over the Secret's data (the I/O is in
//! [`crate::keys`]).
//!
//! The Secret holds the three slots of [`crate::key_slots`] (`next`,
//! `current`, `previous`, each 32 random bytes with `<slot>-created`): the
//! current key seals lease ids (and, derived from it, the values they
//! carry, [`crate::seal`]); all three open them. A key is known to every
//! replica a full period before it seals, so a replica that has not re-read
//! the Secret yet opens the ids a rotated one seals; it keeps opening a
//! full period after it stopped sealing, so an id (or an `oauth2` lease's
//! sealed token, kept through renewals) from before a rotation still opens
//! for as long as its lease may live: the period is at least the longest
//! maxTtl, [`MIN_ROTATION_PERIOD`]. A Secret written by an earlier broker
//! (`current` and perhaps `previous`, no times) is completed with a `next`
//! key, never rotated at once.
//!
//! The same Secret holds the [`FINGERPRINT_KEY`], made once and never
//! rotated: what custody fingerprints are keyed with
//! ([`crate::custody::Fingerprinter`]), so they stay comparable over time.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use zeroize::Zeroizing;

use crate::key_slots::{SlotChange, StoredSlots, maintain_slots, parse_period};
use crate::lease_id::{LEASE_KEY_BYTES, LeaseKeys};

/// The default rotation period of the lease key.
pub const DEFAULT_ROTATION_PERIOD: &str = "30d";

/// The shortest rotation period: a key must still open an id one period
/// after it stopped sealing, and an `oauth2` lease carries the token it
/// sealed at issuance through every renewal, up to the longest maxTtl a
/// BrokeredSecret may have (168h).
pub const MIN_ROTATION_PERIOD: Duration = Duration::from_secs(168 * 3600);

/// The data key of the fingerprint key.
pub const FINGERPRINT_KEY: &str = "fingerprint";

/// The bytes of the fingerprint key.
pub const FINGERPRINT_KEY_BYTES: usize = 32;

/// Parses the lease key's rotation period: like `30d` or `720h`, at least
/// [`MIN_ROTATION_PERIOD`].
pub fn parse_lease_key_rotation_period(text: &str) -> Result<Duration, String> {
    let period = parse_period(text)?;
    if period < MIN_ROTATION_PERIOD {
        return Err(format!(
            "lease key rotation period {text} is shorter than 168h (7d), the longest \
             maxTtl a lease may have"
        ));
    }
    Ok(period)
}

/// The lease-key Secret's contents.
#[derive(Clone, Default)]
pub struct StoredLeaseKeys {
    /// The rotating lease key.
    pub slots: StoredSlots,
    /// The fingerprint key.
    pub fingerprint: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for StoredLeaseKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Which keys exist and when they were made; never the keys.
        let mut map = f.debug_map();
        for (slot, key) in self.slots.named() {
            if let Some(key) = key {
                map.entry(&slot, &key.created);
            }
        }
        map.entry(&FINGERPRINT_KEY, &self.fingerprint.is_some());
        map.finish()
    }
}

/// What [`maintain`] changed, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseKeyChange {
    /// The lease key's slots changed.
    Slots(SlotChange),
    /// The fingerprint key was made.
    FingerprintKey,
}

impl StoredLeaseKeys {
    /// The keys in a Secret's data; unknown keys are ignored.
    pub fn from_data(data: &BTreeMap<String, Vec<u8>>) -> Self {
        Self {
            slots: StoredSlots::read(data, ""),
            fingerprint: data
                .get(FINGERPRINT_KEY)
                .map(|key| Zeroizing::new(key.clone())),
        }
    }

    /// The Secret's data for these keys.
    pub fn to_data(&self) -> BTreeMap<String, Zeroizing<Vec<u8>>> {
        let mut data = BTreeMap::new();
        self.slots.write("", &mut data);
        if let Some(key) = &self.fingerprint {
            data.insert(FINGERPRINT_KEY.to_owned(), key.clone());
        }
        data
    }

    /// The current key seals; next and previous open too. `None` without
    /// a current key of [`LEASE_KEY_BYTES`] at least.
    pub fn lease_keys(&self) -> Option<LeaseKeys> {
        let (current, opening) = self.parts()?;
        Some(LeaseKeys::new(current, &opening))
    }

    /// Makes these keys the ones `keys` (and every clone) use; false, and
    /// nothing changed, without a current key.
    pub fn install(&self, keys: &LeaseKeys) -> bool {
        match self.parts() {
            Some((current, opening)) => {
                keys.replace(current, &opening);
                true
            }
            None => false,
        }
    }

    fn parts(&self) -> Option<(&[u8], Vec<&[u8]>)> {
        let current = self.slots.current.as_ref()?;
        if current.key.len() < LEASE_KEY_BYTES {
            return None;
        }
        let opening = [&self.slots.next, &self.slots.previous]
            .into_iter()
            .flatten()
            .map(|key| key.key.as_slice())
            .collect();
        Some((current.key.as_slice(), opening))
    }

    /// When each slot's key was created, for comparing what replicas hold
    /// without the keys.
    pub fn created(&self) -> [Option<Timestamp>; 3] {
        self.slots
            .named()
            .map(|(_, key)| key.as_ref().and_then(|key| key.created))
    }
}

/// The stored keys as they should be at `now` with rotation `period`, and
/// what changed; `None` when nothing did. `generate` makes a new random
/// key (`None` when the random source fails).
pub fn maintain(
    stored: &StoredLeaseKeys,
    now: Timestamp,
    period: Duration,
    mut generate: impl FnMut(usize) -> Option<Zeroizing<Vec<u8>>>,
) -> Option<(StoredLeaseKeys, Vec<LeaseKeyChange>)> {
    let mut keys = stored.clone();
    let mut changes = Vec::new();
    // A current key too short to seal (written by hand) is replaced as if
    // missing: nothing it sealed can be trusted anyway.
    if keys
        .slots
        .current
        .as_ref()
        .is_some_and(|key| key.key.len() < LEASE_KEY_BYTES)
    {
        keys.slots.current = None;
    }
    if let Some(change) = maintain_slots(&mut keys.slots, now, period, || generate(LEASE_KEY_BYTES))
    {
        changes.push(LeaseKeyChange::Slots(change));
    }
    if keys.fingerprint.is_none()
        && let Some(key) = generate(FINGERPRINT_KEY_BYTES)
    {
        keys.fingerprint = Some(key);
        changes.push(LeaseKeyChange::FingerprintKey);
    }
    (!changes.is_empty()).then_some((keys, changes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease_id::{CLAIMS_VERSION, LeaseClaims, LeaseIdError};

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    /// Distinct keys of the asked length, told apart by their first byte.
    fn counter() -> impl FnMut(usize) -> Option<Zeroizing<Vec<u8>>> {
        let mut n = 0u8;
        move |len| {
            n += 1;
            Some(Zeroizing::new(vec![n; len]))
        }
    }

    fn ids(keys: &StoredLeaseKeys) -> [Option<u8>; 3] {
        keys.slots
            .named()
            .map(|(_, k)| k.as_ref().map(|k| k.key[0]))
    }

    fn claims() -> LeaseClaims {
        LeaseClaims {
            version: CLAIMS_VERSION,
            secret_namespace: "payments".into(),
            secret_name: "orders-db".into(),
            pod_uid: "uid".into(),
            handle: String::new(),
            issued_at: 1,
            expires_at: 2,
            max_expires_at: 3,
            audience: vec![],
            scopes: None,
            serial: String::new(),
        }
    }

    #[test]
    fn an_empty_secret_gets_current_next_and_a_fingerprint_key() {
        let now = at("2026-01-01T00:00:00Z");
        let (keys, changes) =
            maintain(&StoredLeaseKeys::default(), now, 30 * DAY, counter()).unwrap();
        assert_eq!(
            changes,
            [
                LeaseKeyChange::Slots(SlotChange::Created),
                LeaseKeyChange::FingerprintKey
            ]
        );
        assert_eq!(ids(&keys), [Some(2), Some(1), None]);
        assert_eq!(keys.fingerprint.as_deref().map(|k| k[0]), Some(3));
        assert!(maintain(&keys, at("2026-01-30T23:59:59Z"), 30 * DAY, counter()).is_none());
    }

    #[test]
    fn a_rotation_seals_with_next_and_still_opens_what_current_sealed() {
        let (keys, _) = maintain(
            &StoredLeaseKeys::default(),
            at("2026-01-01T00:00:00Z"),
            30 * DAY,
            counter(),
        )
        .unwrap();
        let before = keys.lease_keys().unwrap();
        let old_id = before.seal(&claims());
        let mut generate = counter();
        let (rotated, changes) = maintain(&keys, at("2026-01-31T00:00:00Z"), 30 * DAY, |len| {
            generate(len).map(|k| Zeroizing::new(vec![k[0] + 100; len]))
        })
        .unwrap();
        assert_eq!(changes, [LeaseKeyChange::Slots(SlotChange::Rotated)]);
        assert_eq!(ids(&rotated), [Some(101), Some(2), Some(1)]);
        // The fingerprint key never rotates.
        assert_eq!(rotated.fingerprint.as_deref().map(|k| k[0]), Some(3));
        let after = rotated.lease_keys().unwrap();
        assert_eq!(after.open(&old_id).unwrap(), claims());
        let new_id = after.seal(&claims());
        // A replica still on the keys before the rotation opens it: it
        // already knew the key as next.
        assert_eq!(before.open(&new_id).unwrap(), claims());
        // Two rotations later the first key opens nothing.
        let (again, _) = maintain(&rotated, at("2026-03-02T00:00:00Z"), 30 * DAY, |len| {
            Some(Zeroizing::new(vec![200; len]))
        })
        .unwrap();
        assert_eq!(
            again.lease_keys().unwrap().open(&old_id),
            Err(LeaseIdError::Tampered)
        );
    }

    #[test]
    fn installing_rotated_keys_reaches_the_handle_in_use() {
        let (keys, _) = maintain(
            &StoredLeaseKeys::default(),
            at("2026-01-01T00:00:00Z"),
            30 * DAY,
            counter(),
        )
        .unwrap();
        let in_use = keys.lease_keys().unwrap();
        let seal = in_use.value_seal();
        let sealed = seal.seal(b"token").unwrap();
        let (rotated, _) =
            maintain(&keys, at("2026-02-01T00:00:00Z"), 30 * DAY, counter()).unwrap();
        assert!(rotated.install(&in_use));
        let id = in_use.seal(&claims());
        assert_eq!(
            LeaseKeys::new(&[2; 32], &[]).open(&id).unwrap(),
            claims(),
            "the former next key seals"
        );
        assert_eq!(seal.open(&sealed).unwrap().as_slice(), b"token");
        assert!(!StoredLeaseKeys::default().install(&in_use));
    }

    #[test]
    fn a_secret_from_an_earlier_broker_is_completed_not_rotated() {
        let data = BTreeMap::from([
            ("current".to_string(), vec![7; 32]),
            ("previous".to_string(), vec![6; 32]),
        ]);
        let stored = StoredLeaseKeys::from_data(&data);
        let old = LeaseKeys::new(&[7; 32], &[&[6; 32]]).seal(&claims());
        let (keys, changes) =
            maintain(&stored, at("2026-01-01T00:00:00Z"), 30 * DAY, counter()).unwrap();
        assert_eq!(
            changes,
            [
                LeaseKeyChange::Slots(SlotChange::Completed),
                LeaseKeyChange::FingerprintKey
            ]
        );
        assert_eq!(ids(&keys), [Some(1), Some(7), Some(6)]);
        assert_eq!(keys.lease_keys().unwrap().open(&old).unwrap(), claims());
        let data: BTreeMap<String, Vec<u8>> = keys
            .to_data()
            .into_iter()
            .map(|(k, v)| (k, v.to_vec()))
            .collect();
        assert_eq!(
            data.keys().map(String::as_str).collect::<Vec<_>>(),
            ["current", "fingerprint", "next", "next-created", "previous"]
        );
        assert_eq!(
            format!("{:?}", StoredLeaseKeys::from_data(&data)).find("[7"),
            None
        );
    }

    #[test]
    fn a_current_key_too_short_to_seal_is_replaced() {
        let data = BTreeMap::from([("current".to_string(), vec![7; 4])]);
        let stored = StoredLeaseKeys::from_data(&data);
        assert!(stored.lease_keys().is_none());
        let (keys, _) = maintain(&stored, at("2026-01-01T00:00:00Z"), 30 * DAY, counter()).unwrap();
        assert!(keys.lease_keys().is_some());
    }

    #[test]
    fn rotation_periods_are_at_least_the_longest_max_ttl() {
        assert_eq!(parse_lease_key_rotation_period("30d"), Ok(30 * DAY));
        assert_eq!(parse_lease_key_rotation_period("168h"), Ok(7 * DAY));
        for bad in ["6d", "167h", "1h", "", "x"] {
            assert!(parse_lease_key_rotation_period(bad).is_err(), "{bad:?}");
        }
    }
}
