//! The hot-plug monitor: the only component that touches devices.
//!
//! [`Monitor`] is a pure state machine — an [`Input`] and the current time in, a [`Step`]
//! out (a new [`Snapshot`] to publish and the keys to validate) — so the simulator can drive
//! it deterministically with a virtual clock. [`Driver`] adds the I/O: it opens keys,
//! runs the [`KeyValidator`] and publishes to the [`HardwareIdCell`]. [`spawn`] runs a
//! driver on a thread fed by the providers' hot-plug sources.
//!
//! **Which key is in force** when several are valid: the key in force stays in force while
//! it remains valid; when none is in force, the valid key with the smallest [`KeyId`]
//! (`hid:…` < `pcsc:…` < `sim:…`, then by path) is chosen. The choice depends only on the
//! order of events, never on timing or hashing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cell::{BackendError, HardwareIdCell, KeyStatus, KeyView, Snapshot};
use crate::error::{Error, ErrorKind, Result};
use crate::key::{BackendKind, Firmware, HardwareId, HotplugEvent, HotplugSource, KeyId, KeyInfo, KeyProvider, Serial};
use crate::validate::{KeyValidator, Validation};

/// Timing knobs of the monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorConfig {
    /// A valid (or invalid) key is re-proved this often.
    pub revalidate_every: Duration,
    /// First retry delay after a failed validation (busy, I/O error); doubles per failure.
    pub retry_initial: Duration,
    /// Upper bound of the retry delay.
    pub retry_max: Duration,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            revalidate_every: Duration::from_secs(60),
            retry_initial: Duration::from_millis(250),
            retry_max: Duration::from_secs(5),
        }
    }
}

impl MonitorConfig {
    fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.retry_initial.saturating_mul(factor).min(self.retry_max)
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

/// What the monitor wants done after an input.
#[derive(Debug, Default)]
pub struct Step {
    /// A new picture to publish, when it changed.
    pub publish: Option<Snapshot>,
    /// Keys to validate now (each once; answer with [`Input::Validated`]).
    pub validate: Vec<KeyId>,
}

#[derive(Debug, Clone)]
struct Entry {
    info: KeyInfo,
    serial: Option<Serial>,
    firmware: Option<Firmware>,
    status: KeyStatus,
    due: Option<Duration>,
    failures: u32,
}

/// The monitor's state machine. See the module docs.
#[derive(Debug)]
pub struct Monitor {
    config: MonitorConfig,
    machine_id: HardwareId,
    keys: BTreeMap<KeyId, Entry>,
    pending: BTreeSet<KeyId>,
    in_force: Option<KeyId>,
    backend_errors: BTreeMap<Option<BackendKind>, Error>,
    published: Snapshot,
}

impl Monitor {
    /// A monitor with no key attached.
    pub fn new(machine_id: HardwareId, config: MonitorConfig) -> Self {
        let published = Snapshot::no_key(machine_id.clone());
        Self {
            config,
            machine_id,
            keys: BTreeMap::new(),
            pending: BTreeSet::new(),
            in_force: None,
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
                    self.pending.remove(&id);
                    if self.in_force.as_ref() == Some(&id) {
                        self.in_force = None;
                    }
                    let entry = Entry {
                        info,
                        serial: None,
                        firmware: None,
                        status: KeyStatus::Validating,
                        due: Some(now),
                        failures: 0,
                    };
                    self.keys.insert(id, entry);
                }
            }
            Input::Hotplug(HotplugEvent::Detached(id)) => {
                self.keys.remove(&id);
                self.pending.remove(&id);
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
            Input::Validated { id, validation } => self.validated(now, id, validation),
            Input::RevalidateAll => {
                for e in self.keys.values_mut() {
                    e.due = Some(now);
                }
            }
            Input::Tick => {}
        }
        self.choose_in_force();
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

