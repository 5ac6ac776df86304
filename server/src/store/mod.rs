//! Durable state behind two small object-safe traits.
//!
//! [`Store`] accepts [`Job`]s; [`Tx`] is what a job sees: domain-level reads and writes
//! inside one transaction. The SQLite store runs every job on one writer thread and
//! *group-commits*: it drains all queued jobs into one transaction (a savepoint per job, so
//! a refused job leaves no trace), commits once with `synchronous=FULL`, and only then
//! answers every job of the batch. A success is therefore never sent before its change is
//! durable, there is one fsync per batch instead of one per request, and seat/consumption
//! limits hold under any concurrency because jobs run one after another.
//!
//! Another backend (e.g. a shared PostgreSQL for an active/standby pair) implements the
//! same two traits.

use std::fmt;

use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::model::{Account, AuditEvent, FeatureRegistration, License, Registration};

pub mod audit_chain;
pub mod sqlite;

pub use sqlite::SqliteStore;

/// A storage failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage error: {0}")]
pub struct StoreError(pub String);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::internal(e.to_string())
    }
}

/// Result of a storage call.
pub type StoreResult<T> = Result<T, StoreError>;

/// Reads and writes inside one transaction.
pub trait Tx {
    /// Every license, in the order they were added.
    fn licenses(&mut self) -> StoreResult<Vec<License>>;
    /// One license.
    fn license(&mut self, id: u64) -> StoreResult<Option<License>>;
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

    /// Registrations of a license (`None` = all licenses).
    fn registrations(&mut self, license_id: Option<u64>) -> StoreResult<Vec<Registration>>;
    /// The registration of (license, user), live or lapsed.
    fn registration(&mut self, license_id: u64, user: &str) -> StoreResult<Option<Registration>>;
    /// Seats held at `now` (not lapsed, or borrowed).
    fn count_active_registrations(&mut self, license_id: u64, now: i64) -> StoreResult<usize>;
    /// Inserts or replaces the registration of (license, user).
    fn put_registration(&mut self, r: &Registration) -> StoreResult<()>;
    /// Removes one registration and the user's feature slots on that license.
    fn delete_registration(&mut self, license_id: u64, user: &str) -> StoreResult<bool>;
    /// Removes every registration (and feature slot) of a license, or of all licenses.
    fn delete_registrations(&mut self, license_id: Option<u64>) -> StoreResult<usize>;
    /// Drops lapsed seats and feature slots of a license.
    fn purge_expired(&mut self, license_id: u64, now: i64) -> StoreResult<usize>;

    /// Feature slots of a license (optionally of one feature).
    fn feature_registrations(
        &mut self,
        license_id: Option<u64>,
        feature: Option<&str>,
    ) -> StoreResult<Vec<FeatureRegistration>>;
    /// One user's slot of a feature.
    fn feature_registration(
        &mut self,
        license_id: u64,
        feature: &str,
        user: &str,
    ) -> StoreResult<Option<FeatureRegistration>>;
    /// Live slots per feature of a license.
    fn feature_usage(&mut self, license_id: u64, now: i64) -> StoreResult<std::collections::BTreeMap<String, usize>>;
    /// Inserts or replaces a feature slot.
    fn put_feature_registration(&mut self, r: &FeatureRegistration) -> StoreResult<()>;
    /// Releases one user's slot (`Some(user)`) or every slot of the feature (`None`).
    fn delete_feature_registrations(
        &mut self,
        license_id: u64,
        feature: &str,
        user: Option<&str>,
    ) -> StoreResult<usize>;

    /// An account.
    fn account(&mut self, username: &str) -> StoreResult<Option<Account>>;
    /// All accounts.
    fn accounts(&mut self) -> StoreResult<Vec<Account>>;
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
    /// Audit records newest first, optionally only those with `id < before`.
    fn audit_events(&mut self, before: Option<i64>, limit: u32) -> StoreResult<Vec<AuditEvent>>;
}

/// A unit of work run by the store inside a transaction.
pub trait Job: Send {
    /// Does the work. `false` = refused: its changes are rolled back (the batch goes on).
    fn run(&mut self, tx: &mut dyn Tx) -> bool;
    /// Called once the batch is committed (or failed to commit): answer the requester.
    fn finish(self: Box<Self>, committed: StoreResult<()>);
}

/// Durable state.
pub trait Store: Send + Sync + fmt::Debug {
    /// Queues a job. If the store is shut down the job is finished with an error.
    fn submit(&self, job: Box<dyn Job>);
    /// Waits until everything queued so far is committed and checkpoints the log. Blocking.
    fn flush(&self) -> StoreResult<()>;
}

struct FnJob<T, F> {
    f: Option<F>,
    result: Option<Result<T, ApiError>>,
    reply: oneshot::Sender<Result<T, ApiError>>,
}

impl<T, F> Job for FnJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Tx) -> Result<T, ApiError> + Send + 'static,
{
    fn run(&mut self, tx: &mut dyn Tx) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        // A panicking job must not take the writer thread (and every other request) down.
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(tx)))
            .unwrap_or_else(|_| Err(ApiError::internal("internal error while processing the request")));
        let ok = out.is_ok();
        self.result = Some(out);
        ok
    }

    fn finish(self: Box<Self>, committed: StoreResult<()>) {
        let answer = match (committed, self.result) {
            (_, Some(Err(e))) => Err(e),
            (Ok(()), Some(Ok(v))) => Ok(v),
            (Err(e), Some(Ok(_))) => Err(e.into()),
            (_, None) => Err(ApiError::internal("the store is shut down")),
        };
        let _ = self.reply.send(answer);
    }
}

/// Queues `f` now (before the returned future is first polled) and resolves once its
/// batch is committed.
pub fn transact<T, F>(
    store: &dyn Store,
    f: F,
) -> impl std::future::Future<Output = Result<T, ApiError>> + Send + 'static
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Tx) -> Result<T, ApiError> + Send + 'static,
{
    let (reply, rx) = oneshot::channel();
    store.submit(Box::new(FnJob {
        f: Some(f),
        result: None,
        reply,
    }));
    async move {
        rx.await
            .unwrap_or_else(|_| Err(ApiError::internal("the store dropped the request")))
    }
}

/// Blocking variant for the CLI and start-up (not for async contexts).
pub fn transact_blocking<T, F>(store: &dyn Store, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Tx) -> Result<T, ApiError> + Send + 'static,
{
    let (reply, rx) = oneshot::channel();
    store.submit(Box::new(FnJob {
        f: Some(f),
        result: None,
        reply,
    }));
    rx.blocking_recv()
        .unwrap_or_else(|_| Err(ApiError::internal("the store dropped the request")))
}
