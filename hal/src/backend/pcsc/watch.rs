//! Hot-plug for PC/SC: `SCardGetStatusChange` on every reader plus the PnP pseudo-reader.
//!
//! pcsc-lite 1.9.9 only flags PnP when the reader count changes *during* one call, so the
//! wait is bounded (at most 1 s, usually the caller's 100 ms) and the reader list is
//! re-read after every wake-up or timeout. A card is tracked by reader with the reader's
//! event counter, so a remove + insert between two calls is still seen as both.
//! pcscd going away makes [`PcscWatch::next_event`] fail with
//! [`ErrorKind::ServiceUnavailable`]; the monitor then re-watches, i.e. builds a new
//! context once pcscd is back.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::CString;
use std::time::Duration;

use pcsc::{Context, ReaderState, Scope, State};

use super::worker::Worker;
use super::{map_error, probe, Phase, Probe, Timeouts};
use crate::error::Result;
use crate::key::{HotplugEvent, HotplugSource, KeyInfo};

/// Longest single wait inside pcscd.
const MAX_WAIT: Duration = Duration::from_secs(1);

/// Whether a reader state says a usable card is in the reader.
pub(crate) fn card_present(state: State) -> bool {
    state.contains(State::PRESENT) && !state.intersects(State::EMPTY | State::MUTE | State::UNKNOWN)
}

/// What the watcher remembers about one reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    /// pcscd's insert/remove counter when we last looked.
    pub count: u32,
    /// The key we reported for the card in it, `None` when the card is not a key.
    pub key: Option<KeyInfo>,
    /// The card was held by another process when probed: probe again on the next change
    /// of the reader's state (the holder letting go) to report its serial.
    pub busy: bool,
}

/// The reader bookkeeping, free of PC/SC types so it can be unit tested.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    pub readers: BTreeMap<String, Seen>,
}

impl Tracker {
    /// Applies one observation of `reader`; `identify` is asked only for a newly seen card.
    pub(crate) fn observe(
        &mut self,
        reader: &str,
        present: bool,
        count: u32,
        identify: &mut dyn FnMut(&str) -> Probe,
        out: &mut Vec<HotplugEvent>,
    ) {
        if let Some(seen) = self.readers.get_mut(reader) {
            if present && seen.count == count {
                if seen.busy {
                    Self::reprobe(seen, identify(reader), out);
                }
                return;
            }
            // Removed, or removed and re-inserted since the last look.
            if let Some(key) = self.readers.remove(reader).and_then(|s| s.key) {
                out.push(HotplugEvent::Detached(key.id));
            }
        }
        if present {
            let (key, busy) = match identify(reader) {
                Probe::Key(info) => (Some(info), false),
                Probe::Busy(info) => (Some(info), true),
                Probe::NotAKey => (None, false),
            };
            if let Some(info) = &key {
                out.push(HotplugEvent::Attached(info.clone()));
            }
            self.readers.insert(reader.to_string(), Seen { count, key, busy });
        }
    }

    /// A card reported while busy has been probed again.
    fn reprobe(seen: &mut Seen, probe: Probe, out: &mut Vec<HotplugEvent>) {
        match probe {
            Probe::Busy(_) => {}
            Probe::Key(info) => {
                seen.busy = false;
                if seen.key.as_ref() != Some(&info) {
                    // Same id, fuller info: the monitor replaces the entry and validates it.
                    out.push(HotplugEvent::Attached(info.clone()));
                    seen.key = Some(info);
                }
            }
            Probe::NotAKey => {
                seen.busy = false;
                if let Some(key) = seen.key.take() {
                    out.push(HotplugEvent::Detached(key.id));
                }
            }
        }
    }

    /// Forgets readers that are no longer listed.
    pub(crate) fn retain_readers(&mut self, listed: &[String], out: &mut Vec<HotplugEvent>) {
        let gone: Vec<String> = self.readers.keys().filter(|r| !listed.contains(r)).cloned().collect();
        for r in gone {
            if let Some(key) = self.readers.remove(&r).and_then(|s| s.key) {
                out.push(HotplugEvent::Detached(key.id));
            }
        }
    }
}

struct WatchState {
    ctx: Context,
    /// Index 0 is the PnP pseudo-reader.
    states: Vec<ReaderState>,
    tracker: Tracker,
}

impl WatchState {
    fn poll(&mut self, wait: Duration, timeouts: Timeouts) -> Result<Vec<HotplugEvent>> {
        let mut out = Vec::new();
        let listed: Vec<String> = self
            .ctx
            .list_readers_owned()
            .map_err(|e| map_error(e, Phase::Service, "listing readers"))?
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        self.states.retain(|s| {
            let name = s.name().to_string_lossy();
            s.name() == pcsc::PNP_NOTIFICATION() || listed.iter().any(|l| *l == name)
        });
        for name in &listed {
            if !self.states.iter().any(|s| s.name().to_string_lossy() == *name) {
                if let Ok(c) = CString::new(name.as_str()) {
                    self.states.push(ReaderState::new(c, State::UNAWARE));
                }
            }
        }
        self.tracker.retain_readers(&listed, &mut out);
        match self.ctx.get_status_change(Some(wait), &mut self.states) {
            Ok(()) => {}
            Err(pcsc::Error::Timeout) => return Ok(out),
            Err(e) => return Err(map_error(e, Phase::Service, "waiting for reader events")),
        }
        let mut identify = |reader: &str| probe(reader, timeouts);
        for s in self.states.iter_mut() {
            if s.name() != pcsc::PNP_NOTIFICATION() {
                let event = s.event_state();
                if event.contains(State::CHANGED) {
                    let name = s.name().to_string_lossy().into_owned();
                    // A vanished reader (UNKNOWN) counts as "no card"; the next listing drops it.
                    self.tracker
                        .observe(&name, card_present(event), s.event_count(), &mut identify, &mut out);
                }
            }
            s.sync_current_state();
        }
        Ok(out)
    }
}

/// A [`HotplugSource`] over pcscd. See the module docs.
#[derive(Debug)]
pub struct PcscWatch {
    worker: Worker<WatchState>,
    pending: VecDeque<HotplugEvent>,
    timeouts: Timeouts,
}

impl PcscWatch {
    /// Connects to pcscd; the first [`HotplugSource::next_event`] calls report the keys
    /// present now.
    pub fn start(timeouts: Timeouts) -> Result<Self> {
        let worker = Worker::start("keyfloat-pcsc-watch", timeouts.call, || {
            let ctx =
                Context::establish(Scope::User).map_err(|e| map_error(e, Phase::Service, "connecting to pcscd"))?;
            Ok(WatchState {
                ctx,
                states: vec![ReaderState::new(pcsc::PNP_NOTIFICATION(), State::UNAWARE)],
                tracker: Tracker::default(),
            })
        })?;
        Ok(Self {
            worker,
            pending: VecDeque::new(),
            timeouts,
        })
    }
}

impl HotplugSource for PcscWatch {
    fn next_event(&mut self, timeout: Duration) -> Result<Option<HotplugEvent>> {
        if let Some(ev) = self.pending.pop_front() {
            return Ok(Some(ev));
        }
        let wait = timeout.min(MAX_WAIT);
        let timeouts = self.timeouts;
        // Probes have their own deadlines; the rest is one IPC round trip or two.
        let deadline = wait + timeouts.call + timeouts.probe * 2;
        let events = self.worker.call(deadline, move |st| st.poll(wait, timeouts))?;
        self.pending.extend(events);
        Ok(self.pending.pop_front())
    }
}
