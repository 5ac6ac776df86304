//! The YubiKey OTP interface (the "keyboard", usage page 0x0001 / usage 0x06): commands go
//! to the key as a 70-byte frame cut into 8-byte feature reports, answers come back the same
//! way. Used here for the two things only this interface tells: the serial (slot 0x10) and
//! the firmware version (status bytes of any feature report).
//!
//! Frame = 64-byte payload ‖ slot ‖ CRC-16 of the payload (little-endian) ‖ 3 zero bytes,
//! sent as 10 reports of 7 data bytes and a trailer `0x80 | seq` (all-zero middle chunks are
//! skipped), each write waiting for the key's write flag (0x80) to clear. The answer is read
//! as reports whose trailer has 0x40 ("response pending") and the sequence number in the low
//! five bits; a 0x40 report with sequence 0 after data ends it; then `00..00 FF` resets.

use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::key::Firmware;

use super::transport::HidConnection;

/// Payload bytes of a frame.
pub const SLOT_DATA_SIZE: usize = 64;
/// Bytes of a whole frame.
pub const FRAME_SIZE: usize = 70;
/// Data bytes carried by one feature report (the 8th byte is the trailer).
pub const REPORT_DATA_SIZE: usize = 7;
/// Slot (command) that reads the serial.
pub const SLOT_DEVICE_SERIAL: u8 = 0x10;
/// Trailer flag of a host write, also reported back by the key while it is still busy.
pub const SLOT_WRITE_FLAG: u8 = 0x80;
/// Trailer flag of a report that carries response data.
pub const RESP_PENDING_FLAG: u8 = 0x40;
/// Trailer flag: the key waits for a touch.
pub const RESP_TIMEOUT_WAIT_FLAG: u8 = 0x20;
/// Low bits of the trailer: the sequence number.
pub const SEQUENCE_MASK: u8 = 0x1F;
/// CRC of data followed by its own (complemented, little-endian) CRC.
pub const CRC_OK_RESIDUAL: u16 = 0xF0B8;
/// Feature report size including the report id byte.
const REPORT_LEN: usize = 1 + 8;

/// CRC-16 as the YubiKey computes it: init 0xFFFF, reflected polynomial 0x8408, no final xor.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            let lsb = crc & 1;
            crc >>= 1;
            if lsb == 1 {
                crc ^= 0x8408;
            }
        }
    }
    crc
}

/// Whether `data` (payload ‖ complemented CRC, little-endian) has a good CRC.
pub fn crc_ok(data: &[u8]) -> bool {
    crc16(data) == CRC_OK_RESIDUAL
}

/// Builds the 70-byte frame for `slot` with `payload` (zero-padded to 64 bytes).
pub fn build_frame(slot: u8, payload: &[u8]) -> Result<[u8; FRAME_SIZE]> {
    if payload.len() > SLOT_DATA_SIZE {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("OTP payload of {} bytes exceeds {SLOT_DATA_SIZE}", payload.len()),
        ));
    }
    let mut frame = [0u8; FRAME_SIZE];
    frame[..payload.len()].copy_from_slice(payload);
    frame[SLOT_DATA_SIZE] = slot;
    let crc = crc16(&frame[..SLOT_DATA_SIZE]);
    frame[SLOT_DATA_SIZE + 1..SLOT_DATA_SIZE + 3].copy_from_slice(&crc.to_le_bytes());
    Ok(frame)
}

/// The 8-byte feature reports (without report id) a frame is sent as.
pub fn frame_reports(frame: &[u8; FRAME_SIZE]) -> Vec<[u8; 8]> {
    let mut out = Vec::with_capacity(10);
    for (seq, chunk) in frame.chunks(REPORT_DATA_SIZE).enumerate() {
        let last = seq == FRAME_SIZE / REPORT_DATA_SIZE - 1;
        if seq == 0 || last || chunk.iter().any(|&b| b != 0) {
            let mut report = [0u8; 8];
            report[..REPORT_DATA_SIZE].copy_from_slice(chunk);
            // seq < 10, fits the five sequence bits
            report[7] = SLOT_WRITE_FLAG | seq as u8;
            out.push(report);
        }
    }
    out
}

