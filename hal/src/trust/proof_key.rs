//! The certified key in a dongle (PIV slot 9E): P-256 (ECDSA-SHA256) or RSA 2048–4096
//! (PKCS#1 v1.5 with SHA-256), and the check of its answer to a challenge.

use p256::pkcs8::spki::SubjectPublicKeyInfoRef;
use p256::pkcs8::{DecodePublicKey, ObjectIdentifier};
use rsa::signature::Verifier;
use rsa::traits::PublicKeyParts;

use super::error::TrustError;
use super::pem::{algorithm_name, OID_EC_PUBLIC_KEY};
use super::vendor_key::{check_len, p256_public_from_spki_der, public_key_der_from_pem, verify_p256};
use crate::key::SignatureScheme;

const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EXPECTED: &str = "a P-256 or RSA (2048 to 4096 bit) public key";
const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 4096;

/// A proof key a server can verify.
#[derive(Debug, Clone)]
pub(crate) enum ProofKey {
    P256(p256::ecdsa::VerifyingKey),
    Rsa(rsa::RsaPublicKey),
}

impl ProofKey {
    /// Parses a SubjectPublicKeyInfo (DER), accepting only the key types above.
    pub(crate) fn from_spki_der(der: &[u8]) -> Result<Self, TrustError> {
        check_len("public key", der.len() as u64)?;
        let spki = SubjectPublicKeyInfoRef::try_from(der)
            .map_err(|e| TrustError::KeyInvalid(format!("SubjectPublicKeyInfo does not parse: {e}")))?;
        if spki.algorithm.oid == OID_EC_PUBLIC_KEY {
            return match p256_public_from_spki_der(der) {
                Ok(k) => Ok(Self::P256(k.into())),
                Err(TrustError::WrongKeyType { found, .. }) => Err(TrustError::WrongKeyType {
                    expected: EXPECTED,
                    found,
                }),
                Err(e) => Err(e),
            };
        }
        if spki.algorithm.oid == OID_RSA_ENCRYPTION {
            let key = rsa::RsaPublicKey::from_public_key_der(der)
                .map_err(|e| TrustError::KeyInvalid(format!("RSA public key does not parse: {e}")))?;
            let bits = key.size() * 8;
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                return Err(TrustError::WrongKeyType {
                    expected: EXPECTED,
                    found: format!("an RSA-{bits} key"),
                });
            }
            return Ok(Self::Rsa(key));
        }
        Err(TrustError::WrongKeyType {
            expected: EXPECTED,
            found: algorithm_name(spki.algorithm.oid, spki.algorithm.parameters_oid().ok()),
        })
    }

    /// Checks `sig` over `msg` under the scheme the key claims it used.
    pub(crate) fn verify(&self, scheme: SignatureScheme, msg: &[u8], sig: &[u8]) -> Result<(), TrustError> {
        match (self, scheme) {
            (Self::P256(k), SignatureScheme::EcdsaP256Sha256) => verify_p256(k, msg, sig),
            (Self::Rsa(k), SignatureScheme::RsaPkcs1Sha256) => {
                let sig = rsa::pkcs1v15::Signature::try_from(sig)
                    .map_err(|e| TrustError::SignatureMalformed(format!("not an RSA signature: {e}")))?;
                rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(k.clone())
                    .verify(msg, &sig)
                    .map_err(|_| {
                        TrustError::SignatureInvalid("RSA PKCS#1 v1.5 signature does not match the message".into())
                    })
            }
            (key, scheme) => Err(TrustError::SignatureInvalid(format!(
                "the key answered with a {scheme:?} signature but its certificate holds {}",
                key.name()
            ))),
        }
    }

    /// Readable key type.
    pub(crate) fn name(&self) -> String {
        match self {
            Self::P256(_) => "a P-256 key".into(),
            Self::Rsa(k) => format!("an RSA-{} key", k.size() * 8),
        }
    }
}

/// Parses the dongle's slot-9E public key as SPKI PEM (what `yubico-piv-tool -a generate`
/// prints) and returns its DER, after checking it is a P-256 or RSA 2048–4096 key.
pub fn key_spki_from_pem(text: &str) -> Result<Vec<u8>, TrustError> {
    let der = public_key_der_from_pem(text, EXPECTED)?;
    ProofKey::from_spki_der(&der)?;
    Ok(der)
}
