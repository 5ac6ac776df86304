//! The virtual HID YubiKey against the HID backend's protocol code, report by report.

use std::sync::mpsc;
use std::time::Duration;

use keyfloat_hal::backend::hid::ctaphid::{CtapHidChannel, CtapTiming, MAX_MESSAGE_SIZE};
use keyfloat_hal::backend::hid::otp::{OtpInterface, OtpTiming};
use keyfloat_hal::backend::hid::{ctap2, ctaphid, HidTransport};
use keyfloat_hal::Firmware;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::Signature;

use super::*;

fn bus() -> (SimHidTransport, SimKeySpec) {
    let t = SimHidTransport::new();
    let spec = SimKeySpec::from_seed("a", 12345678, 3);
    t.insert(spec.clone());
    t.plug("a").unwrap();
    (t, spec)
}

fn otp_timing() -> OtpTiming {
    OtpTiming {
        poll_delay: Duration::from_millis(1),
        ready_timeout: Duration::from_millis(50),
        response_timeout: Duration::from_millis(50),
    }
}

fn ctap_timing() -> CtapTiming {
    CtapTiming {
        response_timeout: Duration::from_millis(200),
        max_transaction: Duration::from_secs(2),
        read_slice: Duration::from_millis(20),
    }
}

#[test]
fn enumerates_two_interfaces_of_one_device() {
    let (t, _) = bus();
    let list = t.enumerate().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].path, "simhid/a/0");
    assert_eq!((list[0].usage_page, list[0].usage), (OTP_USAGE_PAGE, OTP_USAGE));
    assert_eq!(list[1].usage_page, FIDO_USAGE_PAGE);
    assert_eq!(list[0].container, list[1].container);
    assert_eq!(list[0].serial_number, None, "serial not visible over USB by default");
    t.unplug("a").unwrap();
    assert!(t.enumerate().unwrap().is_empty());
}

#[test]
fn otp_serial_and_firmware() {
    let (t, _) = bus();
    let mut conn = t.open("simhid/a/0").unwrap();
    let mut otp = OtpInterface::new(conn.as_mut(), otp_timing());
    assert_eq!(otp.status().unwrap().firmware, Firmware::new(5, 4, 3));
    assert_eq!(otp.read_serial().unwrap(), 12345678);
    // Again: the reset left the key ready for the next command.
    assert_eq!(otp.read_serial().unwrap(), 12345678);
}

#[test]
fn otp_stall_is_waited_for_then_times_out() {
    let (t, _) = bus();
    let mut conn = t.open("simhid/a/0").unwrap();
    t.stall_otp("a", 3).unwrap();
    assert_eq!(
        OtpInterface::new(conn.as_mut(), otp_timing()).read_serial().unwrap(),
        12345678
    );
    t.stall_otp("a", 1_000_000).unwrap();
    let e = OtpInterface::new(conn.as_mut(), otp_timing())
        .read_serial()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
}

#[test]
fn vanishing_mid_frame_is_disconnected() {
    let (t, _) = bus();
    let mut conn = t.open("simhid/a/0").unwrap();
    t.vanish_mid_frame("a").unwrap();
    let e = OtpInterface::new(conn.as_mut(), otp_timing())
        .read_serial()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Disconnected);
    assert!(!t.is_plugged("a"));
    assert!(t.enumerate().unwrap().is_empty());
    // Re-plugged, old connections stay dead, new ones work.
    t.plug("a").unwrap();
    assert_eq!(
        OtpInterface::new(conn.as_mut(), otp_timing())
            .status()
            .unwrap_err()
            .kind(),
        ErrorKind::Disconnected
    );
    let mut conn = t.open("simhid/a/0").unwrap();
    assert!(OtpInterface::new(conn.as_mut(), otp_timing()).read_serial().is_ok());
}

#[test]
fn busy_open_names_the_holder() {
    let (t, _) = bus();
    t.make_busy(
        "a",
        Some(Holder {
            pid: 7,
            command: "ykman".into(),
        }),
    )
    .unwrap();
    let e = t.open("simhid/a/1").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert_eq!(e.holders()[0].command, "ykman");
    t.make_busy("a", None).unwrap();
    assert!(t.open("simhid/a/1").is_ok());
    assert_eq!(t.open("simhid/zz/1").unwrap_err().kind(), ErrorKind::NotPresent);
    assert_eq!(t.open("elsewhere").unwrap_err().kind(), ErrorKind::NotPresent);
}

