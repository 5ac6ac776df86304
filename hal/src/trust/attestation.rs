//! YubiKey PIV attestation: proof that a slot's key was generated on a genuine YubiKey and
//! can never leave it.
//!
//! `INS F9` (P1 = slot) makes the key sign, with its slot-F9 attestation key, a certificate
//! for the public key in that slot. The F9 key's own certificate (object `5F FF 01`) chains to
//! the manufacturer's PIV CA. The attestation carries the device serial
//! (`1.3.6.1.4.1.41482.3.7`), firmware (`.3`), PIN/touch policy (`.8`) and form factor (`.9`).
//! An attestation only exists for keys generated on the device: an imported (software) key,
//! or a key in a programmable card that only pretends to be a YubiKey, has none that chains
//! to a configured root.
//!
//! [`verify_attestation`] checks a chain (attestation → F9 → … → root) against
//! [`AttestationRoots`] and returns the [`AttestedKey`] facts; [`AttestationRequirement`]
//! adds the checks a vendor and a server make (serial, public key, policies).

use std::fmt;
use std::time::SystemTime;

use p256::pkcs8::ObjectIdentifier;
use sha2::{Digest, Sha256};
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::BasicConstraints;
use x509_cert::Certificate;

use super::error::TrustError;
use super::pem;
use super::proof_key::ProofKey;
use super::vendor_key::{check_len, read_text_file};
use crate::key::{Firmware, KeyAttestation, Serial, SignatureScheme};

pub mod sim_ca;

/// Yubico's PIV attestation extensions.
pub mod oid {
    use p256::pkcs8::ObjectIdentifier;

    /// Firmware version (3 raw bytes).
    pub const FIRMWARE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.3");
    /// Device serial (DER INTEGER).
    pub const SERIAL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.7");
    /// PIN policy and touch policy (2 raw bytes).
    pub const POLICY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.8");
    /// Form factor (1 raw byte).
    pub const FORM_FACTOR: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.9");
    /// keyfloat's "this key certificate was issued after a verified attestation" extension
    /// (value: SHA-256 of the attestation certificate). Under IANA's documentation enterprise
    /// number (RFC 5612) until keyfloat registers one of its own.
    pub const KEYFLOAT_ATTESTED: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.32473.16.1");
}

const OID_ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const OID_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const OID_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const OID_SKI: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");
const OID_AKI: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.35");

/// Longest chain accepted between the attestation and a root (F9 plus a few CAs).
const MAX_CHAIN: usize = 4;

/// Where Yubico publishes its PIV attestation roots (for the README and error hints).
pub const YUBICO_ROOTS_URL: &str = "https://developers.yubico.com/PKI/";

/// A slot's PIN policy as attested (`1.3.6.1.4.1.41482.3.8`, first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinPolicy {
    /// Never asks for the PIN: what an unattended server needs.
    Never,
    /// PIN once per session.
    Once,
    /// PIN before every use.
    Always,
    /// Any other value (biometric match policies, future ones).
    Other(u8),
}

impl PinPolicy {
    fn from_byte(b: u8) -> Self {
        match b {
            1 => Self::Never,
            2 => Self::Once,
            3 => Self::Always,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for PinPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Never => f.write_str("never"),
            Self::Once => f.write_str("once"),
            Self::Always => f.write_str("always"),
            Self::Other(b) => write!(f, "0x{b:02x}"),
        }
    }
}

/// A slot's touch policy as attested (`1.3.6.1.4.1.41482.3.8`, second byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TouchPolicy {
    /// Never asks for a touch: what an unattended server needs.
    Never,
    /// Touch before every use.
    Always,
    /// Touch, cached for 15 s.
    Cached,
    /// Any other value.
    Other(u8),
}

impl TouchPolicy {
    fn from_byte(b: u8) -> Self {
        match b {
            1 => Self::Never,
            2 => Self::Always,
            3 => Self::Cached,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for TouchPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Never => f.write_str("never"),
            Self::Always => f.write_str("always"),
            Self::Cached => f.write_str("cached"),
            Self::Other(b) => write!(f, "0x{b:02x}"),
        }
    }
}

