//! The engine-agnostic half of a store: the bounded write queue drained by one writer
//! thread that group-commits, the read pool (one thread and queue per read connection,
//! dealt round-robin), backpressure (a full queue refuses at once with
//! [`StoreError::Busy`]) and an orderly close. An engine supplies a [`Writer`] (commits a
//! batch of jobs in one transaction) and [`Reader`]s (run reads inside one snapshot).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{Job, ReadJob, ReadTx, StoreError, StoreResult, Tx};

/// Most jobs committed together; bounds the latency a batch adds.
pub const MAX_BATCH: usize = 512;

/// Most reads served in one snapshot by one reader.
pub const MAX_READ_BATCH: usize = 32;

/// Sizes of the store's queues and read pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Write jobs that may wait for the writer; one more is refused with `Busy`.
    pub write_queue: usize,
    /// Reads that may wait for a reader; one more is refused with `Busy`.
    pub read_queue: usize,
    /// Read connections (each on its own thread).
    pub readers: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        // A full write queue is ≈ 8 batches, i.e. some tens of ms of fsyncs: deeper only
        // adds latency. Two readers: the machines we target have two cores.
        Self {
            write_queue: 4096,
            read_queue: 4096,
            readers: 2,
        }
    }
}

/// Group-commit counters: `jobs / batches` is the mean batch size.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Transactions committed (or attempted).
    pub batches: AtomicU64,
    /// Jobs run.
    pub jobs: AtomicU64,
    /// Reads served.
    pub reads: AtomicU64,
    /// Jobs and reads refused because their queue was full.
    pub refused: AtomicU64,
}

/// The writer side of an engine (owned by the writer thread).
pub trait Writer: Send + 'static {
    /// Runs `batch` in one transaction (see [`run_jobs`]) and commits it. `Err` = nothing
    /// of the batch was committed; every job is answered with it.
    fn commit_batch(&mut self, batch: &mut [Box<dyn Job>]) -> StoreResult<()>;
    /// Everything so far is committed: make it durable / compact it (e.g. a checkpoint).
    fn flush(&mut self) -> StoreResult<()>;
    /// The writer is stopping (after the last batch).
    fn close(&mut self) {}
}

/// A read connection (owned by its reader thread).
pub trait Reader: Send + 'static {
    /// Runs `f` inside one read snapshot. `Err` = the snapshot could not start (or end).
    fn snapshot(&mut self, f: &mut dyn FnMut(&mut dyn ReadTx)) -> StoreResult<()>;
}

/// A transaction that can also set savepoints (what [`run_jobs`] needs).
pub trait SavepointTx {
    /// Runs one statement without parameters.
    fn exec(&mut self, sql: &'static str) -> StoreResult<()>;
    /// The transaction the jobs see.
    fn tx(&mut self) -> &mut dyn Tx;
    /// Moves whenever the transaction changes a row (or a statement fails and leaves it
    /// aborted): how a job run without a savepoint is seen to have left a trace.
    fn trace(&mut self) -> Trace;
    /// Releases the previous job's savepoint and sets the next one (a network engine
    /// sends both in one round trip).
    fn next_savepoint(&mut self) -> StoreResult<()> {
        self.exec("RELEASE SAVEPOINT job")?;
        self.exec("SAVEPOINT job")
    }
}

/// What a transaction has done so far (see [`SavepointTx::trace`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trace {
    /// Rows changed (or write statements that changed something).
    pub changes: u64,
    /// Statements that failed and left the transaction unusable (PostgreSQL aborts it).
    pub failures: u64,
}

