//! Admin API (spec §4.10–§4.12, §4.15) plus registrations, force-release and audit.

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, State};
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keyfloat_hal::Serial;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::clock::{self, format_micros, now_micros};
use crate::error::{ApiError, ApiResult};
use crate::license_file::{self, LicenseDoc};
use crate::model::{
    AuditEvent, Auth, ConsumptionTerms, FeatureKind, FeatureTerms, License, LicenseObject, LicenseSource, LicenseTerms,
};
use crate::params::{lenient, Params, Req, Required};
use crate::routes::Admin;
use crate::service;
use crate::state::AppState;
use crate::store::{read, transact, RegCursor};

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
    license_id_camel: Option<u64>,
    #[serde(deserialize_with = "lenient::u64")]
    license_id: Option<u64>,
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
fn terms_from_request(r: AddProductRequest) -> ApiResult<(LicenseTerms, Option<String>)> {
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

/// Terms of a verified license file.
pub fn terms_from_doc(doc: &LicenseDoc) -> ApiResult<LicenseTerms> {
    doc.terms_micros()
        .map_err(|e| ApiError::bad_request("license_file_invalid", e.to_string()))
}

/// The hardware ID a new license is activated with: the serial of the valid key in force
/// for key-bound licenses (refused without one), else the hardware ID in force.
fn activation_hardware_id(st: &AppState, terms: &LicenseTerms) -> ApiResult<String> {
    let snap = st.keys().snapshot();
    if !terms.hardware_key_required {
        return Ok(snap.hardware_id.as_str().to_owned());
    }
    let serial = snap
        .in_force
        .as_ref()
        .and_then(|k| k.serial.clone())
        .ok_or_else(|| ApiError::key_not_accessible(ADD_ACTION))?;
    if !terms.allowed_serials.is_empty() && !terms.allowed_serials.iter().any(|s| s == serial.as_str()) {
        return Err(ApiError::bad_request(
            "hardware_key_not_allowed",
            format!("The hardware key in force ({serial}) is not one this license may be activated with"),
        ));
    }
    // Same decision through the hot-path word, so a key pulled meanwhile is noticed.
    if !st.keys().check().is(st.keys().token(&Serial::new(serial.as_str()))) {
        return Err(ApiError::key_not_accessible(ADD_ACTION));
    }
    Ok(serial.as_str().to_owned())
}

async fn add_license(
    st: &AppState,
    caller: &Caller,
    terms: LicenseTerms,
    id: Option<u64>,
    source: LicenseSource,
) -> ApiResult<Value> {
    // Both doors (addProduct and signed files) pass the same domain checks.
    crate::terms::validate_terms(&terms).map_err(|e| ApiError::invalid(e.field, e.why))?;
    if let Some(id) = id {
        crate::terms::validate_license_id(id).map_err(|e| ApiError::invalid(e.field, e.why))?;
    }
    let hw = activation_hardware_id(st, &terms)?;
    let _guard = st.admin_lock().await;
    let actor = caller.username.clone();
    let (license, all) = transact(st.store(), move |tx| {
        let id = match id {
            Some(id) => {
                if tx.license(id)?.is_some() {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "license_already_exists",
                        format!("License {id} is already on this server"),
                    ));
                }
                id
            }
            None => tx.next_license_id()?,
        };
        let license = License {
            id,
            terms: std::sync::Arc::new(terms),
            activation_hardware_id: hw,
            source,
            added_at: now_micros(),
            total_consumptions: 0,
            feature_totals: Default::default(),
        };
        tx.insert_license(&license)?;
        tx.audit(&AuditEvent::new(
            "license_added",
            Some(&actor),
            Some(id),
            format!(
                "product {} ({}), activation hardware id {}{}",
                license.terms.product,
                license.source.as_str(),
                license.activation_hardware_id,
                if license.terms.hardware_key_required {
                    ", hardware key required"
                } else {
                    ""
                }
            ),
        ))?;
        Ok((license, tx.licenses()?))
    })
    .await?;
    st.set_catalog(&all);
    tracing::info!(license_id = license.id, product = %license.terms.product, hw = %license.activation_hardware_id, "license added");
    Ok(json!({
        "status": "ok",
        "message": "license added",
        "product": license.terms.product,
        "license_id": license.id,
        "hardware_key_required": license.terms.hardware_key_required,
        "activation_hardware_id": license.activation_hardware_id,
    }))
}

