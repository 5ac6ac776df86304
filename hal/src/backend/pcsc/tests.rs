use std::cell::Cell;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, SigningKey};
use sha2::{Digest, Sha256};

use super::watch::Tracker;
use super::*;
use crate::key::HotplugEvent;
use crate::piv::scripted::ScriptedTransport;
use crate::piv::tlv;

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).expect("test hex")
}

const SELECT_PIV: &str = "00A4040005A00000030800";
const SELECT_OK: &str = "6111 4F06000010000100 7907 4F05A000000308 9000";

/// A script whose card first answers the PIV SELECT (as every key operation starts).
fn selected() -> ScriptedTransport {
    ScriptedTransport::new().expect(h(SELECT_PIV), h(SELECT_OK))
}

/// A card channel over a scripted transport (shared so the test can check `done()`).
#[derive(Clone)]
struct Scripted(Arc<Mutex<ScriptedTransport>>);

impl CardChannel for Scripted {
    fn transaction(&mut self, op: &mut dyn FnMut(&mut dyn ApduTransport) -> Result<()>) -> Result<()> {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        op(&mut *t)
    }
}

fn key_with(script: ScriptedTransport, timeout: Duration) -> (PcscKey, Scripted) {
    let channel = Scripted(Arc::new(Mutex::new(script)));
    let key = PcscKey::with_channel(bare_info("Virtual PCD 00 00"), Box::new(channel.clone()), timeout).unwrap();
    (key, channel)
}

fn done(c: &Scripted) {
    c.0.lock().unwrap().done();
}

#[test]
fn reads_serial_and_firmware() {
    let script = selected()
        .expect(h("00F8000000"), h("00BC614E 9000"))
        .expect(h(SELECT_PIV), h(SELECT_OK))
        .expect(h("00FD000000"), h("050403 9000"));
    let (mut key, ch) = key_with(script, Duration::from_secs(5));
    assert_eq!(key.read_serial().unwrap(), Serial::new("12345678"));
    assert_eq!(key.read_firmware().unwrap(), Firmware::new(5, 4, 3));
    done(&ch);
}

#[test]
fn signature_is_ecdsa_sha256_over_the_challenge() {
    let sk = SigningKey::random(&mut rand_core::OsRng);
    let challenge = b"fresh challenge from the monitor";
    let digest = Sha256::digest(challenge);
    let sig: Signature = sk.sign_prehash(&digest).unwrap();
    let der = sig.to_der().as_bytes().to_vec();
    let mut cmd = h("0087119E267C24820081 20");
    cmd.extend_from_slice(&digest);
    cmd.push(0);
    let mut reply = tlv(0x7C, &tlv(0x82, &der));
    reply.extend_from_slice(&[0x90, 0x00]);
    let script = selected().expect(cmd, reply);
    let (mut key, ch) = key_with(script, Duration::from_secs(5));
    let proof = key.sign_challenge(challenge).unwrap();
    assert_eq!(proof.scheme, SignatureScheme::EcdsaP256Sha256);
    assert!(proof.signed_prefix.is_empty());
    let parsed = Signature::from_der(&proof.signature).unwrap();
    sk.verifying_key()
        .verify(&proof.signed_message(challenge), &parsed)
        .expect("card signature verifies as ECDSA-SHA256 over the challenge");
    done(&ch);
}

#[test]
fn certificate_with_61xx_chaining() {
    let cert: Vec<u8> = (0..400u32).map(|i| (i * 7) as u8).collect();
    let mut object = tlv(0x70, &cert);
    object.extend_from_slice(&h("710100 FE00"));
    let answer = tlv(0x53, &object);
    let mut r1 = answer[..256].to_vec();
    r1.extend_from_slice(&[0x61, 0x00]);
    let mut r2 = answer[256..].to_vec();
    r2.extend_from_slice(&[0x90, 0x00]);
    let script = selected()
        .expect(h("00CB3FFF055C035FC10100"), r1)
        .expect(h("00C0000000"), r2);
    let (mut key, ch) = key_with(script, Duration::from_secs(5));
    assert_eq!(key.read_certificate().unwrap(), cert);
    done(&ch);
}

#[test]
fn status_words_become_typed_errors() {
    let script = selected()
        .expect(h("00CB3FFF055C035FC10100"), h("6A82"))
        .expect(h(SELECT_PIV), h("6A82"));
    let (mut key, ch) = key_with(script, Duration::from_secs(5));
    assert_eq!(key.read_certificate().unwrap_err().kind(), ErrorKind::NotPresent);
    assert_eq!(key.read_serial().unwrap_err().kind(), ErrorKind::NotPresent);
    done(&ch);

    let digest = Sha256::digest(b"c");
    let mut cmd = h("0087119E267C24820081 20");
    cmd.extend_from_slice(&digest);
    cmd.push(0);
    let script = selected().expect(&cmd, h("6982"));
    let (mut key, ch) = key_with(script, Duration::from_secs(5));
    let e = key.sign_challenge(b"c").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    assert!(e.message().contains("PIN required"));
    done(&ch);
}

