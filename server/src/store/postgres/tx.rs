//! [`PgTx`]: the reads and writes of one PostgreSQL transaction (the writer's batch or a
//! reader's snapshot). Statements mirror the SQLite ones; `user` is a reserved word here,
//! so that column is `user_name`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use postgres::types::ToSql;
use postgres::Row;

use super::PgConn;
use crate::model::{
    Account, AuditEvent, FeatureKind, FeatureRegistration, License, LicenseSource, LicenseTerms, Registration, Role,
};
use crate::store::audit_chain::{self, ChainReport};
use crate::store::{ReadTx, RegCursor, SeatView, StoreError, StoreResult, Tx};

pub(crate) struct PgTx<'c> {
    pub(crate) conn: &'c mut PgConn,
    /// Parsed terms by license id (writer only): terms never change after insertion.
    pub(crate) terms: Option<&'c mut HashMap<u64, Arc<LicenseTerms>>>,
}

// License ids are u64 on the wire; BIGINT is i64. The cast keeps all 64 bits.
fn sid(id: u64) -> i64 {
    id as i64
}
fn uid(id: i64) -> u64 {
    id as u64
}
fn limit(n: u32) -> i64 {
    i64::from(n)
}
fn count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
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

fn reg_from_row(r: &Row) -> Registration {
    Registration {
        license_id: uid(r.get(0)),
        user: r.get(1),
        registered_at: r.get(2),
        expires_at: r.get(3),
        borrowed_until: r.get(4),
        os_hostname: r.get(5),
        ip_local: r.get(6),
        user_info: r.get(7),
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
    fn query(&mut self, sql: &'static str, params: &[P<'_>]) -> StoreResult<Vec<Row>> {
        let st = self.conn.statement(sql)?;
        Ok(self.conn.client.query(&st, params)?)
    }

    fn query_opt(&mut self, sql: &'static str, params: &[P<'_>]) -> StoreResult<Option<Row>> {
        let st = self.conn.statement(sql)?;
        Ok(self.conn.client.query_opt(&st, params)?)
    }

    fn query_one(&mut self, sql: &'static str, params: &[P<'_>]) -> StoreResult<Row> {
        let st = self.conn.statement(sql)?;
        Ok(self.conn.client.query_one(&st, params)?)
    }

    fn execute(&mut self, sql: &'static str, params: &[P<'_>]) -> StoreResult<u64> {
        let st = self.conn.statement(sql)?;
        Ok(self.conn.client.execute(&st, params)?)
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
        let parse = |terms: &str| -> StoreResult<Arc<LicenseTerms>> {
            serde_json::from_str(terms)
                .map(Arc::new)
                .map_err(|e| StoreError::Failed(format!("license {id}: bad terms: {e}")))
        };
        let terms = match self.terms.as_deref_mut() {
            Some(cache) => match cache.get(&id) {
                Some(t) => Arc::clone(t),
                None => {
                    let t = parse(r.get(1))?;
                    cache.insert(id, Arc::clone(&t));
                    t
                }
            },
            None => parse(r.get(1))?,
        };
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
                   r.user_name, r.registered_at, r.expires_at, r.borrowed_until, r.os_hostname, r.ip_local, r.user_info
                 FROM licenses l LEFT JOIN registrations r ON r.license_id = l.id AND r.user_name = $3::TEXT
                 WHERE l.id = $1"
            ),
            &[&sid(license_id), &now, &user],
        )?;
        Ok(row.map(|r| {
            let registration = r.get::<_, Option<String>>(3).map(|user| Registration {
                license_id,
                user,
                registered_at: r.get(4),
                expires_at: r.get(5),
                borrowed_until: r.get(6),
                os_hostname: r.get(7),
                ip_local: r.get(8),
                user_info: r.get(9),
            });
            let (rows, lapsed): (i64, i64) = (r.get(1), r.get(2));
            SeatView {
                total_consumptions: r.get(0),
                in_use: usize::try_from(rows - lapsed).unwrap_or(0),
                lapsed: usize::try_from(lapsed).unwrap_or(0),
                registration,
            }
        }))
    }

    fn registrations_page(
        &mut self,
        license_id: Option<u64>,
        after: Option<&RegCursor>,
        n: u32,
    ) -> StoreResult<Vec<Registration>> {
        let rows = self.query(
            concat!(
                "SELECT ",
                reg_cols!(),
                " FROM registrations WHERE ($1::BIGINT IS NULL OR license_id = $1)
                   AND ($2::BIGINT IS NULL OR (license_id, user_name) > ($2, $3::TEXT))
                 ORDER BY license_id, user_name LIMIT $4"
            ),
            &[
                &license_id.map(sid),
                &after.map(|c| sid(c.license_id)),
                &after.map(|c| c.user.as_str()),
                &limit(n),
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

    fn feature_registrations_page(
        &mut self,
        license_id: Option<u64>,
        feature: Option<&str>,
        after: Option<&RegCursor>,
        n: u32,
    ) -> StoreResult<Vec<FeatureRegistration>> {
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
                &license_id.map(sid),
                &feature,
                &after.map(|c| sid(c.license_id)),
                &after.map(|c| c.feature.as_str()),
                &after.map(|c| c.user.as_str()),
                &limit(n),
            ],
        )?;
        Ok(rows.iter().map(freg_from_row).collect())
    }

    fn feature_registration(
        &mut self,
        license_id: u64,
        feature: &str,
        user: &str,
    ) -> StoreResult<Option<FeatureRegistration>> {
        Ok(self
            .query_opt(
                concat!(
                    "SELECT ",
                    freg_cols!(),
                    " FROM feature_registrations WHERE license_id = $1 AND feature = $2 AND user_name = $3"
                ),
                &[&sid(license_id), &feature, &user],
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

impl Tx for PgTx<'_> {
    fn next_license_id(&mut self) -> StoreResult<u64> {
        // Ids look like LicenseSpring's (16 digits) and never collide with existing ones.
        let max: Option<i64> = self
            .query_one("SELECT MAX(id) FROM licenses WHERE id < 9000000000000000", &[])?
            .get(0);
        Ok(uid(max.unwrap_or(1_000_000_000_000_000).max(1_000_000_000_000_000) + 1))
    }

    fn insert_license(&mut self, l: &License) -> StoreResult<()> {
        if let Some(cache) = self.terms.as_deref_mut() {
            cache.insert(l.id, Arc::clone(&l.terms));
        }
        let terms = serde_json::to_string(&*l.terms).map_err(|e| StoreError::Failed(e.to_string()))?;
        self.execute(
            "INSERT INTO licenses (id, seq, product, terms, activation_hardware_id, source, added_at, total_consumptions)
             VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM licenses), $2, $3, $4, $5, $6, $7)",
            &[
                &sid(l.id),
                &l.terms.product,
                &terms,
                &l.activation_hardware_id,
                &l.source.as_str(),
                &l.added_at,
                &l.total_consumptions,
            ],
        )?;
        for (f, total) in &l.feature_totals {
            self.set_feature_total(l.id, f, *total)?;
        }
        Ok(())
    }

    fn delete_license(&mut self, id: u64) -> StoreResult<bool> {
        if let Some(cache) = self.terms.as_deref_mut() {
            cache.remove(&id);
        }
        Ok(self.execute("DELETE FROM licenses WHERE id = $1", &[&sid(id)])? > 0)
    }

    fn set_total_consumptions(&mut self, id: u64, total: i64) -> StoreResult<()> {
        self.execute(
            "UPDATE licenses SET total_consumptions = $2 WHERE id = $1",
            &[&sid(id), &total],
        )?;
        Ok(())
    }

    fn set_feature_total(&mut self, id: u64, feature: &str, total: i64) -> StoreResult<()> {
        self.execute(
            "INSERT INTO feature_consumptions (license_id, feature, total) VALUES ($1, $2, $3)
             ON CONFLICT (license_id, feature) DO UPDATE SET total = excluded.total",
            &[&sid(id), &feature, &total],
        )?;
        Ok(())
    }

    fn put_registration(&mut self, r: &Registration) -> StoreResult<()> {
        self.execute(
            concat!(
                "INSERT INTO registrations (",
                reg_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (license_id, user_name) DO UPDATE SET registered_at = excluded.registered_at,
                   expires_at = excluded.expires_at, borrowed_until = excluded.borrowed_until,
                   os_hostname = excluded.os_hostname, ip_local = excluded.ip_local,
                   user_info = excluded.user_info"
            ),
            &[
                &sid(r.license_id),
                &r.user,
                &r.registered_at,
                &r.expires_at,
                &r.borrowed_until,
                &r.os_hostname,
                &r.ip_local,
                &r.user_info,
            ],
        )?;
        Ok(())
    }

    fn delete_registration(&mut self, license_id: u64, user: &str) -> StoreResult<bool> {
        self.execute(
            "DELETE FROM feature_registrations WHERE license_id = $1 AND user_name = $2",
            &[&sid(license_id), &user],
        )?;
        let n = self.execute(
            "DELETE FROM registrations WHERE license_id = $1 AND user_name = $2",
            &[&sid(license_id), &user],
        )?;
        Ok(n > 0)
    }

    fn delete_registrations(&mut self, license_id: Option<u64>) -> StoreResult<usize> {
        let id = license_id.map(sid);
        self.execute(
            "DELETE FROM feature_registrations WHERE $1::BIGINT IS NULL OR license_id = $1",
            &[&id],
        )?;
        Ok(count(self.execute(
            "DELETE FROM registrations WHERE $1::BIGINT IS NULL OR license_id = $1",
            &[&id],
        )?))
    }

    fn purge_expired(&mut self, license_id: Option<u64>, now: i64) -> StoreResult<usize> {
        // Feature slots of users whose seat lapsed go with the seat.
        let (slots, seats) = match license_id {
            Some(id) => (
                self.execute(
                    concat!(
                        "DELETE FROM feature_registrations WHERE license_id = $1 AND (expires_at <= $2 OR user_name IN
                           (SELECT user_name FROM registrations WHERE license_id = $1 AND ",
                        lapsed!(),
                        "))"
                    ),
                    &[&sid(id), &now],
                )?,
                self.execute(
                    concat!("DELETE FROM registrations WHERE license_id = $1 AND ", lapsed!()),
                    &[&sid(id), &now],
                )?,
            ),
            None => (
                self.execute(
                    "DELETE FROM feature_registrations f WHERE f.expires_at <= $1 OR EXISTS
                       (SELECT 1 FROM registrations r WHERE r.license_id = f.license_id
                          AND r.user_name = f.user_name AND r.expires_at <= $1
                          AND (r.borrowed_until IS NULL OR r.borrowed_until <= $1))",
                    &[&now],
                )?,
                self.execute(
                    "DELETE FROM registrations WHERE expires_at <= $1
                       AND (borrowed_until IS NULL OR borrowed_until <= $1)",
                    &[&now],
                )?,
            ),
        };
        Ok(count(slots + seats))
    }

    fn put_feature_registration(&mut self, r: &FeatureRegistration) -> StoreResult<()> {
        self.execute(
            concat!(
                "INSERT INTO feature_registrations (",
                freg_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (license_id, feature, user_name) DO UPDATE SET
                   registered_at = excluded.registered_at, expires_at = excluded.expires_at,
                   os_hostname = excluded.os_hostname, ip_local = excluded.ip_local, user_info = excluded.user_info"
            ),
            &[
                &sid(r.license_id),
                &r.feature,
                &r.user,
                &r.registered_at,
                &r.expires_at,
                &r.os_hostname,
                &r.ip_local,
                &r.user_info,
            ],
        )?;
        Ok(())
    }

    fn delete_feature_registrations(
        &mut self,
        license_id: u64,
        feature: &str,
        user: Option<&str>,
    ) -> StoreResult<usize> {
        Ok(count(self.execute(
            "DELETE FROM feature_registrations WHERE license_id = $1 AND feature = $2
               AND ($3::TEXT IS NULL OR user_name = $3)",
            &[&sid(license_id), &feature, &user],
        )?))
    }

    fn put_account(&mut self, a: &Account) -> StoreResult<()> {
        self.execute(
            "INSERT INTO accounts (username, password_hash, role) VALUES ($1, $2, $3)
             ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash, role = excluded.role",
            &[&a.username, &a.password_hash, &a.role.as_str()],
        )?;
        Ok(())
    }

    fn delete_account(&mut self, username: &str) -> StoreResult<bool> {
        Ok(self.execute("DELETE FROM accounts WHERE username = $1", &[&username])? > 0)
    }

    fn token_generations(&mut self) -> StoreResult<HashMap<String, u64>> {
        Ok(self
            .query("SELECT username, generation FROM token_generations", &[])?
            .iter()
            .map(|r| (r.get(0), uid(r.get(1))))
            .collect())
    }

    fn bump_token_generation(&mut self, username: &str) -> StoreResult<u64> {
        Ok(uid(self
            .query_one(
                "INSERT INTO token_generations (username, generation) VALUES ($1, 1)
                 ON CONFLICT (username) DO UPDATE SET generation = token_generations.generation + 1
                 RETURNING generation",
                &[&username],
            )?
            .get(0)))
    }

    fn audit(&mut self, e: &AuditEvent) -> StoreResult<()> {
        let license_id = e.license_id.map(sid);
        let Some(head) = self.query_opt(
            "SELECT genesis, head_hash FROM audit_chain WHERE one = 1 FOR UPDATE",
            &[],
        )?
        else {
            return Err(StoreError::Failed("the audit chain anchor row is missing".into()));
        };
        let prev: String = head.get::<_, Option<String>>(1).unwrap_or_else(|| head.get(0));
        let id: i64 = self
            .query_one(
                "INSERT INTO audit (at, kind, actor, license_id, detail, prev_hash) VALUES ($1, $2, $3, $4, $5, $6)
                 RETURNING id",
                &[&e.at, &e.kind, &e.actor, &license_id, &e.detail, &prev],
            )?
            .get(0);
        let hash = audit_chain::record_hash(&prev, id, e.at, &e.kind, e.actor.as_deref(), license_id, &e.detail);
        self.execute("UPDATE audit SET hash = $1 WHERE id = $2", &[&hash, &id])?;
        self.execute(
            "UPDATE audit_chain SET head_id = $1, head_hash = $2 WHERE one = 1",
            &[&id, &hash],
        )?;
        Ok(())
    }

    fn verify_audit_chain(&mut self) -> StoreResult<ChainReport> {
        let Some(a) = self.query_opt(
            "SELECT start_id, genesis, head_id, head_hash FROM audit_chain WHERE one = 1",
            &[],
        )?
        else {
            return Err(audit_chain::no_anchor());
        };
        let state: audit_chain::ChainState = (a.get(0), a.get(1), a.get(2), a.get(3));
        let before: i64 = self
            .query_one("SELECT COUNT(*) FROM audit WHERE id < $1", &[&state.0])?
            .get(0);
        let rows = self.query(
            "SELECT id, at, kind, actor, license_id, detail, prev_hash, hash FROM audit WHERE id >= $1 ORDER BY id",
            &[&state.0],
        )?;
        let rows = rows.iter().map(|r| {
            Ok((
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
            ))
        });
        audit_chain::verify_rows(state, before, rows)
    }
}
