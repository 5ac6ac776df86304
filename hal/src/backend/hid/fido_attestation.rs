//! FIDO credentials get the PIV idea too: at enrollment, `authenticatorMakeCredential`
//! returns a `packed` attestation — a signature over the new credential by the key's FIDO
//! attestation key, whose certificate (`x5c`) chains to the manufacturer's FIDO root. A
//! credential whose attestation verifies against the configured FIDO roots was made on a
//! genuine authenticator, and its private key cannot leave it.
//!
//! Limits, stated: every real key needs a **touch** for makeCredential (no test can give
//! one; behind the transport seam the simulator's `SimHidTransport::touch` stands for it), so
//! attestation happens once, at enrollment by a person — not at every validation, where
//! the server only gets touch-free assertions. FIDO attestation certificates are batch
//! certificates: they name the model (AAGUID), not the device serial; the serial is bound by
//! the vendor certificate issued at enrollment, read over the OTP interface.

use std::time::SystemTime;

use sha2::{Digest, Sha256};
use x509_cert::der::asn1::OctetString;
use x509_cert::der::Decode;

use super::ctap2::{self, MadeCredential, FLAG_UP};
use crate::key::SignatureScheme;
use crate::trust::attestation::{leaf_key, verify_chain, AttestationError, AttestationRoots};

/// FIDO's id-fido-gen-ce-aaguid certificate extension.
const OID_FIDO_AAGUID: p256::pkcs8::ObjectIdentifier =
    p256::pkcs8::ObjectIdentifier::new_unwrap("1.3.6.1.4.1.45724.1.1.4");

/// COSE algorithm ES256.
const ES256: i64 = -7;

/// A credential whose packed attestation verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolledCredential {
    /// The credential id (what the server asks assertions for).
    pub credential_id: Vec<u8>,
    /// The credential's public key (what the vendor certifies).
    pub public_key: p256::PublicKey,
    /// The authenticator model.
    pub aaguid: [u8; 16],
    /// SHA-256 of the attestation certificate (recorded in the vendor certificate).
    pub attestation_sha256: [u8; 32],
}

impl EnrolledCredential {
    /// The credential key as SubjectPublicKeyInfo DER (what the vendor certificate names).
    pub fn public_key_der(&self) -> Vec<u8> {
        use p256::pkcs8::EncodePublicKey;
        self.public_key
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default()
    }
}

fn malformed(e: impl std::fmt::Display) -> AttestationError {
    AttestationError::Malformed(e.to_string())
}

/// Verifies a makeCredential answer made for `rp_id` over `client_data_hash`: `packed`
/// format, ES256, a user-presence flag, and a signature over `authData ‖ clientDataHash`
/// by the `x5c` certificate that chains to one of `roots` at `now`.
pub fn verify_packed(
    made: &MadeCredential,
    rp_id: &str,
    client_data_hash: &[u8; 32],
    roots: &AttestationRoots,
    now: SystemTime,
) -> Result<EnrolledCredential, AttestationError> {
    if made.fmt != "packed" {
        return Err(AttestationError::Untrusted(format!(
            "attestation format {:?}, not \"packed\": nothing chains to a root",
            made.fmt
        )));
    }
    if made.alg != Some(ES256) {
        return Err(AttestationError::Untrusted(format!(
            "attestation algorithm {:?}, keyfloat verifies ES256 (-7)",
            made.alg
        )));
    }
    let Some((leaf_der, chain)) = made.x5c.split_first() else {
        return Err(AttestationError::Untrusted(
            "self attestation (no x5c): nothing chains to a root".into(),
        ));
    };
    let header = ctap2::parse_auth_data(&made.auth_data).map_err(malformed)?;
    if header.rp_id_hash[..] != Sha256::digest(rp_id.as_bytes())[..] {
        return Err(malformed(format!("credential is not for the relying party {rp_id:?}")));
    }
    if header.flags & FLAG_UP == 0 {
        return Err(malformed("makeCredential without user presence"));
    }
    let credential = ctap2::parse_attested_credential(&made.auth_data).map_err(malformed)?;
    let leaf = verify_chain(roots, leaf_der, chain, now)?;
    let mut message = made.auth_data.clone();
    message.extend_from_slice(client_data_hash);
    leaf_key(&leaf)?
        .verify(SignatureScheme::EcdsaP256Sha256, &message, &made.sig)
        .map_err(|e| AttestationError::Untrusted(format!("attestation signature: {e}")))?;
    // When the certificate names a model, it must be the credential's.
    for ext in leaf.tbs_certificate.extensions.iter().flatten() {
        if ext.extn_id == OID_FIDO_AAGUID {
            let value = OctetString::from_der(ext.extn_value.as_bytes()).map_err(malformed)?;
            if value.as_bytes() != credential.aaguid {
                return Err(malformed("the certificate's AAGUID is not the credential's"));
            }
        }
    }
    Ok(EnrolledCredential {
        credential_id: credential.credential_id,
        public_key: credential.public_key,
        aaguid: credential.aaguid,
        attestation_sha256: Sha256::digest(leaf_der).into(),
    })
}
