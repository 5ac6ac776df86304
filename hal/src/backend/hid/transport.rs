//! The transport seam: everything the HID backend needs from the operating system, as two
//! small object-safe traits. [`HidApiTransport`] is the real one (the `hidapi` crate); the
//! simulator's virtual HID YubiKey and the unit tests' scripted doubles implement the same
//! traits, so the whole protocol stack above runs unchanged against them.
//!
//! Report conventions are hidapi's: byte 0 of every feature report and output report is
//! the report id (0 for YubiKeys), `get_feature_report` fills a buffer whose byte 0 is the
//! report id, and `read_timeout` returns an input report without a report id.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// One HID interface as the operating system lists it. A composite USB device (a YubiKey
/// with OTP and FIDO enabled) shows up as one entry per interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HidDeviceInfo {
    /// Path to open the interface with (`/dev/hidrawN` on Linux).
    pub path: String,
    /// USB vendor id.
    pub vendor_id: u16,
    /// USB product id.
    pub product_id: u16,
    /// USB iSerial string, when the device exposes one.
    pub serial_number: Option<String>,
    /// HID usage page of the top-level collection.
    pub usage_page: u16,
    /// HID usage of the top-level collection.
    pub usage: u16,
    /// USB interface number (-1 when unknown).
    pub interface_number: i32,
    /// USB product string.
    pub product_string: Option<String>,
    /// An id shared by every interface of the same physical USB device (on Linux the
    /// sysfs name of the USB device, e.g. `usb:1-1.2`), when the transport can tell.
    pub container: Option<String>,
}

/// Enumerates and opens HID interfaces.
#[cfg_attr(test, mockall::automock)]
pub trait HidTransport: Send + Sync + fmt::Debug {
    /// The HID interfaces connected now.
    fn enumerate(&self) -> Result<Vec<HidDeviceInfo>>;
    /// Opens one interface by path. [`ErrorKind::Busy`] when another process holds it
    /// exclusively, [`ErrorKind::NotPresent`] when it is gone.
    fn open(&self, path: &str) -> Result<Box<dyn HidConnection>>;
}

/// An open HID interface.
#[cfg_attr(test, mockall::automock)]
pub trait HidConnection: Send + fmt::Debug {
    /// Sends a feature report; `data[0]` is the report id.
    fn send_feature_report(&mut self, data: &[u8]) -> Result<()>;
    /// Reads a feature report into `buf` (`buf[0]` = report id on input and output);
    /// returns the number of bytes written, report id included.
    fn get_feature_report(&mut self, buf: &mut [u8]) -> Result<usize>;
    /// Writes an output report; `data[0]` is the report id. Returns the bytes written.
    fn write(&mut self, data: &[u8]) -> Result<usize>;
    /// Reads one input report, waiting up to `timeout`; `Ok(0)` when none came.
    fn read_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize>;
}

/// The real transport over the `hidapi` crate, built with its pure-Rust Linux backend
/// (`linux-native-basic-udev`: reads sysfs and `/dev/hidraw*` directly, no libudev/libusb
/// needed to build or run). On a machine without HID devices it enumerates nothing.
#[derive(Debug, Default)]
pub struct HidApiTransport {
    // hidapi's context keeps its device list in itself; one per call keeps this type
    // `Sync` without a lock (creating a context is cheap: the C-free backend has no state).
    _private: (),
}

