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
    Micros(micros).to_string()
}

/// A timestamp (Unix µs) that displays and serializes as [`format_micros`] formats it,
/// without allocating: listings and answers write thousands of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Micros(pub i64);

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`
const MICROS_LEN: usize = 27;

impl Micros {
    /// The text in `buf`, or `None` for a year outside 0..=9999 (formatted by `time`).
    fn write(self, buf: &mut [u8; MICROS_LEN]) -> Option<&str> {
        let t = datetime(self.0);
        let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
        let mut put = |at: usize, width: usize, mut v: u32| {
            for i in (at..at + width).rev() {
                buf[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, u32::from(u8::from(t.month())));
        put(8, 2, u32::from(t.day()));
        put(11, 2, u32::from(t.hour()));
        put(14, 2, u32::from(t.minute()));
        put(17, 2, u32::from(t.second()));
        put(20, 6, t.microsecond());
        for (i, c) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':'), (19, b'.')] {
            buf[i] = c;
        }
        // Decided by the value, as `time`'s path does (out of range falls back to 0).
        let len = if self.0 % 1_000_000 == 0 { 19 } else { 26 };
        buf[len] = b'Z';
        std::str::from_utf8(&buf[..=len]).ok()
    }
}

impl std::fmt::Display for Micros {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut buf = [0; MICROS_LEN];
        match self.write(&mut buf) {
            Some(s) => f.write_str(s),
            None => f.write_str(&format_with_time(self.0)),
        }
    }
}

impl serde::Serialize for Micros {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // serde_json writes a `Display` straight into its output (escaped, no `String`).
        s.collect_str(self)
    }
}

fn datetime(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// [`format_micros`] through `time`'s formatter (years outside 0..=9999, and the tests).
fn format_with_time(micros: i64) -> String {
    let t = datetime(micros);
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

    proptest::proptest! {
        #[test]
        fn micros_format_as_time_does(m in proptest::prelude::any::<i64>(), whole in proptest::prelude::any::<bool>()) {
            let m = if whole { m - m % 1_000_000 } else { m };
            proptest::prop_assert_eq!(Micros(m).to_string(), format_with_time(m));
            proptest::prop_assert_eq!(serde_json::to_string(&Micros(m)).unwrap(), format!("\"{}\"", format_with_time(m)));
        }

        #[test]
        fn micros_of_this_era_format_as_time_does(m in 0..4_102_444_800_000_000_i64) {
            proptest::prop_assert_eq!(Micros(m).to_string(), format_with_time(m));
        }
    }

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
