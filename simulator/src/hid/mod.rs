//! A virtual HID YubiKey that answers at the report level, behind the HID backend's transport
//! seam ([`HidTransport`]): the OTP interface's feature-report frames (serial, status) and the
//! FIDO interface's CTAPHID packets (INIT/channel allocation, fragmentation, KEEPALIVE before a
//! slow answer, channel busy, errors) with CTAP2 `authenticatorGetInfo` and
//! `authenticatorGetAssertion` (`up=false`) signed by the [`SimKeySpec`]'s P-256 key.
//!
//! No HID device can exist on the CI machines (no USB, no uhid), so this is how the HID
//! backend's whole protocol stack, hot-plug polling included, is exercised:
//!
//! ```
//! use std::sync::Arc;
//! use keyfloat_hal::backend::hid::{HidConfig, HidProvider};
//! use keyfloat_hal::backend::sim::{SimAttestation, SimKeySpec};
//! use keyfloat_hal::KeyProvider;
//! use keyfloat_simulator::hid::SimHidTransport;
//!
//! let hid = SimHidTransport::new();
//! hid.insert(SimKeySpec::from_seed("alpha", 12345678, 1));
//! hid.plug("alpha").unwrap();
//! let provider = HidProvider::new(Arc::new(hid.clone()), HidConfig::default());
//! let info = &provider.list().unwrap()[0];
//! assert_eq!(provider.open(&info.id).unwrap().read_serial().unwrap().as_str(), "12345678");
//! ```
//!
//! Fault verbs: [`SimHidTransport::make_busy`] (another process holds the device
//! exclusively: opening it fails with `Busy`), [`SimHidTransport::fail_next`],
//! [`SimHidTransport::corrupt`] (signatures over the wrong message),
//! [`SimHidTransport::vanish_mid_frame`] (the key is pulled after the next report),
//! [`SimHidTransport::channel_busy`], [`SimHidTransport::slow`] (KEEPALIVEs before answers),
//! [`SimHidTransport::stall_otp`] (the OTP write flag stays set), [`SimHidTransport::hang`]
//! (a wedged key: reports block until it is released or pulled).

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use keyfloat_hal::backend::hid::ctaphid::{Reassembler, PACKET_SIZE};
use keyfloat_hal::backend::hid::{
    HidConnection, HidDeviceInfo, HidTransport, ProvisionedCredential, ProvisioningStore, FIDO_USAGE_PAGE, OTP_USAGE,
    OTP_USAGE_PAGE, YUBICO_VENDOR_ID,
};
use keyfloat_hal::backend::sim::SimKeySpec;
use keyfloat_hal::{Error, ErrorKind, Holder, Result};
use sha2::{Digest, Sha256};

mod connection;
mod fido;
mod otp;

use connection::SimHidConnection;

/// The credential id the virtual key gives the keyfloat credential of `spec` (deterministic,
/// so provisioning files can be written before the key is plugged).
pub fn credential_id(spec: &SimKeySpec) -> Vec<u8> {
    Sha256::new()
        .chain_update(b"keyfloat-sim-fido-credential")
        .chain_update(spec.serial.as_str().as_bytes())
        .chain_update(spec.verifying_key().to_encoded_point(true).as_bytes())
        .finalize()
        .to_vec()
}

/// Writes `spec`'s provisioning file (credential id + its certificate) into `store`.
/// [`ErrorKind::InvalidData`] when the spec has no certificate yet.
pub fn provision(store: &ProvisioningStore, spec: &SimKeySpec) -> Result<PathBuf> {
    let certificate_der = spec.certificate.clone().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidData,
            format!("simulated key {:?} has no certificate to provision", spec.name),
        )
    })?;
    store.save(
        &spec.serial,
        &ProvisionedCredential {
            credential_id: credential_id(spec),
            certificate_der,
        },
    )
}

