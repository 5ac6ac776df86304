//! Property test: random sequences of plug / unplug / swap / busy / I/O error / corrupt /
//! slow and hung validations / time steps drive the real monitor (sim backend → Driver →
//! cell), and after every step the cell is checked against a simple model of the bus.
//!
//! Validations are answered the way the threaded monitor's workers answer them: at once,
//! late (the answer is computed now and delivered after a delay, so it may be about a key
//! that has since been pulled or swapped), or never until the key is un-hung.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keyfloat_hal::backend::sim::{SimBus, SimKeySpec};
use keyfloat_hal::{
    Driver, Error, ErrorKind, HardwareId, HardwareIdCell, HardwareKey, Holder, HotplugSource, Input, InvalidReason,
    KeyProvider, KeyStatus, KeyValidator, MonitorConfig, ProofStatus, Serial, Validation, ValidationRequest,
};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use proptest::prelude::*;

const KEYS: [&str; 3] = ["a", "b", "c"];

/// Validates like the trust chain does, minus certificates: serial readable and a fresh
/// challenge verifies under the key's known public key.
#[derive(Debug)]
struct ChallengeValidator {
    public: BTreeMap<String, VerifyingKey>,
}

impl KeyValidator for ChallengeValidator {
    fn validate(&self, key: &mut dyn HardwareKey) -> Validation {
        let serial = match key.read_serial() {
            Ok(s) => s,
            Err(e) => return Validation::Failed(e),
        };
        let challenge = [7u8; 32];
        let Some(prover) = key.prover() else {
            return Validation::Failed(Error::new(ErrorKind::Unsupported, "a simulated key proves"));
        };
        let proof = match prover.sign_challenge(&challenge) {
            Ok(p) => p,
            Err(e) => return Validation::Failed(e),
        };
        let ok = Signature::from_der(&proof.signature)
            .ok()
            .zip(self.public.get(&key.info().path))
            .is_some_and(|(sig, vk)| vk.verify(&proof.signed_message(&challenge), &sig).is_ok());
        if ok {
            Validation::Valid {
                serial,
                firmware: None,
                proof: ProofStatus::Verified,
            }
        } else {
            Validation::Invalid {
                serial: Some(serial),
                reason: InvalidReason::BadSignature,
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Plug(usize),
    Unplug(usize),
    Swap(usize, usize),
    Busy(usize, bool),
    FailNext(usize),
    Corrupt(usize, bool),
    /// The key's validations block until un-hung (a wedged card).
    Hang(usize, bool),
    /// The key's next validation answers this many ms late.
    Slow(usize, u64),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize).prop_map(Op::Plug),
        2 => (0..3usize).prop_map(Op::Unplug),
        1 => (0..3usize, 0..3usize).prop_map(|(a, b)| Op::Swap(a, b)),
        1 => (0..3usize, any::<bool>()).prop_map(|(k, b)| Op::Busy(k, b)),
        1 => (0..3usize).prop_map(Op::FailNext),
        1 => (0..3usize, any::<bool>()).prop_map(|(k, b)| Op::Corrupt(k, b)),
        1 => (0..3usize, any::<bool>()).prop_map(|(k, b)| Op::Hang(k, b)),
        1 => (0..3usize, 0..1500u64).prop_map(|(k, ms)| Op::Slow(k, ms)),
        3 => (0..3000u64).prop_map(Op::Advance),
    ]
}

#[derive(Debug, Default, Clone)]
struct ModelKey {
    plugged: bool,
    busy: bool,
    corrupt: bool,
    /// Stayed corrupt ever since it was plugged: it must never be in force.
    corrupt_since_plug: bool,
    hung: bool,
    /// Delay of the next validation's answer.
    slow: Option<Duration>,
}

struct Rig {
    bus: SimBus,
    driver: Driver,
    source: Box<dyn HotplugSource>,
    reader: keyfloat_hal::CellReader,
    now: Duration,
    model: BTreeMap<&'static str, ModelKey>,
    /// Requests of hung keys, with when they were made.
    hung: Vec<(ValidationRequest, Duration)>,
    /// Answers on their way: (delivery time, answer).
    late: Vec<(Duration, Input)>,
}

const CONFIG: MonitorConfig = MonitorConfig {
    revalidate_every: Duration::from_millis(1000),
    retry_initial: Duration::from_millis(10),
    retry_max: Duration::from_millis(100),
    validate_timeout: Duration::from_millis(300),
    ..MonitorConfig::DEFAULT
};

impl Rig {
    fn new() -> Self {
        let bus = SimBus::new();
        let mut public = BTreeMap::new();
        for (i, name) in KEYS.iter().enumerate() {
            let spec = SimKeySpec::from_seed(name, 1000 + i as u32, 1);
            public.insert(name.to_string(), spec.verifying_key());
            bus.insert(spec);
        }
        let cell = HardwareIdCell::new(HardwareId::new("machine"));
        let reader = cell.reader();
        let provider = bus.provider();
        let source = provider.watch().unwrap();
        let driver = Driver::new(
            cell,
            vec![Arc::new(provider)],
            Arc::new(ChallengeValidator { public }),
            CONFIG,
        );
        let model = KEYS.iter().map(|k| (*k, ModelKey::default())).collect();
        Self {
            bus,
            driver,
            source,
            reader,
            now: Duration::ZERO,
            model,
            hung: Vec::new(),
            late: Vec::new(),
        }
    }

