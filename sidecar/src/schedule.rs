//! When to renew and when to try again: plain arithmetic over durations, so
//! the schedule is tested without clocks. Randomness comes in as `jitter`
//! values the caller draws.

use std::time::{Duration, Instant};

/// How far renewal may move from the broker's `renew_after`, each way.
pub const RENEW_JITTER: f64 = 0.10;

/// The first retry waits about this long.
pub const RETRY_BASE: Duration = Duration::from_millis(250);

/// Retries of transient failures wait at most this long.
pub const RETRY_CAP: Duration = Duration::from_secs(30);

/// After a refusal (4xx) the broker will not change its mind by itself, so
/// retries (of a fresh issue, in the steady state) are this far apart at most.
pub const REFUSED_RETRY_CAP: Duration = Duration::from_secs(300);

/// A renewal is never scheduled later than this long before expiry, so that
/// a few retries still fit.
pub const MIN_RENEW_MARGIN: Duration = Duration::from_secs(1);

/// The longest lease the sidecar times: a BrokeredSecret's `maxTtl` is at
/// most 168h, so a longer ttl from the broker is clamped to this (renewing
/// and wiping sooner than asked is safe; later is not).
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(168 * 3600);

/// A `Retry-After` longer than this is read as this; the retry caps above
/// bound it further.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The ttl and renew-after the broker sent (seconds), as durations the
/// schedule can use: the ttl clamped to [`MAX_LEASE_TTL`], renew-after to
/// the ttl. A ttl of 0 is refused with a reason: the lease would expire as
/// it is written, and taking it would issue in a loop.
pub fn lease_times(ttl_secs: u64, renew_after_secs: u64) -> Result<(Duration, Duration), String> {
    if ttl_secs == 0 {
        return Err("a ttl of 0 s (already expired)".into());
    }
    let ttl = Duration::from_secs(ttl_secs).min(MAX_LEASE_TTL);
    let renew_after = Duration::from_secs(renew_after_secs).min(ttl);
    Ok((ttl, renew_after))
}

/// `at + delay`, never overflowing: a delay beyond [`MAX_LEASE_TTL`] counts
/// as that, and an `Instant` that cannot go that far stays at `at` (acting
/// early is the safe side for expiry, renewal and retry alike).
pub fn later(at: Instant, delay: Duration) -> Instant {
    at.checked_add(delay.min(MAX_LEASE_TTL)).unwrap_or(at)
}

/// Delay from issuance to the first renewal attempt: `renew_after` moved by
/// up to ±[`RENEW_JITTER`] (`jitter` in `[-1, 1]`). A `renew_after` of zero
/// or not before the ttl falls back to two thirds of the ttl; the result is
/// kept before expiry.
pub fn renewal_delay(renew_after: Duration, ttl: Duration, jitter: f64) -> Duration {
    // Clamped again here so that no input can overflow `mul_f64`.
    let ttl = ttl.min(MAX_LEASE_TTL);
    let renew_after = renew_after.min(ttl);
    // NaN would panic in `mul_f64`; it means no jitter.
    let jitter = if jitter.is_nan() { 0.0 } else { jitter };
    let base = if renew_after.is_zero() || renew_after >= ttl {
        ttl.mul_f64(2.0 / 3.0)
    } else {
        renew_after
    };
    let jittered = base.mul_f64(1.0 + RENEW_JITTER * jitter.clamp(-1.0, 1.0));
    let latest = ttl.saturating_sub(MIN_RENEW_MARGIN).max(ttl.mul_f64(0.5));
    jittered.min(latest)
}

