//! Admin API (spec §4.10–§4.12, §4.15) plus registrations, force-release and audit.
//!
//! One submodule per resource: [`add_product`] (the request and its terms), [`licenses`],
//! [`registrations`], [`audit`].

use serde::Deserialize;

use crate::params::lenient;

mod add_product;
mod audit;
mod licenses;
mod registrations;

pub use add_product::{AddProductRequest, FeatureRequest};
pub use audit::{audit_list, audit_verify, NEXT_CURSOR};
pub use licenses::{licenses_list, licenses_upload, products_add, products_remove, terms_from_doc};
pub use registrations::{registrations_list, registrations_release, PAGE_MAX};

/// Defaults for `addProduct` terms the admin leaves out (the real server would get them
/// from the vendor cloud; here they are explicit and documented).
pub const DEFAULT_FLOATING_USERS: u32 = 5;
/// Default seat timeout.
pub const DEFAULT_FLOATING_TIMEOUT_MINUTES: u32 = 30;
/// Default borrowing limit.
pub const DEFAULT_MAX_BORROW_HOURS: u32 = 24;

/// Gate action of adding a key-bound license.
pub const ADD_ACTION: &str = "adding product";
/// Gate action of the admin force-release.
pub const RELEASE_ACTION: &str = "releasing registration";

/// The parameters of the admin listings and removals, typed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AdminRequest {
    #[serde(deserialize_with = "lenient::string")]
    product: Option<String>,
    #[serde(deserialize_with = "lenient::u64")]
    license_id: Option<u64>,
    #[serde(rename = "licenseId", deserialize_with = "lenient::u64")]
    license_id_camel: Option<u64>,
    #[serde(deserialize_with = "lenient::string")]
    user: Option<String>,
    #[serde(deserialize_with = "lenient::u32")]
    limit: Option<u32>,
    /// `/registrations`: an opaque page cursor; `/audit`: an event id.
    #[serde(deserialize_with = "lenient::string")]
    cursor: Option<String>,
    /// `/audit`: older spelling of `cursor`.
    #[serde(deserialize_with = "lenient::i64")]
    before: Option<i64>,
}
