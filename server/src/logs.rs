//! Log hygiene: control characters in logged values are escaped (a product code with a
//! `\n` cannot forge a log line), and noisy lines — refused requests, accept errors — are
//! rate-limited with a count of what was suppressed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `s` with control characters escaped (`\n`, `\r`, `\t`, `\u{1b}`…); backslashes double.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() || c == '\\') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Escapes a formatted log line: every control character except the final newline.
pub fn escape_line(line: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let needs = body.iter().any(|b| b.is_ascii_control() && *b != b'\t' && *b != 0x1b);
    if !needs {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = Vec::with_capacity(line.len() + 16);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            // Tab and ESC are left to the formatter (alignment, colours on a terminal).
            b'\t' | 0x1b => out.push(b),
            b if b.is_ascii_control() => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            b => out.push(b),
        }
    }
    if body.len() < line.len() {
        out.push(b'\n');
    }
    std::borrow::Cow::Owned(out)
}

/// At most `burst` lines per `window`; the first line after a suppression says how many
/// were dropped.
#[derive(Debug)]
pub struct Throttle {
    window: Duration,
    burst: u32,
    start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl Throttle {
    /// One line per `window`.
    pub fn new(window: Duration) -> Self {
        Self::with_burst(window, 1)
    }

    /// `burst` lines per `window`.
    pub fn with_burst(window: Duration, burst: u32) -> Self {
        Self {
            window,
            burst: burst.max(1),
            start: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last admitted line)` when a line may be written now.
    pub fn admit(&mut self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    /// [`Throttle::admit`] at `now`.
    pub fn admit_at(&mut self, now: Instant) -> Option<u64> {
        if !matches!(self.start, Some(s) if now.duration_since(s) < self.window) {
            self.start = Some(now);
            self.used = 0;
        }
        if self.used < self.burst {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// Process-wide throttle of refused-request lines: 20 per second.
pub fn refused_requests() -> &'static Mutex<Throttle> {
    static T: std::sync::OnceLock<Mutex<Throttle>> = std::sync::OnceLock::new();
    T.get_or_init(|| Mutex::new(Throttle::with_burst(Duration::from_secs(1), 20)))
}

/// Admits one refused-request line (see [`refused_requests`]).
pub fn admit_refused() -> Option<u64> {
    refused_requests()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .admit()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn forged_lines_are_escaped() {
        let code = "acme\n2026-01-01T00:00:00Z  INFO keyfloat: admin logged in\u{7}";
        let e = escape(code);
        assert!(!e.contains('\n') && !e.contains('\u{7}'), "{e}");
        assert!(e.contains("acme\\n2026"));
        assert_eq!(escape("plain"), "plain");
        let line = format!("WARN refused product={code}\n");
        let out = escape_line(line.as_bytes());
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.ends_with('\n') && text.contains("\\x07"));
    }

    #[test]
    fn a_flood_is_throttled_with_a_count() {
        let mut t = Throttle::with_burst(Duration::from_secs(1), 3);
        let now = Instant::now();
        let admitted = (0..88_000).filter(|_| t.admit_at(now).is_some()).count();
        assert_eq!(admitted, 3);
        assert_eq!(t.admit_at(now + Duration::from_secs(1)), Some(87_997));
    }
}
