//! Key certificates: X.509 v3 certificates, signed by the vendor, for the public key in a
//! dongle's PIV slot 9E. The subject names the dongle's serial (`serialNumber`, 2.5.4.5)
//! so a certificate cannot be moved to another key.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use p256::ecdsa::DerSignature;
use p256::pkcs8::EncodePublicKey;
use rand_core::RngCore;
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::der::asn1::{Any, OctetString, PrintableStringRef, SetOfVec, Utf8StringRef};
use x509_cert::der::oid::AssociatedOid;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, Encode, Tag, Tagged};
use x509_cert::ext::AsExtension;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::{Time, Validity};
use x509_cert::Certificate;

use super::attestation;
use super::error::TrustError;
use super::pem;
use super::proof_key::ProofKey;
use super::vendor_key::{check_len, p256_public_from_pem, p256_public_from_spki_der};
use super::{VendorPublicKey, VendorSigningKey};
use crate::key::{Proof, Serial};

const OID_COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const OID_SERIAL_NUMBER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.5");
const OID_ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");

/// Back-dating of `notBefore`, so a server whose clock is a little behind accepts a
/// certificate issued a moment ago.
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// X.520 upper bound for `serialNumber`.
const MAX_SERIAL_LEN: usize = 64;

/// Issues a certificate for `key_public` (the dongle's slot-9E key) naming `serial`, valid
/// from now (minus a few minutes of clock skew) for `validity`. Returns DER.
pub fn issue_key_certificate(
    vendor: &VendorSigningKey,
    serial: &Serial,
    key_public: &p256::PublicKey,
    validity: Duration,
) -> Result<Vec<u8>, TrustError> {
    if validity.is_zero() {
        return Err(TrustError::InvalidArgument("the validity period is empty".into()));
    }
    let now = SystemTime::now();
    let not_after = now
        .checked_add(validity)
        .ok_or_else(|| TrustError::InvalidArgument("validity period is too long".into()))?;
    let not_before = now.checked_sub(CLOCK_SKEW).unwrap_or(now);
    issue_key_certificate_for_period(vendor, serial, key_public, not_before, not_after)
}

