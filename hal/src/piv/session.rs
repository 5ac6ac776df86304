//! PIV operations over an [`ApduTransport`]: chaining in both directions, serial with the
//! fallbacks older firmware needs, certificate, and challenge signing.

use sha2::{Digest, Sha256};

use super::{
    alg, certificate_object, general_authenticate, get_response, parse_authenticate_response, parse_certificate_object,
    parse_object, parse_read_config, parse_serial, parse_version, pkcs1_v15_sha256, select, status_error, sw, Apdu,
    Response, AID_MGMT, AID_OTP, AID_PIV,
};
use crate::error::{Error, ErrorKind, Result};
use crate::key::Firmware;

/// Sends raw command APDUs to a card and returns its raw answers (data ‖ SW1 SW2).
///
/// The seam between the PIV logic and the device: the PC/SC backend implements it over
/// a card handle inside a transaction, tests script it.
pub trait ApduTransport {
    /// Sends one command, returns the response bytes.
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>>;
}

/// Upper bound of a reassembled response (a PIV object is at most a few KiB); a card that
/// keeps answering 61xx beyond it is broken, not large.
const MAX_RESPONSE: usize = 64 * 1024;

/// Sends `apdu` with short APDUs only: data longer than 255 bytes goes as a command chain
/// (CLA | 0x10 on all blocks but the last); `61xx` answers are collected with GET RESPONSE
/// and `6Cxx` (wrong Le) is retried once with the length the card asked for.
pub fn transceive(t: &mut dyn ApduTransport, apdu: &Apdu) -> Result<Response> {
    let mut blocks: Vec<&[u8]> = apdu.data.chunks(255).collect();
    let last = blocks.pop().unwrap_or(&[]);
    for block in blocks {
        let cmd = Apdu {
            cla: apdu.cla | 0x10,
            data: block.to_vec(),
            le: None,
            ..apdu.clone()
        };
        let r = Response::parse(&t.transmit(&cmd.encode())?)?;
        if r.sw != sw::OK {
            return Ok(r);
        }
    }
    let mut cmd = Apdu {
        data: last.to_vec(),
        le: apdu.le.map(|l| l.min(256)),
        ..apdu.clone()
    };
    let mut r = Response::parse(&t.transmit(&cmd.encode())?)?;
    if r.sw1() == 0x6C {
        cmd.le = Some(if r.sw2() == 0 { 256 } else { u32::from(r.sw2()) });
        r = Response::parse(&t.transmit(&cmd.encode())?)?;
    }
    let mut data = std::mem::take(&mut r.data);
    while r.sw1() == 0x61 {
        if data.len() > MAX_RESPONSE {
            return Err(Error::new(ErrorKind::Protocol, "response chaining does not end"));
        }
        r = Response::parse(&t.transmit(&get_response(r.sw2()).encode())?)?;
        data.append(&mut r.data);
    }
    Ok(Response::new(data, r.sw))
}

fn call(t: &mut dyn ApduTransport, apdu: &Apdu, what: &str) -> Result<Vec<u8>> {
    transceive(t, apdu)?.ok(what)
}

/// Selects the PIV applet. A card without it is "not a PIV key" ([`ErrorKind::NotPresent`]).
pub fn select_piv(t: &mut dyn ApduTransport) -> Result<()> {
    call(t, &select(AID_PIV), "SELECT PIV").map(drop)
}

/// Firmware version (PIV GET VERSION; the PIV applet must be selected).
pub fn read_version(t: &mut dyn ApduTransport) -> Result<Firmware> {
    parse_version(&call(t, &super::get_version(), "GET VERSION")?)
}

/// Serial number. Firmware ≥ 5 answers GET SERIAL in the PIV applet; older keys answer
/// `6D00`, then the management applet (READ CONFIG tag 02) and the OTP applet are asked,
/// and PIV is selected again. The PIV applet must be selected on entry and is on exit.
pub fn read_serial(t: &mut dyn ApduTransport) -> Result<u32> {
    let r = transceive(t, &super::get_serial())?;
    if r.sw == sw::OK {
        return parse_serial(&r.data);
    }
    if r.sw != sw::INS_NOT_SUPPORTED {
        return Err(status_error(r.sw, "GET SERIAL"));
    }
    let fallback = serial_from_mgmt(t).or_else(|first| serial_from_otp(t).map_err(|_| first));
    select_piv(t)?;
    fallback
}

fn serial_from_mgmt(t: &mut dyn ApduTransport) -> Result<u32> {
    call(t, &select(AID_MGMT), "SELECT management")?;
    let (serial, _) = parse_read_config(&call(t, &super::mgmt_read_config(), "READ CONFIG")?)?;
    serial.ok_or_else(|| Error::new(ErrorKind::NotPresent, "device config has no serial"))
}

fn serial_from_otp(t: &mut dyn ApduTransport) -> Result<u32> {
    call(t, &select(AID_OTP), "SELECT OTP")?;
    parse_serial(&call(t, &super::otp_get_serial(), "OTP serial")?)
}

