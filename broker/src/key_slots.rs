//! Keys that rotate with overlap, as the broker keeps them in a Secret of
//! its own: a `next` key, a `current` one and a `previous` one, each with
//! its creation time (RFC 3339) under `<slot>-created`. Pure functions over
//! the Secret's data; the I/O is in [`crate::keys`]. The JWT signing keys
//! ([`crate::jwt_keys`], one set of slots per algorithm) and the lease key
//! ([`crate::lease_keys`]) both rotate this way.
//!
//! A rotation is due once `next` has been known for a rotation period:
//! previous ← current, current ← next, next ← a new key. So each key is
//! known to every replica (which re-read the Secret each minute) one period
//! before it is used, is used for one period, and stays known one more
//! period: whatever it signed or sealed still verifies or opens for a
//! period after it stopped being used.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use zeroize::Zeroizing;

use ferry_api::duration::{DurationError, parse_duration};

/// The suffix of a slot's creation time key.
pub const CREATED_SUFFIX: &str = "-created";

/// The slots' names, in the order [`StoredSlots::named`] gives them.
pub const SLOTS: [&str; 3] = ["next", "current", "previous"];

/// Parses a rotation period: days like `30d`, or a duration as resources
/// spell it (`720h`). Each key's caller sets its own minimum.
pub fn parse_period(text: &str) -> Result<Duration, String> {
    match text.strip_suffix('d') {
        Some(days) if !days.is_empty() && days.len() <= 4 => days
            .parse::<u64>()
            .map(|days| Duration::from_secs(days * 24 * 3600))
            .map_err(|_| format!("invalid rotation period {text:?}: expected like 30d or 720h")),
        _ => parse_duration(text).map_err(|error: DurationError| {
            format!("invalid rotation period: {error}, or days like 30d")
        }),
    }
}

/// One stored key.
#[derive(Clone)]
pub struct StoredKey {
    /// The key's bytes (PKCS#8 DER for a signing key, raw for the lease key).
    pub key: Zeroizing<Vec<u8>>,
    /// When it was created, if recorded.
    pub created: Option<Timestamp>,
}

/// One rotating key's three slots.
#[derive(Clone, Default)]
pub struct StoredSlots {
    /// Known to every replica, used after the next rotation.
    pub next: Option<StoredKey>,
    /// In use.
    pub current: Option<StoredKey>,
    /// Known, used until the last rotation.
    pub previous: Option<StoredKey>,
}

impl StoredSlots {
    /// The slots with their names.
    pub fn named(&self) -> [(&'static str, &Option<StoredKey>); 3] {
        [
            (SLOTS[0], &self.next),
            (SLOTS[1], &self.current),
            (SLOTS[2], &self.previous),
        ]
    }

    /// The slots stored in `data` under `<prefix><slot>`. An unreadable
    /// creation time counts as unrecorded.
    pub fn read(data: &BTreeMap<String, Vec<u8>>, prefix: &str) -> Self {
        let read = |slot: &str| {
            let name = format!("{prefix}{slot}");
            let key = data.get(&name)?;
            let created = data
                .get(&format!("{name}{CREATED_SUFFIX}"))
                .and_then(|text| std::str::from_utf8(text).ok()?.parse().ok());
            Some(StoredKey {
                key: Zeroizing::new(key.clone()),
                created,
            })
        };
        Self {
            next: read(SLOTS[0]),
            current: read(SLOTS[1]),
            previous: read(SLOTS[2]),
        }
    }

    /// Writes the slots into `data` under `<prefix><slot>`.
    pub fn write(&self, prefix: &str, data: &mut BTreeMap<String, Zeroizing<Vec<u8>>>) {
        for (slot, key) in self.named() {
            let Some(key) = key else { continue };
            let name = format!("{prefix}{slot}");
            if let Some(created) = key.created {
                data.insert(
                    format!("{name}{CREATED_SUFFIX}"),
                    Zeroizing::new(created.to_string().into_bytes()),
                );
            }
            data.insert(name, key.key.clone());
        }
    }

    /// When the current key was made the current one: when the next key
    /// was created (a rotation creates the new next key as it promotes
    /// the old one), else when the current key was created.
    pub fn last_rotated(&self) -> Option<Timestamp> {
        self.next
            .as_ref()
            .and_then(|key| key.created)
            .or_else(|| self.current.as_ref().and_then(|key| key.created))
    }

    /// When the next rotation is due with `period`.
    pub fn rotation_due_at(&self, period: Duration) -> Option<Timestamp> {
        let created = self.next.as_ref()?.created?;
        created
            .checked_add(SignedDuration::try_from(period).ok()?)
            .ok()
    }
}

/// Whether a rotation is due: `next`, created at `next_created`, has been
/// known for a full `period` at `now`.
pub fn rotation_due(next_created: Timestamp, now: Timestamp, period: Duration) -> bool {
    let published = now.duration_since(next_created);
    published >= SignedDuration::try_from(period).unwrap_or(SignedDuration::MAX)
}

/// What [`maintain_slots`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotChange {
    /// A current key was missing and was made.
    Created,
    /// A next key was missing (such as in a Secret from an earlier broker)
    /// and was made, or its missing creation time recorded.
    Completed,
    /// The keys rotated.
    Rotated,
}

/// Brings `slots` to what they should be at `now` with rotation `period`,
/// and says what changed; `None` when nothing did. `fresh` makes a new key
/// (`None` when the random source fails: the slots are then left as far as
/// they got).
pub fn maintain_slots(
    slots: &mut StoredSlots,
    now: Timestamp,
    period: Duration,
    mut fresh: impl FnMut() -> Option<Zeroizing<Vec<u8>>>,
) -> Option<SlotChange> {
    let mut fresh = || {
        fresh().map(|key| StoredKey {
            key,
            created: Some(now),
        })
    };
    let mut change = None;
    if slots.current.is_none() {
        slots.current = Some(slots.next.take().or_else(&mut fresh)?);
        change = Some(SlotChange::Created);
    }
    match &mut slots.next {
        None => {
            if let Some(next) = fresh() {
                slots.next = Some(next);
                change = change.or(Some(SlotChange::Completed));
            }
        }
        Some(next) => match next.created {
            None => {
                // Unknown age: start the clock now rather than guess.
                next.created = Some(now);
                change = change.or(Some(SlotChange::Completed));
            }
            Some(created) if rotation_due(created, now, period) => {
                if let Some(newer) = fresh() {
                    slots.previous = slots.current.take();
                    slots.current = slots.next.take();
                    slots.next = Some(newer);
                    change = Some(SlotChange::Rotated);
                }
            }
            Some(_) => {}
        },
    }
    change
}
