//! `keyfloat store migrate`: copies a single-node installation (the SQLite file of a data
//! dir) into an empty PostgreSQL database — licenses with their counters, seats, feature
//! slots, accounts, token generations and the audit log with its hash chain (records,
//! ids and hashes verbatim, so the chain still verifies) — in one transaction, then reads
//! both back and compares them.
//!
//! The source is locked like a server would lock it (the server must be stopped: a copy
//! of a database still being written would be stale at once).

use std::collections::HashMap;
use std::path::Path;

use rusqlite::OptionalExtension;
use serde::Serialize;

use super::lock::DataDirLock;
use super::postgres::{PgConn, PgTx, WRITE_LOCK};
use super::{audit_chain, read_blocking, transact_blocking, ReadTx, SqliteStore, StoreError, StoreResult, Tx};
use crate::model::{Account, FeatureRegistration, License, Registration};

/// What was copied (and found identical on both sides).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CopyReport {
    /// Licenses (with consumption and feature totals).
    pub licenses: usize,
    /// Seats.
    pub registrations: usize,
    /// Feature slots.
    pub feature_registrations: usize,
    /// Accounts.
    pub accounts: usize,
    /// Token generations.
    pub token_generations: usize,
    /// Audit records (the chain verified on the copy).
    pub audit_records: usize,
}

/// One audit row as stored: id, at, kind, actor, license, detail, prev_hash, hash.
type AuditRow = audit_chain::Row;
/// The chain anchor: start_id, genesis, head_id, head_hash, created_at.
type Anchor = (i64, String, Option<i64>, Option<String>, i64);

/// Everything a copy moves, read from one side.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    licenses: Vec<License>,
    registrations: Vec<Registration>,
    feature_registrations: Vec<FeatureRegistration>,
    accounts: Vec<Account>,
    token_generations: Vec<(String, u64)>,
    audit: Vec<AuditRow>,
    anchor: Option<Anchor>,
}

impl Snapshot {
    fn report(&self) -> CopyReport {
        CopyReport {
            licenses: self.licenses.len(),
            registrations: self.registrations.len(),
            feature_registrations: self.feature_registrations.len(),
            accounts: self.accounts.len(),
            token_generations: self.token_generations.len(),
            audit_records: self.audit.len(),
        }
    }
}

fn sorted(map: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut v: Vec<_> = map.into_iter().collect();
    v.sort();
    v
}

/// Licenses, seats, feature slots and accounts: what both engines read through the
/// store's own reads.
type ModelRows = (Vec<License>, Vec<Registration>, Vec<FeatureRegistration>, Vec<Account>);

fn read_model(tx: &mut dyn ReadTx) -> StoreResult<ModelRows> {
    Ok((
        tx.licenses()?,
        tx.registrations(None)?,
        tx.feature_registrations(None, None)?,
        tx.accounts()?,
    ))
}

fn snapshot(
    (licenses, registrations, feature_registrations, accounts): ModelRows,
    token_generations: HashMap<String, u64>,
    audit: Vec<AuditRow>,
    anchor: Option<Anchor>,
) -> Snapshot {
    Snapshot {
        licenses,
        registrations,
        feature_registrations,
        accounts,
        token_generations: sorted(token_generations),
        audit,
        anchor,
    }
}

fn read_sqlite(data_dir: &Path) -> StoreResult<Snapshot> {
    // Opening migrates an older schema first (as a server start would).
    let store = SqliteStore::open(data_dir)?;
    let model = read_blocking(&store, |tx| read_model(tx))?;
    let token_generations = transact_blocking(&store, |tx| tx.token_generations())?;
    store.close();
    let conn = audit_chain::open_read_only(data_dir)?;
    let audit = conn
        .prepare("SELECT id, at, kind, actor, license_id, detail, prev_hash, hash FROM audit ORDER BY id")?
        .query_map([], audit_chain::sqlite_row)?
        .collect::<Result<Vec<_>, _>>()?;
    let anchor = conn
        .query_row(
            "SELECT start_id, genesis, head_id, head_hash, created_at FROM audit_chain WHERE one = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    Ok(snapshot(model, token_generations, audit, anchor))
}

fn read_postgres(conn: &mut PgConn) -> StoreResult<Snapshot> {
    conn.exec("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
    let mut tx = PgTx { conn, terms: None };
    let model = read_model(&mut tx)?;
    let token_generations = tx.token_generations()?;
    let audit = conn
        .query(
            "SELECT id, at, kind, actor, license_id, detail, prev_hash, hash FROM audit ORDER BY id",
            &[],
        )?
        .iter()
        .map(audit_chain::pg_row)
        .collect();
    let anchor = conn
        .query_opt(
            "SELECT start_id, genesis, head_id, head_hash, created_at FROM audit_chain WHERE one = 1",
            &[],
        )?
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)));
    conn.exec("COMMIT")?;
    Ok(snapshot(model, token_generations, audit, anchor))
}

