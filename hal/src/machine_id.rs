//! The machine's own hardware ID, used whenever no valid key is in force.
//!
//! Derived from `/etc/machine-id` (falling back to `/var/lib/dbus/machine-id`) hashed with an
//! app-specific salt, so the raw machine-id never leaves the host and the value is stable
//! across restarts. Override with the environment variable [`MACHINE_ID_ENV`] (used verbatim),
//! e.g. for containers without a machine-id.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};
use crate::key::HardwareId;

/// Environment variable that overrides the machine's hardware ID (used as given).
pub const MACHINE_ID_ENV: &str = "KEYFLOAT_MACHINE_ID";

const SALT: &[u8] = b"keyfloat/hardware-id/v1:";
const SOURCES: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];

/// The machine's hardware ID: the override if set, else the salted hash of the machine-id.
pub fn machine_hardware_id() -> Result<HardwareId> {
    if let Ok(v) = std::env::var(MACHINE_ID_ENV) {
        let v = v.trim();
        if !v.is_empty() {
            return Ok(HardwareId::new(v));
        }
    }
    let mut last = None;
    for path in SOURCES {
        match hardware_id_from_file(Path::new(path)) {
            Ok(id) => return Ok(id),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::new(ErrorKind::Io, "no machine-id source")))
}

/// The salted hash of the machine-id stored in `path`.
pub fn hardware_id_from_file(path: &Path) -> Result<HardwareId> {
    let raw = std::fs::read_to_string(path).map_err(|e| {
        Error::with_source(
            ErrorKind::Io,
            format!(
                "cannot read {} to derive the machine's hardware ID; set {MACHINE_ID_ENV} to override",
                path.display()
            ),
            e,
        )
    })?;
    hardware_id_from_machine_id(raw.trim()).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidData,
            format!("{} is empty; set {MACHINE_ID_ENV} to override", path.display()),
        )
    })
}

/// The salted hash of a raw machine-id (32 hex digits of SHA-256), `None` if empty.
pub fn hardware_id_from_machine_id(raw: &str) -> Option<HardwareId> {
    if raw.is_empty() {
        return None;
    }
    let digest = Sha256::new().chain_update(SALT).chain_update(raw.as_bytes()).finalize();
    Some(HardwareId::new(hex::encode(&digest[..16])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_stable_and_not_raw() {
        let a = hardware_id_from_machine_id("0123456789abcdef0123456789abcdef").unwrap();
        let b = hardware_id_from_machine_id("0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert_ne!(a.as_str(), "0123456789abcdef0123456789abcdef");
        assert!(hardware_id_from_machine_id("").is_none());
    }

    #[test]
    fn unreadable_file_names_the_override() {
        let e = hardware_id_from_file(Path::new("/nonexistent/machine-id")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(e.to_string().contains(MACHINE_ID_ENV), "{e}");
    }
}