/// Runs every job of `batch` inside the caller's open transaction, each in a savepoint so
/// a refused job (`run` = false) leaves no trace and the batch goes on; so does a job that
/// succeeded past a failed statement that left the transaction unusable ([`Job::undone`]).
/// A job that needs no savepoint ([`Job::needs_savepoint`]) runs without one; should it
/// fail a statement, or refuse after changing something, `Err` ends the batch. `Err` = the
/// caller rolls the whole transaction back.
pub fn run_jobs(tx: &mut dyn SavepointTx, batch: &mut [Box<dyn Job>]) -> StoreResult<()> {
    let mut open = false;
    for job in batch.iter_mut() {
        if !job.needs_savepoint() {
            if open {
                tx.exec("RELEASE SAVEPOINT job")?;
                open = false;
            }
            let before = tx.trace();
            let kept = job.run(tx.tx());
            let after = tx.trace();
            if after.failures != before.failures || (!kept && after.changes != before.changes) {
                return Err(StoreError::Failed(
                    "a job without a savepoint failed after writing: its batch is rolled back".into(),
                ));
            }
            continue;
        }
        if open {
            tx.next_savepoint()?;
        } else {
            tx.exec("SAVEPOINT job")?;
        }
        let before = tx.trace();
        // The pre-commit check runs last, right before the savepoint is released.
        open = job.run(tx.tx());
        if open && tx.trace().failures != before.failures {
            // It went on past a failed statement: on PostgreSQL the transaction is aborted
            // until this savepoint is rolled back, and its batch-mates must not pay for it.
            job.undone(StoreError::Failed(
                "a statement of this request failed; nothing of it was stored".into(),
            ));
            open = false;
        }
        if !open {
            tx.exec("ROLLBACK TO SAVEPOINT job")?;
            tx.exec("RELEASE SAVEPOINT job")?;
        }
    }
    if open {
        tx.exec("RELEASE SAVEPOINT job")?;
    }
    Ok(())
}

enum Msg {
    Job(Box<dyn Job>),
    Flush(mpsc::Sender<StoreResult<()>>),
    Close,
}

enum ReadMsg {
    Job(Box<dyn ReadJob>),
    Close,
}

/// `impl Store` for an engine whose every call goes to its `queues` field: both engines
/// queue the same way, only their connections differ.
macro_rules! store_via_queues {
    ($engine:ty) => {
        impl $crate::store::Store for $engine {
            fn submit(&self, job: Box<dyn $crate::store::Job>) {
                self.queues.submit(job);
            }

            fn read(&self, job: Box<dyn $crate::store::ReadJob>) {
                self.queues.read(job);
            }

            fn flush(&self) -> $crate::store::StoreResult<()> {
                self.queues.flush()
            }

            fn sole_writer(&self) -> bool {
                self.holds_data_dir()
            }
        }
    };
}
pub(crate) use store_via_queues;

/// The queues and threads of a running store.
pub struct Queues {
    stats: Arc<CommitStats>,
    // `SyncSender` is `Sync`: submitting takes no lock.
    jobs: mpsc::SyncSender<Msg>,
    // One queue per reader, dealt round-robin: no reader waits on a lock shared with
    // another (a shared receiver woke both readers for every read).
    reads: Vec<mpsc::SyncSender<ReadMsg>>,
    next_reader: AtomicUsize,
    closed: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queues")
            .field("stats", &self.stats)
            .field("readers", &self.reads.len())
            .field("closed", &self.closed)
            .finish()
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> StoreResult<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| StoreError::Failed(e.to_string()))
}

impl Queues {
    /// Starts the writer thread and one thread per reader (`name` prefixes thread names).
    pub fn start<W: Writer, R: Reader>(
        name: &str,
        writer: W,
        readers: Vec<R>,
        options: StoreOptions,
    ) -> StoreResult<Self> {
        let stats = Arc::new(CommitStats::default());
        let (jobs, rx) = mpsc::sync_channel(options.write_queue.max(1));
        let mut threads = Vec::new();
        let writer_stats = Arc::clone(&stats);
        threads.push(spawn(&format!("{name}-store"), move || {
            writer_loop(writer, rx, &writer_stats)
        })?);
        let per_reader = (options.read_queue / readers.len().max(1)).max(1);
        let mut reads = Vec::with_capacity(readers.len());
        for (i, reader) in readers.into_iter().enumerate() {
            let (tx, rx) = mpsc::sync_channel(per_reader);
            reads.push(tx);
            let stats = Arc::clone(&stats);
            threads.push(spawn(&format!("{name}-read-{i}"), move || {
                reader_loop(reader, &rx, &stats)
            })?);
        }
        Ok(Self {
            stats,
            jobs,
            reads,
            next_reader: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            threads: Mutex::new(threads),
        })
    }

