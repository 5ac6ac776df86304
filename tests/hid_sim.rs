//! The HID backend end to end through its transport seam, against the simulator's virtual HID
//! YubiKey: polling hot-plug → monitor → vendor trust chain (certificate from the provisioning
//! store + FIDO assertion without touch) → cell. These are the conformance cases (plug, unplug,
//! swap, busy, I/O error, bad signature, ...) for HID; no HID device can exist on CI machines,
//! so the seam is where the backend meets a "device".
//!
//! They live in the root package because the simulator depends on keyfloat-hal: a test in
//! hal/tests would link two copies of hal.
#![cfg(feature = "hid")]

use std::sync::Arc;
use std::time::Duration;

use keyfloat_hal::backend::hid::{DongleId, HidConfig, HidProvider, ProvisioningStore};
use keyfloat_hal::backend::sim::provision_sim_key;
use keyfloat_hal::backend::sim::SimKeySpec;
use keyfloat_hal::trust::{VendorSigningKey, VendorValidator};
use keyfloat_hal::{
    spawn_monitor, Driver, ErrorKind, Firmware, HardwareId, HardwareIdCell, Holder, HotplugSource, Input,
    InvalidReason, KeyProvider, KeyStatus, KeyValidator, MonitorConfig, ProofCapability, ProofStatus, Serial, Snapshot,
};
use keyfloat_simulator::hid::{provision, SimHidInterfaces, SimHidTransport};
use keyfloat_testkit::wait_until;

const MACHINE: &str = "machine-under-test";

fn temp_store() -> (ProvisioningStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    (ProvisioningStore::new(dir.path()), dir)
}

/// A simulated HID bus with provisioned keys, a provider polling it, and a monitor driver
/// whose clock the test moves.
struct Rig {
    hid: SimHidTransport,
    vendor: VendorSigningKey,
    store: ProvisioningStore,
    _dir: tempfile::TempDir,
    source: Box<dyn HotplugSource>,
    driver: Driver,
    cell_reader: keyfloat_hal::CellReader,
    now: Duration,
}

fn config(store: &ProvisioningStore, dongles: Vec<DongleId>) -> HidConfig {
    HidConfig {
        poll_interval: Duration::ZERO,
        provisioning: Some(store.clone()),
        dongles,
        ..HidConfig::default()
    }
}

impl Rig {
    fn new(validator: impl FnOnce(&VendorSigningKey) -> VendorValidator) -> Self {
        let hid = SimHidTransport::new();
        let vendor = VendorSigningKey::generate();
        let (store, dir) = temp_store();
        let provider = Arc::new(HidProvider::new(
            Arc::new(hid.clone()),
            config(
                &store,
                vec![DongleId {
                    vendor_id: 0x096e,
                    product_id: 0x0006,
                }],
            ),
        ));
        let source = provider.watch().expect("watch");
        let cell = HardwareIdCell::new(HardwareId::new(MACHINE));
        let cell_reader = cell.reader();
        let validator: Arc<dyn KeyValidator> = Arc::new(validator(&vendor));
        let driver = Driver::new(cell, vec![provider], validator, MonitorConfig::default());
        Self {
            hid,
            vendor,
            store,
            _dir: dir,
            source,
            driver,
            cell_reader,
            now: Duration::from_secs(1),
        }
    }

    /// A provisioned virtual YubiKey (certificate issued by the rig's vendor, credential file
    /// written), not plugged yet.
    fn add_key(&self, name: &str, serial: u32) -> SimKeySpec {
        let spec = provision_sim_key(SimKeySpec::from_seed(name, serial, 11), &self.vendor);
        provision(&self.store, &spec).expect("provision");
        self.hid.insert(spec.clone());
        spec
    }

    /// Lets `dt` pass: polls the bus, feeds every event and a tick to the driver.
    fn run(&mut self, dt: Duration) -> Arc<Snapshot> {
        self.now += dt;
        while let Some(ev) = self.source.next_event(Duration::ZERO).expect("poll") {
            self.driver.handle(self.now, Input::Hotplug(ev));
        }
        self.driver.handle(self.now, Input::Tick);
        Arc::new(self.cell_reader.snapshot().as_ref().clone())
    }

