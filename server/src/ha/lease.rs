//! The lease row in PostgreSQL: grant, renew, release, and the node heartbeats.
//!
//! One row `kf_lease(name = 'leader')`. Every grant increments `epoch`; a write batch of the
//! store commits only while `holder = node AND epoch = its epoch AND expires_at > now()`,
//! checked inside the batch with `FOR KEY SHARE`. A grant locks the row `FOR UPDATE` (which
//! conflicts with that lock), so it waits for the batches of the previous epoch that
//! already passed the check to commit; a renewal (`FOR NO KEY UPDATE`, implied by its
//! `UPDATE`) does not, so a busy leader's renewals never queue behind its own writes. All
//! times are the database's `now()`: the nodes' clocks never decide who leads.

use std::time::Duration;

use tokio_postgres::Client;

/// The HA tables, as the PostgreSQL store's migrations create them (idempotent). Tests that
/// exercise the lease alone run it on their own database.
pub const SCHEMA_IF_MISSING: &str = "
CREATE TABLE IF NOT EXISTS kf_lease (name TEXT PRIMARY KEY, holder TEXT, advertise_url TEXT,
    epoch BIGINT NOT NULL DEFAULT 0, expires_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS kf_nodes (node_id TEXT PRIMARY KEY, advertise_url TEXT,
    key_ok BOOLEAN NOT NULL DEFAULT false, last_seen TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS kf_batches (id BIGSERIAL PRIMARY KEY, epoch BIGINT NOT NULL,
    node_id TEXT NOT NULL, committed_at TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS kf_secrets (name TEXT PRIMARY KEY, value BYTEA NOT NULL);
";

/// Who competes: this node and how long a grant lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// `--node-id`.
    pub node_id: String,
    /// `--advertise-url`: where clients and peers reach this node.
    pub advertise_url: Option<String>,
    /// `--lease-secs`.
    pub lease: Duration,
}

/// The lease row as a node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct LeaseRow {
    /// The holder's node id (`None` after a release).
    pub holder: Option<String>,
    /// The holder's advertised URL.
    pub advertise_url: Option<String>,
    /// The epoch of the last grant.
    pub epoch: u64,
    /// Whether the lease has not expired yet (database time).
    pub live: bool,
}

/// One row of `kf_nodes`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeRow {
    /// Node id.
    pub node_id: String,
    /// Its advertised URL.
    pub advertise_url: Option<String>,
    /// Whether its key allows it to lead.
    pub key_ok: bool,
    /// Seconds since its last heartbeat (database time).
    pub seen_secs_ago: f64,
}

fn epoch_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn as_db_epoch(epoch: u64) -> i64 {
    i64::try_from(epoch).unwrap_or(i64::MAX)
}

/// Bounds every lease query on the server side: a grant that cannot get the lease row's
/// lock within `lock_wait` fails there (and is retried at the next poll) instead of
/// committing later, unseen, after the client gave up on it.
pub async fn limit_waits(db: &Client, lock_wait: Duration, statement: Duration) -> Result<(), tokio_postgres::Error> {
    db.batch_execute(&format!(
        "SET lock_timeout = {}; SET statement_timeout = {}",
        lock_wait.as_millis().max(1),
        statement.as_millis().max(1)
    ))
    .await
}

/// Creates the lease row if missing (idempotent).
pub async fn ensure_row(db: &Client) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "INSERT INTO kf_lease (name) VALUES ('leader') ON CONFLICT (name) DO NOTHING",
        &[],
    )
    .await
    .map(drop)
}

/// Takes the lease if it is free, expired, or already this node's (a grant whose answer
/// was lost, or a previous life of this node: node ids are unique per node): answers the
/// new epoch, or `None` when another node holds a live lease. A new epoch fences whatever
/// the old one still had in flight, so re-granting to the same node is as safe as any grant.
pub async fn try_acquire(db: &Client, me: &Candidate) -> Result<Option<u64>, tokio_postgres::Error> {
    let row = db
        .query_opt(
            "WITH locked AS (SELECT name FROM kf_lease WHERE name = 'leader' FOR UPDATE)
             UPDATE kf_lease SET holder = $1, advertise_url = $2, epoch = epoch + 1,
                 expires_at = now() + make_interval(secs => $3)
             FROM locked
             WHERE kf_lease.name = locked.name
               AND (holder IS NULL OR holder = $1 OR expires_at IS NULL OR expires_at <= now())
             RETURNING epoch",
            &[&me.node_id, &me.advertise_url, &me.lease.as_secs_f64()],
        )
        .await?;
    Ok(row.map(|r| epoch_of(r.get(0))))
}

