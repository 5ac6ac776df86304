//! The PC/SC backend end to end: the virtual YubiKey on a real (private) pcscd, keyfloat's
//! provider, the monitor and the hardware-ID cell.
//!
//! libpcsclite reads `PCSCLITE_CSOCK_NAME` once per process, so this test binary uses one
//! private pcscd (started on first use, socket path stable across restarts) and runs its
//! scenarios one at a time. The "other process holding the card" is this binary re-run as
//! a child (`holder_child_process`), which is a no-op unless the parent sets its variable.
//! Fails when pcscd / vpcd are missing; reported as ignored by a plain `cargo test`; `./scripts/dev.sh test` runs them (`--include-ignored`).

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use keyfloat_hal::backend::pcsc::{PcscKey, PcscProvider, Timeouts};
use keyfloat_hal::backend::sim::provision_sim_key;
use keyfloat_hal::backend::sim::SimKeySpec;
use keyfloat_hal::trust::{VendorSigningKey, VendorValidator};
use keyfloat_hal::{
    spawn_monitor, CellReader, ErrorKind, HardwareId, HardwareIdCell, HardwareKey, KeyProvider, KeyStatus,
    KeyValidator, MonitorConfig, Serial, Snapshot, Validation,
};
use keyfloat_simulator::card::{CardServer, PrivatePcscd, VirtualCard};
use keyfloat_testkit::pcscd::shared_pcscd;
use keyfloat_testkit::serve::spawn_until;
use keyfloat_testkit::{wait_for as testkit_wait_for, wait_until};

const HOLD_ENV: &str = "KEYFLOAT_TEST_HOLD_READER";
const HOLD_MODE_ENV: &str = "KEYFLOAT_TEST_HOLD_MODE";

/// The binary's pcscd, behind the lock that serializes the scenarios. `None`: skipping.
fn pcscd() -> MutexGuard<'static, PrivatePcscd> {
    shared_pcscd(0x9E00)
}

fn provisioned(serial: u32) -> (SimKeySpec, VendorSigningKey) {
    let vendor = VendorSigningKey::generate();
    (provision_sim_key(SimKeySpec::generate("card", serial), &vendor), vendor)
}

fn wait_for(what: &str, limit: Duration, cond: impl FnMut() -> bool) {
    wait_until(limit, what, cond);
}

fn wait_snapshot(reader: &CellReader, what: &str, cond: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
    testkit_wait_for(Duration::from_secs(10), what, || {
        let s = reader.snapshot();
        if cond(&s) {
            Ok(Arc::clone(&s))
        } else {
            Err(format!("{s:#?}"))
        }
    })
}

fn fast_monitor() -> MonitorConfig {
    MonitorConfig {
        revalidate_every: Duration::from_millis(300),
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_millis(400),
        ..MonitorConfig::DEFAULT
    }
}

