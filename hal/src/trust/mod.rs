//! Vendor trust chain: vendor keys, key certificates, proof of possession.
//!
//! A key is genuine when (1) its slot-9E certificate is signed by the configured vendor key,
//! (2) the certificate names the serial the key reports, (3) the certificate is within its
//! validity period and (4) the key signs a fresh random challenge with the certified private
//! key. A serial alone is never trusted (except by explicit configuration for serial-only
//! dongles), so a simulated key, or a key that merely reports the same serial, cannot
//! stand in for a vendor-provisioned one.
//!
//! The simulated backend's module docs show a provisioned simulated key validated this way.

pub mod attestation;
pub(crate) mod certificate;
mod error;
mod pem;
mod proof_key;
mod validator;
mod vendor_key;

pub use attestation::{AttestationError, AttestationRoots, AttestedKey};
pub use certificate::{
    issue_key_certificate, issue_key_certificate_attested, issue_key_certificate_for_period,
    issue_key_certificate_spki, key_public_from_pem, KeyCertificate,
};
pub use error::TrustError;
pub use proof_key::key_spki_from_pem;
pub use validator::{system_clock, Clock, VendorValidator};
pub use vendor_key::{VendorPublicKey, VendorSigningKey, MAX_PEM_FILE_LEN};
