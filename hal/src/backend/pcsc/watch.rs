//! Hot-plug for PC/SC: `SCardGetStatusChange` on every reader plus the PnP pseudo-reader.
//!
//! pcsc-lite 1.9.9 only flags PnP when the reader count changes *during* one call, so the
//! wait is bounded (at most 1 s, usually the caller's 100 ms) and the reader list is
//! re-read after every wake-up or timeout. A card is tracked by reader with the reader's
//! event counter, so a remove + insert between two calls is still seen as both.
//! pcscd going away makes [`PcscWatch::next_event`] fail with
//! [`ErrorKind::ServiceUnavailable`]; the monitor then re-watches, i.e. builds a new
//! context once pcscd is back.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ffi::CString;
use std::sync::{Arc, Mutex};
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
    /// The key we reported for the card in it, `None` when the card is not a key (or is
    /// still being identified).
    pub key: Option<KeyInfo>,
    /// The card was held by another process when probed: probe again on the next change
    /// of the reader's state (the holder letting go) to report its serial.
    pub busy: bool,
    /// A probe of this card is running; its answer comes back through [`Tracker::probed`].
    pub probing: bool,
}

/// The reader bookkeeping, free of PC/SC types so it can be unit tested.
///
/// Probes run elsewhere (a card may take seconds to answer, or never): the tracker asks
/// for one with `start_probe(reader, count)` and takes the answer in [`Tracker::probed`],
/// where an answer about a card that has since been removed is dropped.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    pub readers: BTreeMap<String, Seen>,
}

impl Tracker {
    /// Applies one observation of `reader`; a probe is requested only for a newly seen
    /// card (or a busy one whose reader changed state).
    pub(crate) fn observe_start(
        &mut self,
        reader: &str,
        present: bool,
        count: u32,
        start_probe: &mut dyn FnMut(&str, u32),
        out: &mut Vec<HotplugEvent>,
    ) {
        if let Some(seen) = self.readers.get_mut(reader) {
            if present && seen.count == count {
                if seen.busy && !seen.probing {
                    seen.probing = true;
                    start_probe(reader, count);
                }
                return;
            }
            // Removed, or removed and re-inserted since the last look.
            if let Some(key) = self.readers.remove(reader).and_then(|s| s.key) {
                out.push(HotplugEvent::Detached(key.id));
            }
        }
        if present {
            let seen = Seen {
                count,
                key: None,
                busy: false,
                probing: true,
            };
            self.readers.insert(reader.to_string(), seen);
            start_probe(reader, count);
        }
    }

    /// A probe requested by [`Tracker::observe_start`] answered.
    pub(crate) fn probed(&mut self, reader: &str, count: u32, probe: Probe, out: &mut Vec<HotplugEvent>) {
        let Some(seen) = self.readers.get_mut(reader) else {
            return;
        };
        if seen.count != count || !seen.probing {
            return; // about a card that has been removed since
        }
        seen.probing = false;
        if seen.key.is_some() {
            Self::reprobe(seen, probe, out);
            return;
        }
        let (key, busy) = match probe {
            Probe::Key(info) => (Some(info), false),
            Probe::Busy(info) => (Some(info), true),
            Probe::NotAKey => (None, false),
        };
        if let Some(info) = &key {
            out.push(HotplugEvent::Attached(info.clone()));
        }
        seen.key = key;
        seen.busy = busy;
    }

