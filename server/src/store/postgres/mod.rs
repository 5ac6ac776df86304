//! The shared store: PostgreSQL, for several server processes (an active/standby pair, or
//! a few nodes behind a load balancer) on one database.
//!
//! Same architecture as the SQLite store ([`super::queues`]): one writer connection on
//! its own thread group-commits batches of jobs (a savepoint per job, one `COMMIT` per
//! batch, every job answered only after it), and a few reader connections serve reads,
//! each batch of reads inside one `REPEATABLE READ READ ONLY` snapshot.
//!
//! **Limits across processes.** Every write batch first takes one transaction-scoped
//! advisory lock (`pg_advisory_xact_lock`), so write batches of all processes on the
//! database run one after another, each seeing every earlier commit (READ COMMITTED takes
//! a fresh snapshot per statement, after the lock was granted). Chosen over
//! `SELECT … FOR UPDATE` on the license row because jobs are opaque closures: the store
//! cannot know up front which licenses a batch touches, locking them on first touch
//! would deadlock two batches touching two licenses in opposite orders (and a batch
//! cannot be re-run), and the audit chain head and account rows need the same
//! serialization. In HA mode only the leader writes, so the lock is uncontended.
//!
//! **Fencing.** With a [`Fence`], every batch (under that lock) checks that this node
//! still holds the lease at its epoch, `FOR KEY SHARE` (a takeover's grant locks the lease
//! row `FOR UPDATE`, so it waits for this commit; the leader's own renewals do not), and records itself in `kf_batches`; when the check fails the
//! batch is rolled back and every job gets [`StoreError::NotLeader`].

mod schema;
pub(crate) mod tx;
mod write;

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::{Row, Statement};

use super::queues::{self, Queues, Reader, SavepointTx, Writer};
use super::{Job, ReadTx, StoreError, StoreResult, Tx};
use crate::model::LicenseTerms;
pub(crate) use tx::PgTx;

pub use super::queues::{CommitStats, StoreOptions};
pub use schema::MIGRATIONS;

/// Advisory lock key that serializes write batches of every process ("kf-write").
pub const WRITE_LOCK: i64 = 0x6b66_2d77_7269_7465;

/// How long a writer may sit inside an open transaction before PostgreSQL ends it: a
/// paused (SIGSTOP) or wedged node must not hold the write lock and the lease row lock
/// for longer than this (a takeover waits for it). The writer sends a batch's statements
/// back to back, so a live writer never idles this long.
const IDLE_IN_TX_TIMEOUT: &str = "1s";

/// This node's claim to write, shared with the lease task of [`crate::ha`].
pub use crate::ha::Fence;

/// How to run a [`PgStore`].
#[derive(Debug, Clone, Default)]
pub struct PgStoreOptions {
    /// Queue and pool sizes.
    pub queues: StoreOptions,
    /// When set, every write batch is fenced by the lease (see the module docs).
    pub fence: Option<Fence>,
}

