//! Hot-plug latency through a real pcscd: from the virtual card's socket open / close to
//! (a) a plain `SCardGetStatusChange` listener seeing PRESENT / EMPTY and (b) keyfloat's
//! monitor changing the hardware ID in the cell — both on the same private pcscd, in the
//! same run, same cycles. The difference (b − a) is keyfloat's own cost (probe + validation).
//!
//! Then the cost of PIV attestation: one key (re)validation by the vendor trust validator,
//! without and with `require_attestation` (INS F9 + reading the F9 certificate + verifying
//! the chain), alternated on the same card through the same pcscd.
//!
//! `cargo bench --bench hotplug_pcsc` runs 10 cycles and 40 validations of each kind;
//! `cargo test --benches` runs 2 and 3 as a smoke test. Needs root, pcscd and
//! vsmartcard-vpcd (fails without them).

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyfloat_hal::backend::pcsc::PcscProvider;
use keyfloat_hal::backend::sim::provision_sim_key;
use keyfloat_hal::backend::sim::{SimAttestation, SimKeySpec};
use keyfloat_hal::trust::attestation::sim_ca::SimAttestationCa;
use keyfloat_hal::trust::{VendorSigningKey, VendorValidator};
use keyfloat_hal::{
    spawn_monitor, HardwareId, HardwareIdCell, KeyProvider, KeyValidator, MonitorConfig, ProofStatus, SerialReadable,
    Validation,
};
use keyfloat_simulator::card::{require_pcscd, CardServer, PrivatePcscd, VirtualCard, CSOCK_ENV};
use keyfloat_testkit::stats::Samples;

/// A plain listener: reports (when, card present) for every change of `reader`.
fn listener(reader: String, stop: Arc<AtomicBool>, tx: mpsc::Sender<(Instant, bool)>) {
    let ctx = pcsc::Context::establish(pcsc::Scope::User).expect("context");
    let name = CString::new(reader).expect("reader name");
    let mut states = [pcsc::ReaderState::new(name, pcsc::State::UNAWARE)];
    while !stop.load(Ordering::Relaxed) {
        match ctx.get_status_change(Some(Duration::from_millis(200)), &mut states) {
            Ok(()) => {
                let now = Instant::now();
                let ev = states[0].event_state();
                let present = ev.contains(pcsc::State::PRESENT) && !ev.contains(pcsc::State::EMPTY);
                let was = states[0].current_state().contains(pcsc::State::PRESENT);
                if present != was || states[0].current_state() == pcsc::State::UNAWARE {
                    let _ = tx.send((now, present));
                }
                states[0].sync_current_state();
            }
            Err(pcsc::Error::Timeout) => {}
            Err(e) => panic!("listener: {e}"),
        }
    }
}