/// The DER certificate stored for `slot` ([`ErrorKind::NotPresent`] when there is none).
pub fn read_certificate(t: &mut dyn ApduTransport, slot: u8) -> Result<Vec<u8>> {
    let object = certificate_object(slot)
        .ok_or_else(|| Error::new(ErrorKind::InvalidData, format!("slot {slot:02X} holds no certificate")))?;
    let data = call(t, &super::get_data(&object), "GET DATA certificate")?;
    parse_certificate_object(parse_object(&data)?)
}

/// ECDSA P-256 over SHA-256 of `challenge`: the card signs the 32-byte digest, which is the
/// same as ECDSA-SHA256 over the challenge. Returns the DER signature.
pub fn sign_p256(t: &mut dyn ApduTransport, slot: u8, challenge: &[u8]) -> Result<Vec<u8>> {
    let digest = Sha256::digest(challenge);
    let apdu = general_authenticate(alg::ECCP256, slot, &digest);
    parse_authenticate_response(&call(t, &apdu, "GENERAL AUTHENTICATE")?)
}

/// RSA-2048 PKCS#1 v1.5 with SHA-256 over `challenge`: padded on the host, chained to the
/// card, which performs the raw private-key operation. Returns the 256-byte signature.
pub fn sign_rsa2048(t: &mut dyn ApduTransport, slot: u8, challenge: &[u8]) -> Result<Vec<u8>> {
    let digest: [u8; 32] = Sha256::digest(challenge).into();
    let em = pkcs1_v15_sha256(&digest, 256)?;
    let apdu = general_authenticate(alg::RSA2048, slot, &em);
    let sig = parse_authenticate_response(&call(t, &apdu, "GENERAL AUTHENTICATE")?)?;
    if sig.len() != 256 {
        return Err(Error::new(ErrorKind::Protocol, "RSA signature is not 256 bytes"));
    }
    Ok(sig)
}

/// A fresh attestation of `slot`'s key (`INS F9`). A slot whose key was imported, an
/// empty slot, or a card without the instruction is [`ErrorKind::Unsupported`] /
/// [`ErrorKind::NotPresent`]: it cannot attest, which is not a transport failure.
pub fn attest(t: &mut dyn ApduTransport, slot: u8) -> Result<Vec<u8>> {
    let r = transceive(t, &super::attest(slot))?;
    match r.sw {
        sw::OK => super::parse_attestation(&r.data),
        sw::WRONG_DATA => Err(Error::new(
            ErrorKind::Unsupported,
            format!("slot {slot:02X} cannot be attested (key imported, not generated on the device) (SW 6A80)"),
        )
        .with_status_word(sw::WRONG_DATA)),
        other => Err(status_error(other, "ATTEST")),
    }
}

/// The attestation of `slot` with the device's F9 certificate: what a verifier needs.
pub fn read_attestation(t: &mut dyn ApduTransport, slot: u8) -> Result<crate::key::KeyAttestation> {
    let certificate = attest(t, slot)?;
    let f9 = read_certificate(t, super::slot::ATTESTATION).map_err(|e| {
        Error::new(
            if e.kind() == ErrorKind::NotPresent {
                ErrorKind::Unsupported
            } else {
                e.kind()
            },
            format!("reading the F9 attestation certificate: {e}"),
        )
    })?;
    Ok(crate::key::KeyAttestation {
        certificate,
        intermediates: vec![f9],
    })
}

/// What the identification probe found: a YubiKey-like PIV card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// Serial number.
    pub serial: u32,
    /// Firmware version, when GET VERSION answered.
    pub firmware: Option<Firmware>,
}

/// Identifies a card by behaviour: SELECT PIV, GET VERSION, serial.
pub fn identify(t: &mut dyn ApduTransport) -> Result<Identity> {
    select_piv(t)?;
    let firmware = match read_version(t) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == ErrorKind::Unsupported => None,
        Err(e) => return Err(e),
    };
    let serial = read_serial(t)?;
    Ok(Identity { serial, firmware })
}

/// Signs `challenge` with whichever key `slot` holds: ECDSA P-256 first; a card that
/// answers 6A80 (wrong algorithm for the slot's key) is asked again for RSA-2048. Two 6A80s
/// mean the slot holds no usable key ([`ErrorKind::NotPresent`]). Returns the PIV
/// algorithm id ([`alg`]) and the signature.
pub fn sign_with_slot(t: &mut dyn ApduTransport, slot: u8, challenge: &[u8]) -> Result<(u8, Vec<u8>)> {
    let digest = Sha256::digest(challenge);
    let r = transceive(t, &general_authenticate(alg::ECCP256, slot, &digest))?;
    if r.sw != sw::WRONG_DATA {
        return Ok((
            alg::ECCP256,
            parse_authenticate_response(&r.ok("GENERAL AUTHENTICATE")?)?,
        ));
    }
    match sign_rsa2048(t, slot, challenge) {
        Ok(sig) => Ok((alg::RSA2048, sig)),
        Err(e) if e.status_word() == Some(sw::WRONG_DATA) => Err(Error::new(
            ErrorKind::NotPresent,
            format!("slot {slot:02X} holds no P-256 or RSA-2048 key"),
        )),
        Err(e) => Err(e),
    }
}
