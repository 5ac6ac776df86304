//! Admin API (spec §4.10–§4.12, §4.15) plus registrations, force-release and audit.

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, State};
use axum::http::{header, Request, StatusCode};
use axum::Json;
use keyfloat_hal::Serial;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::clock::{self, format_micros, format_opt, now_micros};
use crate::error::{ApiError, ApiResult};
use crate::license_file::{self, LicenseDoc};
use crate::model::{
    self, AuditEvent, Auth, ConsumptionTerms, FeatureKind, FeatureTerms, License, LicenseSource, LicenseTerms,
};
use crate::params::Params;
use crate::routes::Admin;
use crate::service;
use crate::state::AppState;
use crate::store::transact;

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

fn feature_from_json(v: &Value) -> ApiResult<FeatureTerms> {
    let p = Params(
        v.as_object()
            .cloned()
            .ok_or_else(|| ApiError::invalid("features", "expected objects"))?,
    );
    let code = p.str_req(&["code"])?;
    let kind = match p
        .str_opt(&["kind", "feature_type", "type"])?
        .unwrap_or_else(|| "activation".into())
        .as_str()
    {
        "activation" => FeatureKind::Activation,
        "consumption" => FeatureKind::Consumption,
        other => return Err(ApiError::invalid("features.kind", format!("unknown kind {other:?}"))),
    };
    Ok(FeatureTerms {
        code,
        name: p.str_opt(&["name"])?,
        kind,
        floating_users: p.u32_opt(&["floating_users", "floatingUsers"])?,
        floating_timeout_minutes: p.u32_opt(&["floating_timeout", "floatingTimeout", "floating_timeout_minutes"])?,
        max_consumption: p.i64_opt(&["max_consumption", "max_consumptions", "maxConsumption"])?,
        allow_overages: p.bool_opt(&["allow_overages", "allowOverages"])?.unwrap_or(false),
        max_overages: p.i64_opt(&["max_overages", "maxOverages"])?.unwrap_or(0),
    })
}

fn date_param(p: &Params, names: &[&str]) -> ApiResult<Option<i64>> {
    match p.str_opt(names)? {
        None => Ok(None),
        Some(s) => clock::parse(&s)
            .map(Some)
            .ok_or_else(|| ApiError::invalid(names[0], "expected an RFC 3339 date")),
    }
}

