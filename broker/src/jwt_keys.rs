//! The JWT signing keys as the broker keeps them in its Secret, and their
//! rotation ([`crate::key_slots`]), as pure functions over the Secret's
//! data (the I/O is in [`crate::keys`]).
//!
//! For each algorithm the Secret holds three PKCS#8 keys, each with its
//! creation time (RFC 3339) under `<slot>-created`:
//!
//! | slot | ES256 key | EdDSA key | role |
//! |---|---|---|---|
//! | next | `next` | `ed25519-next` | published, not yet signing |
//! | current | `current` | `ed25519-current` | signs |
//! | previous | `previous` | `ed25519-previous` | published, signed until the last rotation |
//!
//! (ES256 keeps the unprefixed names earlier brokers wrote.) A rotation is
//! due once `next` has been published for a rotation period: previous ←
//! current, current ← next, next ← a new key. So each key is published for
//! one period before it signs (replicas that have not re-read the Secret
//! yet, and relying parties' cached JWKS, already know it), signs for one
//! period, and stays published one more period. A token therefore verifies
//! until it expires as long as its ttl is shorter than the rotation period
//! (ttls are at most 24h; the period is at least [`MIN_ROTATION_PERIOD`]).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use zeroize::Zeroizing;

use super::key_slots::{SlotChange, StoredSlots, maintain_slots, parse_period};
use super::providers::ProviderError;
use super::providers::jwt::{SigningKeys, jose_name};
use ferry_api::resources::JwtAlgorithm;

/// The default rotation period.
pub const DEFAULT_ROTATION_PERIOD: &str = "30d";

/// The shortest rotation period: a token (ttl at most 24h) must expire
/// before its key stops being published, one period after it stopped
/// signing.
pub const MIN_ROTATION_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// The algorithms the broker keeps keys for.
pub const ALGORITHMS: [JwtAlgorithm; 2] = [JwtAlgorithm::ES256, JwtAlgorithm::EdDSA];

/// Parses a rotation period: `30d`, or a duration as resources spell it
/// (`720h`), at least [`MIN_ROTATION_PERIOD`].
pub fn parse_rotation_period(text: &str) -> Result<Duration, String> {
    let period = parse_period(text)?;
    if period < MIN_ROTATION_PERIOD {
        return Err(format!(
            "rotation period {text} is shorter than 24h, the longest ttl a token may have"
        ));
    }
    Ok(period)
}

/// Every algorithm's stored keys, as read from or written to the Secret.
#[derive(Clone, Default)]
pub struct StoredJwtKeys {
    /// ES256 keys.
    pub es256: StoredSlots,
    /// EdDSA (Ed25519) keys.
    pub eddsa: StoredSlots,
}

impl std::fmt::Debug for StoredJwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Which keys exist and when they were made; never the keys.
        let mut map = f.debug_map();
        for algorithm in ALGORITHMS {
            for (slot, key) in self.slots(algorithm).named() {
                if let Some(key) = key {
                    map.entry(&format!("{}:{slot}", jose_name(algorithm)), &key.created);
                }
            }
        }
        map.finish()
    }
}

/// The data key prefix of an algorithm's slots.
fn prefix(algorithm: JwtAlgorithm) -> &'static str {
    match algorithm {
        JwtAlgorithm::ES256 => "",
        JwtAlgorithm::EdDSA => "ed25519-",
    }
}

impl StoredJwtKeys {
    fn slots_mut(&mut self, algorithm: JwtAlgorithm) -> &mut StoredSlots {
        match algorithm {
            JwtAlgorithm::ES256 => &mut self.es256,
            JwtAlgorithm::EdDSA => &mut self.eddsa,
        }
    }

    /// The keys in a Secret's data. Unknown keys are ignored; an
    /// unreadable creation time counts as unrecorded.
    pub fn from_data(data: &BTreeMap<String, Vec<u8>>) -> Self {
        let mut stored = Self::default();
        for algorithm in ALGORITHMS {
            *stored.slots_mut(algorithm) = StoredSlots::read(data, prefix(algorithm));
        }
        stored
    }

    /// The Secret's data for these keys.
    pub fn to_data(&self) -> BTreeMap<String, Zeroizing<Vec<u8>>> {
        let mut data = BTreeMap::new();
        for algorithm in ALGORITHMS {
            self.slots(algorithm).write(prefix(algorithm), &mut data);
        }
        data
    }

    /// One algorithm's slots.
    pub fn slots(&self, algorithm: JwtAlgorithm) -> &StoredSlots {
        match algorithm {
            JwtAlgorithm::ES256 => &self.es256,
            JwtAlgorithm::EdDSA => &self.eddsa,
        }
    }