#[test]
fn busy_card_is_busy_and_names_holders_never_absent() {
    let busy = map_error(pcsc::Error::SharingViolation, Phase::Connect, "connect");
    assert_eq!(busy.kind(), ErrorKind::Busy);
    assert_eq!(busy.code(), "KEY_BUSY");
    // The /proc scan ran (it never lists ourselves).
    assert!(busy.holders().iter().all(|h| h.pid != std::process::id()));
    match probe_outcome("Virtual PCD 00 00", Err(busy.clone())) {
        Probe::Busy(info) => {
            assert_eq!(info.serial, None);
            assert!(info.model.contains("held by another process"));
        }
        Probe::Key(_) => panic!("a busy card is re-identified once free: expected Probe::Busy"),
        Probe::NotAKey => panic!("a busy card must not be reported as absent"),
    }
    let script = ScriptedTransport::new().expect_err(h(SELECT_PIV), busy);
    let (mut key, ch) = key_with(script, Duration::from_secs(5));
    assert_eq!(key.read_serial().unwrap_err().kind(), ErrorKind::Busy);
    done(&ch);
}

#[test]
fn removed_mid_apdu_is_disconnected() {
    let script = selected()
        .expect_err(
            h("00F8000000"),
            map_error(pcsc::Error::NotTransacted, Phase::Transmit, "transmit"),
        )
        .expect_err(
            h(SELECT_PIV),
            map_error(pcsc::Error::RemovedCard, Phase::Transmit, "transmit"),
        );
    let (mut key, ch) = key_with(script, Duration::from_secs(5));
    assert_eq!(key.read_serial().unwrap_err().kind(), ErrorKind::Disconnected);
    assert_eq!(key.read_serial().unwrap_err().kind(), ErrorKind::Disconnected);
    done(&ch);
}

#[test]
fn hung_card_times_out_and_the_key_stays_failed() {
    let script = selected().hang_on(h("00F8000000"));
    let (mut key, _ch) = key_with(script, Duration::from_millis(200));
    let started = Instant::now();
    let e = key.read_serial().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    assert!(started.elapsed() < Duration::from_secs(5), "the caller was not blocked");
    // The worker is abandoned: later calls fail at once instead of queueing behind it.
    assert_eq!(key.read_firmware().unwrap_err().kind(), ErrorKind::Timeout);
}

#[test]
fn pcsc_errors_map_per_phase() {
    use pcsc::Error as P;
    let k = |e, p| map_error(e, p, "x").kind();
    assert_eq!(k(P::NoSmartcard, Phase::Connect), ErrorKind::NotPresent);
    assert_eq!(k(P::UnknownReader, Phase::Connect), ErrorKind::NotPresent);
    assert_eq!(k(P::RemovedCard, Phase::Transmit), ErrorKind::Disconnected);
    assert_eq!(k(P::NotTransacted, Phase::Transmit), ErrorKind::Disconnected);
    assert_eq!(k(P::ReaderUnavailable, Phase::Transmit), ErrorKind::Disconnected);
    assert_eq!(k(P::NoService, Phase::Service), ErrorKind::ServiceUnavailable);
    assert_eq!(k(P::CommError, Phase::Transmit), ErrorKind::ServiceUnavailable);
    assert_eq!(k(P::Timeout, Phase::Service), ErrorKind::Timeout);
    assert_eq!(k(P::SharingViolation, Phase::Transmit), ErrorKind::Busy);
}

fn key_probe(serial: u32) -> impl FnMut(&str) -> Probe {
    move |reader: &str| {
        let mut info = bare_info(reader);
        info.serial = Some(Serial::from(serial));
        Probe::Key(info)
    }
}

/// `probe`, counting its calls in `probes`.
fn counting<'a>(probes: &'a Cell<u32>, mut probe: impl FnMut(&str) -> Probe + 'a) -> impl FnMut(&str) -> Probe + 'a {
    move |reader| {
        probes.set(probes.get() + 1);
        probe(reader)
    }
}

