//! The simulated dongle: provisioned virtual keys with a real P-256 key pair, driven by
//! physical verbs (`plug`, `unplug`, `swap`) and fault verbs (`make_busy`, `fail_next`,
//! `corrupt`). It goes through exactly the same [`KeyProvider`] → monitor → cell path as the
//! hardware backends; it is always compiled (no C library) and is what CI and the demo use.
//!
//! ```
//! use keyfloat_hal::backend::sim::{SimBus, SimKeySpec};
//! use keyfloat_hal::KeyProvider;
//!
//! let bus = SimBus::new();
//! bus.insert(SimKeySpec::generate("alpha", 12345678));
//! bus.plug("alpha").unwrap();
//! assert_eq!(bus.provider().list().unwrap().len(), 1);
//! ```
//!
//! Provisioned by a vendor key ([`provision_sim_key`]), such a key passes the vendor trust
//! chain like a real one:
//! ```
//! use keyfloat_hal::backend::sim::{provision_sim_key, SimBus, SimKeySpec};
//! use keyfloat_hal::trust::{VendorSigningKey, VendorValidator};
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

use std::collections::BTreeMap;
use std::fmt;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Holder, Result};
use crate::key::{
    BackendKind, Firmware, HardwareKey, HotplugEvent, HotplugSource, KeyAttestation, KeyId, KeyInfo, KeyProvider,
    Proof, ProofCapability, Prover, Serial, SignatureScheme,
};
use crate::trust::attestation::sim_ca::DeviceAttester;
use crate::trust::certificate::{issue_key_certificate_attested, CLOCK_SKEW};
use crate::trust::{TrustError, VendorSigningKey};
use p256::pkcs8::EncodePublicKey;

/// Everything a virtual key is made of.
#[derive(Clone)]
pub struct SimKeySpec {
    /// Name used by the verbs (and in the key id `sim:<name>`).
    pub name: String,
    /// Serial the key reports.
    pub serial: Serial,
    /// Model string.
    pub model: String,
    /// Firmware version.
    pub firmware: Firmware,
    /// The proof key (PIV slot 9E equivalent).
    pub signing_key: SigningKey,
    /// DER certificate of the proof key, `None` while unprovisioned.
    pub certificate: Option<Vec<u8>>,
    /// How the key attests its proof key; `None`: it cannot (a key imported from software).
    pub attestation: Option<SimAttestation>,
}

/// How a simulated key answers an attestation request.
#[derive(Debug, Clone)]
pub enum SimAttestation {
    /// The proof key was generated on the device: it attests on demand with its F9 key
    /// (issued by the simulator's test attestation CA).
    Device(DeviceAttester),
    /// Canned certificates handed out as they are (a replay of another device's attestation).
    Replay(KeyAttestation),
}

/// PIV PIN / touch policy byte "never" (slot 9E as keyfloat provisions it).
const POLICY_NEVER: u8 = 0x01;

impl fmt::Debug for SimKeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimKeySpec")
            .field("name", &self.name)
            .field("serial", &self.serial)
            .field("model", &self.model)
            .field("firmware", &self.firmware)
            .field("provisioned", &self.certificate.is_some())
            .field("attestation", &self.attestation)
            .finish_non_exhaustive()
    }
}

impl SimKeySpec {
    /// A key with a fresh random key pair, unprovisioned (no certificate).
    pub fn generate(name: &str, serial: u32) -> Self {
        Self::with_signing_key(name, serial, SigningKey::random(&mut rand_core::OsRng))
    }

    /// A key whose key pair is derived from `seed` and `name`: the same seed always gives the
    /// same key, so simulator traces are reproducible.
    pub fn from_seed(name: &str, serial: u32, seed: u64) -> Self {
        let mut counter = 0u32;
        loop {
            let d = Sha256::new()
                .chain_update(b"keyfloat-sim-key")
                .chain_update(seed.to_be_bytes())
                .chain_update(name.as_bytes())
                .chain_update(counter.to_be_bytes())
                .finalize();
            if let Ok(k) = SigningKey::from_slice(&d) {
                return Self::with_signing_key(name, serial, k);
            }
            counter += 1;
        }
    }

    fn with_signing_key(name: &str, serial: u32, signing_key: SigningKey) -> Self {
        Self {
            name: name.to_string(),
            serial: Serial::from(serial),
            model: "Simulated YubiKey 5".into(),
            firmware: Firmware::new(5, 4, 3),
            signing_key,
            certificate: None,
            attestation: None,
        }
    }

