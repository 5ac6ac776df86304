//! Hot-plug latency of the simulated backend through the real monitor thread: from the
//! moment `SimBus::plug` / `SimBus::unplug` is called (on a trigger thread) to the change
//! being visible in the hardware-ID cell (`CellReader::check()`, spun on by the main
//! thread), with a provisioned sim key and the real `VendorValidator`. The chain measured
//! is: bus → the monitor's source (`next_event`, wakes on the channel; with several
//! providers a watcher thread per provider forwards to the monitor thread, one more hop) →
//! `Driver::handle` (for a plug: publish "validating", open + prove + verify, publish
//! "valid") → cell word.
//!
//! Reported per cycle:
//! - `unplug → key gone`: the check word no longer names the key;
//! - `plug → attached seen`: the cell's generation moved (the "validating" picture);
//! - `plug → valid in force`: the check word names the key again (includes validation);
//! - `validation alone`: `VendorValidator::validate` on the same key, no threads — the
//!   part of `plug → valid` that is cryptography, not hand-off;
//! - `two-hop floor`: the same thread topology with nothing in it (channel → thread →
//!   channel → thread → atomic store) — what two wake-ups cost on this machine, the floor
//!   under `unplug → key gone` and `plug → attached seen`;
//! - `one-hop floor`: the same with one thread — what a monitor thread that waited on the
//!   source itself (no forwarding watcher thread) would pay.
//!
//! `cargo bench --bench hotplug_sim` runs 200 cycles; `cargo test --benches` runs 3 as a
//! smoke test. No network, no devices.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use keyfloat_hal::backend::sim::provision_sim_key;
use keyfloat_hal::backend::sim::{SimBus, SimKeySpec};
use keyfloat_hal::trust::{VendorSigningKey, VendorValidator};
use keyfloat_hal::{
    spawn_monitor, BackendKind, CellReader, HardwareId, HardwareIdCell, KeyId, KeyProvider, KeyValidator,
    MonitorConfig, Serial, Validation,
};
use keyfloat_testkit::stats::Samples;

const KEY: &str = "bench-key";
const SERIAL: u32 = 12345678;
/// A change not visible after this long is a failure, not a slow sample.
const DEADLINE: Duration = Duration::from_secs(5);

/// Spins until `done` holds and returns when it saw it; panics at the deadline.
fn spin_until(what: &str, mut done: impl FnMut() -> bool) -> Instant {
    let start = Instant::now();
    loop {
        if done() {
            return Instant::now();
        }
        let waited = start.elapsed();
        assert!(waited < DEADLINE, "{what}: not visible within {DEADLINE:?}");
        // Pure spin; yield only if something seems to be stuck behind this thread.
        if waited > Duration::from_millis(2) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

type Action = Box<dyn FnOnce() + Send>;

/// Runs each action on its own thread and reports when it started. The change is caused
/// there, not on the observing thread: an observer that caused it itself would be the
/// CPU the woken monitor thread is queued on (the scheduler places a wakee near its
/// waker), and on a 2-vCPU machine the spinning observer then delays the very thread it
/// waits for. Here the trigger thread blocks right after the action, like a bus or pcscd
/// would, and the observer spins on the other CPU like a request handler.
struct Trigger {
    actions: mpsc::Sender<Action>,
    started: mpsc::Receiver<Instant>,
    thread: std::thread::JoinHandle<()>,
}

impl Trigger {
    fn new() -> Self {
        let (actions, rx) = mpsc::channel::<Action>();
        let (tx, started) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            while let Ok(action) = rx.recv() {
                let t = Instant::now();
                action();
                if tx.send(t).is_err() {
                    return;
                }
            }
        });
        Self {
            actions,
            started,
            thread,
        }
    }

    /// Starts `action` on the trigger thread.
    fn fire(&self, action: impl FnOnce() + Send + 'static) {
        self.actions.send(Box::new(action)).expect("trigger thread");
    }

    /// When the last fired action started.
    fn started(&self) -> Instant {
        self.started.recv().expect("trigger thread")
    }

    fn stop(self) {
        drop(self.actions);
        let _ = self.thread.join();
    }
}

