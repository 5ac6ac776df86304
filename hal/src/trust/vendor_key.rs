//! The vendor's P-256 signing key (kept by the vendor) and its public half (configured in
//! every server).

use std::fmt;
use std::io::Read;
use std::path::Path;

use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, PrivateKeyInfo};
use sha2::{Digest, Sha256};

use super::error::TrustError;
use super::pem::{self, algorithm_name, label_name, OID_EC_PUBLIC_KEY, OID_P256};

/// Largest PEM file the trust chain reads: real keys and certificates are a few KiB.
pub const MAX_PEM_FILE_LEN: u64 = 64 * 1024;

const PRIVATE_EXPECTED: &str = "a P-256 (prime256v1) private key";
const PUBLIC_EXPECTED: &str = "a P-256 (prime256v1) public key";

/// The vendor's ECDSA P-256 signing key: signs key certificates and license files.
#[derive(Clone)]
pub struct VendorSigningKey {
    key: SigningKey,
}

impl fmt::Debug for VendorSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret; the public fingerprint identifies the key.
        f.debug_struct("VendorSigningKey")
            .field("fingerprint", &self.public_key().fingerprint())
            .finish_non_exhaustive()
    }
}

impl VendorSigningKey {
    /// A fresh random key (OS randomness).
    pub fn generate() -> Self {
        Self {
            key: SigningKey::random(&mut rand_core::OsRng),
        }
    }

    /// The key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn to_pem(&self) -> String {
        match self.key.to_pkcs8_pem(p256::pkcs8::LineEnding::LF) {
            Ok(pem) => pem.to_string(),
            // Encoding a valid in-memory P-256 key cannot fail; stay total anyway.
            Err(_) => String::new(),
        }
    }

    /// Parses a PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`, as `openssl ecparam -genkey`
    /// writes) PEM P-256 private key.
    pub fn from_pem(text: &str) -> Result<Self, TrustError> {
        check_len("private key PEM", text.len() as u64)?;
        let blocks = pem::blocks(text)?;
        let Some(block) = blocks.iter().find(|b| b.label != "EC PARAMETERS") else {
            return Err(TrustError::PemInvalid(
                "no PEM block found (expected -----BEGIN PRIVATE KEY-----)".into(),
            ));
        };
        let key = match block.label.as_str() {
            "PRIVATE KEY" => {
                let info = PrivateKeyInfo::try_from(block.der.as_slice())
                    .map_err(|e| TrustError::KeyInvalid(format!("PKCS#8 structure does not parse: {e}")))?;
                require_p256(&info.algorithm, PRIVATE_EXPECTED)?;
                SigningKey::from_pkcs8_der(&block.der)
                    .map_err(|e| TrustError::KeyInvalid(format!("P-256 private key does not parse: {e}")))?
            }
            "EC PRIVATE KEY" => {
                let secret = p256::SecretKey::from_sec1_der(&block.der)
                    .map_err(|e| TrustError::KeyInvalid(format!("SEC1 P-256 private key does not parse: {e}")))?;
                SigningKey::from(secret)
            }
            "ENCRYPTED PRIVATE KEY" => return Err(TrustError::EncryptedKey),
            other => {
                return Err(TrustError::WrongKeyType {
                    expected: PRIVATE_EXPECTED,
                    found: label_name(other),
                })
            }
        };
        Ok(Self { key })
    }

    /// Writes the PKCS#8 PEM to a new file readable by its owner only (mode 0600). Refuses
    /// to overwrite an existing file: losing a vendor key orphans every key and license it
    /// signed.
    pub fn write_pem_file(&self, path: impl AsRef<Path>) -> Result<(), TrustError> {
        use std::io::Write;
        let path = path.as_ref();
        let pem = self
            .key
            .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
            .map_err(|e| TrustError::KeyInvalid(format!("cannot encode key: {e}")))?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|e| TrustError::io("create", path, e))?;
        file.write_all(pem.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| TrustError::io("write", path, e))
    }

    /// Reads a PEM private key file (see [`VendorSigningKey::from_pem`]).
    pub fn read_pem_file(path: impl AsRef<Path>) -> Result<Self, TrustError> {
        let text = read_text_file(path.as_ref(), "private key file")?;
        Self::from_pem(&text)
    }

    /// The public half, for servers and for display.
    pub fn public_key(&self) -> VendorPublicKey {
        VendorPublicKey {
            key: *self.key.verifying_key(),
        }
    }

    /// ECDSA-SHA256 signature of `msg`, DER-encoded (deterministic, RFC 6979).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let sig: Signature = self.key.sign(msg);
        sig.to_der().as_bytes().to_vec()
    }

    /// The underlying signer (for the certificate builder).
    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.key
    }
}

