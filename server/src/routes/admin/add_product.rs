//! The `addProduct` request (spec §4.10): its typed parameters and the terms they make.

use serde::Deserialize;
use serde_json::Value;

use super::{DEFAULT_FLOATING_TIMEOUT_MINUTES, DEFAULT_FLOATING_USERS, DEFAULT_MAX_BORROW_HOURS};
use crate::clock;
use crate::error::{ApiError, ApiResult};
use crate::model::{Auth, ConsumptionTerms, FeatureKind, FeatureTerms, LicenseTerms};
use crate::params::{lenient, Params, Req, Required};

/// One entry of `addProduct`'s `features`, typed. Every spelling is its own field (the
/// first one present wins), so a client sending two is not refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct FeatureRequest {
    #[serde(deserialize_with = "lenient::string")]
    code: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    name: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    kind: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    feature_type: Option<String>,
    #[serde(rename = "type", deserialize_with = "lenient::string")]
    type_: Option<String>,
    #[serde(deserialize_with = "lenient::u32")]
    floating_users: Option<u32>,
    #[serde(rename = "floatingUsers", deserialize_with = "lenient::u32")]
    floating_users_camel: Option<u32>,
    #[serde(deserialize_with = "lenient::u32")]
    floating_timeout: Option<u32>,
    #[serde(rename = "floatingTimeout", deserialize_with = "lenient::u32")]
    floating_timeout_camel: Option<u32>,
    #[serde(deserialize_with = "lenient::u32")]
    floating_timeout_minutes: Option<u32>,
    #[serde(deserialize_with = "lenient::i64")]
    max_consumption: Option<i64>,
    #[serde(deserialize_with = "lenient::i64")]
    max_consumptions: Option<i64>,
    #[serde(rename = "maxConsumption", deserialize_with = "lenient::i64")]
    max_consumption_camel: Option<i64>,
    #[serde(deserialize_with = "lenient::bool")]
    allow_overages: Option<bool>,
    #[serde(rename = "allowOverages", deserialize_with = "lenient::bool")]
    allow_overages_camel: Option<bool>,
    #[serde(deserialize_with = "lenient::i64")]
    max_overages: Option<i64>,
    #[serde(rename = "maxOverages", deserialize_with = "lenient::i64")]
    max_overages_camel: Option<i64>,
}

fn feature_from_json(v: &Value) -> ApiResult<FeatureTerms> {
    let map = v
        .as_object()
        .cloned()
        .ok_or_else(|| ApiError::invalid("features", "expected objects"))?;
    let f: FeatureRequest = Req::from_params(Params(map))?;
    let code = f.code.required("code")?;
    let kind = match f
        .kind
        .or(f.feature_type)
        .or(f.type_)
        .unwrap_or_else(|| "activation".into())
        .as_str()
    {
        "activation" => FeatureKind::Activation,
        "consumption" => FeatureKind::Consumption,
        other => return Err(ApiError::invalid("features.kind", format!("unknown kind {other:?}"))),
    };
    Ok(FeatureTerms {
        code,
        name: f.name,
        kind,
        floating_users: f.floating_users.or(f.floating_users_camel),
        floating_timeout_minutes: f
            .floating_timeout
            .or(f.floating_timeout_camel)
            .or(f.floating_timeout_minutes),
        max_consumption: f.max_consumption.or(f.max_consumptions).or(f.max_consumption_camel),
        allow_overages: f.allow_overages.or(f.allow_overages_camel).unwrap_or(false),
        max_overages: f.max_overages.or(f.max_overages_camel).unwrap_or(0),
    })
}

fn date_param(value: Option<String>, name: &str) -> ApiResult<Option<i64>> {
    match value {
        None => Ok(None),
        Some(s) => clock::parse(&s)
            .map(Some)
            .ok_or_else(|| ApiError::invalid(name, "expected an RFC 3339 date")),
    }
}

