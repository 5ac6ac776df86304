//! HID backend (feature `hid`): YubiKeys over their OTP and FIDO HID interfaces, and generic
//! HID dongles whose USB serial string is the key serial.
//!
//! - **Serial and firmware** come from the YubiKey's OTP interface (feature-report frames,
//!   [`otp`]); a key whose OTP interface is disabled falls back to a visible USB serial string.
//! - **Proof of possession** comes from the FIDO interface (CTAPHID, [`ctaphid`]): a CTAP2
//!   `authenticatorGetAssertion` ([`ctap2`]) with `up=false` (no touch) for the credential that
//!   provisioning made for the relying-party id `keyfloat.license`; the 32-byte challenge is the
//!   `clientDataHash`, so the signature covers `authenticatorData ‖ challenge` =
//!   [`Proof::signed_message`]. The credential id and the vendor's certificate for its public key
//!   are read from a [`ProvisioningStore`] directory (`<serial>.cred.json`).
//! - **Generic dongles** (configured vendor/product ids) only show a serial:
//!   [`ProofCapability::SerialOnly`]; whether that is acceptable is the validator's decision.
//! - **Hot-plug**: hidapi has no hot-plug callbacks, so [`HidProvider::watch`] polls the device
//!   list (default every 250 ms) and reports the difference. One physical key that shows up as
//!   two interfaces (OTP + FIDO) is one key, `hid:<path of its OTP interface>` (its FIDO path
//!   when the OTP interface is disabled).
//!
//! Everything talks to the OS through the [`HidTransport`] seam. The real transport is hidapi
//! with its pure-Rust Linux backend (`linux-native-basic-udev`: no libudev or libusb to build
//! or run). CI machines have no USB and no uhid, so no HID device can exist there: the real
//! path is tested to enumerate zero devices without error, and the protocol stack runs against
//! the simulator's virtual HID YubiKey through the same seam.

pub mod ctap2;
pub mod ctaphid;
pub mod fido_attestation;
pub mod otp;
pub mod provisioning;
pub mod transport;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_core::RngCore;

use crate::error::{Error, ErrorKind, Result};
use crate::key::{
    BackendKind, Firmware, HardwareKey, HotplugEvent, HotplugSource, KeyId, KeyInfo, KeyProvider, Proof,
    ProofCapability, Prover, Serial, SignatureScheme,
};

pub use ctaphid::CtapTiming;
pub use otp::OtpTiming;
pub use provisioning::{ProvisionedCredential, ProvisioningStore};
pub use transport::{HidApiTransport, HidConnection, HidDeviceInfo, HidTransport};

#[cfg(test)]
pub use transport::{MockHidConnection, MockHidTransport};

/// Yubico's USB vendor id.
pub const YUBICO_VENDOR_ID: u16 = 0x1050;
/// Usage page of the OTP (keyboard) interface.
pub const OTP_USAGE_PAGE: u16 = 0x0001;
/// Usage of the OTP (keyboard) interface.
pub const OTP_USAGE: u16 = 0x0006;
/// Usage page of the FIDO interface.
pub const FIDO_USAGE_PAGE: u16 = 0xF1D0;

/// Environment variable: directory of `<serial>.cred.json` provisioning files.
pub const PROVISIONING_DIR_ENV: &str = "KEYFLOAT_HID_PROVISIONING_DIR";
/// Environment variable: generic dongles, `vvvv:pppp` hex pairs separated by commas.
pub const DONGLES_ENV: &str = "KEYFLOAT_HID_DONGLES";
/// Environment variable: hot-plug polling interval in milliseconds.
pub const POLL_MS_ENV: &str = "KEYFLOAT_HID_POLL_MS";

/// A USB vendor/product id pair of a generic HID dongle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DongleId {
    /// USB vendor id.
    pub vendor_id: u16,
    /// USB product id.
    pub product_id: u16,
}

impl FromStr for DongleId {
    type Err = Error;

