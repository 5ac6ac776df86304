//! PIV / YubiKey APDU codec: command builders, response parsers and status-word mapping.
//! Pure — no I/O. [`session`] runs the operations over an [`ApduTransport`]; the PC/SC
//! backend supplies the real transport, tests a `scripted::ScriptedTransport`, and the
//! simulator's virtual card parses commands with [`Apdu::parse`].

use std::fmt;

use crate::error::{Error, ErrorKind, Result};
use crate::key::Firmware;

pub mod session;

#[cfg(test)]
pub mod scripted;

pub use session::{transceive, ApduTransport};

/// PIV application identifier (prefix; cards match longer forms by prefix).
pub const AID_PIV: &[u8] = &[0xA0, 0x00, 0x00, 0x03, 0x08];
/// YubiKey management application.
pub const AID_MGMT: &[u8] = &[0xA0, 0x00, 0x00, 0x05, 0x27, 0x47, 0x11, 0x17];
/// YubiKey OTP application.
pub const AID_OTP: &[u8] = &[0xA0, 0x00, 0x00, 0x05, 0x27, 0x20, 0x01, 0x01];

/// Instruction bytes used by PIV and the YubiKey applets.
pub mod ins {
    /// SELECT.
    pub const SELECT: u8 = 0xA4;
    /// VERIFY (PIN).
    pub const VERIFY: u8 = 0x20;
    /// GET DATA.
    pub const GET_DATA: u8 = 0xCB;
    /// GENERAL AUTHENTICATE.
    pub const GENERAL_AUTHENTICATE: u8 = 0x87;
    /// GET RESPONSE.
    pub const GET_RESPONSE: u8 = 0xC0;
    /// YubiKey GET VERSION.
    pub const GET_VERSION: u8 = 0xFD;
    /// YubiKey GET SERIAL (firmware ≥ 5).
    pub const GET_SERIAL: u8 = 0xF8;
    /// YubiKey GET METADATA (firmware ≥ 5.3).
    pub const GET_METADATA: u8 = 0xF7;
    /// Management applet READ CONFIG.
    pub const READ_CONFIG: u8 = 0x1D;
    /// OTP applet "config" instruction (P1 0x10 = read serial).
    pub const OTP: u8 = 0x01;
    /// YubiKey ATTEST (P1 = slot; firmware ≥ 4.3): the slot key's attestation certificate.
    pub const ATTEST: u8 = 0xF9;
    /// GENERATE ASYMMETRIC KEY PAIR.
    pub const GENERATE: u8 = 0x47;
    /// PUT DATA.
    pub const PUT_DATA: u8 = 0xDB;
    /// YubiKey IMPORT ASYMMETRIC KEY.
    pub const IMPORT_KEY: u8 = 0xFE;
}

/// PIV key slots.
pub mod slot {
    /// PIV authentication.
    pub const AUTHENTICATION: u8 = 0x9A;
    /// Digital signature.
    pub const SIGNATURE: u8 = 0x9C;
    /// Key management.
    pub const KEY_MANAGEMENT: u8 = 0x9D;
    /// Card authentication: usable without a PIN, holds the proof key.
    pub const CARD_AUTH: u8 = 0x9E;
    /// Card management key (authenticates GENERATE, PUT DATA, IMPORT).
    pub const MANAGEMENT: u8 = 0x9B;
    /// YubiKey attestation key (its certificate is object `5F FF 01`).
    pub const ATTESTATION: u8 = 0xF9;
}

/// PIV algorithm identifiers (P1 of GENERAL AUTHENTICATE).
pub mod alg {
    /// RSA 2048.
    pub const RSA2048: u8 = 0x07;
    /// ECC P-256.
    pub const ECCP256: u8 = 0x11;
}

/// Status words with a meaning of their own.
pub mod sw {
    /// Success.
    pub const OK: u16 = 0x9000;
    /// Wrong length.
    pub const WRONG_LENGTH: u16 = 0x6700;
    /// Security status not satisfied (PIN required).
    pub const SECURITY_STATUS: u16 = 0x6982;
    /// Authentication method blocked.
    pub const AUTH_BLOCKED: u16 = 0x6983;
    /// Incorrect data field.
    pub const WRONG_DATA: u16 = 0x6A80;
    /// File / application not found.
    pub const NOT_FOUND: u16 = 0x6A82;
    /// Incorrect P1/P2.
    pub const WRONG_P1P2: u16 = 0x6A86;
    /// Referenced data not found.
    pub const REF_NOT_FOUND: u16 = 0x6A88;
    /// Instruction not supported.
    pub const INS_NOT_SUPPORTED: u16 = 0x6D00;
    /// Class not supported.
    pub const CLA_NOT_SUPPORTED: u16 = 0x6E00;
}

