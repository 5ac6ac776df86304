//! The HA lease against a real PostgreSQL (`KEYFLOAT_PG_URL`; `scripts/dev.sh test` starts a
//! private cluster). Each test creates and drops its own database. Expiry is forced with SQL
//! rather than waited for, so no test depends on timing except the local step-down, which
//! waits on a condition (never a fixed sleep).

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keyfloat_server::ha::lease::{self, Candidate, SCHEMA_IF_MISSING};
use keyfloat_server::ha::{BoxFuture, Cluster, Fence, LeaderHooks, Role};
use tokio_postgres::{Client, NoTls};

/// A database of its own on the test cluster, dropped at the end.
struct ScratchDb {
    admin: Client,
    name: String,
    url: String,
}

impl ScratchDb {
    async fn new(tag: &str) -> Self {
        let base = std::env::var("KEYFLOAT_PG_URL")
            .expect("KEYFLOAT_PG_URL is not set: start PostgreSQL with scripts/pg.sh start (scripts/dev.sh test does)");
        let admin = connect(&base).await;
        let name = format!("kf_ha_{tag}_{}", std::process::id());
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        let url = match base.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("KEYFLOAT_PG_URL has no database part: {base}"),
        };
        connect(&url).await.batch_execute(SCHEMA_IF_MISSING).await.unwrap();
        Self { admin, name, url }
    }

    async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// A new scratch database with the lease row in place, and a client on it.
    async fn with_lease_row(tag: &str) -> (Self, Client) {
        let scratch = Self::new(tag).await;
        let db = scratch.client().await;
        lease::ensure_row(&db).await.unwrap();
        (scratch, db)
    }

    async fn drop_db(self) {
        self.admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .await
            .unwrap();
    }
}

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

fn node(id: &str, lease_ms: u64) -> Candidate {
    Candidate {
        node_id: id.into(),
        advertise_url: Some(format!("http://{id}.test:8080")),
        lease: Duration::from_millis(lease_ms),
    }
}

/// Makes the live lease expire now (what waiting `lease` would do).
async fn expire(db: &Client) {
    db.execute("UPDATE kf_lease SET expires_at = now() - interval '1 ms'", &[])
        .await
        .unwrap();
}

