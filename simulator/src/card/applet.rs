//! The virtual card itself: a provisioned YubiKey 5 with the PIV, management and OTP applets
//! (hardware.md §2–3): the feature set yubico-piv-tool, OpenSC, ykman and keyfloat's own
//! PC/SC backend need. Pure state machine: raw command APDU in, raw response out.

use std::fmt;

use std::collections::BTreeMap;

use keyfloat_hal::backend::sim::{SimAttestation, SimKeySpec};
use keyfloat_hal::piv::{self, find_tlv, ins, parse_tlvs, sw, tlv, Apdu, Response, Tlv, AID_MGMT, AID_OTP};
use keyfloat_hal::trust::attestation::sim_ca::DeviceAttester;
use keyfloat_hal::{Firmware, KeyAttestation};
use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::EncodePublicKey;

use super::mgmt::ManagementKey;

/// ATR of a YubiKey 5 NFC (ykman accepts it with a non-Yubico reader name).
pub const ATR_YUBIKEY5_NFC: &[u8] = &[
    0x3B, 0x8D, 0x80, 0x01, 0x80, 0x73, 0xC0, 0x21, 0xC0, 0x57, 0x59, 0x75, 0x62, 0x69, 0x4B, 0x65, 0x79, 0xF9,
];

/// Full PIV AID (clients send prefixes of it, or exactly it).
const AID_PIV_FULL: &[u8] = &[0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00];
const SELECT_PIV_RESPONSE: &[u8] = &[
    0x61, 0x11, 0x4F, 0x06, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00, 0x79, 0x07, 0x4F, 0x05, 0xA0, 0x00, 0x00, 0x03, 0x08,
];
const DISCOVERY: &[u8] = &[
    0x7E, 0x12, 0x4F, 0x0B, 0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00, 0x5F, 0x2F, 0x02, 0x40,
    0x00,
];
const FASC_N: &[u8] = &[
    0xD4, 0xE7, 0x39, 0xDA, 0x73, 0x9C, 0xED, 0x39, 0xCE, 0x73, 0x9D, 0x83, 0x68, 0x58, 0x21, 0x08, 0x42, 0x10, 0x84,
    0x21, 0xC8, 0x42, 0x10, 0xC3, 0xEB,
];
const DEFAULT_PIN: &[u8] = b"123456";
const PIN_TRIES: u8 = 3;
const MGMT_KEY_SLOT: u8 = 0x9B;
/// PIN / touch policy byte "never" (YubiKey encoding; 0 means "the slot's default").
const POLICY_NEVER: u8 = 0x01;
/// Key origin in GET METADATA: generated on the card / imported.
const ORIGIN_GENERATED: u8 = 0x01;
const ORIGIN_IMPORTED: u8 = 0x02;
const CERT_OBJECT_9E: [u8; 3] = [0x5F, 0xC1, 0x01];
const CERT_OBJECT_F9: [u8; 3] = [0x5F, 0xFF, 0x01];

/// How the card answers `INS F9`.
#[derive(Clone)]
enum Attester {
    /// A YubiKey: its own F9 key attests keys generated on the card.
    Device(DeviceAttester),
    /// A programmable card replaying certificates captured from another device.
    Replay(KeyAttestation),
    /// No attestation key at all (not a YubiKey).
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applet {
    None,
    Piv,
    Mgmt,
    Otp,
}

/// A virtual provisioned YubiKey. Persistent state (keys, objects, PIN counter) lives as long
/// as the value; volatile state (selected applet, PIN verified, chaining buffers) is cleared
/// by [`VirtualCard::power_off`], [`VirtualCard::power_on`] and [`VirtualCard::reset`].
pub struct VirtualCard {
    serial: u32,
    firmware: Firmware,
    signing_key: SigningKey,
    /// Slot 9E's key was generated on the card (attestable) rather than imported.
    key_generated: bool,
    /// Slot 9E's PIN and touch policy bytes.
    policy: [u8; 2],
    certificate: Option<Vec<u8>>,
    /// Other data objects written with PUT DATA (content of tag 53, by object id).
    objects: BTreeMap<Vec<u8>, Vec<u8>>,
    attester: Attester,
    mgmt_key: ManagementKey,
    pin: [u8; 8],
    pin_tries_left: u8,
    atr: Vec<u8>,
    // volatile
    selected: Applet,
    pin_verified: bool,
    mgmt_authenticated: bool,
    /// The plaintext witness of a management-key authentication in progress.
    mgmt_witness: Option<Vec<u8>>,
    chain: Option<(u8, u8, u8, Vec<u8>)>,
    pending: Vec<u8>,
}

impl fmt::Debug for VirtualCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtualCard")
            .field("serial", &self.serial)
            .field("firmware", &self.firmware)
            .field("provisioned", &self.certificate.is_some())
            .field("selected", &self.selected)
            .finish_non_exhaustive()
    }
}

