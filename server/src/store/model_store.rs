//! [`ModelStore`]: any [`Store`] plus the in-memory [`ReadModel`] of what it has committed.
//!
//! Every write job is wrapped so that the [`Tx`] calls it makes are recorded as
//! [`Effect`]s (only calls that succeeded, and only for jobs that were kept); the engine's
//! writer hands them to [`super::finish_batch`] after COMMIT, which applies the whole batch
//! to the model at once before any requester is answered. Nothing here knows the engine.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::pending::SeatFacts;
use super::view::{Effect, Effects, Model, ReadModel};
use super::{
    audit_chain, transact, FeatureKey, Job, ReadJob, ReadTx, SeatPage, SeatTaken, SeatView, SlotPage, Store,
    StoreError, StoreResult, Tx,
};
use crate::model::{Account, AuditEvent, FeatureRegistration, License, Registration};

/// A [`Store`] with an in-memory model of its licenses, seats, slots and totals.
#[derive(Debug)]
pub struct ModelStore {
    inner: Arc<dyn Store>,
    model: Arc<ReadModel>,
    /// The model is complete ([`Store::sole_writer`]): seats are decided from it.
    decides_seats: bool,
}

impl ModelStore {
    /// Wraps `inner` with an empty model: call [`ModelStore::reload`] before serving.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            decides_seats: inner.sole_writer(),
            inner,
            model: Arc::new(ReadModel::default()),
        }
    }

    /// Wraps `inner` and loads the model from it (blocking: start-up and tools).
    pub fn open_blocking(inner: Arc<dyn Store>) -> StoreResult<Self> {
        let s = Self::new(inner);
        s.reload_blocking()?;
        Ok(s)
    }

    /// The model.
    pub fn model(&self) -> &ReadModel {
        &self.model
    }

    /// The model is complete (one writer): it decides seats and names the lapsed ones.
    pub fn decides_seats(&self) -> bool {
        self.decides_seats
    }

    /// The wrapped store. Writes sent to it directly bypass the model: reload after.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    fn reload_job(&self) -> (Box<dyn Job>, tokio::sync::oneshot::Receiver<StoreResult<()>>) {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = Reload {
            model: Arc::clone(&self.model),
            loaded: None,
            error: None,
            reply: Some(reply),
        };
        (Box::new(job), rx)
    }

    /// Reads the whole model again from the store (at start, or when this node becomes
    /// the one that writes). It runs as a write job, so it sits in the commit order: the
    /// batches before it are in what it reads, the batches after it apply on top.
    pub async fn reload(&self) -> StoreResult<()> {
        let (job, rx) = self.reload_job();
        self.inner.submit(job);
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Blocking variant of [`ModelStore::reload`] (not for async contexts).
    pub fn reload_blocking(&self) -> StoreResult<()> {
        let (job, rx) = self.reload_job();
        self.inner.submit(job);
        rx.blocking_recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Drops the seats that lapsed by `now`, and with `slots` the expired feature slots
    /// too (the periodic sweep); answers how many rows went.
    ///
    /// With a complete model (one writer) the model names what lapsed, and it is deleted
    /// by key, at most `chunk` rows per job: nothing lapsed costs no job, and a mass lapse
    /// is many short jobs between other requests' batches rather than one long one.
    /// (SQLite keeps no expiry index, so one `DELETE … WHERE lapsed` reads every seat
    /// row.) Each job reads its rows again, so a seat or slot renewed since the model was
    /// read stays. A lapsed seat takes its user's slots with it; `slots` also takes the
    /// expired slots of live seats, which the model finds only by looking at every slot.
    /// Without a complete model one statement sweeps everything (PostgreSQL finds the
    /// rows by its expiry index).
    pub async fn sweep_lapsed(&self, now: i64, chunk: usize, slots: bool) -> StoreResult<usize> {
        if !self.decides_seats {
            return transact(self, move |tx| tx.purge_expired(None, now)).await;
        }
        let chunk = chunk.max(1);
        let mut gone = 0;
        let ids: Vec<u64> = self.model.with(|m| m.license_ids().collect());
        for id in ids {
            gone += self
                .delete_by_key(
                    |m| m.lapsed_seats(id, now, chunk),
                    move |tx, user| {
                        Ok(tx.registration(id, user)?.is_some_and(|r| !r.is_active(now))
                            && tx.delete_registration(id, user)?)
                    },
                )
                .await?;
            if slots {
                gone += self
                    .delete_by_key(
                        |m| m.expired_slots(id, now, chunk),
                        move |tx, (feature, user)| {
                            let of = FeatureKey {
                                license_id: id,
                                feature,
                            };
                            Ok(tx.feature_registration(of, user)?.is_some_and(|s| s.expires_at <= now)
                                && tx.delete_feature_registrations(of, Some(user))? > 0)
                        },
                    )
                    .await?;
            }
        }
        Ok(gone)
    }

    /// Deletes what `named` reads from the model, one job per call of it, until it names
    /// nothing; `delete` checks each key again in the job and answers whether it deleted.
    async fn delete_by_key<K: Send + 'static>(
        &self,
        named: impl Fn(&Model) -> Vec<K>,
        delete: impl Fn(&mut dyn Tx, &K) -> StoreResult<bool> + Send + Copy + 'static,
    ) -> StoreResult<usize> {
        let mut gone = 0;
        loop {
            let keys = self.model.with(&named);
            if keys.is_empty() {
                return Ok(gone);
            }
            let n = transact(self, move |tx| {
                keys.iter()
                    .try_fold(0, |n, k| Ok::<_, StoreError>(n + usize::from(delete(tx, k)?)))
            })
            .await?;
            gone += n;
            // Every one of them was renewed meanwhile: the next sweep looks again.
            if n == 0 {
                return Ok(gone);
            }
        }
    }
}

