//! Unit tests of grouping, the provider and polling hot-plug over a mocked transport. The
//! full protocol stack against a virtual HID YubiKey is tested in the root package
//! (`tests/hid_*.rs`), where the simulator is available.

use std::sync::Mutex;

use super::*;

fn iface(path: &str, pid: u16, page: u16, usage: u16, container: Option<&str>) -> HidDeviceInfo {
    HidDeviceInfo {
        path: path.into(),
        vendor_id: YUBICO_VENDOR_ID,
        product_id: pid,
        serial_number: None,
        usage_page: page,
        usage,
        interface_number: if page == FIDO_USAGE_PAGE { 1 } else { 0 },
        product_string: Some("YubiKey OTP+FIDO+CCID".into()),
        container: container.map(str::to_string),
    }
}

fn otp(path: &str, c: Option<&str>) -> HidDeviceInfo {
    iface(path, 0x0407, OTP_USAGE_PAGE, OTP_USAGE, c)
}

fn fido(path: &str, c: Option<&str>) -> HidDeviceInfo {
    iface(path, 0x0407, FIDO_USAGE_PAGE, 1, c)
}

fn dongle(path: &str, serial: Option<&str>) -> HidDeviceInfo {
    HidDeviceInfo {
        path: path.into(),
        vendor_id: 0x096e,
        product_id: 0x0006,
        serial_number: serial.map(str::to_string),
        usage_page: 0xFF00,
        usage: 1,
        interface_number: 0,
        product_string: None,
        container: None,
    }
}

const DONGLE: DongleId = DongleId {
    vendor_id: 0x096e,
    product_id: 0x0006,
};

#[test]
fn dongle_ids_parse() {
    assert_eq!("096e:0006".parse::<DongleId>().unwrap(), DONGLE);
    assert!("096e".parse::<DongleId>().is_err());
    assert!("zz:01".parse::<DongleId>().is_err());
}

#[test]
fn two_interfaces_of_one_device_are_one_key() {
    let list = vec![
        fido("/dev/hidraw1", Some("usb:1-1")),
        otp("/dev/hidraw0", Some("usb:1-1")),
        otp("/dev/hidraw2", Some("usb:1-2")),
        fido("/dev/hidraw3", Some("usb:1-2")),
        // A keyboard and an unconfigured dongle are ignored.
        HidDeviceInfo {
            vendor_id: 0x046d,
            ..otp("/dev/hidraw4", None)
        },
        dongle("/dev/hidraw5", Some("D1")),
    ];
    let keys = group_devices(&list, &[]);
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].primary.path, "/dev/hidraw0");
    assert_eq!(keys[0].fido.as_ref().unwrap().path, "/dev/hidraw1");
    assert_eq!(keys[1].otp.as_ref().unwrap().path, "/dev/hidraw2");
    let info = keys[0].key_info();
    assert_eq!(info.id.as_str(), "hid:/dev/hidraw0");
    assert_eq!(info.capability, ProofCapability::Signature);
    assert_eq!(info.model, "YubiKey OTP+FIDO+CCID");

    let with_dongle = group_devices(&list, &[DONGLE]);
    assert_eq!(with_dongle.len(), 3);
    let d = with_dongle
        .iter()
        .find(|k| k.kind == HidKeyKind::Generic)
        .unwrap()
        .key_info();
    assert_eq!(d.capability, ProofCapability::SerialOnly);
    assert_eq!(d.serial, Some(Serial::new("D1")));
    assert_eq!(d.model, "HID dongle 096e:0006");
}

#[test]
fn without_containers_a_lone_pair_is_merged_but_two_keys_are_not() {
    let keys = group_devices(&[otp("/dev/hidraw0", None), fido("/dev/hidraw1", None)], &[]);
    assert_eq!(keys.len(), 1);
    assert!(keys[0].otp.is_some() && keys[0].fido.is_some());
    let keys = group_devices(
        &[
            otp("/dev/hidraw0", None),
            fido("/dev/hidraw1", None),
            otp("/dev/hidraw2", None),
            fido("/dev/hidraw3", None),
        ],
        &[],
    );
    assert_eq!(keys.len(), 4, "ambiguous: keep them apart rather than guess");
    // Same USB serial string: one key.
    let mut a = otp("/dev/hidraw0", None);
    let mut b = fido("/dev/hidraw1", None);
    a.serial_number = Some("123".into());
    b.serial_number = Some("123".into());
    assert_eq!(group_devices(&[a, b], &[]).len(), 1);
    // FIDO only: the FIDO interface names the key.
    let keys = group_devices(&[fido("/dev/hidraw7", Some("x"))], &[]);
    assert_eq!(keys[0].primary.path, "/dev/hidraw7");
    assert_eq!(keys[0].key_info().capability, ProofCapability::Signature);
    // OTP only: serial only.
    let keys = group_devices(&[otp("/dev/hidraw8", Some("y"))], &[]);
    assert_eq!(keys[0].key_info().capability, ProofCapability::SerialOnly);
}

/// A transport whose device list the test changes.
fn transport_with(list: Arc<Mutex<Result<Vec<HidDeviceInfo>>>>) -> Arc<dyn HidTransport> {
    let mut t = MockHidTransport::new();
    t.expect_enumerate().returning(move || list.lock().unwrap().clone());
    t.expect_open()
        .returning(|p| Err(Error::new(ErrorKind::Busy, format!("{p} held by another process"))));
    Arc::new(t)
}

