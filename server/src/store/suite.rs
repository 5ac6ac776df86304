//! One store test suite, run against every engine: `store_suite!` expands each case for
//! an engine given how to open a fresh store (and a second handle on the same data, as a
//! second server process would have). The PostgreSQL arm needs `KEYFLOAT_PG_URL` and
//! fails without it; each of its tests works in its own database.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{
    read_blocking, transact_blocking, FeatureKey, Fence, PgStore, PgStoreOptions, SqliteStore, Store, StoreError,
};
use crate::model::{Account, AuditEvent, FeatureRegistration, License, Registration, Role};

/// A fresh store, and a way to open another store on the same data.
struct Harness {
    store: Arc<dyn Store>,
    another: Box<dyn Fn() -> Arc<dyn Store>>,
    // Dropped last: the temp dir or database the stores live in.
    _place: Box<dyn std::any::Any>,
}

fn sqlite() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    Harness {
        store: Arc::new(SqliteStore::open(&path).unwrap()),
        another: Box::new(move || Arc::new(SqliteStore::open(&path).unwrap())),
        _place: Box::new(dir),
    }
}

/// The cluster of `KEYFLOAT_PG_URL`; a test that needs it fails without it.
pub(crate) fn pg_url() -> String {
    std::env::var("KEYFLOAT_PG_URL").expect("KEYFLOAT_PG_URL is not set (scripts/pg.sh start; scripts/dev.sh test)")
}

fn postgres() -> Harness {
    let db = super::postgres::TempDatabase::create(&pg_url(), "suite").unwrap();
    let url = db.url().to_owned();
    Harness {
        store: Arc::new(PgStore::open(&url, PgStoreOptions::default()).unwrap()),
        another: Box::new(move || Arc::new(PgStore::open(&url, PgStoreOptions::default()).unwrap())),
        _place: Box::new(db),
    }
}

