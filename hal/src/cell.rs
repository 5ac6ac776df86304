//! The hardware-ID cell: written by the monitor alone, read on every request.
//!
//! Two publications, both lock-free for readers:
//! - a packed `AtomicU64` *check word* `generation << 32 | key token` that answers
//!   "is a valid key in force, and is it this one?" with a single `Acquire` load;
//! - the full [`Snapshot`] (hardware ID, keys, reasons) behind an [`ArcSwap`], for health
//!   pages and activation records.
//!
//! The writer stores the snapshot first and the word second, so a reader that loads the
//! word and then the snapshot never sees a snapshot older than the word.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use serde::Serialize;

use crate::error::{ErrorKind, Holder};
use crate::key::{BackendKind, Firmware, HardwareId, KeyId, KeyInfo, Serial};
use crate::validate::{InvalidReason, ProofStatus};

/// A small number standing for one key serial inside this process, so the hot path
/// compares integers instead of strings. Obtained from [`CellReader::token`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyToken(NonZeroU32);

impl KeyToken {
    /// The raw value (never 0).
    pub fn get(self) -> u32 {
        self.0.get()
    }
}

/// What the monitor knows about one attached key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum KeyStatus {
    /// Attached, not judged yet.
    Validating,
    /// Validated: may be (or is) in force.
    Valid {
        /// How it proved itself.
        proof: ProofStatus,
    },
    /// Answered but not acceptable.
    Invalid {
        /// Why.
        reason: InvalidReason,
    },
    /// Could not be asked; the monitor retries with backoff.
    Error {
        /// Error kind, e.g. busy.
        kind: ErrorKind,
        /// Stable error code, e.g. `KEY_BUSY`.
        code: &'static str,
        /// Human-readable message.
        message: String,
        /// Processes that hold or may hold the key.
        holders: Vec<Holder>,
    },
}

/// One attached key as the cell shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyView {
    /// Enumeration identity.
    pub info: KeyInfo,
    /// Serial confirmed by validation (or reported by a key that failed it).
    pub serial: Option<Serial>,
    /// Firmware as read during validation.
    pub firmware: Option<Firmware>,
    /// Current judgement.
    pub status: KeyStatus,
}

/// Overall key state, for health endpoints and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// A validated key is in force.
    Valid,
    /// No key attached.
    Absent,
    /// Keys attached, still being validated.
    Validating,
    /// Keys attached, none valid (see the key's reason).
    Invalid,
    /// Keys attached, none could be asked (busy, I/O error...).
    Error,
    /// The key in force left or became unreadable; its serial stays in force until the
    /// grace period ends (see [`Grace`]).
    Grace,
}

impl KeyState {
    /// Stable lower-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Absent => "absent",
            Self::Validating => "validating",
            Self::Invalid => "invalid",
            Self::Error => "error",
            Self::Grace => "grace",
        }
    }
}

/// An immutable picture of the key situation at one generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// Incremented by every publication.
    pub generation: u64,
    /// The hardware ID in force: the serial of [`Snapshot::in_force`], else `machine_id`.
    pub hardware_id: HardwareId,
    /// The machine's own hardware ID.
    pub machine_id: HardwareId,
    /// The validated key in force, if any.
    pub in_force: Option<KeyView>,
    /// Every attached key, in [`KeyId`] order.
    pub keys: Vec<KeyView>,
    /// The backend failure in progress (e.g. pcscd unreachable), if any.
    pub backend_error: Option<BackendError>,
    /// The grace period in progress, if any (never together with `in_force`).
    pub grace: Option<Grace>,
    /// How the latest grace period ended (kept until the next one starts).
    pub grace_ended: Option<GraceEnd>,
}

/// A grace period: the key in force disappeared or became unreadable, and its serial stays
/// the hardware ID in force until `deadline_unix_ms` unless something ends it earlier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grace {
    /// The serial still in force.
    pub serial: Serial,
    /// The key that left.
    pub key: KeyId,
    /// Length of the period in milliseconds.
    pub period_ms: u64,
    /// Wall-clock start (ms since the Unix epoch).
    pub started_unix_ms: u64,
    /// Wall-clock end (ms since the Unix epoch).
    pub deadline_unix_ms: u64,
}

impl Grace {
    /// Seconds left at wall-clock time `now_unix_ms` (rounded up, 0 once over).
    pub fn seconds_left(&self, now_unix_ms: u64) -> u64 {
        self.deadline_unix_ms.saturating_sub(now_unix_ms).div_ceil(1000)
    }
}

/// How a grace period ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GraceEnd {
    /// The same key (same serial, proof verified again) came back.
    Returned,
    /// Another valid key was put in force.
    Replaced,
    /// A key with the grace serial failed its proof.
    FailedProof,
    /// The period ran out.
    Expired,
}

impl GraceEnd {
    /// Stable lower-case name (audit details, logs).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Returned => "returned",
            Self::Replaced => "replaced",
            Self::FailedProof => "failed_proof",
            Self::Expired => "expired",
        }
    }
}