#[test]
fn polling_reports_attach_detach_and_survives_enumeration_errors() {
    let list = Arc::new(Mutex::new(Ok(vec![
        otp("/dev/hidraw0", Some("a")),
        fido("/dev/hidraw1", Some("a")),
    ])));
    let mut src = HidPollSource::new(transport_with(Arc::clone(&list)), vec![], Duration::ZERO);
    match src.next_event(Duration::ZERO).unwrap() {
        Some(HotplugEvent::Attached(info)) => assert_eq!(info.id.as_str(), "hid:/dev/hidraw0"),
        other => panic!("expected attach, got {other:?}"),
    }
    assert!(src.next_event(Duration::ZERO).unwrap().is_none());
    *list.lock().unwrap() = Err(Error::new(ErrorKind::Io, "sysfs unreadable"));
    assert!(matches!(
        src.next_event(Duration::ZERO).unwrap(),
        Some(HotplugEvent::Error(_))
    ));
    assert!(src.next_event(Duration::ZERO).unwrap().is_none(), "reported once");
    *list.lock().unwrap() = Ok(vec![otp("/dev/hidraw0", Some("a")), fido("/dev/hidraw1", Some("a"))]);
    assert!(
        src.next_event(Duration::ZERO).unwrap().is_none(),
        "keys kept across the error"
    );
    *list.lock().unwrap() = Ok(vec![otp("/dev/hidraw2", Some("b"))]);
    let a = src.next_event(Duration::ZERO).unwrap();
    let b = src.next_event(Duration::ZERO).unwrap();
    assert!(matches!(a, Some(HotplugEvent::Detached(ref id)) if id.as_str() == "hid:/dev/hidraw0"));
    assert!(matches!(b, Some(HotplugEvent::Attached(ref i)) if i.id.as_str() == "hid:/dev/hidraw2"));
}

#[test]
fn polling_waits_for_the_interval_within_the_timeout() {
    let list = Arc::new(Mutex::new(Ok(vec![])));
    let mut src = HidPollSource::new(transport_with(Arc::clone(&list)), vec![], Duration::from_millis(20));
    assert!(src.next_event(Duration::ZERO).unwrap().is_none());
    *list.lock().unwrap() = Ok(vec![otp("/dev/hidraw0", None)]);
    // Not due yet with a zero timeout; seen within a generous timeout.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = None;
    while got.is_none() && Instant::now() < deadline {
        got = src.next_event(Duration::from_millis(100)).unwrap();
    }
    assert!(matches!(got, Some(HotplugEvent::Attached(_))));
}

#[test]
fn provider_lists_opens_and_reports_busy() {
    let list = Arc::new(Mutex::new(Ok(vec![
        otp("/dev/hidraw0", Some("a")),
        fido("/dev/hidraw1", Some("a")),
    ])));
    let provider = HidProvider::new(transport_with(list), HidConfig::default());
    assert_eq!(provider.kind(), BackendKind::Hid);
    let infos = provider.list().unwrap();
    assert_eq!(infos.len(), 1);
    let mut key = provider.open(&infos[0].id).unwrap();
    let e = key.read_serial().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert_eq!(
        provider
            .open(&KeyId::new(BackendKind::Hid, "/dev/hidraw9"))
            .unwrap_err()
            .kind(),
        ErrorKind::NotPresent
    );
}

#[test]
fn generic_dongles_are_serial_only() {
    let mut t = MockHidTransport::new();
    t.expect_enumerate()
        .returning(|| Ok(vec![dongle("/dev/hidraw5", Some("D-42")), dongle("/dev/hidraw6", None)]));
    t.expect_open().returning(|_| Ok(Box::new(MockHidConnection::new())));
    let config = HidConfig {
        dongles: vec![DONGLE],
        ..HidConfig::default()
    };
    let provider = HidProvider::new(Arc::new(t), config);
    let infos = provider.list().unwrap();
    assert_eq!(infos.len(), 2);
    let mut key = provider.open(&infos[0].id).unwrap();
    assert_eq!(key.read_serial().unwrap(), Serial::new("D-42"));
    assert!(key.prover().is_none(), "a generic dongle cannot prove possession");
    assert_eq!(key.read_firmware().unwrap_err().kind(), ErrorKind::Unsupported);
    let mut key = provider.open(&infos[1].id).unwrap();
    assert_eq!(key.read_serial().unwrap_err().kind(), ErrorKind::Unsupported);
}

#[test]
fn config_reads_the_environment_leniently() {
    // Through a lookup function: setting real variables would race with other test threads.
    let vars = std::collections::HashMap::from([
        (DONGLES_ENV, "096e:0006, bogus"),
        (POLL_MS_ENV, "40"),
        (PROVISIONING_DIR_ENV, "/tmp/keyfloat-creds"),
    ]);
    let c = HidConfig::from_lookup(|name| vars.get(name).map(|v| v.to_string()));
    assert_eq!(c.dongles, vec![DONGLE]);
    assert_eq!(c.poll_interval, Duration::from_millis(40));
    assert_eq!(
        c.provisioning.unwrap().dir(),
        std::path::Path::new("/tmp/keyfloat-creds")
    );
    let c = HidConfig::from_lookup(|name| (name == POLL_MS_ENV).then(|| "0".to_string()));
    assert_eq!(c, HidConfig::default(), "a zero interval is ignored");
    assert_eq!(HidConfig::default().poll_interval, Duration::from_millis(250));
    assert_eq!(HidConfig::default().rp_id, "keyfloat.license");
}
