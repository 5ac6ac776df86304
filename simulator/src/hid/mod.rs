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
//! [`SimHidTransport::stall_otp`] (the OTP write flag stays set).

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ciborium::value::{Integer, Value};
use keyfloat_hal::backend::hid::ctaphid::{self, cmd, err, Packet, Reassembler, BROADCAST_CID, PACKET_SIZE};
use keyfloat_hal::backend::hid::otp::{crc16, FRAME_SIZE, REPORT_DATA_SIZE, SLOT_DEVICE_SERIAL};
use keyfloat_hal::backend::hid::{
    ctap2, HidConnection, HidDeviceInfo, HidTransport, ProvisionedCredential, ProvisioningStore, FIDO_USAGE_PAGE,
    OTP_USAGE, OTP_USAGE_PAGE, YUBICO_VENDOR_ID,
};
use keyfloat_hal::backend::sim::{SimAttestation, SimKeySpec};
use keyfloat_hal::{Error, ErrorKind, Holder, Result};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::Signature;
use sha2::{Digest, Sha256};

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
        Ok(f(d))
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
            name: name.to_string(),
            generation: d.generation,
            iface,
        }))
    }
}

/// An open interface of a virtual key.
#[derive(Debug)]
struct SimHidConnection {
    state: Arc<Mutex<State>>,
    name: String,
    generation: u64,
    iface: Iface,
}

impl SimHidConnection {
    /// Runs `op` on the device if it is still the one this connection opened; applies the
    /// fault verbs first. `counts` marks operations that move a frame/message forward.
    fn with<T>(&self, counts: bool, op: impl FnOnce(&mut Device) -> Result<T>) -> Result<T> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let d = st
            .devices
            .get_mut(&self.name)
            .filter(|d| d.plugged && d.generation == self.generation)
            .ok_or_else(|| gone(&self.name))?;
        if let Some(kind) = d.fail_next.take() {
            return Err(Error::new(
                kind,
                format!("injected failure on simulated HID key {:?}", self.name),
            ));
        }
        if counts {
            match d.vanish_after {
                Some(0) => {
                    d.plugged = false;
                    d.vanish_after = None;
                    return Err(gone(&self.name));
                }
                Some(n) => d.vanish_after = Some(n - 1),
                None => {}
            }
        }
        op(d)
    }
}

impl HidConnection for SimHidConnection {
    fn send_feature_report(&mut self, data: &[u8]) -> Result<()> {
        if self.iface != Iface::Otp {
            return Err(Error::new(ErrorKind::Io, "feature report on an interface without one"));
        }
        self.with(true, |d| {
            if data.len() != 9 {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("feature report of {} bytes", data.len()),
                ));
            }
            otp_write(d, &data[1..]);
            Ok(())
        })
    }

    fn get_feature_report(&mut self, buf: &mut [u8]) -> Result<usize> {
        if self.iface != Iface::Otp {
            return Err(Error::new(ErrorKind::Io, "feature report on an interface without one"));
        }
        self.with(false, |d| {
            if buf.len() < 9 {
                return Err(Error::new(ErrorKind::Io, "feature report buffer too small"));
            }
            let report = otp_read(d);
            buf[0] = 0;
            buf[1..9].copy_from_slice(&report);
            Ok(9)
        })
    }

    fn write(&mut self, data: &[u8]) -> Result<usize> {
        if self.iface != Iface::Fido {
            return Err(Error::new(ErrorKind::Io, "output report on an interface without one"));
        }
        self.with(true, |d| {
            if data.len() != PACKET_SIZE + 1 {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("output report of {} bytes", data.len()),
                ));
            }
            fido_write(d, &data[1..]);
            Ok(data.len())
        })
    }

    fn read_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize> {
        if self.iface != Iface::Fido {
            return Err(Error::new(ErrorKind::Io, "input report on an interface without one"));
        }
        let next = self.with(false, |d| Ok(d.fido.out.pop_front()))?;
        match next {
            Some(p) => {
                let n = p.len().min(buf.len());
                buf[..n].copy_from_slice(&p[..n]);
                Ok(n)
            }
            None => {
                // Nothing will come: answers are queued when the request is written.
                std::thread::sleep(timeout.min(Duration::from_millis(20)));
                Ok(0)
            }
        }
    }
}

// ---- OTP interface ------------------------------------------------------------------------

fn serial_u32(spec: &SimKeySpec) -> Option<u32> {
    spec.serial.as_str().parse().ok()
}