/// The vendor's public key: what a server trusts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VendorPublicKey {
    key: VerifyingKey,
}

impl fmt::Debug for VendorPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VendorPublicKey")
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

impl VendorPublicKey {
    /// The key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn to_pem(&self) -> String {
        self.key
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap_or_default()
    }

    /// The key as SPKI DER.
    pub fn to_der(&self) -> Vec<u8> {
        self.key
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default()
    }

    /// Parses an SPKI PEM (`-----BEGIN PUBLIC KEY-----`) P-256 public key.
    pub fn from_pem(text: &str) -> Result<Self, TrustError> {
        Ok(Self {
            key: p256_public_from_pem(text)?.into(),
        })
    }

    /// Parses an SPKI DER P-256 public key.
    pub fn from_der(der: &[u8]) -> Result<Self, TrustError> {
        Ok(Self {
            key: p256_public_from_spki_der(der)?.into(),
        })
    }

    /// Reads a PEM public key file.
    pub fn read_pem_file(path: impl AsRef<Path>) -> Result<Self, TrustError> {
        let text = read_text_file(path.as_ref(), "public key file")?;
        Self::from_pem(&text)
    }

    /// A configuration value that is either inline PEM or the path of a PEM file.
    pub fn from_path_or_inline(value: &str) -> Result<Self, TrustError> {
        if value.trim_start().starts_with("-----BEGIN ") {
            Self::from_pem(value)
        } else {
            Self::read_pem_file(value.trim())
        }
    }

    /// Checks a DER ECDSA-SHA256 signature of `msg`.
    pub fn verify(&self, msg: &[u8], sig_der: &[u8]) -> Result<(), TrustError> {
        verify_p256(&self.key, msg, sig_der)
            .map_err(|e| e.with_context(&format!("vendor key {}", self.fingerprint_short())))
    }

    /// Hex SHA-256 of the SPKI DER (what `openssl pkey -pubin -outform DER | sha256sum` prints).
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.to_der()))
    }

    /// The first 16 hex digits of [`VendorPublicKey::fingerprint`], for names and messages.
    pub fn fingerprint_short(&self) -> String {
        let mut f = self.fingerprint();
        f.truncate(16);
        f
    }
}

impl TrustError {
    fn with_context(self, what: &str) -> Self {
        match self {
            Self::SignatureInvalid(m) => Self::SignatureInvalid(format!("{m} (checked with {what})")),
            other => other,
        }
    }
}

/// Verifies an ECDSA P-256/SHA-256 signature given as DER (or as raw 64-byte `r‖s`, which
/// some PIV middleware returns).
pub(crate) fn verify_p256(key: &VerifyingKey, msg: &[u8], sig: &[u8]) -> Result<(), TrustError> {
    if sig.len() > 256 {
        return Err(TrustError::SignatureMalformed(format!(
            "{} bytes is too long for a P-256 signature",
            sig.len()
        )));
    }
    let parsed = Signature::from_der(sig).or_else(|der_err| {
        if sig.len() == 64 {
            Signature::from_slice(sig).map_err(|e| TrustError::SignatureMalformed(e.to_string()))
        } else {
            Err(TrustError::SignatureMalformed(format!(
                "not a DER ECDSA signature: {der_err}"
            )))
        }
    })?;
    key.verify(msg, &parsed)
        .map_err(|_| TrustError::SignatureInvalid("ECDSA P-256 signature does not match the message".into()))
}

