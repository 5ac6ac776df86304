//! A **test** PIV attestation CA and the per-device F9 attestation keys it certifies, made
//! the way a YubiKey 5's factory chain is (root → F9 certificate → attestation of a slot),
//! for the simulator and tests. Never a Yubico key: its names say TEST, and a server only
//! trusts it when its root is configured explicitly.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use p256::ecdsa::signature::Signer;
use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::EncodePublicKey;
use rand_core::RngCore;
use sha2::{Digest, Sha256};
use x509_cert::certificate::{TbsCertificate, Version};
use x509_cert::der::asn1::{BitString, OctetString};
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};
use x509_cert::Certificate;

use super::{oid, AttestationRoots, OID_BASIC_CONSTRAINTS, OID_ECDSA_WITH_SHA256, OID_KEY_USAGE};
use crate::key::Firmware;
use crate::trust::error::TrustError;
use crate::trust::pem;

/// Subject of the test root.
pub const SIM_ROOT_NAME: &str = "CN=keyfloat TEST PIV Attestation Root (not Yubico)";
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fn build_err(e: impl fmt::Display) -> TrustError {
    TrustError::CertificateBuild(e.to_string())
}

fn key_from_seed(label: &[u8], seed: u64, extra: &[u8]) -> SigningKey {
    let mut counter = 0u32;
    loop {
        let d = Sha256::new()
            .chain_update(label)
            .chain_update(seed.to_be_bytes())
            .chain_update(extra)
            .chain_update(counter.to_be_bytes())
            .finalize();
        if let Ok(k) = SigningKey::from_slice(&d) {
            return k;
        }
        counter += 1;
    }
}

fn whole_seconds(t: SystemTime) -> Result<Time, TrustError> {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| TrustError::InvalidArgument("time before 1970".into()))?
        .as_secs();
    Time::try_from(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)).map_err(build_err)
}

fn spki_of(key: &SigningKey) -> Result<SubjectPublicKeyInfoOwned, TrustError> {
    let der = key.verifying_key().to_public_key_der().map_err(build_err)?;
    SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).map_err(build_err)
}

fn ext(id: p256::pkcs8::ObjectIdentifier, critical: bool, value: Vec<u8>) -> Result<Extension, TrustError> {
    Ok(Extension {
        extn_id: id,
        critical,
        extn_value: OctetString::new(value).map_err(build_err)?,
    })
}

fn ca_extensions() -> Result<Vec<Extension>, TrustError> {
    let bc = BasicConstraints {
        ca: true,
        path_len_constraint: None,
    };
    let ku = KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign);
    Ok(vec![
        ext(OID_BASIC_CONSTRAINTS, true, bc.to_der().map_err(build_err)?)?,
        ext(OID_KEY_USAGE, true, ku.to_der().map_err(build_err)?)?,
    ])
}

/// Builds and signs (ecdsa-with-SHA256) one certificate.
fn sign_certificate(
    issuer: &Name,
    subject: &Name,
    validity: Validity,
    spki: SubjectPublicKeyInfoOwned,
    extensions: Vec<Extension>,
    signer: &SigningKey,
) -> Result<Vec<u8>, TrustError> {
    let mut serial = [0u8; 16];
    rand_core::OsRng
        .try_fill_bytes(&mut serial)
        .map_err(|e| TrustError::Rng(e.to_string()))?;
    serial[0] = (serial[0] & 0x7f) | 0x01;
    let alg = AlgorithmIdentifierOwned {
        oid: OID_ECDSA_WITH_SHA256,
        parameters: None,
    };
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&serial).map_err(build_err)?,
        signature: alg.clone(),
        issuer: issuer.clone(),
        validity,
        subject: subject.clone(),
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    let sig: DerSignature = signer.sign(&tbs.to_der().map_err(build_err)?);
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: alg,
        signature: BitString::from_bytes(sig.as_bytes()).map_err(build_err)?,
    };
    cert.to_der().map_err(build_err)
}

/// The test attestation root: a self-signed P-256 CA.
#[derive(Clone)]
pub struct SimAttestationCa {
    key: SigningKey,
    name: Name,
    cert_der: Vec<u8>,
}

impl fmt::Debug for SimAttestationCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimAttestationCa")
            .field("name", &SIM_ROOT_NAME)
            .finish_non_exhaustive()
    }
}

impl SimAttestationCa {
    /// A CA with a fresh random key.
    pub fn generate() -> Result<Self, TrustError> {
        Self::with_key(SigningKey::random(&mut rand_core::OsRng))
    }