/// Which interfaces a virtual key shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimHidInterfaces {
    /// The OTP (keyboard) interface: serial and firmware.
    pub otp: bool,
    /// The FIDO interface: CTAPHID / CTAP2.
    pub fido: bool,
    /// Whether the USB iSerial string shows the serial (the "serial visible over USB" flag).
    pub usb_serial_visible: bool,
    /// Whether the OTP interface tells the serial (the "serial API visible" flag).
    pub serial_api_visible: bool,
}

impl Default for SimHidInterfaces {
    fn default() -> Self {
        Self {
            otp: true,
            fido: true,
            usb_serial_visible: false,
            serial_api_visible: true,
        }
    }
}

#[derive(Debug)]
enum Kind {
    YubiKey {
        spec: Box<SimKeySpec>,
        interfaces: SimHidInterfaces,
    },
    Dongle {
        vendor_id: u16,
        product_id: u16,
        serial: Option<String>,
    },
}

#[derive(Debug, Default)]
struct OtpState {
    frame: Vec<u8>,
    response: Option<(Vec<u8>, usize)>,
    program_sequence: u8,
}

#[derive(Debug, Default)]
struct FidoState {
    next_cid: u32,
    channels: Vec<u32>,
    assembling: Option<Reassembler>,
    out: VecDeque<[u8; PACKET_SIZE]>,
    sign_count: u32,
    /// Touches a person gave (see [`SimHidTransport::touch`]), used up by makeCredential.
    touches: u32,
}

#[derive(Debug)]
struct Device {
    kind: Kind,
    plugged: bool,
    generation: u64,
    holder: Option<Holder>,
    fail_next: Option<ErrorKind>,
    corrupt: bool,
    vanish_after: Option<u32>,
    channel_busy: bool,
    keepalives: u32,
    otp_stall: u32,
    hung: bool,
    otp: OtpState,
    fido: FidoState,
}

impl Device {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            plugged: false,
            generation: 0,
            holder: None,
            fail_next: None,
            corrupt: false,
            vanish_after: None,
            channel_busy: false,
            keepalives: 0,
            otp_stall: 0,
            hung: false,
            otp: OtpState::default(),
            fido: FidoState::default(),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    devices: BTreeMap<String, Device>,
}

/// The simulated HID bus: virtual keys, the verbs, and the [`HidTransport`] over them.
/// Cheap to clone; clones share the bus.
#[derive(Debug, Clone, Default)]
pub struct SimHidTransport {
    state: Arc<Mutex<State>>,
    /// Wakes reports blocked on a hung key when a verb changes the bus.
    unhung: Arc<Condvar>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Iface {
    Otp,
    Fido,
    Vendor,
}

fn path_of(name: &str, iface: Iface) -> String {
    let n = match iface {
        Iface::Otp | Iface::Vendor => 0,
        Iface::Fido => 1,
    };
    format!("simhid/{name}/{n}")
}

fn unknown(name: &str) -> Error {
    Error::new(ErrorKind::NotPresent, format!("no simulated HID key named {name:?}"))
}

fn gone(name: &str) -> Error {
    Error::new(
        ErrorKind::Disconnected,
        format!("simulated HID key {name:?} was removed"),
    )
}

impl SimHidTransport {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_device<T>(&self, name: &str, f: impl FnOnce(&mut Device) -> T) -> Result<T> {
        let mut st = self.lock();
        let d = st.devices.get_mut(name).ok_or_else(|| unknown(name))?;
        let out = f(d);
        self.unhung.notify_all();
        Ok(out)
    }

    /// Adds a YubiKey with OTP and FIDO interfaces, unplugged; replaces a key of that name.
    pub fn insert(&self, spec: SimKeySpec) {
        self.insert_with(spec, SimHidInterfaces::default());
    }

    /// Adds a YubiKey with the given interfaces, unplugged.
    pub fn insert_with(&self, spec: SimKeySpec, interfaces: SimHidInterfaces) {
        let name = spec.name.clone();
        self.lock().devices.insert(
            name,
            Device::new(Kind::YubiKey {
                spec: Box::new(spec),
                interfaces,
            }),
        );
    }

