//! Deadlines for blocking PC/SC calls.
//!
//! pcscd's vpcd driver (and a misbehaving USB reader) can block `SCardTransmit` forever, and
//! `SCardConnect` blocks while another client holds a transaction. So every PC/SC call runs
//! on a worker thread that owns the PC/SC handles; the caller waits for the answer with its
//! own deadline and, when it passes, abandons the worker (the thread exits by itself once
//! the blocked call returns) and reports [`ErrorKind::Timeout`].

use std::sync::mpsc;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// A thread owning state `S`, running one job at a time.
pub(crate) struct Worker<S> {
    jobs: Option<mpsc::Sender<Job<S>>>,
    name: String,
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
    pub(crate) fn start(
        name: &str,
        timeout: Duration,
        init: impl FnOnce() -> Result<S> + Send + 'static,
    ) -> Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job<S>>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<()>>(1);
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let mut state = match init() {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = rx.recv() {
                    job(&mut state);
                }
            })
            .map_err(spawn_error)?;
        match ready_rx.recv_timeout(timeout) {
            Ok(Ok(())) => Ok(Self {
                jobs: Some(jobs),
                name: name.to_string(),
            }),
            Ok(Err(e)) => Err(e),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(timeout_error(name, timeout)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Error::new(ErrorKind::Other, "PC/SC worker died")),
        }
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
        let job: Job<S> = Box::new(move |s| {
            let _ = tx.send(f(s));
        });
        if jobs.send(job).is_err() {
            self.jobs = None;
            return Err(Error::new(ErrorKind::Other, "PC/SC worker died"));
        }
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.jobs = None;
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
pub(crate) fn with_deadline<T: Send + 'static>(
    name: &str,
    timeout: Duration,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = mpsc::sync_channel::<Result<T>>(1);
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(spawn_error)?;
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(timeout_error(name, timeout)),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(Error::new(ErrorKind::Other, "PC/SC worker died")),
    }
}