/// The `addProduct` request (spec §4.10), typed: both spellings of every name are their
/// own fields (node's camelCase first). Only decoding happens here; what the terms may be
/// is decided by the domain, not by the deserializer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AddProductRequest {
    #[serde(deserialize_with = "lenient::string")]
    product: Option<String>,
    #[serde(rename = "licenseId", deserialize_with = "lenient::u64")]
    pub(super) license_id_camel: Option<u64>,
    #[serde(deserialize_with = "lenient::u64")]
    pub(super) license_id: Option<u64>,
    #[serde(rename = "licenseKey", deserialize_with = "lenient::string")]
    license_key_camel: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    license_key: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    username: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    password: Option<String>,
    #[serde(rename = "maxConsumptions", deserialize_with = "lenient::i64")]
    max_consumptions_camel: Option<i64>,
    #[serde(deserialize_with = "lenient::i64")]
    max_consumptions: Option<i64>,
    #[serde(rename = "allowUnlimitedConsumptions", deserialize_with = "lenient::bool")]
    allow_unlimited_camel: Option<bool>,
    #[serde(rename = "allow_unlimited_consumptions", deserialize_with = "lenient::bool")]
    allow_unlimited: Option<bool>,
    #[serde(rename = "allowOverages", deserialize_with = "lenient::bool")]
    allow_overages_camel: Option<bool>,
    #[serde(deserialize_with = "lenient::bool")]
    allow_overages: Option<bool>,
    #[serde(rename = "maxOverages", deserialize_with = "lenient::i64")]
    max_overages_camel: Option<i64>,
    #[serde(deserialize_with = "lenient::i64")]
    max_overages: Option<i64>,
    #[serde(rename = "allowNegativeConsumptions", deserialize_with = "lenient::bool")]
    allow_negative_camel: Option<bool>,
    #[serde(rename = "allow_negative_consumptions", deserialize_with = "lenient::bool")]
    allow_negative: Option<bool>,
    #[serde(rename = "allowNegativeTotal", deserialize_with = "lenient::bool")]
    allow_negative_total_camel: Option<bool>,
    #[serde(deserialize_with = "lenient::bool")]
    allow_negative_total: Option<bool>,
    #[serde(rename = "consumptionPeriod", deserialize_with = "lenient::string")]
    consumption_period_camel: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    consumption_period: Option<String>,
    #[serde(deserialize_with = "lenient::json")]
    features: Option<Value>,
    #[serde(deserialize_with = "lenient::json")]
    product_features: Option<Value>,
    /// A JSON array, or a JSON text of one, or a comma-separated list.
    #[serde(rename = "allowedSerials")]
    allowed_serials_camel: Option<Value>,
    allowed_serials: Option<Value>,
    #[serde(rename = "productName", deserialize_with = "lenient::string")]
    product_name_camel: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    product_name: Option<String>,
    #[serde(rename = "licenseType", deserialize_with = "lenient::string")]
    license_type_camel: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    license_type: Option<String>,
    #[serde(rename = "floatingUsers", deserialize_with = "lenient::u32")]
    floating_users_camel: Option<u32>,
    #[serde(deserialize_with = "lenient::u32")]
    floating_users: Option<u32>,
    #[serde(rename = "maxFloatingUsers", deserialize_with = "lenient::u32")]
    max_floating_users: Option<u32>,
    #[serde(rename = "floatingTimeout", deserialize_with = "lenient::u32")]
    floating_timeout_camel: Option<u32>,
    #[serde(deserialize_with = "lenient::u32")]
    floating_timeout: Option<u32>,
    #[serde(rename = "maxBorrowTime", deserialize_with = "lenient::u32")]
    max_borrow_time_camel: Option<u32>,
    #[serde(deserialize_with = "lenient::u32")]
    max_borrow_time: Option<u32>,
    #[serde(rename = "validFrom", deserialize_with = "lenient::string")]
    valid_from_camel: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    start_date: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    valid_from: Option<String>,
    #[serde(rename = "validUntil", deserialize_with = "lenient::string")]
    valid_until_camel: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    validity_period: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    valid_until: Option<String>,
    #[serde(rename = "isHWKeyReq", deserialize_with = "lenient::bool")]
    is_hw_key_req_camel: Option<bool>,
    #[serde(deserialize_with = "lenient::bool")]
    is_hw_key_req: Option<bool>,
    #[serde(deserialize_with = "lenient::bool")]
    hardware_key_required: Option<bool>,
}