    /// Parses `vvvv:pppp` (hexadecimal, as `lsusb` prints them).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::new(ErrorKind::InvalidData, format!("{s:?} is not a vvvv:pppp USB id"));
        let (v, p) = s.trim().split_once(':').ok_or_else(bad)?;
        Ok(Self {
            vendor_id: u16::from_str_radix(v, 16).map_err(|_| bad())?,
            product_id: u16::from_str_radix(p, 16).map_err(|_| bad())?,
        })
    }
}

/// Configuration of the HID backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HidConfig {
    /// How often hot-plug polling re-reads the device list.
    pub poll_interval: Duration,
    /// Generic dongles whose USB serial string is the key serial.
    pub dongles: Vec<DongleId>,
    /// Where FIDO credentials and their certificates are kept; `None`: no FIDO proof.
    pub provisioning: Option<ProvisioningStore>,
    /// Relying-party id of the provisioned credentials.
    pub rp_id: String,
    /// OTP interface timing.
    pub otp_timing: OtpTiming,
    /// FIDO interface timing.
    pub ctap_timing: CtapTiming,
}

impl Default for HidConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(250),
            dongles: Vec::new(),
            provisioning: None,
            rp_id: ctap2::DEFAULT_RP_ID.to_string(),
            otp_timing: OtpTiming::default(),
            ctap_timing: CtapTiming::default(),
        }
    }
}

impl HidConfig {
    /// Defaults, overridden by [`PROVISIONING_DIR_ENV`], [`DONGLES_ENV`] and [`POLL_MS_ENV`].
    /// Values that do not parse are logged and ignored (the backend still runs).
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`HidConfig::from_env`], reading the variables through `var`.
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Self {
        let mut c = Self::default();
        if let Some(dir) = var(PROVISIONING_DIR_ENV).filter(|d| !d.is_empty()) {
            c.provisioning = Some(ProvisioningStore::new(dir));
        }
        if let Some(list) = var(DONGLES_ENV) {
            for item in list.split(',').filter(|s| !s.trim().is_empty()) {
                match item.parse() {
                    Ok(id) => c.dongles.push(id),
                    Err(e) => tracing::warn!(target: "keyfloat::key", error = %e, "ignoring {DONGLES_ENV} entry"),
                }
            }
        }
        if let Some(ms) = var(POLL_MS_ENV) {
            match ms.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => c.poll_interval = Duration::from_millis(ms),
                _ => tracing::warn!(target: "keyfloat::key", value = %ms, "ignoring invalid {POLL_MS_ENV}"),
            }
        }
        c
    }
}

/// What kind of key a group of interfaces is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HidKeyKind {
    /// A YubiKey (OTP and/or FIDO interface).
    YubiKey,
    /// A configured generic dongle.
    Generic,
}

/// One physical key: the interfaces of one USB device that matter to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HidKeyDevice {
    /// YubiKey or generic dongle.
    pub kind: HidKeyKind,
    /// The interface that names the key (OTP for YubiKeys when enabled).
    pub primary: HidDeviceInfo,
    /// The OTP interface (YubiKeys).
    pub otp: Option<HidDeviceInfo>,
    /// The FIDO interface (YubiKeys).
    pub fido: Option<HidDeviceInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Otp,
    Fido,
    Generic,
}

fn role(d: &HidDeviceInfo, dongles: &[DongleId]) -> Option<Role> {
    if d.vendor_id == YUBICO_VENDOR_ID {
        if d.usage_page == OTP_USAGE_PAGE && d.usage == OTP_USAGE {
            return Some(Role::Otp);
        }
        if d.usage_page == FIDO_USAGE_PAGE {
            return Some(Role::Fido);
        }
    }
    let id = DongleId {
        vendor_id: d.vendor_id,
        product_id: d.product_id,
    };
    dongles.contains(&id).then_some(Role::Generic)
}

