#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use proptest::prelude::*;

use super::scripted::ScriptedTransport;
use super::session::{identify, read_certificate, read_serial, sign_p256, sign_rsa2048, sign_with_slot, Identity};
use super::*;

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).expect("test hex")
}

const SELECT_PIV: &str = "00A4040005A00000030800";
const SELECT_PIV_OK: &str = "6111 4F06000010000100 7907 4F05A000000308 9000";

#[test]
fn builders_encode_like_the_tools() {
    assert_eq!(select(AID_PIV).encode(), h(SELECT_PIV));
    assert_eq!(get_version().encode(), h("00FD000000"));
    assert_eq!(get_serial().encode(), h("00F8000000"));
    assert_eq!(otp_get_serial().encode(), h("0001100000"));
    assert_eq!(mgmt_read_config().encode(), h("001D000000"));
    assert_eq!(get_data(&[0x5F, 0xC1, 0x01]).encode(), h("00CB3FFF055C035FC10100"));
    assert_eq!(get_response(0).encode(), h("00C0000000"));
}

#[test]
fn parses_every_case() {
    let a = Apdu::parse(&h("001D0000")).unwrap();
    assert_eq!((a.ins, a.data.len(), a.le), (0x1D, 0, None));
    let a = Apdu::parse(&h("00FD000000")).unwrap();
    assert_eq!(a.le, Some(256));
    let a = Apdu::parse(&h("00CB3FFF055C035FC105")).unwrap();
    assert_eq!((a.data, a.le), (h("5C035FC105"), None));
    let a = Apdu::parse(&h("00CB3FFF035C017E08")).unwrap();
    assert_eq!((a.data, a.le), (h("5C017E"), Some(8)));
    let a = Apdu::parse(&h("00CB3FFF0000055C035FFF00")).unwrap();
    assert_eq!((a.data, a.le), (h("5C035FFF00"), None));
    let a = Apdu::parse(&h("00CB3FFF0000055C035FFF000000")).unwrap();
    assert_eq!(a.le, Some(65536));
    let a = Apdu::parse(&h("00C00000000100")).unwrap();
    assert_eq!((a.data.len(), a.le), (0, Some(256)));
    assert_eq!(Apdu::parse(&h("00A404")), Err(ApduParseError::TooShort));
    assert_eq!(Apdu::parse(&h("00A4040005A000")), Err(ApduParseError::BadLength));
}

#[test]
fn status_words_map_to_kinds() {
    assert_eq!(status_error(0x6982, "x").kind(), ErrorKind::PermissionDenied);
    assert!(status_error(0x6982, "x").message().contains("PIN required"));
    assert_eq!(status_error(0x6A82, "x").kind(), ErrorKind::NotPresent);
    assert_eq!(status_error(0x6A88, "x").kind(), ErrorKind::NotPresent);
    assert_eq!(status_error(0x6D00, "x").kind(), ErrorKind::Unsupported);
    assert_eq!(status_error(0x6F00, "x").kind(), ErrorKind::Protocol);
    assert_eq!(status_error(0x6A80, "x").status_word(), Some(sw::WRONG_DATA));
}

#[test]
fn identifies_a_yubikey_5() {
    let mut t = ScriptedTransport::new()
        .expect(h(SELECT_PIV), h(SELECT_PIV_OK))
        .expect(h("00FD000000"), h("050403 9000"))
        .expect(h("00F8000000"), h("00BC614E 9000"));
    let id = identify(&mut t).unwrap();
    assert_eq!(
        id,
        Identity {
            serial: 12345678,
            firmware: Some(Firmware::new(5, 4, 3))
        }
    );
    t.done();
}