#[ignore = "needs pcscd + vsmartcard-vpcd, as root; ./scripts/dev.sh test runs it (--include-ignored)"]
#[test]
fn provider_finds_opens_and_proves_the_card() {
    let pcscd = pcscd();
    let (spec, vendor) = provisioned(20240601);
    let card = CardServer::connect(pcscd.vpcd_addr(0), VirtualCard::new(&spec)).expect("card");
    let provider = PcscProvider::new();
    let mut found = Vec::new();
    wait_for("the card to be listed", Duration::from_secs(5), || {
        found = provider.list().expect("list");
        !found.is_empty()
    });
    assert_eq!(found.len(), 1, "{found:?}");
    let info = &found[0];
    assert_eq!(info.path, pcscd.reader(0));
    assert_eq!(info.serial, Some(Serial::from(20240601)));
    assert_eq!(info.firmware.map(|f| f.to_string()).as_deref(), Some("5.4.3"));

    let mut key = provider.open(&info.id).expect("open");
    assert_eq!(key.read_serial().expect("serial"), Serial::from(20240601));
    assert_eq!(
        key.prover()
            .expect("a PIV key proves")
            .read_certificate()
            .expect("certificate"),
        spec.certificate.clone().expect("cert")
    );
    let validator = VendorValidator::new(vendor.public_key());
    match validator.validate(key.as_mut()) {
        Validation::Valid { serial, .. } => assert_eq!(serial, Serial::from(20240601)),
        other => panic!("expected valid, got {other:?}"),
    }

    // Another client (yubico-piv-tool) disconnects with RESET: our open handle sees
    // ResetCard, reconnects and re-selects PIV by itself.
    let status = Command::new("yubico-piv-tool")
        .args(["-r", "", "-a", "status"])
        .output()
        .expect("yubico-piv-tool runs");
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("20240601"),
        "{status:?}"
    );
    assert_eq!(key.read_serial().expect("serial after a reset"), Serial::from(20240601));
    assert!(key
        .prover()
        .expect("a PIV key proves")
        .sign_challenge(b"after reset")
        .is_ok());
    drop(key);

    // Another client sits in a long transaction: our connect waits inside pcscd until our
    // deadline, and that is reported as busy naming the holder, not as a hang or absence.
    let mut holder = spawn_holder_in(&pcscd.reader(0), "transaction");
    let quick = Timeouts {
        call: Duration::from_millis(700),
        probe: Duration::from_millis(700),
    };
    let e = PcscKey::open(&pcscd.reader(0), quick).expect_err("locked by a transaction");
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(e.holders().iter().any(|h| h.pid == holder.id()), "{e}");
    drop(holder.stdin.take());
    let _ = holder.wait();

    // A card that stops answering: the call returns Timeout at its deadline, never hangs.
    let mut key = PcscKey::open(
        &pcscd.reader(0),
        Timeouts {
            call: Duration::from_millis(800),
            probe: Duration::from_millis(800),
        },
    )
    .expect("open");
    card.set_hang(true);
    let started = Instant::now();
    assert_eq!(key.read_serial().expect_err("hung").kind(), ErrorKind::Timeout);
    assert!(started.elapsed() < Duration::from_secs(5));
    // Unplugging the wedged card unblocks pcscd (removal is reported at once).
    card.remove();
    card.set_hang(false);
    wait_for("the slot to be empty", Duration::from_secs(5), || {
        provider.readers().expect("readers").iter().all(|(_, present)| !present)
    });
    card.stop();
}

/// Runs this test binary again as another process that holds `reader` exclusively until
/// its stdin closes.
fn spawn_holder(reader: &str) -> Child {
    spawn_holder_in(reader, "exclusive")
}

fn spawn_holder_in(reader: &str, mode: &str) -> Child {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(["--exact", "holder_child_process", "--nocapture", "--test-threads=1"])
        .env(HOLD_ENV, reader)
        .env(HOLD_MODE_ENV, mode)
        .stdin(Stdio::piped())
        .stderr(Stdio::inherit());
    let holding = |lines: &[String]| lines.iter().any(|l| l.trim_end().ends_with("HOLDING"));
    spawn_until(&mut cmd, None, Duration::from_secs(30), holding).0
}

/// Not a scenario: the body of the holder process (see [`spawn_holder`]).
#[test]
fn holder_child_process() {
    let Ok(reader) = std::env::var(HOLD_ENV) else { return };
    let ctx = pcsc::Context::establish(pcsc::Scope::User).expect("context");
    let name = std::ffi::CString::new(reader).expect("reader name");
    // Our monitor may hold a shared connection for a moment: retry until exclusive.
    // "exclusive": an exclusive connection; "transaction": a shared one inside a transaction.
    let transaction = std::env::var(HOLD_MODE_ENV).as_deref() == Ok("transaction");
    let mode = if transaction {
        pcsc::ShareMode::Shared
    } else {
        pcsc::ShareMode::Exclusive
    };
    let mut card = testkit_wait_for(Duration::from_secs(10), "a connection holding the card", || {
        ctx.connect(&name, mode, pcsc::Protocols::ANY)
    });
    let tx = if transaction {
        Some(card.transaction().expect("begin transaction"))
    } else {
        None
    };
    println!("HOLDING");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(tx);
    let _ = card.disconnect(pcsc::Disposition::LeaveCard);
}