    /// Sets how the key attests (see [`SimAttestation`]).
    pub fn with_attestation(mut self, attestation: Option<SimAttestation>) -> Self {
        self.attestation = attestation;
        self
    }

    /// A fresh attestation of the proof key, as the device would give it.
    pub fn attestation(&self) -> Result<KeyAttestation> {
        match &self.attestation {
            Some(SimAttestation::Device(device)) => {
                let spki = self
                    .verifying_key()
                    .to_public_key_der()
                    .map_err(|e| Error::new(ErrorKind::Other, format!("cannot encode the proof key: {e}")))?;
                let certificate = device
                    .attest(0x9E, spki.as_bytes(), self.firmware, POLICY_NEVER, POLICY_NEVER)
                    .map_err(|e| Error::new(ErrorKind::Other, format!("cannot attest: {e}")))?;
                Ok(KeyAttestation {
                    certificate,
                    intermediates: vec![device.certificate().to_vec()],
                })
            }
            Some(SimAttestation::Replay(canned)) => Ok(canned.clone()),
            None => Err(Error::new(
                ErrorKind::Unsupported,
                "the proof key was imported: no attestation is possible",
            )),
        }
    }

    /// The proof key's public half (what a vendor certifies).
    pub fn verifying_key(&self) -> VerifyingKey {
        *self.signing_key.verifying_key()
    }

    /// Sets the DER certificate (provisioning).
    pub fn with_certificate(mut self, der: Vec<u8>) -> Self {
        self.certificate = Some(der);
        self
    }

    fn info(&self) -> KeyInfo {
        KeyInfo {
            id: KeyId::new(BackendKind::Sim, &self.name),
            backend: BackendKind::Sim,
            path: self.name.clone(),
            serial: Some(self.serial.clone()),
            model: self.model.clone(),
            firmware: Some(self.firmware),
            capability: ProofCapability::Signature,
        }
    }
}

#[derive(Debug)]
struct SimKeyState {
    spec: SimKeySpec,
    plugged: bool,
    holder: Option<Holder>,
    fail_next: Option<ErrorKind>,
    corrupt: bool,
    /// Every operation blocks until the key is released or pulled (a wedged key).
    hung: bool,
}

#[derive(Debug, Default)]
struct BusState {
    keys: BTreeMap<String, SimKeyState>,
    watchers: Vec<mpsc::Sender<HotplugEvent>>,
}

impl BusState {
    fn notify(&mut self, ev: &HotplugEvent) {
        self.watchers.retain(|w| w.send(ev.clone()).is_ok());
    }
}

/// The simulated USB bus: holds the virtual keys and applies the verbs.
/// Cheap to clone; clones share the same bus.
#[derive(Debug, Clone, Default)]
pub struct SimBus {
    state: Arc<Mutex<BusState>>,
    /// Wakes operations blocked on a hung key when it is released or pulled.
    unhung: Arc<Condvar>,
}

fn unknown(name: &str) -> Error {
    Error::new(ErrorKind::NotPresent, format!("no simulated key named {name:?}"))
}