fn pad_pin(pin: &[u8]) -> [u8; 8] {
    let mut p = [0xFF; 8];
    for (d, s) in p.iter_mut().zip(pin) {
        *d = *s;
    }
    p
}

fn aid_matches(requested: &[u8], aid: &[u8]) -> bool {
    requested.len() >= 5 && (aid.starts_with(requested) || requested.starts_with(aid))
}

fn status(code: u16) -> Vec<u8> {
    code.to_be_bytes().to_vec()
}

impl VirtualCard {
    /// A card holding `spec`'s key in slot 9E (and its certificate when provisioned).
    /// The spec's serial must be decimal (YubiKey serials are u32); others become 0.
    ///
    /// The spec's attestation says what the card does with `INS F9`: a device attester
    /// (slot 9E counts as generated on the card), a replay of canned certificates, or
    /// nothing (slot 9E counts as imported). The management key is the default one, 3DES
    /// below firmware 5.7 and AES-192 from 5.7 on, as on a YubiKey.
    pub fn new(spec: &SimKeySpec) -> Self {
        let (attester, key_generated) = match &spec.attestation {
            Some(SimAttestation::Device(d)) => (Attester::Device(d.clone()), true),
            Some(SimAttestation::Replay(a)) => (Attester::Replay(a.clone()), true),
            None => (Attester::None, false),
        };
        Self {
            serial: spec.serial.as_str().parse().unwrap_or(0),
            firmware: spec.firmware,
            signing_key: spec.signing_key.clone(),
            key_generated,
            policy: [POLICY_NEVER, POLICY_NEVER],
            certificate: spec.certificate.clone(),
            objects: BTreeMap::new(),
            attester,
            mgmt_key: ManagementKey::default_for(spec.firmware),
            pin: pad_pin(DEFAULT_PIN),
            pin_tries_left: PIN_TRIES,
            atr: ATR_YUBIKEY5_NFC.to_vec(),
            selected: Applet::None,
            pin_verified: false,
            mgmt_authenticated: false,
            mgmt_witness: None,
            chain: None,
            pending: Vec::new(),
        }
    }

    /// Gives the card a YubiKey's F9 attestation key (keys it generates become attestable).
    pub fn with_attester(mut self, attester: DeviceAttester) -> Self {
        self.attester = Attester::Device(attester);
        self
    }

    /// Whether slot 9E's key was generated on the card.
    pub fn key_generated(&self) -> bool {
        self.key_generated
    }

    /// Slot 9E's public key (SubjectPublicKeyInfo DER).
    pub fn public_key_der(&self) -> Vec<u8> {
        self.signing_key
            .verifying_key()
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default()
    }

    /// The serial the card reports.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// The answer to reset.
    pub fn atr(&self) -> &[u8] {
        &self.atr
    }

    /// PIN tries left.
    pub fn pin_tries_left(&self) -> u8 {
        self.pin_tries_left
    }

    fn reset_volatile(&mut self) {
        self.selected = Applet::None;
        self.pin_verified = false;
        self.mgmt_authenticated = false;
        self.mgmt_witness = None;
        self.chain = None;
        self.pending.clear();
    }

    /// Power off (pcscd idles the card, or a client disconnected with UNPOWER).
    pub fn power_off(&mut self) {
        self.reset_volatile();
    }

    /// Power on.
    pub fn power_on(&mut self) {
        self.reset_volatile();
    }

    /// Warm reset (a client disconnected with RESET).
    pub fn reset(&mut self) {
        self.reset_volatile();
    }

