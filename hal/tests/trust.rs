//! The vendor trust chain end to end: simulated keys provisioned (or not) by a vendor key,
//! judged by `VendorValidator`, directly and through the monitor `Driver` into the cell.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyfloat_hal::backend::sim::provision_sim_key;
use keyfloat_hal::backend::sim::{SimBus, SimKeySpec};
use keyfloat_hal::trust::{
    issue_key_certificate, issue_key_certificate_for_period, issue_key_certificate_spki, key_spki_from_pem,
    KeyCertificate, VendorPublicKey, VendorSigningKey, VendorValidator,
};
use keyfloat_hal::{
    BackendKind, Driver, Error, ErrorKind, Firmware, HardwareId, HardwareIdCell, HardwareKey, Holder, Input,
    InvalidReason, KeyId, KeyInfo, KeyProvider, KeyStatus, KeyValidator, MonitorConfig, Proof, ProofCapability,
    ProofStatus, Prover, Serial, SignatureScheme, Snapshot, Validation,
};
use proptest::prelude::*;

const DAY: Duration = Duration::from_secs(86400);

fn validate_on_bus(bus: &SimBus, name: &str, validator: &VendorValidator) -> Validation {
    let provider = bus.provider();
    let mut key = provider.open(&KeyId::new(BackendKind::Sim, name)).expect("open");
    validator.validate(key.as_mut())
}

fn reason(v: &Validation) -> Option<InvalidReason> {
    match v {
        Validation::Invalid { reason, .. } => Some(*reason),
        _ => None,
    }
}

/// Plugs `spec` into a fresh bus and runs the monitor's `Driver` over every hot-plug event;
/// returns the published snapshot and the bus.
fn through_driver(
    spec: SimKeySpec,
    validator: VendorValidator,
    before_plug: impl FnOnce(&SimBus),
) -> (Arc<Snapshot>, SimBus) {
    let bus = SimBus::new();
    let name = spec.name.clone();
    bus.insert(spec);
    before_plug(&bus);
    let cell = HardwareIdCell::new(HardwareId::new("machine-1"));
    let reader = cell.reader();
    let provider = Arc::new(bus.provider());
    let mut source = provider.watch().expect("watch");
    let mut driver = Driver::new(cell, vec![provider], Arc::new(validator), MonitorConfig::default());
    bus.plug(&name).expect("plug");
    while let Some(ev) = source.next_event(Duration::ZERO).expect("event") {
        driver.handle(Duration::from_secs(1), Input::Hotplug(ev));
    }
    let snapshot = Arc::new(reader.snapshot().as_ref().clone());
    (snapshot, bus)
}

/// Runs `spec` through the driver with `vendor`'s validator; asserts it is judged invalid
/// for `reason` and returns the snapshot.
#[track_caller]
fn judged_invalid(vendor: &VendorSigningKey, spec: SimKeySpec, reason: InvalidReason) -> Arc<Snapshot> {
    let (snapshot, _) = through_driver(spec, VendorValidator::new(vendor.public_key()), |_| {});
    assert_eq!(key_status(&snapshot), &KeyStatus::Invalid { reason });
    snapshot
}

fn key_status(s: &Snapshot) -> &KeyStatus {
    &s.keys.first().expect("one key attached").status
}

#[test]
fn a_provisioned_key_is_verified_and_put_in_force() {
    let vendor = VendorSigningKey::generate();
    let spec = provision_sim_key(SimKeySpec::generate("alpha", 12345678), &vendor);
    let (snapshot, bus) = through_driver(spec, VendorValidator::new(vendor.public_key()), |_| {});
    assert_eq!(
        key_status(&snapshot),
        &KeyStatus::Valid {
            proof: ProofStatus::Verified
        }
    );
    assert_eq!(snapshot.hardware_id, HardwareId::new("12345678"));
    assert!(snapshot.in_force.is_some());
    match validate_on_bus(&bus, "alpha", &VendorValidator::new(vendor.public_key())) {
        Validation::Valid {
            serial,
            firmware,
            proof,
        } => {
            assert_eq!(serial, Serial::from(12345678));
            assert_eq!(firmware, Some(Firmware::new(5, 4, 3)));
            assert_eq!(proof, ProofStatus::Verified);
        }
        other => panic!("expected valid, got {other:?}"),
    }
}

