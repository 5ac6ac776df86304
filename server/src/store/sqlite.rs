//! The embedded store: one SQLite database (WAL, `synchronous=FULL`) in the data dir,
//! written by one thread that group-commits batches of jobs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::{params, Connection, OptionalExtension};

use super::{Job, Store, StoreError, StoreResult, Tx};
use crate::model::{
    Account, AuditEvent, FeatureRegistration, License, LicenseSource, LicenseTerms, Registration, Role,
};

/// File name inside the data dir.
pub const DB_FILE: &str = "keyfloat.db";

/// Most jobs committed together; bounds the latency a batch adds.
const MAX_BATCH: usize = 512;

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

enum Msg {
    Job(Box<dyn Job>),
    Flush(mpsc::Sender<StoreResult<()>>),
}

/// Group-commit counters: `jobs / batches` is the mean batch size.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Transactions committed (or attempted).
    pub batches: AtomicU64,
    /// Jobs run.
    pub jobs: AtomicU64,
}

/// SQLite-backed [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    stats: Arc<CommitStats>,
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Job(_) => "Job",
            Self::Flush(_) => "Flush",
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

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let applied = usize::try_from(version).unwrap_or(0);
    if applied > MIGRATIONS.len() {
        return Err(StoreError(format!(
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

impl SqliteStore {
    /// Opens (creating and migrating) `<data_dir>/keyfloat.db` and starts the writer thread.
    pub fn open(data_dir: &Path) -> StoreResult<Self> {
        let private = |e: std::io::Error| StoreError(format!("{}: {e}", data_dir.display()));
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
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(CommitStats::default());
        let writer_stats = Arc::clone(&stats);
        let writer = std::thread::Builder::new()
            .name("keyfloat-store".into())
            .spawn(move || writer_loop(conn, rx, &writer_stats))
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(Self {
            path,
            stats,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
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

    fn send(&self, msg: Msg) -> Result<(), Msg> {
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(tx) => tx.send(msg).map_err(|e| e.0),
            None => Err(msg),
        }
    }

    /// Stops the writer after the queued jobs.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl Store for SqliteStore {
    fn submit(&self, job: Box<dyn Job>) {
        if let Err(Msg::Job(job)) = self.send(Msg::Job(job)) {
            job.finish(Err(StoreError("the store is shut down".into())));
        }
    }

    fn flush(&self) -> StoreResult<()> {
        let (tx, rx) = mpsc::channel();
        self.send(Msg::Flush(tx))
            .map_err(|_| StoreError("the store is shut down".into()))?;
        rx.recv().map_err(|_| StoreError("the store writer stopped".into()))?
    }
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Msg>, stats: &CommitStats) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    let mut flushes = Vec::new();
    let mut terms = HashMap::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Job(j) => batch.push(j),
                Msg::Flush(f) => flushes.push(f),
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let result = run_batch(&conn, &mut terms, &mut batch);
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats.jobs.fetch_add(batch.len() as u64, Ordering::Relaxed);
            if result.is_err() {
                // A failed commit rolled back inserts the cache may already know about.
                terms.clear();
            }
            if let Err(e) = &result {
                tracing::error!(error = %e, jobs = batch.len(), "batch commit failed");
            }
            for job in batch.drain(..) {
                job.finish(result.clone());
            }
        }
        for f in flushes.drain(..) {
            let r = conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .map_err(StoreError::from);
            let _ = f.send(r);
        }
    }
    // Queue closed: leave a checkpointed database behind.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

fn run_batch(conn: &Connection, terms: &mut HashMap<u64, LicenseTerms>, batch: &mut [Box<dyn Job>]) -> StoreResult<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let mut tx = SqliteTx { conn, terms };
    // Prepared once per connection: the per-job savepoint costs no SQL parsing.
    let step = |sql: &str| conn.prepare_cached(sql).and_then(|mut st| st.execute([]).map(|_| ()));
    for job in batch.iter_mut() {
        if let Err(e) = step("SAVEPOINT job") {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
        let keep = job.run(&mut tx);
        let end = if keep {
            step("RELEASE job")
        } else {
            step("ROLLBACK TO job").and_then(|()| step("RELEASE job"))
        };
        if let Err(e) = end {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e.into());
    }
    Ok(())
}

struct SqliteTx<'c> {
    conn: &'c Connection,
    /// Parsed terms by license id: terms never change after insertion, so every request
    /// after the first skips the JSON parse. Only consulted for rows that exist.
    terms: &'c mut HashMap<u64, LicenseTerms>,
}

// License ids are u64 on the wire; SQLite integers are i64. The cast keeps all 64 bits.
fn sid(id: u64) -> i64 {
    id as i64
}
fn uid(id: i64) -> u64 {
    id as u64
}

impl SqliteTx<'_> {
    fn feature_totals(&self, id: u64) -> StoreResult<BTreeMap<String, i64>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT feature, total FROM feature_consumptions WHERE license_id = ?1")?;
        let rows = st.query_map([sid(id)], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn license_from_row(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<(u64, String, String, String, i64, i64)> {
        Ok((uid(r.get(0)?), r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
    }

    fn build(&mut self, row: (u64, String, String, String, i64, i64)) -> StoreResult<License> {
        let (id, terms, hw, source, added_at, total) = row;
        let terms = match self.terms.get(&id) {
            Some(t) => t.clone(),
            None => {
                let t: LicenseTerms =
                    serde_json::from_str(&terms).map_err(|e| StoreError(format!("license {id}: bad terms: {e}")))?;
                self.terms.insert(id, t.clone());
                t
            }
        };
        Ok(License {
            id,
            terms,
            activation_hardware_id: hw,
            source: if source == "file" {
                LicenseSource::File
            } else {
                LicenseSource::Api
            },
            added_at,
            total_consumptions: total,
            feature_totals: self.feature_totals(id)?,
        })
    }
}

const LICENSE_COLS: &str = "id, terms, activation_hardware_id, source, added_at, total_consumptions";
const REG_COLS: &str = "license_id, user, registered_at, expires_at, borrowed_until, os_hostname, ip_local, user_info";
const FREG_COLS: &str = "license_id, feature, user, registered_at, expires_at, os_hostname, ip_local, user_info";

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

impl Tx for SqliteTx<'_> {
    fn licenses(&mut self) -> StoreResult<Vec<License>> {
        let rows: Vec<_> = {
            let mut st = self
                .conn
                .prepare_cached(&format!("SELECT {LICENSE_COLS} FROM licenses ORDER BY seq"))?;
            let rows = st.query_map([], |r| self.license_from_row(r))?;
            rows.collect::<Result<_, _>>()?
        };
        rows.into_iter().map(|row| self.build(row)).collect()
    }

    fn license(&mut self, id: u64) -> StoreResult<Option<License>> {
        let row = self
            .conn
            .prepare_cached(&format!("SELECT {LICENSE_COLS} FROM licenses WHERE id = ?1"))?
            .query_row([sid(id)], |r| self.license_from_row(r))
            .optional()?;
        row.map(|row| self.build(row)).transpose()
    }

    fn next_license_id(&mut self) -> StoreResult<u64> {
        // Ids look like LicenseSpring's (16 digits) and never collide with existing ones.
        let max: Option<i64> =
            self.conn
                .query_row("SELECT MAX(id) FROM licenses WHERE id < 9000000000000000", [], |r| {
                    r.get(0)
                })?;
        Ok(uid(max.unwrap_or(1_000_000_000_000_000).max(1_000_000_000_000_000) + 1))
    }

    fn insert_license(&mut self, l: &License) -> StoreResult<()> {
        self.terms.insert(l.id, l.terms.clone());
        let terms = serde_json::to_string(&l.terms).map_err(|e| StoreError(e.to_string()))?;
        let seq: i64 = self
            .conn
            .query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM licenses", [], |r| r.get(0))?;
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
        self.terms.remove(&id);
        Ok(self.conn.execute("DELETE FROM licenses WHERE id = ?1", [sid(id)])? > 0)
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

    fn registrations(&mut self, license_id: Option<u64>) -> StoreResult<Vec<Registration>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {REG_COLS} FROM registrations WHERE ?1 IS NULL OR license_id = ?1 ORDER BY license_id, registered_at"
        ))?;
        let rows = st.query_map([license_id.map(sid)], reg_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn registration(&mut self, license_id: u64, user: &str) -> StoreResult<Option<Registration>> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {REG_COLS} FROM registrations WHERE license_id = ?1 AND user = ?2"
            ))?
            .query_row(params![sid(license_id), user], reg_from_row)
            .optional()?)
    }

    fn count_active_registrations(&mut self, license_id: u64, now: i64) -> StoreResult<usize> {
        // Lapsed seats are dropped first (an index seek over the expired rows only); every
        // row left is then active, and the trigger-kept counter is the answer.
        self.purge_expired(license_id, now)?;
        let n: Option<i64> = self
            .conn
            .prepare_cached("SELECT n FROM seat_counts WHERE license_id = ?1")?
            .query_row(params![sid(license_id)], |r| r.get(0))
            .optional()?;
        Ok(usize::try_from(n.unwrap_or(0)).unwrap_or(0))
    }

    fn put_registration(&mut self, r: &Registration) -> StoreResult<()> {
        self.conn
            .prepare_cached(&format!(
                // An upsert, not INSERT OR REPLACE: the replace's implicit delete would not
                // fire the seat-count trigger.
                "INSERT INTO registrations ({REG_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
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
        self.conn.execute(
            "DELETE FROM feature_registrations WHERE ?1 IS NULL OR license_id = ?1",
            [id],
        )?;
        Ok(self
            .conn
            .execute("DELETE FROM registrations WHERE ?1 IS NULL OR license_id = ?1", [id])?)
    }

    fn purge_expired(&mut self, license_id: u64, now: i64) -> StoreResult<usize> {
        let id = sid(license_id);
        // Feature slots of users whose seat lapsed go with the seat.
        let a = self
            .conn
            .prepare_cached(
                "DELETE FROM feature_registrations WHERE license_id = ?1 AND (expires_at <= ?2 OR user IN
                   (SELECT user FROM registrations WHERE license_id = ?1 AND expires_at <= ?2
                      AND (borrowed_until IS NULL OR borrowed_until <= ?2)))",
            )?
            .execute(params![id, now])?;
        let b = self
            .conn
            .prepare_cached(
                "DELETE FROM registrations WHERE license_id = ?1 AND expires_at <= ?2
                   AND (borrowed_until IS NULL OR borrowed_until <= ?2)",
            )?
            .execute(params![id, now])?;
        Ok(a + b)
    }

    fn feature_registrations(
        &mut self,
        license_id: Option<u64>,
        feature: Option<&str>,
    ) -> StoreResult<Vec<FeatureRegistration>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {FREG_COLS} FROM feature_registrations
             WHERE (?1 IS NULL OR license_id = ?1) AND (?2 IS NULL OR feature = ?2)
             ORDER BY license_id, feature, registered_at"
        ))?;
        let rows = st.query_map(params![license_id.map(sid), feature], freg_from_row)?;
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
            .prepare_cached(&format!(
                "SELECT {FREG_COLS} FROM feature_registrations WHERE license_id = ?1 AND feature = ?2 AND user = ?3"
            ))?
            .query_row(params![sid(license_id), feature, user], freg_from_row)
            .optional()?)
    }

    fn feature_usage(&mut self, license_id: u64, now: i64) -> StoreResult<BTreeMap<String, usize>> {
        let mut st = self.conn.prepare_cached(
            "SELECT feature, COUNT(*) FROM feature_registrations WHERE license_id = ?1 AND expires_at > ?2
             GROUP BY feature",
        )?;
        let rows = st.query_map(params![sid(license_id), now], |r| {
            Ok((
                r.get::<_, String>(0)?,
                usize::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn put_feature_registration(&mut self, r: &FeatureRegistration) -> StoreResult<()> {
        self.conn
            .prepare_cached(&format!(
                "INSERT OR REPLACE INTO feature_registrations ({FREG_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
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

    fn account(&mut self, username: &str) -> StoreResult<Option<Account>> {
        let row = self
            .conn
            .prepare_cached("SELECT username, password_hash, role FROM accounts WHERE username = ?1")?
            .query_row([username], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })
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
        let rows = st.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
        })?;
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

    fn put_account(&mut self, a: &Account) -> StoreResult<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO accounts (username, password_hash, role) VALUES (?1, ?2, ?3)",
            params![a.username, a.password_hash, a.role.as_str()],
        )?;
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

    fn audit_events(&mut self, before: Option<i64>, limit: u32) -> StoreResult<Vec<AuditEvent>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, at, kind, actor, license_id, detail FROM audit
             WHERE ?1 IS NULL OR id < ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![before, limit], |r| {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::error::ApiError;
    use crate::store::transact_blocking;

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
                })?;
                Ok(())
            })
            .unwrap();
        }
        let s = SqliteStore::open(dir.path()).unwrap();
        let acc = transact_blocking(&s, |tx| Ok(tx.account("a")?)).unwrap();
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
        let count = |now: i64| transact_blocking(&s, move |tx| Ok(tx.count_active_registrations(id, now)?)).unwrap();
        transact_blocking(&s, move |tx| {
            tx.insert_license(&license)?;
            for (i, user) in ["a", "b", "c"].into_iter().enumerate() {
                tx.put_registration(&reg(user, 100 + i as i64))?;
            }
            // A renewal is an upsert: still three seats.
            tx.put_registration(&reg("a", 500))?;
            Ok(())
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
        transact_blocking(&s, move |tx| Ok(tx.delete_registration(id, "a")?)).unwrap();
        assert_eq!(count(200), 0);
        transact_blocking(&s, move |tx| {
            tx.put_registration(&reg("e", 900))?;
            Ok(tx.delete_license(id)?)
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
        assert!(transact_blocking(&s, |tx| Ok(tx.account("x")?)).unwrap().is_none());
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
                    Ok(())
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
                    })?;
                    Ok(())
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
        let n = crate::store::transact(s.as_ref(), |tx| Ok(tx.accounts()?.len()))
            .await
            .unwrap();
        assert_eq!(n, 100);
    }

    #[test]
    fn a_panicking_job_is_an_internal_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let r: Result<(), _> = transact_blocking(&s, |_| panic!("boom"));
        assert_eq!(r.unwrap_err().code, "internal_server_error");
        assert!(transact_blocking(&s, |tx| Ok(tx.accounts()?)).is_ok());
    }
}