/// `GET|POST /api/v4/addProduct`.
pub async fn products_add(
    State(st): State<AppState>,
    Admin(caller): Admin,
    Req(r): Req<AddProductRequest>,
) -> ApiResult<Json<Value>> {
    let id = r.license_id.or(r.license_id_camel);
    let (mut terms, password) = terms_from_request(r)?;
    crate::terms::validate_terms(&terms).map_err(|e| ApiError::invalid(e.field, e.why))?;
    if let (Some(password), Auth::User { password_hash, .. }) = (password, &mut terms.auth) {
        *password_hash = st
            .hash_pool()
            .hash(password)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "Password hashing is busy; retry",
                )
            })?
            .ok_or_else(|| ApiError::internal("cannot hash password"))?;
    }
    Ok(Json(add_license(&st, &caller, terms, id, LicenseSource::Api).await?))
}

/// `GET|POST /api/v4/removeProduct`: `license_id` given = that license; else the most
/// recently added license of `product`. Registrations go with it. Not gated by the key:
/// an admin must be able to remove a license whose key is lost.
pub async fn products_remove(
    State(st): State<AppState>,
    Admin(caller): Admin,
    Req(r): Req<AdminRequest>,
) -> ApiResult<Json<Value>> {
    let product = r.product.required("product")?;
    let license_id = r.license_id.or(r.license_id_camel);
    let id = st.catalog().resolve(&product, license_id)?.id;
    let _guard = st.admin_lock().await;
    let actor = caller.username.clone();
    let all = transact(st.store(), move |tx| {
        if !tx.delete_license(id)? {
            return Err(ApiError::bad_request(
                "license_not_found",
                format!("License {id} not found"),
            ));
        }
        tx.audit(&AuditEvent::new(
            "license_removed",
            Some(&actor),
            Some(id),
            format!("product {product}"),
        ))?;
        Ok(tx.licenses()?)
    })
    .await?;
    st.set_catalog(&all);
    Ok(Json(
        json!({"status": "ok", "message": "license removed", "license_id": id}),
    ))
}

/// `POST /api/v4/license/upload`: a signed license file, as `multipart/form-data` (any
/// field name) or as the raw body. Verified with the configured vendor public key.
pub async fn licenses_upload(
    State(st): State<AppState>,
    Admin(caller): Admin,
    req: Request<Body>,
) -> ApiResult<Json<Value>> {
    let vendor = st.vendor_key().cloned().ok_or_else(|| {
        ApiError::bad_request(
            "vendor_key_not_configured",
            "No vendor public key configured (vendor_public_key); cannot verify license files",
        )
    })?;
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("multipart/form-data"));
    let bytes = if is_multipart {
        let mut mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad_request("invalid_multipart", e.body_text()))?;
        let field = mp
            .next_field()
            .await
            .map_err(|e| ApiError::bad_request("invalid_multipart", e.body_text()))?
            .ok_or_else(|| ApiError::missing("file"))?;
        field
            .bytes()
            .await
            .map_err(|e| ApiError::bad_request("invalid_multipart", e.body_text()))?
    } else {
        let limit = usize::try_from(license_file::MAX_LICENSE_FILE_LEN).unwrap_or(usize::MAX);
        axum::body::to_bytes(req.into_body(), limit).await.map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "License file too large",
            )
        })?
    };
    let doc = license_file::verify_license_bytes(&bytes, &vendor)
        .map_err(|e| ApiError::bad_request("license_file_invalid", format!("{} ({})", e, e.code())))?;
    let terms = terms_from_doc(&doc)?;
    Ok(Json(
        add_license(&st, &caller, terms, Some(doc.license_id), LicenseSource::File).await?,
    ))
}

