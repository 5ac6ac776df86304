//! The embedded store: one SQLite database (WAL, `synchronous=FULL`) in the data dir,
//! written by one thread that group-commits batches of jobs, read by a small pool of
//! read-only connections.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::{Job, ReadJob, ReadTx, RegCursor, SeatView, Store, StoreError, StoreResult, Tx};
use crate::model::{
    Account, AuditEvent, FeatureKind, FeatureRegistration, License, LicenseSource, LicenseTerms, Registration, Role,
};

/// File name inside the data dir.
pub const DB_FILE: &str = "keyfloat.db";

/// Most jobs committed together; bounds the latency a batch adds.
const MAX_BATCH: usize = 512;

/// Most reads served in one snapshot by one reader.
const MAX_READ_BATCH: usize = 32;

/// Schema migrations; `PRAGMA user_version` = how many have been applied.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE licenses (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    product TEXT NOT NULL,
    terms TEXT NOT NULL,
    activation_hardware_id TEXT NOT NULL,
    source TEXT NOT NULL,
    added_at INTEGER NOT NULL,
    total_consumptions INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX licenses_by_product ON licenses(product, seq);
CREATE TABLE feature_consumptions (
    license_id INTEGER NOT NULL REFERENCES licenses(id) ON DELETE CASCADE,
    feature TEXT NOT NULL,
    total INTEGER NOT NULL,
    PRIMARY KEY (license_id, feature)
);
CREATE TABLE registrations (
    license_id INTEGER NOT NULL REFERENCES licenses(id) ON DELETE CASCADE,
    user TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    borrowed_until INTEGER,
    os_hostname TEXT,
    ip_local TEXT,
    user_info TEXT,
    PRIMARY KEY (license_id, user)
);
CREATE TABLE feature_registrations (
    license_id INTEGER NOT NULL REFERENCES licenses(id) ON DELETE CASCADE,
    feature TEXT NOT NULL,
    user TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    os_hostname TEXT,
    ip_local TEXT,
    user_info TEXT,
    PRIMARY KEY (license_id, feature, user)
);
CREATE TABLE accounts (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT,
    license_id INTEGER,
    detail TEXT NOT NULL
);
"#,
    // Seats in O(1): a new seat used to count (and purge) by walking every registration of
    // its license, ~6 ms per seat at 10,000 seats. Expired rows are now found through an
    // index and the seat rows of each license are counted by triggers; after a purge every
    // remaining row is an active seat, so the count is one row read.
    r#"
CREATE INDEX registrations_by_expiry ON registrations(license_id, expires_at);
CREATE TABLE seat_counts (
    license_id INTEGER PRIMARY KEY REFERENCES licenses(id) ON DELETE CASCADE,
    n INTEGER NOT NULL
);
INSERT INTO seat_counts (license_id, n) SELECT license_id, COUNT(*) FROM registrations GROUP BY license_id;
CREATE TRIGGER seat_counts_insert AFTER INSERT ON registrations BEGIN
    INSERT INTO seat_counts (license_id, n) VALUES (new.license_id, 1)
        ON CONFLICT (license_id) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER seat_counts_delete AFTER DELETE ON registrations BEGIN
    UPDATE seat_counts SET n = n - 1 WHERE license_id = old.license_id;
END;
"#,
    // Token generations: a token names its account's generation; bumping it (password or
    // role change, deletion, `keyfloat user revoke`) refuses older tokens. Kept apart from
    // `accounts` so a deleted and re-created account does not revive old tokens.
    r#"
CREATE TABLE token_generations (
    username TEXT PRIMARY KEY,
    generation INTEGER NOT NULL
);
"#,
    // Tamper-evident audit log: each record carries the SHA-256 of the previous record's
    // hash and its own content; `audit_chain` records where the chain starts (records
    // older than this migration are outside it) and its head.
    r#"
ALTER TABLE audit ADD COLUMN prev_hash TEXT;
ALTER TABLE audit ADD COLUMN hash TEXT;
CREATE TABLE audit_chain (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    start_id INTEGER NOT NULL,
    genesis TEXT NOT NULL,
    head_id INTEGER,
    head_hash TEXT,
    created_at INTEGER NOT NULL
);
INSERT INTO audit_chain (one, start_id, genesis, created_at)
    SELECT 1, COALESCE(MAX(id), 0) + 1, lower(hex(randomblob(32))), CAST(strftime('%s','now') AS INTEGER) * 1000000
    FROM audit;
"#,
];

/// Sizes of the store's queues and read pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Write jobs that may wait for the writer; one more is refused with `Busy`.
    pub write_queue: usize,
    /// Reads that may wait for a reader; one more is refused with `Busy`.
    pub read_queue: usize,
    /// Read-only connections (each on its own thread).
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

enum Msg {
    Job(Box<dyn Job>),
    Flush(mpsc::Sender<StoreResult<()>>),
    Close,
}

enum ReadMsg {
    Job(Box<dyn ReadJob>),
    Close,
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

/// SQLite-backed [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
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

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Job(_) => "Job",
            Self::Flush(_) => "Flush",
            Self::Close => "Close",
        })
    }
}

impl std::fmt::Debug for ReadMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Job(_) => "Job",
            Self::Close => "Close",
        })
    }
}

