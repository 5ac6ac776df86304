//! The per-request key check, next to the obvious alternatives, in one run.
//!
//! `cell` is what the server does on every action on a key-bound license: one load of the
//! hardware-ID cell's check word, compared with the license's bound key token (validity is
//! encoded in the word). Baselines hold the same facts in a snapshot struct behind
//! `RwLock<Arc<_>>`, `Mutex<_>` and `arc_swap::ArcSwap`.
//!
//! `floor_atomic_u64` is the floor on this machine: a bare shared `AtomicU64` loaded and
//! compared (its writer only stores the word, so it flips far more often than the cell's,
//! which publishes a whole snapshot each time).
//!
//! Two more subjects run the server's real code over the same cell: `server_check_key` is
//! `AppState::check_key` for the license's catalog entry (the key part of the gate), and
//! `server_gate` is `AppState::gate` — catalog lookup by product and `license_id`, then the
//! key check — as every client handler calls it. While a writer flips the key, about half
//! of their calls take the refusal path (an `ApiError` with a formatted message), exactly
//! as requests arriving while the key is out would.
//!
//! Groups: `uncontended`; `writer` (one background thread flips plug/unplug as fast as it
//! can); `writer_and_reader` (plus one background thread doing the same check in a loop, so
//! two threads read at once); `two_readers` (one background reader, no writer: the
//! "≥ 10× faster than `RwLock` with two reader threads" comparison); `writer_1khz` (one
//! writer flipping every millisecond — still far more often than any real key changes).
//!
//! Run: `cargo bench --bench hot_path`. CI runs it once untimed: `cargo test --benches`.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};
use keyfloat_hal::{
    BackendKind, CellReader, HardwareId, HardwareIdCell, KeyId, KeyInfo, KeyStatus, KeyToken, KeyView, ProofCapability,
    ProofStatus, Serial, Snapshot,
};
use keyfloat_server::auth::TokenKeys;
use keyfloat_server::model::{Auth, License, LicenseSource, LicenseTerms};
use keyfloat_server::state::Entry;
use keyfloat_server::store::transact_blocking;
use keyfloat_server::{AppState, KeyPolicy, SqliteStore, StateParts, Store};

/// The key-bound license the server subjects gate on.
const LICENSE_ID: u64 = 1_000_000_000_000_001;
const PRODUCT: &str = "bench";
const ACTION: &str = "registering user";

/// What a baseline keeps: the same facts the cell's word encodes, plus the ID string.
#[derive(Debug, Clone)]
#[allow(dead_code)] // the payload a real snapshot carries; only `valid_token` is checked
struct Snap {
    valid_token: u32,
    generation: u64,
    hardware_id: String,
}

fn snap(valid: bool, generation: u64) -> Snap {
    Snap {
        valid_token: if valid { 1 } else { 0 },
        generation,
        hardware_id: "12345678".into(),
    }
}

fn key_snapshot(machine: &HardwareId) -> Snapshot {
    let view = KeyView {
        info: KeyInfo {
            id: KeyId::new(BackendKind::Sim, "bench"),
            backend: BackendKind::Sim,
            path: "bench".into(),
            serial: Some(Serial::new("12345678")),
            model: "bench".into(),
            firmware: None,
            capability: ProofCapability::Signature,
        },
        serial: Some(Serial::new("12345678")),
        firmware: None,
        status: KeyStatus::Valid {
            proof: ProofStatus::Verified,
        },
    };
    Snapshot {
        in_force: Some(view.clone()),
        keys: vec![view],
        ..Snapshot::no_key(machine.clone())
    }
}

fn bound_license() -> License {
    License {
        id: LICENSE_ID,
        terms: LicenseTerms {
            product: PRODUCT.into(),
            product_name: None,
            auth: Auth::Key {
                license_key: "BENCH-KEY".into(),
            },
            license_type: "perpetual".into(),
            floating_users: 10,
            floating_timeout_minutes: 30,
            max_borrow_time_hours: 0,
            consumption: None,
            features: Vec::new(),
            valid_from: None,
            valid_until: None,
            hardware_key_required: true,
            allowed_serials: Vec::new(),
        }
        .into(),
        activation_hardware_id: "12345678".into(),
        source: LicenseSource::Api,
        added_at: 0,
        total_consumptions: 0,
        feature_totals: Default::default(),
    }
}

/// The server's state over `reader`, with one key-bound license in a throw-away store
/// (the store is only read once, to build the catalog; the gate never touches it).
fn server_state(reader: CellReader) -> (AppState, Arc<Entry>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(SqliteStore::open(dir.path()).expect("store"));
    let license = bound_license();
    transact_blocking(store.as_ref(), move |tx| tx.insert_license(&license)).expect("insert license");
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let state = rt
        .block_on(AppState::new(StateParts {
            store: store as Arc<dyn Store>,
            keys: reader,
            tokens: TokenKeys::from_secret(b"bench"),
            user_authentication: false,
            key_policy: KeyPolicy::Refuse,
            sim: None,
            backend: "sim".into(),
            vendor_key: None,
        }))
        .expect("app state");
    let entry = state.catalog().get(LICENSE_ID).cloned().expect("catalog entry");
    assert!(entry.key.is_some(), "the bench license must be key-bound");
    (state, entry, dir)
}