#[test]
fn serial_falls_back_to_management_then_otp() {
    let mut t = ScriptedTransport::new()
        .expect(h("00F8000000"), h("6D00"))
        .expect(h("00A4040008A00000052747111700"), h("352E342E33 9000"))
        .expect(
            h("001D000000"),
            h("24 0102023B 020400BC614E 0302023B 040101 0503050403 080100 0A0100 0D02023B 0E02023B 9000"),
        )
        .expect(h(SELECT_PIV), h(SELECT_PIV_OK));
    assert_eq!(read_serial(&mut t).unwrap(), 12345678);
    t.done();

    // YubiKey NEO: no management applet, serial from the OTP applet.
    let mut t = ScriptedTransport::new()
        .expect(h("00F8000000"), h("6D00"))
        .expect(h("00A4040008A00000052747111700"), h("6A82"))
        .expect(h("00A4040008A00000052720010100"), h("030400 0500 00 9000"))
        .expect(h("0001100000"), h("0012D687 9000"))
        .expect(h(SELECT_PIV), h(SELECT_PIV_OK));
    assert_eq!(read_serial(&mut t).unwrap(), 1234567);
    t.done();
}

#[test]
fn certificate_read_follows_61xx_chaining() {
    let cert: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    let mut object = tlv(0x70, &cert);
    object.extend_from_slice(&h("710100 FE00"));
    let answer = tlv(0x53, &object);
    let (first, rest) = answer.split_at(256);
    let mut r1 = first.to_vec();
    r1.extend_from_slice(&[0x61, rest.len() as u8]);
    let mut r2 = rest.to_vec();
    r2.extend_from_slice(&[0x90, 0x00]);
    let mut t = ScriptedTransport::new()
        .expect(h("00CB3FFF055C035FC10100"), r1)
        .expect([0x00, 0xC0, 0x00, 0x00, rest.len() as u8], r2);
    assert_eq!(read_certificate(&mut t, slot::CARD_AUTH).unwrap(), cert);
    t.done();
}

#[test]
fn missing_certificate_is_not_present_and_pin_errors_are_permission() {
    let mut t = ScriptedTransport::new().expect(h("00CB3FFF055C035FC10100"), h("6A82"));
    assert_eq!(
        read_certificate(&mut t, 0x9E).unwrap_err().kind(),
        ErrorKind::NotPresent
    );
    let mut t = ScriptedTransport::new().expect(h("00CB3FFF055C035FC10100"), h("530471007100 9000"));
    assert_eq!(
        read_certificate(&mut t, 0x9E).unwrap_err().kind(),
        ErrorKind::NotPresent
    );
    let mut t = ScriptedTransport::new().expect(h("00CB3FFF055C035FC10100"), h("5307 7002AABB 710101 9000"));
    assert_eq!(
        read_certificate(&mut t, 0x9E).unwrap_err().kind(),
        ErrorKind::Unsupported
    );

    let digest = sha2::Sha256::digest(b"challenge");
    let mut cmd = h("0087119A267C24820081 20");
    cmd.extend_from_slice(&digest);
    cmd.push(0);
    let mut t = ScriptedTransport::new().expect(&cmd, h("6982"));
    let e = sign_p256(&mut t, 0x9A, b"challenge").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    assert!(e.to_string().contains("PIN required"));
    t.done();
}

use sha2::Digest;

#[test]
fn p256_signing_sends_the_digest_and_returns_der() {
    let digest = sha2::Sha256::digest(b"nonce");
    let mut cmd = h("0087119E267C24820081 20");
    cmd.extend_from_slice(&digest);
    cmd.push(0);
    let der = h("3006020101020102");
    let mut reply = tlv(0x7C, &tlv(0x82, &der));
    reply.extend_from_slice(&[0x90, 0x00]);
    let mut t = ScriptedTransport::new().expect(&cmd, reply);
    assert_eq!(sign_p256(&mut t, 0x9E, b"nonce").unwrap(), der);
    t.done();
}

