//! How long the periodic sweep of lapsed seats holds the SQLite writer: the old one-statement
//! sweep (`purge_expired(None, now)`) against [`ModelStore::sweep_lapsed`], with nothing
//! lapsed and with every seat of a large license lapsed at once.
//!
//! A probe writes one tiny change every millisecond during each sweep; its slowest write
//! is how long every other writer waited. Every store is a fresh temporary SQLite data
//! dir, held (so the model decides seats, as under `keyfloat serve`).
//!
//! Run: `cargo run --release -p keyfloat-server --example sweep_stall -- [SEATS] [ROUNDS]`
//! (defaults 450000 seats, 2 rounds; about a minute a round).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyfloat_server::model::{License, LicenseSource, Registration};
use keyfloat_server::store::lock::DataDirLock;
use keyfloat_server::store::{transact, ModelStore, SqliteStore, Store, StoreError, StoreResult};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Seats per write job while filling the store.
const FILL_BATCH: usize = 10_000;
/// What `keyfloat serve` deletes per job of the sweep.
const CHUNK: usize = 256;

/// A held SQLite store with one license of `seats` seats that end at `expires_at`.
async fn build(seats: usize, expires_at: i64) -> Result<(tempfile::TempDir, Arc<ModelStore>, u64), Error> {
    let dir = tempfile::tempdir()?;
    let lock = DataDirLock::acquire(dir.path())?;
    let inner: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path())?.holding(lock));
    let store = Arc::new(ModelStore::new(inner));
    store.reload().await?;
    let terms = serde_json::from_value(serde_json::json!({
        "product": "bench",
        "auth": {"method": "key", "license_key": "BENCH-1"},
        "floating_users": 1_000_000,
    }))?;
    let license = License::new(1, terms, "sweep".into(), LicenseSource::Api, 0);
    let id = license.id;
    transact(store.as_ref(), move |tx| tx.insert_license(&license)).await?;
    for start in (0..seats).step_by(FILL_BATCH) {
        let end = (start + FILL_BATCH).min(seats);
        transact(store.as_ref(), move |tx| {
            (start..end).try_for_each(|i| {
                tx.put_registration(&Registration {
                    license_id: id,
                    // Shaped like `bench-http.sh`'s users: two writers, counters.
                    user: format!("u-1765000000-{}-{i}", i % 2),
                    registered_at: 1,
                    expires_at,
                    borrowed_until: None,
                    os_hostname: Some("bench-host-0001.example.internal".into()),
                    ip_local: Some("192.168.100.200".into()),
                    user_info: Some("keyfloat benchmark client, sized like an SDK request".into()),
                })
            })
        })
        .await?;
    }
    Ok((dir, store, id))
}

/// Runs `sweep` while a probe writes every millisecond; the sweep's figures and the probe's.
async fn probed(
    store: &Arc<ModelStore>,
    id: u64,
    sweep: impl std::future::Future<Output = StoreResult<usize>>,
) -> Result<String, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let (probe_store, probe_stop) = (Arc::clone(store), Arc::clone(&stop));
    let probe = tokio::spawn(async move {
        let mut waits = Vec::new();
        while !probe_stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            transact(probe_store.as_ref(), move |tx| tx.set_total_consumptions(id, 1)).await?;
            waits.push(t.elapsed());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok::<_, StoreError>(waits)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    let rows = sweep.await?;
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_millis(20)).await;
    stop.store(true, Ordering::Relaxed);
    let mut waits = probe.await??;
    waits.sort_unstable();
    let at = |q: usize| waits[(waits.len() - 1) * q / 100];
    Ok(format!(
        "{rows} rows in {took:.2?}; probe: {} writes, p50 {:.2?}, p99 {:.2?}, slowest {:.2?}",
        waits.len(),
        at(50),
        at(99),
        at(100)
    ))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let seats: usize = args.next().map_or(Ok(450_000), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(2), |a| a.parse())?;
    // Seats end at 10 (lapsed at 100) or far later (live at 100).
    let (lapsed, live, now) = (10, i64::MAX / 2, 100);
    for round in 1..=rounds {
        // `transact` queues the job when called: each old sweep is queued inside `probed`.
        let (_dir, s, id) = build(seats, live).await?;
        let old = probed(&s, id, async {
            transact(s.as_ref(), move |tx| tx.purge_expired(None, now)).await
        })
        .await?;
        println!("r{round} nothing lapsed, one statement: {old}");
        let new = probed(&s, id, s.sweep_lapsed(now, CHUNK, true)).await?;
        println!("r{round} nothing lapsed, sweep_lapsed:  {new}");
        let (_dir, s, id) = build(seats, lapsed).await?;
        let old = probed(&s, id, async {
            transact(s.as_ref(), move |tx| tx.purge_expired(None, now)).await
        })
        .await?;
        println!("r{round} all {seats} lapsed, one statement: {old}");
        let (_dir, s, id) = build(seats, lapsed).await?;
        let new = probed(&s, id, s.sweep_lapsed(now, CHUNK, true)).await?;
        println!("r{round} all {seats} lapsed, sweep_lapsed ({CHUNK} a job): {new}");
    }
    Ok(())
}
