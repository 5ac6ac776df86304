//! The hot-plug monitor: the only component that touches devices.
//!
//! [`Monitor`] is a pure state machine — an [`Input`] and the current time in, a [`Step`]
//! out (a new [`Snapshot`] to publish and the validations to start) — so the simulator can
//! drive it deterministically with a virtual clock. [`Driver`] adds the I/O: it publishes to
//! the [`HardwareIdCell`] and runs validations (open the key, ask the [`KeyValidator`]) when
//! asked. [`spawn`] runs the state machine on a thread that never touches a device: watcher
//! threads feed it hot-plug events and one worker thread per key runs that key's
//! validations, so a key that takes seconds to answer (or never does) delays nothing but
//! itself. Each validation carries a ticket; an answer about a key that has since been
//! detached or replaced is discarded, and one that misses `validate_timeout` shows the key
//! as not answering (out of force) while its worker keeps the attempt.
//!
//! **Grace period** (`MonitorConfig::grace`, off by default): when the key in force leaves
//! or becomes unreadable and no other valid key takes over, its serial stays in force until
//! the period ends; the same key proved again ends it as valid, another valid key, a failed
//! proof of that serial or the deadline end it at once. Only a key that was in force opens a
//! grace period, and a grace period never extends itself.
//!
//! **Which key is in force** when several are valid: the key in force stays in force while
//! it remains valid; when none is in force, the valid key with the smallest [`KeyId`]
//! (`hid:…` < `pcsc:…` < `sim:…`, then by path) is chosen. The choice depends only on the
//! order of events, never on timing or hashing.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cell::{BackendError, Grace, GraceEnd, KeyStatus, KeyView, Snapshot};
use crate::error::{Error, ErrorKind};
use crate::key::{BackendKind, Firmware, HardwareId, HotplugEvent, KeyId, KeyInfo, Serial};
use crate::validate::Validation;

/// Timing knobs of the monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorConfig {
    /// A valid (or invalid) key is re-proved this often.
    pub revalidate_every: Duration,
    /// First retry delay after a failed validation (busy, I/O error); doubles per failure.
    pub retry_initial: Duration,
    /// Upper bound of the retry delay.
    pub retry_max: Duration,
    /// Upper bound of the retry delay while a key is busy or its service is down: pcscd
    /// sends no event when an exclusive holder lets go, so only a short period finds out fast.
    pub retry_busy_max: Duration,
    /// A validation not answered within this is shown as timed out and the key leaves
    /// force; its worker keeps the attempt and the next one waits for it (no new thread).
    pub validate_timeout: Duration,
    /// Grace period when the key in force leaves or becomes unreadable (0 = none).
    pub grace: Duration,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl MonitorConfig {
    /// The defaults, usable in `const` items (`..MonitorConfig::DEFAULT`).
    pub const DEFAULT: Self = Self {
        revalidate_every: Duration::from_secs(60),
        retry_initial: Duration::from_millis(250),
        retry_max: Duration::from_secs(5),
        retry_busy_max: Duration::from_millis(250),
        validate_timeout: Duration::from_secs(6),
        grace: Duration::ZERO,
    };

    fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.retry_initial.saturating_mul(factor).min(self.retry_max)
    }

    fn retry_after(&self, failures: u32, kind: ErrorKind) -> Duration {
        let delay = self.backoff(failures);
        match kind {
            ErrorKind::Busy | ErrorKind::ServiceUnavailable => delay.min(self.retry_busy_max),
            _ => delay,
        }
    }
}

/// Something that happened, fed to [`Monitor::apply`].
#[derive(Debug, Clone)]
pub enum Input {
    /// A backend reported a hot-plug event.
    Hotplug(HotplugEvent),
    /// A requested validation finished.
    Validated {
        /// Which key.
        id: KeyId,
        /// The request's ticket ([`ValidationRequest::ticket`]); an answer to an older
        /// request (the key was detached or replaced meanwhile) is discarded.
        ticket: u64,
        /// Its outcome.
        validation: Validation,
    },
    /// A backend could not watch or enumerate (e.g. pcscd unreachable); cleared by its
    /// next `Attached` event.
    BackendFailed {
        /// Which backend.
        backend: BackendKind,
        /// What failed.
        error: Error,
    },
    /// Re-prove every attached key now (after an I/O error was reported by a user of a key,
    /// or on operator request).
    RevalidateAll,
    /// Time passed: run the re-validations that are due.
    Tick,
}