#[ignore = "needs pcscd + vsmartcard-vpcd, as root; ./scripts/dev.sh test runs it (--include-ignored)"]
#[test]
fn monitor_follows_insert_remove_contention_and_pcscd_restarts() {
    let mut pcscd = pcscd();
    let (spec, vendor) = provisioned(5550123);
    let machine = HardwareId::new("machine-id-of-this-test");
    let cell = HardwareIdCell::new(machine.clone());
    let reader = cell.reader();
    let provider: Arc<dyn KeyProvider> = Arc::new(PcscProvider::new());
    let validator = Arc::new(VendorValidator::new(vendor.public_key()));
    let monitor = spawn_monitor(cell, vec![provider], validator, fast_monitor()).expect("monitor");
    let serial = HardwareId::new("5550123");

    // Inserted -> the key's serial is the hardware ID.
    let card = CardServer::connect(pcscd.vpcd_addr(0), VirtualCard::new(&spec)).expect("card");
    wait_snapshot(&reader, "card serial in force", |s| s.hardware_id == serial);

    // Removed -> back to the machine ID.
    card.remove();
    wait_snapshot(&reader, "machine ID after removal", |s| {
        s.hardware_id == machine && s.keys.is_empty()
    });

    // Re-inserted -> serial again.
    card.insert();
    wait_snapshot(&reader, "serial after re-insertion", |s| s.hardware_id == serial);

    // Another process holds the card exclusively -> busy, holder named; never "absent".
    let mut holder = spawn_holder(&pcscd.reader(0));
    let holder_pid = holder.id();
    let busy = wait_snapshot(&reader, "busy key naming the holder", |s| {
        s.keys.iter().any(|k| {
            matches!(&k.status, KeyStatus::Error { kind: ErrorKind::Busy, holders, .. }
                if holders.iter().any(|h| h.pid == holder_pid))
        })
    });
    assert_eq!(busy.hardware_id, machine, "a busy key is not in force");
    assert_eq!(busy.keys.len(), 1, "the busy key is still attached: {busy:#?}");

    // Released -> recovered by the monitor's retry.
    drop(holder.stdin.take());
    let _ = holder.wait();
    wait_snapshot(&reader, "serial after the holder let go", |s| s.hardware_id == serial);

    // pcscd dies -> keys detached, backend error shown; restarted -> key back by itself.
    pcscd.stop();
    wait_snapshot(&reader, "machine ID while pcscd is down", |s| {
        s.hardware_id == machine
            && s.backend_error
                .as_ref()
                .is_some_and(|e| e.code == "KEY_SERVICE_UNAVAILABLE")
    });
    pcscd.restart().expect("pcscd restarts");
    wait_snapshot(&reader, "serial after pcscd restart", |s| {
        s.hardware_id == serial && s.backend_error.is_none()
    });

    monitor.stop();

    // Held by another process when the monitor starts: attached as a busy key (never
    // absent), identified and validated as soon as the holder lets go.
    let mut holder = spawn_holder(&pcscd.reader(0));
    let holder_pid = holder.id();
    let cell = HardwareIdCell::new(machine.clone());
    let reader = cell.reader();
    let provider: Arc<dyn KeyProvider> = Arc::new(PcscProvider::new());
    let validator = Arc::new(VendorValidator::new(vendor.public_key()));
    let monitor = spawn_monitor(cell, vec![provider], validator, fast_monitor()).expect("monitor");
    wait_snapshot(&reader, "busy key at start-up", |s| {
        s.keys.len() == 1
            && matches!(&s.keys[0].status, KeyStatus::Error { kind: ErrorKind::Busy, holders, .. }
                if holders.iter().any(|h| h.pid == holder_pid))
    });
    drop(holder.stdin.take());
    let _ = holder.wait();
    wait_snapshot(&reader, "serial once the holder let go", |s| {
        s.hardware_id == serial && s.keys[0].info.serial == Some(Serial::from(5550123))
    });
    monitor.stop();
    card.stop();
}