#[test]
fn tracker_turns_reader_states_into_events() {
    let mut t = Tracker::default();
    let mut out = Vec::new();
    let probes = Cell::new(0);
    let mut identify = counting(&probes, key_probe(7));
    t.observe("R0", false, 0, &mut identify, &mut out);
    assert!(out.is_empty());
    t.observe("R0", true, 1, &mut identify, &mut out);
    assert!(matches!(out.as_slice(), [HotplugEvent::Attached(i)] if i.serial == Some(Serial::from(7))));
    out.clear();
    // In-use flags changed, same card: nothing.
    t.observe("R0", true, 1, &mut identify, &mut out);
    assert!(out.is_empty());
    // Removed and re-inserted between two looks: both events.
    t.observe("R0", true, 3, &mut identify, &mut out);
    assert!(matches!(
        out.as_slice(),
        [HotplugEvent::Detached(_), HotplugEvent::Attached(_)]
    ));
    out.clear();
    t.observe("R0", false, 4, &mut identify, &mut out);
    assert!(matches!(out.as_slice(), [HotplugEvent::Detached(id)] if id.as_str() == "pcsc:R0"));
    out.clear();
    t.observe("R1", true, 1, &mut identify, &mut out);
    out.clear();
    t.retain_readers(&["R0".into()], &mut out);
    assert!(matches!(out.as_slice(), [HotplugEvent::Detached(id)] if id.as_str() == "pcsc:R1"));
    assert_eq!(probes.get(), 3);
}

#[test]
fn a_card_busy_at_insertion_is_reported_then_identified_when_released() {
    let mut t = Tracker::default();
    let mut out = Vec::new();
    let busy = |r: &str| {
        let mut info = bare_info(r);
        info.model = "smart card (held by another process)".into();
        Probe::Busy(info)
    };
    t.observe("R0", true, 1, &mut |r| busy(r), &mut out);
    assert!(matches!(out.as_slice(), [HotplugEvent::Attached(i)] if i.serial.is_none()));
    out.clear();
    // Still held: a state change (someone else's connect) probes again, no event.
    t.observe("R0", true, 1, &mut |r| busy(r), &mut out);
    assert!(out.is_empty());
    // Released: the same key again, now with its serial.
    t.observe("R0", true, 1, &mut key_probe(9), &mut out);
    assert!(matches!(out.as_slice(), [HotplugEvent::Attached(i)] if i.serial == Some(Serial::from(9))));
    out.clear();
    // Identified: later state changes do not probe any more.
    t.observe("R0", true, 1, &mut |_| panic!("no probe expected"), &mut out);
    assert!(out.is_empty());
}

#[test]
fn non_piv_cards_are_probed_once_per_insertion() {
    let mut t = Tracker::default();
    let mut out = Vec::new();
    let probes = Cell::new(0);
    let mut identify = counting(&probes, |_| Probe::NotAKey);
    t.observe("R0", true, 1, &mut identify, &mut out);
    t.observe("R0", true, 1, &mut identify, &mut out);
    t.observe("R0", false, 2, &mut identify, &mut out);
    assert!(out.is_empty());
    assert_eq!(probes.get(), 1);
}

mod tracker_model {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any sequence of reader observations gives, per reader, alternating Attached /
        /// Detached events, and the keys reported attached are exactly the tracked ones.
        #[test]
        fn events_alternate_and_match_the_tracked_state(
            ops in prop::collection::vec((0usize..3, any::<bool>(), 0u32..3, any::<bool>()), 0..60)
        ) {
            let readers = ["R0", "R1", "R2"];
            let mut counts = [0u32; 3];
            let mut t = Tracker::default();
            let mut attached: BTreeSet<String> = BTreeSet::new();
            for (r, present, bump, is_key) in ops {
                counts[r] += bump;
                let mut out = Vec::new();
                let mut identify = |reader: &str| match (is_key, bump) {
                    (true, 0) => { let mut i = bare_info(reader); i.model = "busy".into(); Probe::Busy(i) }
                    (true, _) => key_probe(1)(reader),
                    (false, _) => Probe::NotAKey,
                };
                if r == 2 && !present && bump == 2 {
                    // The reader itself goes away.
                    let listed: Vec<String> = readers[..2].iter().map(|s| s.to_string()).collect();
                    t.retain_readers(&listed, &mut out);
                } else {
                    t.observe(readers[r], present, counts[r], &mut identify, &mut out);
                }
                for ev in out {
                    match ev {
                        HotplugEvent::Attached(info) => prop_assert!(attached.insert(info.id.to_string())),
                        HotplugEvent::Detached(id) => prop_assert!(attached.remove(id.as_str())),
                        HotplugEvent::Error(e) => prop_assert!(false, "unexpected error event {e}"),
                    }
                }
                let tracked: BTreeSet<String> = t
                    .readers
                    .values()
                    .filter_map(|s| s.key.as_ref().map(|k| k.id.to_string()))
                    .collect();
                prop_assert_eq!(&tracked, &attached);
            }
        }
    }
}

#[test]
fn odd_key_ids_are_errors_not_panics() {
    let provider = PcscProvider::new();
    let e = provider
        .open(&KeyId::new(BackendKind::Pcsc, "bad\0reader"))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    let e = provider
        .open(&KeyId::new(BackendKind::Hid, "/dev/hidraw0"))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotPresent);
}
