//! `ServerConfig`: the YAML configuration file. Every key is also a `keyfloat serve` flag;
//! flags override the file. The spec's camelCase names (`userAuthentication`,
//! `crashIfNoHardwareKey`, …) are accepted as well as snake_case.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Which key backends to watch: the HAL's choice, shared with the command line.
pub use keyfloat_hal::KeyBackend;

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
    /// Shared store (`postgres://…`); absent = the SQLite file in the data dir.
    pub store: Option<crate::store::open::StoreUrl>,
    /// HA: this node's name; set, the node competes for leadership on the shared store.
    #[serde(alias = "nodeId")]
    pub node_id: Option<String>,
    /// HA: the URL clients and peers reach this node at (shown by standbys as the leader).
    #[serde(alias = "advertiseUrl")]
    pub advertise_url: Option<String>,
    /// HA: lease length (seconds), renewed every quarter of it.
    #[serde(alias = "leaseSecs")]
    pub lease_secs: u64,
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
    /// Lifetime of login tokens (seconds). Long by default: the SDKs never refresh a v1
    /// token; revoke with `keyfloat user revoke`.
    #[serde(alias = "tokenLifetimeSecs")]
    pub token_lifetime_secs: u64,
    /// Password-hashing threads [default: the number of cores].
    #[serde(alias = "hashWorkers")]
    pub hash_workers: Option<usize>,
    /// `/metrics` without a token in authentication mode (off by default).
    #[serde(alias = "metricsPublic")]
    pub metrics_public: bool,
    /// A dedicated bearer token for `/metrics` (besides account tokens).
    #[serde(alias = "metricsToken")]
    pub metrics_token: Option<String>,
    /// A separate address serving only `/metrics`, without authentication (bind it to
    /// a private interface).
    #[serde(alias = "metricsListen")]
    pub metrics_listen: Option<String>,
    /// Per-license metric series (license ids, product codes, usage).
    #[serde(alias = "metricsLicenseLabels")]
    pub metrics_license_labels: bool,
    /// Time a client has to send a request's headers (seconds).
    #[serde(alias = "headerTimeoutSecs")]
    pub header_timeout_secs: u64,
    /// Time a client has to send a request's body (seconds).
    #[serde(alias = "bodyTimeoutSecs")]
    pub body_timeout_secs: u64,
    /// An idle keep-alive connection is closed after this long (seconds).
    #[serde(alias = "idleTimeoutSecs")]
    pub idle_timeout_secs: u64,
    /// Most connections served at once; more wait in the kernel's backlog.
    #[serde(alias = "maxConnections")]
    pub max_connections: usize,
    /// On SIGTERM, requests in flight get this long (seconds) before the server exits.
    #[serde(alias = "drainSecs")]
    pub drain_secs: u64,
    /// TLS certificate chain (PEM). With `tls_key`, the server speaks HTTPS only.
    #[serde(alias = "tlsCert")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[serde(alias = "tlsKey")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to (mutual TLS).
    #[serde(alias = "tlsClientCa")]
    pub tls_client_ca: Option<PathBuf>,
    /// With TLS: an additional plain-HTTP address (only when asked for).
    #[serde(alias = "httpListen")]
    pub http_listen: Option<String>,
}

impl ServerConfig {
    /// Where the durable state lives (see [`crate::store::StoreSpec`]).
    pub fn store_spec(&self) -> crate::store::StoreResult<crate::store::StoreSpec> {
        crate::store::StoreSpec::parse(self.store.as_ref().map(|s| s.0.as_str()), &self.data_dir)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            port: None,
            data_dir: PathBuf::from("keyfloat-data"),
            store: None,
            node_id: None,
            advertise_url: None,
            lease_secs: 5,
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
            token_lifetime_secs: crate::auth::TOKEN_LIFETIME_SECS,
            hash_workers: None,
            metrics_public: false,
            metrics_token: None,
            metrics_listen: None,
            metrics_license_labels: true,
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            idle_timeout_secs: 60,
            max_connections: 16_384,
            drain_secs: 10,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            http_listen: None,
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
        let t = ServerConfig::from_yaml(
            "tlsCert: /etc/kf/cert.pem\ntls_key: /etc/kf/key.pem\ntlsClientCa: /etc/kf/ca.pem\nmetricsToken: s3\nmaxConnections: 100\ndrainSecs: 3\n",
        )
        .unwrap();
        assert_eq!(t.tls_cert.as_deref(), Some(Path::new("/etc/kf/cert.pem")));
        assert_eq!(t.tls_key.as_deref(), Some(Path::new("/etc/kf/key.pem")));
        assert_eq!(t.tls_client_ca.as_deref(), Some(Path::new("/etc/kf/ca.pem")));
        assert_eq!(
            (t.metrics_token.as_deref(), t.max_connections, t.drain_secs),
            (Some("s3"), 100, 3)
        );
        let d = ServerConfig::default();
        assert!(!d.metrics_public && d.metrics_license_labels && d.http_listen.is_none());
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
