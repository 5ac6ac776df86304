//! Recovery through a real pcscd, with the monitor's default timing:
//! (a) another process (here: a second PC/SC context) holds the card exclusively, the
//!     monitor shows it busy; from the holder letting go to the key valid again;
//! (b) pcscd restarts; from pcscd being back (its `restart` returned) to the key valid again.
//!
//! pcscd 1.9.9 sends no event when an exclusive holder lets go, and none when it comes
//! back, so both depend on the monitor's short retry period while a key is busy or the
//! service is down. `cargo bench --bench recovery_pcsc` runs 10 cycles each;
//! `cargo test --benches` runs 2. Needs root, pcscd and vsmartcard-vpcd (fails without
//! them).

use std::ffi::CString;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyfloat_hal::backend::pcsc::PcscProvider;
use keyfloat_hal::backend::sim::SimKeySpec;
use keyfloat_hal::{
    spawn_monitor, CellReader, HardwareId, HardwareIdCell, KeyStatus, MonitorConfig, MonitorHandle, SerialReadable,
};
use keyfloat_simulator::card::{require_pcscd, CardServer, PrivatePcscd, VirtualCard, CSOCK_ENV};
use keyfloat_testkit::stats::Samples;

fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn valid(reader: &CellReader) -> bool {
    reader.check().valid_key().is_some()
}

/// The PC/SC backend watched by the monitor with its default timing; keys need only be readable.
fn pcsc_monitor() -> (CellReader, MonitorHandle) {
    let cell = HardwareIdCell::new(HardwareId::new("machine"));
    let reader = cell.reader();
    let monitor = spawn_monitor(
        cell,
        vec![Arc::new(PcscProvider::new())],
        Arc::new(SerialReadable),
        MonitorConfig::DEFAULT,
    )
    .expect("monitor");
    (reader, monitor)
}

fn main() {
    require_pcscd().unwrap_or_else(|e| panic!("pcscd is required for this benchmark: {e}"));
    let cycles = if std::env::args().any(|a| a == "--bench") {
        10
    } else {
        2
    };
    let mut pcscd = PrivatePcscd::start(0x9B40).expect("private pcscd");
    std::env::set_var(CSOCK_ENV, pcscd.socket());
    let card = CardServer::connect(
        pcscd.vpcd_addr(0),
        VirtualCard::new(&SimKeySpec::generate("k", 41000001)),
    )
    .expect("card");
    let provider = PcscProvider::new();
    wait("the card", Duration::from_secs(10), || {
        provider.readers().is_ok_and(|r| r.iter().any(|(_, p)| *p))
    });
    let reader_name = CString::new(pcscd.reader(0)).expect("reader");

    // (a) exclusive holder lets go.
    let mut released = Samples::ms();
    for _ in 0..cycles {
        let ctx = pcsc::Context::establish(pcsc::Scope::User).expect("context");
        let held = ctx
            .connect(&reader_name, pcsc::ShareMode::Exclusive, pcsc::Protocols::ANY)
            .expect("exclusive connect");
        let (reader, monitor) = pcsc_monitor();
        wait("the key shown busy", Duration::from_secs(15), || {
            reader
                .snapshot()
                .keys
                .iter()
                .any(|k| matches!(&k.status, KeyStatus::Error { code, .. } if *code == "KEY_BUSY"))
        });
        // Let the retry period settle into its steady state.
        std::thread::sleep(Duration::from_secs(2));
        let t = Instant::now();
        drop(held.disconnect(pcsc::Disposition::LeaveCard));
        drop(ctx);
        let seen = wait("valid after release", Duration::from_secs(10), || valid(&reader));
        released.push(seen - t);
        monitor.stop();
    }

    // (b) pcscd restarts.
    let (reader, monitor) = pcsc_monitor();
    wait("valid", Duration::from_secs(10), || valid(&reader));
    let mut restarted = Samples::ms();
    for _ in 0..cycles {
        pcscd.restart().expect("restart");
        let t = Instant::now();
        // The monitor may or may not have noticed the outage yet; it must end valid again
        // after having been invalid.
        let generation = reader.snapshot().generation;
        let seen = wait("valid after the restart", Duration::from_secs(15), || {
            valid(&reader) && reader.snapshot().generation > generation
        });
        restarted.push(seen - t);
        std::thread::sleep(Duration::from_millis(500));
    }
    monitor.stop();
    println!("{}", released.line("exclusive holder lets go -> valid"));
    println!("{}", restarted.line("pcscd back after restart -> valid"));
    card.stop();
}
