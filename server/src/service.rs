//! Licensing semantics over a [`Tx`]: seats, borrowing, consumptions, floating features.
//! Every function runs inside one store job, so limits hold under any concurrency.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::clock::{self, format_micros};
use crate::model::{
    self, FeatureKind, FeatureRegistration, FeatureTerms, License, LicenseObject, LicenseTerms, Registration,
};
use crate::store::view::Model;
use crate::store::{FeatureKey, ReadTx, Tx};

mod error;
pub use error::LicenseError;

/// Who is asking, as the register/borrow/feature bodies describe it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// Opaque client identity.
    pub user: String,
    /// Host name.
    pub os_hostname: Option<String>,
    /// IP.
    pub ip_local: Option<String>,
    /// Free text.
    pub user_info: Option<String>,
}

/// The validity period of a license's terms (no SQL).
pub fn check_period(terms: &LicenseTerms, now: i64) -> Result<(), LicenseError> {
    if terms.valid_from.is_some_and(|f| f > now) {
        return Err(LicenseError::LicenseNotActive);
    }
    if terms.valid_until.is_some_and(|u| u <= now) {
        return Err(LicenseError::LicenseExpired);
    }
    Ok(())
}

fn not_found(id: u64) -> LicenseError {
    LicenseError::LicenseNotFound(id)
}

/// Loads a license that passed the gate and checks its validity period.
pub fn live_license(tx: &mut dyn Tx, id: u64, now: i64) -> Result<License, LicenseError> {
    let l = tx.license(id)?.ok_or_else(|| not_found(id))?;
    check_period(&l.terms, now)?;
    Ok(l)
}

/// Live slots per feature; a license without features needs no query.
fn feature_usage<T: ReadTx + ?Sized>(
    tx: &mut T,
    l: &License,
    now: i64,
) -> Result<BTreeMap<String, usize>, LicenseError> {
    if l.terms.features.is_empty() {
        return Ok(BTreeMap::new());
    }
    Ok(tx.feature_usage(l.id, now)?)
}

/// Heartbeats closer together than this only extend a seat in memory of the next write:
/// re-registering within a second of the last extension writes nothing.
const RENEW_GRANULARITY: i64 = 1_000_000;

/// What a registration produced; the answer is rendered from it outside the store's
/// threads (see [`Registered::answer`]) so they only do database work.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The license with its totals.
    pub license: License,
    /// The seat.
    pub registration: Registration,
    /// Seats in use.
    pub in_use: usize,
    /// Live slots per feature.
    pub features: BTreeMap<String, usize>,
    /// When.
    pub now: i64,
}

impl Registered {
    /// The register answer, typed (serialized once, straight into the response).
    pub fn answer(&self) -> LicenseObject<'_> {
        LicenseObject::new(&self.license, self.in_use, &self.features).register_answer(
            &self.registration,
            self.in_use,
            self.now,
        )
    }

    /// [`Self::answer`] with the license object reused from `cache` while the license and
    /// its counters are unchanged (a heartbeat answered from the model).
    pub fn answer_cached(&self, cache: &crate::render::RenderCache) -> LicenseObject<'_> {
        let rendered = cache.get(&self.license, self.in_use, &self.features);
        LicenseObject::new(&self.license, self.in_use, &self.features).register_answer_with(
            &self.registration,
            self.in_use,
            self.now,
            crate::model::LicenseJson::Cached(rendered),
        )
    }

    /// The register answer as a JSON value (tests and tools).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.answer()).unwrap_or(Value::Null)
    }
}

/// A seat's expiry after a renewal at `now` (never earlier than it was).
fn renewed_expiry(l: &License, expires_at: i64, now: i64) -> i64 {
    (now + clock::minutes(l.terms.floating_timeout_minutes.max(1))).max(expires_at)
}

/// The seat `existing` renewed by `who` at `now`, and whether that must be written: not
/// when it only extends the seat by less than the granularity.
fn renew(l: &License, existing: &Registration, who: &ClientInfo, now: i64) -> (Registration, bool) {
    let renewed = Registration {
        expires_at: renewed_expiry(l, existing.expires_at, now),
        os_hostname: who.os_hostname.clone().or_else(|| existing.os_hostname.clone()),
        ip_local: who.ip_local.clone().or_else(|| existing.ip_local.clone()),
        user_info: who.user_info.clone().or_else(|| existing.user_info.clone()),
        ..existing.clone()
    };
    let same_info = renewed.os_hostname == existing.os_hostname
        && renewed.ip_local == existing.ip_local
        && renewed.user_info == existing.user_info;
    let write = !same_info || renewed.expires_at - existing.expires_at >= RENEW_GRANULARITY;
    (renewed, write)
}