    /// Group-commit counters.
    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }

    fn refused(&self) {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// See [`super::Store::submit`].
    pub fn submit(&self, job: Box<dyn Job>) {
        if self.closed.load(Ordering::Relaxed) {
            return job.finish(Err(StoreError::Closed));
        }
        match self.jobs.try_send(Msg::Job(job)) {
            Ok(()) => {}
            Err(TrySendError::Full(Msg::Job(job))) => {
                self.refused();
                job.finish(Err(StoreError::Busy));
            }
            Err(TrySendError::Disconnected(Msg::Job(job))) => job.finish(Err(StoreError::Closed)),
            Err(_) => {}
        }
    }

    /// See [`super::Store::read`].
    pub fn read(&self, job: Box<dyn ReadJob>) {
        if self.closed.load(Ordering::Relaxed) {
            return job.fail(StoreError::Closed);
        }
        // Round-robin; a full reader queue passes the job to the next; all full = busy.
        let n = self.reads.len();
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let mut msg = ReadMsg::Job(job);
        for k in 0..n {
            match self.reads[(start + k) % n].try_send(msg) {
                Ok(()) => return,
                Err(TrySendError::Full(m)) => msg = m,
                Err(TrySendError::Disconnected(m)) => {
                    if let ReadMsg::Job(job) = m {
                        job.fail(StoreError::Closed);
                    }
                    return;
                }
            }
        }
        if let ReadMsg::Job(job) = msg {
            self.refused();
            job.fail(StoreError::Busy);
        }
    }

    /// See [`super::Store::flush`].
    pub fn flush(&self) -> StoreResult<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(StoreError::Closed);
        }
        let (tx, rx) = mpsc::channel();
        self.jobs.send(Msg::Flush(tx)).map_err(|_| StoreError::Closed)?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Stops the writer after the queued jobs, and the readers.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        // Blocking sends: a full queue drains, then the close is taken.
        let _ = self.jobs.send(Msg::Close);
        for reader in &self.reads {
            let _ = reader.send(ReadMsg::Close);
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for h in threads {
            let _ = h.join();
        }
    }
}

impl Drop for Queues {
    fn drop(&mut self) {
        self.close();
    }
}

fn writer_loop<W: Writer>(mut writer: W, rx: mpsc::Receiver<Msg>, stats: &CommitStats) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    let mut flushes = Vec::new();
    let mut closing = false;
    while !closing {
        let Ok(first) = rx.recv() else { break };
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Job(j) => batch.push(j),
                Msg::Flush(f) => flushes.push(f),
                Msg::Close => closing = true,
            }
            if batch.len() < MAX_BATCH && !closing {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let result = writer.commit_batch(&mut batch);
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats.jobs.fetch_add(batch.len() as u64, Ordering::Relaxed);
            if let Err(e) = &result {
                tracing::error!(error = %e, jobs = batch.len(), "batch commit failed");
            }
            super::finish_batch(&mut batch, result);
        }
        for f in flushes.drain(..) {
            let _ = f.send(writer.flush());
        }
    }
    // Whatever was queued after the close is answered, not dropped.
    while let Ok(msg) = rx.try_recv() {
        match msg {
            Msg::Job(j) => j.finish(Err(StoreError::Closed)),
            Msg::Flush(f) => {
                let _ = f.send(Err(StoreError::Closed));
            }
            Msg::Close => {}
        }
    }
    writer.close();
}

fn reader_loop<R: Reader>(mut reader: R, rx: &mpsc::Receiver<ReadMsg>, stats: &CommitStats) {
    let mut batch: Vec<Box<dyn ReadJob>> = Vec::with_capacity(MAX_READ_BATCH);
    let mut closing = false;
    while !closing {
        // Whatever is queued, up to a batch.
        match rx.recv() {
            Ok(ReadMsg::Job(j)) => batch.push(j),
            Ok(ReadMsg::Close) | Err(_) => closing = true,
        }
        while !closing && batch.len() < MAX_READ_BATCH {
            match rx.try_recv() {
                Ok(ReadMsg::Job(j)) => batch.push(j),
                Ok(ReadMsg::Close) => closing = true,
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        stats.reads.fetch_add(batch.len() as u64, Ordering::Relaxed);
        // One snapshot for the batch: every job in it was queued before it starts, so each
        // sees everything committed before it was queued, and never part of a batch.
        let result = reader.snapshot(&mut |tx| {
            for job in batch.drain(..) {
                job.run(tx);
            }
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "a read snapshot failed");
            // Jobs not run (the snapshot did not start) are answered with the failure.
            for job in batch.drain(..) {
                job.fail(e.clone());
            }
        }
    }
}