fn open_connection(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk (WAL fsynced) before it returns; power-loss safe.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

fn open_reader(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let applied = usize::try_from(version).unwrap_or(0);
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Failed(format!(
            "database schema version {applied} is newer than this build ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> StoreResult<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| StoreError::Failed(e.to_string()))
}

impl SqliteStore {
    /// Opens (creating and migrating) `<data_dir>/keyfloat.db` and starts the writer and
    /// reader threads with the default [`StoreOptions`].
    pub fn open(data_dir: &Path) -> StoreResult<Self> {
        Self::open_with(data_dir, StoreOptions::default())
    }

    /// [`SqliteStore::open`] with explicit queue and pool sizes.
    pub fn open_with(data_dir: &Path, options: StoreOptions) -> StoreResult<Self> {
        let private = |e: std::io::Error| StoreError::Failed(format!("{}: {e}", data_dir.display()));
        crate::files::make_private_dir(data_dir).map_err(private)?;
        let path = data_dir.join(DB_FILE);
        // SQLite creates the WAL and shared-memory files with the database's mode.
        crate::files::create_private_file(&path).map_err(private)?;
        let mut conn = open_connection(&path)?;
        migrate(&mut conn)?;
        for p in crate::files::private_paths(data_dir).iter().skip(1) {
            if p.exists() {
                crate::files::make_private_file(p).map_err(private)?;
            }
        }
        let readers = (0..options.readers.max(1))
            .map(|_| open_reader(&path))
            .collect::<StoreResult<Vec<_>>>()?;
        let stats = Arc::new(CommitStats::default());
        let (jobs, rx) = mpsc::sync_channel(options.write_queue.max(1));
        let mut threads = Vec::new();
        let writer_stats = Arc::clone(&stats);
        threads.push(spawn("keyfloat-store", move || writer_loop(conn, rx, &writer_stats))?);
        let per_reader = (options.read_queue / readers.len()).max(1);
        let mut reads = Vec::with_capacity(readers.len());
        for (i, conn) in readers.into_iter().enumerate() {
            let (tx, rx) = mpsc::sync_channel(per_reader);
            reads.push(tx);
            let stats = Arc::clone(&stats);
            threads.push(spawn(&format!("keyfloat-read-{i}"), move || {
                reader_loop(conn, &rx, &stats)
            })?);
        }
        Ok(Self {
            path,
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

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
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

    fn refused(&self) {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl Store for SqliteStore {
    fn submit(&self, job: Box<dyn Job>) {
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

    fn read(&self, job: Box<dyn ReadJob>) {
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

    fn flush(&self) -> StoreResult<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(StoreError::Closed);
        }
        let (tx, rx) = mpsc::channel();
        self.jobs.send(Msg::Flush(tx)).map_err(|_| StoreError::Closed)?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }
}

/// Runs a statement without parameters through the connection's statement cache.
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql).and_then(|mut st| st.execute([]).map(|_| ()))
}

fn checkpoint(conn: &Connection) -> StoreResult<()> {
    Ok(conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?)
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Msg>, stats: &CommitStats) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    let mut flushes = Vec::new();
    let mut terms = HashMap::new();
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
            let result = run_batch(&conn, &mut terms, &mut batch);
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats.jobs.fetch_add(batch.len() as u64, Ordering::Relaxed);
            if let Err(e) = &result {
                // A failed commit rolled back inserts the cache may already know about.
                terms.clear();
                tracing::error!(error = %e, jobs = batch.len(), "batch commit failed");
            }
            super::finish_batch(&mut batch, result);
        }
        for f in flushes.drain(..) {
            let _ = f.send(checkpoint(&conn));
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
    // Leave a checkpointed database behind.
    let _ = checkpoint(&conn);
}

fn run_batch(
    conn: &Connection,
    terms: &mut HashMap<u64, Arc<LicenseTerms>>,
    batch: &mut [Box<dyn Job>],
) -> StoreResult<()> {
    exec(conn, "BEGIN IMMEDIATE")?;
    let mut tx = SqliteTx {
        conn,
        terms: Some(terms),
    };
    for job in batch.iter_mut() {
        if let Err(e) = exec(conn, "SAVEPOINT job") {
            let _ = exec(conn, "ROLLBACK");
            return Err(e.into());
        }
        // The pre-commit check runs last, right before the savepoint is released.
        let keep = job.run(&mut tx);
        let end = if keep {
            exec(conn, "RELEASE job")
        } else {
            exec(conn, "ROLLBACK TO job").and_then(|()| exec(conn, "RELEASE job"))
        };
        if let Err(e) = end {
            let _ = exec(conn, "ROLLBACK");
            return Err(e.into());
        }
    }
    if let Err(e) = exec(conn, "COMMIT") {
        let _ = exec(conn, "ROLLBACK");
        return Err(e.into());
    }
    Ok(())
}

fn reader_loop(conn: Connection, rx: &mpsc::Receiver<ReadMsg>, stats: &CommitStats) {
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
        if let Err(e) = exec(&conn, "BEGIN") {
            let e = StoreError::from(e);
            for job in batch.drain(..) {
                job.fail(e.clone());
            }
            continue;
        }
        let mut tx = SqliteTx {
            conn: &conn,
            terms: None,
        };
        for job in batch.drain(..) {
            job.run(&mut tx);
        }
        if let Err(e) = exec(&conn, "COMMIT") {
            tracing::error!(error = %e, "ending a read snapshot failed");
            let _ = exec(&conn, "ROLLBACK");
        }
    }
}

struct SqliteTx<'c> {
    conn: &'c Connection,
    /// Parsed terms by license id (writer only): terms never change after insertion, so
    /// every request after the first skips the JSON parse. Only consulted for rows that
    /// exist.
    terms: Option<&'c mut HashMap<u64, Arc<LicenseTerms>>>,
}

// License ids are u64 on the wire; SQLite integers are i64. The cast keeps all 64 bits.
fn sid(id: u64) -> i64 {
    id as i64
}
fn uid(id: i64) -> u64 {
    id as u64
}

type LicenseRow = (u64, String, String, String, i64, i64);

impl SqliteTx<'_> {
    fn feature_totals(&self, id: u64) -> StoreResult<BTreeMap<String, i64>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT feature, total FROM feature_consumptions WHERE license_id = ?1")?;
        let rows = st.query_map([sid(id)], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn license_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LicenseRow> {
        Ok((uid(r.get(0)?), r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
    }

    fn build(&mut self, row: LicenseRow) -> StoreResult<License> {
        let (id, terms, hw, source, added_at, total) = row;
        let parse = |terms: &str| -> StoreResult<Arc<LicenseTerms>> {
            serde_json::from_str(terms)
                .map(Arc::new)
                .map_err(|e| StoreError::Failed(format!("license {id}: bad terms: {e}")))
        };
        let terms = match self.terms.as_deref_mut() {
            Some(cache) => match cache.get(&id) {
                Some(t) => Arc::clone(t),
                None => {
                    let t = parse(&terms)?;
                    cache.insert(id, Arc::clone(&t));
                    t
                }
            },
            None => parse(&terms)?,
        };
        Ok(License {
            id,
            activation_hardware_id: hw,
            source: if source == "file" {
                LicenseSource::File
            } else {
                LicenseSource::Api
            },
            added_at,
            total_consumptions: total,
            // Only consumption features have totals: most licenses need no query here.
            feature_totals: if terms.features.iter().any(|f| f.kind == FeatureKind::Consumption) {
                self.feature_totals(id)?
            } else {
                BTreeMap::new()
            },
            terms,
        })
    }
}

// Column lists as macros so statement texts are `concat!` constants: the statement cache
// is keyed by a `&'static str`, never by a string formatted per call.
macro_rules! license_cols {
    () => {
        "id, terms, activation_hardware_id, source, added_at, total_consumptions"
    };
}
macro_rules! reg_cols {
    () => {
        "license_id, user, registered_at, expires_at, borrowed_until, os_hostname, ip_local, user_info"
    };
}
macro_rules! freg_cols {
    () => {
        "license_id, feature, user, registered_at, expires_at, os_hostname, ip_local, user_info"
    };
}

/// A seat row that is no longer held at `?2` (lapsed and not borrowed).
macro_rules! lapsed {
    () => {
        "expires_at <= ?2 AND (borrowed_until IS NULL OR borrowed_until <= ?2)"
    };
}

fn reg_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Registration> {
    Ok(Registration {
        license_id: uid(r.get(0)?),
        user: r.get(1)?,
        registered_at: r.get(2)?,
        expires_at: r.get(3)?,
        borrowed_until: r.get(4)?,
        os_hostname: r.get(5)?,
        ip_local: r.get(6)?,
        user_info: r.get(7)?,
    })
}

fn freg_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FeatureRegistration> {
    Ok(FeatureRegistration {
        license_id: uid(r.get(0)?),
        feature: r.get(1)?,
        user: r.get(2)?,
        registered_at: r.get(3)?,
        expires_at: r.get(4)?,
        os_hostname: r.get(5)?,
        ip_local: r.get(6)?,
        user_info: r.get(7)?,
    })
}

fn account_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

fn limit(n: u32) -> i64 {
    i64::from(n)
}

impl ReadTx for SqliteTx<'_> {
    fn licenses(&mut self) -> StoreResult<Vec<License>> {
        let rows: Vec<_> = {
            let mut st =
                self.conn
                    .prepare_cached(concat!("SELECT ", license_cols!(), " FROM licenses ORDER BY seq"))?;
            let rows = st.query_map([], Self::license_from_row)?;
            rows.collect::<Result<_, _>>()?
        };
        rows.into_iter().map(|row| self.build(row)).collect()
    }

    fn license(&mut self, id: u64) -> StoreResult<Option<License>> {
        let row = self
            .conn
            .prepare_cached(concat!("SELECT ", license_cols!(), " FROM licenses WHERE id = ?1"))?
            .query_row([sid(id)], Self::license_from_row)
            .optional()?;
        row.map(|row| self.build(row)).transpose()
    }

    fn license_totals(&mut self, id: u64, features: bool) -> StoreResult<Option<(i64, BTreeMap<String, i64>)>> {
        let total: Option<i64> = self
            .conn
            .prepare_cached("SELECT total_consumptions FROM licenses WHERE id = ?1")?
            .query_row([sid(id)], |r| r.get(0))
            .optional()?;
        let Some(total) = total else { return Ok(None) };
        let features = if features {
            self.feature_totals(id)?
        } else {
            BTreeMap::new()
        };
        Ok(Some((total, features)))
    }

    fn seat_view(&mut self, license_id: u64, user: Option<&str>, now: i64) -> StoreResult<Option<SeatView>> {
        // One statement instead of three: a heartbeat costs one VDBE program per read.
        Ok(self
            .conn
            .prepare_cached(concat!(
                "SELECT l.total_consumptions,
                   COALESCE((SELECT n FROM seat_counts WHERE license_id = ?1), 0),
                   (SELECT COUNT(*) FROM registrations WHERE license_id = ?1 AND ",
                lapsed!(),
                "),
                   r.user, r.registered_at, r.expires_at, r.borrowed_until, r.os_hostname, r.ip_local, r.user_info
                 FROM licenses l LEFT JOIN registrations r ON r.license_id = l.id AND r.user = ?3
                 WHERE l.id = ?1"
            ))?
            .query_row(params![sid(license_id), now, user], |r| {
                let registration = match r.get::<_, Option<String>>(3)? {
                    None => None,
                    Some(user) => Some(Registration {
                        license_id,
                        user,
                        registered_at: r.get(4)?,
                        expires_at: r.get(5)?,
                        borrowed_until: r.get(6)?,
                        os_hostname: r.get(7)?,
                        ip_local: r.get(8)?,
                        user_info: r.get(9)?,
                    }),
                };
                let (rows, lapsed): (i64, i64) = (r.get(1)?, r.get(2)?);
                Ok(SeatView {
                    total_consumptions: r.get(0)?,
                    in_use: usize::try_from(rows - lapsed).unwrap_or(0),
                    lapsed: usize::try_from(lapsed).unwrap_or(0),
                    registration,
                })
            })
            .optional()?)
    }

    fn registrations_page(
        &mut self,
        license_id: Option<u64>,
        after: Option<&RegCursor>,
        n: u32,
    ) -> StoreResult<Vec<Registration>> {
        let mut st = self.conn.prepare_cached(concat!(
            "SELECT ",
            reg_cols!(),
            " FROM registrations WHERE (?1 IS NULL OR license_id = ?1)
               AND (?2 IS NULL OR (license_id, user) > (?2, ?3))
             ORDER BY license_id, user LIMIT ?4"
        ))?;
        let rows = st.query_map(
            params![
                license_id.map(sid),
                after.map(|c| sid(c.license_id)),
                after.map(|c| c.user.as_str()),
                limit(n)
            ],
            reg_from_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn registration(&mut self, license_id: u64, user: &str) -> StoreResult<Option<Registration>> {
        Ok(self
            .conn
            .prepare_cached(concat!(
                "SELECT ",
                reg_cols!(),
                " FROM registrations WHERE license_id = ?1 AND user = ?2"
            ))?
            .query_row(params![sid(license_id), user], reg_from_row)
            .optional()?)
    }

    fn count_active_registrations(&mut self, license_id: u64, now: i64) -> StoreResult<usize> {
        // The trigger-kept counter holds every row; the lapsed rows not yet purged (an index
        // range over the expired ones: the writer purges them on the new-seat path and
        // periodically) are subtracted. No write.
        let n: i64 = self
            .conn
            .prepare_cached(concat!(
                "SELECT COALESCE((SELECT n FROM seat_counts WHERE license_id = ?1), 0)
                   - (SELECT COUNT(*) FROM registrations WHERE license_id = ?1 AND ",
                lapsed!(),
                ")"
            ))?
            .query_row(params![sid(license_id), now], |r| r.get(0))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn feature_registrations_page(
        &mut self,
        license_id: Option<u64>,
        feature: Option<&str>,
        after: Option<&RegCursor>,
        n: u32,
    ) -> StoreResult<Vec<FeatureRegistration>> {
        let mut st = self.conn.prepare_cached(concat!(
            "SELECT ",
            freg_cols!(),
            " FROM feature_registrations
             WHERE (?1 IS NULL OR license_id = ?1) AND (?2 IS NULL OR feature = ?2)
               AND (?3 IS NULL OR (license_id, feature, user) > (?3, ?4, ?5))
             ORDER BY license_id, feature, user LIMIT ?6"
        ))?;
        let rows = st.query_map(
            params![
                license_id.map(sid),
                feature,
                after.map(|c| sid(c.license_id)),
                after.map(|c| c.feature.as_str()),
                after.map(|c| c.user.as_str()),
                limit(n)
            ],
            freg_from_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn feature_registration(
        &mut self,
        license_id: u64,
        feature: &str,
        user: &str,
    ) -> StoreResult<Option<FeatureRegistration>> {
        Ok(self
            .conn
            .prepare_cached(concat!(
                "SELECT ",
                freg_cols!(),
                " FROM feature_registrations WHERE license_id = ?1 AND feature = ?2 AND user = ?3"
            ))?
            .query_row(params![sid(license_id), feature, user], freg_from_row)
            .optional()?)
    }

    fn feature_usage(&mut self, license_id: u64, now: i64) -> StoreResult<BTreeMap<String, usize>> {
        // A slot goes with its user's seat: slots of a lapsed (unpurged) seat do not count.
        let mut st = self.conn.prepare_cached(
            "SELECT f.feature, COUNT(*) FROM feature_registrations f
             WHERE f.license_id = ?1 AND f.expires_at > ?2
               AND NOT EXISTS (SELECT 1 FROM registrations r WHERE r.license_id = ?1 AND r.user = f.user
                                 AND r.expires_at <= ?2 AND (r.borrowed_until IS NULL OR r.borrowed_until <= ?2))
             GROUP BY f.feature",
        )?;
        let rows = st.query_map(params![sid(license_id), now], |r| {
            Ok((
                r.get::<_, String>(0)?,
                usize::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn account(&mut self, username: &str) -> StoreResult<Option<Account>> {
        let row = self
            .conn
            .prepare_cached("SELECT username, password_hash, role FROM accounts WHERE username = ?1")?
            .query_row([username], account_from_row)
            .optional()?;
        Ok(row.and_then(|(username, password_hash, role)| {
            Role::parse(&role).map(|role| Account {
                username,
                password_hash,
                role,
            })
        }))
    }

    fn accounts(&mut self) -> StoreResult<Vec<Account>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT username, password_hash, role FROM accounts ORDER BY username")?;
        let rows = st.query_map([], account_from_row)?;
        let mut out = Vec::new();
        for row in rows {
            let (username, password_hash, role) = row?;
            if let Some(role) = Role::parse(&role) {
                out.push(Account {
                    username,
                    password_hash,
                    role,
                });
            }
        }
        Ok(out)
    }

    fn audit_events(&mut self, before: Option<i64>, n: u32) -> StoreResult<Vec<AuditEvent>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, at, kind, actor, license_id, detail FROM audit
             WHERE ?1 IS NULL OR id < ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![before, limit(n)], |r| {
            Ok(AuditEvent {
                id: r.get(0)?,
                at: r.get(1)?,
                kind: r.get(2)?,
                actor: r.get(3)?,
                license_id: r.get::<_, Option<i64>>(4)?.map(uid),
                detail: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl Tx for SqliteTx<'_> {
    fn next_license_id(&mut self) -> StoreResult<u64> {
        // Ids look like LicenseSpring's (16 digits) and never collide with existing ones.
        let max: Option<i64> = self
            .conn
            .prepare_cached("SELECT MAX(id) FROM licenses WHERE id < 9000000000000000")?
            .query_row([], |r| r.get(0))?;
        Ok(uid(max.unwrap_or(1_000_000_000_000_000).max(1_000_000_000_000_000) + 1))
    }

    fn insert_license(&mut self, l: &License) -> StoreResult<()> {
        if let Some(cache) = self.terms.as_deref_mut() {
            cache.insert(l.id, Arc::clone(&l.terms));
        }
        let terms = serde_json::to_string(&*l.terms).map_err(|e| StoreError::Failed(e.to_string()))?;
        let seq: i64 = self
            .conn
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) + 1 FROM licenses")?
            .query_row([], |r| r.get(0))?;
        self.conn
            .prepare_cached(
                "INSERT INTO licenses (id, seq, product, terms, activation_hardware_id, source, added_at, total_consumptions)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                sid(l.id),
                seq,
                l.terms.product,
                terms,
                l.activation_hardware_id,
                l.source.as_str(),
                l.added_at,
                l.total_consumptions
            ])?;
        for (f, total) in &l.feature_totals {
            self.set_feature_total(l.id, f, *total)?;
        }
        Ok(())
    }

    fn delete_license(&mut self, id: u64) -> StoreResult<bool> {
        if let Some(cache) = self.terms.as_deref_mut() {
            cache.remove(&id);
        }
        Ok(self
            .conn
            .prepare_cached("DELETE FROM licenses WHERE id = ?1")?
            .execute([sid(id)])?
            > 0)
    }

    fn set_total_consumptions(&mut self, id: u64, total: i64) -> StoreResult<()> {
        self.conn
            .prepare_cached("UPDATE licenses SET total_consumptions = ?2 WHERE id = ?1")?
            .execute(params![sid(id), total])?;
        Ok(())
    }

    fn set_feature_total(&mut self, id: u64, feature: &str, total: i64) -> StoreResult<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO feature_consumptions (license_id, feature, total) VALUES (?1, ?2, ?3)
                 ON CONFLICT (license_id, feature) DO UPDATE SET total = excluded.total",
            )?
            .execute(params![sid(id), feature, total])?;
        Ok(())
    }

    fn put_registration(&mut self, r: &Registration) -> StoreResult<()> {
        self.conn
            .prepare_cached(concat!(
                // An upsert, not INSERT OR REPLACE: the replace's implicit delete would not
                // fire the seat-count trigger.
                "INSERT INTO registrations (",
                reg_cols!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (license_id, user) DO UPDATE SET registered_at = excluded.registered_at,
                   expires_at = excluded.expires_at, borrowed_until = excluded.borrowed_until,
                   os_hostname = excluded.os_hostname, ip_local = excluded.ip_local,
                   user_info = excluded.user_info"
            ))?
            .execute(params![
                sid(r.license_id),
                r.user,
                r.registered_at,
                r.expires_at,
                r.borrowed_until,
                r.os_hostname,
                r.ip_local,
                r.user_info
            ])?;
        Ok(())
    }

    fn delete_registration(&mut self, license_id: u64, user: &str) -> StoreResult<bool> {
        self.conn
            .prepare_cached("DELETE FROM feature_registrations WHERE license_id = ?1 AND user = ?2")?
            .execute(params![sid(license_id), user])?;
        let n = self
            .conn
            .prepare_cached("DELETE FROM registrations WHERE license_id = ?1 AND user = ?2")?
            .execute(params![sid(license_id), user])?;
        Ok(n > 0)
    }

    fn delete_registrations(&mut self, license_id: Option<u64>) -> StoreResult<usize> {
        let id = license_id.map(sid);
        self.conn
            .prepare_cached("DELETE FROM feature_registrations WHERE ?1 IS NULL OR license_id = ?1")?
            .execute([id])?;
        Ok(self
            .conn
            .prepare_cached("DELETE FROM registrations WHERE ?1 IS NULL OR license_id = ?1")?
            .execute([id])?)
    }

    fn purge_expired(&mut self, license_id: Option<u64>, now: i64) -> StoreResult<usize> {
        // Feature slots of users whose seat lapsed go with the seat. One license: index
        // seeks over its expired rows only. All licenses: the periodic sweep.
        let (slots, seats) = match license_id {
            Some(id) => (
                self.conn
                    .prepare_cached(concat!(
                        "DELETE FROM feature_registrations WHERE license_id = ?1 AND (expires_at <= ?2 OR user IN
                           (SELECT user FROM registrations WHERE license_id = ?1 AND ",
                        lapsed!(),
                        "))"
                    ))?
                    .execute(params![sid(id), now])?,
                self.conn
                    .prepare_cached(concat!(
                        "DELETE FROM registrations WHERE license_id = ?1 AND ",
                        lapsed!()
                    ))?
                    .execute(params![sid(id), now])?,
            ),
            None => (
                self.conn
                    .prepare_cached(
                        "DELETE FROM feature_registrations WHERE expires_at <= ?1 OR EXISTS
                           (SELECT 1 FROM registrations r WHERE r.license_id = feature_registrations.license_id
                              AND r.user = feature_registrations.user AND r.expires_at <= ?1
                              AND (r.borrowed_until IS NULL OR r.borrowed_until <= ?1))",
                    )?
                    .execute(params![now])?,
                self.conn
                    .prepare_cached(
                        "DELETE FROM registrations WHERE expires_at <= ?1
                           AND (borrowed_until IS NULL OR borrowed_until <= ?1)",
                    )?
                    .execute(params![now])?,
            ),
        };
        Ok(slots + seats)
    }

    fn put_feature_registration(&mut self, r: &FeatureRegistration) -> StoreResult<()> {
        self.conn
            .prepare_cached(concat!(
                "INSERT OR REPLACE INTO feature_registrations (",
                freg_cols!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ))?
            .execute(params![
                sid(r.license_id),
                r.feature,
                r.user,
                r.registered_at,
                r.expires_at,
                r.os_hostname,
                r.ip_local,
                r.user_info
            ])?;
        Ok(())
    }

    fn delete_feature_registrations(
        &mut self,
        license_id: u64,
        feature: &str,
        user: Option<&str>,
    ) -> StoreResult<usize> {
        Ok(self
            .conn
            .prepare_cached(
                "DELETE FROM feature_registrations WHERE license_id = ?1 AND feature = ?2 AND (?3 IS NULL OR user = ?3)",
            )?
            .execute(params![sid(license_id), feature, user])?)
    }

    fn put_account(&mut self, a: &Account) -> StoreResult<()> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO accounts (username, password_hash, role) VALUES (?1, ?2, ?3)")?
            .execute(params![a.username, a.password_hash, a.role.as_str()])?;
        Ok(())
    }

    fn delete_account(&mut self, username: &str) -> StoreResult<bool> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM accounts WHERE username = ?1")?
            .execute([username])?;
        Ok(n > 0)
    }

    fn token_generations(&mut self) -> StoreResult<HashMap<String, u64>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT username, generation FROM token_generations")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, uid(r.get::<_, i64>(1)?))))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn bump_token_generation(&mut self, username: &str) -> StoreResult<u64> {
        Ok(uid(self
            .conn
            .prepare_cached(
                "INSERT INTO token_generations (username, generation) VALUES (?1, 1)
                 ON CONFLICT (username) DO UPDATE SET generation = generation + 1 RETURNING generation",
            )?
            .query_row([username], |r| r.get::<_, i64>(0))?))
    }

    fn audit(&mut self, e: &AuditEvent) -> StoreResult<()> {
        super::audit_chain::append(self.conn, e)
    }

    fn verify_audit_chain(&mut self) -> StoreResult<super::audit_chain::ChainReport> {
        super::audit_chain::verify(self.conn)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::error::ApiError;
    use crate::store::{transact, transact_blocking};

    #[test]
    fn migrates_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SqliteStore::open(dir.path()).unwrap();
            transact_blocking(&s, |tx| {
                tx.put_account(&Account {
                    username: "a".into(),
                    password_hash: "h".into(),
                    role: Role::Admin,
                })
            })
            .unwrap();
        }
        let s = SqliteStore::open(dir.path()).unwrap();
        let acc = transact_blocking(&s, |tx| tx.account("a")).unwrap();
        assert_eq!(acc.map(|a| a.role), Some(Role::Admin));
    }

    /// The trigger-kept seat counter agrees with the rows through new seats, renewals
    /// (upserts), lapses, releases, a refused job and a license removal.
    #[test]
    fn seat_counter_follows_the_registrations() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let license = crate::model::tests::sample();
        let id = license.id;
        let reg = move |user: &str, expires_at: i64| Registration {
            license_id: id,
            user: user.into(),
            registered_at: 0,
            expires_at,
            borrowed_until: None,
            os_hostname: None,
            ip_local: None,
            user_info: None,
        };
        let count = |now: i64| transact_blocking(&s, move |tx| tx.count_active_registrations(id, now)).unwrap();
        transact_blocking(&s, move |tx| {
            tx.insert_license(&license)?;
            for (i, user) in ["a", "b", "c"].into_iter().enumerate() {
                tx.put_registration(&reg(user, 100 + i as i64))?;
            }
            // A renewal is an upsert: still three seats.
            tx.put_registration(&reg("a", 500))
        })
        .unwrap();
        assert_eq!(count(50), 3);
        // "b" (expires 101) and "c" (102) lapse; "a" (500) stays.
        assert_eq!(count(200), 1);
        let refused = transact_blocking(&s, move |tx| -> Result<(), ApiError> {
            tx.put_registration(&reg("d", 900))?;
            Err(ApiError::bad_request("nope", "refused"))
        });
        assert!(refused.is_err());
        assert_eq!(count(200), 1, "a refused job's seat is not counted");
        transact_blocking(&s, move |tx| tx.delete_registration(id, "a")).unwrap();
        assert_eq!(count(200), 0);
        transact_blocking(&s, move |tx| {
            tx.put_registration(&reg("e", 900))?;
            tx.delete_license(id)
        })
        .unwrap();
        assert_eq!(count(200), 0);
    }

    #[test]
    fn a_refused_job_leaves_no_trace_and_others_commit() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let refused = transact_blocking(&s, |tx| -> Result<(), ApiError> {
            tx.put_account(&Account {
                username: "x".into(),
                password_hash: "h".into(),
                role: Role::User,
            })?;
            Err(ApiError::bad_request("nope", "refused"))
        });
        assert_eq!(refused.unwrap_err().code, "nope");
        assert!(transact_blocking(&s, |tx| tx.account("x")).unwrap().is_none());
    }

    /// Jobs queued while a batch is running are committed together in the next one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_jobs_share_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let blocker = {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                crate::store::transact(s.as_ref(), move |_| {
                    let _ = started_tx.send(());
                    let _ = hold.recv();
                    Ok::<_, StoreError>(())
                })
                .await
            })
        };
        started.recv().unwrap();
        let before = s.stats().batches.load(Ordering::Relaxed);
        // `transact` queues at call time: all 100 are queued behind the blocker.
        let jobs: Vec<_> = (0..100)
            .map(|i| {
                crate::store::transact(s.as_ref(), move |tx| {
                    tx.put_account(&Account {
                        username: format!("u{i}"),
                        password_hash: "h".into(),
                        role: Role::User,
                    })
                })
            })
            .collect();
        release.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        for j in jobs {
            j.await.unwrap();
        }
        let batches = s.stats().batches.load(Ordering::Relaxed) - before;
        assert!(batches <= 2, "100 queued jobs took {batches} commits");
        let n = crate::store::transact(s.as_ref(), |tx| tx.accounts().map(|v| v.len()))
            .await
            .unwrap();
        assert_eq!(n, 100);
    }

    #[test]
    fn a_panicking_job_is_an_internal_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let r: Result<(), ApiError> = transact_blocking(&s, |_| panic!("boom"));
        let e = r.unwrap_err();
        assert_eq!(e.code, "internal_error");
        assert!(e.request_id.is_some() && !e.message.contains("boom"), "{e:?}");
        assert!(transact_blocking(&s, |tx| tx.accounts()).is_ok());
    }

    fn seat(license_id: u64, user: &str, expires_at: i64) -> Registration {
        Registration {
            license_id,
            user: user.into(),
            registered_at: 0,
            expires_at,
            borrowed_until: None,
            os_hostname: None,
            ip_local: None,
            user_info: None,
        }
    }

    fn with_license(s: &SqliteStore) -> u64 {
        let license = crate::model::tests::sample();
        let id = license.id;
        transact_blocking(s, move |tx| tx.insert_license(&license)).unwrap();
        id
    }

    /// Counting seats is a pure read: lapsed rows are skipped, not deleted (a read-only
    /// connection could not delete them); the writer's purge deletes them.
    #[test]
    fn seat_count_is_a_pure_read_and_the_writer_purges() {
        use crate::store::read_blocking;
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let id = with_license(&s);
        transact_blocking(&s, move |tx| {
            tx.put_registration(&seat(id, "live", 1_000))?;
            tx.put_registration(&seat(id, "lapsed", 10))?;
            let mut borrowed = seat(id, "borrowed", 10);
            borrowed.borrowed_until = Some(2_000);
            tx.put_registration(&borrowed)
        })
        .unwrap();
        let count = |now: i64| read_blocking(&s, move |tx| tx.count_active_registrations(id, now)).unwrap();
        let rows = || read_blocking(&s, move |tx| tx.registrations(Some(id)).map(|v| v.len())).unwrap();
        assert_eq!(count(5), 3);
        assert_eq!(count(100), 2, "the lapsed seat is not counted");
        assert_eq!(rows(), 3, "…and not deleted by the read");
        assert_eq!(count(1_500), 1, "only the borrowed seat is held");
        let view = read_blocking(&s, move |tx| tx.seat_view(id, Some("lapsed"), 100))
            .unwrap()
            .unwrap();
        assert_eq!((view.in_use, view.lapsed, view.total_consumptions), (2, 1, 4));
        assert_eq!(view.registration.map(|r| r.expires_at), Some(10));
        let view = read_blocking(&s, move |tx| tx.seat_view(id, None, 100))
            .unwrap()
            .unwrap();
        assert!(view.registration.is_none());
        assert!(read_blocking(&s, move |tx| tx.seat_view(id + 1, None, 100))
            .unwrap()
            .is_none());
        let purged = transact_blocking(&s, move |tx| tx.purge_expired(None, 100)).unwrap();
        assert_eq!(purged, 1);
        assert_eq!(rows(), 2);
        assert_eq!(count(100), 2, "the trigger-kept counter followed the purge");
        assert_eq!(
            transact_blocking(&s, move |tx| tx.purge_expired(Some(id), 1_500)).unwrap(),
            1
        );
        assert_eq!(count(1_500), 1);
    }

    /// A reader never observes part of a batch: 200 consumption jobs, each moving the
    /// license total and a feature total together, are committed as one batch while
    /// readers read both totals in a loop, including while the batch is half applied.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_never_see_a_partial_batch() {
        use crate::store::{read, transact};
        use std::sync::atomic::AtomicBool;
        const JOBS: i64 = 200;
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let license = crate::model::tests::sample();
        let id = license.id;
        transact(s.as_ref(), move |tx| tx.insert_license(&license))
            .await
            .unwrap();
        // Hold the writer so every job below lands in one batch.
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let blocker = crate::store::transact(s.as_ref(), move |_| {
            let _ = started_tx.send(());
            let _ = hold.recv();
            Ok::<_, StoreError>(())
        });
        started.recv().unwrap();
        // Half way through the batch a job waits until readers have read meanwhile.
        let reads_mid_batch = Arc::new(AtomicU64::new(0));
        let mid = Arc::new(AtomicBool::new(false));
        let jobs: Vec<_> = (1..=JOBS)
            .map(|i| {
                let (reads_mid_batch, mid) = (Arc::clone(&reads_mid_batch), Arc::clone(&mid));
                transact(s.as_ref(), move |tx| {
                    tx.set_total_consumptions(id, i)?;
                    tx.set_feature_total(id, "f", i)?;
                    if i == JOBS / 2 {
                        mid.store(true, Ordering::SeqCst);
                        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                        while reads_mid_batch.load(Ordering::SeqCst) < 50 && std::time::Instant::now() < deadline {
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                    }
                    Ok::<_, StoreError>(())
                })
            })
            .collect();
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (s, done, mid, reads_mid_batch) = (
                    Arc::clone(&s),
                    Arc::clone(&done),
                    Arc::clone(&mid),
                    Arc::clone(&reads_mid_batch),
                );
                tokio::spawn(async move {
                    let mut seen = std::collections::BTreeSet::new();
                    loop {
                        let finished = done.load(Ordering::SeqCst);
                        let during = mid.load(Ordering::SeqCst);
                        let (total, features) =
                            read(s.as_ref(), move |tx| tx.license_totals(id, true).map(Option::unwrap))
                                .await
                                .unwrap();
                        let feature = features.get("f").copied().unwrap_or(4);
                        // The sample license starts at 4 consumptions and no feature total.
                        assert!(
                            (total, feature) == (4, 4) || (total, feature) == (JOBS, JOBS),
                            "partial batch visible: total {total}, feature {feature}"
                        );
                        if during && !finished {
                            reads_mid_batch.fetch_add(1, Ordering::SeqCst);
                        }
                        seen.insert(total);
                        if finished {
                            return seen;
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        release.send(()).unwrap();
        blocker.await.unwrap();
        for j in jobs {
            j.await.unwrap();
        }
        done.store(true, Ordering::SeqCst);
        let mut seen = std::collections::BTreeSet::new();
        for r in readers {
            seen.extend(r.await.unwrap());
        }
        assert!(
            reads_mid_batch.load(Ordering::SeqCst) >= 50,
            "readers ran while the batch was half applied"
        );
        assert!(seen.contains(&4) && seen.contains(&JOBS), "{seen:?}");
    }

    /// A full queue refuses at once (no waiting, no growth), and the store serves again as
    /// soon as it drains.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_queues_refuse_with_busy_and_recover() {
        use crate::store::{read, transact};
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            write_queue: 4,
            read_queue: 4,
            readers: 1,
        };
        let s = Arc::new(SqliteStore::open_with(dir.path(), options).unwrap());
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let blocker = transact(s.as_ref(), move |_| {
            let _ = started_tx.send(());
            let _ = hold.recv();
            Ok::<_, StoreError>(())
        });
        started.recv().unwrap();
        let queued: Vec<_> = (0..20)
            .map(|i| {
                transact(s.as_ref(), move |tx| {
                    tx.put_account(&Account {
                        username: format!("u{i}"),
                        password_hash: "h".into(),
                        role: Role::User,
                    })?;
                    Ok::<_, StoreError>(i)
                })
            })
            .collect();
        let (rrelease, rhold) = std::sync::mpsc::channel::<()>();
        let (rstarted_tx, rstarted) = std::sync::mpsc::channel::<()>();
        let rblocker = read(s.as_ref(), move |_| {
            let _ = rstarted_tx.send(());
            let _ = rhold.recv();
            Ok::<_, StoreError>(())
        });
        rstarted.recv().unwrap();
        let reads: Vec<_> = (0..20)
            .map(|_| read(s.as_ref(), |tx| tx.accounts().map(|v| v.len())))
            .collect();
        release.send(()).unwrap();
        rrelease.send(()).unwrap();
        blocker.await.unwrap();
        rblocker.await.unwrap();
        let mut ok = Vec::new();
        for q in queued {
            match q.await {
                Ok(i) => ok.push(i),
                Err(e) => assert_eq!(e, StoreError::Busy),
            }
        }
        assert_eq!(ok, vec![0, 1, 2, 3], "exactly the queue's capacity was accepted");
        let busy_reads = futures_count(reads).await;
        assert_eq!(busy_reads, 16);
        assert_eq!(s.stats().refused.load(Ordering::Relaxed), 32);
        // Drained: served again at once; the accepted jobs are there, the refused are not.
        let n = read(s.as_ref(), |tx| tx.accounts().map(|v| v.len())).await.unwrap();
        assert_eq!(n, 4);
    }

    async fn futures_count(reads: Vec<impl std::future::Future<Output = StoreResult<usize>>>) -> usize {
        let mut busy = 0;
        for r in reads {
            if let Err(e) = r.await {
                assert_eq!(e, StoreError::Busy);
                busy += 1;
            }
        }
        busy
    }

    /// A job that fails after its work (as a key gate checked at commit time does, see
    /// `state::gated`) is rolled back; the rest of its batch is kept.
    #[test]
    fn a_job_failing_after_its_work_is_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let put = |name: &'static str| {
            move |tx: &mut dyn Tx| -> Result<(), ApiError> {
                tx.put_account(&Account {
                    username: name.into(),
                    password_hash: "h".into(),
                    role: Role::User,
                })?;
                Ok(())
            }
        };
        let refused = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(transact(&s, move |tx| {
                put("gone")(tx)?;
                Err::<(), _>(ApiError::key_not_accessible("testing"))
            }));
        assert_eq!(refused.unwrap_err().code, "hardware_key_not_accessible");
        let kept = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(transact(&s, put("kept")));
        assert!(kept.is_ok());
        let names: Vec<_> = transact_blocking(&s, |tx| tx.accounts())
            .unwrap()
            .into_iter()
            .map(|a| a.username)
            .collect();
        assert_eq!(names, vec!["kept".to_owned()]);
    }

    /// Closing answers what is still queued instead of dropping it; later calls are refused.
    #[test]
    fn close_answers_everything() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        s.close();
        let e = transact_blocking(&s, |tx| tx.accounts()).unwrap_err();
        assert!(matches!(e, StoreError::Closed | StoreError::Failed(_)), "{e:?}");
        assert!(crate::store::read_blocking(&s, |tx| tx.accounts()).is_err());
        assert!(s.flush().is_err());
    }
}