/// Refuses a target that already holds data (a second copy would mix two installations).
fn ensure_empty(conn: &mut PgConn) -> StoreResult<()> {
    let row = conn.query_one(
        "SELECT (SELECT COUNT(*) FROM licenses), (SELECT COUNT(*) FROM registrations),
                (SELECT COUNT(*) FROM accounts), (SELECT COUNT(*) FROM token_generations),
                (SELECT COUNT(*) FROM audit)",
        &[],
    )?;
    let counts: Vec<i64> = (0..5).map(|i| row.get(i)).collect();
    if counts.iter().any(|&n| n > 0) {
        return Err(StoreError::Failed(format!(
            "the target database is not empty (licenses, registrations, accounts, token generations, audit: {counts:?}); \
             migrate into a new database"
        )));
    }
    Ok(())
}

fn write_postgres(conn: &mut PgConn, s: &Snapshot) -> StoreResult<()> {
    conn.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])?;
    ensure_empty(conn)?;
    let mut tx = PgTx { conn, terms: None };
    for l in &s.licenses {
        tx.insert_license(l)?;
    }
    for r in &s.registrations {
        tx.put_registration(r)?;
    }
    for r in &s.feature_registrations {
        tx.put_feature_registration(r)?;
    }
    for a in &s.accounts {
        tx.put_account(a)?;
    }
    for (user, generation) in &s.token_generations {
        let generation = i64::try_from(*generation).unwrap_or(i64::MAX);
        conn.execute(
            "INSERT INTO token_generations (username, generation) VALUES ($1, $2)",
            &[user, &generation],
        )?;
    }
    for (id, at, kind, actor, license_id, detail, prev_hash, hash) in &s.audit {
        conn.execute(
            "INSERT INTO audit (id, at, kind, actor, license_id, detail, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[id, at, kind, actor, license_id, detail, prev_hash, hash],
        )?;
    }
    // New records continue after the copied ids.
    conn.execute(
        "SELECT setval(pg_get_serial_sequence('audit', 'id'), GREATEST((SELECT MAX(id) FROM audit), 1),
                       (SELECT MAX(id) FROM audit) IS NOT NULL)",
        &[],
    )?;
    if let Some((start_id, genesis, head_id, head_hash, created_at)) = &s.anchor {
        conn.execute(
            "UPDATE audit_chain SET start_id = $1, genesis = $2, head_id = $3, head_hash = $4, created_at = $5
             WHERE one = 1",
            &[start_id, genesis, head_id, head_hash, created_at],
        )?;
    }
    Ok(())
}

/// Copies `data_dir`'s SQLite store into the (empty) PostgreSQL database at `url`, then
/// verifies the copy: same rows on both sides, and the copied audit chain intact.
pub fn sqlite_to_postgres(data_dir: &Path, url: &str) -> StoreResult<CopyReport> {
    if !data_dir.join(super::sqlite::DB_FILE).exists() {
        return Err(StoreError::Failed(format!(
            "{} holds no keyfloat database",
            data_dir.display()
        )));
    }
    let _lock = DataDirLock::acquire(data_dir).map_err(|e| StoreError::Failed(e.to_string()))?;
    let source = read_sqlite(data_dir)?;
    // Creates the schema (and refuses a newer one) like a server start.
    super::PgStore::open(url, super::PgStoreOptions::default())?.close();
    let url = url.to_owned();
    // The sync client blocks on a runtime of its own: off any caller's runtime.
    std::thread::spawn(move || -> StoreResult<CopyReport> {
        let mut conn = PgConn::connect(&url)?;
        conn.exec("BEGIN")?;
        if let Err(e) = write_postgres(&mut conn, &source) {
            let _ = conn.exec("ROLLBACK");
            return Err(e);
        }
        conn.exec("COMMIT")?;
        let copy = read_postgres(&mut conn)?;
        compare(&source, &copy)?;
        conn.exec("BEGIN")?;
        let chain = PgTx {
            conn: &mut conn,
            terms: None,
        }
        .verify_audit_chain();
        conn.exec("ROLLBACK")?;
        let chain = chain?;
        if let Some(bad) = chain.first_bad {
            return Err(StoreError::Failed(format!(
                "the copied audit chain does not verify at record {}: {}",
                bad.id, bad.reason
            )));
        }
        Ok(source.report())
    })
    .join()
    .unwrap_or_else(|_| Err(StoreError::Failed("the copy panicked".into())))
}

fn compare(source: &Snapshot, copy: &Snapshot) -> StoreResult<()> {
    let differs = |what: &str| {
        Err(StoreError::Failed(format!(
            "verification failed: the copied {what} differ"
        )))
    };
    if source.report() != copy.report() {
        return Err(StoreError::Failed(format!(
            "verification failed: counts differ: source {:?}, copy {:?}",
            source.report(),
            copy.report()
        )));
    }
    if source.licenses != copy.licenses {
        return differs("licenses");
    }
    if source.registrations != copy.registrations {
        return differs("registrations");
    }
    if source.feature_registrations != copy.feature_registrations {
        return differs("feature registrations");
    }
    if source.accounts != copy.accounts {
        return differs("accounts");
    }
    if source.token_generations != copy.token_generations {
        return differs("token generations");
    }
    if source.audit != copy.audit || source.anchor != copy.anchor {
        return differs("audit records");
    }
    Ok(())
}