impl SimBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BusState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A provider over this bus, to hand to the monitor.
    pub fn provider(&self) -> SimProvider {
        SimProvider { bus: self.clone() }
    }

    /// Adds a key to the bus, unplugged. Replaces a key of the same name.
    pub fn insert(&self, spec: SimKeySpec) {
        let name = spec.name.clone();
        let was_plugged = self.lock().keys.get(&name).is_some_and(|k| k.plugged);
        if was_plugged {
            let _ = self.unplug(&name);
        }
        self.lock().keys.insert(
            name,
            SimKeyState {
                spec,
                plugged: false,
                holder: None,
                fail_next: None,
                corrupt: false,
                hung: false,
            },
        );
    }

    /// Plugs a key in (no-op if plugged).
    pub fn plug(&self, name: &str) -> Result<()> {
        let mut st = self.lock();
        let key = st.keys.get_mut(name).ok_or_else(|| unknown(name))?;
        if key.plugged {
            return Ok(());
        }
        key.plugged = true;
        let ev = HotplugEvent::Attached(key.spec.info());
        st.notify(&ev);
        Ok(())
    }

    /// Pulls a key out (no-op if not plugged).
    pub fn unplug(&self, name: &str) -> Result<()> {
        let mut st = self.lock();
        let key = st.keys.get_mut(name).ok_or_else(|| unknown(name))?;
        if !key.plugged {
            return Ok(());
        }
        key.plugged = false;
        let ev = HotplugEvent::Detached(KeyId::new(BackendKind::Sim, name));
        st.notify(&ev);
        self.unhung.notify_all();
        Ok(())
    }

    /// Pulls `out` and plugs `into` in its place.
    pub fn swap(&self, out: &str, into: &str) -> Result<()> {
        self.unplug(out)?;
        self.plug(into)
    }

    /// Makes another (simulated) process hold the key exclusively, or lets go (`None`).
    pub fn make_busy(&self, name: &str, holder: Option<Holder>) -> Result<()> {
        let mut st = self.lock();
        st.keys.get_mut(name).ok_or_else(|| unknown(name))?.holder = holder;
        Ok(())
    }

    /// The next operation on the key fails with `kind` (an I/O error, a disconnect...).
    pub fn fail_next(&self, name: &str, kind: ErrorKind) -> Result<()> {
        let mut st = self.lock();
        st.keys.get_mut(name).ok_or_else(|| unknown(name))?.fail_next = Some(kind);
        Ok(())
    }

    /// Wedges the key (`true`): every operation on it blocks, as a card that stopped
    /// answering, until it is released (`false`) or pulled.
    pub fn hang(&self, name: &str, hung: bool) -> Result<()> {
        let mut st = self.lock();
        st.keys.get_mut(name).ok_or_else(|| unknown(name))?.hung = hung;
        self.unhung.notify_all();
        Ok(())
    }

    /// Makes the key sign garbage (`true`) or sign correctly again (`false`).
    pub fn corrupt(&self, name: &str, corrupt: bool) -> Result<()> {
        let mut st = self.lock();
        st.keys.get_mut(name).ok_or_else(|| unknown(name))?.corrupt = corrupt;
        Ok(())
    }

    /// Whether the key is plugged in.
    pub fn is_plugged(&self, name: &str) -> bool {
        self.lock().keys.get(name).is_some_and(|k| k.plugged)
    }

    /// The spec of a key on the bus.
    pub fn spec(&self, name: &str) -> Option<SimKeySpec> {
        self.lock().keys.get(name).map(|k| k.spec.clone())
    }

    /// Runs `op` against a plugged key, applying the fault verbs first.
    fn with_key<T>(&self, name: &str, op: impl FnOnce(&SimKeyState) -> Result<T>) -> Result<T> {
        let removed = || Error::new(ErrorKind::Disconnected, format!("simulated key {name:?} was removed"));
        let mut st = self.lock();
        while st.keys.get(name).is_some_and(|k| k.plugged && k.hung) {
            st = self.unhung.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        let key = st.keys.get_mut(name).filter(|k| k.plugged).ok_or_else(removed)?;
        if let Some(holder) = &key.holder {
            return Err(
                Error::new(ErrorKind::Busy, format!("simulated key {name:?} is held exclusively"))
                    .with_holders(vec![holder.clone()]),
            );
        }
        if let Some(kind) = key.fail_next.take() {
            return Err(Error::new(kind, format!("injected failure on simulated key {name:?}")));
        }
        op(key)
    }
}

/// [`KeyProvider`] over a [`SimBus`].
#[derive(Debug, Clone)]
pub struct SimProvider {
    bus: SimBus,
}

impl KeyProvider for SimProvider {
    fn kind(&self) -> BackendKind {
        BackendKind::Sim
    }

    fn list(&self) -> Result<Vec<KeyInfo>> {
        Ok(self
            .bus
            .lock()
            .keys
            .values()
            .filter(|k| k.plugged)
            .map(|k| k.spec.info())
            .collect())
    }

    fn open(&self, id: &KeyId) -> Result<Box<dyn HardwareKey>> {
        let name = id
            .path_in(BackendKind::Sim)
            .ok_or_else(|| Error::new(ErrorKind::NotPresent, format!("{id} is not a simulated key")))?;
        let info = self.bus.with_key(name, |k| Ok(k.spec.info()))?;
        Ok(Box::new(SimKey {
            bus: self.bus.clone(),
            name: name.to_string(),
            info,
        }))
    }

    fn watch(&self) -> Result<Box<dyn HotplugSource>> {
        let (tx, rx) = mpsc::channel();
        let mut st = self.bus.lock();
        for k in st.keys.values().filter(|k| k.plugged) {
            let _ = tx.send(HotplugEvent::Attached(k.spec.info()));
        }
        st.watchers.push(tx);
        Ok(Box::new(SimSource { rx }))
    }
}

/// Hot-plug events of a [`SimBus`].
#[derive(Debug)]
pub struct SimSource {
    rx: mpsc::Receiver<HotplugEvent>,
}

