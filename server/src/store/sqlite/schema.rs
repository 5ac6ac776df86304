//! The SQLite schema: versioned migrations (`PRAGMA user_version` = how many ran) and
//! how connections are opened.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::store::{applied_migrations, StoreResult};

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
    // The server decides seats from its in-memory model (one process holds the data dir:
    // `store::pending`), so a seat row goes into its table and key index only. The
    // seat-count table with its triggers and the expiry index cost two more B-trees and a
    // trigger program per seat written (BENCHMARKS.md §4.6);
    // what still counts or purges in SQL scans the license's rows by primary-key prefix.
    r#"
DROP TRIGGER seat_counts_insert;
DROP TRIGGER seat_counts_delete;
DROP TABLE seat_counts;
DROP INDEX registrations_by_expiry;
"#,
];

pub(super) fn open_connection(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk (WAL fsynced) before it returns; power-loss safe.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

pub(super) fn open_reader(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // The hot reads are answered by the in-memory model; what reaches a reader (listings,
    // logins, audit) streams through once. SQLite's default 2 MiB page cache per reader
    // only kept a copy of every listed page resident (+4 MiB RSS for 10,000 seats); the
    // OS page cache still holds the file.
    conn.pragma_update(None, "cache_size", -64)?;
    Ok(conn)
}

pub(super) fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let applied = applied_migrations(version, MIGRATIONS.len())?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Seats stored before the seat counter and the expiry index were dropped are all there
    /// after, counted, and still go with their license.
    #[test]
    fn seats_survive_dropping_the_seat_counter() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_connection(&dir.path().join("keyfloat.db")).unwrap();
        let before = MIGRATIONS.len() - 1;
        for (i, sql) in MIGRATIONS.iter().take(before).enumerate() {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", (i + 1) as i64).unwrap();
        }
        conn.execute(
            "INSERT INTO licenses (id, seq, product, terms, activation_hardware_id, source, added_at)
             VALUES (7, 1, 'p', '{}', '', 'test', 0)",
            [],
        )
        .unwrap();
        for user in ["a", "b", "c"] {
            conn.execute(
                "INSERT INTO registrations (license_id, user, registered_at, expires_at, os_hostname)
                 VALUES (7, ?1, 1, 100, 'h')",
                [user],
            )
            .unwrap();
        }
        migrate(&mut conn).unwrap();
        let count = |conn: &Connection| -> i64 {
            conn.query_row(
                "SELECT COUNT(*) FROM registrations WHERE license_id = 7 AND os_hostname = 'h'",
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert_eq!(count(&conn), 3);
        let leftovers: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_schema WHERE name IN ('seat_counts', 'registrations_by_expiry')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(leftovers, 0);
        conn.execute("DELETE FROM licenses WHERE id = 7", []).unwrap();
        assert_eq!(count(&conn), 0, "a license's seats go with it");
    }
}