    /// A CA whose key derives from `seed` (reproducible simulator runs).
    pub fn from_seed(seed: u64) -> Result<Self, TrustError> {
        Self::with_key(key_from_seed(b"keyfloat-sim-attestation-root", seed, &[]))
    }

    fn with_key(key: SigningKey) -> Result<Self, TrustError> {
        let name = Name::from_str(SIM_ROOT_NAME).map_err(build_err)?;
        let now = SystemTime::now();
        let validity = Validity {
            not_before: whole_seconds(now - Duration::from_secs(86_400))?,
            not_after: whole_seconds(now + 20 * YEAR)?,
        };
        let cert_der = sign_certificate(&name, &name, validity, spki_of(&key)?, ca_extensions()?, &key)?;
        Ok(Self { key, name, cert_der })
    }

    /// The root certificate (DER).
    pub fn root_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The root certificate (PEM), for `--attestation-root` and `openssl verify -CAfile`.
    pub fn root_pem(&self) -> String {
        pem::encode("CERTIFICATE", &self.cert_der)
    }

    /// The root as the only trusted root.
    pub fn roots(&self) -> Result<AttestationRoots, TrustError> {
        AttestationRoots::from_ders([self.cert_der.as_slice()])
    }

    /// A device's F9 key and certificate, for the device with `serial`.
    pub fn issue_device(&self, serial: u32) -> Result<DeviceAttester, TrustError> {
        self.issue_device_with_key(serial, SigningKey::random(&mut rand_core::OsRng))
    }

    /// [`SimAttestationCa::issue_device`] with a key derived from `seed` and `serial`.
    pub fn issue_device_from_seed(&self, serial: u32, seed: u64) -> Result<DeviceAttester, TrustError> {
        let key = key_from_seed(b"keyfloat-sim-f9", seed, &serial.to_be_bytes());
        self.issue_device_with_key(serial, key)
    }

    fn issue_device_with_key(&self, serial: u32, key: SigningKey) -> Result<DeviceAttester, TrustError> {
        let subject = Name::from_str(&format!("CN=keyfloat TEST PIV Attestation {serial}")).map_err(build_err)?;
        let root = Certificate::from_der(&self.cert_der).map_err(build_err)?;
        let validity = root.tbs_certificate.validity;
        let cert_der = sign_certificate(
            &self.name,
            &subject,
            validity,
            spki_of(&key)?,
            ca_extensions()?,
            &self.key,
        )?;
        Ok(DeviceAttester {
            key,
            name: subject,
            validity,
            cert_der,
            serial,
        })
    }
}

/// A device's slot-F9 attestation key and its certificate.
#[derive(Clone)]
pub struct DeviceAttester {
    key: SigningKey,
    name: Name,
    validity: Validity,
    cert_der: Vec<u8>,
    serial: u32,
}

impl fmt::Debug for DeviceAttester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceAttester")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

impl DeviceAttester {
    /// The F9 certificate (DER): what object `5F FF 01` holds.
    pub fn certificate(&self) -> &[u8] {
        &self.cert_der
    }

    /// The serial the attestations name.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Makes the attestations name `serial` instead (a device that lies, or a genuine
    /// attestation chain moved to a card with another serial).
    pub fn attesting_serial(mut self, serial: u32) -> Self {
        self.serial = serial;
        self
    }

    /// Signs `message` with the attestation key (ECDSA P-256 / SHA-256, DER): what a FIDO
    /// `packed` attestation statement carries.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let sig: DerSignature = self.key.sign(message);
        sig.as_bytes().to_vec()
    }

    /// The attestation certificate for `spki_der` in `slot`, as `INS F9` returns it: signed by
    /// the F9 key, with the YubiKey extensions (firmware, serial, policy, form factor).
    pub fn attest(
        &self,
        slot: u8,
        spki_der: &[u8],
        firmware: Firmware,
        pin_policy: u8,
        touch_policy: u8,
    ) -> Result<Vec<u8>, TrustError> {
        let spki = SubjectPublicKeyInfoOwned::from_der(spki_der).map_err(build_err)?;
        let subject = Name::from_str(&format!("CN=YubiKey PIV Attestation {slot:02x}")).map_err(build_err)?;
        let extensions = vec![
            ext(
                oid::FIRMWARE,
                false,
                vec![firmware.major, firmware.minor, firmware.patch],
            )?,
            ext(oid::SERIAL, false, self.serial.to_der().map_err(build_err)?)?,
            ext(oid::POLICY, false, vec![pin_policy, touch_policy])?,
            ext(oid::FORM_FACTOR, false, vec![0x01])?,
        ];
        sign_certificate(&self.name, &subject, self.validity, spki, extensions, &self.key)
    }
}