/// The status the key reports in a feature report that carries no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtpStatus {
    /// Firmware version.
    pub firmware: Firmware,
    /// Configuration sequence number.
    pub program_sequence: u8,
    /// Touch level (capacitive sensor), little-endian in the report.
    pub touch_level: u16,
}

impl OtpStatus {
    /// Parses the 8 data bytes of a status report.
    pub fn parse(report: &[u8]) -> Result<Self> {
        if report.len() < 8 {
            return Err(short(report.len()));
        }
        Ok(Self {
            firmware: Firmware::new(report[1], report[2], report[3]),
            program_sequence: report[4],
            touch_level: u16::from_le_bytes([report[5], report[6]]),
        })
    }
}

fn short(n: usize) -> Error {
    Error::new(
        ErrorKind::Protocol,
        format!("short OTP feature report: {n} bytes, expected {REPORT_LEN}"),
    )
}

/// Parses the serial answer: 4-byte big-endian serial ‖ CRC.
pub fn parse_serial_response(resp: &[u8]) -> Result<u32> {
    if resp.len() < 6 {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!("OTP serial response of {} bytes, expected at least 6", resp.len()),
        ));
    }
    if !crc_ok(&resp[..6]) {
        return Err(Error::new(ErrorKind::Protocol, "OTP serial response has a bad CRC"));
    }
    Ok(u32::from_be_bytes([resp[0], resp[1], resp[2], resp[3]]))
}

/// Timing of the OTP exchange. Every wait is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtpTiming {
    /// Pause between two polls of the key's status.
    pub poll_delay: Duration,
    /// How long to wait for the write flag to clear before each write.
    pub ready_timeout: Duration,
    /// How long to wait for the whole answer once the frame is sent.
    pub response_timeout: Duration,
}

impl Default for OtpTiming {
    fn default() -> Self {
        // As the vendor's own tools: poll every 20-50 ms, give up after ~1 s.
        Self {
            poll_delay: Duration::from_millis(20),
            ready_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(2),
        }
    }
}

/// The OTP protocol over one open interface.
#[derive(Debug)]
pub struct OtpInterface<'a> {
    conn: &'a mut dyn super::transport::HidConnection,
    timing: OtpTiming,
}

impl<'a> OtpInterface<'a> {
    /// Speaks OTP over `conn`.
    pub fn new(conn: &'a mut dyn HidConnection, timing: OtpTiming) -> Self {
        Self { conn, timing }
    }

    /// Reads one feature report; returns its 8 data bytes.
    fn receive(&mut self) -> Result<[u8; 8]> {
        let mut buf = [0u8; REPORT_LEN];
        let n = self.conn.get_feature_report(&mut buf)?;
        // hidapi counts the report id; some platforms do not, accept both.
        let data = match n {
            REPORT_LEN => &buf[1..],
            8 => &buf[..8],
            n => return Err(short(n)),
        };
        let mut out = [0u8; 8];
        out.copy_from_slice(data);
        Ok(out)
    }

    fn send(&mut self, report: &[u8; 8]) -> Result<()> {
        let mut buf = [0u8; REPORT_LEN];
        buf[1..].copy_from_slice(report);
        self.conn.send_feature_report(&buf)
    }

    /// Reads the key's status (firmware version etc.).
    pub fn status(&mut self) -> Result<OtpStatus> {
        OtpStatus::parse(&self.receive()?)
    }