impl HotplugSource for SimSource {
    fn next_event(&mut self, timeout: Duration) -> Result<Option<HotplugEvent>> {
        let got = if timeout.is_zero() {
            self.rx
                .try_recv()
                .map_err(|e| matches!(e, mpsc::TryRecvError::Disconnected))
        } else {
            self.rx
                .recv_timeout(timeout)
                .map_err(|e| matches!(e, mpsc::RecvTimeoutError::Disconnected))
        };
        match got {
            Ok(ev) => Ok(Some(ev)),
            Err(false) => Ok(None),
            Err(true) => Err(Error::new(ErrorKind::ServiceUnavailable, "simulated bus dropped")),
        }
    }
}

/// An opened simulated key.
#[derive(Debug)]
pub struct SimKey {
    bus: SimBus,
    name: String,
    info: KeyInfo,
}

impl HardwareKey for SimKey {
    fn info(&self) -> &KeyInfo {
        &self.info
    }

    fn read_serial(&mut self) -> Result<Serial> {
        self.bus.with_key(&self.name, |k| Ok(k.spec.serial.clone()))
    }

    fn read_firmware(&mut self) -> Result<Firmware> {
        self.bus.with_key(&self.name, |k| Ok(k.spec.firmware))
    }

    fn prover(&mut self) -> Option<&mut dyn Prover> {
        Some(self)
    }
}

impl Prover for SimKey {
    fn read_certificate(&mut self) -> Result<Vec<u8>> {
        self.bus.with_key(&self.name, |k| {
            k.spec
                .certificate
                .clone()
                .ok_or_else(|| Error::new(ErrorKind::NotPresent, "no certificate in slot 9E"))
        })
    }

    fn sign_challenge(&mut self, challenge: &[u8]) -> Result<Proof> {
        self.bus.with_key(&self.name, |k| {
            let signature: Signature = if k.corrupt {
                // A broken key: a well-formed signature over the wrong message.
                k.spec.signing_key.sign(b"not the challenge")
            } else {
                k.spec.signing_key.sign(challenge)
            };
            Ok(Proof {
                scheme: SignatureScheme::EcdsaP256Sha256,
                signed_prefix: Vec::new(),
                signature: signature.to_der().as_bytes().to_vec(),
            })
        })
    }

    fn attest(&mut self) -> Result<KeyAttestation> {
        self.bus.with_key(&self.name, |k| k.spec.attestation())
    }
}

/// How long the certificate of a simulated key lasts.
pub const SIM_CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Provisions a simulated key: a certificate for its key pair and serial, signed by `vendor`.
///
/// Cannot fail for keys the simulator generates; should it ever, the key stays
/// unprovisioned (and validates as `unprovisioned`, never as valid) and an error is logged.
pub fn provision_sim_key(spec: SimKeySpec, vendor: &VendorSigningKey) -> SimKeySpec {
    match try_provision_sim_key(spec.clone(), vendor) {
        Ok(spec) => spec,
        Err(e) => {
            tracing::error!(key = %spec.name, error = %e, "cannot provision simulated key");
            spec
        }
    }
}