/// Delay before retry number `attempt` (0 for the first retry): exponential
/// from [`RETRY_BASE`] up to `cap`, with "equal jitter" (`jitter` in
/// `[0, 1)` picks a point in the upper half), and never sooner than the
/// broker's `Retry-After`.
pub fn retry_delay(
    attempt: u32,
    cap: Duration,
    jitter: f64,
    retry_after: Option<Duration>,
) -> Duration {
    let exponential = RETRY_BASE
        .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .min(cap);
    let half = exponential / 2;
    let jitter = if jitter.is_nan() { 0.0 } else { jitter };
    let delay = half + half.mul_f64(jitter.clamp(0.0, 1.0));
    match retry_after {
        Some(floor) => delay.max(floor.min(cap)),
        None => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn renewal_follows_renew_after_within_ten_percent() {
        assert_eq!(renewal_delay(S(600), S(900), 0.0), S(600));
        assert_eq!(renewal_delay(S(600), S(900), 1.0), S(660));
        assert_eq!(renewal_delay(S(600), S(900), -1.0), S(540));
        assert_eq!(renewal_delay(S(600), S(900), 7.0), S(660));
    }

    #[test]
    fn renewal_without_a_usable_renew_after_is_at_two_thirds_of_the_ttl() {
        assert_eq!(renewal_delay(S(0), S(900), 0.0), S(600));
        assert_eq!(renewal_delay(S(900), S(900), 0.0), S(600));
        assert_eq!(renewal_delay(S(5000), S(900), 0.0), S(600));
    }

    #[test]
    fn renewal_stays_before_expiry() {
        assert_eq!(renewal_delay(S(9), S(10), 1.0), S(9));
        assert!(renewal_delay(S(1), S(1), 1.0) < S(1));
        assert_eq!(renewal_delay(S(0), S(0), 1.0), S(0));
    }

    #[test]
    fn absurd_lease_times_are_clamped_or_refused_never_overflowing() {
        assert!(lease_times(0, 0).unwrap_err().contains("ttl of 0"));
        assert_eq!(lease_times(900, 600), Ok((S(900), S(600))));
        // i64::MAX and u64::MAX seconds: a week at most.
        for huge in [i64::MAX as u64, u64::MAX] {
            assert_eq!(lease_times(huge, huge), Ok((MAX_LEASE_TTL, MAX_LEASE_TTL)));
            assert_eq!(lease_times(900, huge), Ok((S(900), S(900))));
        }
        for (renew_after, ttl) in [
            (Duration::MAX, Duration::MAX),
            (Duration::ZERO, Duration::MAX),
            (S(u64::MAX), S(1)),
            (Duration::MAX, Duration::ZERO),
        ] {
            for jitter in [-1.0, 0.0, 1.0, f64::NAN, f64::INFINITY] {
                let delay = renewal_delay(renew_after, ttl, jitter);
                assert!(delay <= ttl.min(MAX_LEASE_TTL), "{delay:?}");
            }
        }
        let now = Instant::now();
        assert_eq!(later(now, Duration::MAX), now + MAX_LEASE_TTL);
        assert_eq!(later(now, S(5)), now + S(5));
        assert!(retry_delay(u32::MAX, Duration::MAX, f64::NAN, Some(Duration::MAX)) > S(0));
    }

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap() {
        let lowest = |attempt| retry_delay(attempt, RETRY_CAP, 0.0, None);
        let highest = |attempt| retry_delay(attempt, RETRY_CAP, 1.0, None);
        assert_eq!(lowest(0), Duration::from_millis(125));
        assert_eq!(highest(0), Duration::from_millis(250));
        assert_eq!(highest(3), Duration::from_secs(2));
        assert_eq!(highest(20), RETRY_CAP);
        assert_eq!(highest(u32::MAX), RETRY_CAP);
        assert_eq!(lowest(20), RETRY_CAP / 2);
        for attempt in 0..10 {
            assert!(lowest(attempt) <= highest(attempt));
            assert!(highest(attempt) <= highest(attempt + 1));
        }
    }

    #[test]
    fn retry_after_is_a_floor_bounded_by_the_cap() {
        assert_eq!(retry_delay(0, RETRY_CAP, 0.5, Some(S(7))), S(7));
        assert_eq!(retry_delay(0, RETRY_CAP, 0.5, Some(S(3600))), RETRY_CAP);
        assert_eq!(
            retry_delay(20, REFUSED_RETRY_CAP, 1.0, None),
            REFUSED_RETRY_CAP
        );
    }
}