fn otp_write(d: &mut Device, report: &[u8]) {
    if report[..7].iter().all(|&b| b == 0) && report[7] == 0xFF {
        d.otp.response = None; // reset
        return;
    }
    let trailer = report[7];
    let seq = usize::from(trailer & 0x1F);
    if trailer & 0x80 == 0 || seq >= FRAME_SIZE / REPORT_DATA_SIZE {
        return;
    }
    if seq == 0 {
        d.otp.frame = vec![0; FRAME_SIZE];
        d.otp.response = None;
    }
    if d.otp.frame.len() != FRAME_SIZE {
        return; // a frame must start with seq 0
    }
    d.otp.frame[seq * REPORT_DATA_SIZE..(seq + 1) * REPORT_DATA_SIZE].copy_from_slice(&report[..7]);
    if seq == FRAME_SIZE / REPORT_DATA_SIZE - 1 {
        let frame = std::mem::take(&mut d.otp.frame);
        let crc = u16::from_le_bytes([frame[65], frame[66]]);
        if crc != crc16(&frame[..64]) {
            return; // the key ignores a corrupted frame; the host sees no answer
        }
        let Kind::YubiKey { spec, interfaces } = &d.kind else {
            return;
        };
        if frame[64] == SLOT_DEVICE_SERIAL && interfaces.serial_api_visible {
            if let Some(serial) = serial_u32(spec) {
                let mut resp = serial.to_be_bytes().to_vec();
                let crc = !crc16(&resp);
                resp.extend_from_slice(&crc.to_le_bytes());
                d.otp.response = Some((resp, 0));
            }
        }
    }
}

fn otp_read(d: &mut Device) -> [u8; 8] {
    let mut status = [0u8; 8];
    if let Kind::YubiKey { spec, .. } = &d.kind {
        status[1..4].copy_from_slice(&[spec.firmware.major, spec.firmware.minor, spec.firmware.patch]);
    }
    status[4] = d.otp.program_sequence;
    if d.otp_stall > 0 {
        d.otp_stall -= 1;
        status[7] = 0x80;
        return status;
    }
    match &mut d.otp.response {
        Some((resp, pos)) => {
            let chunks = resp.len().div_ceil(REPORT_DATA_SIZE);
            let mut r = [0u8; 8];
            if *pos < chunks {
                let chunk = &resp[*pos * REPORT_DATA_SIZE..resp.len().min((*pos + 1) * REPORT_DATA_SIZE)];
                r[..chunk.len()].copy_from_slice(chunk);
                r[7] = 0x40 | (*pos as u8 & 0x1F);
                *pos += 1;
            } else {
                r[7] = 0x40; // end of response, sequence 0
            }
            r
        }
        None => status,
    }
}

// ---- FIDO interface -----------------------------------------------------------------------

fn queue(d: &mut Device, cid: u32, command: u8, payload: &[u8]) {
    if let Ok(packets) = ctaphid::fragment(cid, command, payload) {
        d.fido.out.extend(packets);
    }
}

fn fido_write(d: &mut Device, packet: &[u8]) {
    let Ok(p) = ctaphid::parse_packet(packet) else { return };
    let cid = p.cid();
    match p {
        Packet::Init {
            cmd: cmd::INIT,
            data,
            bcnt,
            ..
        } => {
            if bcnt != 8 {
                return queue(d, cid, cmd::ERROR, &[err::INVALID_LEN]);
            }
            d.fido.assembling = None;
            let new_cid = if cid == BROADCAST_CID {
                d.fido.next_cid += 1;
                let c = 0x0100_0000 | d.fido.next_cid;
                d.fido.channels.push(c);
                c
            } else if d.fido.channels.contains(&cid) {
                cid
            } else {
                return queue(d, cid, cmd::ERROR, &[err::INVALID_CHANNEL]);
            };
            let fw = match &d.kind {
                Kind::YubiKey { spec, .. } => spec.firmware,
                Kind::Dongle { .. } => keyfloat_hal::Firmware::new(0, 0, 0),
            };
            let mut payload = data[..8].to_vec();
            payload.extend_from_slice(&new_cid.to_be_bytes());
            // protocol 2, version, capabilities: WINK | CBOR | NMSG
            payload.extend_from_slice(&[2, fw.major, fw.minor, fw.patch, 0x01 | 0x04 | 0x08]);
            queue(d, cid, cmd::INIT, &payload);
        }
        Packet::Init { .. } => {
            if cid == BROADCAST_CID || !d.fido.channels.contains(&cid) {
                return queue(d, cid, cmd::ERROR, &[err::INVALID_CHANNEL]);
            }
            if d.channel_busy || d.fido.assembling.as_ref().is_some_and(|r| r.cid() != cid) {
                return queue(d, cid, cmd::ERROR, &[err::CHANNEL_BUSY]);
            }
            match Reassembler::start(&p) {
                Ok(Some(r)) => d.fido.assembling = Some(r),
                _ => return queue(d, cid, cmd::ERROR, &[err::INVALID_LEN]),
            }
            finish_if_complete(d);
        }
        Packet::Cont { .. } => {
            let Some(r) = d.fido.assembling.as_mut().filter(|r| r.cid() == cid) else {
                return; // a stray CONT packet is ignored
            };
            if r.push(&p).is_err() {
                d.fido.assembling = None;
                return queue(d, cid, cmd::ERROR, &[err::INVALID_SEQ]);
            }
            finish_if_complete(d);
        }
    }
}

