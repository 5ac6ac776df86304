//! One error type for every backend: a [`ErrorKind`] that callers match on, a stable
//! [`ErrorKind::code`] for logs and HTTP bodies, and the backend's own error as a source.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, independent of the backend that noticed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// No such key or reader is connected.
    NotPresent,
    /// Another process holds the key (for PC/SC: an exclusive connection or a long
    /// transaction). Never reported as [`ErrorKind::NotPresent`].
    Busy,
    /// The key went away in the middle of an operation.
    Disconnected,
    /// The key answered, but not in a way the protocol allows (bad status word, CRC, framing).
    Protocol,
    /// The key or the system service did not answer before the deadline.
    Timeout,
    /// The operating system refused access to the device or service.
    PermissionDenied,
    /// The key or backend cannot do what was asked (old firmware, feature not compiled in).
    Unsupported,
    /// The system service that owns the devices (pcscd) is not reachable.
    ServiceUnavailable,
    /// Reading a local file or device failed.
    Io,
    /// Input that does not parse: a certificate, a key file, a configuration value.
    InvalidData,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// Stable code for logs, metrics and HTTP bodies; never renamed.
    pub const fn code(self) -> &'static str {
        match self {
            Self::NotPresent => "KEY_NOT_PRESENT",
            Self::Busy => "KEY_BUSY",
            Self::Disconnected => "KEY_DISCONNECTED",
            Self::Protocol => "KEY_PROTOCOL_ERROR",
            Self::Timeout => "KEY_TIMEOUT",
            Self::PermissionDenied => "KEY_PERMISSION_DENIED",
            Self::Unsupported => "KEY_UNSUPPORTED",
            Self::ServiceUnavailable => "KEY_SERVICE_UNAVAILABLE",
            Self::Io => "KEY_IO_ERROR",
            Self::InvalidData => "KEY_INVALID_DATA",
            Self::Other => "KEY_ERROR",
        }
    }

    /// Errors that may go away by themselves: report them and retry with backoff,
    /// never spin on them.
    pub const fn is_transient(self) -> bool {
        matches!(
            self,
            Self::Busy | Self::Timeout | Self::Disconnected | Self::ServiceUnavailable | Self::Io
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A process that holds, or may hold, a key (found by scanning `/proc`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// Command name (`/proc/PID/comm`).
    pub command: String,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (pid {})", self.command, self.pid)
    }
}

/// The crate's error: a kind, a message, optional holder processes and the backend's source.
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    holders: Vec<Holder>,
    status_word: Option<u16>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// An error of `kind` with a human-readable message.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            message: message.into(),
            holders: Vec::new(),
            status_word: None,
            source: None,
        }
    }

    /// Like [`Error::new`], keeping the backend's own error as the source.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<Cow<'static, str>>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            source: Some(Arc::new(source)),
            ..Self::new(kind, message)
        }
    }

    /// Names the processes that hold (or may hold) the key; used with [`ErrorKind::Busy`].
    pub fn with_holders(mut self, holders: Vec<Holder>) -> Self {
        self.holders = holders;
        self
    }

    /// Records the status word a smart card answered (ISO 7816 `SW1SW2`), so callers can
    /// decide on it instead of on the message.
    pub fn with_status_word(mut self, sw: u16) -> Self {
        self.status_word = Some(sw);
        self
    }

    /// The card's status word, when the error is a card's refusal.
    pub fn status_word(&self) -> Option<u16> {
        self.status_word
    }

    /// The category callers match on.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Stable code, same as `self.kind().code()`.
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    /// The message without the code.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Processes named as (candidate) holders of the key.
    pub fn holders(&self) -> &[Holder] {
        &self.holders
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if !self.holders.is_empty() {
            d.field("holders", &self.holders);
        }
        if let Some(sw) = self.status_word {
            d.field("status_word", &format_args!("{sw:04X}"));
        }
        if let Some(source) = &self.source {
            d.field("source", &source.to_string());
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.message)?;
        if !self.holders.is_empty() {
            f.write_str(" (held by ")?;
            for (i, h) in self.holders.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{h}")?;
            }
            f.write_str(")")?;
        }
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotPresent,
            std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => ErrorKind::Timeout,
            _ => ErrorKind::Io,
        };
        Error::with_source(kind, "I/O error", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_unique() {
        let kinds = [
            ErrorKind::NotPresent,
            ErrorKind::Busy,
            ErrorKind::Disconnected,
            ErrorKind::Protocol,
            ErrorKind::Timeout,
            ErrorKind::PermissionDenied,
            ErrorKind::Unsupported,
            ErrorKind::ServiceUnavailable,
            ErrorKind::Io,
            ErrorKind::InvalidData,
            ErrorKind::Other,
        ];
        let codes: std::collections::HashSet<_> = kinds.iter().map(|k| k.code()).collect();
        assert_eq!(codes.len(), kinds.len());
        assert_eq!(ErrorKind::Busy.code(), "KEY_BUSY");
        assert_eq!(ErrorKind::NotPresent.code(), "KEY_NOT_PRESENT");
    }

    #[test]
    fn busy_names_its_holders() {
        let e = Error::new(ErrorKind::Busy, "card held exclusively").with_holders(vec![Holder {
            pid: 42,
            command: "scdaemon".into(),
        }]);
        assert_eq!(
            e.to_string(),
            "KEY_BUSY: card held exclusively (held by scdaemon (pid 42))"
        );
        assert!(e.kind().is_transient());
    }
}