/// `license` (from the catalog) with `total` and, for consumption features, their totals.
fn license_with<T: ReadTx + ?Sized>(tx: &mut T, license: &License, total: i64) -> Result<License, LicenseError> {
    let feature_totals = if license
        .terms
        .features
        .iter()
        .any(|f| f.kind == FeatureKind::Consumption)
    {
        tx.license_totals(license.id, true)?
            .ok_or_else(|| not_found(license.id))?
            .1
    } else {
        BTreeMap::new()
    };
    Ok(License {
        total_consumptions: total,
        feature_totals,
        ..license.clone()
    })
}

/// `POST /register` from the in-memory model, with no thread hop: answers a heartbeat
/// that only extends a live seat within the renewal granularity. `None` = a write is
/// needed (new seat, lapsed seat, changed info, due extension): run [`register`], which
/// decides again on the writer. `license` is the catalog's (terms); totals come from the
/// model. The answer's registration carries the request's host/IP/user info (the answer
/// shows none of them).
pub fn register_from_model(
    model: &Model,
    license: &License,
    who: &ClientInfo,
    now: i64,
) -> Result<Option<Registered>, LicenseError> {
    check_period(&license.terms, now)?;
    let Some(seat) = model.seat(license.id, &who.user).filter(|s| s.is_active(now)) else {
        return Ok(None);
    };
    let expires_at = renewed_expiry(license, seat.expires_at(), now);
    let same_info = seat.keeps_info(
        who.os_hostname.as_deref(),
        who.ip_local.as_deref(),
        who.user_info.as_deref(),
    );
    if !same_info || expires_at - seat.expires_at() >= RENEW_GRANULARITY {
        return Ok(None);
    }
    let view = model.lookup(license.id, now).ok_or_else(|| not_found(license.id))?;
    Ok(Some(Registered {
        license: view.license,
        registration: Registration {
            license_id: license.id,
            user: who.user.clone(),
            registered_at: seat.registered_at(),
            expires_at,
            borrowed_until: seat.borrowed_until(),
            os_hostname: who.os_hostname.clone(),
            ip_local: who.ip_local.clone(),
            user_info: who.user_info.clone(),
        },
        in_use: view.in_use,
        features: view.features,
        now,
    }))
}

/// `POST /register`: take a seat, or renew the one this user holds (writer). `license`
/// is the catalog's: its terms never change, so the license row is not read again; the
/// seat statement below finds out whether it still exists and reads its total.
pub fn register(tx: &mut dyn Tx, license: &License, who: &ClientInfo, now: i64) -> Result<Registered, LicenseError> {
    let id = license.id;
    check_period(&license.terms, now)?;
    let timeout = clock::minutes(license.terms.floating_timeout_minutes.max(1));
    let seat = Registration {
        license_id: id,
        user: who.user.clone(),
        registered_at: now,
        expires_at: now + timeout,
        borrowed_until: None,
        os_hostname: who.os_hostname.clone(),
        ip_local: who.ip_local.clone(),
        user_info: who.user_info.clone(),
    };
    // One call (one statement on PostgreSQL): the user's seat, the count and the license
    // total, and the new seat taken (lapsed seats purged first) when the user has none and
    // one is free.
    let taken = tx
        .take_seat(&seat, license.terms.floating_users as usize, now)?
        .ok_or_else(|| not_found(id))?;
    let l = license_with(tx, license, taken.view.total_consumptions)?;
    let (reg, in_use) = match taken.view.registration.filter(|r| r.is_active(now)) {
        Some(existing) => {
            let (renewed, write) = renew(&l, &existing, who, now);
            if write {
                tx.put_registration(&renewed)?;
            }
            (renewed, taken.view.in_use)
        }
        // The count before plus this one.
        None if taken.granted => (seat, taken.view.in_use + 1),
        None => return Err(LicenseError::FloatingNotAvailable),
    };
    let features = feature_usage(tx, &l, now)?;
    Ok(Registered {
        license: l,
        registration: reg,
        in_use,
        features,
        now,
    })
}

/// `POST /unregister`: idempotent.
pub fn unregister(tx: &mut dyn Tx, id: u64, user: &str) -> Result<bool, LicenseError> {
    Ok(tx.delete_registration(id, user)?)
}

fn active_registration(tx: &mut dyn Tx, id: u64, user: &str, now: i64) -> Result<Registration, LicenseError> {
    tx.registration(id, user)?
        .filter(|r| r.is_active(now))
        .ok_or_else(|| LicenseError::UserNotRegistered(user.to_owned()))
}