    fn validated(&mut self, now: Duration, id: KeyId, validation: Validation) {
        if !self.pending.remove(&id) {
            return; // detached or replaced meanwhile: the answer is about a key that is gone
        }
        let Some(entry) = self.keys.get_mut(&id) else { return };
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
                entry.due = Some(now + self.config.backoff(entry.failures));
            }
        }
        // A key is in force only while its latest judgement is "valid".
        if self.in_force.as_ref() == Some(&id) && !matches!(entry.status, KeyStatus::Valid { .. }) {
            self.in_force = None;
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

    fn due(&mut self, now: Duration) -> Vec<KeyId> {
        let mut out = Vec::new();
        for (id, e) in &self.keys {
            if e.due.is_some_and(|d| d <= now) && !self.pending.contains(id) {
                out.push(id.clone());
            }
        }
        for id in &out {
            self.pending.insert(id.clone());
        }
        out
    }

    /// When the next re-validation is due, if any (for the driver's sleep).
    pub fn next_deadline(&self) -> Option<Duration> {
        self.keys
            .iter()
            .filter(|(id, _)| !self.pending.contains(*id))
            .filter_map(|(_, e)| e.due)
            .min()
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
            .map_or_else(|| self.machine_id.clone(), HardwareId::from);
        s.in_force = in_force;
        s.keys = keys;
        s.backend_error = backend_error;
        s
    }

    /// The picture as of the last input.
    pub fn snapshot(&self) -> &Snapshot {
        &self.published
    }
}

/// A monitor with its I/O: providers to open keys, a validator, and the cell to publish to.
#[derive(Debug)]
pub struct Driver {
    monitor: Monitor,
    cell: HardwareIdCell,
    providers: Vec<Arc<dyn KeyProvider>>,
    validator: Arc<dyn KeyValidator>,
}

impl Driver {
    /// Builds a driver; the cell's machine ID is taken from `cell`'s current snapshot.
    pub fn new(
        cell: HardwareIdCell,
        providers: Vec<Arc<dyn KeyProvider>>,
        validator: Arc<dyn KeyValidator>,
        config: MonitorConfig,
    ) -> Self {
        let machine_id = cell.snapshot().machine_id.clone();
        Self {
            monitor: Monitor::new(machine_id, config),
            cell,
            providers,
            validator,
        }
    }

    /// Feeds one input at `now`, runs every validation it triggers (and those they trigger)
    /// and publishes the resulting picture. Returns the generation published, if any.
    pub fn handle(&mut self, now: Duration, input: Input) -> Option<u64> {
        let mut published = None;
        let mut queue = std::collections::VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let step = self.monitor.apply(now, input);
            if let Some(snapshot) = step.publish {
                let generation = self.cell.publish(snapshot);
                log_change(&self.cell.snapshot());
                published = Some(generation);
            }
            for id in step.validate {
                let validation = self.validate(&id);
                queue.push_back(Input::Validated { id, validation });
            }
        }
        published
    }

    fn validate(&self, id: &KeyId) -> Validation {
        let Some(provider) = self
            .providers
            .iter()
            .find(|p| id.as_str().starts_with(p.kind().as_str()))
        else {
            return Validation::Failed(Error::new(ErrorKind::Unsupported, format!("no provider for {id}")));
        };
        match provider.open(id) {
            Ok(mut key) => self.validator.validate(key.as_mut()),
            Err(e) => Validation::Failed(e),
        }
    }

    /// The state machine, for inspection.
    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// When the next re-validation is due.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.monitor.next_deadline()
    }
}

fn log_change(s: &Snapshot) {
    match &s.in_force {
        Some(k) => tracing::info!(
            target: "keyfloat::key",
            generation = s.generation,
            hardware_id = %s.hardware_id,
            key = %k.info.id,
            "valid key in force"
        ),
        None => {
            let reason = s.primary_key().map(|k| match &k.status {
                KeyStatus::Invalid { reason } => reason.code().to_string(),
                KeyStatus::Error { code, message, .. } => format!("{code}: {message}"),
                KeyStatus::Validating => "validating".into(),
                KeyStatus::Valid { .. } => "valid".into(),
            });
            tracing::warn!(
                target: "keyfloat::key",
                generation = s.generation,
                hardware_id = %s.hardware_id,
                state = s.state().as_str(),
                reason = reason.as_deref().unwrap_or("no key attached"),
                "no valid key in force"
            );
        }
    }
}

/// A running monitor thread; stops when dropped or on [`MonitorHandle::stop`].
#[derive(Debug)]
pub struct MonitorHandle {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl MonitorHandle {
    /// Stops the monitor and waits for its threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for MonitorHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What a watcher hands to the monitor.
enum Message {
    Event(HotplugEvent),
    BackendFailed(BackendKind, Error),
}

impl Message {
    fn into_input(self) -> Input {
        match self {
            Message::Event(ev) => Input::Hotplug(ev),
            Message::BackendFailed(backend, error) => Input::BackendFailed { backend, error },
        }
    }
}

/// One provider's hot-plug source, kept alive: a source that fails (e.g. pcscd stopped)
/// detaches the keys it reported, reports the error and is re-opened with backoff.
struct Watcher {
    provider: Arc<dyn KeyProvider>,
    config: MonitorConfig,
    source: Option<Box<dyn HotplugSource>>,
    failures: u32,
    retry_at: Instant,
    attached: BTreeSet<KeyId>,
}

impl Watcher {
    fn new(provider: Arc<dyn KeyProvider>, config: MonitorConfig) -> Self {
        Self {
            provider,
            config,
            source: None,
            failures: 0,
            retry_at: Instant::now(),
            attached: BTreeSet::new(),
        }
    }