macro_rules! store_suite {
    ($engine:ident, $open:expr $(, #[$attr:meta])*) => {
        mod $engine {
            use super::*;
            store_suite!(@cases $open, [$(#[$attr])*],
                licenses_round_trip, seats_count_lapse_and_purge, a_refused_job_leaves_no_trace,
                a_failing_statement_spoils_only_its_job, a_job_without_savepoint_fails_its_batch_if_it_leaves_a_trace,
                a_job_that_swallows_a_failed_statement_spoils_only_itself, listings_page_in_byte_order,
                feature_slots_and_usage, accounts_and_token_generations, audit_chain_appends_and_verifies, two_processes_never_over_grant,
                take_seat_grants_refuses_and_reuses, take_seat_never_over_grants_across_processes);
        }
    };
    (@cases $open:expr, $attrs:tt, $($case:ident),*) => {
        $( store_suite!(@case $open, $attrs, $case); )*
    };
    (@case $open:expr, [$($attr:tt)*], $case:ident) => {
        #[test]
        $($attr)*
        fn $case() {
            super::$case(&$open());
        }
    };
}

store_suite!(sqlite_engine, sqlite);
store_suite!(postgres_engine, postgres, #[ignore = "needs PostgreSQL (KEYFLOAT_PG_URL)"]);

fn license(id: u64) -> License {
    License {
        id,
        ..crate::model::tests::sample()
    }
}

fn seat(license_id: u64, user: &str, expires_at: i64) -> Registration {
    Registration {
        license_id,
        user: user.into(),
        registered_at: 1,
        expires_at,
        borrowed_until: None,
        os_hostname: Some("host".into()),
        ip_local: None,
        user_info: Some("{}".into()),
    }
}

fn slot(license_id: u64, feature: &str, user: &str, expires_at: i64) -> FeatureRegistration {
    FeatureRegistration {
        license_id,
        feature: feature.into(),
        user: user.into(),
        registered_at: 1,
        expires_at,
        os_hostname: None,
        ip_local: Some("10.0.0.1".into()),
        user_info: None,
    }
}

fn licenses_round_trip(h: &Harness) {
    let s = &*h.store;
    let id = transact_blocking(s, |tx| {
        let id = tx.next_license_id()?;
        let mut l = license(id);
        l.feature_totals.insert("f".into(), 2);
        tx.insert_license(&l)?;
        tx.insert_license(&license(5))?;
        Ok::<_, StoreError>(id)
    })
    .unwrap();
    assert!(id > 1_000_000_000_000_000);
    let ids: Vec<u64> = read_blocking(s, |tx| tx.licenses())
        .unwrap()
        .iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(ids, vec![id, 5], "in the order added");
    let l = read_blocking(s, move |tx| tx.license(id)).unwrap().unwrap();
    assert_eq!((l.terms.product.as_str(), l.total_consumptions), ("acme", 4));
    assert_eq!(l.feature_totals.get("f"), Some(&2));
    transact_blocking(s, move |tx| {
        tx.set_total_consumptions(id, 9)?;
        tx.set_feature_total(id, "f", 3)
    })
    .unwrap();
    let (total, features) = read_blocking(s, move |tx| tx.license_totals(id, true))
        .unwrap()
        .unwrap();
    assert_eq!((total, features.get("f").copied()), (9, Some(3)));
    transact_blocking(s, move |tx| tx.put_registration(&seat(id, "u", 100))).unwrap();
    assert!(transact_blocking(s, move |tx| tx.delete_license(id)).unwrap());
    assert!(read_blocking(s, move |tx| tx.license_totals(id, false))
        .unwrap()
        .is_none());
    assert!(
        read_blocking(s, |tx| tx.registrations(None)).unwrap().is_empty(),
        "cascaded"
    );
}

fn seats_count_lapse_and_purge(h: &Harness) {
    let s = &*h.store;
    transact_blocking(s, |tx| {
        tx.insert_license(&license(1))?;
        tx.put_registration(&seat(1, "live", 1_000))?;
        tx.put_registration(&seat(1, "lapsed", 10))?;
        let mut borrowed = seat(1, "borrowed", 10);
        borrowed.borrowed_until = Some(2_000);
        tx.put_registration(&borrowed)?;
        // A renewal is an upsert.
        tx.put_registration(&seat(1, "live", 1_100))
    })
    .unwrap();
    let count = |now: i64| read_blocking(s, move |tx| tx.count_active_registrations(1, now)).unwrap();
    assert_eq!((count(5), count(100), count(1_500)), (3, 2, 1));
    let view = read_blocking(s, |tx| tx.seat_view(1, Some("live"), 100))
        .unwrap()
        .unwrap();
    assert_eq!((view.in_use, view.lapsed, view.total_consumptions), (2, 1, 4));
    assert_eq!(view.registration.unwrap(), seat(1, "live", 1_100));
    assert!(read_blocking(s, |tx| tx.seat_view(1, None, 100))
        .unwrap()
        .unwrap()
        .registration
        .is_none());
    assert!(read_blocking(s, |tx| tx.seat_view(2, None, 100)).unwrap().is_none());
    assert_eq!(transact_blocking(s, |tx| tx.purge_expired(Some(1), 100)).unwrap(), 1);
    assert_eq!(transact_blocking(s, |tx| tx.purge_expired(None, 1_500)).unwrap(), 1);
    let users: Vec<_> = read_blocking(s, |tx| tx.registrations(Some(1)))
        .unwrap()
        .into_iter()
        .map(|r| r.user)
        .collect();
    assert_eq!(users, vec!["borrowed"]);
    assert!(transact_blocking(s, |tx| tx.delete_registration(1, "borrowed")).unwrap());
    assert!(!transact_blocking(s, |tx| tx.delete_registration(1, "borrowed")).unwrap());
}

fn a_refused_job_leaves_no_trace(h: &Harness) {
    let s = &*h.store;
    let refused = transact_blocking(s, |tx| -> Result<(), StoreError> {
        tx.put_account(&account("x", Role::User))?;
        Err(StoreError::Failed("refused".into()))
    });
    assert!(refused.is_err());
    transact_blocking(s, |tx| tx.put_account(&account("y", Role::User))).unwrap();
    let names: Vec<_> = read_blocking(s, |tx| tx.accounts())
        .unwrap()
        .into_iter()
        .map(|a| a.username)
        .collect();
    assert_eq!(names, vec!["y"]);
}

/// A statement that fails inside a job (here a seat on a license that does not exist)
/// refuses that job only: the next job of the same batch, whose statements run after the
/// failure, commits.
fn a_failing_statement_spoils_only_its_job(h: &Harness) {
    let s = Arc::clone(&h.store);
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    let blocker = {
        let s = Arc::clone(&s);
        std::thread::spawn(move || {
            transact_blocking(&*s, move |_| {
                let _ = started_tx.send(());
                let _ = hold.recv();
                Ok::<_, StoreError>(())
            })
        })
    };
    started.recv().unwrap();
    // Queued behind the blocker: one batch.
    let bad = super::transact(&*s, |tx| tx.put_registration(&seat(999, "u", 100)));
    let good = super::transact(&*s, |tx| tx.put_account(&account("after", Role::User)));
    release.send(()).unwrap();
    blocker.join().unwrap().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert!(rt.block_on(bad).is_err(), "no license 999");
    rt.block_on(good).unwrap();
    assert!(read_blocking(&*s, |tx| tx.account("after")).unwrap().is_some());
    assert!(read_blocking(&*s, |tx| tx.registrations(None)).unwrap().is_empty());
}

/// A job without a savepoint ([`super::transact_no_savepoint`]) that refuses before
/// writing spoils nothing; one that refuses after writing, or whose statement failed
/// (PostgreSQL then aborts the transaction), takes its whole batch down: no job of it is
/// acknowledged, nothing of it is stored. Whatever is acknowledged is stored.
fn a_job_without_savepoint_fails_its_batch_if_it_leaves_a_trace(h: &Harness) {
    use super::{transact, transact_no_savepoint};
    let s = Arc::clone(&h.store);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let has = |name: &'static str| read_blocking(&*s, move |tx| tx.account(name)).unwrap().is_some();
    let put = |name: &'static str| move |tx: &mut dyn super::Tx| tx.put_account(&account(name, Role::User));

    // Refused before writing: the batch goes on.
    let (release, blocker) = super::hold_writer(&*s);
    let first = transact(&*s, put("first"));
    let refused = transact_no_savepoint(&*s, |tx| {
        tx.account("first")?;
        Err::<(), _>(StoreError::Failed("refused before writing".into()))
    });
    let second = transact_no_savepoint(&*s, put("second"));
    release.send(()).unwrap();
    rt.block_on(blocker).unwrap();
    rt.block_on(first).unwrap();
    assert!(rt.block_on(refused).is_err());
    rt.block_on(second).unwrap();
    assert!(has("first") && has("second"));

    // Refused after writing: the whole batch is rolled back and answered with the error.
    let (release, blocker) = super::hold_writer(&*s);
    let before = transact(&*s, put("before"));
    let spoiler = transact_no_savepoint(&*s, |tx| {
        tx.put_account(&account("spoiler", Role::User))?;
        Err::<(), _>(StoreError::Failed("refused after writing".into()))
    });
    let after = transact(&*s, put("after"));
    release.send(()).unwrap();
    rt.block_on(blocker).unwrap();
    assert!(rt.block_on(spoiler).is_err());
    assert!(
        rt.block_on(before).is_err() && rt.block_on(after).is_err(),
        "one batch, rolled back"
    );
    assert!(!has("before") && !has("spoiler") && !has("after"));

    // A failed statement swallowed by the job: on PostgreSQL the transaction is aborted, so
    // nothing may be acknowledged; SQLite undoes the statement alone and goes on.
    let (release, blocker) = super::hold_writer(&*s);
    let third = transact(&*s, put("third"));
    let swallowed = transact_no_savepoint(&*s, |tx| {
        let _ = tx.put_registration(&seat(999, "u", 100));
        Ok::<_, StoreError>(())
    });
    let fourth = transact(&*s, put("fourth"));
    release.send(()).unwrap();
    rt.block_on(blocker).unwrap();
    let answers = [
        rt.block_on(third).is_ok(),
        rt.block_on(swallowed).is_ok(),
        rt.block_on(fourth).is_ok(),
    ];
    assert_eq!(answers[0], has("third"), "acknowledged = stored");
    assert_eq!(answers[2], has("fourth"), "acknowledged = stored");
    assert!(
        answers.iter().all(|a| *a == answers[0]),
        "one batch, one outcome: {answers:?}"
    );
    assert!(read_blocking(&*s, |tx| tx.registrations(None)).unwrap().is_empty());
}

/// A job (with its savepoint) that goes on past a failed statement of its own and
/// succeeds: SQLite undoes the statement alone and the job commits; on PostgreSQL the
/// statement aborted the transaction, so the job is undone alone and answered with an
/// error. Either way its batch-mates commit, and what is acknowledged is stored.
fn a_job_that_swallows_a_failed_statement_spoils_only_itself(h: &Harness) {
    let s = Arc::clone(&h.store);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let has = |name: &'static str| read_blocking(&*s, move |tx| tx.account(name)).unwrap().is_some();
    let put = |name: &'static str| move |tx: &mut dyn super::Tx| tx.put_account(&account(name, Role::User));
    for [before, swallower, after] in [["a1", "a2", "a3"], ["b1", "b2", "b3"], ["c1", "c2", "c3"]] {
        let (release, blocker) = super::hold_writer(&*s);
        let first = super::transact(&*s, put(before));
        let middle = super::transact(&*s, move |tx| {
            tx.put_account(&account(swallower, Role::User))?;
            let _ = tx.put_registration(&seat(999, "u", 100));
            Ok::<_, StoreError>(())
        });
        let last = super::transact(&*s, put(after));
        release.send(()).unwrap();
        rt.block_on(blocker).unwrap();
        rt.block_on(first).unwrap();
        rt.block_on(last).unwrap();
        assert_eq!(rt.block_on(middle).is_ok(), has(swallower), "acknowledged = stored");
        assert!(has(before) && has(after), "its batch-mates commit");
    }
    assert!(read_blocking(&*s, |tx| tx.registrations(None)).unwrap().is_empty());
}

fn listings_page_in_byte_order(h: &Harness) {
    let s = &*h.store;
    let users = ["b", "B", "a", "é", "A1", "a0"];
    transact_blocking(s, move |tx| {
        tx.insert_license(&license(1))?;
        tx.insert_license(&license(2))?;
        for u in users {
            tx.put_registration(&seat(1, u, 100))?;
            tx.put_feature_registration(&slot(1, "f", u, 100))?;
        }
        tx.put_registration(&seat(2, "z", 100))
    })
    .unwrap();
    let mut want: Vec<&str> = users.to_vec();
    want.sort(); // Rust's str order is byte order.
    let mut got = Vec::new();
    let mut after = None;
    loop {
        let cursor = after.clone();
        let page = read_blocking(s, move |tx| {
            tx.registrations_page(super::SeatPage {
                license_id: Some(1),
                after: cursor.as_ref(),
                limit: 4,
            })
        })
        .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(super::RegCursor {
            license_id: last.license_id,
            feature: String::new(),
            user: last.user.clone(),
        });
        got.extend(page.into_iter().map(|r| r.user));
    }
    assert_eq!(got, want);
    let all = read_blocking(s, |tx| tx.registrations(None)).unwrap();
    assert_eq!(all.len(), 7);
    assert_eq!(all.last().unwrap().user, "z");
    let cursor = super::RegCursor {
        license_id: 1,
        feature: "f".into(),
        user: "a".into(),
    };
    let slots = read_blocking(s, move |tx| {
        tx.feature_registrations_page(super::SlotPage {
            license_id: Some(1),
            feature: Some("f"),
            after: Some(&cursor),
            limit: 2,
        })
    })
    .unwrap();
    let slot_users: Vec<_> = slots.iter().map(|r| r.user.as_str()).collect();
    assert_eq!(slot_users, vec!["a0", "b"]);
}

fn feature_slots_and_usage(h: &Harness) {
    let s = &*h.store;
    transact_blocking(s, |tx| {
        tx.insert_license(&license(1))?;
        tx.put_registration(&seat(1, "u1", 1_000))?;
        tx.put_registration(&seat(1, "u2", 10))?; // lapses at 10
        tx.put_feature_registration(&slot(1, "f", "u1", 1_000))?;
        tx.put_feature_registration(&slot(1, "f", "u2", 1_000))?;
        tx.put_feature_registration(&slot(1, "g", "u1", 50))?;
        tx.put_feature_registration(&slot(1, "g", "u1", 500)) // upsert
    })
    .unwrap();
    let usage = read_blocking(s, |tx| tx.feature_usage(1, 100)).unwrap();
    assert_eq!(
        usage.into_iter().collect::<Vec<_>>(),
        vec![("f".to_owned(), 1), ("g".to_owned(), 1)]
    );
    assert_eq!(
        read_blocking(s, |tx| tx.feature_registration(
            FeatureKey {
                license_id: 1,
                feature: "g"
            },
            "u1"
        ))
        .unwrap()
        .unwrap()
        .expires_at,
        500
    );
    assert_eq!(
        read_blocking(s, |tx| tx.feature_registrations(Some(1), Some("f")))
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        transact_blocking(s, |tx| tx.delete_feature_registrations(
            FeatureKey {
                license_id: 1,
                feature: "f"
            },
            Some("u1")
        ))
        .unwrap(),
        1
    );
    assert_eq!(
        transact_blocking(s, |tx| tx.purge_expired(Some(1), 100)).unwrap(),
        2,
        "u2's seat and slot"
    );
    assert_eq!(transact_blocking(s, |tx| tx.delete_registrations(Some(1))).unwrap(), 1);
    assert!(read_blocking(s, |tx| tx.feature_registrations(None, None))
        .unwrap()
        .is_empty());
}

fn account(name: &str, role: Role) -> Account {
    Account {
        username: name.into(),
        password_hash: format!("hash-{name}"),
        role,
    }
}

fn accounts_and_token_generations(h: &Harness) {
    let s = &*h.store;
    transact_blocking(s, |tx| {
        tx.put_account(&account("b", Role::User))?;
        tx.put_account(&account("a", Role::User))?;
        tx.put_account(&account("a", Role::Admin))
    })
    .unwrap();
    assert_eq!(
        read_blocking(s, |tx| tx.account("a")).unwrap().unwrap().role,
        Role::Admin
    );
    assert_eq!(read_blocking(s, |tx| tx.accounts()).unwrap().len(), 2);
    assert_eq!(transact_blocking(s, |tx| tx.bump_token_generation("a")).unwrap(), 1);
    assert_eq!(transact_blocking(s, |tx| tx.bump_token_generation("a")).unwrap(), 2);
    assert!(transact_blocking(s, |tx| tx.delete_account("a")).unwrap());
    let gens = transact_blocking(s, |tx| tx.token_generations()).unwrap();
    assert_eq!(gens.get("a"), Some(&2), "generations outlive the account");
    assert!(read_blocking(s, |tx| tx.account("a")).unwrap().is_none());
}

fn audit_chain_appends_and_verifies(h: &Harness) {
    let s = &*h.store;
    for i in 0..5u64 {
        transact_blocking(s, move |tx| {
            tx.audit(&AuditEvent::new("k", Some("me"), Some(i), format!("event {i}")))
        })
        .unwrap();
    }
    // A refused job's record is not in the chain.
    let _ = transact_blocking(s, |tx| -> Result<(), StoreError> {
        tx.audit(&AuditEvent::new("gone", None, None, "x"))?;
        Err(StoreError::Failed("refused".into()))
    });
    let report = transact_blocking(s, |tx| tx.verify_audit_chain()).unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.records, 5);
    let events = read_blocking(s, |tx| tx.audit_events(None, 3)).unwrap();
    assert_eq!(
        events.iter().map(|e| e.detail.as_str()).collect::<Vec<_>>(),
        vec!["event 4", "event 3", "event 2"]
    );
    let older = read_blocking(s, move |tx| tx.audit_events(Some(events[2].id), 10)).unwrap();
    assert_eq!(older.len(), 2);
}

/// Seats granted by a count then a register (as the service did before `take_seat`) by two
/// stores on the same data — two server processes — from several threads each: never
/// more than the limit, and exactly the limit once demand exceeds it.
fn two_processes_never_over_grant(h: &Harness) {
    never_over_grant(h, |tx, user| {
        if tx.count_active_registrations(1, 0)? >= GRANT_LIMIT {
            return Ok(false);
        }
        tx.put_registration(&seat(1, user, 1_000))?;
        Ok(true)
    });
}

/// The same with [`super::Tx::take_seat`], the service's new-seat call.
fn take_seat_never_over_grants_across_processes(h: &Harness) {
    never_over_grant(h, |tx, user| {
        let taken = tx.take_seat(&seat(1, user, 1_000), GRANT_LIMIT, 0)?.unwrap();
        Ok(taken.granted)
    });
}

const GRANT_LIMIT: usize = 5;

type Grant = fn(&mut dyn super::Tx, &str) -> Result<bool, StoreError>;

fn never_over_grant(h: &Harness, grant: Grant) {
    transact_blocking(&*h.store, |tx| tx.insert_license(&license(1))).unwrap();
    let stores = [Arc::clone(&h.store), (h.another)()];
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let s = Arc::clone(&stores[t % 2]);
            std::thread::spawn(move || {
                let mut granted = Vec::new();
                for i in 0..10 {
                    let user = format!("t{t}-u{i}");
                    let u = user.clone();
                    if transact_blocking(&*s, move |tx| grant(tx, &u)).unwrap() {
                        granted.push(user);
                    }
                }
                granted
            })
        })
        .collect();
    let granted: BTreeSet<String> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert_eq!(granted.len(), GRANT_LIMIT, "{granted:?}");
    let held: BTreeSet<String> = read_blocking(&*stores[1], |tx| tx.registrations(Some(1)))
        .unwrap()
        .into_iter()
        .map(|r| r.user)
        .collect();
    assert_eq!(held, granted, "every acknowledged seat is held, nothing else");
}

/// `take_seat`: grants while seats are free, refuses (writing nothing) when full, finds
/// the user's live seat without writing, and to make room purges lapsed seats with their
/// slots, writing over the user's own lapsed row.
fn take_seat_grants_refuses_and_reuses(h: &Harness) {
    let s = &*h.store;
    let take = |user: &'static str, expires_at: i64, limit: usize, now: i64| {
        transact_blocking(s, move |tx| tx.take_seat(&seat(1, user, expires_at), limit, now)).unwrap()
    };
    assert_eq!(take("a", 100, 2, 0), None, "no such license");
    transact_blocking(s, |tx| tx.insert_license(&license(1))).unwrap();
    // Granted: the view is as before the seat.
    let t = take("a", 100, 2, 0).unwrap();
    assert!(t.granted);
    assert_eq!(
        (t.view.in_use, t.view.lapsed, t.view.total_consumptions, t.purged),
        (0, 0, 4, 0)
    );
    assert_eq!(t.view.registration, None);
    let t = take("b", 50, 2, 0).unwrap();
    assert_eq!(
        (t.granted, t.view.in_use, t.view.total_consumptions),
        (true, 1, 4),
        "the count before this seat"
    );
    // Full: refused, nothing written.
    let t = take("c", 100, 2, 0).unwrap();
    assert!(!t.granted);
    assert_eq!((t.view.in_use, t.view.registration.clone()), (2, None));
    // The user's live seat is found, not written over.
    let t = take("a", 999, 2, 10).unwrap();
    assert!(!t.granted);
    assert_eq!(t.view.registration, Some(seat(1, "a", 100)));
    let held = |now: i64| read_blocking(s, move |tx| tx.count_active_registrations(1, now)).unwrap();
    assert_eq!(held(0), 2);
    // At 60 "b" lapsed: "c" gets its seat, "b" and its slot are purged.
    transact_blocking(s, |tx| {
        tx.put_feature_registration(&slot(1, "f", "b", 500))?;
        tx.put_feature_registration(&slot(1, "f", "a", 500))
    })
    .unwrap();
    let t = take("c", 200, 2, 60).unwrap();
    assert!(t.granted);
    assert_eq!((t.view.in_use, t.view.lapsed, t.purged), (1, 1, 2));
    let rows = |()| {
        read_blocking(s, |tx| {
            let seats: Vec<_> = tx.registrations(Some(1))?.into_iter().map(|r| r.user).collect();
            let slots: Vec<_> = tx
                .feature_registrations(Some(1), None)?
                .into_iter()
                .map(|r| r.user)
                .collect();
            Ok::<_, StoreError>((seats, slots))
        })
        .unwrap()
    };
    assert_eq!(rows(()), (vec!["a".into(), "c".into()], vec!["a".to_owned()]));
    // At 150 "a" lapsed: its own row is taken again (and its slot purged), counted once.
    let t = take("a", 300, 2, 150).unwrap();
    assert!(t.granted);
    assert_eq!(
        t.view.registration,
        Some(seat(1, "a", 100)),
        "the lapsed row, as it was"
    );
    // (an engine may count the user's own lapsed row as purged, or not)
    assert_eq!((t.view.in_use, t.view.lapsed, t.purged > 0), (1, 1, true));
    assert_eq!(rows(()), (vec!["a".into(), "c".into()], vec![]));
    assert_eq!((held(150), held(250), held(400)), (2, 1, 0));
    let a = read_blocking(s, |tx| tx.registration(1, "a")).unwrap().unwrap();
    assert_eq!(a, seat(1, "a", 300));
}