#[test]
fn rsa_signing_chains_the_command_and_the_response() {
    let digest: [u8; 32] = sha2::Sha256::digest(b"nonce").into();
    let em = pkcs1_v15_sha256(&digest, 256).unwrap();
    assert_eq!(&em[..3], &[0, 1, 0xFF]);
    assert_eq!(em.len(), 256);
    let mut body = h("7C820106 8200 81820100");
    body.extend_from_slice(&em);
    assert_eq!(body.len(), 266);
    let mut c1 = h("1087079E FF");
    c1.extend_from_slice(&body[..255]);
    let mut c2 = h("0087079E 0B");
    c2.extend_from_slice(&body[255..]);
    c2.push(0);
    let sig = vec![0x5Au8; 256];
    let answer = tlv(0x7C, &tlv(0x82, &sig));
    let mut r1 = answer[..256].to_vec();
    r1.extend_from_slice(&[0x61, (answer.len() - 256) as u8]);
    let mut r2 = answer[256..].to_vec();
    r2.extend_from_slice(&[0x90, 0x00]);
    let mut t = ScriptedTransport::new()
        .expect(c1, h("9000"))
        .expect(c2, r1)
        .expect([0x00, 0xC0, 0x00, 0x00, (answer.len() - 256) as u8], r2);
    assert_eq!(sign_rsa2048(&mut t, 0x9E, b"nonce").unwrap(), sig);
    t.done();
}

#[test]
fn a_slot_that_refuses_both_algorithms_holds_no_key() {
    // P-256 refused with 6A80, then the first block of the RSA command chain too: decided
    // from the status word, whatever the message says.
    let challenge = b"nonce";
    let digest: [u8; 32] = sha2::Sha256::digest(challenge).into();
    let ecc = general_authenticate(alg::ECCP256, 0x9E, &digest).encode();
    let rsa = general_authenticate(alg::RSA2048, 0x9E, &pkcs1_v15_sha256(&digest, 256).unwrap());
    let first_block = Apdu {
        cla: 0x10,
        data: rsa.data[..255].to_vec(),
        le: None,
        ..rsa.clone()
    };
    let mut t = ScriptedTransport::new()
        .expect(ecc, h("6A80"))
        .expect(first_block.encode(), h("6A80"));
    let e = sign_with_slot(&mut t, 0x9E, challenge).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotPresent, "{e}");
    t.done();

    // Any other refusal of the RSA attempt is passed on as it is.
    let ecc = general_authenticate(alg::ECCP256, 0x9E, &digest).encode();
    let mut t = ScriptedTransport::new()
        .expect(ecc, h("6A80"))
        .expect(first_block.encode(), h("6982"));
    let e = sign_with_slot(&mut t, 0x9E, challenge).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert_eq!(e.status_word(), Some(sw::SECURITY_STATUS));
    t.done();
}

#[test]
fn wrong_le_is_retried_and_endless_chaining_stops() {
    let mut t = ScriptedTransport::new()
        .expect(h("00FD000000"), h("6C03"))
        .expect(h("00FD000003"), h("050403 9000"));
    assert_eq!(super::session::read_version(&mut t).unwrap(), Firmware::new(5, 4, 3));
    t.done();

    struct Endless;
    impl ApduTransport for Endless {
        fn transmit(&mut self, _: &[u8]) -> Result<Vec<u8>> {
            let mut v = vec![0u8; 256];
            v.extend_from_slice(&[0x61, 0x00]);
            Ok(v)
        }
    }
    let e = super::session::read_version(&mut Endless).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol);
}

#[test]
fn transport_errors_pass_through() {
    let mut t = ScriptedTransport::new().expect_err(h(SELECT_PIV), Error::new(ErrorKind::Disconnected, "card removed"));
    assert_eq!(identify(&mut t).unwrap_err().kind(), ErrorKind::Disconnected);
    t.done();
}

fn arb_apdu() -> impl Strategy<Value = Apdu> {
    (
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        prop::collection::vec(any::<u8>(), 0..600),
        prop::option::of(1u32..=65536),
    )
        .prop_map(|(cla, ins, p1, p2, data, le)| Apdu {
            cla,
            ins,
            p1,
            p2,
            data,
            le,
        })
}

struct Random(Vec<Vec<u8>>);
impl ApduTransport for Random {
    fn transmit(&mut self, _: &[u8]) -> Result<Vec<u8>> {
        Ok(self.0.pop().unwrap_or_default())
    }
}