#[test]
fn a_key_provisioned_by_another_vendor_is_wrong_vendor() {
    let vendor = VendorSigningKey::generate();
    let demo_vendor = VendorSigningKey::generate();
    let spec = provision_sim_key(SimKeySpec::generate("alpha", 1), &demo_vendor);
    let snapshot = judged_invalid(&vendor, spec, InvalidReason::WrongVendor);
    assert!(snapshot.in_force.is_none());
    assert_eq!(snapshot.hardware_id, HardwareId::new("machine-1"));
}

#[test]
fn a_certificate_for_another_serial_is_serial_mismatch() {
    let vendor = VendorSigningKey::generate();
    let spec = SimKeySpec::generate("alpha", 2222);
    let public = p256::PublicKey::from(spec.verifying_key());
    let cert = issue_key_certificate(&vendor, &Serial::from(1111), &public, DAY).unwrap();
    let snapshot = judged_invalid(&vendor, spec.with_certificate(cert), InvalidReason::SerialMismatch);
    assert_eq!(snapshot.keys[0].serial, Some(Serial::from(2222)));
}

#[test]
fn a_key_that_signs_garbage_is_bad_signature() {
    let vendor = VendorSigningKey::generate();
    let spec = provision_sim_key(SimKeySpec::generate("alpha", 3), &vendor);
    let (snapshot, _) = through_driver(spec, VendorValidator::new(vendor.public_key()), |bus| {
        bus.corrupt("alpha", true).unwrap()
    });
    assert_eq!(
        key_status(&snapshot),
        &KeyStatus::Invalid {
            reason: InvalidReason::BadSignature
        }
    );
}

#[test]
fn a_clone_reporting_the_same_serial_with_a_copied_certificate_is_bad_signature() {
    let vendor = VendorSigningKey::generate();
    let genuine = provision_sim_key(SimKeySpec::generate("genuine", 4242), &vendor);
    let copied_cert = genuine.certificate.clone().expect("provisioned");
    // Same serial, same certificate, but its own key pair: it cannot answer the challenge.
    let clone = SimKeySpec::generate("clone", 4242).with_certificate(copied_cert);
    judged_invalid(&vendor, clone, InvalidReason::BadSignature);
    // A clone without any certificate is just unprovisioned.
    judged_invalid(
        &vendor,
        SimKeySpec::generate("clone", 4242),
        InvalidReason::Unprovisioned,
    );
}

#[test]
fn an_expired_certificate_is_expired() {
    let vendor = VendorSigningKey::generate();
    let spec = SimKeySpec::generate("alpha", 5);
    let public = p256::PublicKey::from(spec.verifying_key());
    let now = SystemTime::now();
    let cert = issue_key_certificate_for_period(&vendor, &spec.serial, &public, now - 30 * DAY, now - DAY).unwrap();
    judged_invalid(&vendor, spec.with_certificate(cert), InvalidReason::ExpiredCertificate);

    // A valid certificate judged with a clock past its end, and before its start.
    let bus = SimBus::new();
    bus.insert(provision_sim_key(SimKeySpec::generate("beta", 6), &vendor));
    bus.plug("beta").unwrap();
    let later = VendorValidator::new(vendor.public_key()).with_clock(Arc::new(move || now + 20 * 365 * DAY));
    assert_eq!(
        reason(&validate_on_bus(&bus, "beta", &later)),
        Some(InvalidReason::ExpiredCertificate)
    );
    let earlier = VendorValidator::new(vendor.public_key()).with_clock(Arc::new(move || now - 365 * DAY));
    assert_eq!(
        reason(&validate_on_bus(&bus, "beta", &earlier)),
        Some(InvalidReason::ExpiredCertificate)
    );
}

#[test]
fn a_busy_key_fails_with_busy_never_invalid_or_absent() {
    let vendor = VendorSigningKey::generate();
    let spec = provision_sim_key(SimKeySpec::generate("alpha", 7), &vendor);
    let holder = Holder {
        pid: 4321,
        command: "scdaemon".into(),
    };
    let (snapshot, bus) = through_driver(spec, VendorValidator::new(vendor.public_key()), |bus| {
        bus.make_busy("alpha", Some(holder.clone())).unwrap()
    });
    match key_status(&snapshot) {
        KeyStatus::Error {
            kind, code, holders, ..
        } => {
            assert_eq!(*kind, ErrorKind::Busy);
            assert_eq!(*code, "KEY_BUSY");
            assert_eq!(holders, &vec![holder]);
        }
        other => panic!("expected a busy error, got {other:?}"),
    }
    bus.make_busy("alpha", None).unwrap();
    assert!(matches!(
        validate_on_bus(&bus, "alpha", &VendorValidator::new(vendor.public_key())),
        Validation::Valid { .. }
    ));
}