#[test]
fn ctaphid_ping_of_the_maximum_size_roundtrips() {
    let (t, _) = bus();
    let mut conn = t.open("simhid/a/1").unwrap();
    let mut ch = CtapHidChannel::open(conn.as_mut(), ctap_timing(), [9; 8]).unwrap();
    assert_eq!(ch.init_response().version, Firmware::new(5, 4, 3));
    let payload: Vec<u8> = (0..MAX_MESSAGE_SIZE).map(|i| (i % 253) as u8).collect();
    assert_eq!(ch.transact(ctaphid::cmd::PING, &payload).unwrap(), payload);
}

#[test]
fn get_info_and_get_assertion_with_keepalives() {
    let (t, spec) = bus();
    t.slow("a", 3).unwrap();
    let mut conn = t.open("simhid/a/1").unwrap();
    let mut ch = CtapHidChannel::open(conn.as_mut(), ctap_timing(), [1; 8]).unwrap();
    let info = ctap2::parse_get_info(&ch.cbor(&ctap2::get_info_request()).unwrap()).unwrap();
    assert!(info.versions.contains(&"FIDO_2_0".to_string()));
    assert_eq!(info.firmware_version, Some(0x050403));

    let challenge = [0x5A; 32];
    let cred = credential_id(&spec);
    let req = ctap2::get_assertion_request(ctap2::DEFAULT_RP_ID, &challenge, &cred).unwrap();
    let a = ctap2::parse_get_assertion(&ch.cbor(&req).unwrap()).unwrap();
    let header = ctap2::check_assertion(&a, ctap2::DEFAULT_RP_ID, &cred).unwrap();
    assert_eq!(header.flags, 0);
    assert_eq!(header.sign_count, 1);
    let mut msg = a.auth_data.clone();
    msg.extend_from_slice(&challenge);
    let sig = Signature::from_der(&a.signature).unwrap();
    assert!(spec.verifying_key().verify(&msg, &sig).is_ok());

    // Unknown credential, other relying party, or a touch wanted: refused.
    let req = ctap2::get_assertion_request(ctap2::DEFAULT_RP_ID, &challenge, b"nope").unwrap();
    assert_eq!(
        ctap2::parse_get_assertion(&ch.cbor(&req).unwrap()).unwrap_err().kind(),
        ErrorKind::NotPresent
    );
    let req = ctap2::get_assertion_request("example.com", &challenge, &cred).unwrap();
    assert!(ctap2::parse_get_assertion(&ch.cbor(&req).unwrap()).is_err());
}

#[test]
fn corrupt_key_signs_something_else() {
    let (t, spec) = bus();
    t.corrupt("a", true).unwrap();
    let mut conn = t.open("simhid/a/1").unwrap();
    let mut ch = CtapHidChannel::open(conn.as_mut(), ctap_timing(), [1; 8]).unwrap();
    let cred = credential_id(&spec);
    let req = ctap2::get_assertion_request(ctap2::DEFAULT_RP_ID, &[1; 32], &cred).unwrap();
    let a = ctap2::parse_get_assertion(&ch.cbor(&req).unwrap()).unwrap();
    let mut msg = a.auth_data.clone();
    msg.extend_from_slice(&[1; 32]);
    let sig = Signature::from_der(&a.signature).unwrap();
    assert!(spec.verifying_key().verify(&msg, &sig).is_err());
}

#[test]
fn channel_busy_and_bad_channels_are_errors() {
    let (t, _) = bus();
    let mut conn = t.open("simhid/a/1").unwrap();
    let mut ch = CtapHidChannel::open(conn.as_mut(), ctap_timing(), [1; 8]).unwrap();
    t.channel_busy("a", true).unwrap();
    assert_eq!(ch.cbor(&[ctap2::GET_INFO]).unwrap_err().kind(), ErrorKind::Busy);
    t.channel_busy("a", false).unwrap();
    assert!(ch.cbor(&[ctap2::GET_INFO]).is_ok());
    // A message on a channel that was never allocated.
    let mut raw = [0u8; 65];
    raw[1..].copy_from_slice(&ctaphid::fragment(0x0BAD_0BAD, ctaphid::cmd::PING, b"x").unwrap()[0]);
    conn.write(&raw).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(conn.read_timeout(&mut buf, Duration::from_millis(10)).unwrap(), 64);
    assert_eq!(&buf[4..8], &[ctaphid::cmd::ERROR, 0, 1, ctaphid::err::INVALID_CHANNEL]);
}

