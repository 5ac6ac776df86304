#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use keyfloat_hal::piv::session::{self, ApduTransport};
use keyfloat_hal::{ErrorKind, Result as HalResult};
use p256::ecdsa::signature::Verifier;
use proptest::prelude::*;

use super::*;

fn h(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test hex"))
        .collect()
}

struct Direct<'a>(&'a mut VirtualCard);
impl ApduTransport for Direct<'_> {
    fn transmit(&mut self, command: &[u8]) -> HalResult<Vec<u8>> {
        Ok(self.0.process(command))
    }
}

fn card(with_cert: bool) -> VirtualCard {
    let mut spec = SimKeySpec::from_seed("card", 12345678, 7);
    if with_cert {
        spec = spec.with_certificate((0..700u32).map(|i| i as u8).collect());
    }
    VirtualCard::new(&spec)
}

#[test]
fn yubico_piv_tool_prefix_and_objects() {
    let mut c = card(true);
    assert_eq!(
        c.process(&h("00A4040005A000000308")),
        h("6111 4F06000010000100 7907 4F05A000000308 9000")
    );
    assert_eq!(c.process(&h("0020008000")), h("63C3"));
    assert_eq!(c.process(&h("00FD000000")), h("050403 9000"));
    assert_eq!(c.process(&h("00F8000000")), h("00BC614E 9000"));
    let chuid = c.process(&h("00CB3FFF055C035FC102"));
    assert_eq!(&chuid[..2], &[0x53, 0x3B]);
    assert_eq!(chuid.len(), 2 + 59 + 2);
    let ccc = c.process(&h("00CB3FFF055C035FC107"));
    assert_eq!(&ccc[..2], &[0x53, 0x33]);
    assert_eq!(ccc.len(), 2 + 51 + 2);
    assert_eq!(c.process(&h("00CB3FFF055C035FC10B")), h("6A82"));
    // Discovery, OpenSC style with Le 8: first 8 bytes + 61xx, rest via GET RESPONSE.
    let d = c.process(&h("00CB3FFF035C017E08"));
    assert_eq!(d.len(), 10);
    assert_eq!(d[8], 0x61);
    let rest = c.process(&[0x00, 0xC0, 0x00, 0x00, d[9]]);
    assert_eq!(rest.len(), usize::from(d[9]) + 2);
    // Certificate: extended request gets it all at once.
    let ext = c.process(&h("00CB3FFF0000055C035FC101"));
    assert_eq!(&ext[ext.len() - 2..], &[0x90, 0x00]);
    assert!(ext.len() > 700);
}

#[test]
fn the_hal_codec_reads_and_verifies_the_card() {
    let mut c = card(true);
    let spec = SimKeySpec::from_seed("card", 12345678, 7);
    let mut t = Direct(&mut c);
    let id = session::identify(&mut t).unwrap();
    assert_eq!(id.serial, 12345678);
    assert_eq!(id.firmware, Some(Firmware::new(5, 4, 3)));
    let cert = session::read_certificate(&mut t, 0x9E).unwrap();
    assert_eq!(cert, (0..700u32).map(|i| i as u8).collect::<Vec<_>>());
    let der = session::sign_p256(&mut t, 0x9E, b"challenge").unwrap();
    let sig = Signature::from_der(&der).unwrap();
    spec.verifying_key().verify(b"challenge", &sig).unwrap();
    let (alg, _) = session::sign_with_slot(&mut t, 0x9E, b"x").unwrap();
    assert_eq!(alg, piv::alg::ECCP256);
    assert_eq!(
        session::sign_with_slot(&mut t, 0x9A, b"x").unwrap_err().kind(),
        ErrorKind::NotPresent
    );
}

#[test]
fn unprovisioned_card_has_no_certificate() {
    let mut c = card(false);
    let mut t = Direct(&mut c);
    session::select_piv(&mut t).unwrap();
    assert_eq!(
        session::read_certificate(&mut t, 0x9E).unwrap_err().kind(),
        ErrorKind::NotPresent
    );
}

#[test]
fn pin_verify_counts_down_blocks_and_resets_on_success() {
    let mut c = card(false);
    c.process(&h("00A4040005A000000308"));
    assert_eq!(c.process(&h("00200080 08 363534333231FFFF")), h("63C2"));
    assert_eq!(c.process(&h("00200080 08 313233343536FFFF")), h("9000"));
    assert_eq!(c.process(&h("0020008000")), h("9000"));
    c.power_off();
    c.process(&h("00A4040005A000000308"));
    assert_eq!(c.process(&h("0020008000")), h("63C3"), "verified state is volatile");
    for expect in ["63C2", "63C1", "6983", "6983"] {
        assert_eq!(c.process(&h("00200080 08 303030303030FFFF")), h(expect));
    }
    assert_eq!(c.process(&h("00200080 08 313233343536FFFF")), h("6983"));
    assert_eq!(c.pin_tries_left(), 0);
}

