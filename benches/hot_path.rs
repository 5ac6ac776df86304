//! The per-request key check, next to the obvious alternatives, in one run.
//!
//! `cell` is what the server does on every action on a key-bound license: one load of the
//! hardware-ID cell's check word, compared with the license's bound key token (validity is
//! encoded in the word). Baselines hold the same facts in a snapshot struct behind
//! `RwLock<Arc<_>>`, `Mutex<_>` and `arc_swap::ArcSwap`.
//!
//! Groups: `uncontended`; `writer` (one background thread flips plug/unplug as fast as it
//! can); `writer_and_reader` (plus one background thread doing the same check in a loop, so
//! two threads read at once).
//!
//! Run: `cargo bench --bench hot_path`. CI runs it once untimed: `cargo test --benches`.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};
use keyfloat_hal::{
    BackendKind, CellReader, HardwareId, HardwareIdCell, KeyId, KeyInfo, KeyStatus, KeyToken, KeyView, ProofCapability,
    ProofStatus, Serial, Snapshot,
};

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

/// The candidates, each with the same check and the same flip.
#[derive(Clone)]
enum Subject {
    Cell(CellReader, Arc<Mutex<HardwareIdCell>>, KeyToken),
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
        vec![
            ("cell", Subject::Cell(reader, Arc::new(Mutex::new(cell)), token)),
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
            Subject::Cell(reader, _, token) => reader.check().is(*token),
            Subject::RwLock(l) => l.read().map(|g| g.valid_token == 1).unwrap_or(false),
            Subject::Mutex(m) => m.lock().map(|g| g.valid_token == 1).unwrap_or(false),
            Subject::ArcSwap(a) => a.load().valid_token == 1,
        }
    }

    /// One plug or unplug, as the monitor would publish it.
    fn flip(&self, valid: bool, generation: u64, machine: &HardwareId) {
        match self {
            Subject::Cell(_, cell, _) => {
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
    fn start(subject: &Subject, writer: bool, readers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        if writer {
            let s = subject.clone();
            let stop = Arc::clone(&stop);
            threads.push(std::thread::spawn(move || {
                let machine = HardwareId::new("machine");
                let mut g = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    g += 1;
                    s.flip(g % 2 == 0, g, &machine);
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

fn bench_group(c: &mut Criterion, group: &str, writer: bool, readers: usize) {
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
    bench_group(c, "uncontended", false, 0);
    bench_group(c, "writer", true, 0);
    bench_group(c, "writer_and_reader", true, 1);
    bench_group(c, "two_readers", false, 1);
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