/// `GET /api/v4/license`: licenses (optionally `?product=`, `?license_id=`) with usage.
/// Terms come from the catalog; totals and seats from one read snapshot.
pub async fn licenses_list(State(st): State<AppState>, _c: Caller, Req(r): Req<AdminRequest>) -> ApiResult<Response> {
    let (product, license_id) = (r.product, r.license_id);
    let now = now_micros();
    let entries: Vec<_> = st
        .catalog()
        .entries()
        .iter()
        .filter(|e| product.as_ref().is_none_or(|p| *p == e.product) && license_id.is_none_or(|id| id == e.id))
        .cloned()
        .collect();
    let list = read(st.store(), move |tx| -> ApiResult<_> {
        let mut out = Vec::with_capacity(entries.len());
        for e in &entries {
            out.extend(service::usage(tx, &e.license, now)?);
        }
        Ok(out)
    })
    .await?;
    // Rendered here, not on a store thread.
    let body: Vec<LicenseObject<'_>> = list
        .iter()
        .map(|(l, seats, features)| LicenseObject::new(l, *seats, features).list_entry(l))
        .collect();
    Ok(Json(body).into_response())
}

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

/// Most entries of one `/registrations` page (and the default).
pub const PAGE_MAX: u32 = 1000;

/// Where the next `/registrations` page starts (opaque to clients: base64url of JSON).
#[derive(Debug, Default, Serialize, Deserialize)]
struct PageCursor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seat: Option<(u64, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slot: Option<(u64, String, String)>,
    #[serde(default)]
    seats_done: bool,
    #[serde(default)]
    slots_done: bool,
}

impl PageCursor {
    fn decode(s: &str) -> ApiResult<Self> {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s.trim())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| ApiError::invalid("cursor", "not a cursor of this server"))
    }

    fn encode(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }
}

#[derive(Debug, Serialize)]
struct SeatRow<'a> {
    license_id: u64,
    user: &'a str,
    registered_at: String,
    expires_at: String,
    borrowed_until: Option<String>,
    os_hostname: Option<&'a str>,
    ip_local: Option<&'a str>,
    user_info: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct SlotRow<'a> {
    license_id: u64,
    feature: &'a str,
    user: &'a str,
    registered_at: String,
    expires_at: String,
}

#[derive(Debug, Serialize)]
struct RegistrationsPage<'a> {
    registrations: Vec<SeatRow<'a>>,
    feature_registrations: Vec<SlotRow<'a>>,
    next_cursor: Option<String>,
}

/// `GET /api/v4/registrations`: live seats and feature slots (optionally `?license_id=`),
/// a page at a time: `?limit=` (≤ 1000, the default) and `?cursor=` (the previous page's
/// `next_cursor`; `null` there = nothing more). Keyset pages in (license, user) order, so
/// a listing of any size costs one page of memory.
pub async fn registrations_list(
    State(st): State<AppState>,
    _c: Caller,
    Req(r): Req<AdminRequest>,
) -> ApiResult<Response> {
    let license_id = r.license_id;
    let limit = r.limit.unwrap_or(PAGE_MAX).clamp(1, PAGE_MAX);
    let cursor = match r.cursor.filter(|c| !c.is_empty()) {
        Some(c) => PageCursor::decode(&c)?,
        None => PageCursor::default(),
    };
    let now = now_micros();
    let (regs, fregs, next) = read(st.store(), move |tx| -> ApiResult<_> {
        let seat_after = cursor.seat.as_ref().map(|(l, u)| RegCursor {
            license_id: *l,
            feature: String::new(),
            user: u.clone(),
        });
        let slot_after = cursor.slot.as_ref().map(|(l, f, u)| RegCursor {
            license_id: *l,
            feature: f.clone(),
            user: u.clone(),
        });
        let regs = if cursor.seats_done {
            Vec::new()
        } else {
            tx.registrations_page(license_id, seat_after.as_ref(), limit)?
        };
        let fregs = if cursor.slots_done {
            Vec::new()
        } else {
            tx.feature_registrations_page(license_id, None, slot_after.as_ref(), limit)?
        };
        let next = PageCursor {
            seats_done: regs.len() < limit as usize,
            slots_done: fregs.len() < limit as usize,
            seat: regs.last().map(|r| (r.license_id, r.user.clone())),
            slot: fregs.last().map(|r| (r.license_id, r.feature.clone(), r.user.clone())),
        };
        Ok((regs, fregs, next))
    })
    .await?;
    let page = RegistrationsPage {
        registrations: regs
            .iter()
            .filter(|r| r.is_active(now))
            .map(|r| SeatRow {
                license_id: r.license_id,
                user: &r.user,
                registered_at: format_micros(r.registered_at),
                expires_at: format_micros(r.expires_at),
                borrowed_until: r.borrowed_until.map(format_micros),
                os_hostname: r.os_hostname.as_deref(),
                ip_local: r.ip_local.as_deref(),
                user_info: r.user_info.as_deref(),
            })
            .collect(),
        feature_registrations: fregs
            .iter()
            .filter(|r| r.expires_at > now)
            .map(|r| SlotRow {
                license_id: r.license_id,
                feature: &r.feature,
                user: &r.user,
                registered_at: format_micros(r.registered_at),
                expires_at: format_micros(r.expires_at),
            })
            .collect(),
        next_cursor: (!(next.seats_done && next.slots_done)).then(|| next.encode()),
    };
    Ok(Json(page).into_response())
}

