//! One JSON object per line on stderr: what the sidecar did, with lease ids,
//! secret references, file names and the broker's messages. Callers pass
//! only such facts; no secret value or token ever reaches a log line.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// How much a log line matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Normal progress.
    Info,
    /// Something failed and will be retried or worked around.
    Warn,
    /// Something failed for good.
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// Logs `event` with `fields` (a JSON object; anything else is dropped).
pub fn emit(level: Level, event: &str, fields: Value) {
    let line = format_line(SystemTime::now(), level, event, fields);
    // Nothing sensible to do if stderr is gone.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Logs normal progress.
pub fn info(event: &str, fields: Value) {
    emit(Level::Info, event, fields);
}

/// Logs a failure that will be retried or worked around.
pub fn warn(event: &str, fields: Value) {
    emit(Level::Warn, event, fields);
}

/// Logs a failure for good.
pub fn error(event: &str, fields: Value) {
    emit(Level::Error, event, fields);
}

/// The line for an event, newline included.
pub fn format_line(at: SystemTime, level: Level, event: &str, fields: Value) -> String {
    // Written by hand so that ts, level and event lead every line (a
    // serde_json map would sort them among the fields).
    let mut line = format!(
        "{{\"ts\":\"{}\",\"level\":\"{}\",\"event\":{}",
        rfc3339(at),
        level.as_str(),
        Value::from(event)
    );
    if let Value::Object(fields) = fields {
        for (key, value) in fields {
            line.push(',');
            line.push_str(&Value::String(key).to_string());
            line.push(':');
            line.push_str(&value.to_string());
        }
    }
    line.push_str("}\n");
    line
}

/// `at` as an RFC 3339 UTC timestamp with milliseconds.
pub fn rfc3339(at: SystemTime) -> String {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let of_day = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since_epoch.subsec_millis()
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's algorithm), so no date crate is linked for log timestamps.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let at = UNIX_EPOCH + Duration::from_millis(1_795_957_200_250);
        assert_eq!(rfc3339(at), "2026-11-29T13:00:00.250Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn a_line_is_one_json_object_with_the_fields() {
        let line = format_line(
            UNIX_EPOCH,
            Level::Warn,
            "renew_failed",
            json!({"lease": "abc", "error": "line\nbreak"}),
        );
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1);
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["level"], "warn");
        assert_eq!(value["event"], "renew_failed");
        assert_eq!(value["lease"], "abc");
        assert!(line.starts_with(
            r#"{"ts":"1970-01-01T00:00:00.000Z","level":"warn","event":"renew_failed","#
        ));
    }
}