/// A backend-level failure shown in the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendError {
    /// Which backend, when the failure came with one.
    pub backend: Option<BackendKind>,
    /// Stable error code.
    pub code: &'static str,
    /// Message.
    pub message: String,
}

impl Snapshot {
    /// The picture with no key attached.
    pub fn no_key(machine_id: HardwareId) -> Self {
        Self {
            generation: 0,
            hardware_id: machine_id.clone(),
            machine_id,
            in_force: None,
            keys: Vec::new(),
            backend_error: None,
            grace: None,
            grace_ended: None,
        }
    }

    /// Summary state.
    pub fn state(&self) -> KeyState {
        if self.in_force.is_some() {
            return KeyState::Valid;
        }
        if self.grace.is_some() {
            return KeyState::Grace;
        }
        if self.keys.is_empty() {
            return KeyState::Absent;
        }
        if self.keys.iter().any(|k| matches!(k.status, KeyStatus::Invalid { .. })) {
            KeyState::Invalid
        } else if self.keys.iter().any(|k| matches!(k.status, KeyStatus::Error { .. })) {
            KeyState::Error
        } else {
            KeyState::Validating
        }
    }

    /// The key the snapshot is mostly about: the one in force, else the first attached.
    pub fn primary_key(&self) -> Option<&KeyView> {
        self.in_force.as_ref().or_else(|| self.keys.first())
    }

    /// Looks a key up by id.
    pub fn key(&self, id: &KeyId) -> Option<&KeyView> {
        self.keys.iter().find(|k| &k.info.id == id)
    }
}

/// The result of the hot-path check: one load of the check word, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyCheck(u64);

impl KeyCheck {
    /// The token of the valid key in force, if any.
    #[inline]
    pub fn valid_key(self) -> Option<KeyToken> {
        NonZeroU32::new(self.0 as u32).map(KeyToken)
    }
    /// Whether `bound` is the valid key in force.
    #[inline]
    pub fn is(self, bound: KeyToken) -> bool {
        self.0 as u32 == bound.get()
    }
    /// Low 32 bits of the snapshot generation this check saw.
    #[inline]
    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

#[derive(Debug)]
struct Shared {
    word: CheckWord,
    snapshot: ArcSwap<Snapshot>,
    tokens: Mutex<HashMap<Serial, KeyToken>>,
}

/// The check word on a cache line of its own: a publication writes the snapshot pointer
/// (and, on first sight of a serial, the token map) without invalidating the readers' copy
/// of the word; only the word's own store does.
#[derive(Debug)]
#[repr(align(128))]
struct CheckWord(AtomicU64);

impl Shared {
    fn token(&self, serial: &Serial) -> KeyToken {
        // Poisoning cannot leave the map inconsistent (single insert), so recover from it.
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = tokens.get(serial) {
            return *t;
        }
        let next = u32::try_from(tokens.len() + 1).unwrap_or(u32::MAX);
        let token = KeyToken(NonZeroU32::new(next).unwrap_or(NonZeroU32::MIN));
        tokens.insert(serial.clone(), token);
        token
    }
}

/// The writing side of the cell. There is exactly one per cell (not `Clone`): the monitor.
#[derive(Debug)]
pub struct HardwareIdCell {
    shared: Arc<Shared>,
    generation: u64,
}

/// The reading side: cheap to clone, never blocks, never allocates, takes no lock.
#[derive(Debug, Clone)]
pub struct CellReader {
    shared: Arc<Shared>,
}

impl HardwareIdCell {
    /// A cell that starts with "no valid key": the hardware ID is `machine_id` until the
    /// monitor has validated a key. A restart never trusts a key it has not re-proved.
    pub fn new(machine_id: HardwareId) -> Self {
        let snapshot = Snapshot::no_key(machine_id);
        let shared = Arc::new(Shared {
            word: CheckWord(AtomicU64::new(0)),
            snapshot: ArcSwap::from_pointee(snapshot),
            tokens: Mutex::new(HashMap::new()),
        });
        Self { shared, generation: 0 }
    }

    /// A reader for request handlers.
    pub fn reader(&self) -> CellReader {
        CellReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Publishes a new picture. `hardware_id` is derived here from `in_force` so the two
    /// can never disagree; `generation` is assigned here too.
    pub fn publish(&mut self, mut snapshot: Snapshot) -> u64 {
        self.generation += 1;
        snapshot.generation = self.generation;
        if snapshot.in_force.as_ref().is_some_and(|k| k.serial.is_none()) {
            snapshot.in_force = None;
        }
        if snapshot.in_force.is_some() {
            snapshot.grace = None;
        }
        // During a grace period the serial that left stays in force, on the hot path too.
        let serial = match (&snapshot.in_force, &snapshot.grace) {
            (Some(k), _) => k.serial.clone(),
            (None, Some(g)) => Some(g.serial.clone()),
            (None, None) => None,
        };
        snapshot.hardware_id = serial
            .as_ref()
            .map_or_else(|| snapshot.machine_id.clone(), HardwareId::from);
        let token = serial.as_ref().map_or(0, |s| self.shared.token(s).get());
        let word = ((self.generation & 0xFFFF_FFFF) << 32) | u64::from(token);
        self.shared.snapshot.store(Arc::new(snapshot));
        self.shared.word.0.store(word, Ordering::Release);
        self.generation
    }

    /// The current picture (as a reader would see it).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }
}

impl CellReader {
    /// The hot-path check: one atomic load. No lock, no allocation, no I/O.
    #[inline]
    pub fn check(&self) -> KeyCheck {
        KeyCheck(self.shared.word.0.load(Ordering::Acquire))
    }

