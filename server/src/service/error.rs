//! What the licensing service refuses, in domain terms: no HTTP here. Each variant has a
//! stable wire [`LicenseError::code`]; its `Display` is the message a client reads. The
//! status code is chosen at the edge (`From<LicenseError> for ApiError` in `error.rs`).

use crate::store::StoreError;

/// A licensing call refused by the rules, or a storage failure under it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LicenseError {
    /// No such license (or removed meanwhile).
    #[error("License {0} not found")]
    LicenseNotFound(u64),
    /// The license named by id is not one of the named product's.
    #[error("License {id} not found for product {product}")]
    LicenseNotFoundForProduct {
        /// The license id asked for.
        id: u64,
        /// The product named with it.
        product: String,
    },
    /// No license of the named product is on this server.
    #[error("No license for product {0} on this server")]
    UnknownProduct(String),
    /// `valid_from` is in the future.
    #[error("License is not active yet")]
    LicenseNotActive,
    /// `valid_until` has passed.
    #[error("License is expired")]
    LicenseExpired,
    /// Every floating seat is taken.
    #[error("No floating slots left for this license")]
    FloatingNotAvailable,
    /// The user holds no live seat of the license.
    #[error("User {0} is not registered to this license")]
    UserNotRegistered(String),
    /// The license's terms forbid borrowing.
    #[error("This license cannot be borrowed")]
    BorrowNotAllowed,
    /// The requested borrow end is in the past or beyond the license's maximum.
    #[error("borrowed_until must be in the future and at most {max_hours} hours from now")]
    BorrowUntilNotValid {
        /// The license's `max_borrow_time_hours`.
        max_hours: u32,
    },
    /// A consumption call on a license that is not a consumption license.
    #[error("This license is not a consumption license")]
    NotConsumptionLicense,
    /// A negative amount where refunds are not allowed (`on` = `license` / `feature`).
    #[error("Negative consumptions are not allowed for this {on}")]
    NegativeConsumptions {
        /// `license` or `feature`.
        on: &'static str,
    },
    /// The license's consumption limit (with overages) is reached.
    #[error("Not enough consumptions left on this license")]
    LicenseNotEnoughConsumptions,
    /// The license has no feature with this code.
    #[error("Feature {0} not found on this license")]
    FeatureNotFound(String),
    /// A consumption call on an activation feature.
    #[error("Feature {0} is not a consumption feature")]
    FeatureNotConsumption(String),
    /// The feature's consumption limit is reached.
    #[error("Not enough consumptions left on feature {0}")]
    FeatureNotEnoughConsumptions(String),
    /// Every floating slot of the feature is taken.
    #[error("No floating slots left for feature {0}")]
    FeatureNotAvailable(String),
    /// A request value the arithmetic refuses (overflow, a refund below zero).
    #[error("Invalid parameter {field}: {why}")]
    InvalidParameter {
        /// The request field (wire name).
        field: &'static str,
        /// Why.
        why: String,
    },
    /// The store failed or is busy.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LicenseError {
    /// Stable snake_case code (the `code` of the error body); never renamed.
    pub const fn code(&self) -> &'static str {
        match self {
            Self::LicenseNotFound(_) | Self::LicenseNotFoundForProduct { .. } => "license_not_found",
            Self::UnknownProduct(_) => "unknown_product",
            Self::LicenseNotActive => "license_not_active",
            Self::LicenseExpired => "license_expired",
            Self::FloatingNotAvailable => "floating_not_available",
            Self::UserNotRegistered(_) => "user_not_registered",
            Self::BorrowNotAllowed => "license_borrow_not_allowed",
            Self::BorrowUntilNotValid { .. } => "borrow_until_not_valid",
            Self::NotConsumptionLicense => "license_not_consumption",
            Self::NegativeConsumptions { .. } => "negative_consumptions_not_allowed",
            Self::LicenseNotEnoughConsumptions => "license_not_enough_consumptions",
            Self::FeatureNotFound(_) => "feature_not_found",
            Self::FeatureNotConsumption(_) => "feature_not_consumption",
            Self::FeatureNotEnoughConsumptions(_) => "feature_not_enough_consumptions",
            Self::FeatureNotAvailable(_) => "feature_not_available",
            Self::InvalidParameter { .. } => "invalid_parameters",
            Self::Store(StoreError::Busy) => "server_busy",
            Self::Store(StoreError::NotLeader) => "not_leader",
            Self::Store(_) => "internal_error",
        }
    }
}