/// Groups interfaces into physical keys: by the transport's per-device `container`, else by
/// (vendor, product, USB serial), else a lone OTP and a lone FIDO interface of the same model
/// are taken to be one key; anything else is a key of its own.
pub fn group_devices(list: &[HidDeviceInfo], dongles: &[DongleId]) -> Vec<HidKeyDevice> {
    let mut groups: BTreeMap<String, Vec<(Role, HidDeviceInfo)>> = BTreeMap::new();
    for d in list {
        let Some(r) = role(d, dongles) else { continue };
        let class = if r == Role::Generic { "g" } else { "y" };
        let key = match (&d.container, &d.serial_number) {
            (Some(c), _) => format!("{class}|c|{c}"),
            (None, Some(s)) => format!("{class}|s|{:04x}:{:04x}:{s}", d.vendor_id, d.product_id),
            (None, None) => format!("{class}|p|{}", d.path),
        };
        groups.entry(key).or_default().push((r, d.clone()));
    }
    // Platforms that cannot tell which interfaces share a device: pair a lone OTP with a
    // lone FIDO interface when they are the only ones of their model.
    let lone: Vec<String> = groups
        .iter()
        .filter(|(k, v)| k.starts_with("y|p|") && v.len() == 1)
        .map(|(k, _)| k.clone())
        .collect();
    let mut by_model: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for k in &lone {
        if let Some(v) = groups.get(k) {
            by_model.entry(v[0].1.product_id).or_default().push(k.clone());
        }
    }
    for keys in by_model.values() {
        if let [a, b] = keys.as_slice() {
            let roles = (groups[a][0].0, groups[b][0].0);
            if matches!(roles, (Role::Otp, Role::Fido) | (Role::Fido, Role::Otp)) {
                if let Some(moved) = groups.remove(b) {
                    groups.entry(a.clone()).or_default().extend(moved);
                }
            }
        }
    }
    let mut out: Vec<HidKeyDevice> = groups
        .into_values()
        .filter_map(|mut members| {
            members.sort_by(|a, b| (a.1.interface_number, &a.1.path).cmp(&(b.1.interface_number, &b.1.path)));
            let find = |r: Role| members.iter().find(|(x, _)| *x == r).map(|(_, d)| d.clone());
            let (otp, fido) = (find(Role::Otp), find(Role::Fido));
            if otp.is_some() || fido.is_some() {
                let primary = otp.clone().or_else(|| fido.clone())?;
                Some(HidKeyDevice {
                    kind: HidKeyKind::YubiKey,
                    primary,
                    otp,
                    fido,
                })
            } else {
                Some(HidKeyDevice {
                    kind: HidKeyKind::Generic,
                    primary: members.first()?.1.clone(),
                    otp: None,
                    fido: None,
                })
            }
        })
        .collect();
    out.sort_by(|a, b| a.primary.path.cmp(&b.primary.path));
    out
}

/// Model name of a YubiKey product id, when its product string is missing.
fn yubikey_model(pid: u16) -> &'static str {
    match pid {
        0x0401 => "YubiKey (OTP)",
        0x0402 => "YubiKey (FIDO)",
        0x0403 => "YubiKey (OTP+FIDO)",
        0x0405 => "YubiKey (OTP+CCID)",
        0x0406 => "YubiKey (FIDO+CCID)",
        0x0407 => "YubiKey (OTP+FIDO+CCID)",
        0x0410 => "YubiKey Plus",
        0x0110..=0x0116 => "YubiKey NEO",
        0x0120 => "Security Key by Yubico",
        _ => "YubiKey",
    }
}

impl HidKeyDevice {
    /// The key as the monitor sees it.
    pub fn key_info(&self) -> KeyInfo {
        let model = self.primary.product_string.clone().unwrap_or_else(|| match self.kind {
            HidKeyKind::YubiKey => yubikey_model(self.primary.product_id).to_string(),
            HidKeyKind::Generic => format!(
                "HID dongle {:04x}:{:04x}",
                self.primary.vendor_id, self.primary.product_id
            ),
        });
        let capability = match (self.kind, &self.fido) {
            (HidKeyKind::YubiKey, Some(_)) => ProofCapability::Signature,
            _ => ProofCapability::SerialOnly,
        };
        KeyInfo {
            id: KeyId::new(BackendKind::Hid, &self.primary.path),
            backend: BackendKind::Hid,
            path: self.primary.path.clone(),
            serial: self.primary.serial_number.clone().map(Serial::new),
            model,
            firmware: None,
            capability,
        }
    }
}

