//! The validation hook the monitor calls for every attached key. The trust chain
//! (vendor certificate + proof of possession) implements [`KeyValidator`]; a key is only
//! ever published as valid after a validator said so.

use std::fmt;

use serde::Serialize;

use crate::error::Error;
use crate::key::{Firmware, HardwareKey, Serial};

/// Why a key that answered is still not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum InvalidReason {
    /// The key holds no certificate for its proof key.
    Unprovisioned,
    /// The certificate is not signed by the configured vendor key.
    WrongVendor,
    /// The certificate names another serial than the key reports.
    SerialMismatch,
    /// The key's answer to a fresh challenge does not verify.
    BadSignature,
    /// The certificate is outside its validity period.
    ExpiredCertificate,
    /// The certificate or the key's answers do not parse.
    Malformed,
    /// The key can only show a serial, and the configuration does not accept serial-only keys.
    SerialOnlyNotAllowed,
    /// The serial is not among the serials the configuration allows.
    SerialNotAllowed,
    /// Attestation is required and the key gave none that chains to a configured root and
    /// names its serial and certified key (an imported or cloned key).
    NotAttested,
}

impl InvalidReason {
    /// Stable code for logs, metrics and HTTP bodies.
    pub const fn code(self) -> &'static str {
        match self {
            Self::Unprovisioned => "unprovisioned",
            Self::WrongVendor => "wrong_vendor",
            Self::SerialMismatch => "serial_mismatch",
            Self::BadSignature => "bad_signature",
            Self::ExpiredCertificate => "expired_certificate",
            Self::Malformed => "malformed",
            Self::SerialOnlyNotAllowed => "serial_only_not_allowed",
            Self::SerialNotAllowed => "serial_not_allowed",
            Self::NotAttested => "not_attested",
        }
    }
}

impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// How strongly a valid key proved itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProofStatus {
    /// Certificate chains to the vendor and a fresh challenge verified.
    Verified,
    /// As `Verified`, and a fresh PIV attestation proved the key was generated on genuine
    /// hardware (attestation required by configuration).
    Attested,
    /// Only the serial was read (allowed by configuration, or no trust chain configured).
    SerialOnly,
}

impl ProofStatus {
    /// The name in JSON: `verified`, `attested`, `serial_only`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::Attested => "attested",
            Self::SerialOnly => "serial_only",
        }
    }

    /// Whether the key proved possession of its certified key (with or without attestation).
    pub const fn is_verified(self) -> bool {
        matches!(self, Self::Verified | Self::Attested)
    }
}

/// The outcome of validating one key.
#[derive(Debug, Clone)]
pub enum Validation {
    /// The key is genuine: it may be put in force.
    Valid {
        /// Serial the key reported (and its certificate names, when verified).
        serial: Serial,
        /// Firmware, if it could be read.
        firmware: Option<Firmware>,
        /// How it proved itself.
        proof: ProofStatus,
    },
    /// The key answered but is not acceptable; retrying will not help until it is re-plugged.
    Invalid {
        /// Serial the key reported, if any.
        serial: Option<Serial>,
        /// Why not.
        reason: InvalidReason,
    },
    /// The key could not be asked (busy, disconnected, timeout...): retry later.
    Failed(Error),
}

/// Decides whether a connected key is genuine.
pub trait KeyValidator: Send + Sync + fmt::Debug {
    /// Talks to `key` (serial, certificate, challenge) and judges it.
    fn validate(&self, key: &mut dyn HardwareKey) -> Validation;
}

/// Accepts any key whose serial can be read. For tools that only list keys and for tests
/// of the monitor; a server enforcing key-bound licenses uses the vendor trust chain.
#[derive(Debug, Clone, Copy, Default)]
pub struct SerialReadable;

impl KeyValidator for SerialReadable {
    fn validate(&self, key: &mut dyn HardwareKey) -> Validation {
        match key.read_serial() {
            Ok(serial) => Validation::Valid {
                serial,
                firmware: key.read_firmware().ok(),
                proof: ProofStatus::SerialOnly,
            },
            Err(e) => Validation::Failed(e),
        }
    }
}
