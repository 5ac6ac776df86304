//! CTAPHID, the FIDO HID transport (usage page 0xF1D0): messages travel as 64-byte reports
//! on a channel the host allocates with INIT on the broadcast channel.
//!
//! INIT packet: `CID(4) ‖ CMD|0x80 ‖ BCNT(2, big-endian) ‖ 57 data bytes`; CONT packet:
//! `CID(4) ‖ SEQ(0..=0x7F) ‖ 59 data bytes`, so a message holds at most 57 + 128·59 = 7609
//! bytes. While it works the key may send KEEPALIVE; failures come back as ERROR with one
//! code byte (0x06 = channel busy: another client is mid-transaction).

use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::key::Firmware;

use super::transport::HidConnection;

/// Bytes of one CTAPHID report.
pub const PACKET_SIZE: usize = 64;
/// Data bytes in an INIT packet.
pub const INIT_DATA_SIZE: usize = PACKET_SIZE - 7;
/// Data bytes in a CONT packet.
pub const CONT_DATA_SIZE: usize = PACKET_SIZE - 5;
/// Largest message: one INIT and 128 CONT packets.
pub const MAX_MESSAGE_SIZE: usize = INIT_DATA_SIZE + 128 * CONT_DATA_SIZE;
/// The broadcast channel, used only to allocate a channel.
pub const BROADCAST_CID: u32 = 0xFFFF_FFFF;

/// CTAPHID commands (with the INIT-packet bit 0x80 set).
pub mod cmd {
    /// Echo.
    pub const PING: u8 = 0x81;
    /// U2F/CTAP1 message.
    pub const MSG: u8 = 0x83;
    /// Lock the channel.
    pub const LOCK: u8 = 0x84;
    /// Allocate a channel / resynchronise.
    pub const INIT: u8 = 0x86;
    /// Blink.
    pub const WINK: u8 = 0x88;
    /// CTAP2 CBOR message.
    pub const CBOR: u8 = 0x90;
    /// Cancel the pending request.
    pub const CANCEL: u8 = 0x91;
    /// The key is still working (status byte: 1 processing, 2 waiting for touch).
    pub const KEEPALIVE: u8 = 0xBB;
    /// Error (one code byte).
    pub const ERROR: u8 = 0xBF;
}

/// CTAPHID error codes.
pub mod err {
    /// Unknown command.
    pub const INVALID_CMD: u8 = 0x01;
    /// Bad parameter.
    pub const INVALID_PAR: u8 = 0x02;
    /// Bad length.
    pub const INVALID_LEN: u8 = 0x03;
    /// CONT packet out of sequence.
    pub const INVALID_SEQ: u8 = 0x04;
    /// Message not completed in time.
    pub const MSG_TIMEOUT: u8 = 0x05;
    /// Another channel is mid-transaction.
    pub const CHANNEL_BUSY: u8 = 0x06;
    /// Channel locked by another client.
    pub const LOCK_REQUIRED: u8 = 0x0A;
    /// Unknown channel.
    pub const INVALID_CHANNEL: u8 = 0x0B;
    /// Unspecified.
    pub const OTHER: u8 = 0x7F;
}

/// Capability flag: CBOR (CTAP2) supported.
pub const CAPABILITY_CBOR: u8 = 0x04;

/// One parsed report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// First packet of a message.
    Init {
        /// Channel.
        cid: u32,
        /// Command (bit 0x80 set).
        cmd: u8,
        /// Total message length.
        bcnt: u16,
        /// Data bytes present in this packet (up to 57; may include padding past `bcnt`).
        data: &'a [u8],
    },
    /// A continuation packet.
    Cont {
        /// Channel.
        cid: u32,
        /// Sequence number 0..=0x7F.
        seq: u8,
        /// Data bytes (up to 59).
        data: &'a [u8],
    },
}

impl Packet<'_> {
    /// The packet's channel.
    pub fn cid(&self) -> u32 {
        match self {
            Packet::Init { cid, .. } | Packet::Cont { cid, .. } => *cid,
        }
    }
}