fn main() {
    require_pcscd().unwrap_or_else(|e| panic!("pcscd is required for this benchmark: {e}"));
    let full = std::env::args().any(|a| a == "--bench");
    let cycles = if full { 10 } else { 2 };
    let pcscd = PrivatePcscd::start(0x9F00).expect("private pcscd");
    std::env::set_var(CSOCK_ENV, pcscd.socket());
    let reader_name = pcscd.reader(0);

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let l = {
        let stop = Arc::clone(&stop);
        let r = reader_name.clone();
        std::thread::spawn(move || listener(r, stop, tx))
    };
    // The listener's initial report (empty slot).
    let _ = rx.recv_timeout(Duration::from_secs(2));

    let machine = HardwareId::new("machine");
    let cell = HardwareIdCell::new(machine.clone());
    let reader = cell.reader();
    let provider: Arc<dyn KeyProvider> = Arc::new(PcscProvider::new());
    let monitor =
        spawn_monitor(cell, vec![provider], Arc::new(SerialReadable), MonitorConfig::default()).expect("monitor");

    // A provisioned key generated on its device (it attests with an F9 key of a test CA).
    let vendor = VendorSigningKey::generate();
    let ca = SimAttestationCa::generate().expect("test attestation CA");
    let spec = SimKeySpec::generate("bench", 7654321).with_attestation(Some(SimAttestation::Device(
        ca.issue_device(7654321).expect("F9 certificate"),
    )));
    let spec = provision_sim_key(spec, &vendor);
    let serial = HardwareId::new("7654321");
    let card = CardServer::connect(pcscd.vpcd_addr(0), VirtualCard::new(&spec)).expect("card");
    card.remove();
    std::thread::sleep(Duration::from_millis(900));
    while rx.try_recv().is_ok() {}

    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut phase = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        Duration::from_millis(200 + seed % 400)
    };
    let wait_cell = |want: &HardwareId| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if reader.hardware_id() == *want {
                return Instant::now();
            }
            assert!(Instant::now() < deadline, "cell never showed {want}");
            std::thread::sleep(Duration::from_micros(50));
        }
    };
    let wait_listener = |want: bool| loop {
        let (at, present) = rx.recv_timeout(Duration::from_secs(10)).expect("listener event");
        if present == want {
            return at;
        }
    };
    // Per insert and per remove: card event -> listener, card event -> cell, cell after listener.
    let mut insert: [Samples; 3] = std::array::from_fn(|_| Samples::ms());
    let mut remove = insert.clone();
    let mut cycle = |samples: &mut [Samples; 3], change: &dyn Fn(), want_cell: &HardwareId, present: bool| {
        std::thread::sleep(phase());
        let t0 = Instant::now();
        change();
        let tc = wait_cell(want_cell);
        let tl = wait_listener(present);
        for (s, d) in samples
            .iter_mut()
            .zip([tl - t0, tc - t0, tc.saturating_duration_since(tl)])
        {
            s.push(d);
        }
    };
    for _ in 0..cycles {
        cycle(&mut insert, &|| card.insert(), &serial, true);
        cycle(&mut remove, &|| card.remove(), &machine, false);
    }
    println!("hot-plug latency through pcscd ({cycles} cycles, random phase; pcscd polls vpcd every 400 ms)");
    for (samples, event, cell) in [
        (&insert, "insert", "cell shows serial"),
        (&remove, "remove", "cell shows machine ID"),
    ] {
        println!("{}", samples[0].line(&format!("{event} -> get_status_change")));
        println!("{}", samples[1].line(&format!("{event} -> {cell}")));
        println!("{}", samples[2].line(&format!("{event}: cell after listener")));
    }

    monitor.stop();

    // Validation with and without attestation, alternated, on the inserted card.
    card.insert();
    let provider = PcscProvider::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        if let Some(k) = provider.list().expect("list").into_iter().next() {
            break k.id;
        }
        assert!(Instant::now() < deadline, "card never listed");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut key = provider.open(&id).expect("open");
    let plain = VendorValidator::new(vendor.public_key());
    let attesting = VendorValidator::new(vendor.public_key()).require_attestation(Some(ca.roots().expect("roots")));
    let rounds = if full { 40 } else { 3 };
    let (mut without, mut with) = (Samples::ms(), Samples::ms());
    for _ in 0..rounds {
        for (validator, out, want) in [
            (&plain, &mut without, ProofStatus::Verified),
            (&attesting, &mut with, ProofStatus::Attested),
        ] {
            let t0 = Instant::now();
            let v = validator.validate(key.as_mut());
            out.push(t0.elapsed());
            match v {
                Validation::Valid { proof, .. } => assert_eq!(proof, want),
                other => panic!("validation failed: {other:?}"),
            }
        }
    }
    println!("key validation through pcscd ({rounds} each, alternated)");
    println!("{}", without.line("validate, no attestation"));
    println!("{}", with.line("validate, require_attestation"));
    println!(
        "{:<36} median +{:.2} ms",
        "attestation cost",
        with.median() - without.median()
    );

    card.stop();
    stop.store(true, Ordering::Relaxed);
    let _ = l.join();
}