fn finish_if_complete(d: &mut Device) {
    if !d.fido.assembling.as_ref().is_some_and(Reassembler::is_complete) {
        return;
    }
    let Some(r) = d.fido.assembling.take() else { return };
    let cid = r.cid();
    let (command, payload) = r.finish();
    match command {
        cmd::PING => queue(d, cid, cmd::PING, &payload),
        cmd::WINK => queue(d, cid, cmd::WINK, &[]),
        cmd::CBOR => {
            for _ in 0..d.keepalives {
                queue(d, cid, cmd::KEEPALIVE, &[1]);
            }
            let answer = ctap2_answer(d, &payload);
            queue(d, cid, cmd::CBOR, &answer);
        }
        _ => queue(d, cid, cmd::ERROR, &[err::INVALID_CMD]),
    }
}

fn int(n: u8) -> Value {
    Value::Integer(Integer::from(n))
}

fn cbor_ok(map: Vec<(Value, Value)>) -> Vec<u8> {
    let mut out = vec![ctap2::status::OK];
    if ciborium::ser::into_writer(&Value::Map(map), &mut out).is_err() {
        return vec![0x7F];
    }
    out
}

fn get(map: &[(Value, Value)], key: u8) -> Option<&Value> {
    map.iter()
        .find(|(k, _)| matches!(k, Value::Integer(i) if i128::from(*i) == i128::from(key)))
        .map(|(_, v)| v)
}

/// CTAP2 status: missing parameter.
const MISSING_PARAMETER: u8 = 0x14;
/// CTAP1 status: invalid command.
const INVALID_COMMAND: u8 = 0x01;

fn ctap2_answer(d: &mut Device, request: &[u8]) -> Vec<u8> {
    let Kind::YubiKey { spec, .. } = &d.kind else {
        return vec![INVALID_COMMAND];
    };
    let Some((&command, body)) = request.split_first() else {
        return vec![INVALID_COMMAND];
    };
    match command {
        ctap2::GET_INFO => cbor_ok(vec![
            (
                int(1),
                Value::Array(vec![
                    Value::Text("U2F_V2".into()),
                    Value::Text("FIDO_2_0".into()),
                    Value::Text("FIDO_2_1".into()),
                ]),
            ),
            (int(3), Value::Bytes(b"keyfloat-sim-hid".to_vec())),
            (
                int(4),
                Value::Map(vec![
                    (Value::Text("rk".into()), Value::Bool(true)),
                    (Value::Text("up".into()), Value::Bool(true)),
                    (Value::Text("plat".into()), Value::Bool(false)),
                ]),
            ),
            (int(5), Value::Integer(1200.into())),
            (
                int(0x0E),
                Value::Integer(
                    (u32::from(spec.firmware.major) << 16
                        | u32::from(spec.firmware.minor) << 8
                        | u32::from(spec.firmware.patch))
                    .into(),
                ),
            ),
        ]),
        ctap2::GET_ASSERTION => {
            let Ok(Value::Map(map)) = ciborium::de::from_reader::<Value, _>(body) else {
                return vec![ctap2::status::INVALID_CBOR];
            };
            let (Some(Value::Text(rp_id)), Some(Value::Bytes(cdh)), Some(Value::Array(allow))) =
                (get(&map, 1), get(&map, 2), get(&map, 3))
            else {
                return vec![MISSING_PARAMETER];
            };
            let up = match get(&map, 5) {
                Some(Value::Map(opts)) => opts
                    .iter()
                    .find(|(k, _)| matches!(k, Value::Text(t) if t == "up"))
                    .is_none_or(|(_, v)| !matches!(v, Value::Bool(false))),
                _ => true,
            };
            let ours = credential_id(spec);
            let allowed = allow.iter().any(|c| match c {
                Value::Map(m) => m
                    .iter()
                    .any(|(k, v)| matches!(k, Value::Text(t) if t == "id") && *v == Value::Bytes(ours.clone())),
                _ => false,
            });
            // The credential exists only for keyfloat's relying party.
            if !allowed || rp_id != ctap2::DEFAULT_RP_ID {
                return vec![ctap2::status::NO_CREDENTIALS];
            }
            if up {
                return vec![ctap2::status::USER_ACTION_TIMEOUT]; // nobody touches a virtual key
            }
            d.fido.sign_count = d.fido.sign_count.wrapping_add(1);
            let mut auth_data = Sha256::digest(rp_id.as_bytes()).to_vec();
            auth_data.push(0x00); // up=false: no UP, no UV
            auth_data.extend_from_slice(&d.fido.sign_count.to_be_bytes());
            let mut message = auth_data.clone();
            message.extend_from_slice(cdh);
            let signature: Signature = if d.corrupt {
                spec.signing_key.sign(b"not the challenge")
            } else {
                spec.signing_key.sign(&message)
            };
            cbor_ok(vec![
                (
                    int(1),
                    Value::Map(vec![
                        (Value::Text("id".into()), Value::Bytes(ours)),
                        (Value::Text("type".into()), Value::Text("public-key".into())),
                    ]),
                ),
                (int(2), Value::Bytes(auth_data)),
                (int(3), Value::Bytes(signature.to_der().as_bytes().to_vec())),
            ])
        }
        ctap2::MAKE_CREDENTIAL => make_credential(d, body),
        _ => vec![INVALID_COMMAND],
    }
}