/// [`KeyProvider`] for HID keys over a [`HidTransport`].
#[derive(Debug, Clone)]
pub struct HidProvider {
    transport: Arc<dyn HidTransport>,
    config: Arc<HidConfig>,
}

impl HidProvider {
    /// A provider over `transport`.
    pub fn new(transport: Arc<dyn HidTransport>, config: HidConfig) -> Self {
        Self {
            transport,
            config: Arc::new(config),
        }
    }

    /// The provider over the system's HID devices, configured from the environment
    /// ([`HidConfig::from_env`]).
    pub fn system() -> Self {
        Self::new(Arc::new(HidApiTransport::new()), HidConfig::from_env())
    }

    /// The configuration.
    pub fn config(&self) -> &HidConfig {
        &self.config
    }

    /// The physical keys connected now.
    pub fn devices(&self) -> Result<Vec<HidKeyDevice>> {
        Ok(group_devices(&self.transport.enumerate()?, &self.config.dongles))
    }

    /// Opens one key as a [`HidKey`] (for enrollment, which the trait does not cover).
    pub fn open_hid(&self, id: &KeyId) -> Result<HidKey> {
        let path = id.path_in(BackendKind::Hid);
        let device = self
            .devices()?
            .into_iter()
            .find(|d| path == Some(d.primary.path.as_str()))
            .ok_or_else(|| Error::new(ErrorKind::NotPresent, format!("no HID key {id}")))?;
        Ok(HidKey::new(
            Arc::clone(&self.transport),
            Arc::clone(&self.config),
            device,
        ))
    }
}

impl KeyProvider for HidProvider {
    fn kind(&self) -> BackendKind {
        BackendKind::Hid
    }

    fn list(&self) -> Result<Vec<KeyInfo>> {
        Ok(self.devices()?.iter().map(HidKeyDevice::key_info).collect())
    }

    fn open(&self, id: &KeyId) -> Result<Box<dyn HardwareKey>> {
        Ok(Box::new(self.open_hid(id)?))
    }

    fn watch(&self) -> Result<Box<dyn HotplugSource>> {
        Ok(Box::new(HidPollSource::new(
            Arc::clone(&self.transport),
            self.config.dongles.clone(),
            self.config.poll_interval,
        )))
    }
}

/// An opened HID key. Interfaces are opened on first use and kept while the key is.
pub struct HidKey {
    transport: Arc<dyn HidTransport>,
    config: Arc<HidConfig>,
    device: HidKeyDevice,
    info: KeyInfo,
    otp: Option<Box<dyn HidConnection>>,
    fido: Option<Box<dyn HidConnection>>,
    serial: Option<Serial>,
}

impl fmt::Debug for HidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HidKey")
            .field("info", &self.info)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// Runs `op` on the connection in `slot`, opening `path` first if needed; drops the
/// connection after an error so the next call starts from a fresh open.
fn with_conn<T>(
    transport: &dyn HidTransport,
    slot: &mut Option<Box<dyn HidConnection>>,
    path: &str,
    op: impl FnOnce(&mut dyn HidConnection) -> Result<T>,
) -> Result<T> {
    let conn = match slot {
        Some(c) => c,
        None => slot.insert(transport.open(path)?),
    };
    let result = op(conn.as_mut());
    if result.is_err() {
        *slot = None;
    }
    result
}

impl HidKey {
    fn new(transport: Arc<dyn HidTransport>, config: Arc<HidConfig>, device: HidKeyDevice) -> Self {
        let info = device.key_info();
        Self {
            transport,
            config,
            device,
            info,
            otp: None,
            fido: None,
            serial: None,
        }
    }

    fn unsupported(&self, what: &str) -> Error {
        Error::new(
            ErrorKind::Unsupported,
            format!("{}: {what} (serial-only key)", self.info.model),
        )
    }

    fn fido_path(&self) -> Result<String> {
        match (&self.device.kind, &self.device.fido) {
            (HidKeyKind::YubiKey, Some(f)) => Ok(f.path.clone()),
            _ => Err(self.unsupported("no FIDO interface, cannot prove possession")),
        }
    }