/// The candidates, each with the same check and the same flip.
#[derive(Clone)]
enum Subject {
    /// The floor: a bare shared `AtomicU64` (token in the low half), loaded and compared.
    Floor(Arc<AtomicU64>),
    Cell(CellReader, Arc<Mutex<HardwareIdCell>>, KeyToken),
    // The last field keeps the store's directory alive for as long as the state lives.
    ServerCheckKey(
        AppState,
        Arc<Entry>,
        Arc<Mutex<HardwareIdCell>>,
        #[allow(dead_code)] Arc<tempfile::TempDir>,
    ),
    ServerGate(
        AppState,
        Arc<Mutex<HardwareIdCell>>,
        #[allow(dead_code)] Arc<tempfile::TempDir>,
    ),
    RwLock(Arc<RwLock<Arc<Snap>>>),
    Mutex(Arc<Mutex<Snap>>),
    ArcSwap(Arc<ArcSwap<Snap>>),
}

impl Subject {
    fn all() -> Vec<(&'static str, Subject)> {
        let machine = HardwareId::new("machine");
        let mut cell = HardwareIdCell::new(machine.clone());
        let reader = cell.reader();
        let token = reader.token(&Serial::new("12345678"));
        cell.publish(key_snapshot(&machine));
        let server = |name: &'static str| {
            let mut cell = HardwareIdCell::new(machine.clone());
            cell.publish(key_snapshot(&machine));
            let (state, entry, dir) = server_state(cell.reader());
            let (cell, dir) = (Arc::new(Mutex::new(cell)), Arc::new(dir));
            assert!(state.gate(PRODUCT, Some(LICENSE_ID), ACTION).is_ok(), "key in force");
            match name {
                "server_check_key" => (name, Subject::ServerCheckKey(state, entry, cell, dir)),
                _ => (name, Subject::ServerGate(state, cell, dir)),
            }
        };
        vec![
            ("floor_atomic_u64", Subject::Floor(Arc::new(AtomicU64::new(1)))),
            ("cell", Subject::Cell(reader, Arc::new(Mutex::new(cell)), token)),
            server("server_check_key"),
            server("server_gate"),
            (
                "rwlock_arc",
                Subject::RwLock(Arc::new(RwLock::new(Arc::new(snap(true, 0))))),
            ),
            ("mutex", Subject::Mutex(Arc::new(Mutex::new(snap(true, 0))))),
            (
                "arc_swap_load",
                Subject::ArcSwap(Arc::new(ArcSwap::from_pointee(snap(true, 0)))),
            ),
        ]
    }

    /// The per-request check: is the license's bound key the valid key in force?
    #[inline]
    fn check(&self) -> bool {
        match self {
            Subject::Floor(word) => word.load(Ordering::Acquire) as u32 == 1,
            Subject::Cell(reader, _, token) => reader.check().is(*token),
            Subject::ServerCheckKey(state, entry, _, _) => state.check_key(entry, ACTION).is_ok(),
            Subject::ServerGate(state, _, _) => state.gate(PRODUCT, Some(LICENSE_ID), ACTION).is_ok(),
            Subject::RwLock(l) => l.read().map(|g| g.valid_token == 1).unwrap_or(false),
            Subject::Mutex(m) => m.lock().map(|g| g.valid_token == 1).unwrap_or(false),
            Subject::ArcSwap(a) => a.load().valid_token == 1,
        }
    }

    /// One plug or unplug, as the monitor would publish it.
    fn flip(&self, valid: bool, generation: u64, machine: &HardwareId) {
        match self {
            Subject::Floor(word) => word.store(generation << 32 | u64::from(valid), Ordering::Release),
            Subject::Cell(_, cell, _) | Subject::ServerCheckKey(_, _, cell, _) | Subject::ServerGate(_, cell, _) => {
                let s = if valid {
                    key_snapshot(machine)
                } else {
                    Snapshot::no_key(machine.clone())
                };
                cell.lock().expect("cell writer").publish(s);
            }
            Subject::RwLock(l) => *l.write().expect("rwlock") = Arc::new(snap(valid, generation)),
            Subject::Mutex(m) => *m.lock().expect("mutex") = snap(valid, generation),
            Subject::ArcSwap(a) => a.store(Arc::new(snap(valid, generation))),
        }
    }
}

struct Background {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Background {
    /// `writer`: `None` = no writer; `Some(pause)` = a thread flipping plug/unplug with
    /// `pause` between flips (`Duration::ZERO` = as fast as it can).
    fn start(subject: &Subject, writer: Option<Duration>, readers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        if let Some(pause) = writer {
            let s = subject.clone();
            let stop = Arc::clone(&stop);
            threads.push(std::thread::spawn(move || {
                let machine = HardwareId::new("machine");
                let mut g = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    g += 1;
                    s.flip(g % 2 == 0, g, &machine);
                    if !pause.is_zero() {
                        std::thread::sleep(pause);
                    }
                }
            }));
        }
        for _ in 0..readers {
            let s = subject.clone();
            let stop = Arc::clone(&stop);
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    black_box(s.check());
                }
            }));
        }
        Self { stop, threads }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn bench_group(c: &mut Criterion, group: &str, writer: Option<Duration>, readers: usize) {
    let mut g = c.benchmark_group(format!("key_check/{group}"));
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for (name, subject) in Subject::all() {
        let _bg = Background::start(&subject, writer, readers);
        g.bench_function(name, |b| b.iter(|| black_box(subject.check())));
    }
    g.finish();
}

fn hot_path(c: &mut Criterion) {
    let flat_out = Some(Duration::ZERO);
    bench_group(c, "uncontended", None, 0);
    bench_group(c, "writer", flat_out, 0);
    bench_group(c, "writer_and_reader", flat_out, 1);
    bench_group(c, "two_readers", None, 1);
    // A writer at a plausible worst case for a real monitor: a flip every millisecond.
    bench_group(c, "writer_1khz", Some(Duration::from_millis(1)), 0);
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