/// The PIV data object holding the certificate of `slot`, if the slot has one.
pub fn certificate_object(slot: u8) -> Option<[u8; 3]> {
    match slot {
        slot::AUTHENTICATION => Some([0x5F, 0xC1, 0x05]),
        slot::SIGNATURE => Some([0x5F, 0xC1, 0x0A]),
        slot::KEY_MANAGEMENT => Some([0x5F, 0xC1, 0x0B]),
        slot::CARD_AUTH => Some([0x5F, 0xC1, 0x01]),
        0x82..=0x95 => Some([0x5F, 0xC1, 0x0D + (slot - 0x82)]),
        slot::ATTESTATION => Some([0x5F, 0xFF, 0x01]),
        _ => None,
    }
}

/// A command APDU. `le` is the number of response bytes expected (1..=65536), `None` for none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Apdu {
    /// Class byte (0x10 set = command chaining, more blocks follow).
    pub cla: u8,
    /// Instruction.
    pub ins: u8,
    /// Parameter 1.
    pub p1: u8,
    /// Parameter 2.
    pub p2: u8,
    /// Command data (Lc is its length).
    pub data: Vec<u8>,
    /// Expected response length.
    pub le: Option<u32>,
}

/// Why command bytes are not an APDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApduParseError {
    /// Fewer than 4 bytes.
    TooShort,
    /// The Lc/Le bytes do not match the length of the rest.
    BadLength,
}

impl fmt::Display for ApduParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooShort => "APDU shorter than 4 bytes",
            Self::BadLength => "APDU length bytes do not match its size",
        })
    }
}

impl std::error::Error for ApduParseError {}

impl Apdu {
    /// A command without data and without response (case 1).
    pub fn new(cla: u8, ins: u8, p1: u8, p2: u8) -> Self {
        Self {
            cla,
            ins,
            p1,
            p2,
            data: Vec::new(),
            le: None,
        }
    }

    /// Sets the command data.
    pub fn with_data(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.data = data.into();
        self
    }

    /// Sets the expected response length (256 = "up to 256", encoded as 00 in short form).
    pub fn with_le(mut self, le: u32) -> Self {
        self.le = Some(le.clamp(1, 65536));
        self
    }

    /// Whether the short encoding can carry this command.
    pub fn fits_short(&self) -> bool {
        self.data.len() <= 255 && self.le.is_none_or(|l| l <= 256)
    }

    /// Encodes the command: short form when it fits, extended form otherwise.
    /// Data longer than 65535 bytes is not representable and is truncated by callers' design
    /// (PIV never sends that much; [`session::transceive`] chains long data in short blocks).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 9);
        out.extend_from_slice(&[self.cla, self.ins, self.p1, self.p2]);
        if self.fits_short() {
            if !self.data.is_empty() {
                out.push(self.data.len() as u8);
                out.extend_from_slice(&self.data);
            }
            if let Some(le) = self.le {
                out.push(if le >= 256 { 0 } else { le as u8 });
            }
        } else {
            out.push(0);
            let data = &self.data[..self.data.len().min(0xFFFF)];
            if !data.is_empty() {
                out.extend_from_slice(&(data.len() as u16).to_be_bytes());
                out.extend_from_slice(data);
            }
            if let Some(le) = self.le {
                let le = if le >= 65536 { 0 } else { le as u16 };
                out.extend_from_slice(&le.to_be_bytes());
            }
        }
        out
    }

    /// Parses command bytes (ISO 7816-3 cases 1–4, short and extended).
    /// `CLA INS P1 P2 00` is case 2 short with Le = 256 ("no data"), as yubico-piv-tool sends it.
    pub fn parse(b: &[u8]) -> std::result::Result<Self, ApduParseError> {
        if b.len() < 4 {
            return Err(ApduParseError::TooShort);
        }
        let mut apdu = Apdu::new(b[0], b[1], b[2], b[3]);
        let body = &b[4..];
        let short_le = |x: u8| if x == 0 { 256 } else { u32::from(x) };
        let ext_le = |hi: u8, lo: u8| match u16::from_be_bytes([hi, lo]) {
            0 => 65536,
            n => u32::from(n),
        };
        match body.len() {
            0 => {}
            1 => apdu.le = Some(short_le(body[0])),
            _ if body[0] != 0 => {
                let lc = usize::from(body[0]);
                let rest = &body[1..];
                if rest.len() == lc {
                    apdu.data = rest.to_vec();
                } else if rest.len() == lc + 1 {
                    apdu.data = rest[..lc].to_vec();
                    apdu.le = Some(short_le(rest[lc]));
                } else {
                    return Err(ApduParseError::BadLength);
                }
            }
            3 => apdu.le = Some(ext_le(body[1], body[2])),
            n if n > 3 => {
                let lc = usize::from(u16::from_be_bytes([body[1], body[2]]));
                let rest = &body[3..];
                if lc == 0 {
                    return Err(ApduParseError::BadLength);
                }
                if rest.len() == lc {
                    apdu.data = rest.to_vec();
                } else if rest.len() == lc + 2 {
                    apdu.data = rest[..lc].to_vec();
                    apdu.le = Some(ext_le(rest[lc], rest[lc + 1]));
                } else {
                    return Err(ApduParseError::BadLength);
                }
            }
            _ => return Err(ApduParseError::BadLength),
        }
        Ok(apdu)
    }

    /// Whether command chaining says more blocks follow.
    pub fn chained(&self) -> bool {
        self.cla & 0x10 != 0
    }
}