/// PostgreSQL-backed [`Store`].
#[derive(Debug)]
pub struct PgStore {
    queues: Queues,
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`), migrates, and starts the writer
    /// and reader connections.
    pub fn open(url: &str, options: PgStoreOptions) -> StoreResult<Self> {
        // The sync client blocks on a runtime of its own: connect off any async runtime the
        // caller may be on (server start-up is inside one).
        let url = url.to_owned();
        std::thread::spawn(move || Self::open_here(&url, options))
            .join()
            .unwrap_or_else(|_| Err(StoreError::Failed("opening the store panicked".into())))
    }

    fn open_here(url: &str, options: PgStoreOptions) -> StoreResult<Self> {
        let mut writer = PgConn::connect(url)?;
        schema::migrate(&mut writer)?;
        writer.exec(&format!(
            "SET idle_in_transaction_session_timeout = '{IDLE_IN_TX_TIMEOUT}'"
        ))?;
        let readers = (0..options.queues.readers.max(1))
            .map(|_| PgConn::connect(url).map(|conn| PgReader { conn }))
            .collect::<StoreResult<Vec<_>>>()?;
        let writer = PgWriter {
            conn: writer,
            fence: options.fence,
            terms: HashMap::new(),
        };
        let queues = Queues::start("keyfloat-pg", writer, readers, options.queues)?;
        Ok(Self { queues })
    }

    /// Group-commit counters.
    pub fn stats(&self) -> &CommitStats {
        self.queues.stats()
    }

    /// Never: other nodes may write the same database.
    pub fn holds_data_dir(&self) -> bool {
        false
    }

    /// Stops the writer after the queued jobs, and the readers.
    pub fn close(&self) {
        self.queues.close();
    }
}

queues::store_via_queues!(PgStore);

/// One connection with its prepared statements (a cached statement saves the parse
/// round trip on every call), driven through tokio-postgres on a runtime of its own (one
/// thread): savepoint statements are *pipelined* with the job statement that follows them,
/// so a job's savepoint costs no round trip of its own.
pub(crate) struct PgConn {
    url: String,
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    statements: HashMap<&'static str, Statement>,
    /// Statements (savepoints) to send ahead of the next one, in the same round trip.
    pending: String,
    /// A deferred statement failed: the savepoints no longer match the jobs, so the
    /// transaction must not commit (see [`PgConn::take_failure`]).
    failed: Option<StoreError>,
    /// Write statements that changed something, and statements that failed (see
    /// [`queues::SavepointTx::trace`]).
    trace: queues::Trace,
}

type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);

/// Runs the prepared statement `$sql` through `$call`; anything deferred is sent in the
/// same round trip, first (`biased`: polled in order, and each call sends on first poll).
macro_rules! pipelined {
    ($conn:ident, $sql:ident, |$c:ident, $st:ident| $call:expr) => {{
        let $st = &$conn.statement($sql)?;
        let pending = std::mem::take(&mut $conn.pending);
        let $c = &$conn.client;
        // (the deferred statements' result, the query's own result)
        let (before, result) = $conn.runtime.block_on(async {
            if pending.is_empty() {
                return (Ok(()), $call.await);
            }
            tokio::join!(biased; $c.batch_execute(&pending), $call)
        });
        match (before, result) {
            (Err(e), _) => Err($conn.deferred_failed(e)),
            (Ok(()), Err(e)) => {
                $conn.trace.failures += 1;
                Err(e.into())
            }
            (Ok(()), Ok(v)) => Ok(v),
        }
    }};
}

impl PgConn {
    pub(crate) fn connect(url: &str) -> StoreResult<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Failed(format!("connecting: {e}")))?;
        // Loopback / private network: no TLS yet (`sslmode=require` is future work).
        let (client, connection) = runtime
            .block_on(tokio_postgres::connect(url, tokio_postgres::NoTls))
            .map_err(|e| StoreError::Failed(format!("connecting: {e}")))?;
        // Runs whenever a call below blocks on the runtime (every call does).
        runtime.spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            url: url.to_owned(),
            runtime,
            client,
            statements: HashMap::new(),
            pending: String::new(),
            failed: None,
            trace: queues::Trace::default(),
        })
    }

    /// Reconnects when the server closed the connection (a restart, a killed session).
    fn reopen_if_closed(&mut self) -> StoreResult<()> {
        if self.client.is_closed() {
            *self = Self::connect(&self.url)?;
        }
        Ok(())
    }

    fn statement(&mut self, sql: &'static str) -> StoreResult<Statement> {
        if let Some(st) = self.statements.get(sql) {
            return Ok(st.clone());
        }
        // Deferred statements first: a parse inside an aborted transaction would fail until
        // a deferred `ROLLBACK TO SAVEPOINT` ran.
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            if let Err(e) = self.runtime.block_on(self.client.batch_execute(&pending)) {
                return Err(self.deferred_failed(e));
            }
        }
        let st = self.runtime.block_on(self.client.prepare(sql))?;
        self.statements.insert(sql, st.clone());
        Ok(st)
    }

    fn deferred_failed(&mut self, e: tokio_postgres::Error) -> StoreError {
        self.trace.failures += 1;
        let e = StoreError::from(e);
        self.failed.get_or_insert_with(|| e.clone());
        e
    }

    /// The failure of a deferred statement since the last call, if any.
    pub(crate) fn take_failure(&mut self) -> Option<StoreError> {
        self.failed.take()
    }

    /// Queues `sql` (no parameters, no rows) to go out with the next statement.
    pub(crate) fn defer(&mut self, sql: &str) {
        if !self.pending.is_empty() {
            self.pending.push_str("; ");
        }
        self.pending.push_str(sql);
    }

    /// Runs `sql` (no parameters; several statements allowed) after anything deferred.
    pub(crate) fn exec(&mut self, sql: &str) -> StoreResult<()> {
        self.defer(sql);
        let all = std::mem::take(&mut self.pending);
        let done = self.runtime.block_on(self.client.batch_execute(&all));
        if done.is_err() {
            self.trace.failures += 1;
        }
        Ok(done?)
    }

    /// A query that is not a plain `SELECT` writes (`INSERT … RETURNING`, a CTE).
    fn note_query(&mut self, sql: &str) {
        if !sql.starts_with("SELECT") {
            self.note_change();
        }
    }

    /// Counts a change in [`Self::trace`] (for [`Self::query_opt_quiet`] callers).
    pub(crate) fn note_change(&mut self) {
        self.trace.changes += 1;
    }

    pub(crate) fn query(&mut self, sql: &'static str, params: &[Param<'_>]) -> StoreResult<Vec<Row>> {
        let rows = pipelined!(self, sql, |c, st| c.query(st, params))?;
        self.note_query(sql);
        Ok(rows)
    }

    pub(crate) fn query_opt(&mut self, sql: &'static str, params: &[Param<'_>]) -> StoreResult<Option<Row>> {
        let row = self.query_opt_quiet(sql, params)?;
        self.note_query(sql);
        Ok(row)
    }

    /// [`Self::query_opt`] for a statement that may or may not write: the caller reports
    /// a change with [`Self::note_change`].
    pub(crate) fn query_opt_quiet(&mut self, sql: &'static str, params: &[Param<'_>]) -> StoreResult<Option<Row>> {
        pipelined!(self, sql, |c, st| c.query_opt(st, params))
    }

    pub(crate) fn query_one(&mut self, sql: &'static str, params: &[Param<'_>]) -> StoreResult<Row> {
        let row = pipelined!(self, sql, |c, st| c.query_one(st, params))?;
        self.note_query(sql);
        Ok(row)
    }

    pub(crate) fn execute(&mut self, sql: &'static str, params: &[Param<'_>]) -> StoreResult<u64> {
        let n = pipelined!(self, sql, |c, st| c.execute(st, params))?;
        if n > 0 {
            self.note_change();
        }
        Ok(n)
    }
}

struct PgWriter {
    conn: PgConn,
    fence: Option<Fence>,
    /// Parsed terms by license id (see [`PgTx`]).
    terms: HashMap<u64, Arc<LicenseTerms>>,
}

impl SavepointTx for PgTx<'_> {
    // Savepoint statements go out with the job's next statement (or the COMMIT).
    fn exec(&mut self, sql: &'static str) -> StoreResult<()> {
        self.conn.defer(sql);
        Ok(())
    }

    fn tx(&mut self) -> &mut dyn Tx {
        self
    }

    fn trace(&mut self) -> queues::Trace {
        self.conn.trace
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl PgWriter {
    /// Inside the batch's transaction: the write lock, then the fence.
    fn begin(&mut self) -> StoreResult<()> {
        self.conn.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])?;
        let Some(fence) = &self.fence else { return Ok(()) };
        let epoch = fence.epoch();
        if epoch == 0 {
            return Err(StoreError::NotLeader);
        }
        let node: Arc<str> = fence.node_id().into();
        let holds = self.conn.query_opt(
            "SELECT 1 FROM kf_lease WHERE name = 'leader' AND holder = $1 AND epoch = $2
               AND expires_at > now() FOR KEY SHARE",
            &[&&*node, &to_i64(epoch)],
        )?;
        if holds.is_none() {
            return Err(StoreError::NotLeader);
        }
        self.conn.execute(
            "INSERT INTO kf_batches (epoch, node_id) VALUES ($1, $2)",
            &[&to_i64(epoch), &&*node],
        )?;
        Ok(())
    }

    fn run(&mut self, batch: &mut [Box<dyn Job>]) -> StoreResult<()> {
        // BEGIN goes out with the lock request.
        self.conn.defer("BEGIN");
        self.begin()?;
        let mut tx = PgTx {
            conn: &mut self.conn,
            terms: Some(&mut self.terms),
        };
        queues::run_jobs(&mut tx, batch)?;
        // A savepoint statement that failed (sent ahead of a job's statement) leaves the
        // savepoints out of step with the jobs: nothing of the batch may commit.
        if let Some(e) = self.conn.take_failure() {
            return Err(e);
        }
        self.conn.exec("COMMIT")
    }
}

impl Writer for PgWriter {
    fn commit_batch(&mut self, batch: &mut [Box<dyn Job>]) -> StoreResult<()> {
        self.conn.reopen_if_closed()?;
        let result = self.run(batch);
        if result.is_err() {
            self.conn.pending.clear();
            self.conn.failed = None;
            let _ = self.conn.exec("ROLLBACK");
            // A failed commit rolled back inserts the cache may already know about.
            self.terms.clear();
        }
        result
    }

    fn flush(&mut self) -> StoreResult<()> {
        // Every acknowledged batch is committed (durable per the server's settings).
        Ok(())
    }
}

struct PgReader {
    conn: PgConn,
}

impl Reader for PgReader {
    fn snapshot(&mut self, f: &mut dyn FnMut(&mut dyn ReadTx)) -> StoreResult<()> {
        self.conn.reopen_if_closed()?;
        // The BEGIN goes out with the first read.
        self.conn.defer("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
        f(&mut PgTx {
            conn: &mut self.conn,
            terms: None,
        });
        let failed = self.conn.take_failure();
        if let Err(e) = self.conn.exec("COMMIT") {
            self.conn.pending.clear();
            let _ = self.conn.exec("ROLLBACK");
            return Err(e);
        }
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(())
    }
}

/// A fresh, uniquely named database on a cluster, dropped on drop: what each PostgreSQL
/// test (and a dry run) works in, so runs never see each other's rows.
#[derive(Debug)]
pub struct TempDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TempDatabase {
    /// Creates `kf_<prefix>_<random>` on the cluster `admin_url` points at.
    pub fn create(admin_url: &str, prefix: &str) -> StoreResult<Self> {
        let mut bytes = [0u8; 6];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
        let clean: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(30)
            .collect();
        let name = format!("kf_{clean}_{}", hex::encode(bytes));
        admin(admin_url, format!("CREATE DATABASE {name}"))?;
        let url = with_database(admin_url, &name);
        Ok(Self {
            admin_url: admin_url.to_owned(),
            name,
            url,
        })
    }

    /// The URL of the new database.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Runs `sql` on the cluster, on a thread of its own (callers may be on an async runtime,
/// e.g. a test dropping its database while unwinding).
fn admin(url: &str, sql: String) -> StoreResult<()> {
    let url = url.to_owned();
    std::thread::spawn(move || PgConn::connect(&url)?.exec(&sql))
        .join()
        .unwrap_or_else(|_| Err(StoreError::Failed("the admin statement panicked".into())))
}

/// `url` with its database replaced by `name` (URL form only: `postgres://…/db?…`).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let _ = admin(
            &self.admin_url,
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::suite::pg_url;

