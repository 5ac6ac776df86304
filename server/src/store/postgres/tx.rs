//! [`PgTx`]: the reads of one PostgreSQL transaction (the writer's batch or a
//! reader's snapshot). Statements mirror the SQLite ones; `user` is a reserved word here,
//! so that column is `user_name`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::PgConn;
use crate::model::{
    Account, AuditEvent, FeatureKind, FeatureRegistration, License, LicenseSource, LicenseTerms, Registration, Role,
};
use crate::store::{cached_terms, FeatureKey, ReadTx, SeatPage, SeatView, SlotPage, StoreResult};

pub(crate) struct PgTx<'c> {
    pub(crate) conn: &'c mut PgConn,
    /// Parsed terms by license id (writer only): terms never change after insertion.
    pub(crate) terms: Option<&'c mut HashMap<u64, Arc<LicenseTerms>>>,
}

// License ids are u64 on the wire; BIGINT is i64. The cast keeps all 64 bits.
pub(super) fn sid(id: u64) -> i64 {
    id as i64
}
pub(super) fn uid(id: i64) -> u64 {
    id as u64
}
fn limit(n: u32) -> i64 {
    i64::from(n)
}

type P<'a> = &'a (dyn ToSql + Sync);

const LICENSE_COLS: &str = "id, terms, activation_hardware_id, source, added_at, total_consumptions";

macro_rules! reg_cols {
    () => {
        "license_id, user_name, registered_at, expires_at, borrowed_until, os_hostname, ip_local, user_info"
    };
}
macro_rules! freg_cols {
    () => {
        "license_id, feature, user_name, registered_at, expires_at, os_hostname, ip_local, user_info"
    };
}
/// A seat row no longer held at `$2` (lapsed and not borrowed).
macro_rules! lapsed {
    () => {
        "expires_at <= $2 AND (borrowed_until IS NULL OR borrowed_until <= $2)"
    };
}
pub(super) use {freg_cols, lapsed, reg_cols};

fn reg_from_row(r: &Row) -> Registration {
    reg_at(r, 0)
}

/// The registration in the row's columns from `first` on, in [`reg_cols`] order (a join
/// puts other columns before them).
pub(super) fn reg_at(r: &Row, first: usize) -> Registration {
    Registration {
        license_id: uid(r.get(first)),
        user: r.get(first + 1),
        registered_at: r.get(first + 2),
        expires_at: r.get(first + 3),
        borrowed_until: r.get(first + 4),
        os_hostname: r.get(first + 5),
        ip_local: r.get(first + 6),
        user_info: r.get(first + 7),
    }
}

/// A [`SeatView`] from a row of the license's consumption total, its seat rows, its lapsed
/// rows and the user's registration in [`reg_cols`] order (NULLs when there is none).
pub(super) fn seat_view_row(r: &Row) -> SeatView {
    let (rows, lapsed): (i64, i64) = (r.get(1), r.get(2));
    SeatView {
        total_consumptions: r.get(0),
        in_use: usize::try_from(rows - lapsed).unwrap_or(0),
        lapsed: usize::try_from(lapsed).unwrap_or(0),
        // The user's row, when the outer join found one.
        registration: r.get::<_, Option<i64>>(3).map(|_| reg_at(r, 3)),
    }
}

fn freg_from_row(r: &Row) -> FeatureRegistration {
    FeatureRegistration {
        license_id: uid(r.get(0)),
        feature: r.get(1),
        user: r.get(2),
        registered_at: r.get(3),
        expires_at: r.get(4),
        os_hostname: r.get(5),
        ip_local: r.get(6),
        user_info: r.get(7),
    }
}

fn account_from_row(r: &Row) -> Option<Account> {
    Role::parse(r.get::<_, &str>(2)).map(|role| Account {
        username: r.get(0),
        password_hash: r.get(1),
        role,
    })
}