proptest! {
    #[test]
    fn apdu_round_trips(a in arb_apdu()) {
        prop_assert_eq!(Apdu::parse(&a.encode()).unwrap(), a);
    }

    #[test]
    fn response_round_trips(data in prop::collection::vec(any::<u8>(), 0..300), status in any::<u16>()) {
        let r = Response::new(data, status);
        prop_assert_eq!(Response::parse(&r.encode()).unwrap(), r);
    }

    #[test]
    fn tlv_round_trips(tag in prop::sample::select(vec![0x53u32, 0x70, 0x7C, 0x5F2F, 0x5FC101]),
                       value in prop::collection::vec(any::<u8>(), 0..70_000)) {
        let encoded = tlv(tag, &value);
        let ((t, v), rest) = parse_tlv(&encoded).unwrap();
        prop_assert!(rest.is_empty());
        prop_assert_eq!(t, tag);
        prop_assert_eq!(v, value.as_slice());
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = Apdu::parse(&b);
        let _ = Response::parse(&b);
        let _ = parse_tlvs(&b);
        let _ = parse_object(&b);
        let _ = parse_certificate_object(&b);
        let _ = parse_authenticate_response(&b);
        let _ = parse_read_config(&b);
        let _ = parse_version(&b);
        let _ = parse_serial(&b);
    }

    #[test]
    fn arbitrary_card_answers_never_panic(answers in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..12)) {
        let _ = identify(&mut Random(answers.clone()));
        let _ = read_certificate(&mut Random(answers.clone()), 0x9E);
        let _ = sign_p256(&mut Random(answers.clone()), 0x9E, b"c");
        let _ = sign_rsa2048(&mut Random(answers), 0x9E, b"c");
    }
}

#[test]
fn attestation_reads_the_slot_attestation_then_the_f9_certificate() {
    // A long attestation comes back in two parts (61xx + GET RESPONSE), as on a real key.
    let mut cert = vec![0x30, 0x82, 0x01, 0x2C];
    cert.extend(std::iter::repeat_n(0xAB, 0x12C));
    let mut first = cert[..256].to_vec();
    first.extend_from_slice(&[0x61, 0x30]);
    let mut second = cert[256..].to_vec();
    second.extend_from_slice(&[0x90, 0x00]);
    let mut t = ScriptedTransport::new()
        .expect(h("00F99E0000"), first)
        .expect(h("00C0000030"), second)
        .expect(h("00CB3FFF055C035FFF0100"), h("530A 7003300100 710100 FE00 9000"));
    let a = session::read_attestation(&mut t, slot::CARD_AUTH).unwrap();
    assert_eq!(a.certificate, cert);
    assert_eq!(a.intermediates, vec![h("300100")]);
    t.done();
}

#[test]
fn a_key_that_cannot_attest_is_unsupported_not_a_transport_failure() {
    // 6A80: imported key; 6D00: no ATTEST instruction (not a YubiKey, or firmware < 4.3).
    for (sw, kind) in [
        ("6A80", ErrorKind::Unsupported),
        ("6D00", ErrorKind::Unsupported),
        ("6A88", ErrorKind::NotPresent),
    ] {
        let mut t = ScriptedTransport::new().expect(h("00F99E0000"), h(sw));
        assert_eq!(
            session::attest(&mut t, slot::CARD_AUTH).unwrap_err().kind(),
            kind,
            "{sw}"
        );
    }
    // A card answering something that is not a certificate.
    let mut t = ScriptedTransport::new().expect(h("00F99E0000"), h("7C00 9000"));
    assert_eq!(
        session::attest(&mut t, slot::CARD_AUTH).unwrap_err().kind(),
        ErrorKind::Protocol
    );
    // An attestation without an F9 certificate: the key cannot be verified.
    let mut t = ScriptedTransport::new()
        .expect(h("00F99E0000"), h("300100 9000"))
        .expect(h("00CB3FFF055C035FFF0100"), h("6A82"));
    assert_eq!(
        session::read_attestation(&mut t, slot::CARD_AUTH).unwrap_err().kind(),
        ErrorKind::Unsupported
    );
}