    #[test]
    fn with_database_swaps_only_the_database() {
        assert_eq!(with_database("postgres://u@h:1/postgres", "x"), "postgres://u@h:1/x");
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }

    #[test]
    #[ignore = "needs PostgreSQL (KEYFLOAT_PG_URL)"]
    fn migrates_twice_and_has_the_ha_tables() {
        let db = TempDatabase::create(&pg_url(), "migrate").unwrap();
        drop(PgStore::open(db.url(), PgStoreOptions::default()).unwrap());
        let s = PgStore::open(db.url(), PgStoreOptions::default()).unwrap();
        s.close();
        let mut c = PgConn::connect(db.url()).unwrap();
        let v: i32 = c.query_one("SELECT version FROM kf_schema", &[]).unwrap().get(0);
        assert_eq!(usize::try_from(v).unwrap(), MIGRATIONS.len());
        let lease = c
            .query_one("SELECT holder, epoch FROM kf_lease WHERE name = 'leader'", &[])
            .unwrap();
        assert_eq!((lease.get::<_, Option<String>>(0), lease.get::<_, i64>(1)), (None, 0));
        for t in ["kf_nodes", "kf_batches", "kf_secrets"] {
            c.exec(&format!("SELECT * FROM {t}")).unwrap();
        }
    }
}