/// Terms of an `addProduct` request. A User-Auth password comes back beside the terms
/// (their `password_hash` is empty): it is hashed on the bounded pool, not here.
pub(super) fn terms_from_request(r: AddProductRequest) -> ApiResult<(LicenseTerms, Option<String>)> {
    let product = r.product.required("product")?;
    let mut password = None;
    let auth = if let Some(key) = r.license_key_camel.or(r.license_key).filter(|k| !k.is_empty()) {
        Auth::Key { license_key: key }
    } else if let Some(username) = r.username.filter(|u| !u.is_empty()) {
        password = Some(r.password.required("password")?);
        Auth::User {
            username,
            password_hash: String::new(),
        }
    } else {
        return Err(ApiError::bad_request(
            "missing_parameters",
            "Missing required parameter: licenseKey (Key Auth) or username and password (User Auth)",
        ));
    };
    let consumption = r
        .max_consumptions_camel
        .or(r.max_consumptions)
        .map(|max_consumptions| ConsumptionTerms {
            max_consumptions,
            allow_unlimited: r.allow_unlimited_camel.or(r.allow_unlimited).unwrap_or(false),
            allow_overages: r.allow_overages_camel.or(r.allow_overages).unwrap_or(false),
            max_overages: r.max_overages_camel.or(r.max_overages).unwrap_or(0),
            allow_negative: r.allow_negative_camel.or(r.allow_negative).unwrap_or(false),
            allow_negative_total: r.allow_negative_total_camel.or(r.allow_negative_total).unwrap_or(false),
            reset_period: r.consumption_period_camel.or(r.consumption_period),
        });
    let features = match r.features.or(r.product_features) {
        None => Vec::new(),
        Some(Value::Array(items)) => items.iter().map(feature_from_json).collect::<ApiResult<_>>()?,
        Some(_) => return Err(ApiError::invalid("features", "expected an array")),
    };
    let allowed_serials = allowed_serials(r.allowed_serials_camel.or(r.allowed_serials))?;
    let terms = LicenseTerms {
        product_name: r.product_name_camel.or(r.product_name),
        license_type: r.license_type_camel.or(r.license_type).unwrap_or_else(|| {
            if consumption.is_some() {
                "consumption"
            } else {
                "perpetual"
            }
            .into()
        }),
        floating_users: r
            .floating_users_camel
            .or(r.floating_users)
            .or(r.max_floating_users)
            .unwrap_or(DEFAULT_FLOATING_USERS),
        floating_timeout_minutes: r
            .floating_timeout_camel
            .or(r.floating_timeout)
            .unwrap_or(DEFAULT_FLOATING_TIMEOUT_MINUTES),
        max_borrow_time_hours: r
            .max_borrow_time_camel
            .or(r.max_borrow_time)
            .unwrap_or(DEFAULT_MAX_BORROW_HOURS),
        consumption,
        features,
        valid_from: date_param(r.valid_from_camel.or(r.start_date).or(r.valid_from), "validFrom")?,
        valid_until: date_param(
            r.valid_until_camel.or(r.validity_period).or(r.valid_until),
            "validUntil",
        )?,
        hardware_key_required: r
            .is_hw_key_req_camel
            .or(r.is_hw_key_req)
            .or(r.hardware_key_required)
            .unwrap_or(false),
        allowed_serials,
        product,
        auth,
    };
    Ok((terms, password))
}

/// `allowedSerials`: a JSON array of strings or numbers (serials are decimal), or a
/// comma-separated string. Anything else is refused: silently dropping an entry would
/// bind the license to whatever key is in force.
fn allowed_serials(v: Option<Value>) -> ApiResult<Vec<String>> {
    let bad = |why: String| ApiError::invalid("allowedSerials", why);
    let one = |v: &Value| -> ApiResult<String> {
        match v {
            Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
            Value::Number(n) if n.as_u64().is_some() => Ok(n.to_string()),
            other => Err(bad(format!(
                "{other} is not a key serial (a string or a non-negative integer)"
            ))),
        }
    };
    match v {
        Some(Value::Array(a)) => a.iter().map(one).collect(),
        Some(v @ Value::Number(_)) => Ok(vec![one(&v)?]),
        // A query parameter or form field: a JSON text of a list, or a plain comma list.
        Some(Value::String(s)) => match serde_json::from_str::<Value>(&s) {
            Ok(Value::Array(a)) => a.iter().map(one).collect(),
            Ok(v @ Value::Number(_)) => Ok(vec![one(&v)?]),
            _ => Ok(split_serials(&s)),
        },
        Some(Value::Null) | None => Ok(Vec::new()),
        Some(other) => Err(bad(format!("{other} is not a list of serials"))),
    }
}

fn split_serials(s: &str) -> Vec<String> {
    s.split(',')
        .map(|x| x.trim().to_owned())
        .filter(|x| !x.is_empty())
        .collect()
}
