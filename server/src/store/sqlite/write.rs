//! The writes of [`SqliteTx`] (writer thread only).

use std::collections::HashMap;

use rusqlite::params;

use super::read::{freg_cols, lapsed, reg_cols, sid, uid, SqliteTx};
use crate::model::{Account, AuditEvent, FeatureRegistration, License, Registration};
use crate::store::{cache_terms, forget_terms, put_feature_totals, StoreResult, Tx};

impl Tx for SqliteTx<'_> {
    fn next_license_id(&mut self) -> StoreResult<u64> {
        // Ids look like LicenseSpring's (16 digits) and never collide with existing ones.
        let max: Option<i64> = self
            .conn
            .prepare_cached("SELECT MAX(id) FROM licenses WHERE id < 9000000000000000")?
            .query_row([], |r| r.get(0))?;
        Ok(uid(max.unwrap_or(1_000_000_000_000_000).max(1_000_000_000_000_000) + 1))
    }

    fn insert_license(&mut self, l: &License) -> StoreResult<()> {
        let terms = cache_terms(self.terms.as_deref_mut(), l)?;
        let seq: i64 = self
            .conn
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) + 1 FROM licenses")?
            .query_row([], |r| r.get(0))?;
        self.conn
            .prepare_cached(
                "INSERT INTO licenses (id, seq, product, terms, activation_hardware_id, source, added_at, total_consumptions)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                sid(l.id),
                seq,
                l.terms.product,
                terms,
                l.activation_hardware_id,
                l.source.as_str(),
                l.added_at,
                l.total_consumptions
            ])?;
        put_feature_totals(self, l)
    }

    fn delete_license(&mut self, id: u64) -> StoreResult<bool> {
        forget_terms(self.terms.as_deref_mut(), id);
        Ok(self
            .conn
            .prepare_cached("DELETE FROM licenses WHERE id = ?1")?
            .execute([sid(id)])?
            > 0)
    }

    fn set_total_consumptions(&mut self, id: u64, total: i64) -> StoreResult<()> {
        self.conn
            .prepare_cached("UPDATE licenses SET total_consumptions = ?2 WHERE id = ?1")?
            .execute(params![sid(id), total])?;
        Ok(())
    }

    fn set_feature_total(&mut self, id: u64, feature: &str, total: i64) -> StoreResult<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO feature_consumptions (license_id, feature, total) VALUES (?1, ?2, ?3)
                 ON CONFLICT (license_id, feature) DO UPDATE SET total = excluded.total",
            )?
            .execute(params![sid(id), feature, total])?;
        Ok(())
    }

    fn put_registration(&mut self, r: &Registration) -> StoreResult<()> {
        self.conn
            .prepare_cached(concat!(
                // An upsert, not INSERT OR REPLACE: the replace's implicit delete would not
                // fire the seat-count trigger.
                "INSERT INTO registrations (",
                reg_cols!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (license_id, user) DO UPDATE SET registered_at = excluded.registered_at,
                   expires_at = excluded.expires_at, borrowed_until = excluded.borrowed_until,
                   os_hostname = excluded.os_hostname, ip_local = excluded.ip_local,
                   user_info = excluded.user_info"
            ))?
            .execute(params![
                sid(r.license_id),
                r.user,
                r.registered_at,
                r.expires_at,
                r.borrowed_until,
                r.os_hostname,
                r.ip_local,
                r.user_info
            ])?;
        Ok(())
    }

    fn delete_registration(&mut self, license_id: u64, user: &str) -> StoreResult<bool> {
        self.conn
            .prepare_cached("DELETE FROM feature_registrations WHERE license_id = ?1 AND user = ?2")?
            .execute(params![sid(license_id), user])?;
        let n = self
            .conn
            .prepare_cached("DELETE FROM registrations WHERE license_id = ?1 AND user = ?2")?
            .execute(params![sid(license_id), user])?;
        Ok(n > 0)
    }

    fn delete_registrations(&mut self, license_id: Option<u64>) -> StoreResult<usize> {
        let id = license_id.map(sid);
        self.conn
            .prepare_cached("DELETE FROM feature_registrations WHERE ?1 IS NULL OR license_id = ?1")?
            .execute([id])?;
        Ok(self
            .conn
            .prepare_cached("DELETE FROM registrations WHERE ?1 IS NULL OR license_id = ?1")?
            .execute([id])?)
    }

    fn purge_expired(&mut self, license_id: Option<u64>, now: i64) -> StoreResult<usize> {
        // Feature slots of users whose seat lapsed go with the seat. One license: index
        // seeks over its expired rows only. All licenses: the periodic sweep.
        let (slots, seats) = match license_id {
            Some(id) => (
                self.conn
                    .prepare_cached(concat!(
                        "DELETE FROM feature_registrations WHERE license_id = ?1 AND (expires_at <= ?2 OR user IN
                           (SELECT user FROM registrations WHERE license_id = ?1 AND ",
                        lapsed!(),
                        "))"
                    ))?
                    .execute(params![sid(id), now])?,
                self.conn
                    .prepare_cached(concat!(
                        "DELETE FROM registrations WHERE license_id = ?1 AND ",
                        lapsed!()
                    ))?
                    .execute(params![sid(id), now])?,
            ),
            None => (
                self.conn
                    .prepare_cached(
                        "DELETE FROM feature_registrations WHERE expires_at <= ?1 OR EXISTS
                           (SELECT 1 FROM registrations r WHERE r.license_id = feature_registrations.license_id
                              AND r.user = feature_registrations.user AND r.expires_at <= ?1
                              AND (r.borrowed_until IS NULL OR r.borrowed_until <= ?1))",
                    )?
                    .execute(params![now])?,
                self.conn
                    .prepare_cached(
                        "DELETE FROM registrations WHERE expires_at <= ?1
                           AND (borrowed_until IS NULL OR borrowed_until <= ?1)",
                    )?
                    .execute(params![now])?,
            ),
        };
        Ok(slots + seats)
    }

    fn put_feature_registration(&mut self, r: &FeatureRegistration) -> StoreResult<()> {
        self.conn
            .prepare_cached(concat!(
                "INSERT OR REPLACE INTO feature_registrations (",
                freg_cols!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ))?
            .execute(params![
                sid(r.license_id),
                r.feature,
                r.user,
                r.registered_at,
                r.expires_at,
                r.os_hostname,
                r.ip_local,
                r.user_info
            ])?;
        Ok(())
    }

    fn delete_feature_registrations(
        &mut self,
        license_id: u64,
        feature: &str,
        user: Option<&str>,
    ) -> StoreResult<usize> {
        Ok(self
            .conn
            .prepare_cached(
                "DELETE FROM feature_registrations WHERE license_id = ?1 AND feature = ?2 AND (?3 IS NULL OR user = ?3)",
            )?
            .execute(params![sid(license_id), feature, user])?)
    }

    fn put_account(&mut self, a: &Account) -> StoreResult<()> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO accounts (username, password_hash, role) VALUES (?1, ?2, ?3)")?
            .execute(params![a.username, a.password_hash, a.role.as_str()])?;
        Ok(())
    }

    fn delete_account(&mut self, username: &str) -> StoreResult<bool> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM accounts WHERE username = ?1")?
            .execute([username])?;
        Ok(n > 0)
    }

    fn token_generations(&mut self) -> StoreResult<HashMap<String, u64>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT username, generation FROM token_generations")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, uid(r.get::<_, i64>(1)?))))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn bump_token_generation(&mut self, username: &str) -> StoreResult<u64> {
        Ok(uid(self
            .conn
            .prepare_cached(
                "INSERT INTO token_generations (username, generation) VALUES (?1, 1)
                 ON CONFLICT (username) DO UPDATE SET generation = generation + 1 RETURNING generation",
            )?
            .query_row([username], |r| r.get::<_, i64>(0))?))
    }

    fn audit(&mut self, e: &AuditEvent) -> StoreResult<()> {
        crate::store::audit_chain::append(self.conn, e)
    }

    fn verify_audit_chain(&mut self) -> StoreResult<crate::store::audit_chain::ChainReport> {
        crate::store::audit_chain::verify(self.conn)
    }
}