/// Why an attestation was refused. Each variant has a stable [`AttestationError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestationError {
    /// A certificate of the chain does not parse, or misses what an attestation has.
    #[error("attestation does not parse: {0}")]
    Malformed(String),
    /// The chain does not end at a configured root (unknown CA, bad signature, expired).
    #[error("attestation does not chain to a configured attestation root: {0}")]
    Untrusted(String),
    /// The attestation names no device serial (firmware before 5.0).
    #[error("attestation names no device serial (firmware before 5.0 cannot bind a serial)")]
    NoSerial,
    /// The attested serial is not the key's.
    #[error("attestation is for serial {attested}, not {expected}")]
    SerialMismatch {
        /// Serial in the attestation.
        attested: String,
        /// Serial expected.
        expected: String,
    },
    /// The attested public key is not the certified one.
    #[error("attestation is for another public key than the one certified")]
    PublicKeyMismatch,
    /// The slot asks for a PIN, which an unattended server cannot give.
    #[error("attested PIN policy is {0}; an unattended server needs never")]
    PinPolicy(PinPolicy),
    /// The slot asks for a touch, which an unattended server cannot give.
    #[error("attested touch policy is {0}; an unattended server needs never")]
    TouchPolicy(TouchPolicy),
    /// No attestation roots are configured.
    #[error("no attestation roots configured (--attestation-root / attestation_roots)")]
    NoRoots,
}

impl AttestationError {
    /// Stable code for logs, CLI messages and JSON; never renamed.
    pub const fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "attestation_malformed",
            Self::Untrusted(_) => "attestation_untrusted",
            Self::NoSerial => "attestation_no_serial",
            Self::SerialMismatch { .. } => "attestation_serial_mismatch",
            Self::PublicKeyMismatch => "attestation_key_mismatch",
            Self::PinPolicy(_) => "attestation_pin_policy",
            Self::TouchPolicy(_) => "attestation_touch_policy",
            Self::NoRoots => "attestation_no_roots",
        }
    }
}

/// A trusted attestation root: a CA certificate whose key signs F9 certificates.
#[derive(Clone)]
struct Root {
    cert: Certificate,
    key: ProofKey,
    sha256: [u8; 32],
}

/// The attestation roots a vendor or a server trusts (Yubico's PIV roots in production; the
/// simulator's test CA in CI). Never empty.
#[derive(Clone)]
pub struct AttestationRoots {
    roots: Vec<Root>,
}

impl fmt::Debug for AttestationRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.fingerprints()).finish()
    }
}

impl AttestationRoots {
    /// Roots from DER certificates. Each must parse and carry a key keyfloat can verify with.
    pub fn from_ders<'a>(ders: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, TrustError> {
        let mut roots = Vec::new();
        for der in ders {
            check_len("attestation root", der.len() as u64)?;
            let cert = Certificate::from_der(der)
                .map_err(|e| TrustError::CertificateInvalid(format!("attestation root does not parse: {e}")))?;
            let key =
                cert_key(&cert).map_err(|e| TrustError::CertificateInvalid(format!("attestation root key: {e}")))?;
            roots.push(Root {
                cert,
                key,
                sha256: Sha256::digest(der).into(),
            });
        }
        if roots.is_empty() {
            return Err(TrustError::InvalidArgument(
                "no attestation root certificate given".into(),
            ));
        }
        Ok(Self { roots })
    }

    /// Roots from PEM text (any number of `CERTIFICATE` blocks).
    pub fn from_pem(text: &str) -> Result<Self, TrustError> {
        let ders = pem_certificates(text)?;
        Self::from_ders(ders.iter().map(Vec::as_slice))
    }

    /// Roots from several PEM files, or PEM texts given inline (a value containing
    /// `-----BEGIN` is PEM itself, as for the vendor public key).
    pub fn from_paths_or_inline(values: &[String]) -> Result<Self, TrustError> {
        let mut ders = Vec::new();
        for v in values {
            let text = if v.contains("-----BEGIN") {
                v.clone()
            } else {
                read_text_file(std::path::Path::new(v), "attestation root")?
            };
            ders.extend(pem_certificates(&text)?);
        }
        Self::from_ders(ders.iter().map(Vec::as_slice))
    }

    /// SHA-256 fingerprints (hex, colon-free, lower case) of the root certificates, as
    /// `openssl x509 -noout -fingerprint -sha256` prints them (without colons).
    pub fn fingerprints(&self) -> Vec<String> {
        self.roots.iter().map(|r| hex::encode(r.sha256)).collect()
    }
}