/// A response APDU: data followed by the status word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Response data.
    pub data: Vec<u8>,
    /// Status word `SW1 SW2`.
    pub sw: u16,
}

impl Response {
    /// A response with `data` and status `sw`.
    pub fn new(data: impl Into<Vec<u8>>, sw: u16) -> Self {
        Self { data: data.into(), sw }
    }

    /// Splits raw response bytes; fewer than two bytes is a protocol error.
    pub fn parse(b: &[u8]) -> Result<Self> {
        if b.len() < 2 {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("response of {} bytes has no status word", b.len()),
            ));
        }
        let (data, sw) = b.split_at(b.len() - 2);
        Ok(Self {
            data: data.to_vec(),
            sw: u16::from_be_bytes([sw[0], sw[1]]),
        })
    }

    /// Encodes `data ‖ SW1 SW2`.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.data.len() + 2);
        v.extend_from_slice(&self.data);
        v.extend_from_slice(&self.sw.to_be_bytes());
        v
    }

    /// `SW1`.
    pub fn sw1(&self) -> u8 {
        (self.sw >> 8) as u8
    }

    /// `SW2`.
    pub fn sw2(&self) -> u8 {
        self.sw as u8
    }

    /// The data when the status is 9000, else the typed error for the status word.
    pub fn ok(self, what: &str) -> Result<Vec<u8>> {
        if self.sw == sw::OK {
            Ok(self.data)
        } else {
            Err(status_error(self.sw, what))
        }
    }
}

/// Maps a failing status word to a typed error. `what` names the operation.
pub fn status_error(status: u16, what: &str) -> Error {
    let (kind, text) = match status {
        sw::SECURITY_STATUS => (ErrorKind::PermissionDenied, "PIN required"),
        sw::AUTH_BLOCKED => (ErrorKind::PermissionDenied, "PIN blocked"),
        sw::NOT_FOUND | sw::REF_NOT_FOUND => (ErrorKind::NotPresent, "not found on the card"),
        sw::INS_NOT_SUPPORTED => (ErrorKind::Unsupported, "not supported by the card"),
        _ => (ErrorKind::Protocol, "unexpected status word"),
    };
    Error::new(kind, format!("{what}: {text} (SW {status:04X})")).with_status_word(status)
}

fn malformed(what: &str) -> Error {
    Error::new(ErrorKind::Protocol, format!("malformed {what}"))
}

// ---------------------------------------------------------------------------------------
// BER-TLV (the subset PIV uses: 1–3 byte tags, lengths up to 3 bytes)

/// One parsed TLV: tag (as its big-endian bytes packed in a u32) and value.
pub type Tlv<'a> = (u32, &'a [u8]);

/// Parses a sequence of BER-TLVs. Trailing garbage is an error.
pub fn parse_tlvs(mut b: &[u8]) -> Result<Vec<Tlv<'_>>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (tlv, rest) = parse_tlv(b)?;
        out.push(tlv);
        b = rest;
    }
    Ok(out)
}

