//! Signed license files: the vendor-issued JSON documents the server loads.
//!
//! A file is the license as pretty-printed JSON, followed by an armored signature block:
//!
//! ```text
//! {
//!   "format": "keyfloat-license/1",
//!   ...
//! }
//! -----BEGIN KEYFLOAT LICENSE SIGNATURE-----
//! <base64 of the DER ECDSA P-256/SHA-256 signature over the exact JSON bytes above>
//! -----END KEYFLOAT LICENSE SIGNATURE-----
//! ```
//!
//! The signature covers the JSON text byte for byte (everything before the newline that
//! precedes the BEGIN line), and the block around it has exactly one valid form, so changing
//! any single byte of a file makes it fail verification. The JSON is parsed only after the
//! signature verified.
//!
//! ```
//! use keyfloat_hal::trust::VendorSigningKey;
//! use keyfloat_server::license_file::{sign_license, verify_license, LicenseAuth, LicenseDoc};
//!
//! let vendor = VendorSigningKey::generate();
//! let doc = LicenseDoc::new(1001, "cad", LicenseAuth::Key { license_key: "AAAA-BBBB".into() });
//! let text = sign_license(&doc, &vendor);
//! assert_eq!(verify_license(&text, &vendor.public_key()).unwrap(), doc);
//! let tampered = text.replacen("\"floating_users\": 1", "\"floating_users\": 9", 1);
//! assert_eq!(verify_license(&tampered, &vendor.public_key()).unwrap_err().code(), "signature_invalid");
//! ```

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use keyfloat_hal::trust::{TrustError, VendorPublicKey, VendorSigningKey};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The `format` of documents this version reads and writes.
pub const FORMAT: &str = "keyfloat-license/1";

/// Largest license file accepted.
pub const MAX_LICENSE_FILE_LEN: u64 = 1024 * 1024;

/// First line of the signature block.
pub const SIGNATURE_BEGIN: &str = "-----BEGIN KEYFLOAT LICENSE SIGNATURE-----";
/// Last line of the signature block.
pub const SIGNATURE_END: &str = "-----END KEYFLOAT LICENSE SIGNATURE-----";

/// License types the server implements.
pub const LICENSE_TYPES: [&str; 4] = ["perpetual", "time-limited", "consumption", "subscription"];
/// Consumption reset periods (LicenseSpring's names).
pub const RESET_PERIODS: [&str; 4] = ["daily", "weekly", "monthly", "annually"];

const MAX_CODE_LEN: usize = 64;
const MAX_TEXT_LEN: usize = 256;

/// How an application authorises against the license.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum LicenseAuth {
    /// Key-based: the application presents a license key.
    Key {
        /// The license key, e.g. `AAAA-BBBB-CCCC-DDDD`.
        license_key: String,
    },
    /// User-based: the application presents a user name and password.
    User {
        /// The license user (usually an e-mail address).
        username: String,
        /// Argon2 PHC string (`$argon2id$v=19$...`); the server verifies passwords against it.
        password_hash: String,
    },
}

/// Consumption terms of a consumption license.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumptionTerms {
    /// Included consumptions.
    pub max_consumptions: i64,
    /// No upper limit at all.
    #[serde(default)]
    pub allow_unlimited: bool,
    /// Overages beyond `max_consumptions` allowed.
    #[serde(default)]
    pub allow_overages: bool,
    /// Overage cap; 0 with `allow_overages` means unlimited overages (LicenseSpring rule).
    #[serde(default)]
    pub max_overages: i64,
    /// Negative amounts (refunds) allowed.
    #[serde(default)]
    pub allow_negative: bool,
    /// Refunds may take the total below zero (credit). Off: a total never goes below 0.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_negative_total: bool,
    /// `daily`, `weekly`, `monthly`, `annually`.
    #[serde(default)]
    pub reset_period: Option<String>,
}

/// Activation or consumption feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// On/off feature; floating when it has `floating_users`.
    Activation,
    /// Counted feature.
    Consumption,
}