    /// Processes one command APDU and returns the response (data ‖ SW). Never panics.
    pub fn process(&mut self, raw: &[u8]) -> Vec<u8> {
        let Ok(mut apdu) = Apdu::parse(raw) else {
            self.pending.clear();
            return status(sw::WRONG_LENGTH);
        };
        // Extended-length requests get the whole answer at once.
        let extended = raw.len() >= 7 && raw[4] == 0;
        if apdu.cla & !0x10 != 0 {
            return status(sw::CLA_NOT_SUPPORTED);
        }
        if apdu.ins == ins::GET_RESPONSE {
            return self.get_response(apdu.le);
        }
        self.pending.clear();
        if apdu.chained() {
            match &mut self.chain {
                Some((i, p1, p2, buf)) if (*i, *p1, *p2) == (apdu.ins, apdu.p1, apdu.p2) => {
                    buf.extend_from_slice(&apdu.data)
                }
                _ => self.chain = Some((apdu.ins, apdu.p1, apdu.p2, apdu.data.clone())),
            }
            return status(sw::OK);
        }
        if let Some((i, p1, p2, mut buf)) = self.chain.take() {
            if (i, p1, p2) == (apdu.ins, apdu.p1, apdu.p2) {
                buf.extend_from_slice(&apdu.data);
                apdu.data = buf;
            }
        }
        let r = self.dispatch(&apdu);
        self.respond(r, apdu.le, extended)
    }

    /// Applies Le: a short request gets at most Le (≤ 256) bytes, the rest through GET RESPONSE.
    fn respond(&mut self, r: Response, le: Option<u32>, extended: bool) -> Vec<u8> {
        let limit = if extended {
            usize::MAX
        } else {
            le.map_or(256, |l| l.min(256) as usize)
        };
        if r.sw != sw::OK || r.data.len() <= limit {
            return r.encode();
        }
        let mut data = r.data;
        self.pending = data.split_off(limit);
        let more = self.pending.len().min(256) as u8; // 256 or more → 00
        data.extend_from_slice(&[0x61, more]);
        data
    }

    fn get_response(&mut self, le: Option<u32>) -> Vec<u8> {
        if self.pending.is_empty() {
            return status(0x6985);
        }
        let pending = std::mem::take(&mut self.pending);
        self.respond(Response::new(pending, sw::OK), le, false)
    }

    fn dispatch(&mut self, a: &Apdu) -> Response {
        if a.ins == ins::SELECT {
            return self.select(a);
        }
        match self.selected {
            Applet::Piv => self.piv(a),
            Applet::Mgmt if a.ins == ins::READ_CONFIG => Response::new(self.device_config(), sw::OK),
            Applet::Otp if a.ins == ins::OTP && a.p1 == 0x10 => Response::new(self.serial.to_be_bytes(), sw::OK),
            _ => Response::new([], sw::INS_NOT_SUPPORTED),
        }
    }

    fn select(&mut self, a: &Apdu) -> Response {
        if a.p1 != 0x04 {
            return Response::new([], sw::WRONG_P1P2);
        }
        let (applet, data) = if aid_matches(&a.data, AID_PIV_FULL) {
            (Applet::Piv, SELECT_PIV_RESPONSE.to_vec())
        } else if aid_matches(&a.data, AID_MGMT) {
            (Applet::Mgmt, self.firmware.to_string().into_bytes())
        } else if aid_matches(&a.data, AID_OTP) && a.data.len() >= 7 {
            let f = self.firmware;
            (Applet::Otp, vec![f.major, f.minor, f.patch, 0, 0, 0])
        } else {
            return Response::new([], sw::NOT_FOUND);
        };
        // Conservative: leaving PIV drops the verified PIN.
        self.pin_verified = false;
        self.selected = applet;
        Response::new(data, sw::OK)
    }

    fn piv(&mut self, a: &Apdu) -> Response {
        match a.ins {
            ins::GET_VERSION => {
                let f = self.firmware;
                Response::new([f.major, f.minor, f.patch], sw::OK)
            }
            ins::GET_SERIAL => Response::new(self.serial.to_be_bytes(), sw::OK),
            ins::VERIFY => self.verify(a),
            ins::GET_DATA => self.get_data(a),
            ins::GET_METADATA => self.metadata(a.p2),
            ins::GENERAL_AUTHENTICATE if a.p2 == MGMT_KEY_SLOT => self.mgmt_authenticate(a),
            ins::GENERAL_AUTHENTICATE => self.authenticate(a),
            ins::ATTEST => self.attest(a),
            ins::GENERATE => self.generate(a),
            ins::PUT_DATA => self.put_data(a),
            ins::IMPORT_KEY => self.import_key(a),
            _ => Response::new([], sw::INS_NOT_SUPPORTED),
        }
    }