/// Parses one report (no report id). Never panics; short reports are protocol errors.
pub fn parse_packet(report: &[u8]) -> Result<Packet<'_>> {
    if report.len() < 5 {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!("CTAPHID report of {} bytes", report.len()),
        ));
    }
    let cid = u32::from_be_bytes([report[0], report[1], report[2], report[3]]);
    let b = report[4];
    let report = &report[..report.len().min(PACKET_SIZE)];
    if b & 0x80 != 0 {
        if report.len() < 7 {
            return Err(Error::new(ErrorKind::Protocol, "CTAPHID INIT packet without length"));
        }
        Ok(Packet::Init {
            cid,
            cmd: b,
            bcnt: u16::from_be_bytes([report[5], report[6]]),
            data: &report[7..],
        })
    } else {
        Ok(Packet::Cont {
            cid,
            seq: b,
            data: &report[5..],
        })
    }
}

/// Cuts a message into 64-byte packets (zero-padded).
pub fn fragment(cid: u32, command: u8, payload: &[u8]) -> Result<Vec<[u8; PACKET_SIZE]>> {
    if payload.len() > MAX_MESSAGE_SIZE {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("CTAPHID message of {} bytes exceeds {MAX_MESSAGE_SIZE}", payload.len()),
        ));
    }
    let mut out = Vec::new();
    let mut p = [0u8; PACKET_SIZE];
    p[..4].copy_from_slice(&cid.to_be_bytes());
    p[4] = command | 0x80;
    // payload.len() <= 7609 fits u16
    p[5..7].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    let first = payload.len().min(INIT_DATA_SIZE);
    p[7..7 + first].copy_from_slice(&payload[..first]);
    out.push(p);
    for (seq, chunk) in payload[first..].chunks(CONT_DATA_SIZE).enumerate() {
        let mut p = [0u8; PACKET_SIZE];
        p[..4].copy_from_slice(&cid.to_be_bytes());
        p[4] = seq as u8; // at most 128 chunks: seq <= 0x7F
        p[5..5 + chunk.len()].copy_from_slice(chunk);
        out.push(p);
    }
    Ok(out)
}

/// Puts a message back together from its packets, in order.
#[derive(Debug, Clone)]
pub struct Reassembler {
    cid: u32,
    cmd: u8,
    need: usize,
    buf: Vec<u8>,
    next_seq: u8,
}

impl Reassembler {
    /// Starts a message from its INIT packet. `None` for a CONT packet.
    pub fn start(packet: &Packet<'_>) -> Result<Option<Self>> {
        let Packet::Init { cid, cmd, bcnt, data } = *packet else {
            return Ok(None);
        };
        let need = usize::from(bcnt);
        if need > MAX_MESSAGE_SIZE {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("CTAPHID message length {need} exceeds {MAX_MESSAGE_SIZE}"),
            ));
        }
        let mut buf = Vec::with_capacity(need);
        buf.extend_from_slice(&data[..data.len().min(need)]);
        Ok(Some(Self {
            cid,
            cmd,
            need,
            buf,
            next_seq: 0,
        }))
    }

    /// Adds a CONT packet of the same channel.
    pub fn push(&mut self, packet: &Packet<'_>) -> Result<()> {
        let Packet::Cont { cid, seq, data } = *packet else {
            return Err(Error::new(ErrorKind::Protocol, "CTAPHID INIT packet inside a message"));
        };
        if cid != self.cid {
            return Err(Error::new(
                ErrorKind::Protocol,
                "CTAPHID CONT packet of another channel",
            ));
        }
        if seq != self.next_seq || self.next_seq > 0x7F {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("CTAPHID CONT packet out of sequence: {seq}, expected {}", self.next_seq),
            ));
        }
        self.next_seq += 1;
        let take = (self.need - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        Ok(())
    }

    /// Whether every byte arrived.
    pub fn is_complete(&self) -> bool {
        self.buf.len() >= self.need
    }

    /// Channel of the message.
    pub fn cid(&self) -> u32 {
        self.cid
    }

    /// Command of the message.
    pub fn command(&self) -> u8 {
        self.cmd
    }

    /// The message (command, payload).
    pub fn finish(self) -> (u8, Vec<u8>) {
        (self.cmd, self.buf)
    }
}

/// The key's answer to INIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitResponse {
    /// Allocated channel.
    pub cid: u32,
    /// CTAPHID protocol version (2).
    pub protocol_version: u8,
    /// Device version (YubiKeys: firmware).
    pub version: Firmware,
    /// Capability flags (0x01 wink, 0x04 CBOR, 0x08 no CTAP1 MSG).
    pub capabilities: u8,
}