/// Every `CERTIFICATE` block of a PEM text, as DER.
pub fn pem_certificates(text: &str) -> Result<Vec<Vec<u8>>, TrustError> {
    check_len("certificate PEM", text.len() as u64)?;
    let ders: Vec<Vec<u8>> = pem::blocks(text)?
        .into_iter()
        .filter(|b| b.label == "CERTIFICATE")
        .map(|b| b.der)
        .collect();
    if ders.is_empty() {
        return Err(TrustError::PemInvalid("no -----BEGIN CERTIFICATE----- block".into()));
    }
    Ok(ders)
}

/// Certificate bytes given as PEM (first `CERTIFICATE` block) or DER.
pub fn certificate_der(bytes: &[u8]) -> Result<Vec<u8>, TrustError> {
    match std::str::from_utf8(bytes).ok().filter(|t| t.contains("-----BEGIN ")) {
        Some(text) => Ok(pem_certificates(text)?.swap_remove(0)),
        None => Ok(bytes.to_vec()),
    }
}

/// What a verified attestation says about the attested key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedKey {
    /// Device serial (absent before firmware 5.0).
    pub serial: Option<u32>,
    /// Device firmware.
    pub firmware: Option<Firmware>,
    /// PIN policy of the slot.
    pub pin_policy: Option<PinPolicy>,
    /// Touch policy of the slot.
    pub touch_policy: Option<TouchPolicy>,
    /// Form factor byte (0x01 USB-A keychain, 0x02 nano, 0x03 USB-C keychain…).
    pub form_factor: Option<u8>,
    /// The attested public key (SubjectPublicKeyInfo DER).
    pub spki_der: Vec<u8>,
    /// SHA-256 of the attestation certificate.
    pub certificate_sha256: [u8; 32],
}

fn malformed(e: impl fmt::Display) -> AttestationError {
    AttestationError::Malformed(e.to_string())
}

fn untrusted(e: impl fmt::Display) -> AttestationError {
    AttestationError::Untrusted(e.to_string())
}

fn cert_key(cert: &Certificate) -> Result<ProofKey, TrustError> {
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| TrustError::CertificateInvalid(e.to_string()))?;
    ProofKey::from_spki_der(&spki)
}

/// Checks that `issuer_key` signed `cert` (ecdsa-with-SHA256 or sha256WithRSAEncryption).
fn check_signed_by(cert: &Certificate, issuer_key: &ProofKey) -> Result<(), AttestationError> {
    let alg = &cert.signature_algorithm;
    if cert.tbs_certificate.signature != *alg {
        return Err(malformed("inner and outer signature algorithms differ"));
    }
    let scheme = if alg.oid == OID_ECDSA_WITH_SHA256 {
        SignatureScheme::EcdsaP256Sha256
    } else if alg.oid == OID_SHA256_WITH_RSA {
        SignatureScheme::RsaPkcs1Sha256
    } else {
        return Err(untrusted(format!("unsupported signature algorithm {}", alg.oid)));
    };
    let sig = cert
        .signature
        .as_bytes()
        .ok_or_else(|| malformed("signature BIT STRING has unused bits"))?;
    let tbs = cert.tbs_certificate.to_der().map_err(malformed)?;
    issuer_key.verify(scheme, &tbs, sig).map_err(untrusted)
}

fn subject_cn(cert: &Certificate) -> String {
    cert.tbs_certificate.subject.to_string()
}

