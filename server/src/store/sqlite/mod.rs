//! The embedded store: one SQLite database (WAL, `synchronous=FULL`) in the data dir,
//! written by one thread that group-commits batches of jobs, read by a small pool of
//! read-only connections (the queues are [`super::queues`]).

mod read;
mod schema;
mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::Connection;

use super::queues::{self, Queues, Reader, SavepointTx, Writer};
use super::{Job, ReadTx, StoreError, StoreResult, Tx};
use crate::model::LicenseTerms;
use read::SqliteTx;

pub use super::queues::{CommitStats, StoreOptions};

/// File name inside the data dir.
pub const DB_FILE: &str = "keyfloat.db";

/// SQLite-backed [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    queues: Queues,
    // Released after the queues closed (fields drop in order).
    lock: Option<super::lock::DataDirLock>,
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
        let mut conn = schema::open_connection(&path)?;
        schema::migrate(&mut conn)?;
        for p in crate::files::private_paths(data_dir).iter().skip(1) {
            if p.exists() {
                crate::files::make_private_file(p).map_err(private)?;
            }
        }
        let readers = (0..options.readers.max(1))
            .map(|_| schema::open_reader(&path).map(|conn| SqliteReader { conn }))
            .collect::<StoreResult<Vec<_>>>()?;
        let writer = SqliteWriter {
            conn,
            terms: HashMap::new(),
        };
        let queues = Queues::start("keyfloat", writer, readers, options)?;
        Ok(Self {
            path,
            queues,
            lock: None,
        })
    }

    /// Keeps `lock` (the data dir's, see [`super::lock`]) for as long as the store lives.
    pub fn holding(mut self, lock: super::lock::DataDirLock) -> Self {
        self.lock = Some(lock);
        self
    }

    /// Whether this store holds its data dir's lock (then no other process writes it).
    pub fn holds_data_dir(&self) -> bool {
        self.lock.is_some()
    }

    /// Group-commit counters.
    pub fn stats(&self) -> &CommitStats {
        self.queues.stats()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the writer after the queued jobs, and the readers.
    pub fn close(&self) {
        self.queues.close();
    }
}

queues::store_via_queues!(SqliteStore);

/// Runs a statement without parameters through the connection's statement cache.
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql).and_then(|mut st| st.execute([]).map(|_| ()))
}

fn checkpoint(conn: &Connection) -> StoreResult<()> {
    Ok(conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?)
}

struct SqliteWriter {
    conn: Connection,
    /// Parsed terms by license id (see [`SqliteTx`]).
    terms: HashMap<u64, Arc<LicenseTerms>>,
}

impl SavepointTx for SqliteTx<'_> {
    fn exec(&mut self, sql: &'static str) -> StoreResult<()> {
        Ok(exec(self.conn, sql)?)
    }

    fn tx(&mut self) -> &mut dyn Tx {
        self
    }

    fn trace(&mut self) -> queues::Trace {
        // A failed statement is undone on its own by SQLite and the transaction goes on,
        // unless the error rolled the whole transaction back (I/O, disk full).
        queues::Trace {
            changes: self.conn.total_changes(),
            failures: u64::from(self.conn.is_autocommit()),
        }
    }
}

impl Writer for SqliteWriter {
    fn commit_batch(&mut self, batch: &mut [Box<dyn Job>]) -> StoreResult<()> {
        exec(&self.conn, "BEGIN IMMEDIATE")?;
        let mut tx = SqliteTx {
            conn: &self.conn,
            terms: Some(&mut self.terms),
        };
        let result = queues::run_jobs(&mut tx, batch).and_then(|()| Ok(exec(&self.conn, "COMMIT")?));
        if result.is_err() {
            let _ = exec(&self.conn, "ROLLBACK");
            // A failed commit rolled back inserts the cache may already know about.
            self.terms.clear();
        }
        result
    }

    fn flush(&mut self) -> StoreResult<()> {
        checkpoint(&self.conn)
    }

    fn close(&mut self) {
        // Leave a checkpointed database behind.
        let _ = checkpoint(&self.conn);
    }
}

struct SqliteReader {
    conn: Connection,
}

impl Reader for SqliteReader {
    fn snapshot(&mut self, f: &mut dyn FnMut(&mut dyn ReadTx)) -> StoreResult<()> {
        exec(&self.conn, "BEGIN")?;
        f(&mut SqliteTx {
            conn: &self.conn,
            terms: None,
        });
        if let Err(e) = exec(&self.conn, "COMMIT") {
            let _ = exec(&self.conn, "ROLLBACK");
            return Err(e.into());
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::error::ApiError;
    use crate::model::{Account, Registration, Role};
    use crate::store::{transact, transact_blocking, Store};
    use std::sync::atomic::{AtomicU64, Ordering};

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

    /// The store's own seat count agrees with the rows through new seats, renewals
    /// (upserts), lapses, releases, a refused job and a license removal.
    #[test]
    fn seat_count_follows_the_registrations() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let license = crate::model::tests::sample();
        let id = license.id;
        let reg = move |user: &str, expires_at: i64| seat(id, user, expires_at);
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
        let id = crate::store::insert_sample(s.as_ref()).await;
        // Hold the writer so every job below lands in one batch.
        let (release, blocker) = crate::store::hold_writer(s.as_ref());
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
        crate::store::release_writer(release, blocker, jobs).await;
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
        let (release, blocker) = crate::store::hold_writer(s.as_ref());
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
        let (rrelease, rblocker) = crate::store::hold_reader(s.as_ref());
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