impl InitResponse {
    /// Parses an INIT response payload, checking the echoed nonce.
    pub fn parse(payload: &[u8], nonce: &[u8; 8]) -> Result<Option<Self>> {
        if payload.len() < 17 {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("CTAPHID INIT response of {} bytes", payload.len()),
            ));
        }
        if &payload[..8] != nonce {
            return Ok(None); // an answer to another client's INIT
        }
        let cid = u32::from_be_bytes([payload[8], payload[9], payload[10], payload[11]]);
        if cid == 0 || cid == BROADCAST_CID {
            return Err(Error::new(
                ErrorKind::Protocol,
                "CTAPHID INIT allocated a reserved channel",
            ));
        }
        Ok(Some(Self {
            cid,
            protocol_version: payload[12],
            version: Firmware::new(payload[13], payload[14], payload[15]),
            capabilities: payload[16],
        }))
    }
}

/// Maps an ERROR packet's code to our error kinds.
pub fn error_from_code(code: u8) -> Error {
    let (kind, what) = match code {
        err::CHANNEL_BUSY => (
            ErrorKind::Busy,
            "FIDO interface busy: another client is in a transaction",
        ),
        err::LOCK_REQUIRED => (ErrorKind::Busy, "FIDO interface locked by another client"),
        err::MSG_TIMEOUT => (ErrorKind::Timeout, "FIDO key timed out waiting for the message"),
        err::INVALID_CMD => (ErrorKind::Protocol, "FIDO key: invalid CTAPHID command"),
        err::INVALID_PAR => (ErrorKind::Protocol, "FIDO key: invalid CTAPHID parameter"),
        err::INVALID_LEN => (ErrorKind::Protocol, "FIDO key: invalid CTAPHID length"),
        err::INVALID_SEQ => (ErrorKind::Protocol, "FIDO key: CTAPHID packet out of sequence"),
        err::INVALID_CHANNEL => (ErrorKind::Protocol, "FIDO key: invalid CTAPHID channel"),
        _ => (ErrorKind::Protocol, "FIDO key: CTAPHID error"),
    };
    Error::new(kind, format!("{what} (0x{code:02x})"))
}

/// Timing of CTAPHID exchanges. Every wait is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtapTiming {
    /// How long to wait for an answer with no sign of life.
    pub response_timeout: Duration,
    /// Upper bound of a transaction however many KEEPALIVEs the key sends.
    pub max_transaction: Duration,
    /// Longest single blocking read (keeps the loop responsive to its deadlines).
    pub read_slice: Duration,
}

impl Default for CtapTiming {
    fn default() -> Self {
        Self {
            response_timeout: Duration::from_secs(2),
            max_transaction: Duration::from_secs(10),
            read_slice: Duration::from_millis(100),
        }
    }
}

/// An allocated CTAPHID channel over one open FIDO interface.
#[derive(Debug)]
pub struct CtapHidChannel<'a> {
    conn: &'a mut dyn HidConnection,
    timing: CtapTiming,
    init: InitResponse,
}

impl<'a> CtapHidChannel<'a> {
    /// Allocates a channel: INIT with `nonce` on the broadcast channel.
    pub fn open(conn: &'a mut dyn HidConnection, timing: CtapTiming, nonce: [u8; 8]) -> Result<Self> {
        send_message(conn, BROADCAST_CID, cmd::INIT, &nonce)?;
        let init = receive(conn, &timing, BROADCAST_CID, cmd::INIT, |payload| {
            InitResponse::parse(payload, &nonce)
        })?;
        Ok(Self { conn, timing, init })
    }

    /// What the key said in answer to INIT.
    pub fn init_response(&self) -> &InitResponse {
        &self.init
    }

    /// Sends one message and returns the answer's payload.
    pub fn transact(&mut self, command: u8, payload: &[u8]) -> Result<Vec<u8>> {
        send_message(self.conn, self.init.cid, command, payload)?;
        receive(self.conn, &self.timing, self.init.cid, command, |p| {
            Ok(Some(p.to_vec()))
        })
    }

