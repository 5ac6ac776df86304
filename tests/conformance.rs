//! One conformance suite, three backends: the same cases — plug, swap, unplug, busy (another
//! process holds the key), a stuck key (it stops answering), a key that signs garbage, and (sim and
//! pcsc, the backends with PIV attestation) under `require_attestation` an attested key, a
//! key imported from software and a key replaying another card's attestation — run through the
//! real monitor thread, the vendor trust chain and the hardware-ID cell, against
//! - `sim`: the simulated dongle;
//! - `hid`: the HID backend through its transport seam, against the virtual HID YubiKey (no HID
//!   device can exist on CI machines, so the seam is where the backend meets a device);
//! - `pcsc`: the PC/SC backend through a real (private) pcscd, with virtual YubiKeys served by
//!   vpcd and a real second PC/SC client (`keyfloat simulate hold`) holding the card.
//!
//! The pcsc arm fails when pcscd / vsmartcard-vpcd are missing; it is
//! reported as ignored by a plain `cargo test`; `./scripts/dev.sh test` runs them (`--include-ignored`).

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyfloat_hal::backend::sim::provision_sim_key;
use keyfloat_hal::backend::sim::{SimAttestation, SimBus, SimKeySpec};
use keyfloat_hal::trust::attestation::sim_ca::SimAttestationCa;
use keyfloat_hal::trust::{AttestationRoots, VendorSigningKey, VendorValidator};
use keyfloat_hal::{
    spawn_monitor, BackendKind, CellReader, ErrorKind, HardwareId, HardwareIdCell, Holder, KeyProvider, KeyState,
    KeyStatus, MonitorConfig, MonitorHandle, ProofStatus,
};

/// The keys of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum K {
    /// Genuine, serial 11111111.
    Good,
    /// Genuine, another serial.
    Other,
    /// Genuine certificate, but the key signs garbage.
    Garbage,
    /// Genuine, generated on the device: attests.
    Attested,
    /// Good certificate for a key imported from software: cannot attest.
    Imported,
    /// Good certificate for its own (software) key, replaying `Attested`'s attestation.
    Replayer,
}

impl K {
    fn name(self) -> &'static str {
        match self {
            K::Good => "good",
            K::Other => "other",
            K::Garbage => "garbage",
            K::Attested => "attested",
            K::Imported => "imported",
            K::Replayer => "replayer",
        }
    }
    fn serial(self) -> u32 {
        match self {
            K::Good => 11_111_111,
            K::Other => 22_222_222,
            K::Garbage => 33_333_333,
            K::Attested => 44_444_444,
            K::Imported => 55_555_555,
            K::Replayer => 66_666_666,
        }
    }
    /// The key material: provisioned by `vendor`, attesting with an F9 key `ca` issued
    /// (except `Imported`, and `Replayer` which replays); `Garbage` gets an impostor signing key.
    fn spec(self, vendor: &VendorSigningKey, ca: &SimAttestationCa) -> SimKeySpec {
        let base = SimKeySpec::from_seed(self.name(), self.serial(), 5);
        let attestation = match self {
            K::Imported => None,
            K::Replayer => Some(SimAttestation::Replay(
                K::Attested
                    .spec(vendor, ca)
                    .attestation()
                    .expect("attested key attests"),
            )),
            _ => Some(SimAttestation::Device(
                ca.issue_device_from_seed(self.serial(), 5).expect("F9 certificate"),
            )),
        };
        let mut spec = provision_sim_key(base.with_attestation(attestation), vendor);
        if self == K::Garbage {
            spec.signing_key = SimKeySpec::from_seed("impostor", self.serial(), 5).signing_key;
        }
        spec
    }
}

/// What a backend arm must offer.
trait Rig {
    fn plug(&mut self, k: K);
    fn unplug(&mut self, k: K);
    /// Another process takes the key exclusively.
    fn hold(&mut self, k: K);
    fn release(&mut self, k: K);
    /// The key stops answering: every operation on it blocks (a wedged card or dongle).
    fn hang(&mut self, k: K);
    /// The stuck key answers again (on PC/SC only after being pulled and reinserted).
    fn heal(&mut self, k: K);
    /// Whether busy errors name the holder process on this backend.
    fn names_holders(&self) -> bool;
    /// How long hot-plug may take to show.
    fn settle(&self) -> Duration;
}

const MACHINE: &str = "conformance-machine";
const MONITOR: MonitorConfig = MonitorConfig {
    revalidate_every: Duration::from_millis(200),
    retry_initial: Duration::from_millis(50),
    retry_max: Duration::from_millis(300),
    ..MonitorConfig::DEFAULT
};