    fn credential(&mut self) -> Result<ProvisionedCredential> {
        self.fido_path()?;
        let serial = self.read_serial()?;
        let store = self.config.provisioning.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::NotPresent,
                format!("no provisioning directory configured ({PROVISIONING_DIR_ENV})"),
            )
        })?;
        store.load(&serial)?.ok_or_else(|| {
            Error::new(
                ErrorKind::NotPresent,
                format!("key {serial} has no credential in {}", store.dir().display()),
            )
        })
    }

    fn fido_channel<T>(&mut self, op: impl FnOnce(&mut ctaphid::CtapHidChannel<'_>) -> Result<T>) -> Result<T> {
        let path = self.fido_path()?;
        let timing = self.config.ctap_timing;
        let mut nonce = [0u8; 8];
        rand_core::OsRng.fill_bytes(&mut nonce);
        with_conn(self.transport.as_ref(), &mut self.fido, &path, |conn| {
            let mut channel = ctaphid::CtapHidChannel::open(conn, timing, nonce)?;
            op(&mut channel)
        })
    }
}

impl HidKey {
    /// Enrolls a new FIDO credential for keyfloat's relying party and verifies its `packed`
    /// attestation against `roots`. **The key waits for a touch** (every real key does for
    /// makeCredential): a person must be there. Key errors (no touch in time: `Timeout`) are
    /// [`Error`]s; a refused attestation is `InvalidData` whose message starts with its
    /// stable code (`attestation_untrusted: …`).
    pub fn enroll_attested(
        &mut self,
        roots: &crate::trust::AttestationRoots,
        now: std::time::SystemTime,
    ) -> Result<fido_attestation::EnrolledCredential> {
        let mut client_data_hash = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut client_data_hash);
        let mut user_id = [0u8; 16];
        rand_core::OsRng.fill_bytes(&mut user_id);
        let rp_id = self.config.rp_id.clone();
        let request = ctap2::make_credential_request(&rp_id, &client_data_hash, &user_id)?;
        let response = self.fido_channel(|ch| ch.cbor(&request))?;
        let made = ctap2::parse_make_credential(&response)?;
        fido_attestation::verify_packed(&made, &rp_id, &client_data_hash, roots, now)
            .map_err(|e| Error::new(ErrorKind::InvalidData, format!("{}: {e}", e.code())))
    }
}

impl HardwareKey for HidKey {
    fn info(&self) -> &KeyInfo {
        &self.info
    }

    fn read_serial(&mut self) -> Result<Serial> {
        if let Some(s) = &self.serial {
            return Ok(s.clone());
        }
        let serial = match (&self.device.kind, &self.device.otp) {
            (HidKeyKind::YubiKey, Some(otp)) => {
                let timing = self.config.otp_timing;
                let path = otp.path.clone();
                let read = with_conn(self.transport.as_ref(), &mut self.otp, &path, |c| {
                    otp::OtpInterface::new(c, timing).read_serial()
                });
                match (read, &self.device.primary.serial_number) {
                    (Ok(n), _) => Serial::from(n),
                    // Serial hidden from the OTP interface, but shown as the USB serial string.
                    (Err(e), Some(usb)) if e.kind() == ErrorKind::Unsupported => Serial::new(usb.clone()),
                    (Err(e), _) => return Err(e),
                }
            }
            _ => {
                // Generic dongle, or a YubiKey without its OTP interface: the USB serial string,
                // after checking that the device can still be opened (present, not held).
                let path = self.device.primary.path.clone();
                let slot = if self.device.fido.is_some() {
                    &mut self.fido
                } else {
                    &mut self.otp
                };
                with_conn(self.transport.as_ref(), slot, &path, |_| Ok(()))?;
                self.device
                    .primary
                    .serial_number
                    .clone()
                    .map(Serial::new)
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::Unsupported,
                            format!(
                                "{} shows no serial (no USB serial string, no OTP interface)",
                                self.info.model
                            ),
                        )
                    })?
            }
        };
        self.serial = Some(serial.clone());
        Ok(serial)
    }

    fn read_firmware(&mut self) -> Result<Firmware> {
        match (&self.device.kind, &self.device.otp) {
            (HidKeyKind::YubiKey, Some(otp)) => {
                let timing = self.config.otp_timing;
                let path = otp.path.clone();
                with_conn(self.transport.as_ref(), &mut self.otp, &path, |c| {
                    Ok(otp::OtpInterface::new(c, timing).status()?.firmware)
                })
            }
            (HidKeyKind::YubiKey, None) => self.fido_channel(|ch| Ok(ch.init_response().version)),
            (HidKeyKind::Generic, _) => Err(self.unsupported("no firmware version")),
        }
    }

    fn prover(&mut self) -> Option<&mut dyn Prover> {
        match self.info.capability {
            ProofCapability::Signature => Some(self),
            ProofCapability::SerialOnly => None,
        }
    }
}

