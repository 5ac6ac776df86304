//! The in-memory read model: every license with its totals, the seats of each license with
//! their expiry, and the feature slots. It mirrors what is committed in the store and is
//! changed only by [`Effect`]s of committed batches (see [`super::finish_batch`]), applied
//! under one write lock per batch: a reader never sees part of a batch, and never waits on
//! the writer's transaction or fsync (only on the few µs of applying a committed batch).
//!
//! Lapsed seats stay in the model until the writer purges them (as in the store), and are
//! excluded from every count by their expiry time, so a seat lapsing needs no write.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::model::{FeatureKind, FeatureRegistration, License, Registration};

/// One committed change, as the writer's [`super::Tx`] calls describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A license was added.
    License(License),
    /// A license was removed, with everything on it.
    LicenseGone(u64),
    /// A license's consumption total.
    Total {
        /// License.
        id: u64,
        /// New total.
        total: i64,
    },
    /// A feature's consumption total.
    FeatureTotal {
        /// License.
        id: u64,
        /// Feature code.
        feature: String,
        /// New total.
        total: i64,
    },
    /// A seat was taken or changed (see [`Effect::seat`]).
    Seat {
        /// License.
        license_id: u64,
        /// User.
        user: Arc<str>,
        /// What the model keeps of it.
        seat: SeatState,
    },
    /// One user's seat (and their feature slots on that license) was released.
    SeatGone {
        /// License.
        license_id: u64,
        /// User.
        user: String,
    },
    /// Every seat and slot of a license (`None` = of every license) was released.
    SeatsGone(Option<u64>),
    /// Lapsed seats and slots of a license (`None` = of every license) were dropped at `now`.
    Purged {
        /// License, or all.
        license_id: Option<u64>,
        /// The purge's clock.
        now: i64,
    },
    /// A feature slot was taken or changed.
    Slot(FeatureRegistration),
    /// Feature slots were released: one user's (`Some`) or every user's (`None`).
    SlotsGone {
        /// License.
        license_id: u64,
        /// Feature code.
        feature: String,
        /// User, or all.
        user: Option<String>,
    },
    /// The whole model, read inside one transaction (a reload).
    Reset(Box<Model>),
}

fn has_consumption_features(l: &License) -> bool {
    l.terms.features.iter().any(|f| f.kind == FeatureKind::Consumption)
}

/// A seat as the model keeps it: the user is the map key (one allocation shared with the
/// expiry index), the license is the map it is in, and of the client's free-text fields
/// (host, IP, user info) only a keyed hash each: enough to tell a heartbeat that changes
/// them (a write) from one that does not, at a fraction of the memory. A collision only
/// means such a change is written with the next due extension (≤ the renewal granularity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatState {
    registered_at: i64,
    expires_at: i64,
    borrowed_until: Option<i64>,
    info: [u64; 3],
}

/// Keyed hash of an optional text field; 0 = absent.
fn info_hash(v: Option<&str>) -> u64 {
    use std::hash::BuildHasher;
    static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
    v.map_or(0, |v| KEY.get_or_init(Default::default).hash_one(v) | 1)
}

impl SeatState {
    fn new(r: &Registration) -> Self {
        Self {
            registered_at: r.registered_at,
            expires_at: r.expires_at,
            borrowed_until: r.borrowed_until,
            info: [
                info_hash(r.os_hostname.as_deref()),
                info_hash(r.ip_local.as_deref()),
                info_hash(r.user_info.as_deref()),
            ],
        }
    }

    /// Held while `now < end` (the later of expiry and borrow end).
    fn end(&self) -> i64 {
        self.borrowed_until.map_or(self.expires_at, |b| b.max(self.expires_at))
    }

    /// Held at `now`.
    pub fn is_active(&self, now: i64) -> bool {
        self.end() > now
    }

    /// First registration (µs).
    pub fn registered_at(&self) -> i64 {
        self.registered_at
    }

    /// Lapses at (µs) unless renewed or borrowed.
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }

    /// Borrowed until (µs).
    pub fn borrowed_until(&self) -> Option<i64> {
        self.borrowed_until
    }

    /// Whether a renewal sending these fields (absent = keep the seat's) leaves the
    /// seat's host, IP and user info as they are.
    pub fn keeps_info(&self, os_hostname: Option<&str>, ip_local: Option<&str>, user_info: Option<&str>) -> bool {
        [os_hostname, ip_local, user_info]
            .iter()
            .zip(self.info)
            .all(|(sent, kept)| sent.is_none_or(|v| info_hash(Some(v)) == kept))
    }
}