/// Checks what makes `cert` usable as a CA in the chain: `basicConstraints` (when present)
/// says CA, and no critical extension keyfloat does not understand.
fn check_ca(cert: &Certificate) -> Result<(), AttestationError> {
    for ext in cert.tbs_certificate.extensions.iter().flatten() {
        if ext.extn_id == OID_BASIC_CONSTRAINTS {
            let bc = BasicConstraints::from_der(ext.extn_value.as_bytes()).map_err(malformed)?;
            if !bc.ca {
                return Err(untrusted(format!("{} is not a CA certificate", subject_cn(cert))));
            }
        } else if ext.critical && ![OID_KEY_USAGE, OID_SKI, OID_AKI].contains(&ext.extn_id) {
            return Err(untrusted(format!(
                "{} has an unknown critical extension {}",
                subject_cn(cert),
                ext.extn_id
            )));
        }
    }
    Ok(())
}

fn check_time(cert: &Certificate, now: SystemTime) -> Result<(), AttestationError> {
    let v = &cert.tbs_certificate.validity;
    if now < v.not_before.to_system_time() || now > v.not_after.to_system_time() {
        return Err(untrusted(format!(
            "{} is outside its validity period",
            subject_cn(cert)
        )));
    }
    Ok(())
}

fn parse_cert(der: &[u8], what: &str) -> Result<Certificate, AttestationError> {
    check_len("attestation certificate", der.len() as u64).map_err(malformed)?;
    Certificate::from_der(der).map_err(|e| malformed(format!("{what}: {e}")))
}

/// Verifies an attestation: `attestation.certificate` signed by `intermediates[0]` (the F9
/// certificate), each intermediate by the next, the last by one of `roots`; every
/// certificate within its validity at `now`. Returns the attested facts.
pub fn verify_attestation(
    roots: &AttestationRoots,
    attestation: &KeyAttestation,
    now: SystemTime,
) -> Result<AttestedKey, AttestationError> {
    if attestation.intermediates.is_empty() {
        return Err(malformed("no F9 (attestation key) certificate"));
    }
    let leaf = verify_chain(roots, &attestation.certificate, &attestation.intermediates, now)?;
    attested_facts(&leaf, &attestation.certificate)
}

