//! Vendor trust chain: vendor keys, key certificates, proof of possession.
//!
//! A key is genuine when (1) its slot-9E certificate is signed by the configured vendor key,
//! (2) the certificate names the serial the key reports, (3) the certificate is within its
//! validity period and (4) the key signs a fresh random challenge with the certified private
//! key. A serial alone is never trusted (except by explicit configuration for serial-only
//! dongles), so a simulated key, or a key that merely reports the same serial, cannot
//! stand in for a vendor-provisioned one.
//!
//! ```
//! use keyfloat_hal::backend::sim::{SimBus, SimKeySpec};
//! use keyfloat_hal::trust::{provision_sim_key, VendorSigningKey, VendorValidator};
//! use keyfloat_hal::{KeyProvider, KeyValidator, ProofStatus, Validation};
//!
//! let vendor = VendorSigningKey::generate();
//! let bus = SimBus::new();
//! bus.insert(provision_sim_key(SimKeySpec::generate("alpha", 12345678), &vendor));
//! bus.plug("alpha").unwrap();
//! let provider = bus.provider();
//! let mut key = provider.open(&provider.list().unwrap()[0].id).unwrap();
//! let validator = VendorValidator::new(vendor.public_key());
//! assert!(matches!(
//!     validator.validate(key.as_mut()),
//!     Validation::Valid { proof: ProofStatus::Verified, .. }
//! ));
//! ```

pub mod attestation;
mod certificate;
mod error;
mod pem;
mod proof_key;
mod validator;
mod vendor_key;

pub use attestation::{AttestationError, AttestationRoots, AttestedKey};
pub use certificate::{
    issue_key_certificate, issue_key_certificate_attested, issue_key_certificate_for_period,
    issue_key_certificate_spki, key_public_from_pem, provision_sim_key, try_provision_sim_key, KeyCertificate,
    SIM_CERT_VALIDITY,
};
pub use error::TrustError;
pub use proof_key::key_spki_from_pem;
pub use validator::{system_clock, Clock, VendorValidator};
pub use vendor_key::{VendorPublicKey, VendorSigningKey, MAX_PEM_FILE_LEN};
