//! The trace a run produces: one line per step (and per flap half-cycle), comparable across
//! runs and machines (the machine's own ID is shown as `machine`).

use std::fmt;
use std::time::Duration;

use keyfloat_hal::Snapshot;
use serde::Serialize;

use super::expect::reason;

/// The HTTP part of a trace line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpOutcome {
    /// Status code.
    pub status: u16,
    /// Error `code`, if the body was an error object.
    pub code: Option<String>,
}

/// One line of a trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceLine {
    /// Virtual (or elapsed) time in microseconds.
    pub at_us: u64,
    /// Step index in the file (0-based).
    pub step: usize,
    /// What happened, e.g. `plug alpha`.
    pub action: String,
    /// Hardware ID in force: a key name, `machine`, or the raw ID.
    pub hardware_id: String,
    /// Key state (`valid`, `absent`...).
    pub key_state: String,
    /// Reason of the primary key, if not valid.
    pub reason: Option<String>,
    /// Cell generation.
    pub generation: u64,
    /// HTTP result, if the step sent a request.
    pub http: Option<HttpOutcome>,
}

impl TraceLine {
    /// The line for `action` at `at` (step `step`, `hardware_id` the trace label of the ID
    /// in force), with the key state, reason and generation of the cell snapshot `snap`.
    pub(crate) fn of(
        snap: &Snapshot,
        at: Duration,
        step: usize,
        action: String,
        hardware_id: String,
        http: Option<HttpOutcome>,
    ) -> Self {
        Self {
            at_us: u64::try_from(at.as_micros()).unwrap_or(u64::MAX),
            step,
            action,
            hardware_id,
            key_state: snap.state().as_str().into(),
            reason: reason(snap),
            generation: snap.generation,
            http,
        }
    }

    /// Time as a `Duration`.
    pub fn at(&self) -> Duration {
        Duration::from_micros(self.at_us)
    }
}

impl fmt::Display for TraceLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>10.3}ms #{:<3} {:<28} hw={:<10} state={:<10} gen={:<4}",
            self.at_us as f64 / 1000.0,
            self.step,
            self.action,
            self.hardware_id,
            self.key_state,
            self.generation
        )?;
        if let Some(r) = &self.reason {
            write!(f, " reason={r}")?;
        }
        if let Some(h) = &self.http {
            write!(f, " http={}", h.status)?;
            if let Some(c) = &h.code {
                write!(f, " code={c}")?;
            }
        }
        Ok(())
    }
}