/// Terms of an `addProduct` request. A User-Auth password comes back beside the terms
/// (their `password_hash` is empty): it is hashed on the bounded pool, not here.
fn terms_from_params(p: &Params) -> ApiResult<(LicenseTerms, Option<String>)> {
    let product = p.str_req(&["product"])?;
    let mut password = None;
    let auth = if let Some(key) = p.str_opt(&["licenseKey", "license_key"])?.filter(|k| !k.is_empty()) {
        Auth::Key { license_key: key }
    } else if let Some(username) = p.str_opt(&["username"])?.filter(|u| !u.is_empty()) {
        password = Some(p.str_req(&["password"])?);
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
    let max = p.i64_opt(&["maxConsumptions", "max_consumptions"])?;
    let consumption = max.map(|max_consumptions| -> ApiResult<ConsumptionTerms> {
        Ok(ConsumptionTerms {
            max_consumptions,
            allow_unlimited: p
                .bool_opt(&["allowUnlimitedConsumptions", "allow_unlimited_consumptions"])?
                .unwrap_or(false),
            allow_overages: p.bool_opt(&["allowOverages", "allow_overages"])?.unwrap_or(false),
            max_overages: p.i64_opt(&["maxOverages", "max_overages"])?.unwrap_or(0),
            allow_negative: p
                .bool_opt(&["allowNegativeConsumptions", "allow_negative_consumptions"])?
                .unwrap_or(false),
            allow_negative_total: p
                .bool_opt(&["allowNegativeTotal", "allow_negative_total"])?
                .unwrap_or(false),
            reset_period: p.str_opt(&["consumptionPeriod", "consumption_period"])?,
        })
    });
    let consumption = consumption.transpose()?;
    let features = match p.json_opt(&["features", "product_features"])? {
        None => Vec::new(),
        Some(Value::Array(items)) => items.iter().map(feature_from_json).collect::<ApiResult<_>>()?,
        Some(_) => return Err(ApiError::invalid("features", "expected an array")),
    };
    let allowed_serials = allowed_serials(p)?;
    let terms = LicenseTerms {
        product_name: p.str_opt(&["productName", "product_name"])?,
        license_type: p.str_opt(&["licenseType", "license_type"])?.unwrap_or_else(|| {
            if consumption.is_some() {
                "consumption"
            } else {
                "perpetual"
            }
            .into()
        }),
        floating_users: p
            .u32_opt(&["floatingUsers", "floating_users", "maxFloatingUsers"])?
            .unwrap_or(DEFAULT_FLOATING_USERS),
        floating_timeout_minutes: p
            .u32_opt(&["floatingTimeout", "floating_timeout"])?
            .unwrap_or(DEFAULT_FLOATING_TIMEOUT_MINUTES),
        max_borrow_time_hours: p
            .u32_opt(&["maxBorrowTime", "max_borrow_time"])?
            .unwrap_or(DEFAULT_MAX_BORROW_HOURS),
        consumption,
        features,
        valid_from: date_param(p, &["validFrom", "start_date", "valid_from"])?,
        valid_until: date_param(p, &["validUntil", "validity_period", "valid_until"])?,
        hardware_key_required: p
            .bool_opt(&["isHWKeyReq", "is_hw_key_req", "hardware_key_required"])?
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
fn allowed_serials(p: &Params) -> ApiResult<Vec<String>> {
    const NAMES: [&str; 2] = ["allowedSerials", "allowed_serials"];
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
    match p.json_opt(&NAMES) {
        Ok(Some(Value::Array(a))) => a.iter().map(one).collect(),
        Ok(Some(v @ Value::Number(_))) => Ok(vec![one(&v)?]),
        Ok(Some(Value::String(s))) => Ok(split_serials(&s)),
        Ok(Some(Value::Null)) | Ok(None) => Ok(Vec::new()),
        Ok(Some(other)) => Err(bad(format!("{other} is not a list of serials"))),
        // Not JSON: a plain comma-separated string.
        Err(_) => Ok(p.str_opt(&NAMES)?.map(|s| split_serials(&s)).unwrap_or_default()),
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
    let bad = |e: license_file::LicenseFileError| ApiError::bad_request("license_file_invalid", e.to_string());
    let micros = |t: Option<time::OffsetDateTime>| t.map(|t| (t.unix_timestamp_nanos() / 1000) as i64);
    Ok(LicenseTerms {
        product: doc.product.clone(),
        product_name: doc.product_name.clone(),
        auth: doc.auth.clone(),
        license_type: doc.license_type.clone(),
        floating_users: doc.floating_users,
        floating_timeout_minutes: doc.floating_timeout_minutes,
        max_borrow_time_hours: doc.max_borrow_time_hours,
        consumption: doc.consumption.clone(),
        features: doc.features.clone(),
        valid_from: micros(doc.valid_from_time().map_err(bad)?),
        valid_until: micros(doc.valid_until_time().map_err(bad)?),
        hardware_key_required: doc.hardware_key_required,
        allowed_serials: doc.allowed_serials.clone(),
    })
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
            terms,
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
pub async fn products_add(State(st): State<AppState>, Admin(caller): Admin, p: Params) -> ApiResult<Json<Value>> {
    let (mut terms, password) = terms_from_params(&p)?;
    let id = p.u64_opt(&["license_id", "licenseId"])?;
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
pub async fn products_remove(State(st): State<AppState>, Admin(caller): Admin, p: Params) -> ApiResult<Json<Value>> {
    let product = p.str_req(&["product"])?;
    let license_id = p.u64_opt(&["license_id", "licenseId"])?;
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
pub async fn licenses_list(State(st): State<AppState>, _c: Caller, p: Params) -> ApiResult<Json<Value>> {
    let product = p.str_opt(&["product"])?;
    let license_id = p.u64_opt(&["license_id"])?;
    let now = now_micros();
    let list = transact(st.store(), move |tx| {
        let mut out = Vec::new();
        for l in tx.licenses()? {
            if product.as_ref().is_some_and(|p| *p != l.terms.product) || license_id.is_some_and(|id| id != l.id) {
                continue;
            }
            let (seats, features) = service::usage(tx, &l, now)?;
            out.push((l, seats, features));
        }
        Ok(out)
    })
    .await?;
    // Rendered here, not on the store's writer thread.
    Ok(Json(Value::Array(
        list.iter()
            .map(|(l, seats, features)| model::license_list_entry(l, *seats, features))
            .collect(),
    )))
}

/// `GET /api/v4/registrations`: live seats and feature slots (optionally `?license_id=`).
pub async fn registrations_list(State(st): State<AppState>, _c: Caller, p: Params) -> ApiResult<Json<Value>> {
    let license_id = p.u64_opt(&["license_id"])?;
    let now = now_micros();
    let (regs, fregs) = transact(st.store(), move |tx| {
        Ok((
            tx.registrations(license_id)?,
            tx.feature_registrations(license_id, None)?,
        ))
    })
    .await?;
    let seats: Vec<Value> = regs
        .iter()
        .filter(|r| r.is_active(now))
        .map(|r| {
            json!({
                "license_id": r.license_id, "user": r.user, "registered_at": format_micros(r.registered_at),
                "expires_at": format_micros(r.expires_at), "borrowed_until": format_opt(r.borrowed_until),
                "os_hostname": r.os_hostname, "ip_local": r.ip_local, "user_info": r.user_info,
            })
        })
        .collect();
    let slots: Vec<Value> = fregs
        .iter()
        .filter(|r| r.expires_at > now)
        .map(|r| {
            json!({
                "license_id": r.license_id, "feature": r.feature, "user": r.user,
                "registered_at": format_micros(r.registered_at), "expires_at": format_micros(r.expires_at),
            })
        })
        .collect();
    Ok(Json(json!({ "registrations": seats, "feature_registrations": slots })))
}

/// `POST /api/v4/registrations/release` (admin): force-release one user's seat (and its
/// feature slots). Key-bound licenses pass the key gate like any action.
pub async fn registrations_release(
    State(st): State<AppState>,
    Admin(caller): Admin,
    p: Params,
) -> ApiResult<Json<Value>> {
    let user = p.str_req(&["user"])?;
    let license_id = p.u64_opt(&["license_id"])?;
    let id = match (p.str_opt(&["product"])?, license_id) {
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
    let released = transact(st.store(), move |tx| {
        let released = tx.delete_registration(id, &user)?;
        if released {
            tx.audit(&AuditEvent::new(
                "registration_released",
                Some(&actor),
                Some(id),
                format!("user {user} released by an admin"),
            ))?;
        }
        Ok(released)
    })
    .await?;
    Ok(Json(json!({ "status": "ok", "released": released, "license_id": id })))
}

/// `GET /api/v4/audit` (admin): newest first; `?limit=` (≤ 1000), `?before=<id>`.
pub async fn audit_list(State(st): State<AppState>, _a: Admin, p: Params) -> ApiResult<Json<Value>> {
    let limit = p.u32_opt(&["limit"])?.unwrap_or(100).clamp(1, 1000);
    let before = p.i64_opt(&["before"])?;
    let events = transact(st.store(), move |tx| Ok(tx.audit_events(before, limit)?)).await?;
    Ok(Json(Value::Array(events.iter().map(AuditEvent::to_json).collect())))
}

/// `GET /api/v4/audit/verify` (admin): the audit hash chain's check, for the page's badge
/// (`keyfloat audit verify` does the same offline).
pub async fn audit_verify(State(st): State<AppState>, _a: Admin) -> ApiResult<Json<Value>> {
    let report = transact(st.store(), |tx| Ok(tx.verify_audit_chain()?)).await?;
    Ok(Json(json!({
        "ok": report.ok(),
        "records": report.records,
        "before_chain": report.before_chain,
        "start_id": report.start_id,
        "first_bad": report.first_bad,
    })))
}