/// A fenced store commits only while its (node, epoch) holds an unexpired lease; after a
/// takeover (a newer epoch) or with no epoch, its batches roll back with `NotLeader`.
#[test]
#[ignore = "needs PostgreSQL (KEYFLOAT_PG_URL)"]
fn a_fenced_store_with_a_stale_epoch_commits_nothing() {
    let db = super::postgres::TempDatabase::create(&pg_url(), "fence").unwrap();
    let fence = Fence::new("node-a");
    let s = PgStore::open(
        db.url(),
        PgStoreOptions {
            fence: Some(fence.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let mut admin = super::postgres::PgConn::connect(db.url()).unwrap();
    let put = |name: &'static str| transact_blocking(&s, move |tx| tx.put_account(&account(name, Role::User)));
    assert_eq!(put("no-epoch"), Err(StoreError::NotLeader));
    admin
        .exec(
            "UPDATE kf_lease SET holder = 'node-a', epoch = 3, expires_at = now() + interval '1 minute'
             WHERE name = 'leader'",
        )
        .unwrap();
    fence.set_epoch(3);
    put("leader-write").unwrap();
    // Another node takes over: epoch 4.
    admin
        .exec(
            "UPDATE kf_lease SET holder = 'node-b', epoch = 4, expires_at = now() + interval '1 minute'
             WHERE name = 'leader'",
        )
        .unwrap();
    assert_eq!(put("stale-write"), Err(StoreError::NotLeader));
    // Its own lease, but expired.
    admin
        .exec("UPDATE kf_lease SET holder = 'node-a', epoch = 3, expires_at = now() WHERE name = 'leader'")
        .unwrap();
    assert_eq!(put("expired-write"), Err(StoreError::NotLeader));
    let names: Vec<String> = admin
        .query("SELECT username FROM accounts ORDER BY username", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, vec!["leader-write"]);
    let batches: Vec<(i64, String)> = admin
        .query("SELECT epoch, node_id FROM kf_batches", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        batches,
        vec![(3, "node-a".to_owned())],
        "one row per committed fenced batch"
    );
}
