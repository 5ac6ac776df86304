//! The device-facing traits and the identity types they exchange.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};

/// Which backend found a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Smart-card interface through the system PC/SC service (pcscd).
    Pcsc,
    /// USB HID (YubiKey OTP / FIDO interfaces, generic dongles).
    Hid,
    /// In-process simulated dongle.
    Sim,
}

impl BackendKind {
    /// Lower-case name used on the command line and in JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pcsc => "pcsc",
            Self::Hid => "hid",
            Self::Sim => "sim",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key's serial number as the key reports it (YubiKeys: the decimal form of a u32).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Serial(String);

impl Serial {
    /// A serial from its textual form.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The textual form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<u32> for Serial {
    fn from(n: u32) -> Self {
        Self(n.to_string())
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifies one connected key within a process, stable while it stays plugged in: the
/// backend that found it and its path there (reader name, device path, simulator name).
/// Written `pcsc:<reader name>`, `hid:<device path>`, `sim:<name>` in logs, JSON and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId {
    backend: BackendKind,
    path: String,
    /// `backend:path`, kept so the id can be shown and compared as text without allocating.
    text: String,
}

impl KeyId {
    /// Builds the id of a key found by `backend` at `path`.
    pub fn new(backend: BackendKind, path: &str) -> Self {
        Self {
            backend,
            path: path.to_owned(),
            text: format!("{}:{}", backend.as_str(), path),
        }
    }
    /// The backend that found the key.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }
    /// Where the backend found it: reader name, device path or simulator name.
    pub fn path(&self) -> &str {
        &self.path
    }
    /// The path, when `backend` found the key; `None` for another backend's key.
    pub fn path_in(&self, backend: BackendKind) -> Option<&str> {
        (self.backend == backend).then_some(self.path.as_str())
    }
    /// The textual form, `backend:path`.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Ordered by the textual form, so "the smallest id" means the same in logs as in code.
impl Ord for KeyId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl PartialOrd for KeyId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Firmware version `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Firmware {
    /// Major version.
    pub major: u8,
    /// Minor version.
    pub minor: u8,
    /// Patch level.
    pub patch: u8,
}

impl Firmware {
    /// Builds a version.
    pub const fn new(major: u8, minor: u8, patch: u8) -> Self {
        Self { major, minor, patch }
    }
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Serialize for Firmware {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a key can prove about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProofCapability {
    /// Holds a certified private key and signs challenges (PIV slot 9E, FIDO credential).
    Signature,
    /// Only reports a serial (generic HID dongles): proves presence, not identity.
    SerialOnly,
}

/// A key as discovered during enumeration, before any validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// Stable id within this process.
    pub id: KeyId,
    /// Backend that found it.
    pub backend: BackendKind,
    /// Reader name (PC/SC), device path (HID) or simulator name.
    pub path: String,
    /// Serial, when enumeration already revealed it (not trusted until validated).
    pub serial: Option<Serial>,
    /// Human-readable model, e.g. "YubiKey 5 NFC".
    pub model: String,
    /// Firmware, when enumeration already revealed it.
    pub firmware: Option<Firmware>,
    /// What the key can prove.
    pub capability: ProofCapability,
}

/// The hardware ID a server presents: a key's serial while a valid key is in force,
/// otherwise the machine's own ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct HardwareId(String);

impl HardwareId {
    /// An ID from its textual form.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The textual form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&Serial> for HardwareId {
    fn from(s: &Serial) -> Self {
        Self(s.0.clone())
    }
}

impl fmt::Display for HardwareId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The signature algorithm a proof of possession uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureScheme {
    /// ECDSA over P-256 with SHA-256; signature DER-encoded.
    EcdsaP256Sha256,
    /// RSA PKCS#1 v1.5 with SHA-256 (PIV RSA-2048 slots).
    RsaPkcs1Sha256,
}

/// A key's answer to a challenge: `signature` covers `signed_prefix ‖ challenge`.
///
/// PIV signs the challenge itself (`signed_prefix` empty); a FIDO assertion signs
/// `authenticatorData ‖ clientDataHash`, with the challenge as `clientDataHash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// Algorithm of `signature`.
    pub scheme: SignatureScheme,
    /// Bytes the key put in front of the challenge before signing.
    pub signed_prefix: Vec<u8>,
    /// The signature.
    pub signature: Vec<u8>,
}

impl Proof {
    /// The exact message the signature covers.
    pub fn signed_message(&self, challenge: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.signed_prefix.len() + challenge.len());
        m.extend_from_slice(&self.signed_prefix);
        m.extend_from_slice(challenge);
        m
    }
}

/// A key's statement, signed by the device itself, about its proof key (YubiKey PIV
/// attestation of slot 9E; see [`crate::trust::attestation`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAttestation {
    /// The attestation certificate (DER) for the proof key, signed by the device's
    /// attestation key.
    pub certificate: Vec<u8>,
    /// The device attestation key's certificate (PIV slot F9, DER) first, then any further
    /// CA certificates up to (not including) the manufacturer's root.
    pub intermediates: Vec<Vec<u8>>,
}

