//! [`VendorValidator`]: the [`KeyValidator`] a server enforcing key-bound licenses uses.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use rand_core::RngCore;

use super::attestation::{AttestationRequirement, AttestationRoots};
use super::certificate::KeyCertificate;
use super::error::TrustError;
use super::vendor_key::VendorPublicKey;
use crate::error::{Error, ErrorKind};
use crate::key::{HardwareKey, KeyId, Prover, Serial};
use crate::validate::{InvalidReason, KeyValidator, ProofStatus, Validation};

/// Where the validator reads the time (certificate validity). Tests pass a fixed clock.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(SystemTime::now)
}

/// Bytes of fresh randomness a key must sign.
const CHALLENGE_LEN: usize = 32;

/// Accepts a key only if its certificate chains to `vendor`, names the serial the key
/// reports, is within its validity period, and the key signs a fresh random challenge with
/// the certified key.
#[derive(Clone)]
pub struct VendorValidator {
    /// The vendor key certificates must be signed by.
    pub vendor: VendorPublicKey,
    /// Accept keys that can only report a serial (generic HID dongles) as `SerialOnly`.
    pub allow_serial_only: bool,
    /// When set, only these serials are accepted.
    pub allowed_serials: Option<Vec<Serial>>,
    /// The time used for certificate validity.
    pub now: Clock,
    /// When set, every validation also asks the key for a fresh PIV attestation of its
    /// proof key, which must chain to one of these roots, name the key's serial and the
    /// certified public key, and the certificate must say the key was attested when issued.
    pub attestation: Option<AttestationRoots>,
}

impl fmt::Debug for VendorValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VendorValidator")
            .field("vendor", &self.vendor)
            .field("allow_serial_only", &self.allow_serial_only)
            .field("allowed_serials", &self.allowed_serials)
            .field("attestation", &self.attestation)
            .finish_non_exhaustive()
    }
}

impl VendorValidator {
    /// Trusts `vendor`; serial-only keys refused; any serial; system clock.
    pub fn new(vendor: VendorPublicKey) -> Self {
        Self {
            vendor,
            allow_serial_only: false,
            allowed_serials: None,
            now: system_clock(),
            attestation: None,
        }
    }

    /// Requires a fresh attestation chaining to `roots` at every validation (`None`: not required).
    pub fn require_attestation(mut self, roots: Option<AttestationRoots>) -> Self {
        self.attestation = roots;
        self
    }

    /// Sets [`VendorValidator::allow_serial_only`].
    pub fn allow_serial_only(mut self, allow: bool) -> Self {
        self.allow_serial_only = allow;
        self
    }

    /// Sets [`VendorValidator::allowed_serials`].
    pub fn allowed_serials(mut self, serials: Option<Vec<Serial>>) -> Self {
        self.allowed_serials = serials;
        self
    }

    /// Sets the clock.
    pub fn with_clock(mut self, now: Clock) -> Self {
        self.now = now;
        self
    }

    fn invalid(&self, id: &KeyId, serial: Serial, reason: InvalidReason, detail: &str) -> Validation {
        tracing::warn!(
            target: "keyfloat::trust",
            key = %id,
            serial = %serial,
            reason = reason.code(),
            detail,
            "key rejected"
        );
        Validation::Invalid {
            serial: Some(serial),
            reason,
        }
    }

    fn serial_allowed(&self, serial: &Serial) -> bool {
        self.allowed_serials.as_ref().is_none_or(|list| list.contains(serial))
    }
}

impl VendorValidator {
    /// The proof of possession: a certificate from the vendor for this serial, valid now, and
    /// a fresh challenge signed with the certified key; then the attestation, if required.
    fn prove(&self, prover: &mut dyn Prover, id: &KeyId, serial: &Serial) -> Result<ProofStatus, Validation> {
        let reject = |reason, detail: &str| self.invalid(id, serial.clone(), reason, detail);
        let cert = self.certificate(prover, id, serial)?;
        let mut challenge = [0u8; CHALLENGE_LEN];
        if let Err(e) = rand_core::OsRng.try_fill_bytes(&mut challenge) {
            return Err(Validation::Failed(Error::new(
                ErrorKind::Other,
                format!("no randomness for a challenge: {e}"),
            )));
        }
        let proof = prover.sign_challenge(&challenge).map_err(Validation::Failed)?;
        match cert.verify_proof(&challenge, &proof) {
            Ok(()) => {}
            Err(e @ TrustError::SignatureInvalid(_)) => {
                return Err(reject(InvalidReason::BadSignature, &e.to_string()))
            }
            Err(e) => return Err(reject(InvalidReason::Malformed, &e.to_string())),
        }
        let Some(roots) = &self.attestation else {
            return Ok(ProofStatus::Verified);
        };
        self.check_attestation(prover, id, serial, &cert, roots)?;
        Ok(ProofStatus::Attested)
    }

