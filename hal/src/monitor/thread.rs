//! [`spawn`]: the monitor on its own thread, fed by one watcher thread per provider and
//! one validation worker thread per key.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::driver::validate_key;
use super::{Driver, Input, Monitor, MonitorConfig, ValidationRequest};
use crate::cell::HardwareIdCell;
use crate::error::{Error, ErrorKind, Result};
use crate::key::{BackendKind, HotplugEvent, HotplugSource, KeyId, KeyProvider};
use crate::validate::{KeyValidator, Validation};

/// Validation workers: one thread per attached key, started on its first request and
/// kept while the key is attached (and, when its attempt hangs, until that returns). A
/// key that keeps failing is retried on the same thread: a wedged card costs one blocked
/// thread, never one per attempt.
struct Validators {
    providers: Vec<Arc<dyn KeyProvider>>,
    validator: Arc<dyn KeyValidator>,
    results: mpsc::Sender<Message>,
    workers: BTreeMap<KeyId, KeyWorker>,
    live: Arc<AtomicUsize>,
}

struct KeyWorker {
    requests: mpsc::Sender<u64>,
    busy: Arc<AtomicBool>,
}

impl Validators {
    fn request(&mut self, request: ValidationRequest) {
        let ValidationRequest { id, ticket } = request;
        if let Some(w) = self.workers.get(&id) {
            if w.requests.send(ticket).is_ok() {
                return;
            }
        }
        match self.start(&id) {
            Ok(w) => {
                let _ = w.requests.send(ticket);
                self.workers.insert(id, w);
            }
            Err(e) => {
                let validation = Validation::Failed(Error::with_source(
                    ErrorKind::Other,
                    "cannot start a validation thread",
                    e,
                ));
                let _ = self.results.send(Message::Validated { id, ticket, validation });
            }
        }
    }

    fn start(&self, id: &KeyId) -> std::io::Result<KeyWorker> {
        let (requests, rx) = mpsc::channel::<u64>();
        let busy = Arc::new(AtomicBool::new(false));
        let (providers, validator, results) = (
            self.providers.clone(),
            Arc::clone(&self.validator),
            self.results.clone(),
        );
        let (busy2, live, id) = (Arc::clone(&busy), Arc::clone(&self.live), id.clone());
        live.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("keyfloat-validate".into())
            .spawn(move || {
                while let Ok(mut ticket) = rx.recv() {
                    // Only the latest request matters (older ones are stale).
                    while let Ok(t) = rx.try_recv() {
                        ticket = t;
                    }
                    busy2.store(true, Ordering::Relaxed);
                    let validation = validate_key(&providers, validator.as_ref(), &id);
                    busy2.store(false, Ordering::Relaxed);
                    if results
                        .send(Message::Validated {
                            id: id.clone(),
                            ticket,
                            validation,
                        })
                        .is_err()
                    {
                        break;
                    }
                }
                live.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            self.live.fetch_sub(1, Ordering::Relaxed);
            return Err(e);
        }
        Ok(KeyWorker { requests, busy })
    }

    /// Lets the idle workers of detached keys end (dropping their request channel).
    fn prune(&mut self, monitor: &Monitor) {
        self.workers
            .retain(|id, w| monitor.is_attached(id) || monitor.is_validating(id) || w.busy.load(Ordering::Relaxed));
    }
}

/// A running monitor thread; stops when dropped or on [`MonitorHandle::stop`].
#[derive(Debug)]
pub struct MonitorHandle {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    validators: Arc<AtomicUsize>,
}

impl MonitorHandle {
    /// Validation worker threads alive now (one per attached key, plus any still blocked
    /// in a key that stopped answering).
    pub fn validation_threads(&self) -> usize {
        self.validators.load(Ordering::Relaxed)
    }

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

/// What a watcher or a validation worker hands to the monitor.
enum Message {
    Event(HotplugEvent),
    BackendFailed(BackendKind, Error),
    Validated {
        id: KeyId,
        ticket: u64,
        validation: Validation,
    },
}

impl Message {
    fn into_input(self) -> Input {
        match self {
            Message::Event(ev) => Input::Hotplug(ev),
            Message::BackendFailed(backend, error) => Input::BackendFailed { backend, error },
            Message::Validated { id, ticket, validation } => Input::Validated { id, ticket, validation },
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
        // pcscd coming back sends nothing: a short period finds it again fast.
        self.retry_at = Instant::now() + self.config.retry_after(self.failures, e.kind());
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

/// Runs a monitor on its own thread, fed over one channel by one watcher thread per
/// provider and by the validation workers (one per key). The monitor thread itself never
/// touches a device, so a key that is slow to answer never delays the news that another
/// key left. Watchers that fail (e.g. pcscd stopped) detach their keys, report the error
/// and re-watch with backoff.
pub fn spawn(
    cell: HardwareIdCell,
    providers: Vec<Arc<dyn KeyProvider>>,
    validator: Arc<dyn KeyValidator>,
    config: MonitorConfig,
) -> Result<MonitorHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
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
    let live = Arc::new(AtomicUsize::new(0));
    let mut validators = Validators {
        providers: providers.clone(),
        validator: Arc::clone(&validator),
        results: tx,
        workers: BTreeMap::new(),
        live: Arc::clone(&live),
    };
    let mut driver = Driver::new(cell, providers, validator, config);
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
                    let mut inputs = Vec::new();
                    match rx.recv_timeout(wait) {
                        Ok(msg) => {
                            inputs.push(msg.into_input());
                            inputs.extend(rx.try_iter().map(Message::into_input));
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => inputs.push(Input::Tick),
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                    for input in inputs {
                        for request in driver.apply(start.elapsed(), input) {
                            validators.request(request);
                        }
                    }
                    validators.prune(driver.monitor());
                }
            })?,
    );
    Ok(MonitorHandle {
        stop,
        threads,
        validators: live,
    })
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