/// Waits until the lease has expired by database time.
async fn wait_expired(db: &Client) {
    loop {
        let expired: bool = db
            .query_one(
                "SELECT expires_at <= clock_timestamp() FROM kf_lease WHERE name = 'leader'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if expired {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The store's fenced batch, as the PostgreSQL store runs it: the lease check `FOR KEY SHARE`
/// inside the transaction, one `kf_batches` row, commit. `false` = refused (not leader).
async fn fenced_commit(db: &mut Client, fence: &Fence) -> bool {
    let tx = db.transaction().await.unwrap();
    let ok = tx
        .query_opt(
            "SELECT 1 FROM kf_lease WHERE name = 'leader' AND holder = $1 AND epoch = $2 AND expires_at > now() FOR KEY SHARE",
            &[&fence.node_id(), &(fence.epoch() as i64)],
        )
        .await
        .unwrap()
        .is_some();
    if !ok {
        tx.rollback().await.unwrap();
        return false;
    }
    tx.execute(
        "INSERT INTO kf_batches (epoch, node_id) VALUES ($1, $2)",
        &[&(fence.epoch() as i64), &fence.node_id()],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    true
}

async fn batches_of(db: &Client, node_id: &str) -> i64 {
    db.query_one("SELECT count(*) FROM kf_batches WHERE node_id = $1", &[&node_id])
        .await
        .unwrap()
        .get(0)
}

/// Polls `ready` every 10 ms for at most `limit`.
async fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !ready() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[derive(Debug)]
struct FakeHooks {
    key_ok: AtomicBool,
    reloads: std::sync::atomic::AtomicUsize,
}

impl FakeHooks {
    fn new(key_ok: bool) -> Arc<Self> {
        Arc::new(Self {
            key_ok: AtomicBool::new(key_ok),
            reloads: Default::default(),
        })
    }
}

impl LeaderHooks for FakeHooks {
    fn may_lead(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move { self.key_ok.load(Ordering::SeqCst) })
    }
    fn reload(&self) -> BoxFuture<'_, Result<(), String>> {
        self.reloads.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL (KEYFLOAT_PG_URL)"]
async fn each_grant_increments_the_epoch_and_another_node_cannot_take_a_live_lease() {
    let (scratch, db) = ScratchDb::with_lease_row("grant").await;
    let (a, b) = (node("a", 60_000), node("b", 60_000));
    assert_eq!(lease::try_acquire(&db, &a).await.unwrap(), Some(1));
    assert_eq!(lease::try_acquire(&db, &b).await.unwrap(), None, "b took a live lease");
    assert!(lease::renew(&db, &a, 1).await.unwrap());
    assert!(!lease::renew(&db, &b, 1).await.unwrap(), "only the holder renews");
    // A grant whose answer was lost (or a restarted node): re-granted under a new epoch,
    // which fences the old one.
    assert_eq!(lease::try_acquire(&db, &a).await.unwrap(), Some(2));
    assert!(!lease::renew(&db, &a, 1).await.unwrap(), "epoch 1 is superseded");
    assert!(lease::renew(&db, &a, 2).await.unwrap());
    let row = lease::current(&db).await.unwrap();
    assert_eq!((row.holder.as_deref(), row.epoch, row.live), (Some("a"), 2, true));
    assert_eq!(row.advertise_url.as_deref(), Some("http://a.test:8080"));

    assert!(lease::release(&db, &a, 2).await.unwrap());
    assert_eq!(lease::try_acquire(&db, &b).await.unwrap(), Some(3));
    assert!(!lease::renew(&db, &a, 2).await.unwrap(), "a's old epoch is gone");
    assert!(!lease::release(&db, &a, 2).await.unwrap(), "a cannot release b's lease");
    scratch.drop_db().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (KEYFLOAT_PG_URL)"]
async fn an_expired_lease_is_taken_over_and_the_old_holder_cannot_renew() {
    let (scratch, db) = ScratchDb::with_lease_row("expiry").await;
    let (a, b) = (node("a", 60_000), node("b", 60_000));
    assert_eq!(lease::try_acquire(&db, &a).await.unwrap(), Some(1));
    expire(&db).await;
    assert!(
        !lease::renew(&db, &a, 1).await.unwrap(),
        "an expired lease is not renewed"
    );
    assert_eq!(lease::try_acquire(&db, &b).await.unwrap(), Some(2));
    let row = lease::current(&db).await.unwrap();
    assert_eq!((row.holder.as_deref(), row.epoch), (Some("b"), 2));
    scratch.drop_db().await;
}

/// A node paused past its lease (SIGSTOP, GC, partition) wakes up with a stale epoch: its
/// batches are refused, and a batch that passed the check just before the takeover commits
/// before the new grant (the grant waits for its row lock).
#[tokio::test]
#[ignore = "needs PostgreSQL (KEYFLOAT_PG_URL)"]
async fn a_paused_node_commits_nothing_once_fenced() {
    let (scratch, db) = ScratchDb::with_lease_row("fenced").await;
    // A short lease: expiry must come by time here (an UPDATE would wait for the batch).
    let (a, b) = (node("a", 500), node("b", 60_000));
    let fence_a = Fence::new("a");
    let mut conn_a = scratch.client().await;
    let epoch = lease::try_acquire(&db, &a).await.unwrap().unwrap();
    let fence_a = grant(&fence_a, epoch);
    assert!(fenced_commit(&mut conn_a, &fence_a).await);

    // A batch of `a` in flight holds the check's row lock across the expiry...
    let tx_conn = scratch.client().await;
    tx_conn.batch_execute("BEGIN").await.unwrap();
    tx_conn
        .query_one(
            "SELECT 1 FROM kf_lease WHERE name = 'leader' AND holder = 'a' AND epoch = $1 AND expires_at > now() FOR KEY SHARE",
            &[&(epoch as i64)],
        )
        .await
        .unwrap();
    // The leader's own renewals do not wait for its batches in flight.
    assert!(lease::renew(&db, &a, epoch).await.unwrap());
    wait_expired(&db).await;
    // ...so b's grant waits for it.
    let db_b = scratch.client().await;
    let b2 = b.clone();
    let takeover = tokio::spawn(async move { lease::try_acquire(&db_b, &b2).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !takeover.is_finished(),
        "the grant must wait for the batch that passed the check"
    );
    tx_conn
        .execute(
            "INSERT INTO kf_batches (epoch, node_id) VALUES ($1, 'a')",
            &[&(epoch as i64)],
        )
        .await
        .unwrap();
    tx_conn.batch_execute("COMMIT").await.unwrap();
    assert_eq!(takeover.await.unwrap(), Some(epoch + 1));

    // `a` wakes up still believing it leads: nothing it sends commits.
    let before = batches_of(&db, "a").await;
    for _ in 0..5 {
        assert!(!fenced_commit(&mut conn_a, &fence_a).await, "a stale epoch committed");
    }
    assert_eq!(batches_of(&db, "a").await, before);
    scratch.drop_db().await;
}

/// A fence standing for `epoch` (the crate grants it from the lease task only).
fn grant(fence: &Fence, epoch: u64) -> Fence {
    fence.set_epoch(epoch);
    fence.clone()
}

#[tokio::test]
#[ignore = "needs PostgreSQL (KEYFLOAT_PG_URL)"]
async fn the_lease_task_leads_after_reload_releases_on_shutdown_and_a_standby_takes_over() {
    let scratch = ScratchDb::new("task").await;
    let db = scratch.client().await;
    let hooks_a = FakeHooks::new(true);
    let a = Cluster::new(node("a", 2_000));
    a.start(scratch.url.clone(), hooks_a.clone());
    wait_until(Duration::from_secs(10), "a leads", || a.role() == Role::Leader).await;
    assert_eq!(
        hooks_a.reloads.load(Ordering::SeqCst),
        1,
        "views reloaded before serving"
    );
    let b = Cluster::new(node("b", 2_000));
    b.start(scratch.url.clone(), FakeHooks::new(true));
    wait_until(Duration::from_secs(10), "b sees a as leader", || {
        b.leader_url().as_deref() == Some("http://a.test:8080")
    })
    .await;
    assert_eq!(b.role(), Role::Standby);
    assert_eq!(b.fence().epoch(), 0);

    let epoch_a = a.fence().epoch();
    a.shutdown().await;
    assert_eq!(a.fence().epoch(), 0);
    let row = lease::current(&db).await.unwrap();
    assert!(row.holder.as_deref() != Some("a"), "a released its lease: {row:?}");
    // A planned switchover: b takes the free lease within its poll period.
    wait_until(Duration::from_secs(2), "b leads", || b.role() == Role::Leader).await;
    assert_eq!(b.fence().epoch(), epoch_a + 1);
    let nodes = lease::nodes(&db).await.unwrap();
    assert_eq!(nodes.iter().map(|n| n.node_id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    b.shutdown().await;
    scratch.drop_db().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (KEYFLOAT_PG_URL)"]
async fn a_leader_whose_key_goes_away_gives_up_and_a_keyless_node_never_leads() {
    let scratch = ScratchDb::new("key").await;
    let hooks_a = FakeHooks::new(true);
    let a = Cluster::new(node("a", 2_000));
    a.start(scratch.url.clone(), hooks_a.clone());
    let keyless = Cluster::new(node("c", 2_000));
    keyless.start(scratch.url.clone(), FakeHooks::new(false));
    wait_until(Duration::from_secs(10), "a leads", || a.role() == Role::Leader).await;
    let hooks_b = FakeHooks::new(true);
    let b = Cluster::new(node("b", 2_000));
    b.start(scratch.url.clone(), hooks_b);

    hooks_a.key_ok.store(false, Ordering::SeqCst);
    wait_until(Duration::from_secs(5), "b leads", || b.role() == Role::Leader).await;
    assert_eq!(a.role(), Role::Standby);
    assert_eq!(keyless.role(), Role::Standby);
    let db = scratch.client().await;
    let nodes = lease::nodes(&db).await.unwrap();
    let c = nodes.iter().find(|n| n.node_id == "c").unwrap();
    assert!(!c.key_ok);
    for n in [a, b, keyless] {
        n.shutdown().await;
    }
    scratch.drop_db().await;
}

/// A leader that cannot renew (here: the lease row is locked, as a stalled database or a
/// partition would leave it) stops writing on its own before its lease can expire.
#[tokio::test]
#[ignore = "needs PostgreSQL (KEYFLOAT_PG_URL)"]
async fn a_leader_that_cannot_renew_steps_down_before_its_lease_expires() {
    let scratch = ScratchDb::new("stepdown").await;
    let a = Cluster::new(node("a", 2_000));
    a.start(scratch.url.clone(), FakeHooks::new(true));
    wait_until(Duration::from_secs(10), "a leads", || a.role() == Role::Leader).await;
    let blocker = scratch.client().await;
    blocker.batch_execute("BEGIN").await.unwrap();
    blocker
        .query_one("SELECT 1 FROM kf_lease WHERE name = 'leader' FOR UPDATE", &[])
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "a steps down", || a.fence().epoch() == 0).await;
    let live: bool = blocker
        .query_one(
            "SELECT expires_at > clock_timestamp() FROM kf_lease WHERE name = 'leader'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        live,
        "a must stop writing while its lease is still live in the database"
    );
    assert_eq!(a.role(), Role::Standby);
    blocker.batch_execute("ROLLBACK").await.unwrap();
    a.shutdown().await;
    scratch.drop_db().await;
}

/// Tokens issued by one node are accepted by the others: every node reads the same JWT
/// secret from the database; the first one to ask creates it.
#[tokio::test]
#[ignore = "needs PostgreSQL (KEYFLOAT_PG_URL)"]
async fn every_node_gets_the_same_jwt_secret() {
    let scratch = ScratchDb::new("secret").await;
    let first = lease::load_jwt_secret(&scratch.url).await.unwrap();
    let second = lease::load_jwt_secret(&scratch.url).await.unwrap();
    assert_eq!(first.len(), 32);
    assert_eq!(first, second);
    let a = keyfloat_server::auth::TokenKeys::from_secret(&first);
    let b = keyfloat_server::auth::TokenKeys::from_secret(&second);
    let token = a
        .issue(
            "ann",
            keyfloat_server::model::Role::Admin,
            0,
            keyfloat_server::auth::MODE_AUTH,
        )
        .unwrap();
    assert!(b.decode(&token).is_some(), "a token of node a is valid on node b");
    scratch.drop_db().await;
}