/// A key whose every answer is scripted, to fail at each step of validation.
#[derive(Debug)]
struct ScriptedKey {
    info: KeyInfo,
    serial: Result<Serial, ErrorKind>,
    certificate: Result<Vec<u8>, ErrorKind>,
    proof: Result<Proof, ErrorKind>,
}

impl ScriptedKey {
    fn new(capability: ProofCapability) -> Self {
        Self {
            info: KeyInfo {
                id: KeyId::new(BackendKind::Hid, "/dev/hidraw9"),
                backend: BackendKind::Hid,
                path: "/dev/hidraw9".into(),
                serial: None,
                model: "scripted".into(),
                firmware: None,
                capability,
            },
            serial: Ok(Serial::from(99)),
            certificate: Err(ErrorKind::NotPresent),
            proof: Err(ErrorKind::Unsupported),
        }
    }
}

fn err(kind: ErrorKind) -> Error {
    Error::new(kind, "scripted")
}

impl HardwareKey for ScriptedKey {
    fn info(&self) -> &KeyInfo {
        &self.info
    }
    fn read_serial(&mut self) -> keyfloat_hal::Result<Serial> {
        self.serial.clone().map_err(err)
    }
    fn read_firmware(&mut self) -> keyfloat_hal::Result<Firmware> {
        Err(err(ErrorKind::Unsupported))
    }
    fn prover(&mut self) -> Option<&mut dyn Prover> {
        match self.info.capability {
            ProofCapability::Signature => Some(self),
            ProofCapability::SerialOnly => None,
        }
    }
}

impl Prover for ScriptedKey {
    fn read_certificate(&mut self) -> keyfloat_hal::Result<Vec<u8>> {
        self.certificate.clone().map_err(err)
    }
    fn sign_challenge(&mut self, _challenge: &[u8]) -> keyfloat_hal::Result<Proof> {
        self.proof.clone().map_err(err)
    }
}

fn provisioned_scripted(vendor: &VendorSigningKey) -> ScriptedKey {
    let sk = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let public = p256::PublicKey::from(*sk.verifying_key());
    let mut key = ScriptedKey::new(ProofCapability::Signature);
    key.certificate = Ok(issue_key_certificate(vendor, &Serial::from(99), &public, DAY).unwrap());
    key
}

#[test]
fn io_errors_keep_their_kind_at_every_step() {
    let vendor = VendorSigningKey::generate();
    let validator = VendorValidator::new(vendor.public_key());
    for kind in [
        ErrorKind::Busy,
        ErrorKind::Disconnected,
        ErrorKind::Timeout,
        ErrorKind::Protocol,
    ] {
        let mut key = provisioned_scripted(&vendor);
        key.serial = Err(kind);
        assert!(matches!(validator.validate(&mut key), Validation::Failed(e) if e.kind() == kind));

        let mut key = provisioned_scripted(&vendor);
        key.certificate = Err(kind);
        assert!(matches!(validator.validate(&mut key), Validation::Failed(e) if e.kind() == kind));

        let mut key = provisioned_scripted(&vendor);
        key.proof = Err(kind);
        assert!(matches!(validator.validate(&mut key), Validation::Failed(e) if e.kind() == kind));
    }
}

