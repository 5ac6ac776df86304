//! Time as the wire wants it: UTC RFC 3339 with `Z` and exactly 0 or 6 fraction digits
//! (Python 3.10's `fromisoformat` rejects 4, 5 and 7–9 digits, spec §2.1). Stored as Unix
//! microseconds.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    micros_of(OffsetDateTime::now_utc())
}

fn micros_of(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// Minutes to microseconds.
pub fn minutes(m: u32) -> i64 {
    i64::from(m) * 60 * 1_000_000
}

/// Hours to microseconds.
pub fn hours(h: u32) -> i64 {
    i64::from(h) * 3600 * 1_000_000
}

/// `2025-03-04T10:15:30.123456Z` (always 6 digits; `…:30Z` when the fraction is zero).
pub fn format_micros(micros: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let whole = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let frac = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]");
    let fmt = if micros % 1_000_000 == 0 { whole } else { frac };
    let mut s = t.format(fmt).unwrap_or_default();
    s.push('Z');
    s
}

/// `Some(format)` or JSON null.
pub fn format_opt(micros: Option<i64>) -> serde_json::Value {
    micros.map_or(serde_json::Value::Null, |m| serde_json::Value::String(format_micros(m)))
}

/// Parses what clients send: RFC 3339 with any offset, or a naive ISO date-time / date
/// (taken as UTC, as the Python SDK does).
pub fn parse(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(micros_of(t));
    }
    let naive = s.replace(' ', "T");
    let with_frac = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond]");
    let no_frac = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let no_sec = format_description!("[year]-[month]-[day]T[hour]:[minute]");
    for fmt in [with_frac, no_frac, no_sec] {
        if let Ok(t) = PrimitiveDateTime::parse(&naive, fmt) {
            return Some(micros_of(t.assume_offset(UtcOffset::UTC)));
        }
    }
    let date = format_description!("[year]-[month]-[day]");
    time::Date::parse(s, date)
        .ok()
        .map(|d| micros_of(d.midnight().assume_offset(UtcOffset::UTC)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_zero_or_six_digits() {
        assert_eq!(format_micros(1_741_083_330_000_000), "2025-03-04T10:15:30Z");
        assert_eq!(format_micros(1_741_083_330_123_400), "2025-03-04T10:15:30.123400Z");
    }

    #[test]
    fn parses_offsets_naive_and_dates() {
        assert_eq!(parse("2025-03-04T10:15:30Z"), Some(1_741_083_330_000_000));
        assert_eq!(parse("2025-03-04T12:15:30+02:00"), Some(1_741_083_330_000_000));
        assert_eq!(parse("2025-03-04T10:15:30.5"), Some(1_741_083_330_500_000));
        assert_eq!(parse("2025-03-04 10:15:30"), Some(1_741_083_330_000_000));
        assert_eq!(parse("2025-03-04"), Some(1_741_046_400_000_000));
        assert_eq!(parse("soon"), None);
    }

    #[test]
    fn round_trips() {
        let now = now_micros();
        assert_eq!(parse(&format_micros(now)), Some(now));
    }
}