impl Store for ModelStore {
    fn submit(&self, job: Box<dyn Job>) {
        self.inner.submit(Box::new(Recorded {
            job,
            model: Arc::clone(&self.model),
            effects: Vec::new(),
            decides_seats: self.decides_seats,
        }));
    }

    fn read(&self, job: Box<dyn ReadJob>) {
        self.inner.read(job);
    }

    fn flush(&self) -> StoreResult<()> {
        self.inner.flush()
    }

    fn sole_writer(&self) -> bool {
        self.inner.sole_writer()
    }
}

/// A job whose successful writes are recorded.
struct Recorded {
    job: Box<dyn Job>,
    model: Arc<ReadModel>,
    effects: Vec<Effect>,
    decides_seats: bool,
}

impl Recorded {
    /// Rolled back to its savepoint: none of it happened, but the batch's pending view
    /// already holds what it noted.
    fn forget(&mut self) {
        if self.decides_seats && !self.effects.is_empty() {
            self.model.give_up_pending();
        }
        self.effects.clear();
    }
}

impl Job for Recorded {
    fn run(&mut self, tx: &mut dyn Tx) -> bool {
        self.effects.clear();
        let keep = self.job.run(&mut Recorder {
            tx,
            effects: &mut self.effects,
            model: self.decides_seats.then_some(&*self.model),
        });
        if !keep {
            self.forget();
        }
        keep
    }

    fn undone(&mut self, e: StoreError) {
        self.forget();
        self.job.undone(e);
    }

    fn batch_ended(&mut self) {
        if self.decides_seats {
            self.model.end_batch();
        }
        self.job.batch_ended();
    }

    fn needs_savepoint(&self) -> bool {
        self.job.needs_savepoint()
    }

    fn take_effects(&mut self) -> Option<Effects> {
        let list = std::mem::take(&mut self.effects);
        (!list.is_empty()).then(|| Effects {
            model: Arc::clone(&self.model),
            list,
        })
    }

    fn finish(self: Box<Self>, committed: StoreResult<()>) {
        // Effects still here were not taken by `finish_batch`: a job wrapper in between
        // does not pass `take_effects` on (a bug: every wrapper must). Applied now, per
        // job, so the model does not go stale, only not atomically with the batch.
        if committed.is_ok() && !self.effects.is_empty() {
            debug_assert!(false, "a job wrapper did not pass take_effects on");
            tracing::error!("a job wrapper did not pass take_effects on; applied per job");
            self.model.apply_batch(self.effects);
        }
        self.job.finish(committed);
    }
}

/// Reads everything in the writer's transaction; the model is replaced after COMMIT.
struct Reload {
    model: Arc<ReadModel>,
    loaded: Option<Model>,
    error: Option<StoreError>,
    reply: Option<tokio::sync::oneshot::Sender<StoreResult<()>>>,
}

impl Job for Reload {
    fn run(&mut self, tx: &mut dyn Tx) -> bool {
        let read = (|| -> StoreResult<Model> {
            let licenses = tx.licenses()?;
            let seats = tx.registrations(None)?;
            let slots = tx.feature_registrations(None, None)?;
            Ok(Model::load(licenses, seats, slots))
        })();
        match read {
            Ok(m) => self.loaded = Some(m),
            Err(e) => self.error = Some(e),
        }
        self.error.is_none()
    }