/// One validation the monitor wants run (answer with [`Input::Validated`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationRequest {
    /// Which key.
    pub id: KeyId,
    /// Identifies this attempt.
    pub ticket: u64,
}

/// What the monitor wants done after an input.
#[derive(Debug, Default)]
pub struct Step {
    /// A new picture to publish, when it changed.
    pub publish: Option<Snapshot>,
    /// Validations to start now.
    pub validate: Vec<ValidationRequest>,
}

/// A validation in flight.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    ticket: u64,
    since: Duration,
    timed_out: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    info: KeyInfo,
    serial: Option<Serial>,
    firmware: Option<Firmware>,
    status: KeyStatus,
    due: Option<Duration>,
    failures: u32,
    attempt: Option<Attempt>,
}

#[derive(Debug, Clone)]
struct GraceState {
    view: Grace,
    until: Duration,
}

/// The monitor's state machine. See the module docs.
#[derive(Debug)]
pub struct Monitor {
    config: MonitorConfig,
    machine_id: HardwareId,
    keys: BTreeMap<KeyId, Entry>,
    next_ticket: u64,
    in_force: Option<KeyId>,
    /// The key in force after the previous input, with its serial (it may be gone now).
    was_in_force: Option<(KeyId, Serial)>,
    grace: Option<GraceState>,
    grace_ended: Option<GraceEnd>,
    /// A key reporting the grace serial failed its proof during this input.
    grace_failed: bool,
    backend_errors: BTreeMap<Option<BackendKind>, Error>,
    published: Snapshot,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Monitor {
    /// A monitor with no key attached.
    pub fn new(machine_id: HardwareId, config: MonitorConfig) -> Self {
        let published = Snapshot::no_key(machine_id.clone());
        Self {
            config,
            machine_id,
            keys: BTreeMap::new(),
            next_ticket: 0,
            in_force: None,
            was_in_force: None,
            grace: None,
            grace_ended: None,
            grace_failed: false,
            backend_errors: BTreeMap::new(),
            published,
        }
    }

    /// Applies one input at time `now` (any monotonic clock, e.g. time since start).
    pub fn apply(&mut self, now: Duration, input: Input) -> Step {
        match input {
            Input::Hotplug(HotplugEvent::Attached(info)) => {
                self.backend_errors.remove(&Some(info.backend));
                self.backend_errors.remove(&None);
                let id = info.id.clone();
                let same = self.keys.get(&id).is_some_and(|e| e.info == info);
                if !same {
                    if self.in_force.as_ref() == Some(&id) {
                        self.in_force = None;
                    }
                    // A new entry: an answer to the old entry's attempt no longer matches.
                    let entry = Entry {
                        info,
                        serial: None,
                        firmware: None,
                        status: KeyStatus::Validating,
                        due: Some(now),
                        failures: 0,
                        attempt: None,
                    };
                    self.keys.insert(id, entry);
                }
            }
            Input::Hotplug(HotplugEvent::Detached(id)) => {
                self.keys.remove(&id);
                if self.in_force.as_ref() == Some(&id) {
                    self.in_force = None;
                }
            }
            Input::Hotplug(HotplugEvent::Error(e)) => {
                // A source's own error names no backend (`spawn` sends `BackendFailed` instead).
                self.backend_errors.insert(None, e);
            }
            Input::BackendFailed { backend, error } => {
                self.backend_errors.insert(Some(backend), error);
            }
            Input::Validated { id, ticket, validation } => self.validated(now, &id, ticket, validation),
            Input::RevalidateAll => {
                for e in self.keys.values_mut() {
                    e.due = Some(now);
                }
            }
            Input::Tick => {}
        }
        self.expire_attempts(now);
        self.choose_in_force();
        self.update_grace(now);
        let validate = self.due(now);
        let snapshot = self.snapshot_now();
        let publish = if snapshot != self.published {
            self.published = snapshot.clone();
            Some(snapshot)
        } else {
            None
        };
        Step { publish, validate }
    }

    fn validated(&mut self, now: Duration, id: &KeyId, ticket: u64, validation: Validation) {
        let Some(entry) = self.keys.get_mut(id) else { return };
        if entry.attempt.map(|a| a.ticket) != Some(ticket) {
            return; // detached or replaced meanwhile: the answer is about a key that is gone
        }
        entry.attempt = None;
        match validation {
            Validation::Valid {
                serial,
                firmware,
                proof,
            } => {
                entry.serial = Some(serial);
                entry.firmware = firmware.or(entry.firmware);
                entry.status = KeyStatus::Valid { proof };
                entry.failures = 0;
                entry.due = Some(now + self.config.revalidate_every);
            }
            Validation::Invalid { serial, reason } => {
                let failed = match (&self.grace, &serial) {
                    (Some(g), Some(s)) => g.view.serial == *s,
                    (Some(g), None) => g.view.key == *id,
                    (None, _) => false,
                };
                self.grace_failed |= failed;
                entry.serial = serial;
                entry.status = KeyStatus::Invalid { reason };
                entry.failures = 0;
                entry.due = Some(now + self.config.revalidate_every);
            }
            Validation::Failed(e) => {
                entry.failures += 1;
                entry.status = KeyStatus::Error {
                    kind: e.kind(),
                    code: e.code(),
                    message: e.message().to_string(),
                    holders: e.holders().to_vec(),
                };
                entry.due = Some(now + self.config.retry_after(entry.failures, e.kind()));
            }
        }
        // A key is in force only while its latest judgement is "valid".
        if self.in_force.as_ref() == Some(id) && !matches!(entry.status, KeyStatus::Valid { .. }) {
            self.in_force = None;
        }
    }

    /// A validation past its deadline: the key is shown as not answering and leaves force.
    /// The attempt stays outstanding (its worker is still blocked); no second one starts.
    fn expire_attempts(&mut self, now: Duration) {
        let limit = self.config.validate_timeout;
        for (id, e) in &mut self.keys {
            let Some(a) = e.attempt.as_mut() else { continue };
            if a.timed_out || now < a.since + limit {
                continue;
            }
            a.timed_out = true;
            e.failures += 1;
            e.status = KeyStatus::Error {
                kind: ErrorKind::Timeout,
                code: ErrorKind::Timeout.code(),
                message: format!(
                    "no answer within {} ms (the key is not answering; retried once the pending attempt returns)",
                    limit.as_millis()
                ),
                holders: Vec::new(),
            };
            if self.in_force.as_ref() == Some(id) {
                self.in_force = None;
            }
        }
    }

    fn choose_in_force(&mut self) {
        if let Some(id) = &self.in_force {
            if self
                .keys
                .get(id)
                .is_some_and(|e| matches!(e.status, KeyStatus::Valid { .. }))
            {
                return;
            }
        }
        self.in_force = self
            .keys
            .iter()
            .find(|(_, e)| matches!(e.status, KeyStatus::Valid { .. }) && e.serial.is_some())
            .map(|(id, _)| id.clone());
    }

    /// Starts, keeps or ends the grace period after the key in force changed.
    fn update_grace(&mut self, now: Duration) {
        let current = self
            .in_force
            .as_ref()
            .and_then(|id| Some((id.clone(), self.keys.get(id)?.serial.clone()?)));
        let failed = std::mem::take(&mut self.grace_failed);
        if let Some(g) = &self.grace {
            let end = match &current {
                Some((_, serial)) if *serial == g.view.serial => Some(GraceEnd::Returned),
                Some(_) => Some(GraceEnd::Replaced),
                None if failed => Some(GraceEnd::FailedProof),
                None if now >= g.until => Some(GraceEnd::Expired),
                None => None,
            };
            if let Some(end) = end {
                self.grace = None;
                self.grace_ended = Some(end);
            }
        } else if current.is_none() && !self.config.grace.is_zero() {
            // Only a key that was valid and in force opens a grace period.
            if let Some((key, serial)) = self.was_in_force.take() {
                let period_ms = u64::try_from(self.config.grace.as_millis()).unwrap_or(u64::MAX);
                let started_unix_ms = unix_ms();
                self.grace = Some(GraceState {
                    view: Grace {
                        serial,
                        key,
                        period_ms,
                        started_unix_ms,
                        deadline_unix_ms: started_unix_ms.saturating_add(period_ms),
                    },
                    until: now + self.config.grace,
                });
                self.grace_ended = None;
            }
        }
        self.was_in_force = current;
    }

    fn due(&mut self, now: Duration) -> Vec<ValidationRequest> {
        let mut out = Vec::new();
        for (id, e) in &mut self.keys {
            if e.attempt.is_none() && e.due.is_some_and(|d| d <= now) {
                self.next_ticket += 1;
                let ticket = self.next_ticket;
                e.attempt = Some(Attempt {
                    ticket,
                    since: now,
                    timed_out: false,
                });
                out.push(ValidationRequest { id: id.clone(), ticket });
            }
        }
        out
    }

    /// When the monitor next needs a [`Input::Tick`]: a re-validation due, a validation's
    /// deadline, or the end of the grace period.
    pub fn next_deadline(&self) -> Option<Duration> {
        let keys = self.keys.values().filter_map(|e| match e.attempt {
            None => e.due,
            Some(a) if !a.timed_out => Some(a.since + self.config.validate_timeout),
            Some(_) => None,
        });
        keys.chain(self.grace.as_ref().map(|g| g.until)).min()
    }

    /// Whether a validation of `id` is in flight.
    pub fn is_validating(&self, id: &KeyId) -> bool {
        self.keys.get(id).is_some_and(|e| e.attempt.is_some())
    }

    /// Whether `id` is attached.
    pub fn is_attached(&self, id: &KeyId) -> bool {
        self.keys.contains_key(id)
    }

    fn view(e: &Entry) -> KeyView {
        KeyView {
            info: e.info.clone(),
            serial: e.serial.clone(),
            firmware: e.firmware,
            status: e.status.clone(),
        }
    }

    fn snapshot_now(&self) -> Snapshot {
        let keys: Vec<KeyView> = self.keys.values().map(Self::view).collect();
        let in_force = self.in_force.as_ref().and_then(|id| self.keys.get(id)).map(Self::view);
        let backend_error = self.backend_errors.iter().next().map(|(b, e)| BackendError {
            backend: *b,
            code: e.code(),
            message: e.to_string(),
        });
        let mut s = Snapshot::no_key(self.machine_id.clone());
        s.hardware_id = in_force
            .as_ref()
            .and_then(|k| k.serial.as_ref())
            .or(self.grace.as_ref().map(|g| &g.view.serial))
            .map_or_else(|| self.machine_id.clone(), HardwareId::from);
        s.in_force = in_force;
        s.keys = keys;
        s.backend_error = backend_error;
        s.grace = self.grace.as_ref().map(|g| g.view.clone());
        s.grace_ended = self.grace_ended;
        s
    }

    /// The picture as of the last input.
    pub fn snapshot(&self) -> &Snapshot {
        &self.published
    }
}

mod driver;
mod thread;

pub use driver::Driver;
pub use thread::{spawn, MonitorHandle};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::ProofCapability;
    use crate::validate::{InvalidReason, ProofStatus};