/// Like [`issue_key_certificate`] with an explicit validity period.
pub fn issue_key_certificate_for_period(
    vendor: &VendorSigningKey,
    serial: &Serial,
    key_public: &p256::PublicKey,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<Vec<u8>, TrustError> {
    let spki = key_public
        .to_public_key_der()
        .map_err(|e| TrustError::KeyInvalid(format!("cannot encode public key: {e}")))?;
    issue_key_certificate_spki(vendor, serial, spki.as_bytes(), not_before, not_after)
}

/// Like [`issue_key_certificate_for_period`] for a SubjectPublicKeyInfo in DER (what
/// `yubico-piv-tool -a generate` prints, once un-PEMed; see [`super::key_spki_from_pem`]).
/// Only P-256 and RSA 2048–4096 keys are accepted: the proof keys a server can verify.
pub fn issue_key_certificate_spki(
    vendor: &VendorSigningKey,
    serial: &Serial,
    spki_der: &[u8],
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<Vec<u8>, TrustError> {
    issue_key_certificate_attested(vendor, serial, spki_der, not_before, not_after, None)
}

/// Like [`issue_key_certificate_spki`]; with `attestation_sha256` (the SHA-256 of the
/// verified attestation certificate) the certificate carries keyfloat's "attested"
/// extension, so servers that require attestation accept it. Verifying the attestation
/// is the caller's job ([`super::attestation::AttestationRequirement::check`]).
pub fn issue_key_certificate_attested(
    vendor: &VendorSigningKey,
    serial: &Serial,
    spki_der: &[u8],
    not_before: SystemTime,
    not_after: SystemTime,
    attestation_sha256: Option<[u8; 32]>,
) -> Result<Vec<u8>, TrustError> {
    // Parsing first rejects other key types with a clear message.
    ProofKey::from_spki_der(spki_der)?;
    let spki = SubjectPublicKeyInfoOwned::from_der(spki_der)
        .map_err(|e| TrustError::KeyInvalid(format!("SubjectPublicKeyInfo does not parse: {e}")))?;
    check_serial(serial)?;
    if not_after <= not_before {
        return Err(TrustError::InvalidArgument(
            "the validity period ends before it starts".into(),
        ));
    }
    let validity = Validity {
        not_before: x509_time(not_before)?,
        not_after: x509_time(not_after)?,
    };
    let issuer = vendor_name(&vendor.public_key())?;
    let subject = key_name(serial)?;
    let mut serial_bytes = [0u8; 16];
    rand_core::OsRng
        .try_fill_bytes(&mut serial_bytes)
        .map_err(|e| TrustError::Rng(e.to_string()))?;
    serial_bytes[0] &= 0x7f; // a positive INTEGER
    serial_bytes[0] |= 0x01; // of a fixed length
    let cert_serial = SerialNumber::new(&serial_bytes).map_err(build_err)?;
    let profile = Profile::Leaf {
        issuer,
        enable_key_agreement: false,
        enable_key_encipherment: false,
    };
    let mut builder = CertificateBuilder::new(profile, cert_serial, validity, subject, spki, vendor.signing_key())
        .map_err(build_err)?;
    if let Some(digest) = attestation_sha256 {
        let value = OctetString::new(digest.to_vec()).map_err(build_err)?;
        builder.add_extension(&AttestedExtension(value)).map_err(build_err)?;
    }
    let cert = builder.build::<DerSignature>().map_err(build_err)?;
    cert.to_der().map_err(build_err)
}

/// Parses the dongle's public key as the SPKI PEM that `yubico-piv-tool -a generate` and
/// `openssl pkey -pubout` print.
pub fn key_public_from_pem(text: &str) -> Result<p256::PublicKey, TrustError> {
    p256_public_from_pem(text)
}

/// keyfloat's "issued after a verified attestation" extension: the SHA-256 of the
/// attestation certificate, as an OCTET STRING.
struct AttestedExtension(OctetString);

impl AssociatedOid for AttestedExtension {
    const OID: ObjectIdentifier = attestation::oid::KEYFLOAT_ATTESTED;
}

impl Encode for AttestedExtension {
    fn encoded_len(&self) -> x509_cert::der::Result<x509_cert::der::Length> {
        self.0.encoded_len()
    }
    fn encode(&self, writer: &mut impl x509_cert::der::Writer) -> x509_cert::der::Result<()> {
        self.0.encode(writer)
    }
}

impl AsExtension for AttestedExtension {
    fn critical(&self, _: &Name, _: &[x509_cert::ext::Extension]) -> bool {
        // Servers that do not know it may still use the certificate.
        false
    }
}

fn build_err(e: impl std::fmt::Display) -> TrustError {
    TrustError::CertificateBuild(e.to_string())
}

fn check_serial(serial: &Serial) -> Result<(), TrustError> {
    let s = serial.as_str();
    if s.is_empty() || s.len() > MAX_SERIAL_LEN {
        return Err(TrustError::InvalidArgument(format!(
            "a key serial must have 1 to {MAX_SERIAL_LEN} characters"
        )));
    }
    if PrintableStringRef::new(s).is_err() {
        return Err(TrustError::InvalidArgument(format!(
            "key serial {s:?} has characters an X.509 serialNumber cannot hold (use letters, digits, - . : /)"
        )));
    }
    Ok(())
}

fn x509_time(t: SystemTime) -> Result<Time, TrustError> {
    // Whole seconds: X.509 times have no fractions. The builder turns years before 2050
    // into UTCTime as RFC 5280 requires.
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| TrustError::InvalidArgument("time before 1970".into()))?
        .as_secs();
    Time::try_from(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .map_err(|e| TrustError::InvalidArgument(format!("time cannot be expressed in a certificate: {e}")))
}

fn rdn(oid: ObjectIdentifier, value: Any) -> Result<RelativeDistinguishedName, TrustError> {
    let atv = x509_cert::attr::AttributeTypeAndValue { oid, value };
    let set = SetOfVec::try_from(vec![atv]).map_err(build_err)?;
    Ok(RelativeDistinguishedName::from(set))
}

fn utf8(s: &str) -> Result<Any, TrustError> {
    Any::encode_from(&Utf8StringRef::new(s).map_err(build_err)?).map_err(build_err)
}

fn vendor_name(vendor: &VendorPublicKey) -> Result<Name, TrustError> {
    let cn = format!("keyfloat vendor {}", vendor.fingerprint_short());
    Ok(RdnSequence(vec![rdn(OID_COMMON_NAME, utf8(&cn)?)?]))
}

fn key_name(serial: &Serial) -> Result<Name, TrustError> {
    let printable = PrintableStringRef::new(serial.as_str()).map_err(build_err)?;
    Ok(RdnSequence(vec![
        rdn(OID_COMMON_NAME, utf8(&format!("keyfloat key {serial}"))?)?,
        rdn(OID_SERIAL_NUMBER, Any::encode_from(&printable).map_err(build_err)?)?,
    ]))
}

/// A parsed key certificate.
#[derive(Debug, Clone)]
pub struct KeyCertificate {
    cert: Certificate,
    der: Vec<u8>,
}

impl KeyCertificate {
    /// Parses a DER certificate. Only canonical DER is accepted, so the bytes the vendor
    /// signed are exactly the bytes re-encoded for verification.
    pub fn from_der(der: &[u8]) -> Result<Self, TrustError> {
        check_len("certificate", der.len() as u64)?;
        let cert = Certificate::from_der(der)
            .map_err(|e| TrustError::CertificateInvalid(format!("not a DER X.509 certificate: {e}")))?;
        let reencoded = cert
            .to_der()
            .map_err(|e| TrustError::CertificateInvalid(format!("does not re-encode: {e}")))?;
        if reencoded != der {
            return Err(TrustError::CertificateInvalid("not in canonical DER".into()));
        }
        Ok(Self {
            cert,
            der: der.to_vec(),
        })
    }

    /// Parses a certificate given as PEM (`-----BEGIN CERTIFICATE-----`) or DER bytes.
    pub fn from_pem_or_der(bytes: &[u8]) -> Result<Self, TrustError> {
        let text = std::str::from_utf8(bytes).ok().filter(|t| t.contains("-----BEGIN "));
        let Some(text) = text else {
            return Self::from_der(bytes);
        };
        check_len("certificate PEM", text.len() as u64)?;
        let blocks = pem::blocks(text)?;
        let block = blocks
            .iter()
            .find(|b| b.label == "CERTIFICATE")
            .ok_or_else(|| TrustError::PemInvalid("no -----BEGIN CERTIFICATE----- block".into()))?;
        Self::from_der(&block.der)
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The PEM encoding (`-----BEGIN CERTIFICATE-----`), as `yubico-piv-tool -a import-certificate` reads it.
    pub fn to_pem(&self) -> String {
        pem::encode("CERTIFICATE", &self.der)
    }

    /// The key serial the subject names (`serialNumber`, 2.5.4.5). An error when there is none,
    /// or more than one (an ambiguous certificate is never trusted).
    pub fn serial(&self) -> Result<Serial, TrustError> {
        let mut found = None;
        for rdn in self.cert.tbs_certificate.subject.0.iter() {
            for atv in rdn.0.iter().filter(|a| a.oid == OID_SERIAL_NUMBER) {
                let value = directory_string(&atv.value)
                    .ok_or_else(|| TrustError::CertificateInvalid("serialNumber is not a string".into()))?;
                if found.replace(value).is_some() {
                    return Err(TrustError::CertificateInvalid(
                        "subject names more than one serialNumber".into(),
                    ));
                }
            }
        }
        found
            .map(Serial::new)
            .ok_or_else(|| TrustError::CertificateInvalid("subject has no serialNumber (2.5.4.5)".into()))
    }

    /// The SHA-256 of the attestation this certificate was issued after (keyfloat's
    /// "attested" extension), `None` for certificates issued without one.
    pub fn attested_sha256(&self) -> Option<[u8; 32]> {
        let ext = self
            .cert
            .tbs_certificate
            .extensions
            .iter()
            .flatten()
            .find(|e| e.extn_id == attestation::oid::KEYFLOAT_ATTESTED)?;
        let value = OctetString::from_der(ext.extn_value.as_bytes()).ok()?;
        value.as_bytes().try_into().ok()
    }

    /// The subject's common name, if any.
    pub fn common_name(&self) -> Option<String> {
        common_name(&self.cert.tbs_certificate.subject)
    }

    /// The issuer's common name, if any.
    pub fn issuer_common_name(&self) -> Option<String> {
        common_name(&self.cert.tbs_certificate.issuer)
    }

    /// Start of the validity period.
    pub fn not_before(&self) -> SystemTime {
        self.cert.tbs_certificate.validity.not_before.to_system_time()
    }

    /// End of the validity period.
    pub fn not_after(&self) -> SystemTime {
        self.cert.tbs_certificate.validity.not_after.to_system_time()
    }

    /// Whether `now` is within the validity period (inclusive, as RFC 5280 says).
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before() <= now && now <= self.not_after()
    }

    /// Checks that `vendor` signed this certificate (ecdsa-with-SHA256).
    pub fn verify_issued_by(&self, vendor: &VendorPublicKey) -> Result<(), TrustError> {
        let alg = &self.cert.signature_algorithm;
        if alg.oid != OID_ECDSA_WITH_SHA256 || alg.parameters.is_some() {
            return Err(TrustError::UnsupportedAlgorithm(format!(
                "certificate signed with {}, expected ecdsa-with-SHA256",
                alg.oid
            )));
        }
        if self.cert.tbs_certificate.signature != *alg {
            return Err(TrustError::CertificateInvalid(
                "inner and outer signature algorithms differ".into(),
            ));
        }
        let sig = self
            .cert
            .signature
            .as_bytes()
            .ok_or_else(|| TrustError::SignatureMalformed("signature BIT STRING has unused bits".into()))?;
        let tbs = self
            .cert
            .tbs_certificate
            .to_der()
            .map_err(|e| TrustError::CertificateInvalid(format!("does not re-encode: {e}")))?;
        vendor.verify(&tbs, sig)
    }

    /// The certified key, when it is a P-256 key.
    pub fn public_key(&self) -> Result<p256::PublicKey, TrustError> {
        p256_public_from_spki_der(&self.spki_der()?)
    }

    /// The certified key as SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> Result<Vec<u8>, TrustError> {
        self.cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| TrustError::CertificateInvalid(format!("public key does not re-encode: {e}")))
    }

    /// Checks a proof of possession: `proof` must be the certified key's signature over
    /// `proof.signed_message(challenge)`, in the scheme matching the certified key
    /// (ECDSA P-256/SHA-256 or RSA PKCS#1 v1.5/SHA-256).
    pub fn verify_proof(&self, challenge: &[u8], proof: &Proof) -> Result<(), TrustError> {
        let key = ProofKey::from_spki_der(&self.spki_der()?).map_err(|e| match e {
            TrustError::WrongKeyType { found, .. } => {
                TrustError::UnsupportedAlgorithm(format!("certified key is {found}"))
            }
            other => other,
        })?;
        key.verify(proof.scheme, &proof.signed_message(challenge), &proof.signature)
    }
}

