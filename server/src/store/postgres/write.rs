//! The writes of [`PgTx`] (writer thread only).

use std::collections::HashMap;

use super::tx::{freg_cols, lapsed, reg_cols, seat_view_row, sid, uid, PgTx};
use crate::model::{Account, AuditEvent, FeatureRegistration, License, Registration};
use crate::store::audit_chain::{self, ChainReport};
use crate::store::{cache_terms, forget_terms, put_feature_totals, FeatureKey, SeatTaken, StoreError, StoreResult, Tx};

fn count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
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
        let terms = cache_terms(self.terms.as_deref_mut(), l)?;
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
        put_feature_totals(self, l)
    }

    fn delete_license(&mut self, id: u64) -> StoreResult<bool> {
        forget_terms(self.terms.as_deref_mut(), id);
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
            // An upsert that counts a new row in the seat counter (`xmax = 0`: inserted,
            // not updated), one statement; removals are counted by a trigger.
            concat!(
                "WITH up AS (INSERT INTO registrations (",
                reg_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (license_id, user_name) DO UPDATE SET registered_at = excluded.registered_at,
                   expires_at = excluded.expires_at, borrowed_until = excluded.borrowed_until,
                   os_hostname = excluded.os_hostname, ip_local = excluded.ip_local,
                   user_info = excluded.user_info
                 RETURNING (xmax = 0) AS inserted)
                 INSERT INTO seat_counts (license_id, n) SELECT $1, 1 FROM up WHERE inserted
                 ON CONFLICT (license_id) DO UPDATE SET n = seat_counts.n + 1"
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

    fn take_seat(&mut self, seat: &Registration, limit: usize, now: i64) -> StoreResult<Option<SeatTaken>> {
        // One statement, so one round trip (with the job's savepoint pipelined ahead of
        // it): the view, and only when the user has no row, no seat lapsed and one is free
        // (`go`), the insert counted in `seat_counts`. Batches of every process are
        // serialized by the write lock, so the count is current. With lapsed rows to purge
        // (rare: reads skip them, only this path purges) the general path follows: as two
        // more DELETE CTEs here the purge cost every new seat ≈ 20 % more server time.
        // Quiet: it counts as a change only when it inserted (below).
        let row = self.conn.query_opt_quiet(
            concat!(
                "WITH lic AS (SELECT total_consumptions FROM licenses WHERE id = $1),
                 cnt AS (SELECT COALESCE((SELECT n FROM seat_counts WHERE license_id = $1), 0) AS n_rows,
                   (SELECT COUNT(*) FROM registrations WHERE license_id = $1
                      AND expires_at <= $9 AND (borrowed_until IS NULL OR borrowed_until <= $9)) AS n_lapsed),
                 mine AS (SELECT ",
                reg_cols!(),
                " FROM registrations WHERE license_id = $1 AND user_name = $2::TEXT),
                 go AS (SELECT 1 FROM lic, cnt WHERE cnt.n_lapsed = 0 AND cnt.n_rows < $10::BIGINT
                   AND NOT EXISTS (SELECT 1 FROM mine)),
                 up AS (INSERT INTO registrations (",
                reg_cols!(),
                ") SELECT $1::BIGINT, $2::TEXT, $3::BIGINT, $4::BIGINT, $5::BIGINT, $6::TEXT, $7::TEXT, $8::TEXT FROM go
                   RETURNING 1),
                 counted AS (INSERT INTO seat_counts (license_id, n) SELECT $1, 1 FROM up
                   ON CONFLICT (license_id) DO UPDATE SET n = seat_counts.n + 1)
                 SELECT lic.total_consumptions, cnt.n_rows, cnt.n_lapsed, mine.*, (SELECT COUNT(*) FROM up)
                 FROM lic CROSS JOIN cnt LEFT JOIN mine ON true"
            ),
            &[
                &sid(seat.license_id),
                &seat.user,
                &seat.registered_at,
                &seat.expires_at,
                &seat.borrowed_until,
                &seat.os_hostname,
                &seat.ip_local,
                &seat.user_info,
                &now,
                &i64::try_from(limit).unwrap_or(i64::MAX),
            ],
        )?;
        let Some(taken) = row.map(|r| SeatTaken {
            view: seat_view_row(&r),
            // The last column: rows inserted.
            granted: r.get::<_, i64>(11) > 0,
            purged: 0,
        }) else {
            return Ok(None);
        };
        if taken.granted {
            self.conn.note_change();
        }
        let live = taken.view.registration.as_ref().is_some_and(|r| r.is_active(now));
        if taken.granted || live || taken.view.lapsed == 0 || taken.view.in_use >= limit {
            return Ok(Some(taken));
        }
        // Room once the lapsed seats (maybe the user's own) are purged.
        let purged = self.purge_expired(Some(seat.license_id), now)?;
        self.put_registration(seat)?;
        Ok(Some(SeatTaken {
            granted: true,
            purged,
            ..taken
        }))
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

    fn delete_feature_registrations(&mut self, of: FeatureKey<'_>, user: Option<&str>) -> StoreResult<usize> {
        Ok(count(self.execute(
            "DELETE FROM feature_registrations WHERE license_id = $1 AND feature = $2
               AND ($3::TEXT IS NULL OR user_name = $3)",
            &[&sid(of.license_id), &of.feature, &user],
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
        let rows = rows.iter().map(|r| Ok(audit_chain::pg_row(r)));
        audit_chain::verify_rows(state, before, rows)
    }
}
