//! The key gate is linearizable: a key-bound write commits only while its key is the valid
//! key in force at commit time. A store wrapper ("tap") sees every job: it can pull the key
//! between the handler's gate and the commit, and it timestamps every commit.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::{build_over, q, sim_bus, Harness, KEY};
use keyfloat_hal::trust::VendorSigningKey;
use keyfloat_hal::CellReader;
use keyfloat_server::store::view::Effects;
use keyfloat_server::store::{Job, ReadJob, StoreError, StoreResult, Tx};
use keyfloat_server::{KeyPolicy, SqliteStore, Store};
use serde_json::{json, Value};

type Hook = Box<dyn FnOnce() + Send>;

/// A store that forwards to SQLite, runs a one-shot hook when a job is queued (after the
/// handler's gate), and records, for each job that kept its changes, the span its work ran
/// in: the commit-time key check happened somewhere inside that span.
#[derive(Default)]
struct Taps {
    hook: Mutex<Option<Hook>>,
    commits: Mutex<Vec<Span>>,
}

/// (before the job's work, after it): the instants that bracket its commit-time key check.
type Span = (Instant, Instant);

struct Tap {
    inner: Arc<SqliteStore>,
    taps: Arc<Taps>,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tap")
    }
}

struct Timed {
    inner: Box<dyn Job>,
    taps: Arc<Taps>,
    kept: Option<Span>,
}

impl Job for Timed {
    fn run(&mut self, tx: &mut dyn Tx) -> bool {
        let started = Instant::now();
        let keep = self.inner.run(tx);
        if keep {
            self.kept = Some((started, Instant::now()));
        }
        keep
    }

    fn needs_savepoint(&self) -> bool {
        self.inner.needs_savepoint()
    }

    // A wrapper passes its job's effects on, so the read model gets them with the batch.
    fn take_effects(&mut self) -> Option<Effects> {
        self.inner.take_effects()
    }

    fn batch_ended(&mut self) {
        self.inner.batch_ended();
    }

    fn undone(&mut self, e: StoreError) {
        self.kept = None;
        self.inner.undone(e);
    }

    fn finish(self: Box<Self>, committed: StoreResult<()>) {
        if let (Some(t), Ok(())) = (self.kept, &committed) {
            self.taps.commits.lock().unwrap().push(t);
        }
        self.inner.finish(committed);
    }
}

impl Store for Tap {
    fn submit(&self, job: Box<dyn Job>) {
        let hook = self.taps.hook.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
        self.inner.submit(Box::new(Timed {
            inner: job,
            taps: Arc::clone(&self.taps),
            kept: None,
        }));
    }

    fn read(&self, job: Box<dyn ReadJob>) {
        self.inner.read(job)
    }

    fn flush(&self) -> StoreResult<()> {
        self.inner.flush()
    }
}

/// The harness over a tapped store, [`KEY`] plugged and valid; `monitor` = the cell is
/// driven by the monitor thread, else inline (a pull is in the cell when `unplug` returns).
async fn tapped_harness(monitor: bool) -> (Harness, Arc<Taps>) {
    let dir = tempfile::tempdir().unwrap();
    let vendor = VendorSigningKey::generate();
    let bus = sim_bus(&vendor);
    bus.plug(KEY).unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let taps = Arc::new(Taps::default());
    let tap = Arc::new(Tap {
        inner: Arc::clone(&store),
        taps: Arc::clone(&taps),
    });
    let mut h = build_over(dir, vendor, bus, store, tap, false, KeyPolicy::Refuse).await;
    if monitor {
        h.start_monitor();
    } else {
        h.drive_inline();
    }
    h.wait_key(true).await;
    (h, taps)
}

fn hw_query() -> String {
    let features = json!([{"code":"f","kind":"consumption","max_consumption":1000000}]);
    format!(
        "product=hwbased&licenseKey=K&isHWKeyReq=true&floatingUsers=2&maxConsumptions=100000000&features={}",
        q(&features)
    )
}