/// `hops` threads in a chain over `mpsc` (like watcher → monitor), the last one storing the
/// value the main thread spins on: what the thread hand-off alone costs on this machine.
fn hop_floor(cycles: usize, hops: usize) -> Samples {
    let word = Arc::new(AtomicU64::new(0));
    let (first, mut rx) = mpsc::channel::<u64>();
    let mut threads = Vec::new();
    for hop in 0..hops {
        let last = hop + 1 == hops;
        let (tx, next_rx) = mpsc::channel::<u64>();
        let w = Arc::clone(&word);
        let this_rx = std::mem::replace(&mut rx, next_rx);
        // Idle timeouts like the watcher's and the monitor's; they are never on the path.
        threads.push(std::thread::spawn(move || loop {
            match this_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(v) if last => w.store(v, Ordering::Release),
                Ok(v) => {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }));
    }
    let trigger = Trigger::new();
    let mut stats = Samples::us();
    for i in 1..=cycles as u64 {
        std::thread::sleep(Duration::from_millis(2));
        let first = first.clone();
        trigger.fire(move || first.send(i).expect("first hop"));
        let seen = spin_until("hop floor", || word.load(Ordering::Acquire) == i);
        stats.push(seen.saturating_duration_since(trigger.started()));
    }
    trigger.stop();
    drop(first);
    for t in threads {
        let _ = t.join();
    }
    stats
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let cycles = if full { 200 } else { 3 };

    let vendor = VendorSigningKey::generate();
    let bus = SimBus::new();
    bus.insert(provision_sim_key(SimKeySpec::generate(KEY, SERIAL), &vendor));
    let validator = Arc::new(VendorValidator::new(vendor.public_key()));

    // Validation alone, on this thread: the floor under `plug → valid in force`.
    let mut validation = Samples::us();
    {
        bus.plug(KEY).expect("plug");
        let provider = bus.provider();
        let id = KeyId::new(BackendKind::Sim, KEY);
        for _ in 0..cycles {
            let t = Instant::now();
            let mut key = provider.open(&id).expect("open");
            let v = validator.validate(key.as_mut());
            validation.push(t.elapsed());
            assert!(
                matches!(v, Validation::Valid { .. }),
                "the provisioned key must validate: {v:?}"
            );
        }
        bus.unplug(KEY).expect("unplug");
    }

    let cell = HardwareIdCell::new(HardwareId::new("bench-machine"));
    let reader: CellReader = cell.reader();
    let token = reader.token(&Serial::new(SERIAL.to_string()));
    let monitor = spawn_monitor(
        cell,
        vec![Arc::new(bus.provider()) as Arc<dyn KeyProvider>],
        validator,
        MonitorConfig::default(),
    )
    .expect("monitor");

    bus.plug(KEY).expect("plug");
    spin_until("first plug", || reader.check().is(token));

    let trigger = Trigger::new();
    let (mut gone, mut attached, mut valid) = (Samples::us(), Samples::us(), Samples::us());
    for _ in 0..cycles {
        // Let the previous change settle (no validation in flight).
        std::thread::sleep(Duration::from_millis(2));
        let b = bus.clone();
        trigger.fire(move || b.unplug(KEY).expect("unplug"));
        let seen = spin_until("unplug", || !reader.check().is(token));
        gone.push(seen.saturating_duration_since(trigger.started()));

        std::thread::sleep(Duration::from_millis(2));
        let before = reader.check().generation();
        let b = bus.clone();
        trigger.fire(move || b.plug(KEY).expect("plug"));
        let seen_attached = spin_until("plug (attached)", || reader.check().generation() != before);
        let seen_valid = spin_until("plug (valid)", || reader.check().is(token));
        let t = trigger.started();
        attached.push(seen_attached.saturating_duration_since(t));
        valid.push(seen_valid.saturating_duration_since(t));
    }
    trigger.stop();
    monitor.stop();
    let floor2 = hop_floor(cycles, 2);
    let floor1 = hop_floor(cycles, 1);

    println!("hotplug_sim: {cycles} cycles, sim backend, real monitor thread, VendorValidator");
    println!("{}", gone.line("unplug → key gone"));
    println!("{}", attached.line("plug → attached seen"));
    println!("{}", valid.line("plug → valid in force"));
    println!("{}", validation.line("validation alone"));
    println!("{}", floor2.line("two-hop floor"));
    println!("{}", floor1.line("one-hop floor"));
}