    /// Feeds one input and whatever it triggers, answering validations like the workers.
    fn feed(&mut self, input: Input) {
        let mut queue = std::collections::VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            for request in self.driver.apply(self.now, input) {
                let name = request.id.path().to_string();
                let m = self.model.get_mut(name.as_str()).unwrap();
                if m.hung {
                    self.hung.push((request, self.now));
                } else if let Some(delay) = m.slow.take() {
                    let answer = self.driver.run_validation(&request);
                    self.late.push((self.now + delay, answer));
                } else {
                    queue.push_back(self.driver.run_validation(&request));
                }
            }
        }
    }

    fn pump(&mut self) {
        while let Some(ev) = self.source.next_event(Duration::ZERO).unwrap() {
            self.feed(Input::Hotplug(ev));
        }
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.late).into_iter().partition(|(t, _)| *t <= now);
        self.late = later;
        for (_, answer) in due {
            self.feed(answer);
        }
        self.feed(Input::Tick);
    }

    fn unhang(&mut self, name: &str) {
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.hung)
            .into_iter()
            .partition(|(r, _)| r.id.path() == name);
        self.hung = rest;
        for (request, _) in mine {
            let answer = self.driver.run_validation(&request);
            self.feed(answer);
        }
    }

    fn plug(&mut self, k: &'static str) {
        let m = self.model.get_mut(k).unwrap();
        if !m.plugged {
            m.corrupt_since_plug = m.corrupt;
        }
        m.plugged = true;
        self.bus.plug(k).unwrap();
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Plug(i) => self.plug(KEYS[i]),
            Op::Unplug(i) => {
                self.model.get_mut(KEYS[i]).unwrap().plugged = false;
                self.bus.unplug(KEYS[i]).unwrap();
            }
            Op::Swap(a, b) => {
                self.model.get_mut(KEYS[a]).unwrap().plugged = false;
                self.bus.unplug(KEYS[a]).unwrap();
                self.plug(KEYS[b]);
            }
            Op::Busy(i, b) => {
                self.model.get_mut(KEYS[i]).unwrap().busy = b;
                let holder = b.then(|| Holder {
                    pid: 1,
                    command: "holder".into(),
                });
                self.bus.make_busy(KEYS[i], holder).unwrap();
            }
            Op::FailNext(i) => self.bus.fail_next(KEYS[i], ErrorKind::Io).unwrap(),
            Op::Corrupt(i, b) => {
                let m = self.model.get_mut(KEYS[i]).unwrap();
                m.corrupt = b;
                if !b {
                    m.corrupt_since_plug = false;
                }
                self.bus.corrupt(KEYS[i], b).unwrap();
            }
            Op::Hang(i, b) => {
                self.model.get_mut(KEYS[i]).unwrap().hung = b;
                if !b {
                    self.unhang(KEYS[i]);
                }
            }
            Op::Slow(i, ms) => self.model.get_mut(KEYS[i]).unwrap().slow = Some(Duration::from_millis(ms)),
            Op::Advance(ms) => {
                // In steps, so late answers and deadlines land in time order.
                let end = self.now + Duration::from_millis(ms);
                while self.now < end {
                    self.now = (self.now + Duration::from_millis(50)).min(end);
                    self.pump();
                }
            }
        }
        self.pump();
    }

    fn check(&self) {
        let snap = self.reader.snapshot();
        let check = self.reader.check();
        match &snap.in_force {
            Some(k) => {
                let name = k.info.path.as_str();
                let m = &self.model[name];
                assert!(m.plugged, "a key that is not plugged is in force: {name}");
                assert!(
                    !m.corrupt_since_plug,
                    "a key that never proved itself is in force: {name}"
                );
                assert!(matches!(k.status, KeyStatus::Valid { .. }));
                // A key whose validation is stuck past the deadline is not in force.
                let stuck = self
                    .hung
                    .iter()
                    .any(|(r, t)| r.id == k.info.id && self.now >= *t + CONFIG.validate_timeout);
                assert!(!stuck, "a key that stopped answering is still in force: {name}");
                let serial = k.serial.clone().unwrap();
                assert_eq!(snap.hardware_id.as_str(), serial.as_str());
                assert_eq!(check.valid_key(), Some(self.reader.token(&serial)));
            }
            None => {
                assert_eq!(
                    snap.hardware_id, snap.machine_id,
                    "no key in force but the ID is not the machine's"
                );
                assert_eq!(check.valid_key(), None);
            }
        }
        // Every attached key the monitor shows is plugged, and every plugged key is shown.
        let shown: Vec<&str> = snap.keys.iter().map(|k| k.info.path.as_str()).collect();
        let plugged: Vec<&str> = self.model.iter().filter(|(_, m)| m.plugged).map(|(k, _)| *k).collect();
        assert_eq!(shown, plugged);
    }

    /// Once faults are cleared and enough time passes, every plugged key is valid and one is in force.
    fn settle_and_check_liveness(&mut self) {
        for k in KEYS {
            let m = self.model.get_mut(k).unwrap();
            m.hung = false;
            m.slow = None;
            self.unhang(k);
        }
        for k in KEYS {
            self.bus.make_busy(k, None).unwrap();
            self.bus.corrupt(k, false).unwrap();
            let m = self.model.get_mut(k).unwrap();
            m.busy = false;
            m.corrupt = false;
            m.corrupt_since_plug = false;
        }
        for _ in 0..3 {
            let step = CONFIG.revalidate_every + CONFIG.retry_max;
            self.apply(&Op::Advance(u64::try_from(step.as_millis()).unwrap()));
        }
        self.check();
        let snap = self.reader.snapshot();
        let any_plugged = self.model.values().any(|m| m.plugged);
        assert_eq!(snap.in_force.is_some(), any_plugged);
        for k in &snap.keys {
            assert!(matches!(k.status, KeyStatus::Valid { .. }), "{k:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn cell_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let mut rig = Rig::new();
        for op in &ops {
            rig.apply(op);
            rig.check();
        }
        rig.settle_and_check_liveness();
    }
}

#[test]
fn unplug_reverts_to_machine_id_and_replug_restores() {
    let mut rig = Rig::new();
    rig.apply(&Op::Plug(0));
    assert_eq!(rig.reader.hardware_id().as_str(), "1000");
    rig.apply(&Op::Unplug(0));
    assert_eq!(rig.reader.hardware_id().as_str(), "machine");
    rig.apply(&Op::Plug(0));
    assert_eq!(rig.reader.hardware_id().as_str(), "1000");
}

#[test]
fn busy_key_is_reported_busy_not_absent_and_recovers() {
    let mut rig = Rig::new();
    rig.apply(&Op::Busy(0, true));
    rig.apply(&Op::Plug(0));
    let snap = rig.reader.snapshot();
    assert!(snap.in_force.is_none());
    match &snap.keys[0].status {
        KeyStatus::Error { kind, holders, .. } => {
            assert_eq!(*kind, ErrorKind::Busy);
            assert_eq!(holders[0].command, "holder");
        }
        other => panic!("expected busy, got {other:?}"),
    }
    assert_eq!(snap.state(), keyfloat_hal::KeyState::Error);
    rig.apply(&Op::Busy(0, false));
    rig.apply(&Op::Advance(200));
    assert_eq!(rig.reader.hardware_id().as_str(), "1000");
}

#[test]
fn io_error_is_retried_and_corrupt_key_is_invalid() {
    let mut rig = Rig::new();
    rig.apply(&Op::FailNext(0));
    rig.apply(&Op::Plug(0));
    assert!(rig.reader.snapshot().in_force.is_none());
    rig.apply(&Op::Advance(50));
    assert_eq!(rig.reader.hardware_id().as_str(), "1000");

    rig.apply(&Op::Corrupt(1, true));
    rig.apply(&Op::Plug(1));
    let snap = rig.reader.snapshot();
    let b = snap.keys.iter().find(|k| k.info.path == "b").unwrap();
    assert_eq!(
        b.status,
        KeyStatus::Invalid {
            reason: InvalidReason::BadSignature
        }
    );
}

#[test]
fn the_key_in_force_stays_in_force_when_another_valid_key_arrives() {
    let mut rig = Rig::new();
    rig.apply(&Op::Plug(1));
    rig.apply(&Op::Plug(0));
    // "a" sorts first, but "b" was in force first and stays.
    assert_eq!(rig.reader.hardware_id().as_str(), "1001");
    rig.apply(&Op::Unplug(1));
    assert_eq!(rig.reader.hardware_id().as_str(), "1000");
    let _ = Serial::new("x");
}

/// The stall case of the issue: key "a" in force, key "b" hangs while being plugged, "a"
/// is pulled: the pull is published by the same input, whatever "b" is doing.
#[test]
fn a_hung_key_does_not_hide_the_pull_of_the_key_in_force() {
    let mut rig = Rig::new();
    rig.apply(&Op::Plug(0));
    assert_eq!(rig.reader.hardware_id().as_str(), "1000");
    rig.apply(&Op::Hang(1, true));
    rig.apply(&Op::Plug(1));
    assert_eq!(rig.hung.len(), 1);
    rig.apply(&Op::Unplug(0));
    assert_eq!(rig.reader.hardware_id().as_str(), "machine");
    // "b" is shown as not answering once past the deadline, and asked only once.
    rig.apply(&Op::Advance(1000));
    let snap = rig.reader.snapshot();
    assert!(matches!(
        &snap.keys[0].status,
        KeyStatus::Error {
            kind: ErrorKind::Timeout,
            ..
        }
    ));
    assert_eq!(rig.hung.len(), 1, "a hung attempt is never duplicated");
    // Answering at last puts it in force.
    rig.apply(&Op::Hang(1, false));
    assert_eq!(rig.reader.hardware_id().as_str(), "1001");
}

/// A late "valid" answer about a key that was swapped for a corrupt one meanwhile is dropped.
#[test]
fn a_late_answer_about_a_replaced_key_is_discarded() {
    let mut rig = Rig::new();
    rig.apply(&Op::Slow(0, 500));
    rig.apply(&Op::Plug(0));
    rig.apply(&Op::Unplug(0));
    rig.apply(&Op::Corrupt(0, true));
    rig.apply(&Op::Plug(0));
    rig.apply(&Op::Advance(1000));
    rig.check();
    assert!(rig.reader.snapshot().in_force.is_none());
}