/// One plugged-in security key that can say which hardware it is and, when it holds a
/// certified private key, prove it (see [`HardwareKey::prover`]).
///
/// Object safe: backends are chosen at run time and held as `Box<dyn HardwareKey>`.
/// Every method talks to the device and may fail with any [`crate::ErrorKind`]; a key that
/// another process holds answers [`crate::ErrorKind::Busy`].
pub trait HardwareKey: Send + fmt::Debug {
    /// Identity as discovered during enumeration.
    fn info(&self) -> &KeyInfo;
    /// Reads the serial from the device.
    fn read_serial(&mut self) -> Result<Serial>;
    /// Reads the firmware version from the device.
    fn read_firmware(&mut self) -> Result<Firmware>;
    /// The key's proof of possession, or `None` for a key that can only report a serial
    /// ([`ProofCapability::SerialOnly`]).
    fn prover(&mut self) -> Option<&mut dyn Prover>;
}

/// Proof of possession: a key that holds a certified private key (PIV slot 9E, a FIDO
/// credential) and signs challenges with it.
pub trait Prover: Send + fmt::Debug {
    /// Reads the DER X.509 certificate of the proof key (PIV slot 9E).
    /// [`crate::ErrorKind::NotPresent`] when the key holds none.
    fn read_certificate(&mut self) -> Result<Vec<u8>>;
    /// Signs `challenge` with the proof key.
    fn sign_challenge(&mut self, challenge: &[u8]) -> Result<Proof>;
    /// Asks the key for a fresh attestation of its proof key. Keys that cannot attest
    /// (imported keys, other devices) answer [`crate::ErrorKind::Unsupported`] or
    /// [`crate::ErrorKind::NotPresent`].
    fn attest(&mut self) -> Result<KeyAttestation> {
        Err(crate::error::Error::new(
            crate::error::ErrorKind::Unsupported,
            "this key cannot attest its proof key",
        ))
    }
}

/// A change in the set of connected keys, as a backend reports it.
#[derive(Debug, Clone)]
pub enum HotplugEvent {
    /// A key appeared (or was already there when watching started).
    Attached(KeyInfo),
    /// A key went away.
    Detached(KeyId),
    /// The backend itself failed (e.g. pcscd went away); it keeps trying to recover.
    Error(Error),
}

/// A stream of hot-plug events from one backend.
pub trait HotplugSource: Send + fmt::Debug {
    /// Waits up to `timeout` for the next event; `Ok(None)` when nothing happened.
    /// A zero timeout never blocks.
    fn next_event(&mut self, timeout: Duration) -> Result<Option<HotplugEvent>>;
}

/// Finds, opens and watches the keys of one backend.
pub trait KeyProvider: Send + Sync + fmt::Debug {
    /// The backend this provider speaks for.
    fn kind(&self) -> BackendKind;
    /// Keys connected now.
    fn list(&self) -> Result<Vec<KeyInfo>>;
    /// Opens one key for I/O.
    fn open(&self, id: &KeyId) -> Result<Box<dyn HardwareKey>>;
    /// Starts watching: the source first reports every key present now as `Attached`.
    fn watch(&self) -> Result<Box<dyn HotplugSource>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_is_backend_and_path_written_as_text() {
        let id = KeyId::new(BackendKind::Pcsc, "Yubico YubiKey OTP+FIDO+CCID 00 00");
        assert_eq!(id.backend(), BackendKind::Pcsc);
        assert_eq!(id.path(), "Yubico YubiKey OTP+FIDO+CCID 00 00");
        assert_eq!(id.path_in(BackendKind::Pcsc), Some(id.path()));
        assert_eq!(id.path_in(BackendKind::Sim), None);
        assert_eq!(id.to_string(), "pcsc:Yubico YubiKey OTP+FIDO+CCID 00 00");
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"pcsc:Yubico YubiKey OTP+FIDO+CCID 00 00\""
        );
    }

    #[test]
    fn key_ids_order_as_their_text() {
        // A path may itself contain ':'; the backend is never parsed back out of it.
        let a = KeyId::new(BackendKind::Sim, "a:b");
        assert_eq!(a.path(), "a:b");
        let mut ids = [
            KeyId::new(BackendKind::Sim, "a"),
            KeyId::new(BackendKind::Pcsc, "R1"),
            KeyId::new(BackendKind::Hid, "/dev/hidraw0"),
        ];
        ids.sort();
        let text: Vec<_> = ids.iter().map(KeyId::as_str).collect();
        assert_eq!(text, ["hid:/dev/hidraw0", "pcsc:R1", "sim:a"]);
    }
}