#[test]
fn metadata_management_and_otp() {
    let mut c = card(false);
    c.process(&h("00A4040005A000000308"));
    assert_eq!(c.process(&h("00F70080")), h("0101FF 050101 06020303 9000"));
    assert_eq!(c.process(&h("00F7009B")), h("010103 02020001 050101 9000"));
    assert_eq!(c.process(&h("00F70096")), h("6A88"));
    assert_eq!(c.process(&h("00F7009A")), h("6A88"));
    let m = c.process(&h("00F7009E"));
    assert_eq!(&m[..3], &[0x01, 0x01, 0x11]);
    assert_eq!(c.process(&h("00A4040008A000000527471117")), h("352E342E33 9000"));
    assert_eq!(
        c.process(&h("001D0000")),
        h("24 0102023B 020400BC614E 0302023B 040101 0503050403 080100 0A0100 0D02023B 0E02023B 9000")
    );
    assert_eq!(c.process(&h("00A4040007A0000005272001")), h("050403000000 9000"));
    assert_eq!(c.process(&h("0001100000")), h("00BC614E 9000"));
}

#[test]
fn unknown_things_get_the_right_status() {
    let mut c = card(false);
    assert_eq!(c.process(&h("00CB3FFF035C017E08")), h("6D00"), "no applet selected");
    assert_eq!(c.process(&h("00A4040007627601FF000000")), h("6A82"));
    assert_eq!(
        c.process(&h("00A4040009A0000003080000100000")),
        h("6111 4F06000010000100 7907 4F05A000000308 9000")
    );
    assert_eq!(c.process(&h("00EE0000")), h("6D00"));
    assert_eq!(c.process(&h("80FD0000")), h("6E00"));
    assert_eq!(c.process(&h("00A4")), h("6700"));
    assert_eq!(c.process(&h("00C0000000")), h("6985"));
}

proptest! {
    #[test]
    fn garbage_never_panics(cmds in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..20)) {
        let mut c = card(true);
        c.process(&h("00A4040005A000000308"));
        for cmd in cmds {
            let r = c.process(&cmd);
            prop_assert!(r.len() >= 2);
        }
    }

    #[test]
    fn chained_commands_equal_single_ones(split in 1usize..40) {
        let mut c = card(false);
        c.process(&h("00A4040005A000000308"));
        let full = h("7C24820081 20 0101010101010101010101010101010101010101010101010101010101010101");
        let (a, b) = full.split_at(split.min(full.len() - 1));
        let mut first = vec![0x10, 0x87, 0x11, 0x9E, a.len() as u8];
        first.extend_from_slice(a);
        prop_assert_eq!(c.process(&first), h("9000"));
        let mut second = vec![0x00, 0x87, 0x11, 0x9E, b.len() as u8];
        second.extend_from_slice(b);
        let r = c.process(&second);
        prop_assert_eq!(&r[r.len() - 2..], &[0x90, 0x00]);
        prop_assert_eq!(r[0], 0x7C);
    }
}

/// The host side of the management-key mutual authentication, with `key`.
fn mgmt_auth(c: &mut VirtualCard, key: &ManagementKey) -> Vec<u8> {
    let alg = key.algorithm();
    let r = c.process(&[0x00, 0x87, alg, 0x9B, 0x04, 0x7C, 0x02, 0x80, 0x00]);
    assert_eq!(&r[r.len() - 2..], [0x90, 0x00], "witness request");
    let n = key.block_len();
    let encrypted = &r[4..4 + n];
    // The host knows the key: it decrypts the witness, as yubico-piv-tool and ykman do.
    let witness = decrypt(key, encrypted);
    let mut inner = tlv(0x80, &witness);
    inner.extend_from_slice(&tlv(0x81, &vec![0x55; n]));
    let body = tlv(0x7C, &inner);
    let mut cmd = vec![0x00, 0x87, alg, 0x9B, body.len() as u8];
    cmd.extend_from_slice(&body);
    c.process(&cmd)
}

fn decrypt(key: &ManagementKey, block: &[u8]) -> Vec<u8> {
    use aes::{Aes128, Aes192, Aes256};
    use des::cipher::{Block, BlockDecrypt, KeyInit};
    use des::TdesEde3;
    #[allow(deprecated)] // generic-array 0.14 under cipher 0.4; see mgmt.rs
    fn run<C: BlockDecrypt + KeyInit>(k: &[u8], b: &[u8]) -> Vec<u8> {
        let c = C::new_from_slice(k).unwrap();
        let mut blk = Block::<C>::clone_from_slice(b);
        c.decrypt_block(&mut blk);
        blk.to_vec()
    }
    let k = &MGMT_DEFAULT_KEY[..];
    match key.algorithm() {
        0x03 => run::<TdesEde3>(k, block),
        0x0A => run::<Aes192>(k, block),
        0x08 => run::<Aes128>(&k[..16], block),
        _ => run::<Aes256>(k, block),
    }
}