/// Parses an SPKI PEM holding a P-256 public key.
pub(crate) fn p256_public_from_pem(text: &str) -> Result<p256::PublicKey, TrustError> {
    p256_public_from_spki_der(&public_key_der_from_pem(text, PUBLIC_EXPECTED)?)
}

/// The DER of the first `PUBLIC KEY` block of a PEM text (bounded in size); `expected`
/// names the key type in the error when the block is something else.
pub(crate) fn public_key_der_from_pem(text: &str, expected: &'static str) -> Result<Vec<u8>, TrustError> {
    check_len("public key PEM", text.len() as u64)?;
    let mut blocks = pem::blocks(text)?;
    if blocks.is_empty() {
        return Err(TrustError::PemInvalid(
            "no PEM block found (expected -----BEGIN PUBLIC KEY-----)".into(),
        ));
    }
    let block = blocks.swap_remove(0);
    if block.label != "PUBLIC KEY" {
        return Err(TrustError::WrongKeyType {
            expected,
            found: label_name(&block.label),
        });
    }
    Ok(block.der)
}

/// Parses an SPKI DER holding a P-256 public key.
pub(crate) fn p256_public_from_spki_der(der: &[u8]) -> Result<p256::PublicKey, TrustError> {
    check_len("public key", der.len() as u64)?;
    let spki = SubjectPublicKeyInfoRef::try_from(der)
        .map_err(|e| TrustError::KeyInvalid(format!("SubjectPublicKeyInfo does not parse: {e}")))?;
    require_p256(&spki.algorithm, PUBLIC_EXPECTED)?;
    p256::PublicKey::from_public_key_der(der).map_err(|e| TrustError::KeyInvalid(format!("not a point on P-256: {e}")))
}

/// Refuses a key whose algorithm is not EC on P-256, naming what it is instead.
fn require_p256(algorithm: &AlgorithmIdentifierRef<'_>, expected: &'static str) -> Result<(), TrustError> {
    let params = algorithm.parameters_oid().ok();
    if algorithm.oid != OID_EC_PUBLIC_KEY || params != Some(OID_P256) {
        return Err(TrustError::WrongKeyType {
            expected,
            found: algorithm_name(algorithm.oid, params),
        });
    }
    Ok(())
}

/// Refuses input larger than [`MAX_PEM_FILE_LEN`] before parsing it.
pub(crate) fn check_len(what: &'static str, size: u64) -> Result<(), TrustError> {
    if size > MAX_PEM_FILE_LEN {
        return Err(TrustError::TooLarge {
            what,
            size,
            limit: MAX_PEM_FILE_LEN,
        });
    }
    Ok(())
}

