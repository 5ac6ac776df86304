//! [`SqliteTx`]: the reads of one snapshot (the writer's transaction or a reader's).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};

use crate::model::{
    Account, AuditEvent, FeatureKind, FeatureRegistration, License, LicenseSource, LicenseTerms, Registration, Role,
};
use crate::store::{cached_terms, FeatureKey, ReadTx, SeatPage, SeatView, SlotPage, StoreResult};

pub(super) struct SqliteTx<'c> {
    pub(super) conn: &'c Connection,
    /// Parsed terms by license id (writer only): terms never change after insertion, so
    /// every request after the first skips the JSON parse. Only consulted for rows that
    /// exist.
    pub(super) terms: Option<&'c mut HashMap<u64, Arc<LicenseTerms>>>,
}

// License ids are u64 on the wire; SQLite integers are i64. The cast keeps all 64 bits.
pub(super) fn sid(id: u64) -> i64 {
    id as i64
}
pub(super) fn uid(id: i64) -> u64 {
    id as u64
}

type LicenseRow = (u64, String, String, String, i64, i64);

impl SqliteTx<'_> {
    fn feature_totals(&self, id: u64) -> StoreResult<BTreeMap<String, i64>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT feature, total FROM feature_consumptions WHERE license_id = ?1")?;
        let rows = st.query_map([sid(id)], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn license_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LicenseRow> {
        Ok((uid(r.get(0)?), r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
    }

    fn build(&mut self, row: LicenseRow) -> StoreResult<License> {
        let (id, terms, hw, source, added_at, total) = row;
        let terms = cached_terms(self.terms.as_deref_mut(), id, &terms)?;
        Ok(License {
            id,
            activation_hardware_id: hw,
            source: if source == "file" {
                LicenseSource::File
            } else {
                LicenseSource::Api
            },
            added_at,
            total_consumptions: total,
            // Only consumption features have totals: most licenses need no query here.
            feature_totals: if terms.features.iter().any(|f| f.kind == FeatureKind::Consumption) {
                self.feature_totals(id)?
            } else {
                BTreeMap::new()
            },
            terms,
        })
    }
}

// Column lists as macros so statement texts are `concat!` constants: the statement cache
// is keyed by a `&'static str`, never by a string formatted per call.
macro_rules! license_cols {
    () => {
        "id, terms, activation_hardware_id, source, added_at, total_consumptions"
    };
}
macro_rules! reg_cols {
    () => {
        "license_id, user, registered_at, expires_at, borrowed_until, os_hostname, ip_local, user_info"
    };
}
macro_rules! freg_cols {
    () => {
        "license_id, feature, user, registered_at, expires_at, os_hostname, ip_local, user_info"
    };
}

/// A seat row that is no longer held at `?2` (lapsed and not borrowed).
macro_rules! lapsed {
    () => {
        "expires_at <= ?2 AND (borrowed_until IS NULL OR borrowed_until <= ?2)"
    };
}
pub(super) use {freg_cols, lapsed, reg_cols};

fn reg_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Registration> {
    reg_at(r, 0)
}

/// The registration in the row's columns from `first` on, in [`reg_cols`] order (a join
/// puts other columns before them).
fn reg_at(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Registration> {
    Ok(Registration {
        license_id: uid(r.get(first)?),
        user: r.get(first + 1)?,
        registered_at: r.get(first + 2)?,
        expires_at: r.get(first + 3)?,
        borrowed_until: r.get(first + 4)?,
        os_hostname: r.get(first + 5)?,
        ip_local: r.get(first + 6)?,
        user_info: r.get(first + 7)?,
    })
}

fn freg_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FeatureRegistration> {
    Ok(FeatureRegistration {
        license_id: uid(r.get(0)?),
        feature: r.get(1)?,
        user: r.get(2)?,
        registered_at: r.get(3)?,
        expires_at: r.get(4)?,
        os_hostname: r.get(5)?,
        ip_local: r.get(6)?,
        user_info: r.get(7)?,
    })
}

fn account_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

fn limit(n: u32) -> i64 {
    i64::from(n)
}

impl ReadTx for SqliteTx<'_> {
    fn licenses(&mut self) -> StoreResult<Vec<License>> {
        let rows: Vec<_> = {
            let mut st =
                self.conn
                    .prepare_cached(concat!("SELECT ", license_cols!(), " FROM licenses ORDER BY seq"))?;
            let rows = st.query_map([], Self::license_from_row)?;
            rows.collect::<Result<_, _>>()?
        };
        rows.into_iter().map(|row| self.build(row)).collect()
    }

    fn license(&mut self, id: u64) -> StoreResult<Option<License>> {
        let row = self
            .conn
            .prepare_cached(concat!("SELECT ", license_cols!(), " FROM licenses WHERE id = ?1"))?
            .query_row([sid(id)], Self::license_from_row)
            .optional()?;
        row.map(|row| self.build(row)).transpose()
    }

    fn license_totals(&mut self, id: u64, features: bool) -> StoreResult<Option<(i64, BTreeMap<String, i64>)>> {
        let total: Option<i64> = self
            .conn
            .prepare_cached("SELECT total_consumptions FROM licenses WHERE id = ?1")?
            .query_row([sid(id)], |r| r.get(0))
            .optional()?;
        let Some(total) = total else { return Ok(None) };
        let features = if features {
            self.feature_totals(id)?
        } else {
            BTreeMap::new()
        };
        Ok(Some((total, features)))
    }

    fn seat_view(&mut self, license_id: u64, user: Option<&str>, now: i64) -> StoreResult<Option<SeatView>> {
        // One statement instead of three: a heartbeat costs one VDBE program per read.
        Ok(self
            .conn
            .prepare_cached(concat!(
                "SELECT l.total_consumptions,
                   (SELECT COUNT(*) FROM registrations WHERE license_id = ?1),
                   (SELECT COUNT(*) FROM registrations WHERE license_id = ?1 AND ",
                lapsed!(),
                "),
                   r.license_id, r.user, r.registered_at, r.expires_at, r.borrowed_until, r.os_hostname, r.ip_local,
                   r.user_info
                 FROM licenses l LEFT JOIN registrations r ON r.license_id = l.id AND r.user = ?3
                 WHERE l.id = ?1"
            ))?
            .query_row(params![sid(license_id), now, user], |r| {
                // The user's row, when the outer join found one.
                let registration = match r.get::<_, Option<i64>>(3)? {
                    None => None,
                    Some(_) => Some(reg_at(r, 3)?),
                };
                let (rows, lapsed): (i64, i64) = (r.get(1)?, r.get(2)?);
                Ok(SeatView {
                    total_consumptions: r.get(0)?,
                    in_use: usize::try_from(rows - lapsed).unwrap_or(0),
                    lapsed: usize::try_from(lapsed).unwrap_or(0),
                    registration,
                })
            })
            .optional()?)
    }

    fn registrations_page(&mut self, page: SeatPage<'_>) -> StoreResult<Vec<Registration>> {
        let mut st = self.conn.prepare_cached(concat!(
            "SELECT ",
            reg_cols!(),
            " FROM registrations WHERE (?1 IS NULL OR license_id = ?1)
               AND (?2 IS NULL OR (license_id, user) > (?2, ?3))
             ORDER BY license_id, user LIMIT ?4"
        ))?;
        let rows = st.query_map(
            params![
                page.license_id.map(sid),
                page.after.map(|c| sid(c.license_id)),
                page.after.map(|c| c.user.as_str()),
                limit(page.limit)
            ],
            reg_from_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn registration(&mut self, license_id: u64, user: &str) -> StoreResult<Option<Registration>> {
        Ok(self
            .conn
            .prepare_cached(concat!(
                "SELECT ",
                reg_cols!(),
                " FROM registrations WHERE license_id = ?1 AND user = ?2"
            ))?
            .query_row(params![sid(license_id), user], reg_from_row)
            .optional()?)
    }

    fn count_active_registrations(&mut self, license_id: u64, now: i64) -> StoreResult<usize> {
        // The server counts from its model; this scan of the license's rows serves tools,
        // tests and a batch that changed the license wholesale. No write.
        let n: i64 = self
            .conn
            .prepare_cached(concat!(
                "SELECT COUNT(*) FROM registrations WHERE license_id = ?1 AND NOT (",
                lapsed!(),
                ")"
            ))?
            .query_row(params![sid(license_id), now], |r| r.get(0))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn feature_registrations_page(&mut self, page: SlotPage<'_>) -> StoreResult<Vec<FeatureRegistration>> {
        let mut st = self.conn.prepare_cached(concat!(
            "SELECT ",
            freg_cols!(),
            " FROM feature_registrations
             WHERE (?1 IS NULL OR license_id = ?1) AND (?2 IS NULL OR feature = ?2)
               AND (?3 IS NULL OR (license_id, feature, user) > (?3, ?4, ?5))
             ORDER BY license_id, feature, user LIMIT ?6"
        ))?;
        let rows = st.query_map(
            params![
                page.license_id.map(sid),
                page.feature,
                page.after.map(|c| sid(c.license_id)),
                page.after.map(|c| c.feature.as_str()),
                page.after.map(|c| c.user.as_str()),
                limit(page.limit)
            ],
            freg_from_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn feature_registration(&mut self, of: FeatureKey<'_>, user: &str) -> StoreResult<Option<FeatureRegistration>> {
        Ok(self
            .conn
            .prepare_cached(concat!(
                "SELECT ",
                freg_cols!(),
                " FROM feature_registrations WHERE license_id = ?1 AND feature = ?2 AND user = ?3"
            ))?
            .query_row(params![sid(of.license_id), of.feature, user], freg_from_row)
            .optional()?)
    }

    fn feature_usage(&mut self, license_id: u64, now: i64) -> StoreResult<BTreeMap<String, usize>> {
        // A slot goes with its user's seat: slots of a lapsed (unpurged) seat do not count.
        let mut st = self.conn.prepare_cached(
            "SELECT f.feature, COUNT(*) FROM feature_registrations f
             WHERE f.license_id = ?1 AND f.expires_at > ?2
               AND NOT EXISTS (SELECT 1 FROM registrations r WHERE r.license_id = ?1 AND r.user = f.user
                                 AND r.expires_at <= ?2 AND (r.borrowed_until IS NULL OR r.borrowed_until <= ?2))
             GROUP BY f.feature",
        )?;
        let rows = st.query_map(params![sid(license_id), now], |r| {
            Ok((
                r.get::<_, String>(0)?,
                usize::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn account(&mut self, username: &str) -> StoreResult<Option<Account>> {
        let row = self
            .conn
            .prepare_cached("SELECT username, password_hash, role FROM accounts WHERE username = ?1")?
            .query_row([username], account_from_row)
            .optional()?;
        Ok(row.and_then(|(username, password_hash, role)| {
            Role::parse(&role).map(|role| Account {
                username,
                password_hash,
                role,
            })
        }))
    }

    fn accounts(&mut self) -> StoreResult<Vec<Account>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT username, password_hash, role FROM accounts ORDER BY username")?;
        let rows = st.query_map([], account_from_row)?;
        let mut out = Vec::new();
        for row in rows {
            let (username, password_hash, role) = row?;
            if let Some(role) = Role::parse(&role) {
                out.push(Account {
                    username,
                    password_hash,
                    role,
                });
            }
        }
        Ok(out)
    }

    fn audit_events(&mut self, before: Option<i64>, n: u32) -> StoreResult<Vec<AuditEvent>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, at, kind, actor, license_id, detail FROM audit
             WHERE ?1 IS NULL OR id < ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![before, limit(n)], |r| {
            Ok(AuditEvent {
                id: r.get(0)?,
                at: r.get(1)?,
                kind: r.get(2)?,
                actor: r.get(3)?,
                license_id: r.get::<_, Option<i64>>(4)?.map(uid),
                detail: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