/// Verifies that `leaf_der`, through `intermediates` (closest first), chains to one of
/// `roots` at `now`; returns the parsed leaf. Shared by PIV and FIDO attestation.
pub(crate) fn verify_chain(
    roots: &AttestationRoots,
    leaf_der: &[u8],
    intermediates: &[Vec<u8>],
    now: SystemTime,
) -> Result<Certificate, AttestationError> {
    if intermediates.len() > MAX_CHAIN {
        return Err(malformed(format!(
            "chain of {} intermediates is longer than {MAX_CHAIN}",
            intermediates.len()
        )));
    }
    let leaf = parse_cert(leaf_der, "attestation certificate")?;
    let mut chain = vec![leaf];
    for (i, der) in intermediates.iter().enumerate() {
        chain.push(parse_cert(der, &format!("intermediate {}", i + 1))?);
    }
    for cert in &chain {
        check_time(cert, now)?;
    }
    for pair in chain.windows(2) {
        let (child, parent) = (&pair[0], &pair[1]);
        if child.tbs_certificate.issuer != parent.tbs_certificate.subject {
            return Err(untrusted(format!(
                "{} is not issued by {}",
                subject_cn(child),
                subject_cn(parent)
            )));
        }
        check_ca(parent)?;
        let key = cert_key(parent).map_err(untrusted)?;
        check_signed_by(child, &key)?;
    }
    let top = chain.last().ok_or_else(|| malformed("empty chain"))?;
    let mut last_err = None;
    let mut trusted = false;
    for root in &roots.roots {
        if top.tbs_certificate.issuer != root.cert.tbs_certificate.subject {
            continue;
        }
        if let Err(e) = check_time(&root.cert, now) {
            last_err = Some(e);
            continue;
        }
        match check_signed_by(top, &root.key) {
            Ok(()) => {
                trusted = true;
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    if !trusted {
        return Err(last_err
            .unwrap_or_else(|| untrusted(format!("no configured root is named {}", top.tbs_certificate.issuer))));
    }
    Ok(chain.swap_remove(0))
}

/// The key a (leaf) certificate certifies, when keyfloat can verify with it.
#[cfg(feature = "hid")]
pub(crate) fn leaf_key(cert: &Certificate) -> Result<ProofKey, AttestationError> {
    cert_key(cert).map_err(malformed)
}

fn attested_facts(leaf: &Certificate, der: &[u8]) -> Result<AttestedKey, AttestationError> {
    let mut facts = AttestedKey {
        serial: None,
        firmware: None,
        pin_policy: None,
        touch_policy: None,
        form_factor: None,
        spki_der: leaf
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(malformed)?,
        certificate_sha256: Sha256::digest(der).into(),
    };
    for ext in leaf.tbs_certificate.extensions.iter().flatten() {
        let v = ext.extn_value.as_bytes();
        match ext.extn_id {
            oid::FIRMWARE => match v {
                [a, b, c] => facts.firmware = Some(Firmware::new(*a, *b, *c)),
                _ => return Err(malformed("firmware extension is not 3 bytes")),
            },
            oid::SERIAL => {
                facts.serial = Some(u32::from_der(v).map_err(|e| malformed(format!("serial extension: {e}")))?)
            }
            oid::POLICY => match v {
                [pin, touch] => {
                    facts.pin_policy = Some(PinPolicy::from_byte(*pin));
                    facts.touch_policy = Some(TouchPolicy::from_byte(*touch));
                }
                _ => return Err(malformed("policy extension is not 2 bytes")),
            },
            oid::FORM_FACTOR => match v {
                [b] => facts.form_factor = Some(*b),
                _ => return Err(malformed("form factor extension is not 1 byte")),
            },
            _ if ext.critical => {
                return Err(malformed(format!("unknown critical extension {}", ext.extn_id)));
            }
            _ => {}
        }
    }
    Ok(facts)
}

/// The checks a vendor (before certifying a key) and a server (at every validation) make
/// on a verified attestation.
#[derive(Debug, Clone)]
pub struct AttestationRequirement<'a> {
    /// The serial the key must have.
    pub serial: &'a Serial,
    /// The public key (SubjectPublicKeyInfo DER) the attestation must be for.
    pub spki_der: &'a [u8],
}

impl AttestationRequirement<'_> {
    /// Verifies `attestation` against `roots` and this requirement; PIN and touch policy
    /// must be `never` (an unattended server must be able to sign).
    pub fn check(
        &self,
        roots: &AttestationRoots,
        attestation: &KeyAttestation,
        now: SystemTime,
    ) -> Result<AttestedKey, AttestationError> {
        let facts = verify_attestation(roots, attestation, now)?;
        let attested = facts.serial.ok_or(AttestationError::NoSerial)?;
        if Serial::from(attested) != *self.serial {
            return Err(AttestationError::SerialMismatch {
                attested: attested.to_string(),
                expected: self.serial.to_string(),
            });
        }
        if !same_spki(&facts.spki_der, self.spki_der) {
            return Err(AttestationError::PublicKeyMismatch);
        }
        match facts.pin_policy {
            Some(PinPolicy::Never) => {}
            Some(p) => return Err(AttestationError::PinPolicy(p)),
            None => return Err(malformed("attestation has no policy extension")),
        }
        match facts.touch_policy {
            Some(TouchPolicy::Never) => {}
            Some(t) => return Err(AttestationError::TouchPolicy(t)),
            None => return Err(malformed("attestation has no policy extension")),
        }
        Ok(facts)
    }
}

/// Whether two SubjectPublicKeyInfo DERs hold the same key (compared after re-encoding, so
/// equivalent encodings of the same parameters compare equal).
fn same_spki(a: &[u8], b: &[u8]) -> bool {
    use x509_cert::spki::SubjectPublicKeyInfoOwned;
    let norm = |d: &[u8]| {
        SubjectPublicKeyInfoOwned::from_der(d)
            .ok()
            .and_then(|s| s.to_der().ok())
    };
    matches!((norm(a), norm(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