async fn total_consumptions(h: &Harness, id: u64) -> i64 {
    let (s, v) = h.get(&format!("/api/v4/license?license_id={id}")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v[0]["total_consumptions"].as_i64().unwrap()
}

fn spin_until(reader: &CellReader, valid: bool) -> Instant {
    keyfloat_testkit::spin_until(
        Duration::from_secs(5),
        format_args!("the key to become valid={valid}"),
        || reader.check().valid_key().is_some() == valid,
    )
}

/// The key is pulled after the handler's gate let the request through and before its job
/// reaches the store: 400 `hardware_key_not_accessible`, nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_pulled_between_gate_and_commit_refuses_the_write_and_stores_nothing() {
    let (h, taps) = tapped_harness(false).await;
    let id = h.add_product(&hw_query()).await;
    let writes: [(&str, Value); 3] = [
        ("/api/v4/add_consumption", json!({"product":"hwbased","consumptions":5})),
        ("/api/v4/register", json!({"product":"hwbased","user":"u"})),
        (
            "/api/v4/add_feature_consumption",
            json!({"product":"hwbased","feature":"f","consumptions":3}),
        ),
    ];
    for (uri, body) in writes {
        let (bus, keys) = (h.bus.clone(), h.keys.clone().unwrap());
        *taps.hook.lock().unwrap() = Some(Box::new(move || keys.unplug(&bus, KEY)));
        let (s, v) = h.post(uri, body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {v}");
        assert_eq!(v["code"], "hardware_key_not_accessible", "{uri}: {v}");
        h.plug().await;
    }
    assert_eq!(total_consumptions(&h, id).await, 0);
    let (s, v) = h.get(&format!("/api/v4/license?license_id={id}")).await;
    assert_eq!(s, StatusCode::OK);
    let license = v[0].to_string();
    assert!(!license.contains("\"u\""), "{license}");
    let (s, v) = h.get(&format!("/api/v4/registrations?license_id={id}")).await;
    assert!(s != StatusCode::OK || !v.to_string().contains("\"u\""), "{v}");
    // And the same write with the key left alone goes through.
    let (s, v) = h
        .post("/api/v4/add_consumption", json!({"product":"hwbased","consumptions":5}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(total_consumptions(&h, id).await, 5);
}

/// Flap storm: the key is plugged and pulled every few ms while clients add consumptions.
/// Every commit of a key-bound write lies inside an interval during which the key was
/// valid; every 200 is a commit, and the stored total is exactly the acknowledged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_flap_storm_every_acknowledged_write_committed_while_its_key_was_in_force() {
    let (h, taps) = tapped_harness(true).await;
    let id = h.add_product(&hw_query()).await;
    taps.commits.lock().unwrap().clear();
    let stop = Arc::new(AtomicBool::new(false));
    // (valid from, valid until): from when the cell was seen valid to when the key was pulled.
    // (invalid from, invalid until): from when the cell was seen invalid to the next plug.
    let flapper = {
        let (bus, reader, stop) = (h.bus.clone(), h.state.keys().clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut inside = Vec::new();
            let mut outside = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let seen_valid = spin_until(&reader, true);
                std::thread::sleep(Duration::from_micros(500 + (i * 7919) % 2500));
                let pulled = Instant::now();
                bus.unplug(KEY).unwrap();
                inside.push((seen_valid, pulled));
                let seen_invalid = spin_until(&reader, false);
                std::thread::sleep(Duration::from_micros(300 + (i * 104_729) % 1500));
                let plugged = Instant::now();
                outside.push((seen_invalid, plugged));
                bus.plug(KEY).unwrap();
                i += 1;
            }
            (inside, outside)
        })
    };
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let app = h.app.clone();
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let (mut ok, mut refused) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let req = axum::http::Request::post("/api/v4/add_consumption")
                        .header("content-type", "application/json")
                        .body(axum::body::Body::from(r#"{"product":"hwbased","consumptions":1}"#))
                        .unwrap();
                    let res = tower::ServiceExt::oneshot(app.clone(), req).await.unwrap();
                    match res.status() {
                        StatusCode::OK => ok += 1,
                        StatusCode::BAD_REQUEST => refused += 1,
                        s => panic!("unexpected status {s}"),
                    }
                }
                (ok, refused)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut refused) = (0, 0);
    for c in clients {
        let (o, r) = c.await.unwrap();
        ok += o;
        refused += r;
    }
    let (inside, outside) = tokio::task::spawn_blocking(move || flapper.join().unwrap())
        .await
        .unwrap();
    let commits = taps.commits.lock().unwrap().clone();
    // Classify every commit by the span its key check ran in: surely inside a valid
    // interval, surely outside (the whole span lies where the cell was seen without a key
    // and the key was not plugged yet), or overlapping the monitor's own reaction time
    // around a plug or pull (neither). A span, not one instant: a thread preempted between
    // the check and its timestamp must not look like a commit after the pull.
    let within = |(from, to): &Span, (a, b): &(Instant, Instant)| a <= from && to <= b;
    let surely_inside = |s: &Span| inside.iter().any(|i| within(s, i));
    let surely_outside: Vec<&Span> = commits
        .iter()
        .filter(|s| outside.iter().any(|o| within(s, o)))
        .collect();
    let n_inside = commits.iter().filter(|t| surely_inside(t)).count();
    eprintln!(
        "flap storm: {} cycles, {ok} acknowledged, {refused} refused, {} commits checked: {n_inside} surely inside a valid interval, {} outside, {} in the monitor's reaction window",
        inside.len(),
        commits.len(),
        surely_outside.len(),
        commits.len() - n_inside - surely_outside.len()
    );
    assert!(surely_outside.is_empty(), "{} commits outside", surely_outside.len());
    assert_eq!(commits.len() as u64, ok, "every 200 is a commit and every commit a 200");
    assert!(ok > 0 && refused > 0 && inside.len() > 10);
    h.plug().await;
    assert_eq!(total_consumptions(&h, id).await, i64::try_from(ok).unwrap());
}
