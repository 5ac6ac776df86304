//! Seat decisions from the in-memory model, for a store whose process is the only writer
//! (SQLite: the data dir's lock). The model holds what was committed before the batch
//! being written; [`Pending`] holds what that batch's jobs changed so far. Together they
//! answer "is this user's seat live, how many seats are in use, what is the total" with no
//! SQL, so a new seat is one insert (no count, no counter). A batch that changed a license
//! wholesale (re-added, removed, every seat released, a reload) sends that license's
//! decisions back to the store's own statements until the batch ends.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::view::{Effect, Model, SeatState};

/// What the jobs of the batch being written changed so far (writer thread only).
#[derive(Debug, Default)]
pub struct Pending {
    /// Every license changed wholesale.
    all_dirty: bool,
    /// Licenses changed wholesale.
    dirty: HashSet<u64>,
    /// Seats written (`Some`) or released (`None`) in this batch, by license and user.
    seats: HashMap<u64, HashMap<Arc<str>, Option<SeatState>>>,
    /// Consumption totals written in this batch.
    totals: HashMap<u64, i64>,
    /// Latest purge of this batch, by license: seats that ended by then are gone.
    purged: HashMap<u64, i64>,
    /// Latest purge of every license in this batch.
    purged_all: Option<i64>,
}

/// A seat decision's inputs, as of the model plus the batch so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeatFacts {
    /// The user holds a live seat.
    pub live: bool,
    /// Live seats of the license.
    pub in_use: usize,
    /// The license's consumption total.
    pub total_consumptions: i64,
}

impl Pending {
    /// Notes one change made by a job of this batch (in order).
    pub fn note(&mut self, effect: &Effect) {
        match effect {
            Effect::Seat { license_id, user, seat } => {
                self.seats
                    .entry(*license_id)
                    .or_default()
                    .insert(Arc::clone(user), Some(seat.clone()));
            }
            Effect::SeatGone { license_id, user } => {
                self.seats
                    .entry(*license_id)
                    .or_default()
                    .insert(Arc::from(user.as_str()), None);
            }
            Effect::Total { id, total } => {
                self.totals.insert(*id, *total);
            }
            Effect::License(l) => {
                self.dirty.insert(l.id);
            }
            Effect::LicenseGone(id) | Effect::SeatsGone(Some(id)) => {
                self.dirty.insert(*id);
            }
            Effect::SeatsGone(None) | Effect::Reset(_) => self.all_dirty = true,
            // A purge at `at` drops the seats that ended by then, including ones a job of this
            // batch wrote before it; a job's clock may be behind the purge's, so for it such
            // a seat was still live.
            Effect::Purged { license_id, now: at } => {
                let cut = |seats: &mut HashMap<Arc<str>, Option<SeatState>>| {
                    for s in seats.values_mut() {
                        if s.as_ref().is_some_and(|s| !s.is_active(*at)) {
                            *s = None;
                        }
                    }
                };
                match license_id {
                    Some(id) => {
                        let p = self.purged.entry(*id).or_insert(*at);
                        *p = (*p).max(*at);
                        self.seats.get_mut(id).into_iter().for_each(cut);
                    }
                    None => {
                        self.purged_all = Some(self.purged_all.map_or(*at, |p| p.max(*at)));
                        self.seats.values_mut().for_each(cut);
                    }
                }
            }
            // Features and slots do not enter a seat decision.
            Effect::FeatureTotal { .. } | Effect::Slot(_) | Effect::SlotsGone { .. } => {}
        }
    }

    /// From here to the end of the batch, every license goes back to the store's
    /// statements (a job was refused after some of its changes were noted).
    pub fn give_up(&mut self) {
        self.all_dirty = true;
    }

    /// The batch ended (committed or not).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// The facts of a seat decision for `user` on `license_id` at `now`. `None` = ask the
    /// store (the license changed wholesale in this batch, or the model does not hold it).
    pub fn seat_facts(&self, model: &Model, license_id: u64, user: &str, now: i64) -> Option<SeatFacts> {
        if self.all_dirty || self.dirty.contains(&license_id) {
            return None;
        }
        let license = model.license(license_id)?;
        // Seats of the model this batch's purges removed: those that ended by `cut`.
        let cut = self.purged.get(&license_id).copied().max(self.purged_all);
        let kept = |s: &SeatState| s.is_active(now) && cut.is_none_or(|c| s.is_active(c));
        let mut in_use = model.in_use(license_id, now)? - cut.map_or(0, |c| model.seats_lapsing_by(license_id, now, c));
        let mut live = model.seat(license_id, user).is_some_and(kept);
        for (who, after) in self.seats.get(&license_id).into_iter().flatten() {
            let before = model.seat(license_id, who).is_some_and(kept);
            let now_live = after.as_ref().is_some_and(|s| s.is_active(now));
            match (before, now_live) {
                (false, true) => in_use += 1,
                (true, false) => in_use = in_use.saturating_sub(1),
                _ => {}
            }
            if &**who == user {
                live = now_live;
            }
        }
        let total_consumptions = self
            .totals
            .get(&license_id)
            .copied()
            .unwrap_or(license.total_consumptions);
        Some(SeatFacts {
            live,
            in_use,
            total_consumptions,
        })
    }
}