    fn undone(&mut self, e: StoreError) {
        self.loaded = None;
        self.error = Some(e);
    }

    fn take_effects(&mut self) -> Option<Effects> {
        self.loaded.take().map(|m| Effects {
            model: Arc::clone(&self.model),
            list: vec![Effect::Reset(Box::new(m))],
        })
    }

    fn finish(mut self: Box<Self>, committed: StoreResult<()>) {
        let answer = match self.error.take() {
            Some(e) => Err(e),
            None => committed,
        };
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(answer);
        }
    }
}

/// A [`Tx`] that passes every call through and records the writes that succeeded.
struct Recorder<'a> {
    tx: &'a mut dyn Tx,
    effects: &'a mut Vec<Effect>,
    /// The model, when it decides seats (each change is also noted in its pending view).
    model: Option<&'a ReadModel>,
}

impl Recorder<'_> {
    fn record<T>(&mut self, r: StoreResult<T>, effect: impl FnOnce(&T) -> Option<Effect>) -> StoreResult<T> {
        if let Ok(v) = &r {
            if let Some(e) = effect(v) {
                self.push(e);
            }
        }
        r
    }

    fn push(&mut self, e: Effect) {
        if let Some(model) = self.model {
            model.note_pending(&e);
        }
        self.effects.push(e);
    }

    /// A seat decided from the model and the batch so far: the user's row is read only
    /// when their seat is live (to renew it), and a new seat is one insert.
    fn take_seat_from(&mut self, facts: SeatFacts, seat: &Registration, limit: usize) -> StoreResult<SeatTaken> {
        let registration = if facts.live {
            self.tx.registration(seat.license_id, &seat.user)?
        } else {
            None
        };
        let granted = !facts.live && facts.in_use < limit;
        if granted {
            self.tx.put_registration(seat)?;
            self.push(Effect::seat(seat));
        }
        Ok(SeatTaken {
            view: SeatView {
                total_consumptions: facts.total_consumptions,
                in_use: facts.in_use,
                lapsed: 0,
                registration,
            },
            granted,
            purged: 0,
        })
    }
}

impl ReadTx for Recorder<'_> {
    fn licenses(&mut self) -> StoreResult<Vec<License>> {
        self.tx.licenses()
    }
    fn license(&mut self, id: u64) -> StoreResult<Option<License>> {
        self.tx.license(id)
    }
    fn license_totals(&mut self, id: u64, features: bool) -> StoreResult<Option<(i64, BTreeMap<String, i64>)>> {
        self.tx.license_totals(id, features)
    }
    fn seat_view(&mut self, license_id: u64, user: Option<&str>, now: i64) -> StoreResult<Option<SeatView>> {
        self.tx.seat_view(license_id, user, now)
    }
    fn registrations_page(&mut self, page: SeatPage<'_>) -> StoreResult<Vec<Registration>> {
        self.tx.registrations_page(page)
    }
    fn registration(&mut self, license_id: u64, user: &str) -> StoreResult<Option<Registration>> {
        self.tx.registration(license_id, user)
    }
    fn count_active_registrations(&mut self, license_id: u64, now: i64) -> StoreResult<usize> {
        self.tx.count_active_registrations(license_id, now)
    }
    fn feature_registrations_page(&mut self, page: SlotPage<'_>) -> StoreResult<Vec<FeatureRegistration>> {
        self.tx.feature_registrations_page(page)
    }
    fn feature_registration(&mut self, of: FeatureKey<'_>, user: &str) -> StoreResult<Option<FeatureRegistration>> {
        self.tx.feature_registration(of, user)
    }
    fn feature_usage(&mut self, license_id: u64, now: i64) -> StoreResult<BTreeMap<String, usize>> {
        self.tx.feature_usage(license_id, now)
    }
    fn account(&mut self, username: &str) -> StoreResult<Option<Account>> {
        self.tx.account(username)
    }
    fn accounts(&mut self) -> StoreResult<Vec<Account>> {
        self.tx.accounts()
    }
    fn audit_events(&mut self, before: Option<i64>, limit: u32) -> StoreResult<Vec<AuditEvent>> {
        self.tx.audit_events(before, limit)
    }
}