impl HidApiTransport {
    /// A transport over the system's HID devices.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Maps hidapi's (mostly stringly) errors onto our kinds.
pub(crate) fn map_hidapi_error(context: &str, e: hidapi::HidError) -> Error {
    let kind = match &e {
        hidapi::HidError::IoError { error } => match error.raw_os_error() {
            Some(libc_errno::EBUSY) => ErrorKind::Busy,
            Some(libc_errno::ENODEV) => ErrorKind::Disconnected,
            _ => Error::from(std::io::Error::from(error.kind())).kind(),
        },
        other => classify_message(&other.to_string()),
    };
    Error::with_source(kind, context.to_string(), e)
}

/// The errno values hidapi's messages carry (Linux numbering).
mod libc_errno {
    pub const EBUSY: i32 = 16;
    pub const ENODEV: i32 = 19;
}

fn classify_message(msg: &str) -> ErrorKind {
    let m = msg.to_ascii_lowercase();
    if m.contains("permission denied") || m.contains("os error 13") {
        ErrorKind::PermissionDenied
    } else if m.contains("busy") || m.contains("os error 16") {
        ErrorKind::Busy
    } else if m.contains("no such device") || m.contains("disconnected") || m.contains("os error 19") {
        ErrorKind::Disconnected
    } else if m.contains("no such file") || m.contains("not found") || m.contains("os error 2)") {
        ErrorKind::NotPresent
    } else if m.contains("timed out") {
        ErrorKind::Timeout
    } else {
        ErrorKind::Io
    }
}

/// The USB device a hidraw node belongs to, from sysfs:
/// `/sys/class/hidraw/hidrawN/device` → `…/1-1.2/1-1.2:1.0/0003:1050:0407.0001`; the USB
/// device is the grandparent of the HID device (its parent is the USB interface).
fn linux_container(path: &str) -> Option<String> {
    let node = path.strip_prefix("/dev/")?;
    let dev = std::fs::canonicalize(format!("/sys/class/hidraw/{node}/device")).ok()?;
    let usb_device = dev.parent()?.parent()?;
    Some(format!("usb:{}", usb_device.file_name()?.to_string_lossy()))
}

fn non_empty(s: Option<&str>) -> Option<String> {
    s.map(str::trim).filter(|s| !s.is_empty()).map(str::to_string)
}

impl HidTransport for HidApiTransport {
    fn enumerate(&self) -> Result<Vec<HidDeviceInfo>> {
        let api = hidapi::HidApi::new().map_err(|e| map_hidapi_error("cannot enumerate HID devices", e))?;
        Ok(api
            .device_list()
            .map(|d| {
                let path = d.path().to_string_lossy().into_owned();
                HidDeviceInfo {
                    container: linux_container(&path),
                    path,
                    vendor_id: d.vendor_id(),
                    product_id: d.product_id(),
                    serial_number: non_empty(d.serial_number()),
                    usage_page: d.usage_page(),
                    usage: d.usage(),
                    interface_number: d.interface_number(),
                    product_string: non_empty(d.product_string()),
                }
            })
            .collect())
    }

    fn open(&self, path: &str) -> Result<Box<dyn HidConnection>> {
        // hidapi panics on a path that is not UTF-8; ours always are, but never hand it a NUL.
        let c_path = std::ffi::CString::new(path)
            .map_err(|_| Error::new(ErrorKind::InvalidData, format!("HID path {path:?} contains a NUL byte")))?;
        let api = hidapi::HidApi::new().map_err(|e| map_hidapi_error("cannot initialise hidapi", e))?;
        let device = api
            .open_path(&c_path)
            .map_err(|e| map_hidapi_error(&format!("cannot open HID device {path}"), e))?;
        Ok(Box::new(HidApiConnection { device }))
    }
}

/// An interface opened through hidapi.
struct HidApiConnection {
    device: hidapi::HidDevice,
}

impl fmt::Debug for HidApiConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HidApiConnection").finish_non_exhaustive()
    }
}

impl HidConnection for HidApiConnection {
    fn send_feature_report(&mut self, data: &[u8]) -> Result<()> {
        self.device
            .send_feature_report(data)
            .map_err(|e| map_hidapi_error("HID send feature report failed", e))
    }

    fn get_feature_report(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.device
            .get_feature_report(buf)
            .map_err(|e| map_hidapi_error("HID get feature report failed", e))
    }

    fn write(&mut self, data: &[u8]) -> Result<usize> {
        self.device
            .write(data)
            .map_err(|e| map_hidapi_error("HID write failed", e))
    }

    fn read_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize> {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        self.device
            .read_timeout(buf, ms)
            .map_err(|e| map_hidapi_error("HID read failed", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidapi_messages_map_to_kinds() {
        assert_eq!(
            classify_message("failed to open device with path /dev/hidraw0: Permission denied (os error 13)"),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            classify_message("failed to open device with path /dev/hidraw0: Device or resource busy (os error 16)"),
            ErrorKind::Busy
        );
        assert_eq!(
            classify_message("unexpected poll error (device disconnected)"),
            ErrorKind::Disconnected
        );
        assert_eq!(
            classify_message("failed to open device with path /dev/hidraw9: No such file or directory (os error 2)"),
            ErrorKind::NotPresent
        );
        assert_eq!(classify_message("ioctl (GFEATURE): EIO"), ErrorKind::Io);
    }

    #[test]
    fn real_transport_enumerates_without_error() {
        // No HID device can exist on CI machines (no USB, no uhid): the real outcome there is an
        // empty list, and it must not be an error.
        let devices = HidApiTransport::new().enumerate().expect("hidapi enumeration");
        for d in &devices {
            assert!(!d.path.is_empty());
        }
    }

    #[test]
    fn opening_a_missing_device_is_a_typed_error() {
        let e = HidApiTransport::new().open("/dev/hidraw-keyfloat-missing").unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::NotPresent | ErrorKind::Disconnected),
            "{e}"
        );
        let e = HidApiTransport::new().open("bad\0path").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidData);
    }
}
