//! Yubico USB devices (`/sys/bus/usb/devices/*/idVendor` = 1050) and their hidraw nodes.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Report, UsbDevice};

/// Yubico's USB vendor id.
const YUBICO_VID: &str = "1050";

/// Lists the Yubico devices under `sys_root`; a hidraw node we cannot open is a problem for
/// the HID backend.
pub(super) fn check(r: &mut Report, sys_root: &Path) {
    let Ok(dir) = fs::read_dir(sys_root.join("bus/usb/devices")) else {
        return;
    };
    let hidraw_of = hidraw_nodes(sys_root);
    for e in dir.flatten() {
        let p = e.path();
        if read(p.join("idVendor")) != YUBICO_VID {
            continue;
        }
        let bus: u32 = read(p.join("busnum")).parse().unwrap_or(0);
        let dev: u32 = read(p.join("devnum")).parse().unwrap_or(0);
        let real = fs::canonicalize(&p)
            .map(|x| x.display().to_string())
            .unwrap_or_default();
        let hidraw: Vec<String> = hidraw_of
            .iter()
            .filter(|(_, t)| !real.is_empty() && t.starts_with(&real))
            .map(|(n, _)| format!("/dev/{n}"))
            .collect();
        for node in &hidraw {
            check_hidraw(r, node);
        }
        r.usb_devices.push(UsbDevice {
            node: format!("/dev/bus/usb/{bus:03}/{dev:03}"),
            product: read(p.join("product")),
            hidraw,
        });
    }
}

fn read(p: PathBuf) -> String {
    fs::read_to_string(p).map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// (hidraw name, sysfs device path) of every hidraw node.
fn hidraw_nodes(sys_root: &Path) -> Vec<(String, String)> {
    let Ok(h) = fs::read_dir(sys_root.join("class/hidraw")) else {
        return Vec::new();
    };
    h.flatten()
        .filter_map(|e| {
            let target = fs::canonicalize(e.path()).ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                target.display().to_string(),
            ))
        })
        .collect()
}

fn check_hidraw(r: &mut Report, node: &str) {
    if let Err(err) = fs::OpenOptions::new().read(true).write(true).open(node) {
        if err.kind() == std::io::ErrorKind::PermissionDenied {
            r.problem(
                "hidraw_permission_denied",
                format!("cannot open {node} (Yubico HID interface): {err}"),
                "install a udev rule granting access (Debian: package libu2f-udev) or run as root",
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_hidraw_are_found_in_a_fake_sys() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let dev = root.join("devices/pci0/usb1/1-2");
        fs::create_dir_all(dev.join("1-2:1.0/hidraw/hidraw7")).unwrap();
        for (f, v) in [
            ("idVendor", "1050"),
            ("busnum", "1"),
            ("devnum", "4"),
            ("product", "YubiKey OTP+FIDO+CCID"),
        ] {
            fs::write(dev.join(f), format!("{v}\n")).unwrap();
        }
        fs::create_dir_all(root.join("bus/usb/devices")).unwrap();
        std::os::unix::fs::symlink(&dev, root.join("bus/usb/devices/1-2")).unwrap();
        fs::create_dir_all(root.join("class/hidraw")).unwrap();
        std::os::unix::fs::symlink(dev.join("1-2:1.0/hidraw/hidraw7"), root.join("class/hidraw/hidraw7")).unwrap();
        let mut r = Report::default();
        check(&mut r, root);
        assert_eq!(r.usb_devices.len(), 1);
        assert_eq!(r.usb_devices[0].node, "/dev/bus/usb/001/004");
        assert_eq!(r.usb_devices[0].hidraw, ["/dev/hidraw7"]);
        assert_eq!(r.usb_devices[0].product, "YubiKey OTP+FIDO+CCID");
    }
}
