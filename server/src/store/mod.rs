//! Durable state behind small object-safe traits.
//!
//! [`ReadTx`] is what a read sees (one consistent snapshot), [`Tx`] adds the writes.
//! [`Store`] accepts write [`Job`]s and [`ReadJob`]s. The SQLite store runs every write job
//! on one writer thread and *group-commits*: it drains the queued jobs into one transaction
//! (a savepoint per job, so a refused job leaves no trace), commits once with
//! `synchronous=FULL`, and only then answers every job of the batch. A success is therefore
//! never sent before its change is durable, there is one fsync per batch instead of one per
//! request, and seat/consumption limits hold under any concurrency because write jobs run
//! one after another. Reads never queue behind that fsync: a small pool of read-only WAL
//! connections serves them, each read inside one snapshot (so never a half-applied batch).
//!
//! Both queues are bounded: when one is full the job is refused at once with
//! [`StoreError::Busy`] (`503 server_busy`), so an overload costs neither unbounded memory
//! nor unbounded latency.
//!
//! Another backend (e.g. a shared PostgreSQL for an active/standby pair) implements the
//! same traits.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::model::{Account, AuditEvent, FeatureRegistration, License, LicenseTerms, Registration};

pub mod audit_chain;
pub mod copy;
pub mod lock;
pub mod model_store;
pub mod open;
pub mod pending;
pub mod postgres;
pub mod queues;
pub mod sqlite;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod suite;
pub mod view;

pub use model_store::ModelStore;
pub use open::{open, StoreSpec};
pub use postgres::{Fence, PgStore, PgStoreOptions};
pub use sqlite::SqliteStore;

/// A storage failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The queue is full: try again shortly.
    #[error("the store is busy")]
    Busy,
    /// This node does not hold the write lease (its epoch is not the current one): the
    /// batch was rolled back (`503 not_leader`).
    #[error("this node is not the leader")]
    NotLeader,
    /// The store is shut down.
    #[error("the store is shut down")]
    Closed,
    /// The database failed; the text is for the log, never for a client.
    #[error("storage error: {0}")]
    Failed(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Failed(e.to_string())
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Failed(e.to_string())
    }
}

/// Result of a storage call.
pub type StoreResult<T> = Result<T, StoreError>;

/// See [`ReadTx::seat_view`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatView {
    /// The license's consumption total.
    pub total_consumptions: i64,
    /// Seats held at `now`.
    pub in_use: usize,
    /// Lapsed seat rows not purged yet.
    pub lapsed: usize,
    /// The user's registration, live or lapsed.
    pub registration: Option<Registration>,
}

/// See [`Tx::take_seat`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatTaken {
    /// The license and the user's row as they were before the call.
    pub view: SeatView,
    /// The seat was written: the user held no live seat and one was free.
    pub granted: bool,
    /// Lapsed seat rows and feature slots purged to make room (only when granted).
    pub purged: usize,
}

/// A feature of one license: what its slots are kept under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureKey<'a> {
    /// The license.
    pub license_id: u64,
    /// The feature's code.
    pub feature: &'a str,
}

/// One page of registrations: of a license (`None`: all licenses), ordered by (license,
/// user), starting after `after`, at most `limit` rows.
#[derive(Debug, Clone, Copy)]
pub struct SeatPage<'a> {
    /// Only this license's seats.
    pub license_id: Option<u64>,
    /// The last row of the previous page.
    pub after: Option<&'a RegCursor>,
    /// At most this many rows.
    pub limit: u32,
}

/// One page of feature slots: of a license and/or of one feature (`None`: all), ordered
/// by (license, feature, user), starting after `after`, at most `limit` rows.
#[derive(Debug, Clone, Copy)]
pub struct SlotPage<'a> {
    /// Only this license's slots.
    pub license_id: Option<u64>,
    /// Only this feature's slots.
    pub feature: Option<&'a str>,
    /// The last row of the previous page.
    pub after: Option<&'a RegCursor>,
    /// At most this many rows.
    pub limit: u32,
}

