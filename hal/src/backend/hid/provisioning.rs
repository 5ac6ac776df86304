//! Where a FIDO-provisioned key's credential lives on the host side. A FIDO credential's
//! public key cannot be read back from the key without a touch, and the key stores no
//! certificate, so provisioning leaves two things in a directory, one file per key:
//! `<serial>.cred.json` = `{"credential_id": "<base64>", "certificate": "<PEM>"}` — the id to
//! ask the key to sign with, and the vendor's certificate for that credential's P-256 key.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::key::Serial;

/// One provisioned FIDO credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionedCredential {
    /// The credential id the key issued at provisioning time.
    pub credential_id: Vec<u8>,
    /// DER X.509 certificate for the credential's public key, signed by the vendor.
    pub certificate_der: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CredentialFile {
    credential_id: String,
    certificate: String,
}

/// A directory of `<serial>.cred.json` files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisioningStore {
    dir: PathBuf,
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::InvalidData, format!("{}: {what}", path.display()))
}

impl ProvisioningStore {
    /// A store in `dir` (it need not exist yet).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file for `serial`. Serials are decimal digits; anything else is refused so a
    /// crafted serial string cannot name a path outside the directory.
    pub fn path_for(&self, serial: &Serial) -> Result<PathBuf> {
        let s = serial.as_str();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(Error::new(
                ErrorKind::InvalidData,
                format!("serial {s:?} cannot name a credential file"),
            ));
        }
        Ok(self.dir.join(format!("{s}.cred.json")))
    }

    /// The credential of `serial`; `Ok(None)` when the key was never provisioned here.
    pub fn load(&self, serial: &Serial) -> Result<Option<ProvisionedCredential>> {
        let path = self.path_for(serial)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::with_source(
                    ErrorKind::Io,
                    format!("cannot read {}", path.display()),
                    e,
                ))
            }
        };
        let file: CredentialFile = serde_json::from_str(&text).map_err(|e| invalid(&path, e))?;
        let credential_id = base64::engine::general_purpose::STANDARD
            .decode(file.credential_id.trim())
            .map_err(|e| invalid(&path, format_args!("credential_id is not base64: {e}")))?;
        if credential_id.is_empty() {
            return Err(invalid(&path, "empty credential_id"));
        }
        let (label, certificate_der) = p256::pkcs8::der::pem::decode_vec(file.certificate.as_bytes())
            .map_err(|e| invalid(&path, format_args!("certificate is not PEM: {e}")))?;
        if label != "CERTIFICATE" {
            return Err(invalid(
                &path,
                format_args!("PEM label {label:?}, expected CERTIFICATE"),
            ));
        }
        Ok(Some(ProvisionedCredential {
            credential_id,
            certificate_der,
        }))
    }

    /// Writes the credential of `serial` (creating the directory), atomically.
    pub fn save(&self, serial: &Serial, cred: &ProvisionedCredential) -> Result<PathBuf> {
        let path = self.path_for(serial)?;
        let pem =
            p256::pkcs8::der::pem::encode_string("CERTIFICATE", p256::pkcs8::LineEnding::LF, &cred.certificate_der)
                .map_err(|e| Error::new(ErrorKind::InvalidData, format!("cannot encode certificate: {e}")))?;
        let file = CredentialFile {
            credential_id: base64::engine::general_purpose::STANDARD.encode(&cred.credential_id),
            certificate: pem,
        };
        let json = serde_json::to_string_pretty(&file)
            .map_err(|e| Error::new(ErrorKind::Other, format!("cannot encode credential file: {e}")))?;
        std::fs::create_dir_all(&self.dir)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_roundtrips() {
        let dir = tempfile::tempdir().unwrap();
        let store = ProvisioningStore::new(dir.path());
        let serial = Serial::from(12345678);
        assert_eq!(store.load(&serial).unwrap(), None);
        let cred = ProvisionedCredential {
            credential_id: vec![1, 2, 3, 4],
            certificate_der: vec![0x30, 0x03, 0x02, 0x01, 0x05],
        };
        let path = store.save(&serial, &cred).unwrap();
        assert!(path.ends_with("12345678.cred.json"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"credential_id\": \"AQIDBA==\""), "{text}");
        assert!(text.contains("-----BEGIN CERTIFICATE-----"));
        assert_eq!(store.load(&serial).unwrap(), Some(cred));
    }

    #[test]
    fn bad_files_are_invalid_data_and_serials_cannot_escape() {
        let dir = tempfile::tempdir().unwrap();
        let store = ProvisioningStore::new(dir.path());
        for (serial, body) in [
            ("1", "not json"),
            ("2", r#"{"credential_id":"!!","certificate":""}"#),
            ("3", r#"{"credential_id":"AQ==","certificate":"nope"}"#),
            (
                "4",
                "{\"credential_id\":\"AQ==\",\"certificate\":\"-----BEGIN PRIVATE KEY-----\\nAQ==\\n-----END PRIVATE KEY-----\\n\"}",
            ),
        ] {
            std::fs::write(dir.path().join(format!("{serial}.cred.json")), body).unwrap();
            let e = store.load(&Serial::new(serial)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidData, "{serial}: {e}");
        }
        assert_eq!(
            store.load(&Serial::new("../etc/passwd")).unwrap_err().kind(),
            ErrorKind::InvalidData
        );
    }
}