    fn await_ready_to_write(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.timing.ready_timeout;
        loop {
            if self.receive()?[7] & SLOT_WRITE_FLAG == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    "YubiKey OTP interface did not become ready to receive",
                ));
            }
            thread::sleep(self.timing.poll_delay);
        }
    }

    fn reset(&mut self) -> Result<()> {
        self.send(&[0, 0, 0, 0, 0, 0, 0, 0xFF])
    }

    /// Sends `payload` to `slot` and returns the raw answer (data bytes, CRC not checked).
    pub fn send_and_receive(&mut self, slot: u8, payload: &[u8]) -> Result<Vec<u8>> {
        let frame = build_frame(slot, payload)?;
        for report in frame_reports(&frame) {
            self.await_ready_to_write()?;
            self.send(&report)?;
        }
        let result = self.read_response();
        if result.is_err() {
            // Leave the key in a clean state for the next caller; the first error is what matters.
            let _ = self.reset();
        }
        result
    }

    fn read_response(&mut self) -> Result<Vec<u8>> {
        let deadline = Instant::now() + self.timing.response_timeout;
        let mut response = Vec::new();
        let mut seq: u8 = 0;
        loop {
            let report = self.receive()?;
            let trailer = report[7];
            if trailer & RESP_PENDING_FLAG != 0 {
                if trailer & SEQUENCE_MASK == seq {
                    response.extend_from_slice(&report[..REPORT_DATA_SIZE]);
                    seq = seq.wrapping_add(1) & SEQUENCE_MASK;
                    if response.len() > 32 * REPORT_DATA_SIZE {
                        return Err(Error::new(ErrorKind::Protocol, "OTP response longer than 32 reports"));
                    }
                } else if trailer & SEQUENCE_MASK == 0 {
                    self.reset()?;
                    return Ok(response);
                } else {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!(
                            "OTP response out of sequence: got {}, expected {seq}",
                            trailer & SEQUENCE_MASK
                        ),
                    ));
                }
            } else if trailer == 0 {
                // A plain status report: the command produced no data (or stopped short).
                if response.is_empty() {
                    return Ok(response);
                }
                return Err(Error::new(ErrorKind::Protocol, "OTP response ended early"));
            } else if Instant::now() >= deadline {
                let what = if trailer & RESP_TIMEOUT_WAIT_FLAG != 0 {
                    "YubiKey waited for a touch"
                } else {
                    "YubiKey did not answer the OTP command in time"
                };
                return Err(Error::new(ErrorKind::Timeout, what));
            } else {
                thread::sleep(self.timing.poll_delay);
            }
        }
    }

    /// Reads the serial (slot 0x10). [`ErrorKind::Unsupported`] when the key answers with no
    /// data: its configuration hides the serial (the "serial API visible" flag is off).
    pub fn read_serial(&mut self) -> Result<u32> {
        let resp = self.send_and_receive(SLOT_DEVICE_SERIAL, &[])?;
        if resp.is_empty() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "the YubiKey does not show its serial over OTP (serial-api-visible is off)",
            ));
        }
        parse_serial_response(&resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::hid::transport::MockHidConnection;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    /// The response bytes a key appends: data ‖ !crc16(data) little-endian.
    fn with_crc(data: &[u8]) -> Vec<u8> {
        let mut v = data.to_vec();
        v.extend_from_slice(&(!crc16(data)).to_le_bytes());
        v
    }

    #[test]
    fn crc16_known_answers() {
        // CRC-16/X-25 check value is 0x906E = !crc16("123456789").
        assert_eq!(!crc16(b"123456789"), 0x906E);
        assert_eq!(crc16(&[]), 0xFFFF);
        assert_eq!(crc16(&[0u8; 64]), 0x5B6B);
        // Appending the complemented CRC gives the residual, whatever the data.
        for data in [&b""[..], b"\x00", b"\x00\xbc\x61\x4e", b"123456789"] {
            assert_eq!(crc16(&with_crc(data)), CRC_OK_RESIDUAL);
        }
    }

    #[test]
    fn serial_frame_layout() {
        let frame = build_frame(SLOT_DEVICE_SERIAL, &[]).unwrap();
        assert!(frame[..64].iter().all(|&b| b == 0));
        assert_eq!(frame[64], 0x10);
        let crc = crc16(&[0u8; 64]);
        assert_eq!(u16::from_le_bytes([frame[65], frame[66]]), crc);
        assert_eq!(&frame[67..], &[0, 0, 0]);
        // Only seq 0, the chunk holding slot+CRC (seq 9) and nothing else are sent.
        let reports = frame_reports(&frame);
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[0], [0, 0, 0, 0, 0, 0, 0, 0x80]);
        assert_eq!(
            reports[1],
            [0, 0x10, 0x6B, 0x5B, 0, 0, 0, 0x89],
            "seq 9 carries byte 63, slot, CRC (LE), padding"
        );
        let full = build_frame(0x01, &[0xAA; 64]).unwrap();
        let reports = frame_reports(&full);
        assert_eq!(reports.len(), 10);
        for (i, r) in reports.iter().enumerate() {
            assert_eq!(r[7], 0x80 | i as u8);
        }
        assert_eq!(build_frame(1, &[0; 65]).unwrap_err().kind(), ErrorKind::InvalidData);
    }

    #[test]
    fn serial_response_parses_and_checks_crc() {
        let resp = with_crc(&12345678u32.to_be_bytes());
        assert_eq!(&resp[..4], &[0x00, 0xBC, 0x61, 0x4E]);
        assert_eq!(parse_serial_response(&resp).unwrap(), 12345678);
        let mut bad = resp.clone();
        bad[5] ^= 1;
        assert_eq!(parse_serial_response(&bad).unwrap_err().kind(), ErrorKind::Protocol);
        assert_eq!(
            parse_serial_response(&resp[..5]).unwrap_err().kind(),
            ErrorKind::Protocol
        );
    }

    /// A scripted key: answers `get_feature_report` from a queue, records what was sent.
    fn scripted(reads: Vec<Result<[u8; 8]>>) -> (MockHidConnection, Arc<Mutex<Vec<Vec<u8>>>>) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let mut conn = MockHidConnection::new();
        let log = Arc::clone(&sent);
        conn.expect_send_feature_report().returning(move |d| {
            log.lock().unwrap().push(d.to_vec());
            Ok(())
        });
        let queue = Mutex::new(VecDeque::from(reads));
        conn.expect_get_feature_report().returning(move |buf| {
            let next = queue.lock().unwrap().pop_front();
            match next {
                Some(Ok(r)) => {
                    buf[0] = 0;
                    buf[1..9].copy_from_slice(&r);
                    Ok(9)
                }
                Some(Err(e)) => Err(e),
                None => Err(Error::new(ErrorKind::Disconnected, "script ended")),
            }
        });
        (conn, sent)
    }

    const READY: [u8; 8] = [0, 5, 4, 3, 7, 0, 0, 0];

    fn fast() -> OtpTiming {
        OtpTiming {
            poll_delay: Duration::from_millis(1),
            ready_timeout: Duration::from_millis(50),
            response_timeout: Duration::from_millis(50),
        }
    }

    fn serial_reports(serial: u32) -> Vec<Result<[u8; 8]>> {
        let resp = with_crc(&serial.to_be_bytes());
        let mut data = [0u8; 8];
        data[..6].copy_from_slice(&resp);
        data[7] = RESP_PENDING_FLAG;
        vec![Ok(data), Ok([0, 0, 0, 0, 0, 0, 0, RESP_PENDING_FLAG])]
    }

    #[test]
    fn reads_serial_through_feature_reports() {
        let mut reads = vec![Ok(READY), Ok([0, 5, 4, 3, 7, 0, 0, 0x80]), Ok(READY)];
        // A busy status while the key works, then the answer.
        reads.push(Ok([0, 5, 4, 3, 7, 0, 0, 0x80]));
        reads.extend(serial_reports(12345678));
        let (mut conn, sent) = scripted(reads);
        let serial = OtpInterface::new(&mut conn, fast()).read_serial().unwrap();
        assert_eq!(serial, 12345678);
        let sent = sent.lock().unwrap();
        assert_eq!(sent.len(), 3, "two frame reports and the reset");
        assert_eq!(sent[0], vec![0, 0, 0, 0, 0, 0, 0, 0, 0x80]);
        assert_eq!(sent[1][8], 0x89);
        assert_eq!(sent[2], vec![0, 0, 0, 0, 0, 0, 0, 0, 0xFF]);
    }

    #[test]
    fn status_gives_firmware() {
        let (mut conn, _) = scripted(vec![Ok(READY)]);
        let st = OtpInterface::new(&mut conn, fast()).status().unwrap();
        assert_eq!(st.firmware, Firmware::new(5, 4, 3));
        assert_eq!(st.program_sequence, 7);
    }

    #[test]
    fn corrupt_crc_is_protocol_error() {
        let mut reads = vec![Ok(READY), Ok(READY)];
        let mut r = serial_reports(1);
        if let Ok(d) = &mut r[0] {
            d[4] ^= 0xFF;
        }
        reads.extend(r);
        let (mut conn, _) = scripted(reads);
        let e = OtpInterface::new(&mut conn, fast()).read_serial().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
    }

    #[test]
    fn write_flag_that_never_clears_times_out() {
        let (mut conn, sent) = scripted(vec![Ok([0, 5, 4, 3, 0, 0, 0, 0x80]); 1000]);
        let e = OtpInterface::new(&mut conn, fast()).read_serial().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        // Nothing but (possibly) the reset was written.
        assert!(sent.lock().unwrap().iter().all(|r| r[8] == 0xFF));
    }

    #[test]
    fn hidden_serial_is_unsupported_and_slow_answer_times_out() {
        let (mut conn, _) = scripted(vec![Ok(READY), Ok(READY), Ok(READY)]);
        assert_eq!(
            OtpInterface::new(&mut conn, fast()).read_serial().unwrap_err().kind(),
            ErrorKind::Unsupported
        );
        // Data, then a plain status: cut short.
        let mut reads = vec![Ok(READY), Ok(READY)];
        reads.push(serial_reports(1).remove(0));
        reads.push(Ok(READY));
        let (mut conn, _) = scripted(reads);
        assert_eq!(
            OtpInterface::new(&mut conn, fast()).read_serial().unwrap_err().kind(),
            ErrorKind::Protocol
        );
        let mut reads = vec![Ok(READY), Ok(READY)];
        reads.extend(vec![Ok([0, 5, 4, 3, 0, 0, 0, 0x20]); 1000]);
        let (mut conn, _) = scripted(reads);
        assert_eq!(
            OtpInterface::new(&mut conn, fast()).read_serial().unwrap_err().kind(),
            ErrorKind::Timeout
        );
    }

    #[test]
    fn short_reads_and_vanishing_keys_are_typed() {
        let mut conn = MockHidConnection::new();
        conn.expect_get_feature_report().returning(|_| Ok(3));
        assert_eq!(
            OtpInterface::new(&mut conn, fast()).status().unwrap_err().kind(),
            ErrorKind::Protocol
        );
        // The key answers the first status, then is pulled out mid-frame.
        let (mut conn, _) = scripted(vec![Ok(READY)]);
        let e = OtpInterface::new(&mut conn, fast()).read_serial().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Disconnected);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_reports_never_panic(reports in proptest::collection::vec(proptest::array::uniform8(0u8..), 0..40)) {
            let _ = OtpStatus::parse(&reports.concat());
            let _ = parse_serial_response(&reports.concat());
            let (mut conn, _) = scripted(reports.into_iter().map(Ok).collect());
            let _ = OtpInterface::new(&mut conn, fast()).read_serial();
        }
    }
}
