//! `require_attestation` in the trust validator, attacked: simulated keys that attest, that
//! cannot, that lie about their serial, that replay, that answer garbage, or that are busy
//! while attesting.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use keyfloat_hal::backend::sim::provision_sim_key;
use keyfloat_hal::backend::sim::{SimAttestation, SimBus, SimKeySpec};
use keyfloat_hal::trust::attestation::sim_ca::SimAttestationCa;
use keyfloat_hal::trust::{issue_key_certificate, AttestationRoots, VendorSigningKey, VendorValidator};
use keyfloat_hal::{
    BackendKind, Error, ErrorKind, Firmware, HardwareKey, InvalidReason, KeyAttestation, KeyId, KeyInfo, KeyProvider,
    KeyValidator, Proof, ProofStatus, Prover, Serial, Validation,
};
use p256::pkcs8::EncodePublicKey;

struct World {
    vendor: VendorSigningKey,
    ca: SimAttestationCa,
    bus: SimBus,
}

impl World {
    fn new() -> Self {
        Self {
            vendor: VendorSigningKey::generate(),
            ca: SimAttestationCa::generate().unwrap(),
            bus: SimBus::new(),
        }
    }

    /// A key generated on a device whose F9 key the CA certified.
    fn attested(&self, name: &str, serial: u32) -> SimKeySpec {
        let device = self.ca.issue_device(serial).unwrap();
        SimKeySpec::generate(name, serial).with_attestation(Some(SimAttestation::Device(device)))
    }

    fn validator(&self, roots: Option<AttestationRoots>) -> VendorValidator {
        VendorValidator::new(self.vendor.public_key()).require_attestation(roots)
    }

    fn required(&self) -> VendorValidator {
        self.validator(Some(self.ca.roots().unwrap()))
    }

    fn validate(&self, spec: SimKeySpec, validator: &VendorValidator) -> Validation {
        let name = spec.name.clone();
        self.bus.insert(spec);
        self.bus.plug(&name).unwrap();
        let provider = self.bus.provider();
        let mut key = provider.open(&KeyId::new(BackendKind::Sim, &name)).unwrap();
        let v = validator.validate(key.as_mut());
        self.bus.unplug(&name).unwrap();
        v
    }
}

fn proof(v: &Validation) -> Option<ProofStatus> {
    match v {
        Validation::Valid { proof, .. } => Some(*proof),
        _ => None,
    }
}

fn reason(v: &Validation) -> Option<InvalidReason> {
    match v {
        Validation::Invalid { reason, .. } => Some(*reason),
        _ => None,
    }
}

#[test]
fn an_attested_key_is_attested_only_when_required() {
    let w = World::new();
    let spec = provision_sim_key(w.attested("a", 1001), &w.vendor);
    assert_eq!(
        proof(&w.validate(spec.clone(), &w.required())),
        Some(ProofStatus::Attested)
    );
    assert_eq!(
        proof(&w.validate(spec, &w.validator(None))),
        Some(ProofStatus::Verified)
    );
}

#[test]
fn an_imported_key_is_not_attested_but_accepted_without_the_requirement() {
    let w = World::new();
    let spec = provision_sim_key(SimKeySpec::generate("imported", 1002), &w.vendor);
    assert_eq!(
        reason(&w.validate(spec.clone(), &w.required())),
        Some(InvalidReason::NotAttested)
    );
    assert_eq!(
        proof(&w.validate(spec, &w.validator(None))),
        Some(ProofStatus::Verified)
    );
}

#[test]
fn an_attestation_for_another_serial_is_refused() {
    let w = World::new();
    let device = w.ca.issue_device(1003).unwrap().attesting_serial(9999);
    let spec = SimKeySpec::generate("liar", 1003).with_attestation(Some(SimAttestation::Device(device)));
    let spec = provision_sim_key(spec, &w.vendor);
    assert_eq!(
        reason(&w.validate(spec, &w.required())),
        Some(InvalidReason::NotAttested)
    );
}

#[test]
fn an_attestation_from_an_unknown_root_is_refused() {
    let w = World::new();
    let spec = provision_sim_key(w.attested("a", 1004), &w.vendor);
    let other = SimAttestationCa::generate().unwrap().roots().unwrap();
    assert_eq!(
        reason(&w.validate(spec, &w.validator(Some(other)))),
        Some(InvalidReason::NotAttested)
    );
}

#[test]
fn a_replayed_attestation_is_refused_whichever_serial_the_clone_claims() {
    let w = World::new();
    let genuine = w.attested("genuine", 1005);
    let captured = genuine.attestation().unwrap();
    // A clone with its own software key and its own serial, replaying the capture.
    let clone = SimKeySpec::generate("clone", 1006).with_attestation(Some(SimAttestation::Replay(captured.clone())));
    let clone = provision_sim_key(clone, &w.vendor);
    assert_eq!(
        reason(&w.validate(clone, &w.required())),
        Some(InvalidReason::NotAttested)
    );
    // A clone claiming the genuine serial, with a vendor certificate for its own key (a
    // sloppy vendor): the attested key is not the certified one.
    let clone = SimKeySpec::generate("clone2", 1005).with_attestation(Some(SimAttestation::Replay(captured)));
    let clone = provision_sim_key(clone, &w.vendor);
    assert_eq!(
        reason(&w.validate(clone, &w.required())),
        Some(InvalidReason::NotAttested)
    );
}