    const GRACE: MonitorConfig = MonitorConfig {
        grace: Duration::from_secs(2),
        ..MonitorConfig::DEFAULT
    };

    fn info(path: &str) -> KeyInfo {
        KeyInfo {
            id: KeyId::new(BackendKind::Sim, path),
            backend: BackendKind::Sim,
            path: path.into(),
            serial: None,
            model: "sim".into(),
            firmware: None,
            capability: ProofCapability::Signature,
        }
    }

    fn valid(serial: &str) -> Validation {
        Validation::Valid {
            serial: Serial::new(serial),
            firmware: None,
            proof: ProofStatus::Verified,
        }
    }

    /// Attaches `path` and answers its validation with `v`.
    fn plug(m: &mut Monitor, now: Duration, path: &str, v: Validation) -> Step {
        let step = m.apply(now, Input::Hotplug(HotplugEvent::Attached(info(path))));
        let [req] = step.validate.as_slice() else {
            panic!("one request expected")
        };
        m.apply(
            now,
            Input::Validated {
                id: req.id.clone(),
                ticket: req.ticket,
                validation: v,
            },
        )
    }

    fn unplug(m: &mut Monitor, now: Duration, path: &str) {
        m.apply(
            now,
            Input::Hotplug(HotplugEvent::Detached(KeyId::new(BackendKind::Sim, path))),
        );
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn grace_keeps_the_serial_until_it_expires_and_never_extends_itself() {
        let mut m = Monitor::new(HardwareId::new("machine"), GRACE);
        plug(&mut m, ms(0), "a", valid("111"));
        unplug(&mut m, ms(10), "a");
        let s = m.snapshot();
        assert_eq!(s.state(), crate::cell::KeyState::Grace);
        assert_eq!(s.hardware_id.as_str(), "111");
        assert_eq!(m.next_deadline(), Some(ms(2010)));
        m.apply(ms(2009), Input::Tick);
        assert!(m.snapshot().grace.is_some());
        m.apply(ms(2010), Input::Tick);
        let s = m.snapshot();
        assert_eq!((s.grace.is_none(), s.grace_ended), (true, Some(GraceEnd::Expired)));
        assert_eq!(s.hardware_id.as_str(), "machine");
        m.apply(ms(9000), Input::Tick);
        assert!(m.snapshot().grace.is_none());
    }

    #[test]
    fn grace_ends_on_return_swap_or_failed_proof() {
        let mut m = Monitor::new(HardwareId::new("machine"), GRACE);
        plug(&mut m, ms(0), "a", valid("111"));
        unplug(&mut m, ms(10), "a");
        plug(&mut m, ms(300), "a", valid("111"));
        assert_eq!(m.snapshot().grace_ended, Some(GraceEnd::Returned));
        assert!(m.snapshot().in_force.is_some());

        unplug(&mut m, ms(400), "a");
        plug(&mut m, ms(500), "b", valid("222"));
        let s = m.snapshot();
        assert_eq!(
            (s.grace_ended, s.hardware_id.as_str()),
            (Some(GraceEnd::Replaced), "222")
        );

        unplug(&mut m, ms(600), "b");
        assert!(m.snapshot().grace.is_some());
        let bad = Validation::Invalid {
            serial: Some(Serial::new("222")),
            reason: InvalidReason::BadSignature,
        };
        plug(&mut m, ms(700), "b", bad);
        let s = m.snapshot();
        assert_eq!(
            (s.grace_ended, s.hardware_id.as_str()),
            (Some(GraceEnd::FailedProof), "machine")
        );
    }

    #[test]
    fn grace_never_starts_for_a_key_that_was_never_valid() {
        let mut m = Monitor::new(HardwareId::new("machine"), GRACE);
        let bad = Validation::Invalid {
            serial: Some(Serial::new("111")),
            reason: InvalidReason::WrongVendor,
        };
        plug(&mut m, ms(0), "a", bad);
        unplug(&mut m, ms(10), "a");
        assert!(m.snapshot().grace.is_none());
        let step = m.apply(ms(20), Input::Hotplug(HotplugEvent::Attached(info("a"))));
        assert_eq!(step.validate.len(), 1);
        unplug(&mut m, ms(30), "a");
        assert!(m.snapshot().grace.is_none());
    }

    #[test]
    fn an_unreadable_key_in_force_starts_the_grace_and_a_hung_one_times_out_into_it() {
        let config = MonitorConfig {
            validate_timeout: ms(500),
            revalidate_every: ms(1000),
            ..GRACE
        };
        let mut m = Monitor::new(HardwareId::new("machine"), config);
        plug(&mut m, ms(0), "a", valid("111"));
        // Re-validation due at 1000 ms; its answer never comes.
        let step = m.apply(ms(1000), Input::Tick);
        assert_eq!(step.validate.len(), 1);
        assert!(m.snapshot().in_force.is_some());
        let step = m.apply(ms(1500), Input::Tick);
        assert!(step.validate.is_empty(), "no second attempt while the first hangs");
        let s = m.snapshot();
        assert!(s.in_force.is_none());
        assert_eq!(s.state(), crate::cell::KeyState::Grace);
        assert!(matches!(
            &s.keys[0].status,
            KeyStatus::Error {
                kind: ErrorKind::Timeout,
                ..
            }
        ));
    }
}