    /// Sends a CTAP2 command (`ctap_command ‖ cbor`) and returns `status ‖ cbor`.
    pub fn cbor(&mut self, request: &[u8]) -> Result<Vec<u8>> {
        if self.init.capabilities & CAPABILITY_CBOR == 0 {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "FIDO key does not speak CTAP2 (no CBOR)",
            ));
        }
        self.transact(cmd::CBOR, request)
    }
}

fn send_message(conn: &mut dyn HidConnection, cid: u32, command: u8, payload: &[u8]) -> Result<()> {
    for packet in fragment(cid, command, payload)? {
        let mut report = [0u8; PACKET_SIZE + 1];
        report[1..].copy_from_slice(&packet);
        let n = conn.write(&report)?;
        if n < PACKET_SIZE {
            return Err(Error::new(ErrorKind::Io, format!("short HID write: {n} bytes")));
        }
    }
    Ok(())
}

/// Reads packets until a whole message of `command` arrives on `cid` and `accept` takes it.
fn receive<T>(
    conn: &mut dyn HidConnection,
    timing: &CtapTiming,
    cid: u32,
    command: u8,
    mut accept: impl FnMut(&[u8]) -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let hard_deadline = start + timing.max_transaction;
    let mut deadline = (start + timing.response_timeout).min(hard_deadline);
    let mut partial: Option<Reassembler> = None;
    let mut buf = [0u8; PACKET_SIZE];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::new(ErrorKind::Timeout, "FIDO key did not answer in time"));
        }
        let n = conn.read_timeout(&mut buf, (deadline - now).min(timing.read_slice))?;
        if n == 0 {
            continue;
        }
        let packet = parse_packet(&buf[..n])?;
        if packet.cid() != cid {
            continue; // traffic of another client's channel
        }
        match (&mut partial, packet) {
            (
                None,
                Packet::Init {
                    cmd: cmd::KEEPALIVE, ..
                },
            ) => {
                deadline = (Instant::now() + timing.response_timeout).min(hard_deadline);
            }
            (
                None,
                Packet::Init {
                    cmd: cmd::ERROR, data, ..
                },
            ) => {
                return Err(error_from_code(data.first().copied().unwrap_or(err::OTHER)));
            }
            (None, p @ Packet::Init { cmd: c, .. }) if c == command => {
                if let Some(r) = Reassembler::start(&p)? {
                    partial = Some(r);
                }
            }
            (None, Packet::Init { cmd: c, .. }) => {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("FIDO key answered command 0x{c:02x}, expected 0x{command:02x}"),
                ));
            }
            (None, Packet::Cont { .. }) => {
                return Err(Error::new(ErrorKind::Protocol, "CTAPHID CONT packet without INIT"));
            }
            (Some(r), p) => r.push(&p)?,
        }
        if partial.as_ref().is_some_and(Reassembler::is_complete) {
            if let Some(r) = partial.take() {
                let (_, payload) = r.finish();
                if let Some(v) = accept(&payload)? {
                    return Ok(v);
                }
            }
        }
    }
}