/// The virtual model id.
const SIM_AAGUID: [u8; 16] = *b"keyfloat-sim-hid";

/// `authenticatorMakeCredential` for keyfloat's relying party: the credential is the key's
/// own P-256 key (the one assertions use). With a device attester (keys generated on a
/// genuine device), a `packed` attestation signed by it with its certificate in `x5c`;
/// without one, format `none`.
fn make_credential(d: &mut Device, body: &[u8]) -> Vec<u8> {
    let Kind::YubiKey { spec, .. } = &d.kind else {
        return vec![INVALID_COMMAND];
    };
    let Ok(Value::Map(map)) = ciborium::de::from_reader::<Value, _>(body) else {
        return vec![ctap2::status::INVALID_CBOR];
    };
    let (Some(Value::Bytes(cdh)), Some(Value::Map(rp))) = (get(&map, 1), get(&map, 2)) else {
        return vec![MISSING_PARAMETER];
    };
    let rp_id = rp.iter().find_map(|(k, v)| match (k, v) {
        (Value::Text(k), Value::Text(v)) if k == "id" => Some(v.clone()),
        _ => None,
    });
    let Some(rp_id) = rp_id else {
        return vec![MISSING_PARAMETER];
    };
    if d.fido.touches == 0 {
        return vec![ctap2::status::USER_ACTION_TIMEOUT];
    }
    d.fido.touches -= 1;
    d.fido.sign_count = d.fido.sign_count.wrapping_add(1);
    let id = credential_id(spec);
    let point = spec.verifying_key().to_encoded_point(false);
    let (Some(x), Some(y)) = (point.x(), point.y()) else {
        return vec![INVALID_COMMAND];
    };
    let cose = Value::Map(vec![
        (Value::Integer(1.into()), Value::Integer(2.into())),
        (Value::Integer(3.into()), Value::Integer((-7).into())),
        (Value::Integer((-1).into()), Value::Integer(1.into())),
        (Value::Integer((-2).into()), Value::Bytes(x.to_vec())),
        (Value::Integer((-3).into()), Value::Bytes(y.to_vec())),
    ]);
    let mut auth_data = Sha256::digest(rp_id.as_bytes()).to_vec();
    auth_data.push(ctap2::FLAG_UP | ctap2::FLAG_AT);
    auth_data.extend_from_slice(&d.fido.sign_count.to_be_bytes());
    auth_data.extend_from_slice(&SIM_AAGUID);
    auth_data.extend_from_slice(&(id.len() as u16).to_be_bytes());
    auth_data.extend_from_slice(&id);
    if ciborium::ser::into_writer(&cose, &mut auth_data).is_err() {
        return vec![INVALID_COMMAND];
    }
    let (fmt, stmt) = match &spec.attestation {
        Some(SimAttestation::Device(attester)) => {
            let mut message = auth_data.clone();
            message.extend_from_slice(cdh);
            let sig = if d.corrupt {
                attester.sign(b"not the credential")
            } else {
                attester.sign(&message)
            };
            (
                "packed",
                vec![
                    (Value::Text("alg".into()), Value::Integer((-7).into())),
                    (Value::Text("sig".into()), Value::Bytes(sig)),
                    (
                        Value::Text("x5c".into()),
                        Value::Array(vec![Value::Bytes(attester.certificate().to_vec())]),
                    ),
                ],
            )
        }
        _ => ("none", Vec::new()),
    };
    cbor_ok(vec![
        (int(1), Value::Text(fmt.into())),
        (int(2), Value::Bytes(auth_data)),
        (int(3), Value::Map(stmt)),
    ])
}

#[cfg(test)]
mod tests;
