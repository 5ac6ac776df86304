//! Deadlines for blocking PC/SC calls.
//!
//! pcscd's vpcd driver (and a misbehaving USB reader) can block `SCardTransmit` forever, and
//! `SCardConnect` blocks while another client holds a transaction. So every PC/SC call runs
//! on a worker thread that owns the PC/SC handles; the caller waits for the answer with its
//! own deadline and, when it passes, abandons the worker (the thread exits by itself once
//! the blocked call returns) and reports [`ErrorKind::Timeout`].
//!
//! An abandoned thread still holds its pcscd context, so the reader it was talking to is
//! marked *wedged* until that call returns: new work on a wedged reader fails at once
//! instead of starting another thread and context. A card that never answers therefore
//! costs a fixed number of threads and contexts, however long it stays in.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc, LazyLock, Mutex};
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// Abandoned calls still running, per reader.
static WEDGED: LazyLock<Mutex<HashMap<String, usize>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn wedged_map() -> std::sync::MutexGuard<'static, HashMap<String, usize>> {
    // Counters only: a poisoned map is still consistent.
    WEDGED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Abandoned PC/SC calls on `reader` that have not returned yet.
pub(crate) fn wedged_calls(reader: &str) -> usize {
    wedged_map().get(reader).copied().unwrap_or(0)
}

/// How long a new call waits for an abandoned one on the same reader to return (e.g. a
/// connect that waited on another client's transaction, which has just ended).
const WEDGE_PATIENCE: Duration = Duration::from_millis(250);

/// Fails (after a short wait) while an earlier call on `reader` is still blocked.
pub(crate) fn ensure_not_wedged(reader: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + WEDGE_PATIENCE;
    while wedged_calls(reader) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    match wedged_calls(reader) {
        0 => Ok(()),
        n => Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "the card in {reader:?} has not answered an earlier command yet ({n} pending); \
                 not asking again until it does (or is removed)"
            ),
        )),
    }
}

const RUNNING: u8 = 0;
const DONE: u8 = 1;
const ABANDONED: u8 = 2;

/// One call's fate, shared by the caller and the thread running it: whichever side comes
/// second settles the wedge count of the reader.
#[derive(Clone)]
struct Flight {
    state: Arc<AtomicU8>,
    reader: Option<Arc<str>>,
}

impl Flight {
    fn new(reader: Option<&str>) -> Self {
        Self {
            state: Arc::new(AtomicU8::new(RUNNING)),
            reader: reader.map(Arc::from),
        }
    }

    /// The thread's call returned.
    fn done(&self) {
        if self.state.swap(DONE, Ordering::AcqRel) == ABANDONED {
            if let Some(r) = &self.reader {
                let mut map = wedged_map();
                if let Some(n) = map.get_mut(&**r) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        map.remove(&**r);
                    }
                }
            }
        }
    }

    /// The caller gave up waiting.
    fn abandon(&self) {
        if self.state.swap(ABANDONED, Ordering::AcqRel) == RUNNING {
            if let Some(r) = &self.reader {
                *wedged_map().entry(r.to_string()).or_default() += 1;
            }
        }
    }
}

type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// A thread owning state `S`, running one job at a time.
pub(crate) struct Worker<S> {
    jobs: Option<mpsc::Sender<Job<S>>>,
    name: String,
    reader: Option<String>,
}

impl<S> std::fmt::Debug for Worker<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.name)
            .field("abandoned", &self.jobs.is_none())
            .finish()
    }
}

fn timeout_error(what: &str, timeout: Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!(
            "{what}: no answer within {} ms (card or pcscd not responding)",
            timeout.as_millis()
        ),
    )
}

fn spawn_error(e: std::io::Error) -> Error {
    Error::with_source(ErrorKind::Other, "cannot start a PC/SC worker thread", e)
}

impl<S: 'static> Worker<S> {
    /// Starts the thread and builds its state there with `init`, waiting up to `timeout`.
    /// With `reader`, refuses at once while that reader is wedged, and marks it wedged
    /// when this worker's `init` or a call misses its deadline.
    pub(crate) fn start(
        name: &str,
        reader: Option<&str>,
        timeout: Duration,
        init: impl FnOnce() -> Result<S> + Send + 'static,
    ) -> Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job<S>>();
        spawn_and_wait(name, reader, timeout, move |ready: Answer<()>| {
            let mut state = match init() {
                Ok(s) => {
                    ready.send(Ok(()));
                    s
                }
                Err(e) => {
                    ready.send(Err(e));
                    return;
                }
            };
            while let Ok(job) = rx.recv() {
                job(&mut state);
            }
        })?;
        Ok(Self {
            jobs: Some(jobs),
            name: name.to_string(),
            reader: reader.map(str::to_string),
        })
    }

    /// Runs `f` on the worker, waiting up to `timeout`. After a timeout the worker is
    /// abandoned and every later call fails at once with [`ErrorKind::Timeout`].
    pub(crate) fn call<T: Send + 'static>(
        &mut self,
        timeout: Duration,
        f: impl FnOnce(&mut S) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let Some(jobs) = &self.jobs else {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!("{}: an earlier call never returned; reopen the key", self.name),
            ));
        };
        let (tx, rx) = mpsc::sync_channel::<Result<T>>(1);
        let flight = Flight::new(self.reader.as_deref());
        let answer = Answer {
            flight: flight.clone(),
            tx,
        };
        let job: Job<S> = Box::new(move |s| answer.send(f(s)));
        if jobs.send(job).is_err() {
            self.jobs = None;
            return Err(Error::new(ErrorKind::Other, "PC/SC worker died"));
        }
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.jobs = None;
                flight.abandon();
                Err(timeout_error(&self.name, timeout))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.jobs = None;
                Err(Error::new(ErrorKind::Other, "PC/SC worker died"))
            }
        }
    }
}

/// Runs `f` on a fresh thread, waiting up to `timeout`; the thread is abandoned on timeout.
/// With `reader`, the same wedge rules as [`Worker::start`].
pub(crate) fn with_deadline<T: Send + 'static>(
    name: &str,
    reader: Option<&str>,
    timeout: Duration,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    spawn_and_wait(name, reader, timeout, move |answer| answer.send(f()))
}

/// The first answer of a thread started by [`spawn_and_wait`]: sending it settles the call's
/// [`Flight`] (the thread may go on afterwards).
struct Answer<T> {
    flight: Flight,
    tx: mpsc::SyncSender<Result<T>>,
}

impl<T> Answer<T> {
    fn send(self, r: Result<T>) {
        self.flight.done();
        let _ = self.tx.send(r);
    }
}

/// Starts thread `name` running `body` and waits up to `timeout` for the answer it sends;
/// on timeout the thread is abandoned. With `reader`, refuses at once while that reader is
/// wedged, and marks it wedged when the answer misses its deadline.
fn spawn_and_wait<T: Send + 'static>(
    name: &str,
    reader: Option<&str>,
    timeout: Duration,
    body: impl FnOnce(Answer<T>) + Send + 'static,
) -> Result<T> {
    if let Some(r) = reader {
        ensure_not_wedged(r)?;
    }
    let (tx, rx) = mpsc::sync_channel::<Result<T>>(1);
    let flight = Flight::new(reader);
    let answer = Answer {
        flight: flight.clone(),
        tx,
    };
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || body(answer))
        .map_err(spawn_error)?;
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            flight.abandon();
            Err(timeout_error(name, timeout))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(Error::new(ErrorKind::Other, "PC/SC worker died")),
    }
}