    fn step(&mut self) -> Arc<Snapshot> {
        self.run(Duration::from_millis(10))
    }
}

/// Why the first key is invalid, if it is.
fn invalid_reason(s: &Snapshot) -> Option<InvalidReason> {
    match status_of(s) {
        KeyStatus::Invalid { reason } => Some(*reason),
        _ => None,
    }
}

/// The error kind of the first key's status, if it is an error.
fn error_kind(s: &Snapshot) -> Option<ErrorKind> {
    match status_of(s) {
        KeyStatus::Error { kind, .. } => Some(*kind),
        _ => None,
    }
}

fn status_of(s: &Snapshot) -> &KeyStatus {
    &s.keys.first().expect("a key is attached").status
}

fn verified() -> KeyStatus {
    KeyStatus::Valid {
        proof: ProofStatus::Verified,
    }
}

fn vendor_validator(v: &VendorSigningKey) -> VendorValidator {
    VendorValidator::new(v.public_key())
}

#[test]
fn plug_publishes_serial_and_verified_proof_then_unplug_restores_machine_id() {
    let mut rig = Rig::new(vendor_validator);
    rig.add_key("alpha", 12345678);
    let s = rig.step();
    assert!(s.keys.is_empty());
    assert_eq!(s.hardware_id, HardwareId::new(MACHINE));

    rig.hid.plug("alpha").unwrap();
    let s = rig.step();
    assert_eq!(s.keys.len(), 1, "OTP + FIDO interfaces are one key");
    assert_eq!(status_of(&s), &verified());
    assert_eq!(s.hardware_id, HardwareId::new("12345678"));
    let k = s.in_force.as_ref().expect("in force");
    assert_eq!(k.info.id.as_str(), "hid:simhid/alpha/0");
    assert_eq!(k.info.capability, ProofCapability::Signature);
    assert_eq!(k.serial, Some(Serial::from(12345678)));
    assert_eq!(k.firmware, Some(Firmware::new(5, 4, 3)));
    assert!(rig.cell_reader.check().valid_key().is_some());

    rig.hid.unplug("alpha").unwrap();
    let s = rig.step();
    assert!(s.keys.is_empty());
    assert!(s.in_force.is_none());
    assert_eq!(s.hardware_id, HardwareId::new(MACHINE));
}

#[test]
fn swap_puts_the_other_key_in_force() {
    let mut rig = Rig::new(vendor_validator);
    rig.add_key("alpha", 1001);
    rig.add_key("beta", 2002);
    rig.hid.plug("alpha").unwrap();
    assert_eq!(rig.step().hardware_id, HardwareId::new("1001"));
    rig.hid.swap("alpha", "beta").unwrap();
    let s = rig.step();
    assert_eq!(s.keys.len(), 1);
    assert_eq!(s.hardware_id, HardwareId::new("2002"));
    assert_eq!(status_of(&s), &verified());
}

#[test]
fn busy_is_busy_not_absent_and_recovers_when_released() {
    let mut rig = Rig::new(vendor_validator);
    rig.add_key("alpha", 1001);
    rig.hid
        .make_busy(
            "alpha",
            Some(Holder {
                pid: 4242,
                command: "ykman".into(),
            }),
        )
        .unwrap();
    rig.hid.plug("alpha").unwrap();
    let s = rig.step();
    let busy_by_ykman = matches!(
        status_of(&s),
        KeyStatus::Error { kind: ErrorKind::Busy, code: "KEY_BUSY", holders, .. } if holders[0].command == "ykman"
    );
    assert!(busy_by_ykman, "expected busy, held by ykman: {:?}", status_of(&s));
    assert_eq!(s.hardware_id, HardwareId::new(MACHINE));
    rig.hid.make_busy("alpha", None).unwrap();
    let s = rig.run(Duration::from_secs(6)); // past the retry backoff
    assert_eq!(status_of(&s), &verified());
    assert_eq!(s.hardware_id, HardwareId::new("1001"));
}