/// The sim and HID fakes block while hung, so the monitor's own deadline is what reports
/// them: short enough to fall within their `settle`. The PC/SC backend has its own call
/// deadline (`Timeouts::call`) and keeps the default.
const FAKE_MONITOR: MonitorConfig = MonitorConfig {
    validate_timeout: Duration::from_secs(2),
    ..MONITOR
};

fn wait(reader: &CellReader, limit: Duration, what: &str, cond: impl Fn(&keyfloat_hal::Snapshot) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        let snap = reader.snapshot();
        if cond(&snap) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; cell: {:#?}",
            **snap
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn in_force_is(s: &keyfloat_hal::Snapshot, k: K) -> bool {
    in_force_with(s, k, ProofStatus::Verified)
}

fn in_force_with(s: &keyfloat_hal::Snapshot, k: K, proof: ProofStatus) -> bool {
    s.hardware_id.as_str() == k.serial().to_string()
        && s.in_force
            .as_ref()
            .is_some_and(|v| v.status == KeyStatus::Valid { proof })
}

/// The machine's own ID, no key in force.
fn on_machine(s: &keyfloat_hal::Snapshot) -> bool {
    s.hardware_id.as_str() == MACHINE && s.in_force.is_none()
}

/// No key at all.
fn absent(s: &keyfloat_hal::Snapshot) -> bool {
    on_machine(s) && s.state() == KeyState::Absent
}

/// A key is listed as invalid for `reason`, and none is in force.
fn refused_as(reason: keyfloat_hal::InvalidReason) -> impl Fn(&keyfloat_hal::Snapshot) -> bool {
    move |s| on_machine(s) && s.keys.iter().any(|k| k.status == KeyStatus::Invalid { reason })
}

/// Pulls `k` and waits until no key is left.
fn unplug_all(rig: &mut dyn Rig, reader: &CellReader, k: K) {
    rig.unplug(k);
    wait(reader, rig.settle(), "absent", absent);
}

/// The attestation cases, against a monitor whose validator requires attestation.
fn attestation_conformance(rig: &mut dyn Rig, reader: &CellReader) {
    let t = rig.settle();
    let not_attested = refused_as(keyfloat_hal::InvalidReason::NotAttested);
    // A key generated on the device attests: in force, proof "attested".
    rig.plug(K::Attested);
    wait(reader, t, "attested in force", |s| {
        in_force_with(s, K::Attested, ProofStatus::Attested)
    });
    unplug_all(rig, reader, K::Attested);
    // A software key imported into the card: no attestation, refused.
    rig.plug(K::Imported);
    wait(reader, t, "imported refused", &not_attested);
    unplug_all(rig, reader, K::Imported);
    // A card replaying another card's genuine attestation: refused.
    rig.plug(K::Replayer);
    wait(reader, t, "replayer refused", &not_attested);
    unplug_all(rig, reader, K::Replayer);
}

/// The suite. `reader` is the cell the arm's monitor publishes to.
fn conformance(rig: &mut dyn Rig, reader: &CellReader) {
    let t = rig.settle();

    // Plug: the key's serial becomes the hardware ID, with a verified proof.
    rig.plug(K::Good);
    wait(reader, t, "good in force", |s| in_force_is(s, K::Good));

    // Swap: the other genuine key takes over.
    rig.unplug(K::Good);
    rig.plug(K::Other);
    wait(reader, t, "other in force", |s| in_force_is(s, K::Other));

    // Unplug: back to the machine's ID, nothing attached.
    unplug_all(rig, reader, K::Other);

    // Busy: another process holds the key — reported as busy (never absent), holder named.
    rig.plug(K::Good);
    wait(reader, t, "good in force", |s| in_force_is(s, K::Good));
    rig.hold(K::Good);
    let names = rig.names_holders();
    wait(reader, t, "busy", |s| {
        on_machine(s)
            && s.keys.iter().any(|k| match &k.status {
                KeyStatus::Error { kind, holders, .. } => *kind == ErrorKind::Busy && (!names || !holders.is_empty()),
                _ => false,
            })
    });
    rig.release(K::Good);
    wait(reader, t, "recovered after release", |s| in_force_is(s, K::Good));

    // A stuck key: reported as not answering (a timeout) and out of force — never left in
    // force while it cannot answer; once healed it is proved again and comes back.
    // The stuck state lasts until heal, so polling the cell sees it (no recorder thread).
    rig.hang(K::Good);
    wait(reader, t, "stuck key noticed", |s| {
        on_machine(s)
            && s.state() == KeyState::Error
            && s.keys
                .iter()
                .any(|k| matches!(&k.status, KeyStatus::Error { kind, .. } if *kind == ErrorKind::Timeout))
    });
    rig.heal(K::Good);
    wait(reader, t, "recovered after heal", |s| in_force_is(s, K::Good));

    // A key that signs garbage is invalid (bad signature), never in force.
    unplug_all(rig, reader, K::Good);
    rig.plug(K::Garbage);
    wait(
        reader,
        t,
        "garbage invalid",
        refused_as(keyfloat_hal::InvalidReason::BadSignature),
    );
    unplug_all(rig, reader, K::Garbage);
}

fn monitor(
    provider: Arc<dyn KeyProvider>,
    vendor: &VendorSigningKey,
    attestation: Option<AttestationRoots>,
) -> (CellReader, MonitorHandle) {
    let cell = HardwareIdCell::new(HardwareId::new(MACHINE));
    let reader = cell.reader();
    let validator = Arc::new(VendorValidator::new(vendor.public_key()).require_attestation(attestation));
    let config = if provider.kind() == BackendKind::Pcsc {
        MONITOR
    } else {
        FAKE_MONITOR
    };
    let handle = spawn_monitor(cell, vec![provider], validator, config).expect("monitor");
    (reader, handle)
}

fn holder() -> Holder {
    Holder {
        pid: 4242,
        command: "other-client".into(),
    }
}

// ---------------------------------------------------------------- sim arm

/// The sim and HID fakes share their fault verbs, so their arms are the same rig.
macro_rules! fake_rig {
    ($rig:ident, $fake:ty) => {
        struct $rig($fake);

        impl Rig for $rig {
            fn plug(&mut self, k: K) {
                self.0.plug(k.name()).expect("plug");
            }
            fn unplug(&mut self, k: K) {
                self.0.unplug(k.name()).expect("unplug");
            }
            fn hold(&mut self, k: K) {
                self.0.make_busy(k.name(), Some(holder())).expect("busy");
            }
            fn release(&mut self, k: K) {
                self.0.make_busy(k.name(), None).expect("release");
            }
            fn hang(&mut self, k: K) {
                self.0.hang(k.name(), true).expect("hang");
            }
            fn heal(&mut self, k: K) {
                self.0.hang(k.name(), false).expect("heal");
            }
            fn names_holders(&self) -> bool {
                true
            }
            fn settle(&self) -> Duration {
                Duration::from_secs(5)
            }
        }
    };
}

fake_rig!(SimRig, SimBus);

const ALL: [K; 6] = [K::Good, K::Other, K::Garbage, K::Attested, K::Imported, K::Replayer];

#[test]
fn sim_backend_conforms() {
    let vendor = VendorSigningKey::generate();
    let ca = SimAttestationCa::from_seed(5).expect("test attestation CA");
    let bus = SimBus::new();
    for k in ALL {
        bus.insert(k.spec(&vendor, &ca));
    }
    let (reader, _monitor) = monitor(Arc::new(bus.provider()), &vendor, None);
    let mut rig = SimRig(bus.clone());
    conformance(&mut rig, &reader);
    drop(_monitor);
    let (reader, _monitor) = monitor(Arc::new(bus.provider()), &vendor, Some(ca.roots().expect("roots")));
    attestation_conformance(&mut rig, &reader);
}

// ---------------------------------------------------------------- hid arm

#[cfg(feature = "hid")]
mod hid_arm {
    use super::*;
    use keyfloat_hal::backend::hid::{HidConfig, HidProvider, ProvisioningStore};
    use keyfloat_simulator::hid::{provision, SimHidTransport};

    fake_rig!(HidRig, SimHidTransport);

    #[test]
    fn hid_backend_conforms_through_its_transport_seam() {
        let vendor = VendorSigningKey::generate();
        let ca = SimAttestationCa::from_seed(5).expect("test attestation CA");
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ProvisioningStore::new(dir.path());
        let hid = SimHidTransport::new();
        for k in [K::Good, K::Other, K::Garbage] {
            let spec = k.spec(&vendor, &ca);
            // The credential file names the genuine certificate; the garbage key signs with another key.
            provision(&store, &spec).expect("provision");
            hid.insert(spec);
        }
        let config = HidConfig {
            poll_interval: Duration::from_millis(20),
            provisioning: Some(store),
            ..HidConfig::default()
        };
        let provider = Arc::new(HidProvider::new(Arc::new(hid.clone()), config));
        let (reader, _monitor) = monitor(provider, &vendor, None);
        conformance(&mut HidRig(hid), &reader);
    }
}

// ---------------------------------------------------------------- pcsc arm

#[cfg(feature = "pcsc")]
mod pcsc_arm {
    use super::*;
    use keyfloat_hal::backend::pcsc::PcscProvider;
    use keyfloat_simulator::card::{require_pcscd, CardServer, PrivatePcscd, VirtualCard, CSOCK_ENV};

    struct PcscRig {
        pcscd: PrivatePcscd,
        specs: BTreeMap<K, SimKeySpec>,
        cards: BTreeMap<K, CardServer>,
        holders: BTreeMap<K, Child>,
    }

    /// Good and Attested on slot 0; the others share slot 1 (never plugged together).
    fn slot(k: K) -> u8 {
        u8::from(!matches!(k, K::Good | K::Attested))
    }

    impl Rig for PcscRig {
        fn plug(&mut self, k: K) {
            if let Some(c) = self.cards.get(&k) {
                c.insert();
                return;
            }
            let card = VirtualCard::new(&self.specs[&k]);
            let server = CardServer::connect(self.pcscd.vpcd_addr(slot(k)), card).expect("serve card");
            self.cards.insert(k, server);
        }
        fn unplug(&mut self, k: K) {
            if let Some(c) = self.cards.get(&k) {
                c.remove();
            }
        }
        fn hold(&mut self, k: K) {
            let mut child = Command::new(env!("CARGO_BIN_EXE_keyfloat"))
                .args([
                    "simulate",
                    "hold",
                    "--reader",
                    &self.pcscd.reader(slot(k)),
                    "--millis",
                    "60000",
                ])
                .env(CSOCK_ENV, self.pcscd.socket())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn holder");
            let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
            let mut line = String::new();
            std::io::BufRead::read_line(&mut out, &mut line).expect("holder output");
            assert_eq!(line.trim(), "HOLDING", "the holder could not take the card");
            self.holders.insert(k, child);
        }
        fn release(&mut self, k: K) {
            if let Some(mut c) = self.holders.remove(&k) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        fn hang(&mut self, k: K) {
            // A wedged card: it stops answering; the backend's deadline turns that into a timeout.
            self.cards[&k].set_hang(true);
        }
        fn heal(&mut self, k: K) {
            // pcscd's vpcd driver waits forever for the swallowed command's answer: a wedged
            // card is only cured by pulling it, as with real hardware.
            let card = &self.cards[&k];
            card.set_hang(false);
            card.remove();
            std::thread::sleep(Duration::from_millis(500));
            card.insert();
        }
        fn names_holders(&self) -> bool {
            true
        }
        fn settle(&self) -> Duration {
            Duration::from_secs(15)
        }
    }

    impl Drop for PcscRig {
        fn drop(&mut self) {
            for k in self.holders.keys().copied().collect::<Vec<_>>() {
                self.release(k);
            }
        }
    }

    #[ignore = "needs pcscd + vsmartcard-vpcd, as root; ./scripts/dev.sh test runs it (--include-ignored)"]
    #[test]
    fn pcsc_backend_conforms_through_a_real_pcscd() {
        require_pcscd().unwrap_or_else(|e| panic!("{e}"));
        let pcscd = PrivatePcscd::start(0xB200).expect("private pcscd");
        // Before this process's first PC/SC call (libpcsclite reads it once).
        std::env::set_var(CSOCK_ENV, pcscd.socket());
        let vendor = VendorSigningKey::generate();
        let ca = SimAttestationCa::from_seed(5).expect("test attestation CA");
        let specs = ALL.into_iter().map(|k| (k, k.spec(&vendor, &ca))).collect();
        let timeouts = keyfloat_hal::backend::pcsc::Timeouts {
            call: Duration::from_millis(1500),
            probe: Duration::from_secs(2),
        };
        let (reader, monitor_plain) = monitor(Arc::new(PcscProvider::with_timeouts(timeouts)), &vendor, None);
        let mut rig = PcscRig {
            pcscd,
            specs,
            cards: BTreeMap::new(),
            holders: BTreeMap::new(),
        };
        conformance(&mut rig, &reader);
        drop(monitor_plain);
        let roots = Some(ca.roots().expect("roots"));
        let (reader, _monitor) = monitor(Arc::new(PcscProvider::with_timeouts(timeouts)), &vendor, roots);
        attestation_conformance(&mut rig, &reader);
    }
}
