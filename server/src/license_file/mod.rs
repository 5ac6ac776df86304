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

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

mod check;
mod signature;

pub use signature::{read_license_file, sign_license, verify_license, verify_license_bytes};
// The terms are the server's own type; re-exported under the names issuers have used.
pub use crate::terms::{
    ConsumptionTerms, FeatureKind, FeatureTerms, LicenseAuth, LicenseTerms, LICENSE_TYPES, RESET_PERIODS,
};

/// The `format` of documents this version reads and writes.
pub const FORMAT: &str = "keyfloat-license/1";

/// Largest license file accepted.
pub const MAX_LICENSE_FILE_LEN: u64 = 1024 * 1024;

/// First line of the signature block.
pub const SIGNATURE_BEGIN: &str = "-----BEGIN KEYFLOAT LICENSE SIGNATURE-----";
/// Last line of the signature block.
pub const SIGNATURE_END: &str = "-----END KEYFLOAT LICENSE SIGNATURE-----";

/// A license as the vendor issues it: the [`LicenseTerms`] (validity as RFC 3339 text)
/// inside an envelope of format, id and issue date. The JSON is flat, the terms' fields
/// between `license_id` and `issued_at`, exactly as files have always been written.
/// Unknown fields are ignored (newer issuers may add some); [`LicenseDoc::validate`] checks
/// the values. It dereferences to its terms (`doc.floating_users`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseDoc {
    /// Always [`FORMAT`].
    pub format: String,
    /// The license id (unique per vendor).
    pub license_id: u64,
    /// The terms; `valid_from`/`valid_until` are RFC 3339 text.
    #[serde(flatten)]
    pub terms: LicenseTerms<String>,
    /// When the vendor issued it (RFC 3339).
    #[serde(default)]
    pub issued_at: String,
}

impl std::ops::Deref for LicenseDoc {
    type Target = LicenseTerms<String>;

    fn deref(&self) -> &Self::Target {
        &self.terms
    }
}

impl std::ops::DerefMut for LicenseDoc {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.terms
    }
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
        LicenseFileError::InvalidTerms(format!(
            "{field} {s:?} is not an RFC 3339 time (e.g. 2027-01-31T00:00:00Z): {e}"
        ))
    })
}

impl LicenseDoc {
    /// A perpetual single-seat license with a 120-minute seat timeout, issued now.
    pub fn new(license_id: u64, product: impl Into<String>, auth: LicenseAuth) -> Self {
        Self {
            format: FORMAT.into(),
            license_id,
            terms: LicenseTerms::new(product, auth),
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

    /// The terms as the server keeps them: validity in µs since the Unix epoch.
    pub fn terms_micros(&self) -> Result<LicenseTerms, LicenseFileError> {
        self.terms.clone().map_times(|field, s| {
            let t = parse_rfc3339(field, &s)?;
            Ok((t.unix_timestamp_nanos() / 1000) as i64)
        })
    }

    /// Checks every value is in range; verification calls it, issuers should too.
    pub fn validate(&self) -> Result<(), LicenseFileError> {
        check::document(self)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use keyfloat_hal::trust::VendorSigningKey;
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

    /// Files signed before the terms type was shared (by `keyfloat license issue`, with a
    /// throw-away vendor key) still verify, and writing the parsed document again gives the
    /// signed JSON byte for byte: the flattened terms keep the file format.
    #[test]
    fn files_signed_by_earlier_versions_verify_and_reserialize_byte_for_byte() {
        let public = keyfloat_hal::trust::VendorPublicKey::from_pem(include_str!("fixtures/vendor.pub.pem")).unwrap();
        for text in [include_str!("fixtures/full.lic"), include_str!("fixtures/user.lic")] {
            let doc = verify_license(text, &public).unwrap();
            let json = &text[..text.find(&format!("\n{SIGNATURE_BEGIN}")).unwrap()];
            assert_eq!(serde_json::to_string_pretty(&doc).unwrap(), json);
        }
        let full = verify_license(include_str!("fixtures/full.lic"), &public).unwrap();
        assert_eq!(
            (full.license_id, full.floating_users, full.features.len()),
            (4242, 5, 3)
        );
        let terms = full.terms_micros().unwrap();
        assert_eq!(terms.valid_from, Some(1_767_225_600_000_000));
        // `+02:00`: two hours before midnight UTC.
        assert_eq!(terms.valid_until, Some(1_798_761_600_000_000 - 7_200_000_000));
        assert_eq!(terms.product, full.product);
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