#[test]
fn io_error_recovers_after_retry() {
    let mut rig = Rig::new(vendor_validator);
    rig.add_key("alpha", 1001);
    rig.hid.fail_next("alpha", ErrorKind::Io).unwrap();
    rig.hid.plug("alpha").unwrap();
    let s = rig.step();
    assert_eq!(error_kind(&s), Some(ErrorKind::Io), "{s:?}");
    let s = rig.run(Duration::from_secs(6));
    assert_eq!(status_of(&s), &verified());
}

#[test]
fn bad_signature_is_invalid() {
    let mut rig = Rig::new(vendor_validator);
    rig.add_key("alpha", 1001);
    rig.hid.corrupt("alpha", true).unwrap();
    rig.hid.plug("alpha").unwrap();
    let s = rig.step();
    assert_eq!(invalid_reason(&s), Some(InvalidReason::BadSignature), "{s:?}");
    assert!(s.in_force.is_none());
}

#[test]
fn unprovisioned_and_foreign_vendor_keys_are_invalid() {
    let mut rig = Rig::new(vendor_validator);
    // Plugged, but no credential file for its serial.
    rig.hid.insert(SimKeySpec::from_seed("stranger", 777, 1));
    rig.hid.plug("stranger").unwrap();
    let s = rig.step();
    assert_eq!(invalid_reason(&s), Some(InvalidReason::Unprovisioned), "{s:?}");
    rig.hid.unplug("stranger").unwrap();
    // Provisioned by another vendor.
    let other = VendorSigningKey::generate();
    let spec = provision_sim_key(SimKeySpec::from_seed("forged", 888, 1), &other);
    provision(&rig.store, &spec).unwrap();
    rig.hid.insert(spec);
    rig.hid.plug("forged").unwrap();
    let s = rig.step();
    assert_eq!(invalid_reason(&s), Some(InvalidReason::WrongVendor), "{s:?}");
}

#[test]
fn vanishing_mid_frame_is_a_disconnect_then_a_detach() {
    let mut rig = Rig::new(vendor_validator);
    rig.add_key("alpha", 1001);
    rig.hid.vanish_mid_frame("alpha").unwrap();
    rig.hid.plug("alpha").unwrap();
    // Feed just the attach: the validation it triggers loses the key mid-frame.
    let ev = rig.source.next_event(Duration::ZERO).unwrap().expect("attached");
    rig.driver.handle(rig.now, Input::Hotplug(ev));
    let s = rig.cell_reader.snapshot();
    assert!(!rig.hid.is_plugged("alpha"));
    assert_eq!(error_kind(&s), Some(ErrorKind::Disconnected), "{s:?}");
    let s = rig.step();
    assert!(s.keys.is_empty(), "the next poll sees it gone");
    rig.hid.plug("alpha").unwrap();
    assert_eq!(status_of(&rig.step()), &verified());
}

#[test]
fn fido_channel_busy_is_busy_and_slow_keys_are_waited_for() {
    let mut rig = Rig::new(vendor_validator);
    rig.add_key("alpha", 1001);
    rig.hid.channel_busy("alpha", true).unwrap();
    rig.hid.slow("alpha", 5).unwrap();
    rig.hid.plug("alpha").unwrap();
    let s = rig.step();
    assert_eq!(error_kind(&s), Some(ErrorKind::Busy), "{s:?}");
    rig.hid.channel_busy("alpha", false).unwrap();
    assert_eq!(status_of(&rig.run(Duration::from_secs(6))), &verified());
}

#[test]
fn fido_only_key_with_visible_usb_serial_is_verified() {
    let mut rig = Rig::new(vendor_validator);
    let spec = provision_sim_key(SimKeySpec::from_seed("f", 5005, 2), &rig.vendor);
    provision(&rig.store, &spec).unwrap();
    rig.hid.insert_with(
        spec,
        SimHidInterfaces {
            otp: false,
            fido: true,
            usb_serial_visible: true,
            serial_api_visible: true,
        },
    );
    rig.hid.plug("f").unwrap();
    let s = rig.step();
    assert_eq!(status_of(&s), &verified());
    assert_eq!(s.hardware_id, HardwareId::new("5005"));
    assert_eq!(s.keys[0].info.id.as_str(), "hid:simhid/f/1");
    assert_eq!(s.keys[0].firmware, Some(Firmware::new(5, 4, 3)), "from CTAPHID INIT");
}