/// [`provision_sim_key`] that reports failures.
pub fn try_provision_sim_key(spec: SimKeySpec, vendor: &VendorSigningKey) -> Result<SimKeySpec, TrustError> {
    let public = p256::PublicKey::from(spec.verifying_key());
    // A key that can attest is provisioned as a vendor would after checking the attestation.
    let attested = match spec.attestation() {
        Ok(a) => Some(Sha256::digest(&a.certificate).into()),
        Err(_) => None,
    };
    let spki = public
        .to_public_key_der()
        .map_err(|e| TrustError::KeyInvalid(format!("cannot encode public key: {e}")))?;
    let now = SystemTime::now();
    let not_before = now.checked_sub(CLOCK_SKEW).unwrap_or(now);
    let not_after = now
        .checked_add(SIM_CERT_VALIDITY)
        .ok_or_else(|| TrustError::InvalidArgument("validity period is too long".into()))?;
    let cert = issue_key_certificate_attested(vendor, &spec.serial, spki.as_bytes(), not_before, not_after, attested)?;
    Ok(spec.with_certificate(cert))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;

    fn bus_with(name: &str, serial: u32) -> SimBus {
        let bus = SimBus::new();
        bus.insert(SimKeySpec::from_seed(name, serial, 7));
        bus
    }

    #[test]
    fn plug_list_unplug() {
        let bus = bus_with("a", 1);
        let p = bus.provider();
        assert!(p.list().unwrap().is_empty());
        bus.plug("a").unwrap();
        assert_eq!(p.list().unwrap()[0].serial, Some(Serial::from(1)));
        bus.unplug("a").unwrap();
        assert!(p.list().unwrap().is_empty());
        assert_eq!(bus.plug("nope").unwrap_err().kind(), ErrorKind::NotPresent);
    }

    #[test]
    fn watch_reports_present_keys_then_changes() {
        let bus = bus_with("a", 1);
        bus.plug("a").unwrap();
        let mut src = bus.provider().watch().unwrap();
        assert!(matches!(
            src.next_event(Duration::ZERO).unwrap(),
            Some(HotplugEvent::Attached(_))
        ));
        assert!(src.next_event(Duration::ZERO).unwrap().is_none());
        bus.unplug("a").unwrap();
        assert!(matches!(
            src.next_event(Duration::ZERO).unwrap(),
            Some(HotplugEvent::Detached(_))
        ));
    }

    #[test]
    fn signs_challenges_verifiably_unless_corrupt() {
        let bus = bus_with("a", 1);
        bus.plug("a").unwrap();
        let vk = bus.spec("a").unwrap().verifying_key();
        let mut key = bus.provider().open(&KeyId::new(BackendKind::Sim, "a")).unwrap();
        let proof = key.prover().unwrap().sign_challenge(b"challenge").unwrap();
        let sig = Signature::from_der(&proof.signature).unwrap();
        assert!(vk.verify(&proof.signed_message(b"challenge"), &sig).is_ok());
        bus.corrupt("a", true).unwrap();
        let proof = key.prover().unwrap().sign_challenge(b"challenge").unwrap();
        let sig = Signature::from_der(&proof.signature).unwrap();
        assert!(vk.verify(b"challenge", &sig).is_err());
    }

    #[test]
    fn a_hung_key_blocks_its_operations_until_released() {
        let bus = bus_with("a", 1);
        bus.plug("a").unwrap();
        let mut key = bus.provider().open(&KeyId::new(BackendKind::Sim, "a")).unwrap();
        bus.hang("a", true).unwrap();
        let (tx, rx) = mpsc::channel();
        let worker = std::thread::spawn(move || tx.send(key.read_serial()).unwrap());
        // Still blocked a moment later (bounded: the release below ends it).
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        assert!(bus.provider().list().unwrap().len() == 1, "enumeration does not hang");
        bus.hang("a", false).unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap(),
            Serial::from(1)
        );
        worker.join().unwrap();

        // Pulling a hung key ends the blocked operation as a disconnect.
        let mut key = bus.provider().open(&KeyId::new(BackendKind::Sim, "a")).unwrap();
        bus.hang("a", true).unwrap();
        let (tx, rx) = mpsc::channel();
        let worker = std::thread::spawn(move || tx.send(key.read_serial()).unwrap());
        bus.unplug("a").unwrap();
        let e = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Disconnected);
        worker.join().unwrap();
    }

    #[test]
    fn busy_is_not_absence_and_names_the_holder() {
        let bus = bus_with("a", 1);
        bus.plug("a").unwrap();
        let mut key = bus.provider().open(&KeyId::new(BackendKind::Sim, "a")).unwrap();
        bus.make_busy(
            "a",
            Some(Holder {
                pid: 99,
                command: "scdaemon".into(),
            }),
        )
        .unwrap();
        let e = key.read_serial().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy);
        assert_eq!(e.holders()[0].command, "scdaemon");
        bus.make_busy("a", None).unwrap();
        assert!(key.read_serial().is_ok());
    }

    #[test]
    fn fail_next_fails_once_and_unplug_disconnects() {
        let bus = bus_with("a", 1);
        bus.plug("a").unwrap();
        let mut key = bus.provider().open(&KeyId::new(BackendKind::Sim, "a")).unwrap();
        bus.fail_next("a", ErrorKind::Io).unwrap();
        assert_eq!(key.read_serial().unwrap_err().kind(), ErrorKind::Io);
        assert!(key.read_serial().is_ok());
        bus.unplug("a").unwrap();
        assert_eq!(key.read_serial().unwrap_err().kind(), ErrorKind::Disconnected);
    }

    #[test]
    fn seeded_keys_are_reproducible() {
        let a = SimKeySpec::from_seed("k", 1, 42).verifying_key();
        let b = SimKeySpec::from_seed("k", 1, 42).verifying_key();
        let c = SimKeySpec::from_seed("k", 1, 43).verifying_key();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