impl FromStr for KeyCertificate {
    type Err = TrustError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_pem_or_der(s.as_bytes())
    }
}

fn directory_string(value: &Any) -> Option<String> {
    match value.tag() {
        Tag::PrintableString => value.decode_as::<PrintableStringRef<'_>>().ok().map(|s| s.to_string()),
        Tag::Utf8String => value.decode_as::<Utf8StringRef<'_>>().ok().map(|s| s.to_string()),
        _ => None,
    }
}

fn common_name(name: &Name) -> Option<String> {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|a| a.oid == OID_COMMON_NAME)
        .and_then(|a| directory_string(&a.value))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::key::SignatureScheme;
    use crate::trust::vendor_key::MAX_PEM_FILE_LEN;

    fn key_pair() -> (p256::ecdsa::SigningKey, p256::PublicKey) {
        let sk = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let pk = p256::PublicKey::from(*sk.verifying_key());
        (sk, pk)
    }

    #[test]
    fn issued_certificate_names_serial_and_verifies() {
        let vendor = VendorSigningKey::generate();
        let (sk, pk) = key_pair();
        let der = issue_key_certificate(&vendor, &Serial::from(12345678), &pk, Duration::from_secs(86400)).unwrap();
        let cert = KeyCertificate::from_der(&der).unwrap();
        assert_eq!(cert.serial().unwrap(), Serial::from(12345678));
        assert_eq!(cert.common_name().as_deref(), Some("keyfloat key 12345678"));
        assert_eq!(
            cert.issuer_common_name().unwrap(),
            format!("keyfloat vendor {}", vendor.public_key().fingerprint_short())
        );
        cert.verify_issued_by(&vendor.public_key()).unwrap();
        let other = VendorSigningKey::generate().public_key();
        assert_eq!(cert.verify_issued_by(&other).unwrap_err().code(), "signature_invalid");
        assert!(cert.is_valid_at(SystemTime::now()));
        assert!(!cert.is_valid_at(SystemTime::now() + Duration::from_secs(2 * 86400)));
        assert_eq!(cert.public_key().unwrap(), pk);

        use p256::ecdsa::signature::Signer;
        let sig: p256::ecdsa::Signature = sk.sign(b"challenge");
        let proof = Proof {
            scheme: SignatureScheme::EcdsaP256Sha256,
            signed_prefix: Vec::new(),
            signature: sig.to_der().as_bytes().to_vec(),
        };
        cert.verify_proof(b"challenge", &proof).unwrap();
        assert_eq!(
            cert.verify_proof(b"other", &proof).unwrap_err().code(),
            "signature_invalid"
        );

        let pem = cert.to_pem();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert_eq!(KeyCertificate::from_pem_or_der(pem.as_bytes()).unwrap().der(), &der[..]);
    }

    #[test]
    fn bad_inputs_are_rejected_with_codes() {
        let vendor = VendorSigningKey::generate();
        let (_, pk) = key_pair();
        let now = SystemTime::now();
        let e = issue_key_certificate_for_period(&vendor, &Serial::from(1), &pk, now, now).unwrap_err();
        assert_eq!(e.code(), "invalid_argument");
        let e = issue_key_certificate(&vendor, &Serial::from(1), &pk, Duration::ZERO).unwrap_err();
        assert_eq!(e.code(), "invalid_argument");
        let e = issue_key_certificate(&vendor, &Serial::new(""), &pk, Duration::from_secs(60)).unwrap_err();
        assert_eq!(e.code(), "invalid_argument");
        let e = issue_key_certificate(&vendor, &Serial::new("a_b"), &pk, Duration::from_secs(60)).unwrap_err();
        assert_eq!(e.code(), "invalid_argument");
        let e = issue_key_certificate_spki(&vendor, &Serial::from(1), b"junk", now, now + CLOCK_SKEW).unwrap_err();
        assert_eq!(e.code(), "key_invalid");
        assert_eq!(
            KeyCertificate::from_der(b"junk").unwrap_err().code(),
            "certificate_invalid"
        );
        assert_eq!(KeyCertificate::from_der(&[]).unwrap_err().code(), "certificate_invalid");
        assert_eq!(
            KeyCertificate::from_der(&vec![0x30; MAX_PEM_FILE_LEN as usize + 1])
                .unwrap_err()
                .code(),
            "too_large"
        );
    }

    #[test]
    fn expired_period_is_representable() {
        let vendor = VendorSigningKey::generate();
        let (_, pk) = key_pair();
        let now = SystemTime::now();
        let day = Duration::from_secs(86400);
        let der = issue_key_certificate_for_period(&vendor, &Serial::from(5), &pk, now - 3 * day, now - day).unwrap();
        let cert = KeyCertificate::from_der(&der).unwrap();
        assert!(!cert.is_valid_at(now));
        assert!(cert.is_valid_at(now - 2 * day));
    }
}