#[test]
fn generic_dongles_are_serial_only_and_need_the_validator_to_allow_it() {
    let mut rig = Rig::new(vendor_validator);
    rig.hid.insert_dongle("d", 0x096e, 0x0006, Some("DNG-1"));
    rig.hid.plug("d").unwrap();
    let s = rig.step();
    assert_eq!(s.keys[0].info.capability, ProofCapability::SerialOnly);
    assert_eq!(invalid_reason(&s), Some(InvalidReason::SerialOnlyNotAllowed), "{s:?}");

    let mut rig = Rig::new(|v| vendor_validator(v).allow_serial_only(true));
    rig.hid.insert_dongle("d", 0x096e, 0x0006, Some("DNG-1"));
    rig.hid.plug("d").unwrap();
    let s = rig.step();
    assert_eq!(
        status_of(&s),
        &KeyStatus::Valid {
            proof: ProofStatus::SerialOnly
        }
    );
    assert_eq!(s.hardware_id, HardwareId::new("DNG-1"));
}

#[test]
fn spawned_monitor_follows_plug_and_unplug_by_polling() {
    let hid = SimHidTransport::new();
    let vendor = VendorSigningKey::generate();
    let (store, _dir) = temp_store();
    let spec = provision_sim_key(SimKeySpec::from_seed("alpha", 31337, 5), &vendor);
    provision(&store, &spec).unwrap();
    hid.insert(spec);
    let provider: Arc<dyn KeyProvider> = Arc::new(HidProvider::new(
        Arc::new(hid.clone()),
        HidConfig {
            poll_interval: Duration::from_millis(10),
            ..config(&store, vec![])
        },
    ));
    let cell = HardwareIdCell::new(HardwareId::new(MACHINE));
    let reader = cell.reader();
    let handle = spawn_monitor(
        cell,
        vec![provider],
        Arc::new(VendorValidator::new(vendor.public_key())),
        MonitorConfig::default(),
    )
    .unwrap();
    hid.plug("alpha").unwrap();
    wait_until(Duration::from_secs(5), "the serial published", || {
        reader.hardware_id() == HardwareId::new("31337")
    });
    let s = reader.snapshot();
    assert_eq!(
        s.in_force.as_ref().map(|k| k.status.clone()),
        Some(KeyStatus::Valid {
            proof: ProofStatus::Verified
        })
    );
    hid.unplug("alpha").unwrap();
    wait_until(Duration::from_secs(5), "the machine id back", || {
        reader.hardware_id() == HardwareId::new(MACHINE)
    });
    handle.stop();
}

#[test]
fn serial_hidden_from_otp_falls_back_to_the_usb_serial_or_fails_typed() {
    let mut rig = Rig::new(vendor_validator);
    let spec = rig.add_key("shown", 6006);
    rig.hid.insert_with(
        spec,
        SimHidInterfaces {
            usb_serial_visible: true,
            serial_api_visible: false,
            ..SimHidInterfaces::default()
        },
    );
    rig.hid.plug("shown").unwrap();
    let s = rig.step();
    assert_eq!(status_of(&s), &verified());
    assert_eq!(s.hardware_id, HardwareId::new("6006"));
    rig.hid.unplug("shown").unwrap();

    let spec = rig.add_key("hidden", 7007);
    rig.hid.insert_with(
        spec,
        SimHidInterfaces {
            serial_api_visible: false,
            ..SimHidInterfaces::default()
        },
    );
    rig.hid.plug("hidden").unwrap();
    let s = rig.step();
    assert_eq!(error_kind(&s), Some(ErrorKind::Unsupported), "{s:?}");
    assert_eq!(s.hardware_id, HardwareId::new(MACHINE));
}