/// Parses one TLV, returning it and the bytes after it.
pub fn parse_tlv(b: &[u8]) -> Result<(Tlv<'_>, &[u8])> {
    let first = *b.first().ok_or_else(|| malformed("TLV (empty)"))?;
    let mut tag = u32::from(first);
    let mut i = 1;
    if first & 0x1F == 0x1F {
        loop {
            let t = *b.get(i).ok_or_else(|| malformed("TLV tag"))?;
            tag = (tag << 8) | u32::from(t);
            i += 1;
            if t & 0x80 == 0 {
                break;
            }
            if i > 3 {
                return Err(malformed("TLV tag (too long)"));
            }
        }
    }
    let l0 = *b.get(i).ok_or_else(|| malformed("TLV length"))?;
    i += 1;
    let len = match l0 {
        0..=0x7F => usize::from(l0),
        0x81..=0x83 => {
            let n = usize::from(l0 & 0x7F);
            let bytes = b.get(i..i + n).ok_or_else(|| malformed("TLV length"))?;
            i += n;
            bytes.iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x))
        }
        _ => return Err(malformed("TLV length")),
    };
    let end = i.checked_add(len).ok_or_else(|| malformed("TLV length"))?;
    let value = b.get(i..end).ok_or_else(|| malformed("TLV (truncated value)"))?;
    Ok(((tag, value), &b[end..]))
}

/// The value of the first TLV with `tag`.
pub fn find_tlv<'a>(tlvs: &[Tlv<'a>], tag: u32) -> Option<&'a [u8]> {
    tlvs.iter().find(|(t, _)| *t == tag).map(|(_, v)| *v)
}

/// Encodes a BER length.
pub fn encode_len(len: usize, out: &mut Vec<u8>) {
    match len {
        0..=0x7F => out.push(len as u8),
        0x80..=0xFF => out.extend_from_slice(&[0x81, len as u8]),
        0x100..=0xFFFF => out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
        _ => out.extend_from_slice(&[0x83, (len >> 16) as u8, (len >> 8) as u8, len as u8]),
    }
}

/// Encodes one TLV; `tag` is written with as many bytes as it needs (1–3).
pub fn tlv(tag: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    if tag > 0xFFFF {
        out.push((tag >> 16) as u8);
    }
    if tag > 0xFF {
        out.push((tag >> 8) as u8);
    }
    out.push(tag as u8);
    encode_len(value.len(), &mut out);
    out.extend_from_slice(value);
    out
}

// ---------------------------------------------------------------------------------------
// Command builders

/// SELECT by AID (`00 A4 04 00 Lc AID 00`).
pub fn select(aid: &[u8]) -> Apdu {
    Apdu::new(0x00, ins::SELECT, 0x04, 0x00).with_data(aid).with_le(256)
}

/// YubiKey GET VERSION (PIV applet).
pub fn get_version() -> Apdu {
    Apdu::new(0x00, ins::GET_VERSION, 0, 0).with_le(256)
}

/// YubiKey GET SERIAL (PIV applet, firmware ≥ 5).
pub fn get_serial() -> Apdu {
    Apdu::new(0x00, ins::GET_SERIAL, 0, 0).with_le(256)
}

/// OTP applet: read the device serial (firmware < 5).
pub fn otp_get_serial() -> Apdu {
    Apdu::new(0x00, ins::OTP, 0x10, 0x00).with_le(256)
}

/// Management applet READ CONFIG, page 0.
pub fn mgmt_read_config() -> Apdu {
    Apdu::new(0x00, ins::READ_CONFIG, 0, 0).with_le(256)
}

/// GET DATA for a PIV object (`5C L id`).
pub fn get_data(object: &[u8]) -> Apdu {
    Apdu::new(0x00, ins::GET_DATA, 0x3F, 0xFF)
        .with_data(tlv(0x5C, object))
        .with_le(256)
}

/// GET RESPONSE for `le` more bytes (0 = 256).
pub fn get_response(le: u8) -> Apdu {
    Apdu::new(0x00, ins::GET_RESPONSE, 0, 0).with_le(if le == 0 { 256 } else { u32::from(le) })
}

/// GENERAL AUTHENTICATE asking `slot` to sign `input` with `algorithm`
/// (`7C { 82 00, 81 input }`). Long data is chained by [`session::transceive`].
pub fn general_authenticate(algorithm: u8, slot: u8, input: &[u8]) -> Apdu {
    let mut inner = vec![0x82, 0x00];
    inner.extend_from_slice(&tlv(0x81, input));
    Apdu::new(0x00, ins::GENERAL_AUTHENTICATE, algorithm, slot)
        .with_data(tlv(0x7C, &inner))
        .with_le(256)
}

/// YubiKey ATTEST of `slot` (`00 F9 slot 00`): the answer is a bare DER certificate.
pub fn attest(slot: u8) -> Apdu {
    Apdu::new(0x00, ins::ATTEST, slot, 0x00).with_le(256)
}

// ---------------------------------------------------------------------------------------
// Response parsers

/// GET VERSION → firmware.
pub fn parse_version(data: &[u8]) -> Result<Firmware> {
    match data {
        [a, b, c] => Ok(Firmware::new(*a, *b, *c)),
        _ => Err(malformed("version")),
    }
}

