//! The tamper-evident audit log: a SHA-256 hash chain over the `audit` table.
//!
//! Record `n` stores `prev_hash` (the hash of record `n − 1`, or the chain's random
//! genesis for the first one) and `hash = SHA-256(prev_hash ‖ content)`, where content is
//! the record's id and fields as a JSON array. The `audit_chain` row records where the
//! chain starts (records written before the chain existed are outside it) and its head,
//! so an edited, inserted or deleted record — the last one included — is detected by
//! [`verify`], which names the first bad record. Anyone who can write the database can
//! also rewrite the whole chain: the chain makes silent edits evident, exported copies
//! (`keyfloat audit export`) make rewrites evident.

pub use rusqlite::Connection;
use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{StoreError, StoreResult};
use crate::model::AuditEvent;

/// The hash of one record given its predecessor's.
pub fn record_hash(
    prev: &str,
    id: i64,
    at: i64,
    kind: &str,
    actor: Option<&str>,
    license_id: Option<i64>,
    detail: &str,
) -> String {
    let content = serde_json::json!([id, at, kind, actor, license_id, detail]).to_string();
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(content.as_bytes());
    hex::encode(h.finalize())
}

/// `(start_id, genesis, head_id, head_hash)` of the anchor row.
pub(crate) type ChainState = (i64, String, Option<i64>, Option<String>);