    /// Adds a generic HID dongle (one vendor-defined interface) whose USB serial string is
    /// `serial`, unplugged.
    pub fn insert_dongle(&self, name: &str, vendor_id: u16, product_id: u16, serial: Option<&str>) {
        self.lock().devices.insert(
            name.to_string(),
            Device::new(Kind::Dongle {
                vendor_id,
                product_id,
                serial: serial.map(str::to_string),
            }),
        );
    }

    /// Plugs a key in (no-op if plugged). A re-plugged key starts with fresh protocol state,
    /// and connections opened before are dead.
    pub fn plug(&self, name: &str) -> Result<()> {
        self.with_device(name, |d| {
            if !d.plugged {
                d.plugged = true;
                d.generation += 1;
                d.otp = OtpState::default();
                d.fido = FidoState::default();
            }
        })
    }

    /// Pulls a key out (no-op if not plugged).
    pub fn unplug(&self, name: &str) -> Result<()> {
        self.with_device(name, |d| d.plugged = false)
    }

    /// Pulls `out` and plugs `into`.
    pub fn swap(&self, out: &str, into: &str) -> Result<()> {
        self.unplug(out)?;
        self.plug(into)
    }

    /// Another process holds the device exclusively (`Some`), or lets go (`None`): opening
    /// any of its interfaces fails with `Busy` naming the holder.
    pub fn make_busy(&self, name: &str, holder: Option<Holder>) -> Result<()> {
        self.with_device(name, |d| d.holder = holder)
    }

    /// The next operation on the key (open or report) fails with `kind`.
    pub fn fail_next(&self, name: &str, kind: ErrorKind) -> Result<()> {
        self.with_device(name, |d| d.fail_next = Some(kind))
    }

    /// Signatures over the wrong message (`true`), or correct ones again.
    pub fn corrupt(&self, name: &str, corrupt: bool) -> Result<()> {
        self.with_device(name, |d| d.corrupt = corrupt)
    }

    /// The key is pulled out after it accepts one more report (mid-frame / mid-message).
    pub fn vanish_mid_frame(&self, name: &str) -> Result<()> {
        self.with_device(name, |d| d.vanish_after = Some(1))
    }

    /// Every CTAPHID request gets ERROR channel-busy (another client mid-transaction).
    pub fn channel_busy(&self, name: &str, busy: bool) -> Result<()> {
        self.with_device(name, |d| d.channel_busy = busy)
    }

    /// Sends `keepalives` KEEPALIVE packets before each CTAP2 answer (a slow key).
    pub fn slow(&self, name: &str, keepalives: u32) -> Result<()> {
        self.with_device(name, |d| d.keepalives = keepalives)
    }

    /// Wedges the key (`true`): every report to or from it blocks, as a key that stopped
    /// answering, until it is released (`false`) or pulled. Enumeration still lists it.
    pub fn hang(&self, name: &str, hung: bool) -> Result<()> {
        self.with_device(name, |d| d.hung = hung)
    }

    /// A person touches the key: the next makeCredential (which every real key makes wait
    /// for a touch) goes through. Without it makeCredential times out, as on a real key
    /// nobody touches.
    pub fn touch(&self, name: &str) -> Result<()> {
        self.with_device(name, |d| d.fido.touches += 1)
    }

    /// The next `reads` OTP status reads show the write flag set (the key is busy).
    pub fn stall_otp(&self, name: &str, reads: u32) -> Result<()> {
        self.with_device(name, |d| d.otp_stall = reads)
    }

    /// Whether the key is plugged in.
    pub fn is_plugged(&self, name: &str) -> bool {
        self.lock().devices.get(name).is_some_and(|d| d.plugged)
    }

    /// Path of the key's OTP interface (its key id is `hid:<this>`).
    pub fn otp_path(name: &str) -> String {
        path_of(name, Iface::Otp)
    }