impl Effect {
    /// The effect of writing the seat `r`.
    pub fn seat(r: &Registration) -> Self {
        Self::Seat {
            license_id: r.license_id,
            user: Arc::from(r.user.as_str()),
            seat: SeatState::new(r),
        }
    }
}

/// The smallest user: the lower bound of an expiry range.
fn no_user() -> Arc<str> {
    static EMPTY: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    Arc::clone(EMPTY.get_or_init(|| Arc::from("")))
}

/// How many maps a license's seats are spread over (see [`SeatMap`]).
const SEAT_SHARDS: usize = 16;

/// A license's seats by user, spread over [`SEAT_SHARDS`] maps by a hash of the user. A
/// map that outgrows its table rehashes all of it at once, under the model's write lock,
/// so every request waits for it: one map of 460,000 seats took ≈ 120 ms to double
/// (BENCHMARKS.md §4.8). Sharded, the shards double one at a time, each a sixteenth.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SeatMap {
    shards: [HashMap<Arc<str>, SeatState>; SEAT_SHARDS],
}

impl SeatMap {
    /// FNV-1a of the user: independent of the maps' own (random) hashing, so equal
    /// contents are laid out equally.
    fn shard(user: &str) -> usize {
        let h = user.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        (h % SEAT_SHARDS as u64) as usize
    }

    fn len(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }

    fn get(&self, user: &str) -> Option<&SeatState> {
        self.shards[Self::shard(user)].get(user)
    }

    fn get_key_value(&self, user: &str) -> Option<(&Arc<str>, &SeatState)> {
        self.shards[Self::shard(user)].get_key_value(user)
    }

    fn insert(&mut self, user: Arc<str>, seat: SeatState) {
        self.shards[Self::shard(&user)].insert(user, seat);
    }

    fn remove_entry(&mut self, user: &str) -> Option<(Arc<str>, SeatState)> {
        self.shards[Self::shard(user)].remove_entry(user)
    }

    fn clear(&mut self) {
        self.shards.iter_mut().for_each(HashMap::clear);
    }
}

/// One license's state.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LicenseState {
    license: License,
    seats: SeatMap,
    /// (seat end, user) of every seat: lapsed seats are a range of it.
    ends: BTreeSet<(i64, Arc<str>)>,
    /// Slots by feature, then user.
    slots: BTreeMap<String, HashMap<String, FeatureRegistration>>,
}

impl LicenseState {
    fn new(mut license: License) -> Self {
        // As the store reads it back: only consumption features keep totals.
        if !has_consumption_features(&license) {
            license.feature_totals.clear();
        }
        Self {
            license,
            seats: SeatMap::default(),
            ends: BTreeSet::new(),
            slots: BTreeMap::new(),
        }
    }

    fn lapsed_users(&self, now: i64) -> impl Iterator<Item = &Arc<str>> {
        self.ends.range(..(now.saturating_add(1), no_user())).map(|(_, u)| u)
    }

    fn in_use(&self, now: i64) -> usize {
        self.seats.len() - self.lapsed_users(now).count()
    }

    fn is_lapsed(&self, user: &str, now: i64) -> bool {
        self.seats.get(user).is_some_and(|s| s.end() <= now)
    }

    fn put_seat(&mut self, user: Arc<str>, seat: SeatState) {
        let user = match self.seats.get_key_value(&user) {
            Some((known, old)) => {
                let known = Arc::clone(known);
                self.ends.remove(&(old.end(), Arc::clone(&known)));
                known
            }
            None => user,
        };
        self.ends.insert((seat.end(), Arc::clone(&user)));
        self.seats.insert(user, seat);
    }

    fn drop_seat(&mut self, user: &str) {
        if let Some((user, old)) = self.seats.remove_entry(user) {
            self.ends.remove(&(old.end(), user));
        }
        for slots in self.slots.values_mut() {
            slots.remove(user);
        }
        self.slots.retain(|_, s| !s.is_empty());
    }

    fn clear_seats(&mut self) {
        self.seats.clear();
        self.ends.clear();
        self.slots.clear();
    }