    /// [`Tracker::observe_start`] with a probe answered at once (tests).
    #[cfg(test)]
    pub(crate) fn observe(
        &mut self,
        reader: &str,
        present: bool,
        count: u32,
        identify: &mut dyn FnMut(&str) -> Probe,
        out: &mut Vec<HotplugEvent>,
    ) {
        let mut started = None;
        self.observe_start(
            reader,
            present,
            count,
            &mut |r, c| started = Some((r.to_string(), c)),
            out,
        );
        if let Some((r, c)) = started {
            let probe = identify(&r);
            self.probed(&r, c, probe, out);
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

/// Probes finished on their threads, waiting for the watcher: (reader, count, answer).
type Finished = Arc<Mutex<Vec<(String, u32, Probe)>>>;

struct WatchState {
    ctx: Context,
    /// Index 0 is the PnP pseudo-reader.
    states: Vec<ReaderState>,
    tracker: Tracker,
    finished: Finished,
    /// Readers with a probe thread running (at most one each).
    running: BTreeSet<String>,
    /// Probes asked for, by reader: the card's count (started when the reader is free).
    wanted: BTreeMap<String, u32>,
}

impl WatchState {
    fn new(ctx: Context) -> Self {
        Self {
            ctx,
            states: vec![ReaderState::new(pcsc::PNP_NOTIFICATION(), State::UNAWARE)],
            tracker: Tracker::default(),
            finished: Arc::default(),
            running: BTreeSet::new(),
            wanted: BTreeMap::new(),
        }
    }

    /// Takes the answers of finished probes.
    fn collect(&mut self, out: &mut Vec<HotplugEvent>) {
        let done = std::mem::take(&mut *self.finished.lock().unwrap_or_else(|p| p.into_inner()));
        for (reader, count, probe) in done {
            self.running.remove(&reader);
            self.tracker.probed(&reader, count, probe, out);
        }
    }

    /// Starts the wanted probes on readers that have none running. A probe never blocks
    /// the watcher: a card that takes seconds to answer (or never does) delays nothing
    /// but its own identification; when done, it wakes the watcher's wait.
    fn start_probes(&mut self, timeouts: Timeouts) {
        let ready: Vec<(String, u32)> = self
            .wanted
            .iter()
            .filter(|(r, _)| !self.running.contains(*r))
            .map(|(r, c)| (r.clone(), *c))
            .collect();
        for (reader, count) in ready {
            self.wanted.remove(&reader);
            let (finished, ctx, name) = (Arc::clone(&self.finished), self.ctx.clone(), reader.clone());
            let spawned = std::thread::Builder::new()
                .name("keyfloat-pcsc-identify".into())
                .spawn(move || {
                    let answer = probe(&name, timeouts);
                    finished
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((name, count, answer));
                    // Wakes `SCardGetStatusChange` (a no-op when the watcher is not waiting).
                    let _ = ctx.cancel();
                });
            match spawned {
                Ok(_) => {
                    self.running.insert(reader);
                }
                Err(e) => {
                    tracing::warn!(target: "keyfloat::key", reader, error = %e, "cannot start a probe thread");
                    self.wanted.insert(reader, count);
                }
            }
        }
    }

    fn poll(&mut self, wait: Duration, timeouts: Timeouts) -> Result<Vec<HotplugEvent>> {
        let mut out = Vec::new();
        self.collect(&mut out);
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
        // Answers already in hand go out now; the wait happens on the next call.
        let wait = if out.is_empty() { wait } else { Duration::ZERO };
        match self.ctx.get_status_change(Some(wait), &mut self.states) {
            Ok(()) => {}
            Err(pcsc::Error::Timeout) => return Ok(out),
            Err(pcsc::Error::Cancelled) => {
                // A probe finished (its answer is taken on the next call, at once).
                self.collect(&mut out);
                return Ok(out);
            }
            Err(e) => return Err(map_error(e, Phase::Service, "waiting for reader events")),
        }
        let wanted = &mut self.wanted;
        let mut start = |reader: &str, count: u32| {
            wanted.insert(reader.to_string(), count);
        };
        for s in self.states.iter_mut() {
            if s.name() != pcsc::PNP_NOTIFICATION() {
                let event = s.event_state();
                if event.contains(State::CHANGED) {
                    let name = s.name().to_string_lossy().into_owned();
                    // A vanished reader (UNKNOWN) counts as "no card"; the next listing drops it.
                    self.tracker
                        .observe_start(&name, card_present(event), s.event_count(), &mut start, &mut out);
                }
            }
            s.sync_current_state();
        }
        self.start_probes(timeouts);
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
        let worker = Worker::start("keyfloat-pcsc-watch", None, timeouts.call, || {
            let ctx =
                Context::establish(Scope::User).map_err(|e| map_error(e, Phase::Service, "connecting to pcscd"))?;
            Ok(WatchState::new(ctx))
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
        // Probes run on their own threads; the rest is one IPC round trip or two.
        let deadline = wait + timeouts.call;
        let events = self.worker.call(deadline, move |st| st.poll(wait, timeouts))?;
        self.pending.extend(events);
        Ok(self.pending.pop_front())
    }
}