impl Prover for HidKey {
    fn read_certificate(&mut self) -> Result<Vec<u8>> {
        Ok(self.credential()?.certificate_der)
    }

    fn sign_challenge(&mut self, challenge: &[u8]) -> Result<Proof> {
        let cred = self.credential()?;
        let rp_id = self.config.rp_id.clone();
        let request = ctap2::get_assertion_request(&rp_id, challenge, &cred.credential_id)?;
        let response = self.fido_channel(|ch| ch.cbor(&request))?;
        let assertion = ctap2::parse_get_assertion(&response)?;
        ctap2::check_assertion(&assertion, &rp_id, &cred.credential_id)?;
        Ok(Proof {
            scheme: SignatureScheme::EcdsaP256Sha256,
            signed_prefix: assertion.auth_data,
            signature: assertion.signature,
        })
    }
}

/// Hot-plug by polling: re-reads the device list every `interval` and reports the difference.
#[derive(Debug)]
pub struct HidPollSource {
    transport: Arc<dyn HidTransport>,
    dongles: Vec<DongleId>,
    interval: Duration,
    known: BTreeMap<KeyId, KeyInfo>,
    queue: VecDeque<HotplugEvent>,
    next_poll: Option<Instant>,
    failing: bool,
}

impl HidPollSource {
    /// A source that polls `transport`; the first call reports every key present.
    pub fn new(transport: Arc<dyn HidTransport>, dongles: Vec<DongleId>, interval: Duration) -> Self {
        Self {
            transport,
            dongles,
            interval,
            known: BTreeMap::new(),
            queue: VecDeque::new(),
            next_poll: None,
            failing: false,
        }
    }

    fn poll(&mut self) {
        let list = match self.transport.enumerate() {
            Ok(l) => l,
            Err(e) => {
                // Keep the keys we know (a failed listing says nothing about them); report once.
                if !self.failing {
                    self.failing = true;
                    self.queue.push_back(HotplugEvent::Error(e));
                }
                return;
            }
        };
        self.failing = false;
        let now: BTreeMap<KeyId, KeyInfo> = group_devices(&list, &self.dongles)
            .iter()
            .map(|d| {
                let info = d.key_info();
                (info.id.clone(), info)
            })
            .collect();
        for id in self.known.keys().filter(|id| !now.contains_key(*id)) {
            self.queue.push_back(HotplugEvent::Detached(id.clone()));
        }
        for (id, info) in &now {
            if self.known.get(id) != Some(info) {
                self.queue.push_back(HotplugEvent::Attached(info.clone()));
            }
        }
        self.known = now;
    }
}

impl HotplugSource for HidPollSource {
    fn next_event(&mut self, timeout: Duration) -> Result<Option<HotplugEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ev) = self.queue.pop_front() {
                return Ok(Some(ev));
            }
            let now = Instant::now();
            if !matches!(self.next_poll, Some(t) if t > now) {
                self.poll();
                self.next_poll = Some(now + self.interval);
                if !self.queue.is_empty() {
                    continue;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wake = self.next_poll.map_or(deadline, |t| t.min(deadline));
            // At least 1 ms: a zero interval must not spin the CPU.
            std::thread::sleep(wake.saturating_duration_since(now).max(Duration::from_millis(1)));
        }
    }
}

#[cfg(test)]
mod tests;