use super::super::mgmt::MGMT_DEFAULT_KEY;

fn attested_card() -> VirtualCard {
    let ca = keyfloat_hal::trust::attestation::sim_ca::SimAttestationCa::from_seed(1).unwrap();
    card(false).with_attester(ca.issue_device(12345678).unwrap())
}

#[test]
fn generate_put_data_and_import_need_the_management_key() {
    for fw in [Firmware::new(5, 4, 3), Firmware::new(5, 7, 1)] {
        let mut spec = SimKeySpec::from_seed("card", 12345678, 7);
        spec.firmware = fw;
        let mut c = VirtualCard::new(&spec);
        c.process(&h("00A4040005A000000308"));
        let generate = h("0047009E 05 AC03 800111");
        let put = h("00DB3FFF 0C 5C035FC101 5305 7003300100");
        let import = h("00FE119E 22 0620").into_iter().chain([7u8; 32]).collect::<Vec<_>>();
        for cmd in [&generate, &put, &import] {
            assert_eq!(c.process(cmd), h("6982"), "without authentication");
        }
        // A wrong answer to the witness: refused, and not authenticated afterwards.
        let key = ManagementKey::default_for(fw);
        let alg = key.algorithm();
        let n = key.block_len();
        c.process(&[0x00, 0x87, alg, 0x9B, 0x04, 0x7C, 0x02, 0x80, 0x00]);
        let mut inner = tlv(0x80, &vec![0u8; n]);
        inner.extend_from_slice(&tlv(0x81, &vec![1u8; n]));
        let body = tlv(0x7C, &inner);
        let mut cmd = vec![0x00, 0x87, alg, 0x9B, body.len() as u8];
        cmd.extend_from_slice(&body);
        assert_eq!(c.process(&cmd), h("6982"));
        assert_eq!(c.process(&generate), h("6982"));
        // Replaying the second step without a fresh witness is refused too.
        assert_eq!(c.process(&cmd), h("6982"));
        // The right key: the card answers the challenge encrypted, and GENERATE works.
        let r = mgmt_auth(&mut c, &key);
        assert_eq!(r[..4], [0x7C, (n + 2) as u8, 0x82, n as u8], "fw {fw}");
        assert_eq!(&r[4..4 + n], key.encrypt(&vec![0x55; n]).as_slice());
        let out = c.process(&generate);
        assert_eq!(out[..5], h("7F49 43 8641"), "fw {fw}");
        // Authentication does not survive a reset.
        c.reset();
        c.process(&h("00A4040005A000000308"));
        assert_eq!(c.process(&generate), h("6982"));
    }
}

#[test]
fn attest_only_generated_keys_and_serve_the_f9_certificate() {
    let mut c = attested_card();
    c.process(&h("00A4040005A000000308"));
    // The spec's key counts as imported: no attestation.
    assert_eq!(c.process(&h("00F99E0000")), h("6A80"));
    assert_eq!(c.process(&h("00F99A0000")), h("6A88"));
    let f9 = c.process(&h("00CB3FFF 05 5C035FFF01 00"));
    assert_eq!(&f9[..2], &[0x53, 0x82], "F9 object");
    let key = ManagementKey::default_for(Firmware::new(5, 4, 3));
    mgmt_auth(&mut c, &key);
    let out = c.process(&h("0047009E 0B AC09 800111 AA0101 AB0101"));
    assert_eq!(&out[out.len() - 2..], [0x90, 0x00]);
    assert!(c.key_generated());
    // Now it attests, with response chaining for short APDUs.
    let mut t = Direct(&mut c);
    let a = session::read_attestation(&mut t, 0x9E).unwrap();
    let roots = keyfloat_hal::trust::attestation::sim_ca::SimAttestationCa::from_seed(1)
        .unwrap()
        .roots()
        .unwrap();
    let facts = keyfloat_hal::trust::attestation::verify_attestation(&roots, &a, std::time::SystemTime::now()).unwrap();
    assert_eq!(facts.serial, Some(12345678));
    assert_eq!(facts.spki_der, c.public_key_der());
    // Importing a key over it makes it unattestable again.
    mgmt_auth(&mut c, &key);
    let import = h("00FE119E 22 0620").into_iter().chain([7u8; 32]).collect::<Vec<_>>();
    assert_eq!(c.process(&import), h("9000"));
    assert!(!c.key_generated());
    assert_eq!(c.process(&h("00F99E0000")), h("6A80"));
    // Policies a card does not know are refused.
    mgmt_auth(&mut c, &key);
    assert_eq!(c.process(&h("0047009E 08 AC06 800111 AA0109")), h("6A80"));
}