/// Reads a small text file, refusing anything larger than [`MAX_PEM_FILE_LEN`] without
/// reading it all.
pub(crate) fn read_text_file(path: &Path, what: &'static str) -> Result<String, TrustError> {
    let file = std::fs::File::open(path).map_err(|e| TrustError::io("read", path, e))?;
    let mut buf = Vec::new();
    file.take(MAX_PEM_FILE_LEN + 1)
        .read_to_end(&mut buf)
        .map_err(|e| TrustError::io("read", path, e))?;
    if buf.len() as u64 > MAX_PEM_FILE_LEN {
        check_len(what, std::fs::metadata(path).map_or(buf.len() as u64, |m| m.len()))?;
    }
    String::from_utf8(buf).map_err(|_| TrustError::PemInvalid(format!("{} is not a text file", path.display())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips_and_signatures_verify() {
        let k = VendorSigningKey::generate();
        let k2 = VendorSigningKey::from_pem(&k.to_pem()).unwrap();
        assert_eq!(k.public_key(), k2.public_key());
        let p = VendorPublicKey::from_pem(&k.public_key().to_pem()).unwrap();
        assert_eq!(p, k.public_key());
        let sig = k.sign(b"hello");
        p.verify(b"hello", &sig).unwrap();
        assert_eq!(p.verify(b"hellO", &sig).unwrap_err().code(), "signature_invalid");
        assert_eq!(p.verify(b"hello", b"junk").unwrap_err().code(), "signature_malformed");
        let other = VendorSigningKey::generate().public_key();
        assert_eq!(other.verify(b"hello", &sig).unwrap_err().code(), "signature_invalid");
        assert_eq!(p.fingerprint().len(), 64);
        assert!(!format!("{k:?}").contains("PRIVATE"));
    }

    #[test]
    fn halves_and_other_algorithms_are_wrong_key_types() {
        let k = VendorSigningKey::generate();
        let e = VendorSigningKey::from_pem(&k.public_key().to_pem()).unwrap_err();
        assert_eq!(e.code(), "wrong_key_type");
        assert!(e.to_string().contains("found a public key"), "{e}");
        let e = VendorPublicKey::from_pem(&k.to_pem()).unwrap_err();
        assert_eq!(e.code(), "wrong_key_type");
        // An Ed25519 public key (RFC 8410 example).
        let ed = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        let e = VendorPublicKey::from_pem(ed).unwrap_err();
        assert_eq!(e.code(), "wrong_key_type");
        assert!(e.to_string().contains("Ed25519"), "{e}");
        // An Ed25519 PKCS#8 private key, built at run time so no private key PEM sits in the tree.
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
        ];
        der.extend_from_slice(&[7u8; 32]);
        let ed = pem::encode("PRIVATE KEY", &der);
        let e = VendorSigningKey::from_pem(&ed).unwrap_err();
        assert_eq!(e.code(), "wrong_key_type");
        assert!(e.to_string().contains("Ed25519"), "{e}");
    }

    #[test]
    fn sec1_keys_with_parameters_block_are_accepted() {
        let k = VendorSigningKey::generate();
        let secret = p256::SecretKey::from(k.key.clone());
        let sec1 = secret.to_sec1_pem(p256::pkcs8::LineEnding::LF).unwrap();
        let text = format!(
            "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
            &*sec1
        );
        assert_eq!(VendorSigningKey::from_pem(&text).unwrap().public_key(), k.public_key());
    }

    #[test]
    fn files_are_private_and_never_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("vendor.pem");
        let k = VendorSigningKey::generate();
        k.write_pem_file(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(
            VendorSigningKey::read_pem_file(&path).unwrap().public_key(),
            k.public_key()
        );
        let e = VendorSigningKey::generate().write_pem_file(&path).unwrap_err();
        assert_eq!(e.code(), "io");
        let pub_path = dir.join("vendor.pub.pem");
        std::fs::write(&pub_path, k.public_key().to_pem()).unwrap();
        let p = VendorPublicKey::from_path_or_inline(pub_path.to_str().unwrap()).unwrap();
        assert_eq!(p, k.public_key());
        let p = VendorPublicKey::from_path_or_inline(&k.public_key().to_pem()).unwrap();
        assert_eq!(p, k.public_key());
        let e = VendorPublicKey::from_path_or_inline(dir.join("missing.pem").to_str().unwrap()).unwrap_err();
        assert_eq!(e.code(), "io");
        let big = dir.join("big.pem");
        std::fs::write(&big, vec![b'A'; MAX_PEM_FILE_LEN as usize + 10]).unwrap();
        assert_eq!(VendorPublicKey::read_pem_file(&big).unwrap_err().code(), "too_large");
    }
}