    fn verify(&mut self, a: &Apdu) -> Response {
        if a.p2 != 0x80 {
            return Response::new([], sw::REF_NOT_FOUND);
        }
        if a.p1 == 0xFF {
            self.pin_verified = false;
            return Response::new([], sw::OK);
        }
        if a.p1 != 0x00 {
            return Response::new([], sw::WRONG_P1P2);
        }
        if self.pin_tries_left == 0 {
            return Response::new([], sw::AUTH_BLOCKED);
        }
        if a.data.is_empty() {
            return if self.pin_verified {
                Response::new([], sw::OK)
            } else {
                Response::new([], 0x63C0 | u16::from(self.pin_tries_left))
            };
        }
        if a.data.len() != 8 {
            return Response::new([], sw::WRONG_DATA);
        }
        if a.data == self.pin {
            self.pin_tries_left = PIN_TRIES;
            self.pin_verified = true;
            Response::new([], sw::OK)
        } else {
            self.pin_tries_left -= 1;
            self.pin_verified = false;
            if self.pin_tries_left == 0 {
                Response::new([], sw::AUTH_BLOCKED)
            } else {
                Response::new([], 0x63C0 | u16::from(self.pin_tries_left))
            }
        }
    }

    fn get_data(&self, a: &Apdu) -> Response {
        if (a.p1, a.p2) != (0x3F, 0xFF) {
            return Response::new([], sw::WRONG_P1P2);
        }
        let Ok(tlvs) = parse_tlvs(&a.data) else {
            return Response::new([], sw::WRONG_DATA);
        };
        let Some(id) = find_tlv(&tlvs, 0x5C) else {
            return Response::new([], sw::WRONG_DATA);
        };
        let content = match id {
            [0x7E] => return Response::new(DISCOVERY, sw::OK),
            [0x5F, 0xC1, 0x02] => self.chuid(),
            [0x5F, 0xC1, 0x07] => self.ccc(),
            id if id == CERT_OBJECT_9E => match &self.certificate {
                Some(cert) => cert_object(cert),
                None => return Response::new([], sw::NOT_FOUND),
            },
            id if self.objects.contains_key(id) => self.objects[id].clone(),
            id if id == CERT_OBJECT_F9 => match &self.attester {
                Attester::Device(d) => cert_object(d.certificate()),
                Attester::Replay(a) => match a.intermediates.first() {
                    Some(f9) => cert_object(f9),
                    None => return Response::new([], sw::NOT_FOUND),
                },
                Attester::None => return Response::new([], sw::NOT_FOUND),
            },
            _ => return Response::new([], sw::NOT_FOUND),
        };
        Response::new(tlv(0x53, &content), sw::OK)
    }

    fn chuid(&self) -> Vec<u8> {
        let mut guid = [0u8; 16];
        guid[..8].copy_from_slice(b"keyfloat");
        guid[12..].copy_from_slice(&self.serial.to_be_bytes());
        let mut v = tlv(0x30, FASC_N);
        v.extend_from_slice(&tlv(0x34, &guid));
        v.extend_from_slice(&tlv(0x35, b"20300101"));
        v.extend_from_slice(&[0x3E, 0x00, 0xFE, 0x00]);
        v
    }

    fn ccc(&self) -> Vec<u8> {
        let mut card_id = [0u8; 14];
        card_id[..8].copy_from_slice(b"keyfloat");
        card_id[10..].copy_from_slice(&self.serial.to_be_bytes());
        let mut f0 = vec![0xA0, 0x00, 0x00, 0x01, 0x16, 0xFF, 0x02];
        f0.extend_from_slice(&card_id);
        let mut v = tlv(0xF0, &f0);
        v.extend_from_slice(&[
            0xF1, 0x01, 0x21, 0xF2, 0x01, 0x21, 0xF3, 0x00, 0xF4, 0x01, 0x00, 0xF5, 0x01, 0x10, 0xF6, 0x00, 0xF7, 0x00,
            0xFA, 0x00, 0xFB, 0x00, 0xFC, 0x00, 0xFD, 0x00, 0xFE, 0x00,
        ]);
        v
    }