/// One feature of a license.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureTerms {
    /// Feature code.
    pub code: String,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Kind.
    pub kind: FeatureKind,
    /// Floating slots; `None` = not a floating feature.
    #[serde(default)]
    pub floating_users: Option<u32>,
    /// Slot timeout; defaults to the license's.
    #[serde(default)]
    pub floating_timeout_minutes: Option<u32>,
    /// Consumption features: included consumptions.
    #[serde(default)]
    pub max_consumption: Option<i64>,
    /// Overages allowed.
    #[serde(default)]
    pub allow_overages: bool,
    /// Overage cap (0 with `allow_overages` = unlimited).
    #[serde(default)]
    pub max_overages: i64,
}

/// A license as the vendor issues it. Unknown fields are ignored (newer issuers may add
/// some); [`LicenseDoc::validate`] checks the values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseDoc {
    /// Always [`FORMAT`].
    pub format: String,
    /// The license id (unique per vendor).
    pub license_id: u64,
    /// Product short code.
    pub product: String,
    /// Product display name.
    #[serde(default)]
    pub product_name: Option<String>,
    /// Key or user authorisation.
    pub auth: LicenseAuth,
    /// One of [`LICENSE_TYPES`].
    #[serde(default = "default_license_type")]
    pub license_type: String,
    /// Floating seats.
    #[serde(default = "default_floating_users")]
    pub floating_users: u32,
    /// A seat is released after this long without re-registration.
    #[serde(default = "default_floating_timeout")]
    pub floating_timeout_minutes: u32,
    /// Longest borrow; 0 = borrowing not allowed.
    #[serde(default)]
    pub max_borrow_time_hours: u32,
    /// Consumption terms (required for `consumption` licenses).
    #[serde(default)]
    pub consumption: Option<ConsumptionTerms>,
    /// Features.
    #[serde(default)]
    pub features: Vec<FeatureTerms>,
    /// Not valid before (RFC 3339).
    #[serde(default)]
    pub valid_from: Option<String>,
    /// Not valid after (RFC 3339).
    #[serde(default)]
    pub valid_until: Option<String>,
    /// Every action first checks for a valid, vendor-provisioned hardware key.
    #[serde(default)]
    pub hardware_key_required: bool,
    /// Key serials the license may run with (empty = any key the vendor provisioned).
    #[serde(default)]
    pub allowed_serials: Vec<String>,
    /// When the vendor issued it (RFC 3339).
    #[serde(default)]
    pub issued_at: String,
}

fn default_license_type() -> String {
    "perpetual".into()
}
fn default_floating_users() -> u32 {
    1
}
fn default_floating_timeout() -> u32 {
    120
}

/// Why a license file was rejected. Each variant has a stable [`LicenseFileError::code`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LicenseFileError {
    /// The file is larger than [`MAX_LICENSE_FILE_LEN`].
    #[error("license file is too large: {size} bytes (limit {limit})")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The content is not a license file at all.
    #[error("not a keyfloat license file (expected a JSON document followed by a signature block)")]
    NotALicense,
    /// A JSON document without a signature block (unsigned, or cut off before the block).
    #[error("the license is not signed: no \"{SIGNATURE_BEGIN}\" line (unsigned or truncated file)")]
    MissingSignature,
    /// The signature block is cut off.
    #[error("the license file is truncated: the signature block has no \"{SIGNATURE_END}\" line")]
    Truncated,
    /// The signature block does not have its one valid form.
    #[error("malformed signature block: {0}")]
    SignatureBlockMalformed(String),
    /// The signature does not verify: the file was changed, or another vendor key signed it.
    #[error("license signature does not verify: {0}")]
    SignatureInvalid(String),
    /// Signed, but not a license document.
    #[error("license JSON is invalid: {0}")]
    JsonInvalid(String),
    /// A `format` this version does not read.
    #[error("unsupported license format: {0}")]
    UnsupportedFormat(String),
    /// The terms are out of range.
    #[error("invalid license terms: {0}")]
    InvalidTerms(String),
    /// Reading the file failed.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl LicenseFileError {
    /// Stable code for logs, CLI output and HTTP bodies; never renamed.
    pub const fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::NotALicense => "not_a_license",
            Self::MissingSignature => "missing_signature",
            Self::Truncated => "truncated",
            Self::SignatureBlockMalformed(_) => "signature_block_malformed",
            Self::SignatureInvalid(_) => "signature_invalid",
            Self::JsonInvalid(_) => "json_invalid",
            Self::UnsupportedFormat(_) => "unsupported_format",
            Self::InvalidTerms(_) => "invalid_terms",
            Self::Io { .. } => "io",
        }
    }
}

