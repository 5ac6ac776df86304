//! Domain checks of license terms, shared by `addProduct` and license files: nonsense
//! terms (negative limits, zero seats, unknown periods, validity ending before it starts,
//! ids a JavaScript client cannot hold) are refused naming the field.

use super::{ConsumptionTerms, FeatureKind, FeatureTerms, LicenseTerms, LICENSE_TYPES, RESET_PERIODS};

/// Largest license id: ids are JSON numbers, exact in JavaScript only up to 2^53 − 1.
pub const MAX_LICENSE_ID: u64 = (1 << 53) - 1;

/// Most seats a license may have.
pub const MAX_SEATS: u32 = 1_000_000;

/// A term that makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct InvalidField {
    /// The request field (wire name).
    pub field: &'static str,
    /// Why.
    pub why: String,
}

fn bad(field: &'static str, why: impl Into<String>) -> Result<(), InvalidField> {
    Err(InvalidField { field, why: why.into() })
}

/// `1..=2^53-1`.
pub fn validate_license_id(id: u64) -> Result<(), InvalidField> {
    if id == 0 || id > MAX_LICENSE_ID {
        return bad("license_id", format!("{id} is outside 1..={MAX_LICENSE_ID}"));
    }
    Ok(())
}

/// Checks every term.
pub fn validate_terms(t: &LicenseTerms) -> Result<(), InvalidField> {
    if t.product.trim().is_empty() || t.product.len() > 256 {
        return bad("product", "must have 1 to 256 characters");
    }
    limits(t)?;
    match &t.consumption {
        Some(c) => consumption(c)?,
        None if t.license_type == "consumption" => {
            return bad("maxConsumptions", "a consumption license needs maxConsumptions")
        }
        None => {}
    }
    let mut codes = std::collections::BTreeSet::new();
    for f in &t.features {
        if f.code.trim().is_empty() || f.code.len() > 256 {
            return bad("features.code", "must have 1 to 256 characters");
        }
        if !codes.insert(f.code.as_str()) {
            return bad("features.code", format!("{:?} appears twice", f.code));
        }
        feature(f)?;
    }
    if let (Some(from), Some(until)) = (t.valid_from, t.valid_until) {
        if until <= from {
            return bad("validUntil", "must be after validFrom");
        }
    }
    for s in &t.allowed_serials {
        if s.is_empty() || s.len() > 64 || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return bad("allowedSerials", format!("{s:?} is not a key serial"));
        }
    }
    Ok(())
}

/// License type, seats, seat timeout, borrowing.
fn limits(t: &LicenseTerms) -> Result<(), InvalidField> {
    if !LICENSE_TYPES.contains(&t.license_type.as_str()) {
        return bad(
            "licenseType",
            format!("{:?} is not one of {}", t.license_type, LICENSE_TYPES.join(", ")),
        );
    }
    if !(1..=MAX_SEATS).contains(&t.floating_users) {
        return bad("floatingUsers", format!("must be between 1 and {MAX_SEATS}"));
    }
    if !(1..=525_600).contains(&t.floating_timeout_minutes) {
        return bad("floatingTimeout", "must be between 1 and 525600 minutes (a year)");
    }
    if t.max_borrow_time_hours > 87_600 {
        return bad("maxBorrowTime", "must be at most 87600 hours (ten years)");
    }
    Ok(())
}

fn consumption(c: &ConsumptionTerms) -> Result<(), InvalidField> {
    if c.max_consumptions < 0 {
        return bad("maxConsumptions", "must not be negative");
    }
    if c.max_overages < 0 {
        return bad("maxOverages", "must not be negative");
    }
    match &c.reset_period {
        Some(p) if !RESET_PERIODS.contains(&p.as_str()) => bad(
            "consumptionPeriod",
            format!("{p:?} is not one of {}", RESET_PERIODS.join(", ")),
        ),
        _ => Ok(()),
    }
}

/// One feature's numbers (its code is checked by the caller, which sees them all).
fn feature(f: &FeatureTerms) -> Result<(), InvalidField> {
    let named = |what: &str| format!("feature {:?}: {what}", f.code);
    if f.floating_users == Some(0) {
        return bad("features.floating_users", named("must be at least 1"));
    }
    if f.floating_timeout_minutes == Some(0) {
        return bad("features.floating_timeout", named("must be at least 1"));
    }
    if f.max_consumption.is_some_and(|n| n < 0) {
        return bad("features.max_consumption", named("must not be negative"));
    }
    if f.kind == FeatureKind::Consumption && f.max_consumption.is_none() {
        return bad(
            "features.max_consumption",
            format!("consumption feature {:?} needs max_consumption", f.code),
        );
    }
    if f.max_overages < 0 {
        return bad("features.max_overages", named("must not be negative"));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_fit_javascript() {
        assert!(validate_license_id(0).is_err());
        assert!(validate_license_id(1).is_ok());
        assert!(validate_license_id(MAX_LICENSE_ID).is_ok());
        assert_eq!(validate_license_id(MAX_LICENSE_ID + 1).unwrap_err().field, "license_id");
    }

    #[test]
    fn the_sample_is_valid_and_each_nonsense_term_is_named() {
        let ok = crate::model::tests::sample().terms;
        validate_terms(&ok).unwrap();
        type Edit = Box<dyn Fn(&mut LicenseTerms)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("floatingUsers", Box::new(|t| t.floating_users = 0)),
            (
                "validUntil",
                Box::new(|t| {
                    t.valid_from = Some(10);
                    t.valid_until = Some(5);
                }),
            ),
            ("licenseType", Box::new(|t| t.license_type = "forever".into())),
            ("product", Box::new(|t| t.product = String::new())),
        ];
        for (field, edit) in cases {
            let mut t = (*ok).clone();
            edit(&mut t);
            assert_eq!(validate_terms(&t).unwrap_err().field, field);
        }
    }
}