impl PgTx<'_> {
    pub(super) fn query(&mut self, sql: &'static str, params: &[P<'_>]) -> StoreResult<Vec<Row>> {
        self.conn.query(sql, params)
    }

    pub(super) fn query_opt(&mut self, sql: &'static str, params: &[P<'_>]) -> StoreResult<Option<Row>> {
        self.conn.query_opt(sql, params)
    }

    pub(super) fn query_one(&mut self, sql: &'static str, params: &[P<'_>]) -> StoreResult<Row> {
        self.conn.query_one(sql, params)
    }

    pub(super) fn execute(&mut self, sql: &'static str, params: &[P<'_>]) -> StoreResult<u64> {
        self.conn.execute(sql, params)
    }

    fn feature_totals(&mut self, id: u64) -> StoreResult<BTreeMap<String, i64>> {
        Ok(self
            .query(
                "SELECT feature, total FROM feature_consumptions WHERE license_id = $1",
                &[&sid(id)],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    fn build(&mut self, r: &Row) -> StoreResult<License> {
        let id = uid(r.get(0));
        let terms = cached_terms(self.terms.as_deref_mut(), id, r.get(1))?;
        Ok(License {
            id,
            activation_hardware_id: r.get(2),
            source: if r.get::<_, &str>(3) == "file" {
                LicenseSource::File
            } else {
                LicenseSource::Api
            },
            added_at: r.get(4),
            total_consumptions: r.get(5),
            feature_totals: if terms.features.iter().any(|f| f.kind == FeatureKind::Consumption) {
                self.feature_totals(id)?
            } else {
                BTreeMap::new()
            },
            terms,
        })
    }
}

impl ReadTx for PgTx<'_> {
    fn licenses(&mut self) -> StoreResult<Vec<License>> {
        const SQL: &str = "SELECT id, terms, activation_hardware_id, source, added_at, total_consumptions
                           FROM licenses ORDER BY seq";
        debug_assert!(SQL.contains(LICENSE_COLS));
        let rows = self.query(SQL, &[])?;
        rows.iter().map(|r| self.build(r)).collect()
    }

    fn license(&mut self, id: u64) -> StoreResult<Option<License>> {
        let row = self.query_opt(
            "SELECT id, terms, activation_hardware_id, source, added_at, total_consumptions
             FROM licenses WHERE id = $1",
            &[&sid(id)],
        )?;
        row.map(|r| self.build(&r)).transpose()
    }

    fn license_totals(&mut self, id: u64, features: bool) -> StoreResult<Option<(i64, BTreeMap<String, i64>)>> {
        let Some(row) = self.query_opt("SELECT total_consumptions FROM licenses WHERE id = $1", &[&sid(id)])? else {
            return Ok(None);
        };
        let features = if features {
            self.feature_totals(id)?
        } else {
            BTreeMap::new()
        };
        Ok(Some((row.get(0), features)))
    }

    fn seat_view(&mut self, license_id: u64, user: Option<&str>, now: i64) -> StoreResult<Option<SeatView>> {
        let row = self.query_opt(
            concat!(
                "SELECT l.total_consumptions,
                   COALESCE((SELECT n FROM seat_counts WHERE license_id = $1), 0),
                   (SELECT COUNT(*) FROM registrations WHERE license_id = $1 AND ",
                lapsed!(),
                "),
                   r.license_id, r.user_name, r.registered_at, r.expires_at, r.borrowed_until, r.os_hostname,
                   r.ip_local, r.user_info
                 FROM licenses l LEFT JOIN registrations r ON r.license_id = l.id AND r.user_name = $3::TEXT
                 WHERE l.id = $1"
            ),
            &[&sid(license_id), &now, &user],
        )?;
        Ok(row.as_ref().map(seat_view_row))
    }

    fn registrations_page(&mut self, page: SeatPage<'_>) -> StoreResult<Vec<Registration>> {
        let rows = self.query(
            concat!(
                "SELECT ",
                reg_cols!(),
                " FROM registrations WHERE ($1::BIGINT IS NULL OR license_id = $1)
                   AND ($2::BIGINT IS NULL OR (license_id, user_name) > ($2, $3::TEXT))
                 ORDER BY license_id, user_name LIMIT $4"
            ),
            &[
                &page.license_id.map(sid),
                &page.after.map(|c| sid(c.license_id)),
                &page.after.map(|c| c.user.as_str()),
                &limit(page.limit),
            ],
        )?;
        Ok(rows.iter().map(reg_from_row).collect())
    }

    fn registration(&mut self, license_id: u64, user: &str) -> StoreResult<Option<Registration>> {
        Ok(self
            .query_opt(
                concat!(
                    "SELECT ",
                    reg_cols!(),
                    " FROM registrations WHERE license_id = $1 AND user_name = $2"
                ),
                &[&sid(license_id), &user],
            )?
            .as_ref()
            .map(reg_from_row))
    }

    fn count_active_registrations(&mut self, license_id: u64, now: i64) -> StoreResult<usize> {
        // The trigger-kept count of every row, less the lapsed rows not purged yet (an
        // index range over the expired ones).
        let n: i64 = self
            .query_one(
                concat!(
                    "SELECT COALESCE((SELECT n FROM seat_counts WHERE license_id = $1), 0)
                       - (SELECT COUNT(*) FROM registrations WHERE license_id = $1 AND ",
                    lapsed!(),
                    ")"
                ),
                &[&sid(license_id), &now],
            )?
            .get(0);
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn feature_registrations_page(&mut self, page: SlotPage<'_>) -> StoreResult<Vec<FeatureRegistration>> {
        let rows = self.query(
            concat!(
                "SELECT ",
                freg_cols!(),
                " FROM feature_registrations
                 WHERE ($1::BIGINT IS NULL OR license_id = $1) AND ($2::TEXT IS NULL OR feature = $2)
                   AND ($3::BIGINT IS NULL OR (license_id, feature, user_name) > ($3, $4::TEXT, $5::TEXT))
                 ORDER BY license_id, feature, user_name LIMIT $6"
            ),
            &[
                &page.license_id.map(sid),
                &page.feature,
                &page.after.map(|c| sid(c.license_id)),
                &page.after.map(|c| c.feature.as_str()),
                &page.after.map(|c| c.user.as_str()),
                &limit(page.limit),
            ],
        )?;
        Ok(rows.iter().map(freg_from_row).collect())
    }

    fn feature_registration(&mut self, of: FeatureKey<'_>, user: &str) -> StoreResult<Option<FeatureRegistration>> {
        Ok(self
            .query_opt(
                concat!(
                    "SELECT ",
                    freg_cols!(),
                    " FROM feature_registrations WHERE license_id = $1 AND feature = $2 AND user_name = $3"
                ),
                &[&sid(of.license_id), &of.feature, &user],
            )?
            .as_ref()
            .map(freg_from_row))
    }

    fn feature_usage(&mut self, license_id: u64, now: i64) -> StoreResult<BTreeMap<String, usize>> {
        // A slot goes with its user's seat: slots of a lapsed (unpurged) seat do not count.
        let rows = self.query(
            "SELECT f.feature, COUNT(*) FROM feature_registrations f
             WHERE f.license_id = $1 AND f.expires_at > $2
               AND NOT EXISTS (SELECT 1 FROM registrations r WHERE r.license_id = $1 AND r.user_name = f.user_name
                                 AND r.expires_at <= $2 AND (r.borrowed_until IS NULL OR r.borrowed_until <= $2))
             GROUP BY f.feature",
            &[&sid(license_id), &now],
        )?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), usize::try_from(r.get::<_, i64>(1)).unwrap_or(0)))
            .collect())
    }

    fn account(&mut self, username: &str) -> StoreResult<Option<Account>> {
        Ok(self
            .query_opt(
                "SELECT username, password_hash, role FROM accounts WHERE username = $1",
                &[&username],
            )?
            .as_ref()
            .and_then(account_from_row))
    }

    fn accounts(&mut self) -> StoreResult<Vec<Account>> {
        let rows = self.query(
            "SELECT username, password_hash, role FROM accounts ORDER BY username",
            &[],
        )?;
        Ok(rows.iter().filter_map(account_from_row).collect())
    }

    fn audit_events(&mut self, before: Option<i64>, n: u32) -> StoreResult<Vec<AuditEvent>> {
        let rows = self.query(
            "SELECT id, at, kind, actor, license_id, detail FROM audit
             WHERE $1::BIGINT IS NULL OR id < $1 ORDER BY id DESC LIMIT $2",
            &[&before, &limit(n)],
        )?;
        Ok(rows
            .iter()
            .map(|r| AuditEvent {
                id: r.get(0),
                at: r.get(1),
                kind: r.get(2),
                actor: r.get(3),
                license_id: r.get::<_, Option<i64>>(4).map(uid),
                detail: r.get(5),
            })
            .collect())
    }
}