/// A position in a keyset-paginated listing: the last row of the previous page.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegCursor {
    /// License of the last row.
    pub license_id: u64,
    /// Feature of the last row (feature slots only; empty for seats).
    pub feature: String,
    /// User of the last row.
    pub user: String,
}

/// Reads, inside one snapshot.
pub trait ReadTx {
    /// Every license, in the order they were added.
    fn licenses(&mut self) -> StoreResult<Vec<License>>;
    /// One license.
    fn license(&mut self, id: u64) -> StoreResult<Option<License>>;
    /// The running totals of a license: its consumptions and (when `features`) its feature
    /// consumptions. `None` = no such license.
    fn license_totals(&mut self, id: u64, features: bool) -> StoreResult<Option<(i64, BTreeMap<String, i64>)>>;
    /// What a heartbeat and the license list need, in one statement: the license's
    /// consumption total, the seats held at `now` and (when `user` is given) that user's
    /// registration. `None` = no such license.
    fn seat_view(&mut self, license_id: u64, user: Option<&str>, now: i64) -> StoreResult<Option<SeatView>>;

    /// One page of registrations (see [`SeatPage`]).
    fn registrations_page(&mut self, page: SeatPage<'_>) -> StoreResult<Vec<Registration>>;
    /// Registrations of a license (`None` = all licenses).
    fn registrations(&mut self, license_id: Option<u64>) -> StoreResult<Vec<Registration>> {
        self.registrations_page(SeatPage {
            license_id,
            after: None,
            limit: u32::MAX,
        })
    }
    /// The registration of (license, user), live or lapsed.
    fn registration(&mut self, license_id: u64, user: &str) -> StoreResult<Option<Registration>>;
    /// Seats held at `now` (not lapsed, or borrowed). A pure read: lapsed rows are left
    /// for the writer to purge, and not counted.
    fn count_active_registrations(&mut self, license_id: u64, now: i64) -> StoreResult<usize>;

    /// One page of feature slots (see [`SlotPage`]).
    fn feature_registrations_page(&mut self, page: SlotPage<'_>) -> StoreResult<Vec<FeatureRegistration>>;
    /// Feature slots of a license (optionally of one feature).
    fn feature_registrations(
        &mut self,
        license_id: Option<u64>,
        feature: Option<&str>,
    ) -> StoreResult<Vec<FeatureRegistration>> {
        self.feature_registrations_page(SlotPage {
            license_id,
            feature,
            after: None,
            limit: u32::MAX,
        })
    }
    /// One user's slot of a feature.
    fn feature_registration(&mut self, of: FeatureKey<'_>, user: &str) -> StoreResult<Option<FeatureRegistration>>;
    /// Live slots per feature of a license (slots of users whose seat lapsed excluded).
    fn feature_usage(&mut self, license_id: u64, now: i64) -> StoreResult<BTreeMap<String, usize>>;

    /// An account.
    fn account(&mut self, username: &str) -> StoreResult<Option<Account>>;
    /// All accounts.
    fn accounts(&mut self) -> StoreResult<Vec<Account>>;
    /// Audit records newest first, optionally only those with `id < before`.
    fn audit_events(&mut self, before: Option<i64>, limit: u32) -> StoreResult<Vec<AuditEvent>>;
}

/// Reads and writes inside one transaction (writer thread only).
pub trait Tx: ReadTx {
    /// A fresh, unused license id.
    fn next_license_id(&mut self) -> StoreResult<u64>;
    /// Adds a license (the id must be unused).
    fn insert_license(&mut self, license: &License) -> StoreResult<()>;
    /// Removes a license with its registrations and counters.
    fn delete_license(&mut self, id: u64) -> StoreResult<bool>;
    /// Sets the license consumption total.
    fn set_total_consumptions(&mut self, id: u64, total: i64) -> StoreResult<()>;
    /// Sets a feature consumption total.
    fn set_feature_total(&mut self, id: u64, feature: &str, total: i64) -> StoreResult<()>;

    /// Inserts or replaces the registration of (license, user).
    fn put_registration(&mut self, r: &Registration) -> StoreResult<()>;
    /// A new seat in one call (one statement where the engine can): when `seat.user` holds
    /// no live seat at `now` and fewer than `limit` seats are held, purges the license's
    /// lapsed seats and slots (when there are any) and writes `seat`, over the user's
    /// lapsed row if there is one. When the user holds a live seat nothing is written:
    /// the view returns it, for the caller to renew. `None` = no such license.
    fn take_seat(&mut self, seat: &Registration, limit: usize, now: i64) -> StoreResult<Option<SeatTaken>> {
        // SQLite: two statements cost no more than one here (an `INSERT … RETURNING` opens
        // an ephemeral table per call), so this general path is its implementation.
        let Some(view) = self.seat_view(seat.license_id, Some(&seat.user), now)? else {
            return Ok(None);
        };
        let live = view.registration.as_ref().is_some_and(|r| r.is_active(now));
        let granted = !live && view.in_use < limit;
        let mut purged = 0;
        if granted {
            if view.lapsed > 0 {
                purged = self.purge_expired(Some(seat.license_id), now)?;
            }
            self.put_registration(seat)?;
        }
        Ok(Some(SeatTaken { view, granted, purged }))
    }
    /// Removes one registration and the user's feature slots on that license.
    fn delete_registration(&mut self, license_id: u64, user: &str) -> StoreResult<bool>;
    /// Removes every registration (and feature slot) of a license, or of all licenses.
    fn delete_registrations(&mut self, license_id: Option<u64>) -> StoreResult<usize>;
    /// Drops lapsed seats and feature slots of a license (`None` = of every license).
    fn purge_expired(&mut self, license_id: Option<u64>, now: i64) -> StoreResult<usize>;

    /// Inserts or replaces a feature slot.
    fn put_feature_registration(&mut self, r: &FeatureRegistration) -> StoreResult<()>;
    /// Releases one user's slot (`Some(user)`) or every slot of the feature (`None`).
    fn delete_feature_registrations(&mut self, of: FeatureKey<'_>, user: Option<&str>) -> StoreResult<usize>;

    /// Creates or replaces an account.
    fn put_account(&mut self, a: &Account) -> StoreResult<()>;

    /// Removes an account.
    fn delete_account(&mut self, username: &str) -> StoreResult<bool>;
    /// Token generation of every account that has one (absent = 0).
    fn token_generations(&mut self) -> StoreResult<std::collections::HashMap<String, u64>>;
    /// Increments an account's token generation (refusing its older tokens); returns it.
    fn bump_token_generation(&mut self, username: &str) -> StoreResult<u64>;

    /// Appends an audit record (to the hash chain).
    fn audit(&mut self, event: &AuditEvent) -> StoreResult<()>;
    /// Checks the audit hash chain (see [`audit_chain::verify`]).
    fn verify_audit_chain(&mut self) -> StoreResult<audit_chain::ChainReport>;
}

/// A unit of work run by the store writer inside a transaction.
pub trait Job: Send {
    /// Does the work. `false` = refused: its changes are rolled back (the batch goes on).
    fn run(&mut self, tx: &mut dyn Tx) -> bool;
    /// Whether the job runs inside a savepoint of its own (the default). `false` only for
    /// a job that refuses before its first write: it then costs no savepoint, and should
    /// it refuse after writing after all (a store error, a bug), the writer rolls the
    /// whole batch back instead (see [`queues::run_jobs`]).
    fn needs_savepoint(&self) -> bool {
        true
    }
    /// What the job changed, for the in-memory model (see [`ModelStore`]); taken by
    /// [`finish_batch`] only after the batch committed.
    fn take_effects(&mut self) -> Option<view::Effects> {
        None
    }
    /// The writer is done with the job's batch (committed or not), before any job of it
    /// is finished; writer thread only.
    fn batch_ended(&mut self) {}
    /// The job succeeded, but a statement of it had failed and left the transaction
    /// unusable (PostgreSQL aborts it), so the writer rolled the job back to its
    /// savepoint and the batch goes on: none of it happened, and it is answered with `e`.
    fn undone(&mut self, e: StoreError);
    /// Called once the batch is committed (or failed to commit, or the job could not be
    /// queued): answer the requester.
    fn finish(self: Box<Self>, committed: StoreResult<()>);
}

/// A read served off the writer: it sees one committed snapshot.
pub trait ReadJob: Send {
    /// Does the read and answers the requester.
    fn run(self: Box<Self>, tx: &mut dyn ReadTx);
    /// The read could not run (busy, shut down, snapshot failed): answer with `e`.
    fn fail(self: Box<Self>, e: StoreError);
}

/// Durable state.
pub trait Store: Send + Sync + fmt::Debug {
    /// Queues a write job. If the queue is full or the store is shut down the job is
    /// finished at once with [`StoreError::Busy`] / [`StoreError::Closed`].
    fn submit(&self, job: Box<dyn Job>);
    /// Queues a read (same refusals as [`Store::submit`]).
    fn read(&self, job: Box<dyn ReadJob>);
    /// Waits until everything queued so far is committed and checkpoints the log. Blocking.
    fn flush(&self) -> StoreResult<()>;
    /// This process is the only one that writes the data (a single-node store holding its
    /// data dir's lock), so a model of what it committed is complete: seats may be decided
    /// from it ([`pending`]).
    fn sole_writer(&self) -> bool {
        false
    }
}

/// What every engine's writer calls once a batch is over, COMMIT done (`Ok`) or failed:
/// the committed batch's effects are applied to the model at once (so a reader sees all
/// of it or none), then every job is answered (so a requester that got its answer finds
/// its change in the model).
pub fn finish_batch(batch: &mut Vec<Box<dyn Job>>, committed: StoreResult<()>) {
    for job in batch.iter_mut() {
        job.batch_ended();
    }
    if committed.is_ok() {
        view::apply_committed(batch.iter_mut().filter_map(|j| j.take_effects()).collect());
    }
    for job in batch.drain(..) {
        job.finish(committed.clone());
    }
}

struct FnJob<T, E, F> {
    f: Option<F>,
    savepoint: bool,
    result: Option<Result<T, E>>,
    reply: oneshot::Sender<Result<T, E>>,
}

/// A panic inside store work must not take a store thread (and every request) down.
fn guarded<T, E: From<StoreError>>(f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(StoreError::Failed("a store job panicked".into()).into()))
}

/// The requester is gone or the store dropped the job without answering.
fn dropped<E: From<StoreError>>() -> E {
    StoreError::Failed("the store dropped the request".into()).into()
}

impl<T, E, F> Job for FnJob<T, E, F>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnOnce(&mut dyn Tx) -> Result<T, E> + Send + 'static,
{
    fn run(&mut self, tx: &mut dyn Tx) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        let out = guarded(|| f(tx));
        let ok = out.is_ok();
        self.result = Some(out);
        ok
    }

    fn needs_savepoint(&self) -> bool {
        self.savepoint
    }

    fn undone(&mut self, e: StoreError) {
        self.result = Some(Err(e.into()));
    }

    fn finish(self: Box<Self>, committed: StoreResult<()>) {
        let answer = match (committed, self.result) {
            (_, Some(Err(e))) => Err(e),
            (Ok(()), Some(Ok(v))) => Ok(v),
            (Err(e), _) => Err(e.into()),
            (Ok(()), None) => Err(StoreError::Failed("a store job finished without running".into()).into()),
        };
        let _ = self.reply.send(answer);
    }
}

fn queue<T, E, F>(store: &dyn Store, savepoint: bool, f: F) -> oneshot::Receiver<Result<T, E>>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnOnce(&mut dyn Tx) -> Result<T, E> + Send + 'static,
{
    let (reply, rx) = oneshot::channel();
    store.submit(Box::new(FnJob {
        f: Some(f),
        savepoint,
        result: None,
        reply,
    }));
    rx
}

async fn answer<T, E: From<StoreError>>(rx: oneshot::Receiver<Result<T, E>>) -> Result<T, E> {
    rx.await.unwrap_or_else(|_| Err(dropped()))
}

/// Queues `f` now (before the returned future is first polled) and resolves once its
/// batch is committed. `f`'s error type is the caller's (a domain error, or the edge's
/// `ApiError`): the store only needs to turn its own failures into it.
pub fn transact<T, E, F>(store: &dyn Store, f: F) -> impl std::future::Future<Output = Result<T, E>> + Send + 'static
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnOnce(&mut dyn Tx) -> Result<T, E> + Send + 'static,
{
    answer(queue(store, true, f))
}

/// [`transact`] for work that refuses only before its first write (its checks read, its
/// writes come last): it runs without a savepoint of its own. Should it refuse after
/// writing after all, its whole batch is rolled back and every job in it answered with
/// the error; nothing of it is acknowledged.
pub fn transact_no_savepoint<T, E, F>(
    store: &dyn Store,
    f: F,
) -> impl std::future::Future<Output = Result<T, E>> + Send + 'static
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnOnce(&mut dyn Tx) -> Result<T, E> + Send + 'static,
{
    answer(queue(store, false, f))
}

/// Blocking variant for the CLI and start-up (not for async contexts).
pub fn transact_blocking<T, E, F>(store: &dyn Store, f: F) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnOnce(&mut dyn Tx) -> Result<T, E> + Send + 'static,
{
    queue(store, true, f).blocking_recv().unwrap_or_else(|_| Err(dropped()))
}

struct FnRead<T, E, F> {
    f: F,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<T, E, F> ReadJob for FnRead<T, E, F>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnOnce(&mut dyn ReadTx) -> Result<T, E> + Send + 'static,
{
    fn run(self: Box<Self>, tx: &mut dyn ReadTx) {
        let Self { f, reply } = *self;
        let _ = reply.send(guarded(|| f(tx)));
    }

    fn fail(self: Box<Self>, e: StoreError) {
        let _ = self.reply.send(Err(e.into()));
    }
}

fn queue_read<T, E, F>(store: &dyn Store, f: F) -> oneshot::Receiver<Result<T, E>>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnOnce(&mut dyn ReadTx) -> Result<T, E> + Send + 'static,
{
    let (reply, rx) = oneshot::channel();
    store.read(Box::new(FnRead { f, reply }));
    rx
}

/// Queues the read `f` now and resolves with its answer. It runs on a read connection,
/// never on the writer nor on an async worker, and sees everything committed before it
/// was queued.
pub fn read<T, E, F>(store: &dyn Store, f: F) -> impl std::future::Future<Output = Result<T, E>> + Send + 'static
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnOnce(&mut dyn ReadTx) -> Result<T, E> + Send + 'static,
{
    answer(queue_read(store, f))
}

/// Blocking variant of [`read`] (not for async contexts).
pub fn read_blocking<T, E, F>(store: &dyn Store, f: F) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnOnce(&mut dyn ReadTx) -> Result<T, E> + Send + 'static,
{
    queue_read(store, f).blocking_recv().unwrap_or_else(|_| Err(dropped()))
}

/// The terms of `l` as stored (JSON); the writer's terms cache, when it has one, learns
/// them too.
pub(crate) fn cache_terms(cache: Option<&mut HashMap<u64, Arc<LicenseTerms>>>, l: &License) -> StoreResult<String> {
    if let Some(cache) = cache {
        cache.insert(l.id, Arc::clone(&l.terms));
    }
    serde_json::to_string(&*l.terms).map_err(|e| StoreError::Failed(e.to_string()))
}

/// The parsed terms of license `id` stored as `json`: from the writer's terms cache when
/// it has them (parsing once per license, not per read), else parsed (and cached).
pub(crate) fn cached_terms(
    cache: Option<&mut HashMap<u64, Arc<LicenseTerms>>>,
    id: u64,
    json: &str,
) -> StoreResult<Arc<LicenseTerms>> {
    if let Some(t) = cache.as_ref().and_then(|c| c.get(&id)) {
        return Ok(Arc::clone(t));
    }
    let terms: Arc<LicenseTerms> = serde_json::from_str(json)
        .map(Arc::new)
        .map_err(|e| StoreError::Failed(format!("license {id}: bad terms: {e}")))?;
    if let Some(cache) = cache {
        cache.insert(id, Arc::clone(&terms));
    }
    Ok(terms)
}

/// Drops a deleted license from the writer's terms cache, when it has one.
pub(crate) fn forget_terms(cache: Option<&mut HashMap<u64, Arc<LicenseTerms>>>, id: u64) {
    if let Some(cache) = cache {
        cache.remove(&id);
    }
}

/// Writes the per-feature totals a license is inserted with.
pub(crate) fn put_feature_totals(tx: &mut dyn Tx, l: &License) -> StoreResult<()> {
    for (f, total) in &l.feature_totals {
        tx.set_feature_total(l.id, f, *total)?;
    }
    Ok(())
}

/// How many of an engine's `known` migrations a database at schema `version` has had
/// applied; a database written by a newer build is refused, not downgraded.
pub(crate) fn applied_migrations(version: i64, known: usize) -> StoreResult<usize> {
    let applied = usize::try_from(version).unwrap_or(0);
    if applied > known {
        return Err(StoreError::Failed(format!(
            "database schema version {applied} is newer than this build ({known})"
        )));
    }
    Ok(applied)
}

/// Test aid: queues a write job that holds the writer until the returned sender sends
/// (or is dropped), and returns once that job runs; the future is its answer.
#[cfg(test)]
pub(crate) fn hold_writer(store: &dyn Store) -> (std::sync::mpsc::Sender<()>, HeldQueue) {
    hold_queue(store, true)
}

/// Test aid: [`hold_writer`] for one read connection.
#[cfg(test)]
pub(crate) fn hold_reader(store: &dyn Store) -> (std::sync::mpsc::Sender<()>, HeldQueue) {
    hold_queue(store, false)
}

/// The answer of the job that holds a queue.
#[cfg(test)]
pub(crate) type HeldQueue = std::pin::Pin<Box<dyn std::future::Future<Output = StoreResult<()>> + Send>>;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
fn hold_queue(store: &dyn Store, writer: bool) -> (std::sync::mpsc::Sender<()>, HeldQueue) {
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    let wait = move || {
        let _ = started_tx.send(());
        let _ = hold.recv();
        Ok::<_, StoreError>(())
    };
    let blocker: HeldQueue = if writer {
        Box::pin(transact(store, move |_| wait()))
    } else {
        Box::pin(read(store, move |_| wait()))
    };
    started.recv().unwrap();
    (release, blocker)
}

/// Test aid: lets a [`hold_writer`] go, then waits for it and for the `jobs` queued
/// behind it, each of which must succeed.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) async fn release_writer<T>(
    release: std::sync::mpsc::Sender<()>,
    blocker: impl std::future::Future<Output = StoreResult<()>>,
    jobs: Vec<impl std::future::Future<Output = StoreResult<T>>>,
) -> Vec<T> {
    release.send(()).unwrap();
    blocker.await.unwrap();
    let mut answers = Vec::with_capacity(jobs.len());
    for j in jobs {
        answers.push(j.await.unwrap());
    }
    answers
}

/// Test aid: inserts [`crate::model::tests::sample`] and gives its id.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) async fn insert_sample(store: &dyn Store) -> u64 {
    let license = crate::model::tests::sample();
    let id = license.id;
    transact(store, move |tx| tx.insert_license(&license)).await.unwrap();
    id
}