impl Tx for Recorder<'_> {
    fn next_license_id(&mut self) -> StoreResult<u64> {
        self.tx.next_license_id()
    }
    fn insert_license(&mut self, license: &License) -> StoreResult<()> {
        let r = self.tx.insert_license(license);
        self.record(r, |()| Some(Effect::License(license.clone())))
    }
    fn delete_license(&mut self, id: u64) -> StoreResult<bool> {
        let r = self.tx.delete_license(id);
        self.record(r, |gone| gone.then_some(Effect::LicenseGone(id)))
    }
    fn set_total_consumptions(&mut self, id: u64, total: i64) -> StoreResult<()> {
        let r = self.tx.set_total_consumptions(id, total);
        self.record(r, |()| Some(Effect::Total { id, total }))
    }
    fn set_feature_total(&mut self, id: u64, feature: &str, total: i64) -> StoreResult<()> {
        let r = self.tx.set_feature_total(id, feature, total);
        self.record(r, |()| {
            Some(Effect::FeatureTotal {
                id,
                feature: feature.to_owned(),
                total,
            })
        })
    }
    fn put_registration(&mut self, reg: &Registration) -> StoreResult<()> {
        let r = self.tx.put_registration(reg);
        self.record(r, |()| Some(Effect::seat(reg)))
    }
    fn take_seat(&mut self, seat: &Registration, limit: usize, now: i64) -> StoreResult<Option<SeatTaken>> {
        if let Some(facts) = self.model.and_then(|m| m.seat_facts(seat.license_id, &seat.user, now)) {
            return self.take_seat_from(facts, seat, limit).map(Some);
        }
        let r = self.tx.take_seat(seat, limit, now);
        // What `purge_expired` and `put_registration` record, in that order.
        if let Ok(Some(taken)) = &r {
            if taken.granted {
                if taken.purged > 0 {
                    self.push(Effect::Purged {
                        license_id: Some(seat.license_id),
                        now,
                    });
                }
                self.push(Effect::seat(seat));
            }
        }
        r
    }
    fn delete_registration(&mut self, license_id: u64, user: &str) -> StoreResult<bool> {
        let r = self.tx.delete_registration(license_id, user);
        // Feature slots go even when there was no seat row.
        self.record(r, |_| {
            Some(Effect::SeatGone {
                license_id,
                user: user.to_owned(),
            })
        })
    }
    fn delete_registrations(&mut self, license_id: Option<u64>) -> StoreResult<usize> {
        let r = self.tx.delete_registrations(license_id);
        self.record(r, |_| Some(Effect::SeatsGone(license_id)))
    }
    fn purge_expired(&mut self, license_id: Option<u64>, now: i64) -> StoreResult<usize> {
        let r = self.tx.purge_expired(license_id, now);
        self.record(r, |n| (*n > 0).then_some(Effect::Purged { license_id, now }))
    }
    fn put_feature_registration(&mut self, reg: &FeatureRegistration) -> StoreResult<()> {
        let r = self.tx.put_feature_registration(reg);
        self.record(r, |()| Some(Effect::Slot(reg.clone())))
    }
    fn delete_feature_registrations(&mut self, of: FeatureKey<'_>, user: Option<&str>) -> StoreResult<usize> {
        let r = self.tx.delete_feature_registrations(of, user);
        self.record(r, |n| {
            (*n > 0).then(|| Effect::SlotsGone {
                license_id: of.license_id,
                feature: of.feature.to_owned(),
                user: user.map(str::to_owned),
            })
        })
    }
    fn put_account(&mut self, a: &Account) -> StoreResult<()> {
        self.tx.put_account(a)
    }
    fn delete_account(&mut self, username: &str) -> StoreResult<bool> {
        self.tx.delete_account(username)
    }
    fn token_generations(&mut self) -> StoreResult<HashMap<String, u64>> {
        self.tx.token_generations()
    }
    fn bump_token_generation(&mut self, username: &str) -> StoreResult<u64> {
        self.tx.bump_token_generation(username)
    }
    fn audit(&mut self, event: &AuditEvent) -> StoreResult<()> {
        self.tx.audit(event)
    }
    fn verify_audit_chain(&mut self) -> StoreResult<audit_chain::ChainReport> {
        self.tx.verify_audit_chain()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use super::*;
    use crate::store::{read, SqliteStore};

    /// A SQLite store as the server opens it: holding its data dir, so the model decides seats.
    fn sole_sqlite(dir: &std::path::Path) -> Arc<dyn Store> {
        let lock = crate::store::lock::DataDirLock::acquire(dir).unwrap();
        Arc::new(SqliteStore::open(dir).unwrap().holding(lock))
    }

    async fn open(dir: &std::path::Path) -> Arc<ModelStore> {
        let s = ModelStore::new(sole_sqlite(dir));
        assert!(s.decides_seats);
        s.reload().await.unwrap();
        Arc::new(s)
    }

    /// The model a fresh load from the store gives, plus the store's own counts.
    async fn from_store(s: &ModelStore, ids: Vec<u64>, now: i64) -> (Model, Vec<(usize, BTreeMap<String, usize>)>) {
        read(s, move |tx| {
            let m = Model::load(
                tx.licenses()?,
                tx.registrations(None)?,
                tx.feature_registrations(None, None)?,
            );
            let mut counts = Vec::new();
            for id in ids {
                if tx.license(id)?.is_some() {
                    counts.push((tx.count_active_registrations(id, now)?, tx.feature_usage(id, now)?));
                }
            }
            Ok::<_, StoreError>((m, counts))
        })
        .await
        .unwrap()
    }

    /// xorshift64*: a seeded sequence, so a failure replays.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
            items[self.below(items.len() as u64) as usize]
        }
    }

    const USERS: &[&str] = &["a", "b", "c", "d", "e"];
    /// Seat decisions that differed from what the store's statements saw.
    static SEAT_MISMATCHES: AtomicU64 = AtomicU64::new(0);
    const FEATURES: &[&str] = &["f", "g"];

    /// One random write on `tx`.
    fn random_write(tx: &mut dyn Tx, rng: &mut Rng, ids: &[u64]) -> StoreResult<()> {
        let id = ids[rng.below(ids.len() as u64) as usize];
        let user = rng.pick(USERS).to_owned();
        let t = |rng: &mut Rng| rng.below(100) as i64;
        match rng.below(14) {
            0..=3 => tx.put_registration(&Registration {
                license_id: id,
                user,
                registered_at: t(rng),
                expires_at: t(rng),
                borrowed_until: (rng.below(4) == 0).then(|| t(rng)),
                os_hostname: None,
                ip_local: None,
                user_info: None,
            }),
            4 => tx.delete_registration(id, &user).map(drop),
            5 => tx.delete_registrations((rng.below(3) > 0).then_some(id)).map(drop),
            6 => tx.purge_expired((rng.below(2) == 0).then_some(id), t(rng)).map(drop),
            7 | 8 => tx.put_feature_registration(&FeatureRegistration {
                license_id: id,
                feature: rng.pick(FEATURES).to_owned(),
                user,
                registered_at: t(rng),
                expires_at: t(rng),
                os_hostname: None,
                ip_local: None,
                user_info: None,
            }),
            9 => tx
                .delete_feature_registrations(
                    FeatureKey {
                        license_id: id,
                        feature: rng.pick(FEATURES),
                    },
                    (rng.below(2) == 0).then_some(user.as_str()),
                )
                .map(drop),
            10 => tx.set_total_consumptions(id, t(rng)),
            11 => tx.set_feature_total(id, rng.pick(FEATURES), t(rng)),
            _ => {
                let (limit, now) = (rng.below(5) as usize, t(rng));
                let seat = Registration {
                    license_id: id,
                    user,
                    registered_at: now,
                    expires_at: now + t(rng),
                    borrowed_until: None,
                    os_hostname: Some("h".into()),
                    ip_local: None,
                    user_info: None,
                };
                // What the store's own statements see in this transaction (earlier jobs of
                // the batch included), against what the decision was made from.
                let truth = tx.seat_view(id, Some(&seat.user), now)?;
                let taken = tx.take_seat(&seat, limit, now)?;
                let live = |v: &SeatView| v.registration.as_ref().is_some_and(|r| r.is_active(now));
                match (truth, taken) {
                    (Some(v), Some(t))
                        if v.in_use == t.view.in_use
                            && live(&v) == live(&t.view)
                            && v.total_consumptions == t.view.total_consumptions
                            && t.granted == (!live(&v) && v.in_use < limit) => {}
                    (None, None) => {}
                    (v, t) => {
                        SEAT_MISMATCHES.fetch_add(1, Ordering::Relaxed);
                        eprintln!("seat decision differs from the store: {v:?} / {t:?}");
                    }
                }
                Ok(())
            }
        }
    }

    /// After every round of concurrent write jobs (batched together; about one in five
    /// refused after doing its writes, so rolled back; licenses added and removed) the
    /// model equals a fresh load from the store, and its counts equal the store's at
    /// several clocks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_model_matches_the_store_after_random_writes() {
        let dir = tempfile::tempdir().unwrap();
        model_matches_store(sole_sqlite(dir.path())).await;
        assert_eq!(
            SEAT_MISMATCHES.load(Ordering::Relaxed),
            0,
            "seats decided from the model"
        );
    }

    /// The same on PostgreSQL: the model knows no engine.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL (KEYFLOAT_PG_URL)"]
    async fn the_model_matches_the_postgres_store_after_random_writes() {
        let url = crate::store::suite::pg_url();
        let db = tokio::task::spawn_blocking(move || crate::store::postgres::TempDatabase::create(&url, "model"))
            .await
            .unwrap()
            .unwrap();
        let url = db.url().to_owned();
        let inner: Arc<dyn Store> = tokio::task::spawn_blocking(move || {
            Arc::new(crate::store::PgStore::open(&url, crate::store::PgStoreOptions::default()).unwrap())
        })
        .await
        .unwrap();
        model_matches_store(Arc::clone(&inner)).await;
        drop(inner);
        tokio::task::spawn_blocking(move || drop(db)).await.unwrap();
    }

    async fn model_matches_store(inner: Arc<dyn Store>) {
        let s = ModelStore::new(inner);
        s.reload().await.unwrap();
        let s = Arc::new(s);
        let mut licenses = Vec::new();
        for id in [7, 8] {
            let mut l = crate::model::tests::sample();
            l.id = id;
            licenses.push(l.clone());
            transact(s.as_ref(), move |tx| tx.insert_license(&l)).await.unwrap();
        }
        // Id 9 does not exist: writes to it fail (foreign key) and are not recorded.
        let ids = vec![7u64, 8, 9];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut seats_seen, mut slots_seen, mut sweeps) = (0, 0, 0);
        for round in 0..60 {
            let jobs: Vec<_> = (0..1 + rng.below(6))
                .map(|_| {
                    let (mut rng, ids) = (Rng(rng.next() | 1), ids.clone());
                    let refuse = rng.below(5) == 0;
                    let relicense = (rng.below(15) == 0).then(|| licenses[rng.below(2) as usize].clone());
                    transact(s.as_ref(), move |tx| {
                        if let Some(l) = relicense {
                            tx.delete_license(l.id)?;
                            tx.insert_license(&l)?;
                        }
                        for _ in 0..1 + rng.below(4) {
                            // A failing write (e.g. the missing license) is skipped by the job.
                            let _ = random_write(tx, &mut rng, &ids);
                        }
                        if refuse {
                            return Err(StoreError::Failed("refused after its writes".into()));
                        }
                        Ok(())
                    })
                })
                .collect();
            // Now and then the periodic sweep runs among them, a few seats per job.
            let sweep = (rng.below(6) == 0).then(|| {
                let (s, now, chunk) = (Arc::clone(&s), rng.below(100) as i64, 1 + rng.below(3) as usize);
                tokio::spawn(async move { s.sweep_lapsed(now, chunk, true).await })
            });
            for j in jobs {
                let _ = j.await;
            }
            if let Some(sweep) = sweep {
                sweeps += 1;
                sweep.await.unwrap().unwrap();
            }
            for now in [0, 30, 60, 99] {
                let (expected, counts) = from_store(&s, ids.clone(), now).await;
                let model_counts: Vec<_> = s.model().with(|m| {
                    ids.iter()
                        .filter_map(|id| Some((m.in_use(*id, now)?, m.feature_usage(*id, now)?)))
                        .collect()
                });
                s.model().with(|m| assert_eq!(*m, expected, "round {round}"));
                seats_seen += ids.iter().map(|id| expected.seat_rows(*id).unwrap_or(0)).sum::<usize>();
                slots_seen += ids
                    .iter()
                    .map(|id| expected.feature_registrations(*id).count())
                    .sum::<usize>();
                assert_eq!(model_counts, counts, "round {round}, now {now}");
            }
        }
        eprintln!("{seats_seen} seats, {slots_seen} slots, {sweeps} sweeps");
        assert!(
            seats_seen > 100 && slots_seen > 100 && sweeps > 3,
            "{seats_seen} seats, {slots_seen} slots, {sweeps} sweeps"
        );
    }

    /// The sweep deletes what lapsed, by key and in chunks: not a live or borrowed seat,
    /// not a seat or slot renewed after the model named it (its job reads the row again),
    /// the lapsed user's slots with the seat, an expired slot of a live seat; the model
    /// ends equal to the store, and a second sweep finds nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sweep_deletes_only_what_lapsed_and_the_model_follows() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path()).await;
        let id = crate::store::insert_sample(s.as_ref()).await;
        let seat = |user: &str, expires_at: i64, borrowed_until: Option<i64>| Registration {
            license_id: id,
            user: user.to_owned(),
            registered_at: 1,
            expires_at,
            borrowed_until,
            os_hostname: None,
            ip_local: None,
            user_info: None,
        };
        let slot = |user: &str, expires_at: i64| FeatureRegistration {
            license_id: id,
            feature: "f".into(),
            user: user.to_owned(),
            registered_at: 1,
            expires_at,
            os_hostname: None,
            ip_local: None,
            user_info: None,
        };
        let mut seats: Vec<_> = (0..10).map(|i| seat(&format!("gone-{i}"), 10, None)).collect();
        seats.extend((0..3).map(|i| seat(&format!("live-{i}"), 200, None)));
        seats.push(seat("borrowed", 10, Some(300)));
        seats.push(seat("renewed", 10, None));
        let slots = [
            slot("gone-0", 500),
            slot("live-0", 5),
            slot("live-1", 500),
            slot("live-2", 5),
        ];
        transact(s.as_ref(), move |tx| {
            seats.iter().try_for_each(|r| tx.put_registration(r))?;
            slots.iter().try_for_each(|r| tx.put_feature_registration(r))
        })
        .await
        .unwrap();

        // The model names `renewed` (a seat, then a slot) as lapsed; its renewal is queued
        // before the sweep's job.
        type Renewal = Box<dyn FnOnce(&mut dyn Tx) -> StoreResult<()> + Send>;
        let renew_during_sweep = |renewal: Renewal| {
            let (release, blocker) = crate::store::hold_writer(s.as_ref());
            let renewal = transact(s.as_ref(), renewal);
            let sweeper = Arc::clone(&s);
            let sweep = tokio::spawn(async move { sweeper.sweep_lapsed(100, 64, true).await });
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                release.send(()).unwrap();
                blocker.await.unwrap();
                renewal.await.unwrap();
                sweep.await.unwrap().unwrap()
            }
        };
        let renewed = seat("renewed", 400, None);
        let gone = renew_during_sweep(Box::new(move |tx| tx.put_registration(&renewed))).await;
        assert_eq!(gone, 10 + 2, "ten seats, two expired slots");
        let expired_slot = slot("live-2", 20);
        transact(s.as_ref(), move |tx| tx.put_feature_registration(&expired_slot))
            .await
            .unwrap();
        let renewed_slot = slot("live-2", 400);
        let gone = renew_during_sweep(Box::new(move |tx| tx.put_feature_registration(&renewed_slot))).await;
        assert_eq!(gone, 0, "the slot was renewed");

        let left = read(s.as_ref(), move |tx| {
            Ok::<_, StoreError>((tx.registrations(Some(id))?, tx.feature_registrations(Some(id), None)?))
        })
        .await
        .unwrap();
        let mut users: Vec<_> = left.0.iter().map(|r| r.user.as_str()).collect();
        users.sort_unstable();
        assert_eq!(users, ["borrowed", "live-0", "live-1", "live-2", "renewed"]);
        let mut slot_users: Vec<_> = left.1.iter().map(|r| r.user.as_str()).collect();
        slot_users.sort_unstable();
        assert_eq!(slot_users, ["live-1", "live-2"]);
        let (expected, _) = from_store(&s, vec![id], 100).await;
        s.model().with(|m| assert_eq!(*m, expected));
        assert_eq!(s.sweep_lapsed(100, 64, true).await.unwrap(), 0);

        // Many lapsed seats go in chunks of a few, all of them.
        let many: Vec<_> = (0..50).map(|i| seat(&format!("many-{i}"), 150, None)).collect();
        transact(s.as_ref(), move |tx| {
            many.iter().try_for_each(|r| tx.put_registration(r))
        })
        .await
        .unwrap();
        assert_eq!(s.sweep_lapsed(160, 4, false).await.unwrap(), 50);
        let (expected, _) = from_store(&s, vec![id], 160).await;
        s.model().with(|m| {
            assert_eq!(*m, expected);
            assert_eq!(m.seat_rows(id), Some(5));
        });
    }

    /// Seats decided from the model hold the limit inside one batch: of ten new seats on a
    /// license of three, the first three are granted; a seat released earlier in a batch
    /// frees one for a later job of it, and only one; the store's own count agrees.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn seats_decided_from_the_model_hold_the_limit_within_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path()).await;
        let id = crate::store::insert_sample(s.as_ref()).await;
        let now = crate::clock::now_micros();
        let take = |user: String| {
            let seat = Registration {
                license_id: id,
                user,
                registered_at: now,
                expires_at: now + 60_000_000,
                borrowed_until: None,
                os_hostname: None,
                ip_local: None,
                user_info: None,
            };
            transact(s.as_ref(), move |tx| {
                Ok::<_, StoreError>(tx.take_seat(&seat, 3, now)?.is_some_and(|t| t.granted))
            })
        };
        let (release, blocker) = crate::store::hold_writer(s.as_ref());
        let first: Vec<_> = (0..10).map(|i| take(format!("u{i}"))).collect();
        release.send(()).unwrap();
        blocker.await.unwrap();
        let mut granted = Vec::new();
        for f in first {
            granted.push(f.await.unwrap());
        }
        assert_eq!(
            granted,
            [true, true, true, false, false, false, false, false, false, false]
        );

        let (release, blocker) = crate::store::hold_writer(s.as_ref());
        let full = take("before".into());
        let gone = transact(s.as_ref(), move |tx| tx.delete_registration(id, "u0"));
        let (x, y) = (take("x".into()), take("y".into()));
        release.send(()).unwrap();
        blocker.await.unwrap();
        assert!(!full.await.unwrap(), "full before the release");
        assert!(gone.await.unwrap());
        assert_eq!((x.await.unwrap(), y.await.unwrap()), (true, false));
        let counted = read(s.as_ref(), move |tx| tx.count_active_registrations(id, now))
            .await
            .unwrap();
        assert_eq!(counted, 3);
        assert_eq!(s.model().with(|m| m.in_use(id, now)), Some(3));
    }

    /// A batch whose COMMIT failed changes nothing in the model.
    #[test]
    fn a_failed_commit_changes_nothing() {
        let model = Arc::new(ReadModel::default());
        let l = crate::model::tests::sample();
        // One recorded job that added `l`, finished with `committed`.
        let finish = |committed: StoreResult<()>| {
            let job = Recorded {
                job: Box::new(Reload {
                    model: Arc::new(ReadModel::default()),
                    loaded: None,
                    error: None,
                    reply: None,
                }),
                model: Arc::clone(&model),
                effects: vec![Effect::License(l.clone())],
                decides_seats: true,
            };
            crate::store::finish_batch(&mut vec![Box::new(job) as Box<dyn Job>], committed);
        };
        finish(Err(StoreError::Failed("disk full".into())));
        assert!(model.with(|m| m.license(l.id).is_none()));
        finish(Ok(()));
        assert!(model.with(|m| m.license(l.id).is_some()));
    }

    /// A reader of the model never observes part of a batch: 200 jobs, each moving the
    /// license total and a feature total together, are committed as one batch while
    /// threads read both totals from the model in a loop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn model_readers_never_see_a_partial_batch() {
        const JOBS: i64 = 200;
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path()).await;
        let id = crate::store::insert_sample(s.as_ref()).await;
        // Hold the writer so every job below lands in one batch.
        let (release, blocker) = crate::store::hold_writer(s.as_ref());
        let reads_mid_batch = Arc::new(AtomicU64::new(0));
        let jobs: Vec<_> = (1..=JOBS)
            .map(|i| {
                let reads_mid_batch = Arc::clone(&reads_mid_batch);
                transact(s.as_ref(), move |tx| {
                    tx.set_total_consumptions(id, i)?;
                    tx.set_feature_total(id, "f", i)?;
                    if i == JOBS / 2 {
                        // Half the batch is written: let the readers read meanwhile.
                        let seen = reads_mid_batch.load(Ordering::SeqCst);
                        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                        while reads_mid_batch.load(Ordering::SeqCst) < seen + 50 && std::time::Instant::now() < deadline
                        {
                            std::thread::yield_now();
                        }
                    }
                    Ok::<_, StoreError>(())
                })
            })
            .collect();
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (s, done, reads) = (Arc::clone(&s), Arc::clone(&done), Arc::clone(&reads_mid_batch));
                std::thread::spawn(move || {
                    let mut seen = std::collections::BTreeSet::new();
                    loop {
                        let finished = done.load(Ordering::SeqCst);
                        let (total, feature) = s.model().with(|m| {
                            let l = m.license(id).unwrap();
                            (l.total_consumptions, l.feature_totals.get("f").copied().unwrap_or(4))
                        });
                        assert!(
                            (total, feature) == (4, 4) || (total, feature) == (JOBS, JOBS),
                            "partial batch visible: total {total}, feature {feature}"
                        );
                        reads.fetch_add(1, Ordering::SeqCst);
                        seen.insert(total);
                        if finished {
                            return seen;
                        }
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        crate::store::release_writer(release, blocker, jobs).await;
        done.store(true, Ordering::SeqCst);
        let mut seen = std::collections::BTreeSet::new();
        for r in readers {
            seen.extend(r.join().unwrap());
        }
        assert!(seen.contains(&4) && seen.contains(&JOBS), "{seen:?}");
    }
}