/// Extends this node's live lease of `epoch`: `false` when it is no longer ours (expired,
/// taken over or released), in which case the node must stop writing.
pub async fn renew(db: &Client, me: &Candidate, epoch: u64) -> Result<bool, tokio_postgres::Error> {
    let n = db
        .execute(
            "UPDATE kf_lease SET expires_at = now() + make_interval(secs => $3)
             WHERE name = 'leader' AND holder = $1 AND epoch = $2 AND expires_at > now()",
            &[&me.node_id, &as_db_epoch(epoch), &me.lease.as_secs_f64()],
        )
        .await?;
    Ok(n == 1)
}

/// Gives the lease of `epoch` up at once (planned switchover): the next standby to poll
/// takes it. Waits, through the row lock, for this node's batches that already passed the
/// fence check.
pub async fn release(db: &Client, me: &Candidate, epoch: u64) -> Result<bool, tokio_postgres::Error> {
    let n = db
        .execute(
            "UPDATE kf_lease SET holder = NULL, advertise_url = NULL, expires_at = NULL
             WHERE name = 'leader' AND holder = $1 AND epoch = $2",
            &[&me.node_id, &as_db_epoch(epoch)],
        )
        .await?;
    Ok(n == 1)
}

/// The lease row now.
pub async fn current(db: &Client) -> Result<LeaseRow, tokio_postgres::Error> {
    let row = db
        .query_opt(
            "SELECT holder, advertise_url, epoch, COALESCE(expires_at > now(), false)
             FROM kf_lease WHERE name = 'leader'",
            &[],
        )
        .await?;
    Ok(row.map_or_else(LeaseRow::default, |r| LeaseRow {
        holder: r.get(0),
        advertise_url: r.get(1),
        epoch: epoch_of(r.get(2)),
        live: r.get(3),
    }))
}

/// Records that this node is alive and whether its key allows it to lead.
pub async fn heartbeat(db: &Client, me: &Candidate, key_ok: bool) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "INSERT INTO kf_nodes (node_id, advertise_url, key_ok, last_seen) VALUES ($1, $2, $3, now())
         ON CONFLICT (node_id) DO UPDATE
         SET advertise_url = EXCLUDED.advertise_url, key_ok = EXCLUDED.key_ok, last_seen = now()",
        &[&me.node_id, &me.advertise_url, &key_ok],
    )
    .await
    .map(drop)
}

/// Every node that ever sent a heartbeat, by id.
pub async fn nodes(db: &Client) -> Result<Vec<NodeRow>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT node_id, advertise_url, key_ok, EXTRACT(EPOCH FROM now() - last_seen)::float8
             FROM kf_nodes ORDER BY node_id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| NodeRow {
            node_id: r.get(0),
            advertise_url: r.get(1),
            key_ok: r.get(2),
            seen_secs_ago: r.get(3),
        })
        .collect())
}

/// The secret `name` shared by every node (e.g. the JWT signing secret): the first node
/// to ask stores `fresh`, every node then reads the same value.
pub async fn shared_secret(db: &Client, name: &str, fresh: &[u8]) -> Result<Vec<u8>, tokio_postgres::Error> {
    db.execute(
        "INSERT INTO kf_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        &[&name, &fresh],
    )
    .await?;
    let row = db
        .query_one("SELECT value FROM kf_secrets WHERE name = $1", &[&name])
        .await?;
    Ok(row.get(0))
}

/// The JWT signing secret every node of the cluster shares (`kf_secrets.jwt`), made on
/// first use from 32 random bytes. The store's migrations create the table.
pub async fn load_jwt_secret(url: &str) -> Result<Vec<u8>, tokio_postgres::Error> {
    let (db, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(conn);
    let mut fresh = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut fresh);
    let secret = shared_secret(&db, "jwt", &fresh).await;
    drop(db);
    let _ = driver.await;
    secret
}