    /// Path of the key's FIDO interface.
    pub fn fido_path(name: &str) -> String {
        path_of(name, Iface::Fido)
    }
}

fn interfaces_of(name: &str, d: &Device) -> Vec<HidDeviceInfo> {
    let container = Some(format!("simusb:{name}"));
    match &d.kind {
        Kind::YubiKey { spec, interfaces } => {
            let (pid, product) = match (interfaces.otp, interfaces.fido) {
                (true, true) => (0x0407, "YubiKey OTP+FIDO+CCID"),
                (true, false) => (0x0405, "YubiKey OTP+CCID"),
                (false, _) => (0x0406, "YubiKey FIDO+CCID"),
            };
            let base = HidDeviceInfo {
                path: String::new(),
                vendor_id: YUBICO_VENDOR_ID,
                product_id: pid,
                serial_number: interfaces.usb_serial_visible.then(|| spec.serial.to_string()),
                usage_page: 0,
                usage: 0,
                interface_number: 0,
                product_string: Some(product.into()),
                container,
            };
            let mut v = Vec::new();
            if interfaces.otp {
                v.push(HidDeviceInfo {
                    path: path_of(name, Iface::Otp),
                    usage_page: OTP_USAGE_PAGE,
                    usage: OTP_USAGE,
                    interface_number: 0,
                    ..base.clone()
                });
            }
            if interfaces.fido {
                v.push(HidDeviceInfo {
                    path: path_of(name, Iface::Fido),
                    usage_page: FIDO_USAGE_PAGE,
                    usage: 1,
                    interface_number: 1,
                    ..base
                });
            }
            v
        }
        Kind::Dongle {
            vendor_id,
            product_id,
            serial,
        } => vec![HidDeviceInfo {
            path: path_of(name, Iface::Vendor),
            vendor_id: *vendor_id,
            product_id: *product_id,
            serial_number: serial.clone(),
            usage_page: 0xFF00,
            usage: 1,
            interface_number: 0,
            product_string: None,
            container,
        }],
    }
}

impl HidTransport for SimHidTransport {
    fn enumerate(&self) -> Result<Vec<HidDeviceInfo>> {
        let st = self.lock();
        Ok(st
            .devices
            .iter()
            .filter(|(_, d)| d.plugged)
            .flat_map(|(name, d)| interfaces_of(name, d))
            .collect())
    }

    fn open(&self, path: &str) -> Result<Box<dyn HidConnection>> {
        let missing = || Error::new(ErrorKind::NotPresent, format!("no HID device at {path}"));
        let mut parts = path.strip_prefix("simhid/").ok_or_else(missing)?.rsplitn(2, '/');
        let (n, name) = (parts.next().ok_or_else(missing)?, parts.next().ok_or_else(missing)?);
        let mut st = self.lock();
        let d = st.devices.get_mut(name).filter(|d| d.plugged).ok_or_else(missing)?;
        let iface = match (&d.kind, n) {
            (Kind::YubiKey { interfaces, .. }, "0") if interfaces.otp => Iface::Otp,
            (Kind::YubiKey { interfaces, .. }, "1") if interfaces.fido => Iface::Fido,
            (Kind::Dongle { .. }, "0") => Iface::Vendor,
            _ => return Err(missing()),
        };
        if let Some(h) = &d.holder {
            return Err(Error::new(
                ErrorKind::Busy,
                format!("{path}: device held exclusively by another process"),
            )
            .with_holders(vec![h.clone()]));
        }
        if let Some(kind) = d.fail_next.take() {
            return Err(Error::new(kind, format!("injected failure opening {path}")));
        }
        Ok(Box::new(SimHidConnection {
            state: Arc::clone(&self.state),
            unhung: Arc::clone(&self.unhung),
            name: name.to_string(),
            generation: d.generation,
            iface,
        }))
    }
}

#[cfg(test)]
mod tests;
