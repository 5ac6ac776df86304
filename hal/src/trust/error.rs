//! The trust chain's error type: one variant per way a key file, signature or certificate
//! can be wrong, each with a stable [`TrustError::code`].

use std::path::PathBuf;

/// Why a vendor key, signature or key certificate was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The text is not a PEM document, or its base64 body does not decode.
    #[error("not a valid PEM document: {0}")]
    PemInvalid(String),
    /// A key of another algorithm (or the other half of a key pair) was given.
    #[error("wrong key type: expected {expected}, found {found}")]
    WrongKeyType {
        /// What the caller needed.
        expected: &'static str,
        /// What the input holds.
        found: String,
    },
    /// A key of the right type whose encoding or value is invalid.
    #[error("invalid key: {0}")]
    KeyInvalid(String),
    /// A password-protected PKCS#8 key.
    #[error("encrypted private keys are not supported; decrypt it first (openssl pkcs8 -in KEY -out PLAIN)")]
    EncryptedKey,
    /// A signature that does not parse (not DER ECDSA).
    #[error("malformed signature: {0}")]
    SignatureMalformed(String),
    /// A well-formed signature that does not verify.
    #[error("signature does not verify: {0}")]
    SignatureInvalid(String),
    /// A certificate that does not parse or misses what keyfloat needs.
    #[error("invalid certificate: {0}")]
    CertificateInvalid(String),
    /// An algorithm keyfloat does not verify (e.g. an RSA proof key).
    #[error("unsupported algorithm: {0}")]
    UnsupportedAlgorithm(String),
    /// A caller-supplied value out of range (empty serial, validity period ending before it starts...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Input larger than any legitimate key, certificate or signature.
    #[error("{what} is too large: {size} bytes (limit {limit})")]
    TooLarge {
        /// What was being read.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Reading or writing a file failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// `read` / `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The certificate builder refused its input.
    #[error("cannot build certificate: {0}")]
    CertificateBuild(String),
    /// The operating system's random source failed.
    #[error("no randomness available: {0}")]
    Rng(String),
}

impl TrustError {
    /// Stable code for logs, CLI messages and HTTP bodies; never renamed.
    pub const fn code(&self) -> &'static str {
        match self {
            Self::PemInvalid(_) => "pem_invalid",
            Self::WrongKeyType { .. } => "wrong_key_type",
            Self::KeyInvalid(_) => "key_invalid",
            Self::EncryptedKey => "encrypted_key",
            Self::SignatureMalformed(_) => "signature_malformed",
            Self::SignatureInvalid(_) => "signature_invalid",
            Self::CertificateInvalid(_) => "certificate_invalid",
            Self::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            Self::InvalidArgument(_) => "invalid_argument",
            Self::TooLarge { .. } => "too_large",
            Self::Io { .. } => "io",
            Self::CertificateBuild(_) => "certificate_build",
            Self::Rng(_) => "rng",
        }
    }

    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_failed() {
        let e = TrustError::WrongKeyType {
            expected: "a P-256 private key",
            found: "an RSA key".into(),
        };
        assert_eq!(e.code(), "wrong_key_type");
        assert_eq!(
            e.to_string(),
            "wrong key type: expected a P-256 private key, found an RSA key"
        );
        let e = TrustError::io(
            "read",
            std::path::Path::new("/x/vendor.pem"),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert!(e.to_string().starts_with("cannot read /x/vendor.pem: "), "{e}");
        assert_eq!(e.code(), "io");
    }
}
