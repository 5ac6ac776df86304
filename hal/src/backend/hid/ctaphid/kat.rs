//! Known-answer vectors for the CTAPHID framing, written out byte by byte from the CTAP 2.1
//! specification (§11.2.4 "Message and packet structure", §11.2.9 commands) rather than
//! produced by our encoder. The virtual HID key shares this codec with the backend, so round
//! trips alone would not catch a symmetric mistake (say, a little-endian length on both sides).

use super::*;

/// A 64-byte report from hex (spaces allowed), zero-padded like a real report.
fn report(hex_text: &str) -> [u8; PACKET_SIZE] {
    let bytes = hex::decode(hex_text.replace(' ', "")).expect("hex");
    let mut r = [0u8; PACKET_SIZE];
    r[..bytes.len()].copy_from_slice(&bytes);
    r
}

#[test]
fn init_request_on_the_broadcast_channel() {
    // CID ffffffff, CTAPHID_INIT (0x06 | 0x80), BCNT 0x0008 (big-endian), 8-byte nonce.
    let expected = report("ffffffff 86 0008 0102030405060708");
    let packets = fragment(BROADCAST_CID, cmd::INIT, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    assert_eq!(packets, vec![expected]);
}

#[test]
fn init_response_allocates_a_channel_and_reports_the_version() {
    // nonce, new CID 0x11223344, CTAPHID protocol 2, device version 5.4.3,
    // capabilities 0x0d = WINK | CBOR | NMSG.
    let r = report("ffffffff 86 0011 0102030405060708 11223344 02 05 04 03 0d");
    let packet = parse_packet(&r).unwrap();
    assert_eq!(
        packet,
        Packet::Init {
            cid: BROADCAST_CID,
            cmd: 0x86,
            bcnt: 17,
            data: &r[7..],
        }
    );
    let (command, payload) = Reassembler::start(&packet).unwrap().unwrap().finish();
    assert_eq!(command, cmd::INIT);
    let init = InitResponse::parse(&payload, &[1, 2, 3, 4, 5, 6, 7, 8])
        .unwrap()
        .unwrap();
    assert_eq!(init.cid, 0x1122_3344);
    assert_eq!(init.protocol_version, 2);
    assert_eq!(init.version, Firmware::new(5, 4, 3));
    assert_eq!(init.capabilities, 0x0d);
    assert_ne!(init.capabilities & CAPABILITY_CBOR, 0);
}

#[test]
fn a_cbor_message_of_100_bytes_is_one_init_and_one_cont_packet() {
    // 57 bytes fit the INIT packet (64 - 7), the remaining 43 go to CONT seq 0 (64 - 5 per
    // packet). Payload: 0x00, 0x01, ... 0x63.
    let payload: Vec<u8> = (0u8..100).collect();
    let init_data = hex::encode(&payload[..57]);
    let cont_data = hex::encode(&payload[57..]);
    let expected = vec![
        report(&format!("11223344 90 0064 {init_data}")),
        report(&format!("11223344 00 {cont_data}")),
    ];
    assert_eq!(fragment(0x1122_3344, cmd::CBOR, &payload).unwrap(), expected);

    let mut r = Reassembler::start(&parse_packet(&expected[0]).unwrap())
        .unwrap()
        .unwrap();
    assert!(!r.is_complete());
    r.push(&parse_packet(&expected[1]).unwrap()).unwrap();
    assert!(r.is_complete());
    assert_eq!(r.finish(), (cmd::CBOR, payload));
}

#[test]
fn the_longest_message_ends_with_continuation_sequence_0x7f() {
    // 7609 = 57 + 128 * 59 bytes: INIT, then CONT 0x00 ..= 0x7f, with BCNT 0x1db9.
    let packets = fragment(0x0000_0001, cmd::MSG, &[0xAB; 7609]).unwrap();
    assert_eq!(packets.len(), 129);
    assert_eq!(
        &packets[0][..7],
        &hex::decode("00000001 83 1db9".replace(' ', "")).unwrap()[..]
    );
    assert_eq!(&packets[1][..5], &hex::decode("0000000100").unwrap()[..]);
    assert_eq!(&packets[128][..5], &hex::decode("000000017f").unwrap()[..]);
    assert!(packets[128][5..].iter().all(|b| *b == 0xAB));
}

#[test]
fn keepalive_and_error_packets_from_the_key() {
    // KEEPALIVE (0x3b | 0x80) with status 0x02 = UPNEEDED (waiting for a touch).
    let r = report("11223344 bb 0001 02");
    let Packet::Init {
        cid,
        cmd: c,
        bcnt,
        data,
    } = parse_packet(&r).unwrap()
    else {
        panic!("an INIT packet");
    };
    assert_eq!((cid, c, bcnt, data[0]), (0x1122_3344, cmd::KEEPALIVE, 1, 0x02));

    // ERROR (0x3f | 0x80) with code 0x06 = ERR_CHANNEL_BUSY: busy, never "absent".
    let r = report("11223344 bf 0001 06");
    let Packet::Init { cmd: c, data, .. } = parse_packet(&r).unwrap() else {
        panic!("an INIT packet");
    };
    assert_eq!(c, cmd::ERROR);
    assert_eq!(error_from_code(data[0]).kind(), ErrorKind::Busy);
}

#[test]
fn a_cont_packet_carries_its_sequence_number_and_59_data_bytes() {
    // CONT: CID 11223344, SEQ 0x05 (bit 7 clear), then 59 data bytes.
    let r = report("11223344 05 aabbcc");
    let Packet::Cont { cid, seq, data } = parse_packet(&r).unwrap() else {
        panic!("a CONT packet");
    };
    assert_eq!((cid, seq, data.len()), (0x1122_3344, 5, 59));
    assert_eq!(&data[..3], &[0xAA, 0xBB, 0xCC]);
    // A CONT packet of another channel does not continue this message.
    let init = report("11223344 90 0064");
    let mut message = Reassembler::start(&parse_packet(&init).unwrap()).unwrap().unwrap();
    assert!(message.push(&parse_packet(&report("55667788 00")).unwrap()).is_err());
}