#[cfg(test)]
mod kat;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::hid::transport::MockHidConnection;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    #[test]
    fn max_message_is_7609() {
        assert_eq!(MAX_MESSAGE_SIZE, 7609);
        assert!(fragment(1, cmd::PING, &vec![0; 7610]).is_err());
        assert_eq!(fragment(1, cmd::PING, &vec![0; 7609]).unwrap().len(), 129);
    }

    #[test]
    fn fragments_known_answer() {
        let payload: Vec<u8> = (0..100u8).collect();
        let packets = fragment(0x0102_0304, cmd::CBOR, &payload).unwrap();
        assert_eq!(packets.len(), 2);
        assert_eq!(&packets[0][..7], &[1, 2, 3, 4, 0x90, 0, 100]);
        assert_eq!(&packets[0][7..], &payload[..57]);
        assert_eq!(&packets[1][..5], &[1, 2, 3, 4, 0]);
        assert_eq!(&packets[1][5..5 + 43], &payload[57..]);
        assert!(packets[1][48..].iter().all(|&b| b == 0));
        // An empty message is one INIT packet.
        let packets = fragment(BROADCAST_CID, cmd::INIT, &[]).unwrap();
        assert_eq!(&packets[0][..7], &[0xFF, 0xFF, 0xFF, 0xFF, 0x86, 0, 0]);
    }

    fn roundtrip(payload: &[u8]) -> Vec<u8> {
        let packets = fragment(7, cmd::PING, payload).unwrap();
        let mut r = Reassembler::start(&parse_packet(&packets[0]).unwrap())
            .unwrap()
            .unwrap();
        for p in &packets[1..] {
            r.push(&parse_packet(p).unwrap()).unwrap();
        }
        assert!(r.is_complete());
        let (c, v) = r.finish();
        assert_eq!(c, cmd::PING);
        v
    }

    #[test]
    fn reassembles_up_to_the_maximum() {
        for len in [0, 1, 57, 58, 116, 117, 1000, MAX_MESSAGE_SIZE] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            assert_eq!(roundtrip(&payload), payload, "len {len}");
        }
    }

    #[test]
    fn out_of_sequence_and_oversized_are_rejected() {
        let packets = fragment(7, cmd::PING, &[1; 200]).unwrap();
        let mut r = Reassembler::start(&parse_packet(&packets[0]).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(
            r.push(&parse_packet(&packets[2]).unwrap()).unwrap_err().kind(),
            ErrorKind::Protocol
        );
        let mut big = packets[0];
        big[5..7].copy_from_slice(&8000u16.to_be_bytes());
        assert!(Reassembler::start(&parse_packet(&big).unwrap()).is_err());
        assert!(parse_packet(&[1, 2, 3]).is_err());
        assert!(parse_packet(&[1, 2, 3, 4, 0x90, 0]).is_err());
    }

    #[test]
    fn error_codes_map_to_kinds() {
        assert_eq!(error_from_code(err::CHANNEL_BUSY).kind(), ErrorKind::Busy);
        assert_eq!(error_from_code(err::MSG_TIMEOUT).kind(), ErrorKind::Timeout);
        assert_eq!(error_from_code(err::INVALID_SEQ).kind(), ErrorKind::Protocol);
        assert_eq!(error_from_code(0x42).kind(), ErrorKind::Protocol);
    }

    /// A scripted FIDO interface: records writes; each write may queue answer packets.
    struct Script {
        written: Vec<[u8; PACKET_SIZE]>,
        to_read: VecDeque<Vec<u8>>,
    }

    fn scripted(
        respond: impl Fn(&[u8; PACKET_SIZE], &mut VecDeque<Vec<u8>>) + Send + 'static,
    ) -> (MockHidConnection, Arc<Mutex<Script>>) {
        let script = Arc::new(Mutex::new(Script {
            written: Vec::new(),
            to_read: VecDeque::new(),
        }));
        let mut conn = MockHidConnection::new();
        let s = Arc::clone(&script);
        conn.expect_write().returning(move |data| {
            assert_eq!(data.len(), 65);
            assert_eq!(data[0], 0, "report id");
            let mut p = [0u8; PACKET_SIZE];
            p.copy_from_slice(&data[1..]);
            let mut s = s.lock().unwrap();
            s.written.push(p);
            respond(&p, &mut s.to_read);
            Ok(data.len())
        });
        let s = Arc::clone(&script);
        conn.expect_read_timeout().returning(move |buf, _| {
            let next = s.lock().unwrap().to_read.pop_front();
            Ok(next.map_or(0, |p| {
                buf[..p.len()].copy_from_slice(&p);
                p.len()
            }))
        });
        (conn, script)
    }

    fn init_answer(nonce: &[u8], cid: u32) -> Vec<u8> {
        let mut payload = nonce.to_vec();
        payload.extend_from_slice(&cid.to_be_bytes());
        payload.extend_from_slice(&[2, 5, 4, 3, 0x05]);
        fragment(BROADCAST_CID, cmd::INIT, &payload).unwrap()[0].to_vec()
    }

    fn fast() -> CtapTiming {
        CtapTiming {
            response_timeout: Duration::from_millis(30),
            max_transaction: Duration::from_millis(200),
            read_slice: Duration::from_millis(5),
        }
    }

    /// A key that allocates channel 0x11223344, echoes PING (after two KEEPALIVEs), and
    /// answers CBOR with channel busy.
    fn echo_key(p: &[u8; PACKET_SIZE], out: &mut VecDeque<Vec<u8>>) {
        let Ok(Packet::Init {
            cid,
            cmd: c,
            data,
            bcnt,
        }) = parse_packet(p)
        else {
            return;
        };
        match c {
            cmd::INIT => {
                // Someone else's INIT answer first: must be skipped (nonce differs).
                out.push_back(init_answer(&[9; 8], 0x55));
                out.push_back(init_answer(&data[..8], 0x1122_3344));
            }
            cmd::PING if usize::from(bcnt) <= data.len() => {
                out.push_back(fragment(cid, cmd::KEEPALIVE, &[1]).unwrap()[0].to_vec());
                out.push_back(fragment(0x55, cmd::PING, b"other channel").unwrap()[0].to_vec());
                out.push_back(fragment(cid, cmd::KEEPALIVE, &[1]).unwrap()[0].to_vec());
                for packet in fragment(cid, cmd::PING, &data[..usize::from(bcnt)]).unwrap() {
                    out.push_back(packet.to_vec());
                }
            }
            cmd::CBOR => out.push_back(fragment(cid, cmd::ERROR, &[err::CHANNEL_BUSY]).unwrap()[0].to_vec()),
            _ => {}
        }
    }

    #[test]
    fn init_allocates_a_channel_with_the_nonce() {
        let (mut conn, script) = scripted(echo_key);
        let ch = CtapHidChannel::open(&mut conn, fast(), [1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        assert_eq!(ch.init_response().cid, 0x1122_3344);
        assert_eq!(ch.init_response().version, Firmware::new(5, 4, 3));
        let w = &script.lock().unwrap().written;
        assert_eq!(
            &w[0][..15],
            &[0xFF, 0xFF, 0xFF, 0xFF, 0x86, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]
        );
    }

    #[test]
    fn keepalives_and_other_channels_are_skipped_and_answers_reassembled() {
        let (mut conn, _) = scripted(echo_key);
        let mut ch = CtapHidChannel::open(&mut conn, fast(), [1; 8]).unwrap();
        let answer = ch.transact(cmd::PING, b"hello").unwrap();
        assert_eq!(answer, b"hello");
    }

    #[test]
    fn channel_busy_is_busy() {
        let (mut conn, _) = scripted(echo_key);
        let mut ch = CtapHidChannel::open(&mut conn, fast(), [1; 8]).unwrap();
        assert_eq!(ch.cbor(&[0x04]).unwrap_err().kind(), ErrorKind::Busy);
    }

    #[test]
    fn silence_times_out() {
        let (mut conn, _) = scripted(|_, _| {});
        let e = CtapHidChannel::open(&mut conn, fast(), [1; 8]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
    }

    #[test]
    fn endless_keepalives_hit_the_hard_deadline() {
        let mut conn = MockHidConnection::new();
        conn.expect_read_timeout().returning(|buf, _| {
            buf.copy_from_slice(&fragment(BROADCAST_CID, cmd::KEEPALIVE, &[1]).unwrap()[0]);
            std::thread::sleep(Duration::from_millis(1));
            Ok(PACKET_SIZE)
        });
        conn.expect_write().returning(|d| Ok(d.len()));
        let e = CtapHidChannel::open(&mut conn, fast(), [1; 8]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn arbitrary_reports_never_panic(reports in proptest::collection::vec(proptest::collection::vec(0u8.., 0..70), 0..20)) {
            let mut r: Option<Reassembler> = None;
            for rep in &reports {
                if let Ok(p) = parse_packet(rep) {
                    match &mut r {
                        None => r = Reassembler::start(&p).ok().flatten(),
                        Some(r) => { let _ = r.push(&p); }
                    }
                    let _ = InitResponse::parse(rep, &[0; 8]);
                }
            }
            let queue = Mutex::new(reports.into_iter().collect::<VecDeque<_>>());
            let mut conn = MockHidConnection::new();
            conn.expect_write().returning(|d| Ok(d.len()));
            conn.expect_read_timeout().returning(move |buf, _| {
                Ok(queue.lock().unwrap().pop_front().map_or(0, |p| { let n = p.len().min(buf.len()); buf[..n].copy_from_slice(&p[..n]); n }))
            });
            let quick = CtapTiming { response_timeout: Duration::from_millis(3), ..fast() };
            let _ = CtapHidChannel::open(&mut conn, quick, [0; 8]).map(|mut ch| ch.cbor(&[4]));
        }
    }
}