fn terms(msg: impl Into<String>) -> LicenseFileError {
    LicenseFileError::InvalidTerms(msg.into())
}

/// The current time as RFC 3339 UTC with whole seconds (`2026-01-31T12:00:00Z`).
pub fn now_rfc3339() -> String {
    format_rfc3339(OffsetDateTime::now_utc())
}

/// Formats a time as RFC 3339 UTC with whole seconds.
pub fn format_rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

/// Parses an RFC 3339 time (any offset).
pub fn parse_rfc3339(field: &str, s: &str) -> Result<OffsetDateTime, LicenseFileError> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
        terms(format!(
            "{field} {s:?} is not an RFC 3339 time (e.g. 2027-01-31T00:00:00Z): {e}"
        ))
    })
}

fn check_code(field: &str, s: &str) -> Result<(), LicenseFileError> {
    if s.is_empty() || s.len() > MAX_CODE_LEN {
        return Err(terms(format!("{field} must have 1 to {MAX_CODE_LEN} characters")));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(terms(format!(
            "{field} {s:?} may only hold letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(())
}

fn check_text(field: &str, s: &str) -> Result<(), LicenseFileError> {
    if s.trim().is_empty() || s.len() > MAX_TEXT_LEN {
        return Err(terms(format!("{field} must have 1 to {MAX_TEXT_LEN} characters")));
    }
    if s.chars().any(char::is_control) {
        return Err(terms(format!("{field} must not contain control characters")));
    }
    Ok(())
}

impl LicenseDoc {
    /// A perpetual single-seat license with a 120-minute seat timeout, issued now.
    pub fn new(license_id: u64, product: impl Into<String>, auth: LicenseAuth) -> Self {
        Self {
            format: FORMAT.into(),
            license_id,
            product: product.into(),
            product_name: None,
            auth,
            license_type: default_license_type(),
            floating_users: default_floating_users(),
            floating_timeout_minutes: default_floating_timeout(),
            max_borrow_time_hours: 0,
            consumption: None,
            features: Vec::new(),
            valid_from: None,
            valid_until: None,
            hardware_key_required: false,
            allowed_serials: Vec::new(),
            issued_at: now_rfc3339(),
        }
    }

    /// `valid_from`, parsed.
    pub fn valid_from_time(&self) -> Result<Option<OffsetDateTime>, LicenseFileError> {
        self.valid_from
            .as_deref()
            .map(|s| parse_rfc3339("valid_from", s))
            .transpose()
    }

    /// `valid_until`, parsed.
    pub fn valid_until_time(&self) -> Result<Option<OffsetDateTime>, LicenseFileError> {
        self.valid_until
            .as_deref()
            .map(|s| parse_rfc3339("valid_until", s))
            .transpose()
    }

    /// Checks every value is in range; verification calls it, issuers should too.
    pub fn validate(&self) -> Result<(), LicenseFileError> {
        if self.format != FORMAT {
            let hint = if self.format.starts_with("keyfloat-license/") {
                "written by a newer keyfloat; upgrade to load it"
            } else {
                "expected \"keyfloat-license/1\""
            };
            return Err(LicenseFileError::UnsupportedFormat(format!(
                "{:?}: {hint}",
                self.format
            )));
        }
        if self.license_id == 0 {
            return Err(terms("license_id must be at least 1"));
        }
        check_code("product", &self.product)?;
        if let Some(name) = &self.product_name {
            check_text("product_name", name)?;
        }
        match &self.auth {
            LicenseAuth::Key { license_key } => check_text("auth.license_key", license_key)?,
            LicenseAuth::User {
                username,
                password_hash,
            } => {
                check_text("auth.username", username)?;
                let hash = argon2::PasswordHash::new(password_hash)
                    .map_err(|e| terms(format!("auth.password_hash is not a PHC string: {e}")))?;
                if !hash.algorithm.as_str().starts_with("argon2") {
                    return Err(terms(format!(
                        "auth.password_hash uses {}, expected argon2id",
                        hash.algorithm
                    )));
                }
            }
        }
        if !LICENSE_TYPES.contains(&self.license_type.as_str()) {
            return Err(terms(format!(
                "license_type {:?} is not one of {}",
                self.license_type,
                LICENSE_TYPES.join(", ")
            )));
        }
        if !(1..=1_000_000).contains(&self.floating_users) {
            return Err(terms("floating_users must be between 1 and 1000000"));
        }
        if !(1..=525_600).contains(&self.floating_timeout_minutes) {
            return Err(terms("floating_timeout_minutes must be between 1 and 525600 (a year)"));
        }
        if self.max_borrow_time_hours > 87_600 {
            return Err(terms("max_borrow_time_hours must be at most 87600 (ten years)"));
        }
        match (&self.consumption, self.license_type.as_str()) {
            (None, "consumption") => return Err(terms("a consumption license needs consumption terms")),
            (Some(c), _) => {
                if c.max_consumptions < 0 {
                    return Err(terms("consumption.max_consumptions must not be negative"));
                }
                if c.max_overages < 0 {
                    return Err(terms("consumption.max_overages must not be negative"));
                }
                if let Some(p) = &c.reset_period {
                    if !RESET_PERIODS.contains(&p.as_str()) {
                        return Err(terms(format!(
                            "consumption.reset_period {p:?} is not one of {}",
                            RESET_PERIODS.join(", ")
                        )));
                    }
                }
            }
            (None, _) => {}
        }
        let mut codes = BTreeSet::new();
        for f in &self.features {
            check_code("feature code", &f.code)?;
            if !codes.insert(f.code.as_str()) {
                return Err(terms(format!("feature {:?} appears twice", f.code)));
            }
            if let Some(name) = &f.name {
                check_text("feature name", name)?;
            }
            if f.floating_users == Some(0) {
                return Err(terms(format!(
                    "feature {:?}: floating_users must be at least 1",
                    f.code
                )));
            }
            if f.floating_timeout_minutes == Some(0) {
                return Err(terms(format!(
                    "feature {:?}: floating_timeout_minutes must be at least 1",
                    f.code
                )));
            }
            match (f.kind, f.max_consumption) {
                (FeatureKind::Consumption, None) => {
                    return Err(terms(format!("consumption feature {:?} needs max_consumption", f.code)))
                }
                (_, Some(n)) if n < 0 => {
                    return Err(terms(format!(
                        "feature {:?}: max_consumption must not be negative",
                        f.code
                    )))
                }
                _ => {}
            }
            if f.max_overages < 0 {
                return Err(terms(format!(
                    "feature {:?}: max_overages must not be negative",
                    f.code
                )));
            }
        }
        let from = self.valid_from_time()?;
        let until = self.valid_until_time()?;
        if let (Some(from), Some(until)) = (from, until) {
            if until <= from {
                return Err(terms("valid_until must be after valid_from"));
            }
        }
        if matches!(self.license_type.as_str(), "time-limited" | "subscription") && until.is_none() {
            return Err(terms(format!("a {} license needs valid_until", self.license_type)));
        }
        for s in &self.allowed_serials {
            if s.is_empty() || s.len() > MAX_CODE_LEN || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(terms(format!("allowed serial {s:?} is not a key serial")));
            }
        }
        if !self.allowed_serials.is_empty() && !self.hardware_key_required {
            return Err(terms("allowed_serials only make sense with hardware_key_required"));
        }
        if self.issued_at.is_empty() {
            return Err(terms("issued_at is missing"));
        }
        parse_rfc3339("issued_at", &self.issued_at)?;
        Ok(())
    }
}

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn vendor() -> &'static VendorSigningKey {
        static V: OnceLock<VendorSigningKey> = OnceLock::new();
        V.get_or_init(VendorSigningKey::generate)
    }

    fn small_doc() -> LicenseDoc {
        let mut d = LicenseDoc::new(
            7,
            "cad",
            LicenseAuth::Key {
                license_key: "AAAA-BBBB".into(),
            },
        );
        d.issued_at = "2026-01-01T00:00:00Z".into();
        d
    }

    fn full_doc() -> LicenseDoc {
        let mut d = small_doc();
        d.product_name = Some("CAD Pro".into());
        d.license_type = "consumption".into();
        d.floating_users = 5;
        d.floating_timeout_minutes = 30;
        d.max_borrow_time_hours = 48;
        d.consumption = Some(ConsumptionTerms {
            max_consumptions: 100,
            allow_unlimited: false,
            allow_overages: true,
            max_overages: 10,
            allow_negative: false,
            allow_negative_total: false,
            reset_period: Some("monthly".into()),
        });
        d.features = vec![
            FeatureTerms {
                code: "render".into(),
                name: Some("Render".into()),
                kind: FeatureKind::Consumption,
                floating_users: None,
                floating_timeout_minutes: None,
                max_consumption: Some(50),
                allow_overages: false,
                max_overages: 0,
            },
            FeatureTerms {
                code: "export".into(),
                name: None,
                kind: FeatureKind::Activation,
                floating_users: Some(2),
                floating_timeout_minutes: Some(15),
                max_consumption: None,
                allow_overages: false,
                max_overages: 0,
            },
        ];
        d.valid_from = Some("2026-01-01T00:00:00Z".into());
        d.valid_until = Some("2027-01-01T00:00:00Z".into());
        d.hardware_key_required = true;
        d.allowed_serials = vec!["12345678".into()];
        d
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let doc = full_doc();
        doc.validate().unwrap();
        let text = sign_license(&doc, vendor());
        assert!(text.starts_with("{\n  \"format\": \"keyfloat-license/1\""), "{text}");
        assert!(text.ends_with(&format!("{SIGNATURE_END}\n")));
        assert_eq!(verify_license(&text, &vendor().public_key()).unwrap(), doc);
        // A final newline is optional (editors strip it), nothing else is.
        let trimmed = text.strip_suffix('\n').unwrap();
        assert_eq!(verify_license(trimmed, &vendor().public_key()).unwrap(), doc);
    }

    #[test]
    fn every_single_byte_change_fails() {
        let text = sign_license(&small_doc(), vendor());
        let public = vendor().public_key();
        let bytes = text.as_bytes();
        for i in 0..bytes.len() {
            for replacement in [bytes[i] ^ 0x01, b' ', b'\n', b'A'] {
                if replacement == bytes[i] {
                    continue;
                }
                let mut changed = bytes.to_vec();
                changed[i] = replacement;
                let r = verify_license_bytes(&changed, &public);
                assert!(r.is_err(), "byte {i} changed to {replacement:#x} still verifies");
            }
        }
    }

    #[test]
    fn wrong_key_missing_signature_truncation_and_garbage_have_distinct_codes() {
        let text = sign_license(&small_doc(), vendor());
        let other = VendorSigningKey::generate().public_key();
        let public = vendor().public_key();
        assert_eq!(verify_license(&text, &other).unwrap_err().code(), "signature_invalid");
        let json = serde_json::to_string_pretty(&small_doc()).unwrap();
        assert_eq!(verify_license(&json, &public).unwrap_err().code(), "missing_signature");
        let cut = &text[..text.find(SIGNATURE_END).unwrap() + 5];
        assert_eq!(verify_license(cut, &public).unwrap_err().code(), "truncated");
        assert_eq!(
            verify_license(&text[..20], &public).unwrap_err().code(),
            "missing_signature"
        );
        assert_eq!(verify_license("garbage", &public).unwrap_err().code(), "not_a_license");
        assert_eq!(verify_license("", &public).unwrap_err().code(), "not_a_license");
        let extra = format!("{text}more\n");
        assert_eq!(
            verify_license(&extra, &public).unwrap_err().code(),
            "signature_block_malformed"
        );
        let crlf = text.replace('\n', "\r\n");
        let e = verify_license(&crlf, &public).unwrap_err();
        assert!(matches!(e.code(), "missing_signature" | "signature_invalid"), "{e}");
        let huge = vec![b' '; MAX_LICENSE_FILE_LEN as usize + 1];
        assert_eq!(verify_license_bytes(&huge, &public).unwrap_err().code(), "too_large");
    }

    #[test]
    fn signed_garbage_json_and_bad_terms_are_rejected_after_the_signature() {
        let public = vendor().public_key();
        let sign_raw = |json: &str| {
            let sig = base64::engine::general_purpose::STANDARD.encode(vendor().sign(json.as_bytes()));
            format!("{json}\n{SIGNATURE_BEGIN}\n{sig}\n{SIGNATURE_END}\n")
        };
        assert_eq!(
            verify_license(&sign_raw("{not json"), &public).unwrap_err().code(),
            "json_invalid"
        );
        assert_eq!(
            verify_license(&sign_raw("{}"), &public).unwrap_err().code(),
            "json_invalid"
        );
        let mut doc = small_doc();
        doc.format = "keyfloat-license/2".into();
        let e = verify_license(&sign_license(&doc, vendor()), &public).unwrap_err();
        assert_eq!(e.code(), "unsupported_format");
        assert!(e.to_string().contains("newer keyfloat"), "{e}");
        // Unknown fields are ignored: newer issuers may add some.
        let mut v = serde_json::to_value(small_doc()).unwrap();
        v["future_field"] = serde_json::json!(1);
        let json = serde_json::to_string_pretty(&v).unwrap();
        assert_eq!(verify_license(&sign_raw(&json), &public).unwrap(), small_doc());
    }

    type Mutation = fn(&mut LicenseDoc);

    #[test]
    fn validate_names_the_bad_value() {
        let cases: Vec<(Mutation, &str)> = vec![
            (|d| d.license_id = 0, "license_id"),
            (|d| d.product = "a b".into(), "product"),
            (|d| d.license_type = "forever".into(), "license_type"),
            (|d| d.floating_users = 0, "floating_users"),
            (|d| d.floating_timeout_minutes = 0, "floating_timeout_minutes"),
            (|d| d.license_type = "consumption".into(), "consumption terms"),
            (|d| d.license_type = "time-limited".into(), "valid_until"),
            (|d| d.valid_until = Some("tomorrow".into()), "valid_until"),
            (
                |d| {
                    d.valid_from = Some("2027-01-01T00:00:00Z".into());
                    d.valid_until = Some("2026-01-01T00:00:00Z".into());
                },
                "after valid_from",
            ),
            (|d| d.allowed_serials = vec!["1".into()], "hardware_key_required"),
            (
                |d| {
                    d.auth = LicenseAuth::User {
                        username: "a@b.c".into(),
                        password_hash: "plaintext".into(),
                    }
                },
                "password_hash",
            ),
            (
                |d| {
                    d.features = vec![FeatureTerms {
                        code: "f".into(),
                        name: None,
                        kind: FeatureKind::Consumption,
                        floating_users: None,
                        floating_timeout_minutes: None,
                        max_consumption: None,
                        allow_overages: false,
                        max_overages: 0,
                    }]
                },
                "max_consumption",
            ),
            (|d| d.issued_at = String::new(), "issued_at"),
        ];
        for (mutate, needle) in cases {
            let mut d = small_doc();
            mutate(&mut d);
            let e = d.validate().unwrap_err();
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
        let mut d = small_doc();
        d.auth = LicenseAuth::User {
            username: "a@b.c".into(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG".into(),
        };
        d.validate().unwrap();
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let e = verify_license_bytes(&bytes, &vendor().public_key()).unwrap_err();
            prop_assert!(!e.code().is_empty());
        }

        #[test]
        fn garbage_signature_blocks_never_panic(json in "\\{[ -~]{0,64}", b64 in "[A-Za-z0-9+/=\n -]{0,200}") {
            let text = format!("{json}\n{SIGNATURE_BEGIN}\n{b64}\n{SIGNATURE_END}\n");
            let e = verify_license(&text, &vendor().public_key()).unwrap_err();
            prop_assert!(matches!(
                e.code(),
                "signature_block_malformed" | "signature_invalid" | "truncated"
            ), "{}", e);
        }

        #[test]
        fn any_truncation_fails(cut in 0usize..2000) {
            let text = sign_license(&full_doc(), vendor());
            let cut = cut % text.len().saturating_sub(1).max(1);
            prop_assert!(verify_license_bytes(&text.as_bytes()[..cut], &vendor().public_key()).is_err());
        }

        #[test]
        fn any_byte_change_of_a_full_license_fails(pos in 0usize..4096, delta in 1u8..=255) {
            let text = sign_license(&full_doc(), vendor());
            let mut bytes = text.into_bytes();
            let pos = pos % bytes.len();
            bytes[pos] = bytes[pos].wrapping_add(delta);
            prop_assert!(verify_license_bytes(&bytes, &vendor().public_key()).is_err());
        }
    }
}
