//! The PostgreSQL schema: versioned migrations like SQLite's (`kf_schema.version` = how
//! many ran), applied under an advisory lock so servers starting together migrate once.
//!
//! Text columns that order a listing use `COLLATE "C"` (byte order, as SQLite's): keyset
//! pagination must not depend on the database's locale. Times are the same i64
//! microseconds as in SQLite (the HA tables, read by SQL only, use `TIMESTAMPTZ`).

use super::PgConn;

use crate::store::{applied_migrations, StoreResult};

/// Advisory lock key of the migrations ("kf-migr").
const MIGRATION_LOCK: i64 = 0x006b_662d_6d69_6772;

/// Schema migrations, in order.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE licenses (
    id BIGINT PRIMARY KEY,
    seq BIGINT NOT NULL,
    product TEXT NOT NULL,
    terms TEXT NOT NULL,
    activation_hardware_id TEXT NOT NULL,
    source TEXT NOT NULL,
    added_at BIGINT NOT NULL,
    total_consumptions BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX licenses_by_product ON licenses(product, seq);
CREATE TABLE feature_consumptions (
    license_id BIGINT NOT NULL REFERENCES licenses(id) ON DELETE CASCADE,
    feature TEXT COLLATE "C" NOT NULL,
    total BIGINT NOT NULL,
    PRIMARY KEY (license_id, feature)
);
CREATE TABLE registrations (
    license_id BIGINT NOT NULL REFERENCES licenses(id) ON DELETE CASCADE,
    user_name TEXT COLLATE "C" NOT NULL,
    registered_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    borrowed_until BIGINT,
    os_hostname TEXT,
    ip_local TEXT,
    user_info TEXT,
    PRIMARY KEY (license_id, user_name)
);
CREATE INDEX registrations_by_expiry ON registrations(license_id, expires_at);
CREATE TABLE feature_registrations (
    license_id BIGINT NOT NULL REFERENCES licenses(id) ON DELETE CASCADE,
    feature TEXT COLLATE "C" NOT NULL,
    user_name TEXT COLLATE "C" NOT NULL,
    registered_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    os_hostname TEXT,
    ip_local TEXT,
    user_info TEXT,
    PRIMARY KEY (license_id, feature, user_name)
);
CREATE TABLE accounts (
    username TEXT COLLATE "C" PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL
);
CREATE TABLE token_generations (
    username TEXT PRIMARY KEY,
    generation BIGINT NOT NULL
);
CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT,
    license_id BIGINT,
    detail TEXT NOT NULL,
    prev_hash TEXT,
    hash TEXT
);
CREATE TABLE audit_chain (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    start_id BIGINT NOT NULL,
    genesis TEXT NOT NULL,
    head_id BIGINT,
    head_hash TEXT,
    created_at BIGINT NOT NULL
);
INSERT INTO audit_chain (one, start_id, genesis, created_at)
    VALUES (1, 1, md5(random()::text) || md5(random()::text),
            (extract(epoch FROM now()) * 1000000)::BIGINT);
"#,
    // Leadership (issue 14b): one lease row, the nodes seen, one row per fenced write
    // batch, and secrets every node shares (the JWT secret).
    r#"
CREATE TABLE kf_lease (
    name TEXT PRIMARY KEY,
    holder TEXT,
    advertise_url TEXT,
    epoch BIGINT NOT NULL DEFAULT 0,
    expires_at TIMESTAMPTZ
);
INSERT INTO kf_lease (name) VALUES ('leader');
CREATE TABLE kf_nodes (
    node_id TEXT PRIMARY KEY,
    advertise_url TEXT,
    key_ok BOOLEAN NOT NULL DEFAULT false,
    last_seen TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE kf_batches (
    id BIGSERIAL PRIMARY KEY,
    epoch BIGINT NOT NULL,
    node_id TEXT NOT NULL,
    committed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE kf_secrets (
    name TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
"#,
    // Seats in O(1), as in SQLite: a trigger-kept row count per license, so a new seat does
    // not count every registration of its license (lapsed rows are found by the expiry index).
    r#"
CREATE TABLE seat_counts (
    license_id BIGINT PRIMARY KEY REFERENCES licenses(id) ON DELETE CASCADE,
    n BIGINT NOT NULL
);
INSERT INTO seat_counts (license_id, n) SELECT license_id, COUNT(*) FROM registrations GROUP BY license_id;
CREATE FUNCTION kf_seat_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO seat_counts (license_id, n) VALUES (NEW.license_id, 1)
            ON CONFLICT (license_id) DO UPDATE SET n = seat_counts.n + 1;
        RETURN NEW;
    END IF;
    UPDATE seat_counts SET n = n - 1 WHERE license_id = OLD.license_id;
    RETURN OLD;
END
$$;
CREATE TRIGGER seat_counts_change AFTER INSERT OR DELETE ON registrations
    FOR EACH ROW EXECUTE FUNCTION kf_seat_count();
"#,
    // A new seat counts itself in its own statement (`put_registration`'s data-modifying
    // CTE): a PL/pgSQL trigger call per inserted row cost the new-seat path ~20 % of its
    // server time. Deletions (release, purge, cascades) keep the trigger.
    r#"
DROP TRIGGER seat_counts_change ON registrations;
CREATE TRIGGER seat_counts_delete AFTER DELETE ON registrations
    FOR EACH ROW EXECUTE FUNCTION kf_seat_count();
"#,
];

/// Applies the migrations not applied yet; refuses a schema newer than this build.
pub(super) fn migrate(conn: &mut PgConn) -> StoreResult<()> {
    conn.exec("BEGIN")?;
    let result = migrate_in_tx(conn);
    match result {
        Ok(()) => conn.exec("COMMIT"),
        Err(e) => {
            let _ = conn.exec("ROLLBACK");
            Err(e)
        }
    }
}

fn migrate_in_tx(conn: &mut PgConn) -> StoreResult<()> {
    conn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    conn.exec(
        "CREATE TABLE IF NOT EXISTS kf_schema (
             one INTEGER PRIMARY KEY CHECK (one = 1),
             version INTEGER NOT NULL
         );
         INSERT INTO kf_schema (one, version) VALUES (1, 0) ON CONFLICT (one) DO NOTHING;",
    )?;
    let version: i32 = conn
        .query_one("SELECT version FROM kf_schema WHERE one = 1", &[])?
        .get(0);
    let applied = applied_migrations(i64::from(version), MIGRATIONS.len())?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        conn.exec(sql)?;
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        conn.execute("UPDATE kf_schema SET version = $1 WHERE one = 1", &[&version])?;
    }
    Ok(())
}