#[test]
fn serial_only_keys_need_explicit_permission_and_allowed_serials_apply() {
    let vendor = VendorSigningKey::generate();
    let strict = VendorValidator::new(vendor.public_key());
    let mut key = ScriptedKey::new(ProofCapability::SerialOnly);
    assert_eq!(
        reason(&strict.validate(&mut key)),
        Some(InvalidReason::SerialOnlyNotAllowed)
    );
    let lenient = VendorValidator::new(vendor.public_key()).allow_serial_only(true);
    assert!(matches!(
        lenient.validate(&mut key),
        Validation::Valid {
            proof: ProofStatus::SerialOnly,
            ..
        }
    ));
    let only_other = lenient.clone().allowed_serials(Some(vec![Serial::from(1)]));
    assert_eq!(
        reason(&only_other.validate(&mut key)),
        Some(InvalidReason::SerialNotAllowed)
    );

    // Verified keys are subject to the allowed list too.
    let bus = SimBus::new();
    bus.insert(provision_sim_key(SimKeySpec::generate("alpha", 8), &vendor));
    bus.plug("alpha").unwrap();
    let only_other = strict.clone().allowed_serials(Some(vec![Serial::from(1)]));
    assert_eq!(
        reason(&validate_on_bus(&bus, "alpha", &only_other)),
        Some(InvalidReason::SerialNotAllowed)
    );
    let only_this = strict.allowed_serials(Some(vec![Serial::from(8)]));
    assert!(matches!(
        validate_on_bus(&bus, "alpha", &only_this),
        Validation::Valid { .. }
    ));
}

#[test]
fn a_scheme_the_certificate_cannot_back_is_bad_signature() {
    let vendor = VendorSigningKey::generate();
    let mut key = provisioned_scripted(&vendor);
    key.proof = Ok(Proof {
        scheme: SignatureScheme::RsaPkcs1Sha256,
        signed_prefix: Vec::new(),
        signature: vec![0; 256],
    });
    let validator = VendorValidator::new(vendor.public_key());
    assert_eq!(reason(&validator.validate(&mut key)), Some(InvalidReason::BadSignature));
}

fn vendor_for_props() -> &'static VendorSigningKey {
    static V: std::sync::OnceLock<VendorSigningKey> = std::sync::OnceLock::new();
    V.get_or_init(VendorSigningKey::generate)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn arbitrary_certificates_are_malformed_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let vendor = vendor_for_props();
        let mut key = ScriptedKey::new(ProofCapability::Signature);
        key.certificate = Ok(bytes);
        let v = VendorValidator::new(vendor.public_key()).validate(&mut key);
        prop_assert_eq!(reason(&v), Some(InvalidReason::Malformed));
    }

    #[test]
    fn arbitrary_proofs_are_rejected_never_a_panic(
        signature in proptest::collection::vec(any::<u8>(), 0..140),
        prefix in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let vendor = vendor_for_props();
        let mut key = provisioned_scripted(vendor);
        key.proof = Ok(Proof { scheme: SignatureScheme::EcdsaP256Sha256, signed_prefix: prefix, signature });
        let v = VendorValidator::new(vendor.public_key()).validate(&mut key);
        let r = reason(&v);
        prop_assert!(matches!(r, Some(InvalidReason::BadSignature | InvalidReason::Malformed)), "{:?}", v);
    }

    #[test]
    fn any_changed_byte_of_a_certificate_is_rejected(pos in 0usize..2048, delta in 1u8..=255) {
        let vendor = vendor_for_props();
        let mut key = provisioned_scripted(vendor);
        let mut cert = key.certificate.clone().unwrap();
        let pos = pos % cert.len();
        cert[pos] = cert[pos].wrapping_add(delta);
        key.certificate = Ok(cert);
        // The scripted key cannot answer a challenge, so a certificate that still passed every
        // check would surface as a Failed proof; require a rejection before that.
        let v = VendorValidator::new(vendor.public_key()).validate(&mut key);
        prop_assert!(matches!(v, Validation::Invalid { .. }), "{:?}", v);
    }

    #[test]
    fn key_parsers_never_panic(text in "(-----BEGIN [A-Z ]{0,20}-----\n)?[A-Za-z0-9+/=\n]{0,300}(-----END [A-Z ]{0,20}-----\n?)?") {
        let codes = ["pem_invalid", "wrong_key_type", "key_invalid", "encrypted_key"];
        if let Err(e) = VendorSigningKey::from_pem(&text) { prop_assert!(codes.contains(&e.code()), "{}", e); }
        if let Err(e) = VendorPublicKey::from_pem(&text) { prop_assert!(codes.contains(&e.code()), "{}", e); }
        let _ = KeyCertificate::from_pem_or_der(text.as_bytes());
    }

    #[test]
    fn truncated_pem_is_an_error_with_a_code(cut in 0usize..400) {
        let vendor = vendor_for_props();
        for pem in [vendor.to_pem(), vendor.public_key().to_pem()] {
            let cut = cut % pem.len().saturating_sub(1);
            let text = &pem[..cut];
            let e1 = VendorSigningKey::from_pem(text).err();
            let e2 = VendorPublicKey::from_pem(text).err();
            prop_assert!(e1.is_some() && e2.is_some());
            for e in e1.into_iter().chain(e2) {
                prop_assert!(matches!(e.code(), "pem_invalid" | "key_invalid"), "{}", e);
            }
        }
    }
}

