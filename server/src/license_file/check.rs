//! The value checks of a license document ([`super::LicenseDoc::validate`]), one small
//! function per part. Messages name the file's own field names.

use std::collections::BTreeSet;

use super::{parse_rfc3339, LicenseDoc, LicenseFileError, FORMAT};
use crate::terms::{ConsumptionTerms, FeatureKind, FeatureTerms, LicenseAuth, LICENSE_TYPES, RESET_PERIODS};

const MAX_CODE_LEN: usize = 64;
const MAX_TEXT_LEN: usize = 256;

type Checked = Result<(), LicenseFileError>;

fn terms(msg: impl Into<String>) -> LicenseFileError {
    LicenseFileError::InvalidTerms(msg.into())
}

/// Every check, in the order a reader of the file meets the fields.
pub(super) fn document(doc: &LicenseDoc) -> Checked {
    format(&doc.format)?;
    if doc.license_id == 0 {
        return Err(terms("license_id must be at least 1"));
    }
    code("product", &doc.product)?;
    if let Some(name) = &doc.product_name {
        text("product_name", name)?;
    }
    auth(&doc.auth)?;
    limits(doc)?;
    if let Some(c) = &doc.consumption {
        consumption(c)?;
    } else if doc.license_type == "consumption" {
        return Err(terms("a consumption license needs consumption terms"));
    }
    features(&doc.features)?;
    validity(doc)?;
    serials(doc)?;
    if doc.issued_at.is_empty() {
        return Err(terms("issued_at is missing"));
    }
    parse_rfc3339("issued_at", &doc.issued_at)?;
    Ok(())
}

fn format(format: &str) -> Checked {
    if format == FORMAT {
        return Ok(());
    }
    let hint = if format.starts_with("keyfloat-license/") {
        "written by a newer keyfloat; upgrade to load it"
    } else {
        "expected \"keyfloat-license/1\""
    };
    Err(LicenseFileError::UnsupportedFormat(format!("{format:?}: {hint}")))
}

fn code(field: &str, s: &str) -> Checked {
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

fn text(field: &str, s: &str) -> Checked {
    if s.trim().is_empty() || s.len() > MAX_TEXT_LEN {
        return Err(terms(format!("{field} must have 1 to {MAX_TEXT_LEN} characters")));
    }
    if s.chars().any(char::is_control) {
        return Err(terms(format!("{field} must not contain control characters")));
    }
    Ok(())
}

fn auth(auth: &LicenseAuth) -> Checked {
    match auth {
        LicenseAuth::Key { license_key } => text("auth.license_key", license_key),
        LicenseAuth::User {
            username,
            password_hash,
        } => {
            text("auth.username", username)?;
            let hash = argon2::PasswordHash::new(password_hash)
                .map_err(|e| terms(format!("auth.password_hash is not a PHC string: {e}")))?;
            if !hash.algorithm.as_str().starts_with("argon2") {
                return Err(terms(format!(
                    "auth.password_hash uses {}, expected argon2id",
                    hash.algorithm
                )));
            }
            Ok(())
        }
    }
}

/// License type, seats, seat timeout, borrowing.
fn limits(doc: &LicenseDoc) -> Checked {
    if !LICENSE_TYPES.contains(&doc.license_type.as_str()) {
        return Err(terms(format!(
            "license_type {:?} is not one of {}",
            doc.license_type,
            LICENSE_TYPES.join(", ")
        )));
    }
    if !(1..=1_000_000).contains(&doc.floating_users) {
        return Err(terms("floating_users must be between 1 and 1000000"));
    }
    if !(1..=525_600).contains(&doc.floating_timeout_minutes) {
        return Err(terms("floating_timeout_minutes must be between 1 and 525600 (a year)"));
    }
    if doc.max_borrow_time_hours > 87_600 {
        return Err(terms("max_borrow_time_hours must be at most 87600 (ten years)"));
    }
    Ok(())
}

fn consumption(c: &ConsumptionTerms) -> Checked {
    if c.max_consumptions < 0 {
        return Err(terms("consumption.max_consumptions must not be negative"));
    }
    if c.max_overages < 0 {
        return Err(terms("consumption.max_overages must not be negative"));
    }
    match &c.reset_period {
        Some(p) if !RESET_PERIODS.contains(&p.as_str()) => Err(terms(format!(
            "consumption.reset_period {p:?} is not one of {}",
            RESET_PERIODS.join(", ")
        ))),
        _ => Ok(()),
    }
}

fn features(features: &[FeatureTerms]) -> Checked {
    let mut codes = BTreeSet::new();
    for f in features {
        code("feature code", &f.code)?;
        if !codes.insert(f.code.as_str()) {
            return Err(terms(format!("feature {:?} appears twice", f.code)));
        }
        feature(f)?;
    }
    Ok(())
}

fn feature(f: &FeatureTerms) -> Checked {
    let bad = |what: &str| Err(terms(format!("feature {:?}: {what}", f.code)));
    if let Some(name) = &f.name {
        text("feature name", name)?;
    }
    if f.floating_users == Some(0) {
        return bad("floating_users must be at least 1");
    }
    if f.floating_timeout_minutes == Some(0) {
        return bad("floating_timeout_minutes must be at least 1");
    }
    match (f.kind, f.max_consumption) {
        (FeatureKind::Consumption, None) => {
            return Err(terms(format!("consumption feature {:?} needs max_consumption", f.code)))
        }
        (_, Some(n)) if n < 0 => return bad("max_consumption must not be negative"),
        _ => {}
    }
    if f.max_overages < 0 {
        return bad("max_overages must not be negative");
    }
    Ok(())
}

/// The validity period parses, ends after it starts, and is bounded where the type needs it.
fn validity(doc: &LicenseDoc) -> Checked {
    let from = doc.valid_from_time()?;
    let until = doc.valid_until_time()?;
    if let (Some(from), Some(until)) = (from, until) {
        if until <= from {
            return Err(terms("valid_until must be after valid_from"));
        }
    }
    if matches!(doc.license_type.as_str(), "time-limited" | "subscription") && until.is_none() {
        return Err(terms(format!("a {} license needs valid_until", doc.license_type)));
    }
    Ok(())
}

fn serials(doc: &LicenseDoc) -> Checked {
    for s in &doc.allowed_serials {
        if s.is_empty() || s.len() > MAX_CODE_LEN || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(terms(format!("allowed serial {s:?} is not a key serial")));
        }
    }
    if !doc.allowed_serials.is_empty() && !doc.hardware_key_required {
        return Err(terms("allowed_serials only make sense with hardware_key_required"));
    }
    Ok(())
}