#[test]
fn a_certificate_issued_without_attestation_is_refused_even_if_the_key_attests() {
    let w = World::new();
    let spec = w.attested("old", 1007);
    let public = p256::PublicKey::from(spec.verifying_key());
    let der = issue_key_certificate(
        &w.vendor,
        &Serial::from(1007),
        &public,
        std::time::Duration::from_secs(86400),
    )
    .unwrap();
    let spec = spec.with_certificate(der);
    assert_eq!(
        reason(&w.validate(spec.clone(), &w.required())),
        Some(InvalidReason::NotAttested)
    );
    assert_eq!(
        proof(&w.validate(spec, &w.validator(None))),
        Some(ProofStatus::Verified)
    );
}

#[test]
fn a_slot_that_needs_a_pin_or_touch_is_refused() {
    let w = World::new();
    let base = SimKeySpec::generate("pin", 1008);
    let device = w.ca.issue_device(1008).unwrap();
    let spki = base.verifying_key().to_public_key_der().unwrap();
    for (pin, touch) in [(3u8, 1u8), (1, 2)] {
        let certificate = device
            .attest(0x9E, spki.as_bytes(), Firmware::new(5, 4, 3), pin, touch)
            .unwrap();
        let canned = KeyAttestation {
            certificate,
            intermediates: vec![device.certificate().to_vec()],
        };
        let spec = provision_sim_key(
            base.clone().with_attestation(Some(SimAttestation::Replay(canned))),
            &w.vendor,
        );
        assert_eq!(
            reason(&w.validate(spec, &w.required())),
            Some(InvalidReason::NotAttested)
        );
    }
}

/// A key wrapper whose `attest` answers what the test says.
#[derive(Debug)]
struct Attesting {
    inner: Box<dyn HardwareKey>,
    answer: fn() -> keyfloat_hal::Result<KeyAttestation>,
}

impl HardwareKey for Attesting {
    fn info(&self) -> &KeyInfo {
        self.inner.info()
    }
    fn read_serial(&mut self) -> keyfloat_hal::Result<Serial> {
        self.inner.read_serial()
    }
    fn read_firmware(&mut self) -> keyfloat_hal::Result<Firmware> {
        self.inner.read_firmware()
    }
    fn prover(&mut self) -> Option<&mut dyn Prover> {
        Some(self)
    }
}

impl Prover for Attesting {
    fn read_certificate(&mut self) -> keyfloat_hal::Result<Vec<u8>> {
        self.inner.prover().expect("a simulated key proves").read_certificate()
    }
    fn sign_challenge(&mut self, challenge: &[u8]) -> keyfloat_hal::Result<Proof> {
        self.inner
            .prover()
            .expect("a simulated key proves")
            .sign_challenge(challenge)
    }
    fn attest(&mut self) -> keyfloat_hal::Result<KeyAttestation> {
        (self.answer)()
    }
}

#[test]
fn busy_while_attesting_is_retried_and_garbage_is_not_attested() {
    let w = World::new();
    let spec = provision_sim_key(w.attested("k", 1009), &w.vendor);
    w.bus.insert(spec);
    w.bus.plug("k").unwrap();
    let open = || w.bus.provider().open(&KeyId::new(BackendKind::Sim, "k")).unwrap();
    let validator = w.required();

    let mut busy = Attesting {
        inner: open(),
        answer: || Err(Error::new(ErrorKind::Busy, "held by another client")),
    };
    match validator.validate(&mut busy) {
        Validation::Failed(e) => assert_eq!(e.kind(), ErrorKind::Busy),
        other => panic!("busy must be retried, got {other:?}"),
    }

    let answers: [fn() -> keyfloat_hal::Result<KeyAttestation>; 4] = [
        || {
            Ok(KeyAttestation {
                certificate: Vec::new(),
                intermediates: Vec::new(),
            })
        },
        || {
            Ok(KeyAttestation {
                certificate: vec![0x30; 5000],
                intermediates: vec![vec![0xFF; 10]; 3],
            })
        },
        || {
            Ok(KeyAttestation {
                certificate: vec![0x30, 0x80],
                intermediates: vec![vec![0x30, 0x00]; 20],
            })
        },
        || Err(Error::new(ErrorKind::Protocol, "unexpected status word (SW 6F00)")),
    ];
    for answer in answers {
        let mut garbage = Attesting { inner: open(), answer };
        assert_eq!(
            reason(&validator.validate(&mut garbage)),
            Some(InvalidReason::NotAttested)
        );
    }
}

#[test]
fn every_revalidation_asks_for_a_fresh_attestation() {
    // 50 validations of one key: every one attests (the sim signs a new certificate each
    // time), and all pass; none reuses an earlier answer.
    let w = World::new();
    let spec = provision_sim_key(w.attested("k", 1010), &w.vendor);
    w.bus.insert(spec);
    w.bus.plug("k").unwrap();
    let validator = w.required();
    let mut key = w.bus.provider().open(&KeyId::new(BackendKind::Sim, "k")).unwrap();
    let mut certs = std::collections::BTreeSet::new();
    for _ in 0..50 {
        assert_eq!(proof(&validator.validate(key.as_mut())), Some(ProofStatus::Attested));
        certs.insert(key.prover().unwrap().attest().unwrap().certificate);
    }
    assert_eq!(certs.len(), 50, "each attestation is freshly signed");
}