/// GET SERIAL / OTP serial → the serial (4 bytes big-endian).
pub fn parse_serial(data: &[u8]) -> Result<u32> {
    let b: [u8; 4] = data.try_into().map_err(|_| malformed("serial"))?;
    Ok(u32::from_be_bytes(b))
}

/// Management READ CONFIG → serial (tag 02) and firmware (tag 05) when present.
pub fn parse_read_config(data: &[u8]) -> Result<(Option<u32>, Option<Firmware>)> {
    let (&len, rest) = data.split_first().ok_or_else(|| malformed("device config"))?;
    let body = rest.get(..usize::from(len)).ok_or_else(|| malformed("device config"))?;
    // Management TLVs are always 1-byte tag, 1-byte length.
    let mut serial = None;
    let mut firmware = None;
    let mut b = body;
    while let [tag, l, rest @ ..] = b {
        let l = usize::from(*l);
        let v = rest.get(..l).ok_or_else(|| malformed("device config"))?;
        match tag {
            0x02 => serial = Some(parse_serial(v)?),
            0x05 => firmware = Some(parse_version(v)?),
            _ => {}
        }
        b = &rest[l..];
    }
    if !b.is_empty() {
        return Err(malformed("device config"));
    }
    Ok((serial, firmware))
}

/// A GET DATA answer → the object's content (the value of tag 53).
pub fn parse_object(data: &[u8]) -> Result<&[u8]> {
    let ((tag, value), rest) = parse_tlv(data)?;
    if tag != 0x53 || !rest.is_empty() {
        return Err(malformed("data object"));
    }
    Ok(value)
}

/// A certificate object's content (`70 cert 71 info FE lrc`) → the DER certificate.
pub fn parse_certificate_object(content: &[u8]) -> Result<Vec<u8>> {
    let tlvs = parse_tlvs(content)?;
    let cert = find_tlv(&tlvs, 0x70).filter(|c| !c.is_empty());
    let Some(cert) = cert else {
        return Err(Error::new(ErrorKind::NotPresent, "certificate object is empty"));
    };
    match find_tlv(&tlvs, 0x71) {
        None | Some([]) | Some([0x00]) => Ok(cert.to_vec()),
        Some([0x01]) => Err(Error::new(
            ErrorKind::Unsupported,
            "certificate is gzip-compressed; store it uncompressed",
        )),
        Some(_) => Err(malformed("certificate info")),
    }
}

/// ATTEST answer → the DER certificate (a bare `SEQUENCE`, checked for shape only; the
/// trust chain parses it).
pub fn parse_attestation(data: &[u8]) -> Result<Vec<u8>> {
    let ((tag, _), rest) = parse_tlv(data)?;
    if tag != 0x30 || !rest.is_empty() {
        return Err(malformed("attestation certificate"));
    }
    Ok(data.to_vec())
}

/// GENERAL AUTHENTICATE answer (`7C { 82 output }`) → output.
pub fn parse_authenticate_response(data: &[u8]) -> Result<Vec<u8>> {
    let ((tag, inner), rest) = parse_tlv(data)?;
    if tag != 0x7C || !rest.is_empty() {
        return Err(malformed("authenticate response"));
    }
    let tlvs = parse_tlvs(inner)?;
    match find_tlv(&tlvs, 0x82) {
        Some(out) if !out.is_empty() => Ok(out.to_vec()),
        _ => Err(malformed("authenticate response (no signature)")),
    }
}

/// The DigestInfo prefix of SHA-256 (PKCS#1 v1.5).
const SHA256_DIGEST_INFO: &[u8] = &[
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20,
];

/// PKCS#1 v1.5 signature padding of a SHA-256 digest for a modulus of `k` bytes
/// (`00 01 FF… 00 DigestInfo digest`). The card does the raw RSA operation only.
pub fn pkcs1_v15_sha256(digest: &[u8; 32], k: usize) -> Result<Vec<u8>> {
    let t_len = SHA256_DIGEST_INFO.len() + digest.len();
    if k < t_len + 11 {
        return Err(Error::new(ErrorKind::InvalidData, "RSA modulus too short for SHA-256"));
    }
    let mut em = Vec::with_capacity(k);
    em.extend_from_slice(&[0x00, 0x01]);
    em.resize(k - t_len - 1, 0xFF);
    em.push(0x00);
    em.extend_from_slice(SHA256_DIGEST_INFO);
    em.extend_from_slice(digest);
    Ok(em)
}

#[cfg(test)]
mod tests;