/// `POST /borrow`: keep the seat until `until` (`None` = the longest allowed).
pub fn borrow(tx: &mut dyn Tx, id: u64, who: &ClientInfo, until: Option<i64>, now: i64) -> Result<Value, LicenseError> {
    let l = live_license(tx, id, now)?;
    if l.terms.max_borrow_time_hours == 0 {
        return Err(LicenseError::BorrowNotAllowed);
    }
    let mut reg = active_registration(tx, id, &who.user, now)?;
    let latest = now + clock::hours(l.terms.max_borrow_time_hours);
    let until = until.unwrap_or(latest);
    // A minute of slack for clocks and for clients that compute "now + max" themselves.
    if until <= now || until > latest + 60_000_000 {
        return Err(LicenseError::BorrowUntilNotValid {
            max_hours: l.terms.max_borrow_time_hours,
        });
    }
    let until = until.min(latest);
    reg.borrowed_until = Some(until);
    tx.put_registration(&reg)?;
    Ok(json!({
        "license_id": id,
        "borrowed_until": format_micros(until),
        "max_borrow_time": l.terms.max_borrow_time_hours,
        "is_borrowed": true,
    }))
}

/// The request-side overage options of add_consumption.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OverageRequest {
    /// `allow_overages` / `allowOverages`: `Some(false)` forbids overage for this call.
    pub allow: Option<bool>,
    /// `max_overages`: caps the overage for this call.
    pub max: Option<i64>,
}

/// Limit check shared by license and feature consumptions. `None` cap = unlimited.
fn cap(max: i64, allow_unlimited: bool, allow_overages: bool, max_overages: i64, req: OverageRequest) -> Option<i64> {
    if allow_unlimited {
        return None;
    }
    let overage_allowed = allow_overages && req.allow != Some(false);
    if !overage_allowed {
        return Some(max);
    }
    // LicenseSpring: max_overages 0 with overages allowed = unlimited overages.
    let license_over = (max_overages > 0).then_some(max_overages);
    let over = match (license_over, req.max.filter(|m| *m > 0)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    over.map(|o| max.saturating_add(o))
}

/// Exact consumption arithmetic: an addition that would overflow is refused (nothing is
/// counted, nothing changes), and refunds never take a total below zero unless the
/// license allows a negative total.
fn checked_total(total: i64, amount: i64, below_zero: bool) -> Result<i64, LicenseError> {
    let new = total
        .checked_add(amount)
        .ok_or_else(|| LicenseError::InvalidParameter {
            field: "consumptions",
            why: format!("adding {amount} to {total} overflows"),
        })?;
    if amount < 0 && new < 0 && !below_zero {
        return Err(LicenseError::InvalidParameter {
            field: "consumptions",
            why: format!(
                "a refund of {} would take the total {total} below zero",
                amount.unsigned_abs()
            ),
        });
    }
    Ok(new)
}

/// `POST /add_consumption`: the license with its new total (answer:
/// [`model::ConsumptionAnswer`]).
pub fn add_consumption(
    tx: &mut dyn Tx,
    id: u64,
    amount: i64,
    req: OverageRequest,
    now: i64,
) -> Result<License, LicenseError> {
    let mut l = live_license(tx, id, now)?;
    let Some(c) = l.terms.consumption.clone() else {
        return Err(LicenseError::NotConsumptionLicense);
    };
    if amount < 0 && !c.allow_negative {
        return Err(LicenseError::NegativeConsumptions { on: "license" });
    }
    let total = checked_total(l.total_consumptions, amount, c.allow_negative_total)?;
    if amount > 0 {
        if let Some(limit) = cap(
            c.max_consumptions,
            c.allow_unlimited,
            c.allow_overages,
            c.max_overages,
            req,
        ) {
            if total > limit {
                return Err(LicenseError::LicenseNotEnoughConsumptions);
            }
        }
    }
    tx.set_total_consumptions(id, total)?;
    l.total_consumptions = total;
    Ok(l)
}

fn feature<'l>(l: &'l License, code: &str) -> Result<(usize, &'l FeatureTerms), LicenseError> {
    l.terms
        .features
        .iter()
        .enumerate()
        .find(|(_, f)| f.code == code)
        .ok_or_else(|| LicenseError::FeatureNotFound(code.to_owned()))
}

