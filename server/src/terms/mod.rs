//! License terms: one definition for what `addProduct` stores and what a signed license
//! file carries ([`LicenseTerms`]), and the domain checks of those terms ([`validate_terms`]).

use serde::{Deserialize, Serialize};

mod validate;

pub use validate::{validate_license_id, validate_terms, InvalidField, MAX_LICENSE_ID, MAX_SEATS};

/// License types the server implements.
pub const LICENSE_TYPES: [&str; 4] = ["perpetual", "time-limited", "consumption", "subscription"];
/// Consumption reset periods (LicenseSpring's names).
pub const RESET_PERIODS: [&str; 4] = ["daily", "weekly", "monthly", "annually"];

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

/// The static terms of a license. `Time` is how the validity period is written: µs since
/// the Unix epoch in the server's model and store (the default), RFC 3339 text in a signed
/// license file ([`crate::license_file::LicenseDoc`] embeds `LicenseTerms<String>`).
/// The serde defaults are those of license files (older and hand-written files omit them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseTerms<Time = i64> {
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
    /// Consumption terms (consumption licenses).
    #[serde(default)]
    pub consumption: Option<ConsumptionTerms>,
    /// Features.
    #[serde(default)]
    pub features: Vec<FeatureTerms>,
    /// Not valid before.
    #[serde(default)]
    pub valid_from: Option<Time>,
    /// Not valid after.
    #[serde(default)]
    pub valid_until: Option<Time>,
    /// Every action first checks the hardware key.
    #[serde(default)]
    pub hardware_key_required: bool,
    /// Key serials this license may be activated with (empty = any valid key).
    #[serde(default)]
    pub allowed_serials: Vec<String>,
}

impl<Time> LicenseTerms<Time> {
    /// Perpetual, one seat, a 120-minute seat timeout, no borrowing, no features.
    pub fn new(product: impl Into<String>, auth: LicenseAuth) -> Self {
        Self {
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
        }
    }

    /// The same terms with the validity period converted by `convert(field, time)`.
    pub fn map_times<T, E>(
        self,
        mut convert: impl FnMut(&'static str, Time) -> Result<T, E>,
    ) -> Result<LicenseTerms<T>, E> {
        Ok(LicenseTerms {
            valid_from: self.valid_from.map(|t| convert("valid_from", t)).transpose()?,
            valid_until: self.valid_until.map(|t| convert("valid_until", t)).transpose()?,
            product: self.product,
            product_name: self.product_name,
            auth: self.auth,
            license_type: self.license_type,
            floating_users: self.floating_users,
            floating_timeout_minutes: self.floating_timeout_minutes,
            max_borrow_time_hours: self.max_borrow_time_hours,
            consumption: self.consumption,
            features: self.features,
            hardware_key_required: self.hardware_key_required,
            allowed_serials: self.allowed_serials,
        })
    }

    /// A feature by code.
    pub fn feature(&self, code: &str) -> Option<&FeatureTerms> {
        self.features.iter().find(|f| f.code == code)
    }
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
