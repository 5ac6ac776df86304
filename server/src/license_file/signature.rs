//! The signed form of a license file: sign, split the signature block off, verify, read.

use std::io::Read;
use std::path::Path;

use base64::Engine as _;
use keyfloat_hal::trust::{TrustError, VendorPublicKey, VendorSigningKey};

use super::{LicenseDoc, LicenseFileError, MAX_LICENSE_FILE_LEN, SIGNATURE_BEGIN, SIGNATURE_END};

/// Signs `doc` with the vendor key and returns the complete file text. Does not call
/// [`LicenseDoc::validate`] (issuers do, before signing).
pub fn sign_license(doc: &LicenseDoc, vendor: &VendorSigningKey) -> String {
    // Serializing plain structs with string keys to a String cannot fail.
    let json = serde_json::to_string_pretty(doc).unwrap_or_default();
    let sig = base64::engine::general_purpose::STANDARD.encode(vendor.sign(json.as_bytes()));
    format!("{json}\n{SIGNATURE_BEGIN}\n{sig}\n{SIGNATURE_END}\n")
}

/// Verifies a license file's signature with the vendor's public key, then parses and
/// validates the document.
pub fn verify_license(text: &str, vendor: &VendorPublicKey) -> Result<LicenseDoc, LicenseFileError> {
    verify_license_bytes(text.as_bytes(), vendor)
}

/// [`verify_license`] over raw bytes (a file that is not UTF-8 is rejected, not a panic).
pub fn verify_license_bytes(bytes: &[u8], vendor: &VendorPublicKey) -> Result<LicenseDoc, LicenseFileError> {
    if bytes.len() as u64 > MAX_LICENSE_FILE_LEN {
        return Err(LicenseFileError::TooLarge {
            size: bytes.len() as u64,
            limit: MAX_LICENSE_FILE_LEN,
        });
    }
    let (json, signature) = split(bytes)?;
    if let Err(e) = vendor.verify(json, &signature) {
        return Err(match e {
            TrustError::SignatureMalformed(m) => LicenseFileError::SignatureBlockMalformed(m),
            other => {
                let hint = if json.contains(&b'\r') {
                    " (the file's line endings were changed)"
                } else {
                    ""
                };
                LicenseFileError::SignatureInvalid(format!(
                    "the file was modified or is signed by another vendor key than {}{hint}: {other}",
                    vendor.fingerprint_short()
                ))
            }
        });
    }
    let doc: LicenseDoc = serde_json::from_slice(json).map_err(|e| LicenseFileError::JsonInvalid(e.to_string()))?;
    doc.validate()?;
    Ok(doc)
}

/// Reads and verifies a license file (see [`verify_license`]), refusing files above
/// [`MAX_LICENSE_FILE_LEN`] without reading them whole.
pub fn read_license_file(path: impl AsRef<Path>, vendor: &VendorPublicKey) -> Result<LicenseDoc, LicenseFileError> {
    let path = path.as_ref();
    let io = |source| LicenseFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut buf = Vec::new();
    file.take(MAX_LICENSE_FILE_LEN + 1).read_to_end(&mut buf).map_err(io)?;
    if buf.len() as u64 > MAX_LICENSE_FILE_LEN {
        let size = std::fs::metadata(path).map_or(buf.len() as u64, |m| m.len());
        return Err(LicenseFileError::TooLarge {
            size,
            limit: MAX_LICENSE_FILE_LEN,
        });
    }
    verify_license_bytes(&buf, vendor)
}

/// Splits a file into the signed JSON bytes and the decoded signature. The block must be
/// exactly `\nBEGIN\n<base64>\nEND` plus an optional final `\n`.
fn split(bytes: &[u8]) -> Result<(&[u8], Vec<u8>), LicenseFileError> {
    let begin = format!("\n{SIGNATURE_BEGIN}\n");
    let Some(pos) = find(bytes, begin.as_bytes()) else {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        return Err(if first == Some(&b'{') {
            LicenseFileError::MissingSignature
        } else {
            LicenseFileError::NotALicense
        });
    };
    let json = &bytes[..pos];
    let block = &bytes[pos + begin.len()..];
    let Some(end) = find(block, SIGNATURE_END.as_bytes()) else {
        return Err(LicenseFileError::Truncated);
    };
    let tail = &block[end + SIGNATURE_END.len()..];
    if !(tail.is_empty() || tail == b"\n") {
        return Err(LicenseFileError::SignatureBlockMalformed(format!(
            "{} unexpected bytes after the \"{SIGNATURE_END}\" line",
            tail.len()
        )));
    }
    let Some(b64) = block[..end].strip_suffix(b"\n") else {
        return Err(LicenseFileError::SignatureBlockMalformed(
            "the END line does not start a new line".into(),
        ));
    };
    if b64.len() > 512 {
        return Err(LicenseFileError::SignatureBlockMalformed(
            "signature is too long".into(),
        ));
    }
    let signature = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| LicenseFileError::SignatureBlockMalformed(format!("signature is not base64: {e}")))?;
    Ok((json, signature))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