    fn failed(&mut self, e: Error) -> Message {
        self.failures += 1;
        self.retry_at = Instant::now() + self.config.backoff(self.failures);
        Message::BackendFailed(self.provider.kind(), e)
    }

    /// Waits up to `timeout` for what the source has to say.
    fn poll(&mut self, timeout: Duration, stop: &AtomicBool) -> Vec<Message> {
        let kind = self.provider.kind();
        let Some(source) = self.source.as_mut() else {
            let wait = self.retry_at.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                sleep_unless_stopped(stop, wait.min(timeout));
                return Vec::new();
            }
            return match self.provider.watch() {
                Ok(source) => {
                    self.source = Some(source);
                    self.failures = 0;
                    Vec::new()
                }
                Err(e) => {
                    tracing::warn!(target: "keyfloat::key", backend = %kind, error = %e, "cannot watch for keys; retrying");
                    vec![self.failed(e)]
                }
            };
        };
        match source.next_event(timeout) {
            Ok(None) => Vec::new(),
            Ok(Some(HotplugEvent::Error(e))) => vec![Message::BackendFailed(kind, e)],
            Ok(Some(ev)) => {
                match &ev {
                    HotplugEvent::Attached(info) => {
                        self.attached.insert(info.id.clone());
                    }
                    HotplugEvent::Detached(id) => {
                        self.attached.remove(id);
                    }
                    HotplugEvent::Error(_) => {}
                }
                vec![Message::Event(ev)]
            }
            Err(e) => {
                tracing::warn!(target: "keyfloat::key", backend = %kind, error = %e, "key watcher failed; re-watching");
                self.source = None;
                // The keys this source reported can no longer be reached through it.
                let mut out: Vec<Message> = std::mem::take(&mut self.attached)
                    .into_iter()
                    .map(|id| Message::Event(HotplugEvent::Detached(id)))
                    .collect();
                out.push(self.failed(e));
                out
            }
        }
    }
}

/// Runs a monitor on its own thread. With one provider (the usual case) the monitor thread
/// waits on that provider's source itself, so a hot-plug event costs one thread wake-up;
/// with several, one watcher thread per provider forwards events over a channel. Watchers
/// that fail (e.g. pcscd stopped) detach their keys, report the error and re-watch with backoff.
pub fn spawn(
    cell: HardwareIdCell,
    providers: Vec<Arc<dyn KeyProvider>>,
    validator: Arc<dyn KeyValidator>,
    config: MonitorConfig,
) -> Result<MonitorHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut driver = Driver::new(cell, providers.clone(), validator, config);
    let mut wait_for_events: Box<dyn FnMut(Duration) -> Option<Vec<Message>> + Send> =
        if let [only] = providers.as_slice() {
            let mut watcher = Watcher::new(Arc::clone(only), config);
            let stop = Arc::clone(&stop);
            Box::new(move |wait| Some(watcher.poll(wait, &stop)))
        } else {
            let (tx, rx) = mpsc::channel::<Message>();
            for provider in &providers {
                let mut watcher = Watcher::new(Arc::clone(provider), config);
                let tx = tx.clone();
                let stop = Arc::clone(&stop);
                let name = format!("keyfloat-watch-{}", provider.kind());
                threads.push(std::thread::Builder::new().name(name).spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        for msg in watcher.poll(Duration::from_millis(100), &stop) {
                            if tx.send(msg).is_err() {
                                return;
                            }
                        }
                    }
                })?);
            }
            drop(tx);
            Box::new(move |wait| match rx.recv_timeout(wait) {
                Ok(msg) => Some(vec![msg]),
                Err(mpsc::RecvTimeoutError::Timeout) => Some(Vec::new()),
                Err(mpsc::RecvTimeoutError::Disconnected) => None,
            })
        };
    let stop2 = Arc::clone(&stop);
    threads.push(
        std::thread::Builder::new()
            .name("keyfloat-monitor".into())
            .spawn(move || {
                let start = Instant::now();
                while !stop2.load(Ordering::Relaxed) {
                    let now = start.elapsed();
                    let wait = driver
                        .next_deadline()
                        .map_or(Duration::from_millis(200), |d| d.saturating_sub(now))
                        .min(Duration::from_millis(200));
                    let Some(messages) = wait_for_events(wait) else { break };
                    if messages.is_empty() {
                        driver.handle(start.elapsed(), Input::Tick);
                    }
                    for msg in messages {
                        driver.handle(start.elapsed(), msg.into_input());
                    }
                }
            })?,
    );
    Ok(MonitorHandle { stop, threads })
}

fn sleep_unless_stopped(stop: &AtomicBool, total: Duration) {
    let deadline = Instant::now() + total;
    while !stop.load(Ordering::Relaxed) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}