    /// The key's certificate, when the vendor issued it for `serial` and it is valid now.
    fn certificate(&self, prover: &mut dyn Prover, id: &KeyId, serial: &Serial) -> Result<KeyCertificate, Validation> {
        let reject = |reason, detail: &str| self.invalid(id, serial.clone(), reason, detail);
        let der = match prover.read_certificate() {
            Ok(der) => der,
            Err(e) if e.kind() == ErrorKind::NotPresent => {
                return Err(reject(InvalidReason::Unprovisioned, "no certificate in slot 9E"))
            }
            Err(e) => return Err(Validation::Failed(e)),
        };
        let cert = KeyCertificate::from_der(&der).map_err(|e| reject(InvalidReason::Malformed, &e.to_string()))?;
        match cert.verify_issued_by(&self.vendor) {
            Ok(()) => {}
            Err(e @ (TrustError::CertificateInvalid(_) | TrustError::SignatureMalformed(_))) => {
                return Err(reject(InvalidReason::Malformed, &e.to_string()))
            }
            Err(e) => return Err(reject(InvalidReason::WrongVendor, &e.to_string())),
        }
        match cert.serial() {
            Ok(s) if s == *serial => {}
            Ok(s) => {
                return Err(reject(
                    InvalidReason::SerialMismatch,
                    &format!("certificate is for serial {s}"),
                ))
            }
            Err(e) => return Err(reject(InvalidReason::Malformed, &e.to_string())),
        }
        if !cert.is_valid_at((self.now)()) {
            return Err(reject(
                InvalidReason::ExpiredCertificate,
                "now is outside the certificate's validity period",
            ));
        }
        Ok(cert)
    }

    /// The attestation step: the certificate must record an attestation at issue, and the
    /// key must attest now, for its serial and its certified key. Transient I/O failures are
    /// `Failed` (retried); a key that cannot attest is `not_attested`.
    fn check_attestation(
        &self,
        prover: &mut dyn Prover,
        id: &KeyId,
        serial: &Serial,
        cert: &KeyCertificate,
        roots: &AttestationRoots,
    ) -> Result<(), Validation> {
        let reject = |reason, detail: &str| Err(self.invalid(id, serial.clone(), reason, detail));
        if cert.attested_sha256().is_none() {
            return reject(
                InvalidReason::NotAttested,
                "the key certificate was issued without an attestation",
            );
        }
        let attestation = match prover.attest() {
            Ok(a) => a,
            Err(e) if e.kind().is_transient() => return Err(Validation::Failed(e)),
            Err(e) => {
                return reject(
                    InvalidReason::NotAttested,
                    &format!("the key gives no attestation: {e}"),
                )
            }
        };
        let spki = match cert.spki_der() {
            Ok(s) => s,
            Err(e) => return reject(InvalidReason::Malformed, &e.to_string()),
        };
        let requirement = AttestationRequirement {
            serial,
            spki_der: &spki,
        };
        match requirement.check(roots, &attestation, (self.now)()) {
            Ok(_) => Ok(()),
            Err(e) => reject(InvalidReason::NotAttested, &format!("{}: {e}", e.code())),
        }
    }
}

impl KeyValidator for VendorValidator {
    fn validate(&self, key: &mut dyn HardwareKey) -> Validation {
        let serial = match key.read_serial() {
            Ok(s) => s,
            Err(e) => return Validation::Failed(e),
        };
        let id = key.info().id.clone();
        let proof = match key.prover() {
            Some(prover) => match self.prove(prover, &id, &serial) {
                Ok(status) => status,
                Err(outcome) => return outcome,
            },
            None if self.allow_serial_only => ProofStatus::SerialOnly,
            None => {
                return self.invalid(
                    &id,
                    serial,
                    InvalidReason::SerialOnlyNotAllowed,
                    "key cannot prove its identity",
                )
            }
        };
        if !self.serial_allowed(&serial) {
            return self.invalid(
                &id,
                serial,
                InvalidReason::SerialNotAllowed,
                "serial not in allowed list",
            );
        }
        Validation::Valid {
            serial,
            firmware: key.read_firmware().ok(),
            proof,
        }
    }
}