    fn metadata(&self, p2: u8) -> Response {
        let data = match p2 {
            0x80 => {
                let default = u8::from(self.pin == pad_pin(DEFAULT_PIN));
                vec![
                    0x01,
                    0x01,
                    0xFF,
                    0x05,
                    0x01,
                    default,
                    0x06,
                    0x02,
                    PIN_TRIES,
                    self.pin_tries_left,
                ]
            }
            0x81 => vec![0x01, 0x01, 0xFF, 0x05, 0x01, 0x01, 0x06, 0x02, 0x03, 0x03],
            MGMT_KEY_SLOT => vec![
                0x01,
                0x01,
                self.mgmt_key.algorithm(),
                0x02,
                0x02,
                0x00,
                0x01,
                0x05,
                0x01,
                u8::from(self.mgmt_key.is_default()),
            ],
            piv::slot::CARD_AUTH => {
                let point = self.signing_key.verifying_key().to_encoded_point(false);
                let origin = if self.key_generated {
                    ORIGIN_GENERATED
                } else {
                    ORIGIN_IMPORTED
                };
                let mut v = vec![
                    0x01,
                    0x01,
                    piv::alg::ECCP256,
                    0x02,
                    0x02,
                    self.policy[0],
                    self.policy[1],
                    0x03,
                    0x01,
                    origin,
                ];
                v.extend_from_slice(&tlv(0x04, &tlv(0x86, point.as_bytes())));
                v
            }
            _ => return Response::new([], sw::REF_NOT_FOUND),
        };
        Response::new(data, sw::OK)
    }

    fn authenticate(&self, a: &Apdu) -> Response {
        match a.p2 {
            piv::slot::CARD_AUTH => {}
            piv::slot::AUTHENTICATION | piv::slot::SIGNATURE | piv::slot::KEY_MANAGEMENT | 0x82..=0x95 => {
                return Response::new([], sw::WRONG_DATA); // empty slot
            }
            _ => return Response::new([], sw::WRONG_P1P2),
        }
        if a.p1 != piv::alg::ECCP256 {
            return Response::new([], sw::WRONG_DATA);
        }
        // 9E: PIN policy "never".
        let Some(template) = nested_tlvs(&a.data, 0x7C) else {
            return Response::new([], sw::WRONG_DATA);
        };
        let (Some(input), true) = (find_tlv(&template, 0x81), find_tlv(&template, 0x82).is_some()) else {
            return Response::new([], sw::WRONG_DATA);
        };
        if input.len() > 32 {
            return Response::new([], sw::WRONG_DATA);
        }
        // Shorter input = smaller integer (left-padded), as the card does.
        let mut digest = [0u8; 32];
        digest[32 - input.len()..].copy_from_slice(input);
        let sig: Signature = match self.signing_key.sign_prehash(&digest) {
            Ok(s) => s,
            Err(_) => return Response::new([], sw::WRONG_DATA),
        };
        let der = sig.to_der();
        Response::new(tlv(0x7C, &tlv(0x82, der.as_bytes())), sw::OK)
    }

    fn device_config(&self) -> Vec<u8> {
        let f = self.firmware;
        let mut body = vec![0x01, 0x02, 0x02, 0x3B, 0x02, 0x04];
        body.extend_from_slice(&self.serial.to_be_bytes());
        body.extend_from_slice(&[
            0x03, 0x02, 0x02, 0x3B, 0x04, 0x01, 0x01, 0x05, 0x03, f.major, f.minor, f.patch,
        ]);
        body.extend_from_slice(&[
            0x08, 0x01, 0x00, 0x0A, 0x01, 0x00, 0x0D, 0x02, 0x02, 0x3B, 0x0E, 0x02, 0x02, 0x3B,
        ]);
        let mut v = vec![body.len() as u8];
        v.extend_from_slice(&body);
        v
    }
}

/// The TLVs inside the `tag` template of a command's `data` (`None` when either level does
/// not parse or the template is missing).
fn nested_tlvs(data: &[u8], tag: u32) -> Option<Vec<Tlv<'_>>> {
    let inner = find_tlv(&parse_tlvs(data).ok()?, tag)?;
    parse_tlvs(inner).ok()
}

/// A certificate data object's content: `70 cert 71 00 FE 00` (uncompressed).
fn cert_object(cert: &[u8]) -> Vec<u8> {
    let mut c = tlv(0x70, cert);
    c.extend_from_slice(&[0x71, 0x01, 0x00, 0xFE, 0x00]);
    c
}

mod admin;

#[cfg(test)]
mod tests;
