//! Durations as ferry's resources spell them (`90s`, `15m`, `1h30m`).
//!
//! The schema admits exactly [`crate::resources::DURATION_PATTERN`] and
//! CEL's `duration()` checks bounds; this parser accepts the same language,
//! so what the apiserver admitted, the controllers understand.

use std::time::Duration;

/// The longest duration accepted: what one `999999h` says. A longer sum
/// (`999999h999999h`) could not be printed back in the language, and no
/// field allows anything near it.
pub const MAX_DURATION: Duration = Duration::from_secs(999_999 * 3600);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: expected number-unit pairs with units s, m or h, like 15m or 1h30m"
)]
pub struct DurationError {
    input: String,
}

/// Parses `15m`, `1h30m`, `90s`; refuses anything else (including empty)
/// and anything longer than [`MAX_DURATION`].
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let error = || DurationError {
        input: input.chars().take(64).collect(),
    };
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in input.chars() {
        match c {
            '0'..='9' if digits.len() < 6 => digits.push(c),
            's' | 'm' | 'h' if !digits.is_empty() => {
                let n: u64 = digits.parse().map_err(|_| error())?;
                let unit = match c {
                    's' => 1,
                    'm' => 60,
                    _ => 3600,
                };
                total = total.checked_add(n * unit).ok_or_else(error)?;
                digits.clear();
            }
            _ => return Err(error()),
        }
    }
    if input.is_empty() || !digits.is_empty() || total > MAX_DURATION.as_secs() {
        return Err(error());
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration the way the resources spell it (`1h30m`, `45s`);
/// [`parse_duration`] reads it back for any duration up to
/// [`MAX_DURATION`] (whole seconds).
pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_units_and_their_combinations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h0m5s"), Ok(Duration::from_secs(3605)));
    }

    #[test]
    fn refuses_what_the_schema_refuses() {
        for bad in [
            "", "15", "m", "1d", "15 m", "-5m", "1.5h", "1234567s", "15M", "1h30",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn a_sum_too_long_to_print_back_is_refused() {
        // Found by the duration round-trip fuzz test: "999999h1h" parsed, but printed as "1000000h",
        // which the parser (and the schema) refuse.
        assert_eq!(parse_duration("999999h"), Ok(MAX_DURATION));
        for bad in ["999999h1s", "999999h999999h", "500000h500000h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            parse_duration(&format_duration(MAX_DURATION)),
            Ok(MAX_DURATION)
        );
    }

    #[test]
    fn formats_round_trip() {
        for text in ["45s", "15m", "1h", "1h30m", "2h0m1s"] {
            let parsed = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&format_duration(parsed)).unwrap(), parsed);
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
    }
}