/// `POST /api/v4/registrations/release` (admin): force-release one user's seat (and its
/// feature slots). Key-bound licenses pass the key gate like any action.
pub async fn registrations_release(
    State(st): State<AppState>,
    Admin(caller): Admin,
    Req(r): Req<AdminRequest>,
) -> ApiResult<Json<Value>> {
    let user = r.user.required("user")?;
    let license_id = r.license_id;
    let id = match (r.product, license_id) {
        (Some(product), id) => st.gate(&product, id, RELEASE_ACTION)?,
        (None, Some(id)) => {
            let catalog = st.catalog();
            let entry = catalog
                .get(id)
                .ok_or_else(|| ApiError::bad_request("license_not_found", format!("License {id} not found")))?;
            st.check_key(entry, RELEASE_ACTION)?;
            id
        }
        (None, None) => return Err(ApiError::missing("license_id")),
    };
    let actor = caller.username.clone();
    let check = st.commit_check(id, RELEASE_ACTION);
    let released = transact(st.store(), move |tx| -> ApiResult<_> {
        let released = tx.delete_registration(id, &user)?;
        if released {
            tx.audit(&AuditEvent::new(
                "registration_released",
                Some(&actor),
                Some(id),
                format!("user {user} released by an admin"),
            ))?;
        }
        check.verify()?;
        Ok(released)
    })
    .await?;
    Ok(Json(json!({ "status": "ok", "released": released, "license_id": id })))
}

/// `GET /api/v4/audit` (admin): newest first; `?limit=` (≤ 1000), `?cursor=<id>` (alias
/// `?before=`): only events older than that id. A full page names the next cursor in the
/// `X-Next-Cursor` header (the body stays the array of events).
pub async fn audit_list(State(st): State<AppState>, _a: Admin, Req(r): Req<AdminRequest>) -> ApiResult<Response> {
    let limit = r.limit.unwrap_or(100).clamp(1, 1000);
    let before = match r.cursor.filter(|c| !c.trim().is_empty()) {
        Some(c) => Some(
            c.trim()
                .parse::<i64>()
                .map_err(|_| ApiError::invalid("cursor", "expected an audit event id"))?,
        ),
        None => r.before,
    };
    let events = read(st.store(), move |tx| tx.audit_events(before, limit)).await?;
    let next = (events.len() == limit as usize)
        .then(|| events.last().map(|e| e.id))
        .flatten();
    let mut res = Json(Value::Array(events.iter().map(AuditEvent::to_json).collect())).into_response();
    if let Some(next) = next {
        if let Ok(v) = header::HeaderValue::from_str(&next.to_string()) {
            res.headers_mut().insert(NEXT_CURSOR, v);
        }
    }
    Ok(res)
}

/// The header naming the next page of the audit log.
pub const NEXT_CURSOR: &str = "x-next-cursor";

/// `GET /api/v4/audit/verify` (admin): the audit hash chain's check, for the page's badge
/// (`keyfloat audit verify` does the same offline).
pub async fn audit_verify(State(st): State<AppState>, _a: Admin) -> ApiResult<Json<Value>> {
    let report = transact(st.store(), |tx| tx.verify_audit_chain()).await?;
    Ok(Json(json!({
        "ok": report.ok(),
        "records": report.records,
        "before_chain": report.before_chain,
        "start_id": report.start_id,
        "first_bad": report.first_bad,
    })))
}