    fn purge(&mut self, now: i64) {
        let lapsed: Vec<Arc<str>> = self.lapsed_users(now).cloned().collect();
        // Slots first, as the store does: a slot goes with its user's lapsed seat.
        for slots in self.slots.values_mut() {
            slots.retain(|_, s| s.expires_at > now);
            for user in &lapsed {
                slots.remove(&**user);
            }
        }
        self.slots.retain(|_, s| !s.is_empty());
        for user in lapsed {
            if let Some((_, old)) = self.seats.remove_entry(&user) {
                self.ends.remove(&(old.end(), user));
            }
        }
    }

    fn feature_usage(&self, now: i64) -> BTreeMap<String, usize> {
        if self.license.terms.features.is_empty() {
            return BTreeMap::new();
        }
        self.slots
            .iter()
            .map(|(feature, slots)| {
                let live = slots
                    .values()
                    .filter(|s| s.expires_at > now && !self.is_lapsed(&s.user, now))
                    .count();
                (feature.clone(), live)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// The committed state the model mirrors. Built by [`Model::load`] or by applying effects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    licenses: HashMap<u64, LicenseState>,
}

/// What a heartbeat or the license list needs: the license with its totals, the seats
/// held and the live feature slots, all at one instant of the model.
#[derive(Debug, Clone)]
pub struct SeatLookup {
    /// The license with its totals.
    pub license: License,
    /// Seats held at `now`.
    pub in_use: usize,
    /// Live slots per feature.
    pub features: BTreeMap<String, usize>,
}

impl Model {
    /// The model of `licenses` (with totals), `seats` and `slots`, as read in one snapshot.
    pub fn load(licenses: Vec<License>, seats: Vec<Registration>, slots: Vec<FeatureRegistration>) -> Self {
        let mut m = Self::default();
        for l in licenses {
            m.apply(Effect::License(l));
        }
        for r in &seats {
            m.apply(Effect::seat(r));
        }
        for s in slots {
            m.apply(Effect::Slot(s));
        }
        m
    }

    fn each(&mut self, license_id: Option<u64>, f: impl FnMut(&mut LicenseState)) {
        match license_id {
            Some(id) => self.licenses.get_mut(&id).into_iter().for_each(f),
            None => self.licenses.values_mut().for_each(f),
        }
    }

    /// Applies one committed change. Changes to a license the model does not hold are
    /// ignored (the store refuses them too: a seat needs its license).
    pub fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::License(l) => {
                self.licenses.insert(l.id, LicenseState::new(l));
            }
            Effect::LicenseGone(id) => {
                self.licenses.remove(&id);
            }
            Effect::Total { id, total } => self.each(Some(id), |s| s.license.total_consumptions = total),
            Effect::FeatureTotal { id, feature, total } => self.each(Some(id), |s| {
                if has_consumption_features(&s.license) {
                    s.license.feature_totals.insert(feature.clone(), total);
                }
            }),
            Effect::Seat { license_id, user, seat } => {
                if let Some(s) = self.licenses.get_mut(&license_id) {
                    s.put_seat(user, seat);
                }
            }
            Effect::SeatGone { license_id, user } => self.each(Some(license_id), |s| s.drop_seat(&user)),
            Effect::SeatsGone(id) => self.each(id, LicenseState::clear_seats),
            Effect::Purged { license_id, now } => self.each(license_id, |s| s.purge(now)),
            Effect::Slot(r) => {
                if let Some(s) = self.licenses.get_mut(&r.license_id) {
                    s.slots.entry(r.feature.clone()).or_default().insert(r.user.clone(), r);
                }
            }
            Effect::SlotsGone {
                license_id,
                feature,
                user,
            } => self.each(Some(license_id), |s| {
                match &user {
                    Some(u) => {
                        if let Some(slots) = s.slots.get_mut(&feature) {
                            slots.remove(u);
                        }
                    }
                    None => {
                        s.slots.remove(&feature);
                    }
                }
                s.slots.retain(|_, v| !v.is_empty());
            }),
            Effect::Reset(m) => *self = *m,
        }
    }

    /// Seats of license `id` live at `now` that lapse by `until` (0 when `until <= now`).
    pub fn seats_lapsing_by(&self, id: u64, now: i64, until: i64) -> usize {
        match self.licenses.get(&id) {
            Some(s) if until > now => s
                .ends
                .range((now.saturating_add(1), no_user())..(until.saturating_add(1), no_user()))
                .count(),
            _ => 0,
        }
    }

    /// Up to `limit` seats of license `id` that ended by `now` and are not purged yet,
    /// earliest end first.
    pub fn lapsed_seats(&self, id: u64, now: i64, limit: usize) -> Vec<Arc<str>> {
        self.licenses
            .get(&id)
            .map(|s| s.lapsed_users(now).take(limit).cloned().collect())
            .unwrap_or_default()
    }

    /// Up to `limit` slots of license `id` (feature, user) that expired by `now`, whatever
    /// their user's seat. Looks at every slot of the license: slots keep no order by end.
    pub fn expired_slots(&self, id: u64, now: i64, limit: usize) -> Vec<(String, String)> {
        self.licenses
            .get(&id)
            .map(|s| {
                s.slots
                    .iter()
                    .flat_map(|(feature, slots)| slots.values().map(move |slot| (feature, slot)))
                    .filter(|(_, slot)| slot.expires_at <= now)
                    .take(limit)
                    .map(|(feature, slot)| (feature.clone(), slot.user.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The license with its totals.
    pub fn license(&self, id: u64) -> Option<&License> {
        self.licenses.get(&id).map(|s| &s.license)
    }

    /// Seats held at `now` (lapsed seats excluded by their end, purged or not).
    pub fn in_use(&self, id: u64, now: i64) -> Option<usize> {
        self.licenses.get(&id).map(|s| s.in_use(now))
    }

    /// Seat rows not purged yet, live or lapsed.
    pub fn seat_rows(&self, id: u64) -> Option<usize> {
        self.licenses.get(&id).map(|s| s.seats.len())
    }

    /// Live slots per feature at `now` (slots of users whose seat lapsed excluded).
    pub fn feature_usage(&self, id: u64, now: i64) -> Option<BTreeMap<String, usize>> {
        self.licenses.get(&id).map(|s| s.feature_usage(now))
    }

    /// The user's seat, live or lapsed.
    pub fn seat(&self, id: u64, user: &str) -> Option<&SeatState> {
        self.licenses.get(&id).and_then(|s| s.seats.get(user))
    }

    /// Every slot of a license, in no particular order.
    pub fn feature_registrations(&self, id: u64) -> impl Iterator<Item = &FeatureRegistration> {
        self.licenses
            .get(&id)
            .into_iter()
            .flat_map(|s| s.slots.values().flat_map(HashMap::values))
    }

    /// License ids, in no particular order.
    pub fn license_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.licenses.keys().copied()
    }

    /// What a heartbeat or the license list needs.
    pub fn lookup(&self, id: u64, now: i64) -> Option<SeatLookup> {
        let s = self.licenses.get(&id)?;
        Some(SeatLookup {
            license: s.license.clone(),
            in_use: s.in_use(now),
            features: s.feature_usage(now),
        })
    }
}

/// The shared, lock-protected model. Readers take a read lock for the few µs of a lookup;
/// the writer takes the write lock once per committed batch.
#[derive(Default)]
pub struct ReadModel {
    model: RwLock<Model>,
    /// The batch being written (see [`super::pending`]); writer thread only.
    pending: parking_lot::Mutex<super::pending::Pending>,
}

impl fmt::Debug for ReadModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadModel")
            .field("licenses", &self.model.read().licenses.len())
            .finish()
    }
}

impl ReadModel {
    /// Reads the model (keep `f` short: the writer waits for it).
    pub fn with<R>(&self, f: impl FnOnce(&Model) -> R) -> R {
        f(&self.model.read())
    }

    /// A seat decision's facts from the model and the batch being written (writer thread,
    /// for a store whose process is the only writer). `None` = ask the store.
    pub fn seat_facts(&self, license_id: u64, user: &str, now: i64) -> Option<super::pending::SeatFacts> {
        let pending = self.pending.lock();
        pending.seat_facts(&self.model.read(), license_id, user, now)
    }

    /// Notes a change made by a job of the batch being written.
    pub fn note_pending(&self, effect: &Effect) {
        self.pending.lock().note(effect);
    }

    /// A job was refused after changes of it were noted: the rest of the batch decides
    /// through the store.
    pub fn give_up_pending(&self) {
        self.pending.lock().give_up();
    }

    /// The batch being written ended (committed or not).
    pub fn end_batch(&self) {
        self.pending.lock().clear();
    }

    /// Applies the effects of one committed batch, all at once.
    pub fn apply_batch(&self, effects: impl IntoIterator<Item = Effect>) {
        let mut m = self.model.write();
        for e in effects {
            m.apply(e);
        }
    }
}

/// The effects of one job, for the model they belong to.
pub struct Effects {
    /// The model to change.
    pub model: Arc<ReadModel>,
    /// The changes, in the order they were made.
    pub list: Vec<Effect>,
}

impl fmt::Debug for Effects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Effects").field("list", &self.list.len()).finish()
    }
}

/// Applies the effects of a committed batch: one write lock per model, jobs in order.
pub fn apply_committed(effects: Vec<Effects>) {
    let mut effects = effects.into_iter().peekable();
    while let Some(first) = effects.next() {
        let model = first.model;
        let mut m = model.model.write();
        for e in first.list {
            m.apply(e);
        }
        while let Some(next) = effects.next_if(|e| Arc::ptr_eq(&e.model, &model)) {
            for e in next.list {
                m.apply(e);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn seat(license_id: u64, user: &str, expires_at: i64, borrowed_until: Option<i64>) -> Registration {
        Registration {
            license_id,
            user: user.into(),
            registered_at: 0,
            expires_at,
            borrowed_until,
            os_hostname: None,
            ip_local: None,
            user_info: None,
        }
    }

    /// A seat lapsing is not counted, with no write: the count follows the clock.
    #[test]
    fn a_lapsing_seat_is_not_counted_without_any_write() {
        let license = crate::model::tests::sample();
        let id = license.id;
        let mut m = Model::default();
        m.apply(Effect::License(license));
        m.apply(Effect::seat(&seat(id, "a", 100, None)));
        m.apply(Effect::seat(&seat(id, "b", 200, None)));
        m.apply(Effect::seat(&seat(id, "c", 50, Some(300))));
        assert_eq!(m.in_use(id, 10), Some(3));
        assert_eq!(m.in_use(id, 100), Some(2), "a lapsed at 100");
        assert_eq!(m.in_use(id, 200), Some(1), "only the borrowed seat is held");
        assert_eq!(m.in_use(id, 300), Some(0));
        assert_eq!(m.seat_rows(id), Some(3), "nothing was purged");
        // Renewing moves the seat's end.
        m.apply(Effect::seat(&seat(id, "a", 1_000, None)));
        assert_eq!(m.in_use(id, 300), Some(1));
        m.apply(Effect::Purged {
            license_id: None,
            now: 300,
        });
        assert_eq!(m.seat_rows(id), Some(1));
    }

    proptest::proptest! {
        /// The sharded seat map answers as one map would, whatever the users and the order
        /// of inserts and removals.
        #[test]
        fn the_seat_map_answers_as_one_map(ops in proptest::collection::vec((0u8..3, "[a-zA-Z0-9@.é-]{0,12}", 0i64..100), 0..200)) {
            let mut sharded = SeatMap::default();
            let mut plain: HashMap<Arc<str>, SeatState> = HashMap::new();
            for (op, user, t) in ops {
                match op {
                    0 | 1 => {
                        let state = SeatState::new(&seat(1, &user, t, None));
                        sharded.insert(Arc::from(user.as_str()), state.clone());
                        plain.insert(Arc::from(user.as_str()), state);
                    }
                    _ => {
                        proptest::prop_assert_eq!(sharded.remove_entry(&user), plain.remove_entry(user.as_str()));
                    }
                }
                proptest::prop_assert_eq!(sharded.len(), plain.len());
                proptest::prop_assert_eq!(sharded.get(&user), plain.get(user.as_str()));
            }
            for (user, state) in &plain {
                proptest::prop_assert_eq!(sharded.get_key_value(user), Some((user, state)));
            }
        }
    }

    /// Users like the benchmark's and like people's spread evenly over the shards, so no
    /// shard grows (and rehashes) much past a sixteenth of the seats.
    #[test]
    fn seats_spread_over_the_shards() {
        let mut m = SeatMap::default();
        for n in 0..32_000 {
            m.insert(
                Arc::from(format!("u-1765000000-{}-{}", n % 2 + 1, n / 2).as_str()),
                SeatState::new(&seat(1, "", 1, None)),
            );
            m.insert(
                Arc::from(format!("jane.doe{n}@example.com").as_str()),
                SeatState::new(&seat(1, "", 1, None)),
            );
        }
        let even = m.len() / SEAT_SHARDS;
        for shard in &m.shards {
            assert!(shard.len() < even + even / 10, "{} of {}", shard.len(), m.len());
        }
    }
}
