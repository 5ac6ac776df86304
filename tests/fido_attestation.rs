//! FIDO enrollment with `packed` attestation through the HID backend's transport seam,
//! against the simulator's virtual HID YubiKey. A real key needs a touch for
//! makeCredential, which no test can give: the seam's `touch` verb stands for the person.
//! The enrolled credential is then certified by the vendor and proves itself touch-free.
#![cfg(feature = "hid")]
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyfloat_hal::backend::hid::{HidConfig, HidProvider, ProvisionedCredential, ProvisioningStore};
use keyfloat_hal::backend::sim::{SimAttestation, SimKeySpec};
use keyfloat_hal::trust::attestation::sim_ca::SimAttestationCa;
use keyfloat_hal::trust::{issue_key_certificate_attested, AttestationRoots, VendorSigningKey, VendorValidator};
use keyfloat_hal::{ErrorKind, KeyProvider, KeyValidator, ProofStatus, Serial, Validation};
use keyfloat_simulator::hid::{credential_id, SimHidTransport};
use p256::pkcs8::EncodePublicKey;

struct Rig {
    hid: SimHidTransport,
    provider: HidProvider,
    store: ProvisioningStore,
    _dir: tempfile::TempDir,
    ca: SimAttestationCa,
}

impl Rig {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = ProvisioningStore::new(dir.path());
        let hid = SimHidTransport::new();
        let config = HidConfig {
            provisioning: Some(store.clone()),
            ..HidConfig::default()
        };
        let provider = HidProvider::new(Arc::new(hid.clone()), config);
        Self {
            hid,
            provider,
            store,
            _dir: dir,
            ca: SimAttestationCa::generate().unwrap(),
        }
    }

    /// Plugs a virtual key; `attested` gives it a FIDO attestation key from the rig's CA.
    fn plug(&self, name: &str, serial: u32, attested: bool) -> SimKeySpec {
        let mut spec = SimKeySpec::generate(name, serial);
        if attested {
            spec = spec.with_attestation(Some(SimAttestation::Device(self.ca.issue_device(serial).unwrap())));
        }
        self.hid.insert(spec.clone());
        self.hid.plug(name).unwrap();
        spec
    }

    fn key(&self) -> keyfloat_hal::backend::hid::HidKey {
        let id = self.provider.list().unwrap()[0].id.clone();
        self.provider.open_hid(&id).unwrap()
    }

    fn roots(&self) -> AttestationRoots {
        self.ca.roots().unwrap()
    }
}

#[test]
fn enrollment_verifies_packed_attestation_and_the_credential_then_proves_itself() {
    let rig = Rig::new();
    let spec = rig.plug("alpha", 12345678, true);
    let mut key = rig.key();

    // Nobody touches: the key times out, nothing is enrolled.
    let e = key.enroll_attested(&rig.roots(), SystemTime::now()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");

    rig.hid.touch("alpha").unwrap();
    let enrolled = key.enroll_attested(&rig.roots(), SystemTime::now()).unwrap();
    assert_eq!(enrolled.credential_id, credential_id(&spec));
    assert_eq!(enrolled.public_key, p256::PublicKey::from(spec.verifying_key()));
    assert_eq!(&enrolled.aaguid, b"keyfloat-sim-hid");

    // The vendor certifies the attested credential key, recording the attestation.
    let vendor = VendorSigningKey::generate();
    let spki = enrolled.public_key.to_public_key_der().unwrap();
    let now = SystemTime::now();
    let cert = issue_key_certificate_attested(
        &vendor,
        &Serial::from(12345678),
        spki.as_bytes(),
        now - Duration::from_secs(60),
        now + Duration::from_secs(86400),
        Some(enrolled.attestation_sha256),
    )
    .unwrap();
    rig.store
        .save(
            &Serial::from(12345678),
            &ProvisionedCredential {
                credential_id: enrolled.credential_id.clone(),
                certificate_der: cert,
            },
        )
        .unwrap();
    let mut key = rig.key();
    match VendorValidator::new(vendor.public_key()).validate(&mut key) {
        Validation::Valid { proof, .. } => assert_eq!(proof, ProofStatus::Verified),
        other => panic!("enrolled key does not validate: {other:?}"),
    }
}

#[test]
fn enrollment_refuses_none_attestation_unknown_roots_and_bad_signatures() {
    // A key without an attestation key (format "none"): nothing chains to a root.
    let rig = Rig::new();
    rig.plug("plain", 1, false);
    rig.hid.touch("plain").unwrap();
    let mut key = rig.key();
    let e = key.enroll_attested(&rig.roots(), SystemTime::now()).unwrap_err();
    assert!(e.to_string().contains("attestation_untrusted"), "{e}");

    // A genuine-looking chain to a root nobody configured.
    let rig = Rig::new();
    rig.plug("k", 2, true);
    rig.hid.touch("k").unwrap();
    let other = SimAttestationCa::generate().unwrap().roots().unwrap();
    let e = rig.key().enroll_attested(&other, SystemTime::now()).unwrap_err();
    assert!(e.to_string().contains("attestation_untrusted"), "{e}");

    // The key signs something else than the new credential.
    let rig = Rig::new();
    rig.plug("k", 3, true);
    rig.hid.corrupt("k", true).unwrap();
    rig.hid.touch("k").unwrap();
    let e = rig.key().enroll_attested(&rig.roots(), SystemTime::now()).unwrap_err();
    assert!(e.to_string().contains("attestation_untrusted"), "{e}");
    assert!(e.to_string().contains("signature"), "{e}");
}

/// The CLI glue on a machine without HID keys (every CI machine): a clear refusal, no file.
#[test]
fn fido_enroll_without_a_key_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    VendorSigningKey::generate()
        .write_pem_file(dir.join("vendor.pem"))
        .unwrap();
    std::fs::write(dir.join("root.pem"), SimAttestationCa::generate().unwrap().root_pem()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyfloat"))
        .args([
            "vendor",
            "fido-enroll",
            "--vendor-key",
            "vendor.pem",
            "--fido-attestation-root",
            "root.pem",
            "--provisioning-dir",
            "creds",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("found 0 FIDO keys"), "{err}");
    assert!(!dir.join("creds").exists());
}
