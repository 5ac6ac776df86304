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

    /// A key with `attestation`, certified by the vendor.
    fn provisioned(&self, name: &str, serial: u32, attestation: SimAttestation) -> SimKeySpec {
        provision_sim_key(
            SimKeySpec::generate(name, serial).with_attestation(Some(attestation)),
            &self.vendor,
        )
    }

    fn validator(&self, roots: Option<AttestationRoots>) -> VendorValidator {
        VendorValidator::new(self.vendor.public_key()).require_attestation(roots)
    }

    fn required(&self) -> VendorValidator {
        self.validator(Some(self.ca.roots().unwrap()))
    }

    /// Inserts and plugs `spec`; answers its name.
    fn plug(&self, spec: SimKeySpec) -> String {
        let name = spec.name.clone();
        self.bus.insert(spec);
        self.bus.plug(&name).unwrap();
        name
    }

    /// A new handle on the plugged key `name`.
    fn open(&self, name: &str) -> Box<dyn HardwareKey> {
        self.bus.provider().open(&KeyId::new(BackendKind::Sim, name)).unwrap()
    }

    fn validate(&self, spec: SimKeySpec, validator: &VendorValidator) -> Validation {
        let name = self.plug(spec);
        let mut key = self.open(&name);
        let v = validator.validate(key.as_mut());
        self.bus.unplug(&name).unwrap();
        v
    }

    /// Refused as not attested when attestation is required.
    #[track_caller]
    fn assert_not_attested(&self, spec: SimKeySpec) {
        assert_eq!(
            reason(&self.validate(spec, &self.required())),
            Some(InvalidReason::NotAttested)
        );
    }

    /// Verified (by its vendor certificate alone) when attestation is not required.
    #[track_caller]
    fn assert_verified_when_not_required(&self, spec: SimKeySpec) {
        assert_eq!(
            proof(&self.validate(spec, &self.validator(None))),
            Some(ProofStatus::Verified)
        );
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
    w.assert_verified_when_not_required(spec);
}

#[test]
fn an_imported_key_is_not_attested_but_accepted_without_the_requirement() {
    let w = World::new();
    let spec = provision_sim_key(SimKeySpec::generate("imported", 1002), &w.vendor);
    w.assert_not_attested(spec.clone());
    w.assert_verified_when_not_required(spec);
}

#[test]
fn an_attestation_for_another_serial_is_refused() {
    let w = World::new();
    let device = w.ca.issue_device(1003).unwrap().attesting_serial(9999);
    w.assert_not_attested(w.provisioned("liar", 1003, SimAttestation::Device(device)));
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
    w.assert_not_attested(w.provisioned("clone", 1006, SimAttestation::Replay(captured.clone())));
    // A clone claiming the genuine serial, with a vendor certificate for its own key (a
    // sloppy vendor): the attested key is not the certified one.
    w.assert_not_attested(w.provisioned("clone2", 1005, SimAttestation::Replay(captured)));
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
    w.assert_not_attested(spec.clone());
    w.assert_verified_when_not_required(spec);
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
        w.assert_not_attested(spec);
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
    w.plug(provision_sim_key(w.attested("k", 1009), &w.vendor));
    let open = || w.open("k");
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
    w.plug(provision_sim_key(w.attested("k", 1010), &w.vendor));
    let validator = w.required();
    let mut key = w.open("k");
    let mut certs = std::collections::BTreeSet::new();
    for _ in 0..50 {
        assert_eq!(proof(&validator.validate(key.as_mut())), Some(ProofStatus::Attested));
        certs.insert(key.prover().unwrap().attest().unwrap().certificate);
    }
    assert_eq!(certs.len(), 50, "each attestation is freshly signed");
}
