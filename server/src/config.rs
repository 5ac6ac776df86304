//! `ServerConfig`: the YAML configuration file. Every key is also a `keyfloat serve` flag;
//! flags override the file. The spec's camelCase names (`userAuthentication`,
//! `crashIfNoHardwareKey`, …) are accepted as well as snake_case.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Which key backends to watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyBackend {
    /// Every hardware backend compiled in.
    #[default]
    Auto,
    /// PC/SC through pcscd.
    Pcsc,
    /// USB HID.
    Hid,
    /// Simulated key (demo/CI only).
    Sim,
}

impl KeyBackend {
    /// Name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Pcsc => "pcsc",
            Self::Hid => "hid",
            Self::Sim => "sim",
        }
    }
}

/// Server configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Listen address.
    pub listen: String,
    /// Port only (overrides the port of `listen`; the docs' `port`).
    pub port: Option<u16>,
    /// Database, JWT secret.
    #[serde(alias = "dataDir")]
    pub data_dir: PathBuf,
    /// Key backends.
    #[serde(alias = "keyBackend")]
    pub key_backend: KeyBackend,
    /// Authentication mode (RBAC, JWT).
    #[serde(alias = "userAuthentication")]
    pub user_authentication: bool,
    /// Exit (code 3) instead of answering `hardware_key_not_accessible`.
    #[serde(alias = "crashIfNoHardwareKey")]
    pub crash_if_no_hardware_key: bool,
    /// Vendor public key: a PEM file path or inline PEM.
    #[serde(alias = "vendorPublicKey")]
    pub vendor_public_key: Option<String>,
    /// Re-prove the key this often (seconds).
    #[serde(alias = "revalidateSecs")]
    pub revalidate_secs: u64,
    /// `--key-backend sim`: vendor signing key that provisions the simulated key.
    #[serde(alias = "simVendorKey")]
    pub sim_vendor_key: Option<PathBuf>,
    /// Accept keys that can only show a serial (generic HID dongles) for key-bound licenses.
    /// Off by default: such a key proves presence, not identity.
    #[serde(alias = "allowSerialOnlyKeys")]
    pub allow_serial_only_keys: bool,
    /// Grace period (seconds) when the key in force disappears or becomes unreadable: its
    /// serial stays in force meanwhile. 0 = none (key-bound licenses are refused at once).
    #[serde(alias = "keyGraceSecs")]
    pub key_grace_secs: u64,
    /// Every (re)validation also demands a fresh PIV attestation of the key's slot 9E that
    /// chains to one of `attestation_roots` (keys imported from software, or cloned, are
    /// refused as `not_attested`). Off by default for keys provisioned before attestation.
    #[serde(alias = "requireAttestation")]
    pub require_attestation: bool,
    /// Trusted attestation roots (PEM file paths or inline PEM): Yubico's PIV root CA.
    #[serde(alias = "attestationRoots")]
    pub attestation_roots: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            port: None,
            data_dir: PathBuf::from("keyfloat-data"),
            key_backend: KeyBackend::Auto,
            user_authentication: false,
            crash_if_no_hardware_key: false,
            vendor_public_key: None,
            revalidate_secs: 60,
            sim_vendor_key: None,
            allow_serial_only_keys: false,
            key_grace_secs: 0,
            require_attestation: false,
            attestation_roots: Vec::new(),
        }
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Not valid YAML / unknown values.
    #[error("invalid configuration {path}: {message}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// Cause.
        message: String,
    },
}

impl ServerConfig {
    /// Parses YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_norway::from_str(text).map_err(|e| e.to_string())
    }

    /// Reads a YAML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.into(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|message| ConfigError::Invalid {
            path: path.into(),
            message,
        })
    }

    /// The address to bind, with `port` applied.
    pub fn listen_addr(&self) -> String {
        match self.port {
            None => self.listen.clone(),
            Some(port) => match self.listen.rsplit_once(':') {
                Some((host, _)) => format!("{host}:{port}"),
                None => format!("{}:{port}", self.listen),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn camel_and_snake_case_keys() {
        let c = ServerConfig::from_yaml(
            "userAuthentication: true\ncrashIfNoHardwareKey: true\nkey_backend: sim\nport: 9090\nunknownKey: 1\n",
        )
        .unwrap();
        assert!(c.user_authentication && c.crash_if_no_hardware_key);
        assert_eq!(c.key_backend, KeyBackend::Sim);
        assert_eq!(c.listen_addr(), "127.0.0.1:9090");
        let d = ServerConfig::from_yaml("user_authentication: true\n").unwrap();
        assert!(d.user_authentication);
        assert_eq!(ServerConfig::from_yaml("").unwrap(), ServerConfig::default());
        assert!(ServerConfig::from_yaml("key_backend: usb\n").is_err());
        assert!(!c.allow_serial_only_keys, "serial-only keys are refused unless allowed");
        assert!(
            ServerConfig::from_yaml("allowSerialOnlyKeys: true\n")
                .unwrap()
                .allow_serial_only_keys
        );
        assert!(!c.require_attestation, "attestation is opt-in");
        let a = ServerConfig::from_yaml(
            "requireAttestation: true
attestation_roots: [/etc/keyfloat/yubico-piv-root.pem]
",
        )
        .unwrap();
        assert!(a.require_attestation);
        assert_eq!(a.attestation_roots, ["/etc/keyfloat/yubico-piv-root.pem"]);
    }
}