    /// The keys to sign and publish with: per algorithm with a current key,
    /// current signs and next and previous are published.
    pub fn signing_keys(&self) -> Result<SigningKeys, ProviderError> {
        let mut keys = SigningKeys::new();
        for algorithm in ALGORITHMS {
            let slots = self.slots(algorithm);
            let Some(current) = &slots.current else {
                continue;
            };
            let published: Vec<&[u8]> = [&slots.next, &slots.previous]
                .into_iter()
                .flatten()
                .map(|key| key.key.as_slice())
                .collect();
            keys = keys.with_algorithm(algorithm, &current.key, &published)?;
        }
        Ok(keys)
    }
}

/// What [`maintain`] changed, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChange {
    /// A current key was missing and was made.
    Created(JwtAlgorithm),
    /// A next key was missing (such as in a Secret from an earlier broker)
    /// and was made, or its missing creation time recorded.
    Completed(JwtAlgorithm),
    /// The keys rotated.
    Rotated(JwtAlgorithm),
}

/// The stored keys as they should be at `now` with rotation `period`, and
/// what changed; `None` when nothing did. `generate` makes a new PKCS#8
/// key (`None` when the random source fails: that algorithm is then left
/// as it is).
pub fn maintain(
    stored: &StoredJwtKeys,
    now: Timestamp,
    period: Duration,
    mut generate: impl FnMut(JwtAlgorithm) -> Option<Zeroizing<Vec<u8>>>,
) -> Option<(StoredJwtKeys, Vec<KeyChange>)> {
    let mut keys = stored.clone();
    let mut changes = Vec::new();
    for algorithm in ALGORITHMS {
        let change = maintain_slots(keys.slots_mut(algorithm), now, period, || {
            generate(algorithm)
        });
        changes.extend(change.map(|change| match change {
            SlotChange::Created => KeyChange::Created(algorithm),
            SlotChange::Completed => KeyChange::Completed(algorithm),
            SlotChange::Rotated => KeyChange::Rotated(algorithm),
        }));
    }
    (!changes.is_empty()).then_some((keys, changes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_slots::rotation_due;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    /// Distinct fake keys, so slots can be told apart (no crypto needed).
    fn counter() -> impl FnMut(JwtAlgorithm) -> Option<Zeroizing<Vec<u8>>> {
        let mut n = 0u8;
        move |_| {
            n += 1;
            Some(Zeroizing::new(vec![n]))
        }
    }

    fn ids(slots: &StoredSlots) -> [Option<u8>; 3] {
        [&slots.next, &slots.current, &slots.previous].map(|k| k.as_ref().map(|k| k.key[0]))
    }

    #[test]
    fn an_empty_secret_gets_a_current_and_a_next_key_per_algorithm() {
        let now = at("2026-01-01T00:00:00Z");
        let (keys, changes) =
            maintain(&StoredJwtKeys::default(), now, 30 * DAY, counter()).unwrap();
        assert_eq!(
            changes,
            [
                KeyChange::Created(JwtAlgorithm::ES256),
                KeyChange::Created(JwtAlgorithm::EdDSA)
            ]
        );
        assert_eq!(ids(&keys.es256), [Some(2), Some(1), None]);
        assert_eq!(ids(&keys.eddsa), [Some(4), Some(3), None]);
        assert_eq!(keys.es256.next.as_ref().unwrap().created, Some(now));
        // And then nothing is due until a period has passed.
        assert!(maintain(&keys, at("2026-01-30T23:59:59Z"), 30 * DAY, counter()).is_none());
    }

    #[test]
    fn rotation_moves_next_to_current_and_current_to_previous_once_due() {
        let start = at("2026-01-01T00:00:00Z");
        let (keys, _) = maintain(&StoredJwtKeys::default(), start, 30 * DAY, counter()).unwrap();
        let due = at("2026-01-31T00:00:00Z");
        let mut generate = counter();
        let _ = generate(JwtAlgorithm::ES256);
        let (rotated, changes) = maintain(&keys, due, 30 * DAY, |a| {
            generate(a).map(|k| Zeroizing::new(vec![k[0] + 100]))
        })
        .unwrap();
        assert_eq!(
            changes,
            [
                KeyChange::Rotated(JwtAlgorithm::ES256),
                KeyChange::Rotated(JwtAlgorithm::EdDSA)
            ]
        );
        assert_eq!(ids(&rotated.es256), [Some(102), Some(2), Some(1)]);
        assert_eq!(ids(&rotated.eddsa), [Some(103), Some(4), Some(3)]);
        // One rotation later the first key is gone.
        let (again, _) =
            maintain(&rotated, at("2026-03-02T00:00:00Z"), 30 * DAY, counter()).unwrap();
        assert_eq!(ids(&again.es256), [Some(1), Some(102), Some(2)]);
    }

    #[test]
    fn rotation_is_due_exactly_one_period_after_next_was_made() {
        let made = at("2026-01-01T00:00:00Z");
        assert!(!rotation_due(made, at("2026-01-30T23:59:59Z"), 30 * DAY));
        assert!(rotation_due(made, at("2026-01-31T00:00:00Z"), 30 * DAY));
        // A clock that went backwards does not rotate.
        assert!(!rotation_due(made, at("2025-12-01T00:00:00Z"), 30 * DAY));
    }

    #[test]
    fn a_secret_from_an_earlier_broker_is_completed_without_rotating() {
        // Earlier brokers wrote ES256 `current`/`previous` and no times.
        let data = BTreeMap::from([
            ("current".to_string(), vec![7]),
            ("previous".to_string(), vec![6]),
        ]);
        let stored = StoredJwtKeys::from_data(&data);
        let now = at("2026-01-01T00:00:00Z");
        let (keys, changes) = maintain(&stored, now, 30 * DAY, counter()).unwrap();
        assert_eq!(
            changes,
            [
                KeyChange::Completed(JwtAlgorithm::ES256),
                KeyChange::Created(JwtAlgorithm::EdDSA)
            ]
        );
        assert_eq!(ids(&keys.es256), [Some(1), Some(7), Some(6)]);
        let data = keys.to_data();
        assert_eq!(data["current"].as_slice(), [7]);
        assert_eq!(data["next-created"].as_slice(), b"2026-01-01T00:00:00Z");
        assert!(data.contains_key("ed25519-current"));
    }

    #[test]
    fn a_next_key_without_a_time_starts_the_clock_instead_of_rotating() {
        let data = BTreeMap::from([
            ("next".to_string(), vec![2]),
            ("current".to_string(), vec![1]),
            ("ed25519-next".to_string(), vec![4]),
            (
                "ed25519-next-created".to_string(),
                b"2026-01-01T00:00:00Z".to_vec(),
            ),
            ("ed25519-current".to_string(), vec![3]),
        ]);
        let now = at("2026-06-01T00:00:00Z");
        let (keys, changes) =
            maintain(&StoredJwtKeys::from_data(&data), now, 30 * DAY, counter()).unwrap();
        assert_eq!(
            changes,
            [
                KeyChange::Completed(JwtAlgorithm::ES256),
                KeyChange::Rotated(JwtAlgorithm::EdDSA)
            ]
        );
        assert_eq!(ids(&keys.es256), [Some(2), Some(1), None]);
        assert_eq!(keys.es256.next.as_ref().unwrap().created, Some(now));
    }

    #[test]
    fn data_round_trips() {
        let (keys, _) = maintain(
            &StoredJwtKeys::default(),
            at("2026-01-01T00:00:00Z"),
            30 * DAY,
            counter(),
        )
        .unwrap();
        let data: BTreeMap<String, Vec<u8>> = keys
            .to_data()
            .into_iter()
            .map(|(k, v)| (k, v.to_vec()))
            .collect();
        assert_eq!(
            data.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "current",
                "current-created",
                "ed25519-current",
                "ed25519-current-created",
                "ed25519-next",
                "ed25519-next-created",
                "next",
                "next-created"
            ]
        );
        let again = StoredJwtKeys::from_data(&data);
        assert_eq!(format!("{again:?}"), format!("{keys:?}"));
        assert!(!format!("{again:?}").contains("[1]"));
    }

    #[test]
    fn real_stored_keys_sign_with_current_and_publish_all_three() {
        let generate = |a| super::super::providers::jwt::generate_key(a).ok();
        let (keys, _) = maintain(
            &StoredJwtKeys::default(),
            at("2026-01-01T00:00:00Z"),
            30 * DAY,
            generate,
        )
        .unwrap();
        let (keys, _) = maintain(&keys, at("2026-02-01T00:00:00Z"), 30 * DAY, generate).unwrap();
        let signing = keys.signing_keys().unwrap();
        assert_eq!(signing.kids().len(), 6);
        assert!(signing.signing_kid(JwtAlgorithm::EdDSA).is_some());
    }

    #[test]
    fn rotation_periods_parse_in_days_or_hours_and_not_below_a_day() {
        assert_eq!(parse_rotation_period("30d"), Ok(30 * DAY));
        assert_eq!(parse_rotation_period("720h"), Ok(30 * DAY));
        assert_eq!(parse_rotation_period("24h"), Ok(DAY));
        for bad in ["", "d", "1.5d", "23h", "30", "30days", "-1d", "99999d"] {
            assert!(parse_rotation_period(bad).is_err(), "{bad:?}");
        }
    }
}