fn chain_state(conn: &Connection) -> StoreResult<Option<ChainState>> {
    Ok(conn
        .prepare_cached("SELECT start_id, genesis, head_id, head_hash FROM audit_chain WHERE one = 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?)
}

/// Appends `e` to the chain (inside the caller's transaction).
pub fn append(conn: &Connection, e: &AuditEvent) -> StoreResult<()> {
    let license_id = e.license_id.map(|id| id as i64);
    conn.prepare_cached("INSERT INTO audit (at, kind, actor, license_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![e.at, e.kind, e.actor, license_id, e.detail])?;
    let id = conn.last_insert_rowid();
    let Some((_, genesis, _, head)) = chain_state(conn)? else {
        return Err(StoreError::Failed("the audit chain anchor row is missing".into()));
    };
    let prev = head.unwrap_or(genesis);
    let hash = record_hash(&prev, id, e.at, &e.kind, e.actor.as_deref(), license_id, &e.detail);
    conn.prepare_cached("UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE id = ?3")?
        .execute(params![prev, hash, id])?;
    conn.prepare_cached("UPDATE audit_chain SET head_id = ?1, head_hash = ?2 WHERE one = 1")?
        .execute(params![id, hash])?;
    Ok(())
}

/// The first record that breaks the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadRecord {
    /// Its id (for a deletion at the end: the id the head names).
    pub id: i64,
    /// What is wrong.
    pub reason: String,
}

/// Result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// Records checked (inside the chain).
    pub records: u64,
    /// Records older than the chain (not covered).
    pub before_chain: u64,
    /// First id covered.
    pub start_id: i64,
    /// `None` = intact.
    pub first_bad: Option<BadRecord>,
}

impl ChainReport {
    /// Intact?
    pub fn ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

pub(crate) type Row = (
    i64,
    i64,
    String,
    Option<String>,
    Option<i64>,
    String,
    Option<String>,
    Option<String>,
);

/// Checks the whole chain.
pub fn verify(conn: &Connection) -> StoreResult<ChainReport> {
    let Some(state) = chain_state(conn)? else {
        return Err(no_anchor());
    };
    let before_chain: i64 = conn.query_row("SELECT COUNT(*) FROM audit WHERE id < ?1", [state.0], |r| r.get(0))?;
    let mut st = conn.prepare(
        "SELECT id, at, kind, actor, license_id, detail, prev_hash, hash FROM audit WHERE id >= ?1 ORDER BY id",
    )?;
    let rows = st.query_map([state.0], sqlite_row)?;
    verify_rows(state, before_chain, rows.map(|r| r.map_err(StoreError::from)))
}

/// One audit record read from SQLite, columns in [`Row`] order.
pub(crate) fn sqlite_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

/// One audit record read from PostgreSQL, columns in [`Row`] order.
pub(crate) fn pg_row(r: &tokio_postgres::Row) -> Row {
    (
        r.get(0),
        r.get(1),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
        r.get(6),
        r.get(7),
    )
}

pub(crate) fn no_anchor() -> StoreError {
    StoreError::Failed("no audit chain anchor: the database predates the chain".into())
}

/// The engine-independent check: `rows` are the records with `id >= start_id`, by id.
pub(crate) fn verify_rows(
    (start_id, genesis, head_id, head_hash): ChainState,
    before_chain: i64,
    rows: impl Iterator<Item = StoreResult<Row>>,
) -> StoreResult<ChainReport> {
    let mut report = ChainReport {
        records: 0,
        before_chain: u64::try_from(before_chain).unwrap_or(0),
        start_id,
        first_bad: None,
    };
    let mut prev = genesis;
    let mut last_id = None;
    for row in rows {
        let (id, at, kind, actor, license_id, detail, prev_hash, hash): Row = row?;
        report.records += 1;
        let bad = |reason: String| Some(BadRecord { id, reason });
        if prev_hash.as_deref() != Some(prev.as_str()) {
            report.first_bad = bad(match last_id {
                Some(p) => format!(
                    "record {id} does not follow record {p}: a record between them was deleted, or this one was inserted or altered"
                ),
                None => format!("record {id} does not start the chain: an earlier record was deleted, or this one was inserted"),
            });
            return Ok(report);
        }
        let want = record_hash(&prev, id, at, &kind, actor.as_deref(), license_id, &detail);
        if hash.as_deref() != Some(want.as_str()) {
            report.first_bad = bad(format!("record {id} was edited (its content does not match its hash)"));
            return Ok(report);
        }
        prev = want;
        last_id = Some(id);
    }
    if last_id != head_id || (head_id.is_some() && head_hash.as_deref() != Some(prev.as_str())) {
        report.first_bad = Some(BadRecord {
            id: head_id.unwrap_or(0),
            reason: match (last_id, head_id) {
                (Some(l), Some(h)) if l < h => format!("records after {l} up to {h} were deleted"),
                (None, Some(h)) => format!("every record up to {h} was deleted"),
                _ => "the chain head does not match the last record".into(),
            },
        });
    }
    Ok(report)
}

/// One exported record.
#[derive(Debug, Clone, Serialize)]
pub struct ExportedRecord {
    /// Id.
    pub id: i64,
    /// RFC 3339.
    pub at: String,
    /// Kind.
    pub kind: String,
    /// Actor.
    pub actor: Option<String>,
    /// License.
    pub license_id: Option<i64>,
    /// Detail.
    pub detail: String,
    /// Predecessor's hash.
    pub prev_hash: Option<String>,
    /// This record's hash.
    pub hash: Option<String>,
}

/// Every record, oldest first, to `out` as JSON lines.
pub fn export(conn: &Connection, out: &mut dyn std::io::Write) -> StoreResult<u64> {
    let mut st =
        conn.prepare("SELECT id, at, kind, actor, license_id, detail, prev_hash, hash FROM audit ORDER BY id")?;
    let rows = st.query_map([], |r| {
        Ok(ExportedRecord {
            id: r.get(0)?,
            at: crate::clock::format_micros(r.get(1)?),
            kind: r.get(2)?,
            actor: r.get(3)?,
            license_id: r.get(4)?,
            detail: r.get(5)?,
            prev_hash: r.get(6)?,
            hash: r.get(7)?,
        })
    })?;
    let mut n = 0;
    for row in rows {
        let line = serde_json::to_string(&row?).map_err(|e| StoreError::Failed(e.to_string()))?;
        writeln!(out, "{line}").map_err(|e| StoreError::Failed(e.to_string()))?;
        n += 1;
    }
    Ok(n)
}

/// Opens `<data_dir>/keyfloat.db` read-only (the server may be running).
pub fn open_read_only(data_dir: &std::path::Path) -> StoreResult<Connection> {
    let path = data_dir.join(super::sqlite::DB_FILE);
    if !path.exists() {
        return Err(StoreError::Failed(format!("{} does not exist", path.display())));
    }
    let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{transact_blocking, SqliteStore};

    fn store_with(n: usize) -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        for i in 0..n {
            transact_blocking(&s, move |tx| {
                tx.audit(&AuditEvent::new(
                    "k",
                    Some("me"),
                    Some(i as u64 + 1),
                    format!("event {i}"),
                ))
            })
            .unwrap();
        }
        s.flush().unwrap();
        (dir, s)
    }

    fn check(dir: &std::path::Path) -> ChainReport {
        verify(&open_read_only(dir).unwrap()).unwrap()
    }

    fn exec(dir: &std::path::Path, sql: &str) {
        Connection::open(dir.join(crate::store::sqlite::DB_FILE))
            .unwrap()
            .execute_batch(sql)
            .unwrap();
    }

    use crate::store::Store as _;

    #[test]
    fn an_untouched_chain_verifies() {
        let (dir, _s) = store_with(5);
        let r = check(dir.path());
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.records, 5);
    }

    #[test]
    fn an_edit_names_the_edited_record() {
        let (dir, s) = store_with(5);
        drop(s);
        exec(dir.path(), "UPDATE audit SET detail = 'nothing happened' WHERE id = 3");
        let r = check(dir.path());
        assert_eq!(r.first_bad.unwrap().id, 3);
    }

    #[test]
    fn a_deletion_in_the_middle_names_the_next_record() {
        let (dir, s) = store_with(5);
        drop(s);
        exec(dir.path(), "DELETE FROM audit WHERE id = 2");
        let r = check(dir.path());
        assert_eq!(r.first_bad.unwrap().id, 3);
    }

    #[test]
    fn a_deletion_at_the_end_is_seen_through_the_head() {
        let (dir, s) = store_with(5);
        drop(s);
        exec(dir.path(), "DELETE FROM audit WHERE id >= 4");
        let bad = check(dir.path()).first_bad.unwrap();
        assert_eq!(bad.id, 5, "{bad:?}");
    }

    #[test]
    fn an_inserted_record_is_named() {
        let (dir, s) = store_with(3);
        drop(s);
        // A forged record between 2 and 3: give it id 3 and shift the real 3 to 4.
        exec(
            dir.path(),
            "UPDATE audit SET id = 4 WHERE id = 3;
             INSERT INTO audit (id, at, kind, actor, license_id, detail, prev_hash, hash)
               SELECT 3, at, 'forged', 'x', NULL, 'x', hash, 'deadbeef' FROM audit WHERE id = 2;",
        );
        assert_eq!(check(dir.path()).first_bad.unwrap().id, 3);
    }

    #[test]
    fn records_before_the_chain_are_counted_not_checked_and_export_has_every_record() {
        let (dir, s) = store_with(2);
        drop(s);
        let conn = open_read_only(dir.path()).unwrap();
        let mut buf = Vec::new();
        assert_eq!(export(&conn, &mut buf).unwrap(), 2);
        let text = String::from_utf8(buf).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["kind"], "k");
        assert_eq!(first["hash"].as_str().unwrap().len(), 64);
    }
}