    /// Whether the valid key in force is the one `bound` stands for.
    #[inline]
    pub fn is_in_force(&self, bound: KeyToken) -> bool {
        self.check().is(bound)
    }

    /// The full picture. Lock-free and allocation-free (an `arc-swap` guard).
    pub fn snapshot(&self) -> Guard<Arc<Snapshot>> {
        self.shared.snapshot.load()
    }

    /// The hardware ID in force now.
    pub fn hardware_id(&self) -> HardwareId {
        self.shared.snapshot.load().hardware_id.clone()
    }

    /// The token standing for `serial` (assigned on first use; takes a lock, so call it
    /// when a license is bound, not per request).
    pub fn token(&self, serial: &Serial) -> KeyToken {
        self.shared.token(serial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::ProofCapability;

    pub(crate) fn view(serial: &str, status: KeyStatus) -> KeyView {
        KeyView {
            info: KeyInfo {
                id: KeyId::new(BackendKind::Sim, serial),
                backend: BackendKind::Sim,
                path: serial.into(),
                serial: Some(Serial::new(serial)),
                model: "sim".into(),
                firmware: None,
                capability: ProofCapability::Signature,
            },
            serial: Some(Serial::new(serial)),
            firmware: None,
            status,
        }
    }

    fn with_key(machine: &HardwareId, serial: &str) -> Snapshot {
        let k = view(
            serial,
            KeyStatus::Valid {
                proof: ProofStatus::Verified,
            },
        );
        Snapshot {
            in_force: Some(k.clone()),
            keys: vec![k],
            ..Snapshot::no_key(machine.clone())
        }
    }

    /// A cell for machine id `machine`, with one reader.
    fn new_cell(machine: &str) -> (HardwareId, HardwareIdCell, CellReader) {
        let machine = HardwareId::new(machine);
        let cell = HardwareIdCell::new(machine.clone());
        let reader = cell.reader();
        (machine, cell, reader)
    }

    #[test]
    fn starts_without_a_key() {
        let (_, _cell, r) = new_cell("m");
        assert_eq!(r.check().valid_key(), None);
        assert_eq!(r.hardware_id().as_str(), "m");
        assert_eq!(r.snapshot().state(), KeyState::Absent);
    }

    #[test]
    fn hardware_id_follows_the_key_in_force() {
        let (machine, mut cell, r) = new_cell("m");
        let t = r.token(&Serial::new("123"));
        cell.publish(with_key(&machine, "123"));
        assert!(r.is_in_force(t));
        assert_eq!(r.hardware_id().as_str(), "123");
        assert_eq!(r.check().generation(), 1);
        cell.publish(Snapshot::no_key(machine));
        assert!(!r.is_in_force(t));
        assert_eq!(r.hardware_id().as_str(), "m");
        assert_eq!(r.check().generation(), 2);
    }

    #[test]
    fn tokens_are_stable_per_serial() {
        let (_, _cell, r) = new_cell("m");
        let a = r.token(&Serial::new("a"));
        let b = r.token(&Serial::new("b"));
        assert_ne!(a, b);
        assert_eq!(a, r.token(&Serial::new("a")));
    }

    /// Readers check every snapshot for internal consistency while a writer flips the cell
    /// between two keys and no key as fast as it can: no torn snapshot, generations only grow.
    #[test]
    fn no_torn_snapshot_under_concurrent_flips() {
        let (machine, mut cell, reader) = new_cell("machine");
        let ta = reader.token(&Serial::new("A"));
        let tb = reader.token(&Serial::new("B"));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let r = reader.clone();
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut last_gen = 0u64;
                    let mut seen = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let check = r.check();
                        let snap = r.snapshot();
                        // The snapshot is never older than the word read before it.
                        assert!(snap.generation as u32 >= check.generation());
                        assert!(snap.generation >= last_gen);
                        last_gen = snap.generation;
                        match &snap.in_force {
                            Some(k) => {
                                let s = k.serial.as_ref().map(Serial::as_str);
                                assert_eq!(Some(snap.hardware_id.as_str()), s);
                                assert!(matches!(k.status, KeyStatus::Valid { .. }));
                            }
                            None => assert_eq!(snap.hardware_id, snap.machine_id),
                        }
                        if let Some(t) = check.valid_key() {
                            assert!(t == ta || t == tb);
                        }
                        seen += 1;
                    }
                    seen
                })
            })
            .collect();
        for i in 0..20_000u32 {
            let snap = match i % 3 {
                0 => with_key(&machine, "A"),
                1 => with_key(&machine, "B"),
                _ => Snapshot::no_key(machine.clone()),
            };
            cell.publish(snap);
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().expect("reader panicked") > 0);
        }
    }
}