#[test]
fn fail_next_fails_once() {
    let (t, _) = bus();
    let mut conn = t.open("simhid/a/0").unwrap();
    t.fail_next("a", ErrorKind::Io).unwrap();
    assert_eq!(
        OtpInterface::new(conn.as_mut(), otp_timing())
            .status()
            .unwrap_err()
            .kind(),
        ErrorKind::Io
    );
    assert!(OtpInterface::new(conn.as_mut(), otp_timing()).status().is_ok());
}

#[test]
fn provisioning_needs_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let store = ProvisioningStore::new(dir.path());
    let spec = SimKeySpec::from_seed("a", 1, 1);
    assert_eq!(provision(&store, &spec).unwrap_err().kind(), ErrorKind::InvalidData);
    let spec = spec.with_certificate(vec![0x30, 0x00]);
    provision(&store, &spec).unwrap();
    let cred = store.load(&spec.serial).unwrap().unwrap();
    assert_eq!(cred.credential_id, credential_id(&spec));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Whatever a host writes, the virtual key answers or ignores it; it never panics.
    #[test]
    fn arbitrary_reports_never_panic_the_virtual_key(
        writes in proptest::collection::vec(proptest::collection::vec(0u8.., 65..=65), 0..12),
        features in proptest::collection::vec(proptest::collection::vec(0u8.., 9..=9), 0..12),
    ) {
        let (t, _) = bus();
        let mut fido = t.open("simhid/a/1").unwrap();
        let mut otp = t.open("simhid/a/0").unwrap();
        let mut buf = [0u8; 64];
        // Allocate a channel so that half the packets reach the message layer.
        let mut init = [0u8; 65];
        init[1..].copy_from_slice(&ctaphid::fragment(ctaphid::BROADCAST_CID, ctaphid::cmd::INIT, &[7; 8]).unwrap()[0]);
        fido.write(&init).unwrap();
        fido.read_timeout(&mut buf, Duration::ZERO).unwrap();
        let cid = [buf[15], buf[16], buf[17], buf[18]];
        for w in &writes {
            let mut w = w.clone();
            if w[0] % 2 == 0 {
                w[1..5].copy_from_slice(&cid);
            }
            let _ = fido.write(&w);
            while fido.read_timeout(&mut buf, Duration::ZERO).unwrap_or(0) > 0 {}
        }
        let mut fbuf = [0u8; 9];
        for f in &features {
            let _ = otp.send_feature_report(f);
            let _ = otp.get_feature_report(&mut fbuf);
        }
    }
}

/// Hangs key `a` and starts reading its serial on a thread: the read blocks until the
/// key is released or pulled; its result arrives on the channel.
fn read_serial_of_hung_key(t: &SimHidTransport) -> (mpsc::Receiver<Result<u32>>, std::thread::JoinHandle<()>) {
    t.hang("a", true).unwrap();
    let mut conn = t.open("simhid/a/0").unwrap();
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let r = OtpInterface::new(conn.as_mut(), otp_timing()).read_serial();
        tx.send(r).unwrap();
    });
    (rx, worker)
}

#[test]
fn a_hung_key_blocks_its_reports_until_released_or_pulled() {
    let (t, _) = bus();
    let (rx, worker) = read_serial_of_hung_key(&t);
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err(), "still blocked");
    assert_eq!(t.enumerate().unwrap().len(), 2, "enumeration does not hang");
    t.hang("a", false).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap(), 12345678);
    worker.join().unwrap();

    let (rx, worker) = read_serial_of_hung_key(&t);
    t.unplug("a").unwrap();
    let e = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Disconnected, "{e}");
    worker.join().unwrap();
}