/// `POST /add_feature_consumption`.
pub fn add_feature_consumption(
    tx: &mut dyn Tx,
    id: u64,
    code: &str,
    amount: i64,
    now: i64,
) -> Result<Value, LicenseError> {
    let mut l = live_license(tx, id, now)?;
    let (index, f) = feature(&l, code)?;
    let f = f.clone();
    if f.kind != FeatureKind::Consumption {
        return Err(LicenseError::FeatureNotConsumption(code.to_owned()));
    }
    if amount < 0 {
        return Err(LicenseError::NegativeConsumptions { on: "feature" });
    }
    let total = checked_total(l.feature_totals.get(code).copied().unwrap_or(0), amount, false)?;
    let limit = cap(
        f.max_consumption.unwrap_or(0),
        false,
        f.allow_overages,
        f.max_overages,
        OverageRequest::default(),
    );
    if limit.is_some_and(|lim| total > lim) {
        return Err(LicenseError::FeatureNotEnoughConsumptions(code.to_owned()));
    }
    tx.set_feature_total(id, code, total)?;
    l.feature_totals.insert(code.to_owned(), total);
    let usage = feature_usage(tx, &l, now)?;
    let mut o = model::feature_object(&l, index, &f, usage.get(code).copied().unwrap_or(0));
    if let Value::Object(m) = &mut o {
        m.insert("license_id".into(), json!(id));
    }
    Ok(o)
}

/// `POST /featureRegister`: take (or renew) a slot of a floating feature. Only users
/// registered to the license may do so (1.6.2).
pub fn feature_register(
    tx: &mut dyn Tx,
    id: u64,
    code: &str,
    who: &ClientInfo,
    now: i64,
) -> Result<Value, LicenseError> {
    let l = live_license(tx, id, now)?;
    let (index, f) = feature(&l, code)?;
    let f = f.clone();
    active_registration(tx, id, &who.user, now)?;
    let timeout = clock::minutes(
        f.floating_timeout_minutes
            .unwrap_or(l.terms.floating_timeout_minutes)
            .max(1),
    );
    let mut registered_at = now;
    if let Some(users) = f.floating_users {
        match tx
            .feature_registration(
                FeatureKey {
                    license_id: id,
                    feature: code,
                },
                &who.user,
            )?
            .filter(|r| r.expires_at > now)
        {
            Some(mine) => registered_at = mine.registered_at,
            None => {
                let in_use = tx.feature_usage(id, now)?.get(code).copied().unwrap_or(0);
                if in_use >= users as usize {
                    return Err(LicenseError::FeatureNotAvailable(code.to_owned()));
                }
            }
        }
        tx.put_feature_registration(&FeatureRegistration {
            license_id: id,
            feature: code.to_owned(),
            user: who.user.clone(),
            registered_at,
            expires_at: now + timeout,
            os_hostname: who.os_hostname.clone(),
            ip_local: who.ip_local.clone(),
            user_info: who.user_info.clone(),
        })?;
    }
    let usage = feature_usage(tx, &l, now)?;
    let mut o = model::feature_object(&l, index, &f, usage.get(code).copied().unwrap_or(0));
    if let Value::Object(m) = &mut o {
        m.insert("license_id".into(), json!(id));
        m.insert("product".into(), json!(l.terms.product));
        m.insert("feature".into(), json!(code));
        m.insert("os_hostname".into(), json!(who.os_hostname));
        m.insert("ip_local".into(), json!(who.ip_local));
        m.insert("user_info".into(), json!(who.user_info));
        m.insert("registered_at".into(), json!(format_micros(registered_at)));
        m.insert("borrowed_until".into(), Value::Null);
    }
    Ok(o)
}

/// `POST /featureRelease` (`user = Some`) and `/featureRelease/all` (`None`).
pub fn feature_release(
    tx: &mut dyn Tx,
    id: u64,
    code: &str,
    user: Option<&str>,
    now: i64,
) -> Result<usize, LicenseError> {
    let l = live_license(tx, id, now)?;
    feature(&l, code)?;
    Ok(tx.delete_feature_registrations(
        FeatureKey {
            license_id: id,
            feature: code,
        },
        user,
    )?)
}

/// A license with its totals, seats in use and live slots per feature.
pub type Usage = (License, usize, BTreeMap<String, usize>);

/// A license with its current totals, seats and feature slots, from the in-memory model:
/// the license list and metrics. `None` = removed meanwhile.
pub fn usage(model: &Model, license_id: u64, now: i64) -> Option<Usage> {
    model.lookup(license_id, now).map(|v| (v.license, v.in_use, v.features))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn caps_follow_licensespring_rules() {
        let none = OverageRequest::default();
        assert_eq!(cap(10, false, false, 5, none), Some(10));
        assert_eq!(cap(10, false, true, 5, none), Some(15));
        assert_eq!(cap(10, false, true, 0, none), None);
        assert_eq!(cap(10, true, false, 0, none), None);
        let no_over = OverageRequest {
            allow: Some(false),
            max: None,
        };
        assert_eq!(cap(10, false, true, 5, no_over), Some(10));
        let capped = OverageRequest {
            allow: Some(true),
            max: Some(2),
        };
        assert_eq!(cap(10, false, true, 5, capped), Some(12));
        assert_eq!(cap(10, false, true, 0, capped), Some(12));
    }
}
