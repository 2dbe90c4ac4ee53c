//! When to renew and when to try again: plain arithmetic over durations, so
//! the schedule is tested without clocks. Randomness comes in as `jitter`
//! values the caller draws.

use std::time::Duration;

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

/// Delay from issuance to the first renewal attempt: `renew_after` moved by
/// up to ±[`RENEW_JITTER`] (`jitter` in `[-1, 1]`). A `renew_after` of zero
/// or not before the ttl falls back to two thirds of the ttl; the result is
/// kept before expiry.
pub fn renewal_delay(renew_after: Duration, ttl: Duration, jitter: f64) -> Duration {
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