#[test]
fn huge_inputs_are_too_large() {
    let huge = "A".repeat(1024 * 1024);
    assert_eq!(VendorSigningKey::from_pem(&huge).unwrap_err().code(), "too_large");
    assert_eq!(VendorPublicKey::from_pem(&huge).unwrap_err().code(), "too_large");
    assert_eq!(
        KeyCertificate::from_pem_or_der(huge.as_bytes()).unwrap_err().code(),
        "too_large"
    );
}

/// A key with an RSA proof key (a PIV RSA-2048 slot): signs challenges PKCS#1 v1.5/SHA-256.
#[derive(Debug)]
struct RsaKey {
    info: KeyInfo,
    key: rsa::RsaPrivateKey,
    certificate: Vec<u8>,
    scheme: SignatureScheme,
}

impl HardwareKey for RsaKey {
    fn info(&self) -> &KeyInfo {
        &self.info
    }
    fn read_serial(&mut self) -> keyfloat_hal::Result<Serial> {
        Ok(Serial::from(99))
    }
    fn read_firmware(&mut self) -> keyfloat_hal::Result<Firmware> {
        Ok(Firmware::new(5, 7, 1))
    }
    fn prover(&mut self) -> Option<&mut dyn Prover> {
        Some(self)
    }
}

impl Prover for RsaKey {
    fn read_certificate(&mut self) -> keyfloat_hal::Result<Vec<u8>> {
        Ok(self.certificate.clone())
    }
    fn sign_challenge(&mut self, challenge: &[u8]) -> keyfloat_hal::Result<Proof> {
        use rsa::signature::{SignatureEncoding, Signer};
        let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(self.key.clone());
        Ok(Proof {
            scheme: self.scheme,
            signed_prefix: Vec::new(),
            signature: signer.sign(challenge).to_vec(),
        })
    }
}

#[test]
fn rsa_proof_keys_are_verified_and_weak_ones_refused() {
    use rsa::pkcs8::EncodePublicKey;
    let vendor = VendorSigningKey::generate();
    let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
    let spki = key.to_public_key().to_public_key_der().unwrap();
    let now = SystemTime::now();
    let cert = issue_key_certificate_spki(&vendor, &Serial::from(99), spki.as_bytes(), now - DAY, now + DAY).unwrap();
    let mut dongle = RsaKey {
        info: ScriptedKey::new(ProofCapability::Signature).info,
        key,
        certificate: cert,
        scheme: SignatureScheme::RsaPkcs1Sha256,
    };
    let validator = VendorValidator::new(vendor.public_key());
    assert!(matches!(
        validator.validate(&mut dongle),
        Validation::Valid {
            proof: ProofStatus::Verified,
            ..
        }
    ));
    // The right signature labelled with the wrong scheme does not pass.
    dongle.scheme = SignatureScheme::EcdsaP256Sha256;
    assert_eq!(
        reason(&validator.validate(&mut dongle)),
        Some(InvalidReason::BadSignature)
    );

    // The PEM form yubico-piv-tool prints is accepted; RSA-1024 is refused.
    let pem = dongle
        .key
        .to_public_key()
        .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
        .unwrap();
    assert_eq!(key_spki_from_pem(&pem).unwrap(), spki.as_bytes());
    let weak = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 1024).unwrap();
    let weak_pem = weak
        .to_public_key()
        .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
        .unwrap();
    let e = key_spki_from_pem(&weak_pem).unwrap_err();
    assert_eq!(e.code(), "wrong_key_type");
    assert!(e.to_string().contains("RSA-1024"), "{e}");
    let weak_spki = weak.to_public_key().to_public_key_der().unwrap();
    let e = issue_key_certificate_spki(&vendor, &Serial::from(1), weak_spki.as_bytes(), now, now + DAY).unwrap_err();
    assert_eq!(e.code(), "wrong_key_type");
}
