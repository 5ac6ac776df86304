//! Licenses: add (`addProduct`, a signed file upload), remove, list with usage.

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, State};
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keyfloat_hal::Serial;
use serde_json::{json, Value};

use super::add_product::{terms_from_request, AddProductRequest};
use super::{AdminRequest, ADD_ACTION};
use crate::auth::Caller;
use crate::clock::now_micros;
use crate::error::{ApiError, ApiResult};
use crate::license_file::{self, LicenseDoc};
use crate::model::{AuditEvent, Auth, License, LicenseSource, LicenseTerms};
use crate::params::{Req, Required};
use crate::routes::Admin;
use crate::service;
use crate::state::AppState;
use crate::store::transact;

/// Terms of a verified license file.
pub fn terms_from_doc(doc: &LicenseDoc) -> ApiResult<LicenseTerms> {
    Ok(doc.terms_micros()?)
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
        let license = License::new(id, terms, hw, source, now_micros());
        tx.insert_license(&license)?;
        tx.audit(&AuditEvent::new(
            "license_added",
            Some(&actor),
            Some(id),
            license.added_audit_detail(license.source.as_str()),
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
            return Err(ApiError::from(service::LicenseError::LicenseNotFound(id)));
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
    let doc = license_file::verify_license_bytes(&bytes, &vendor)?;
    let terms = terms_from_doc(&doc)?;
    Ok(Json(
        add_license(&st, &caller, terms, Some(doc.license_id), LicenseSource::File).await?,
    ))
}

/// `GET /api/v4/license`: licenses (optionally `?product=`, `?license_id=`) with usage.
/// Terms come from the catalog; totals and seats from the in-memory model.
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
    // From the model: no SQL, no thread hop.
    let list: Vec<_> = st
        .model()
        .with(|m| entries.iter().filter_map(|e| service::usage(m, e.id, now)).collect());
    // Each entry rendered once per change of its license or counters (see `render`).
    let rendered: Vec<_> = list
        .iter()
        .map(|(l, seats, features)| st.renders().get(l, *seats, features))
        .collect();
    let body: Vec<_> = rendered.iter().map(|r| r.list_entry()).collect();
    Ok(Json(body).into_response())
}
