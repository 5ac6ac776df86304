//! The client (licensing) API, spec §4.2–§4.9. Each handler validates its parameters,
//! resolves the license, passes the key gate, then runs one store job.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use crate::auth::Caller;
use crate::clock::{self, now_micros};
use crate::error::{ApiError, ApiResult};
use crate::model::ConsumptionAnswer;
use crate::params::Params;
use crate::service::{self, ClientInfo, OverageRequest};
use crate::state::AppState;
use crate::store::{read, transact};

/// Key-gate action names, as the refusal message shows them.
pub mod action {
    /// `/register`.
    pub const REGISTER: &str = "registering user";
    /// `/unregister`.
    pub const UNREGISTER: &str = "unregistering user";
    /// `/unregister/all`.
    pub const UNREGISTER_ALL: &str = "unregistering all users";
    /// `/borrow`.
    pub const BORROW: &str = "borrowing license";
    /// `/add_consumption`.
    pub const CONSUMPTION: &str = "adding consumption";
    /// `/add_feature_consumption`.
    pub const FEATURE_CONSUMPTION: &str = "adding feature consumption";
    /// `/featureRegister`, `/check_license_feature`.
    pub const FEATURE_REGISTER: &str = "registering feature";
    /// `/featureRelease`.
    pub const FEATURE_RELEASE: &str = "releasing feature";
    /// `/featureRelease/all`.
    pub const FEATURE_RELEASE_ALL: &str = "releasing feature for all users";
}

const USER: &[&str] = &["user"];

fn client_info(p: &Params, user_names: &[&str]) -> ApiResult<ClientInfo> {
    Ok(ClientInfo {
        user: p.str_req(user_names)?,
        os_hostname: p.str_opt(&["os_hostname"])?,
        ip_local: p.str_opt(&["ip_local"])?,
        user_info: p.str_opt(&["user_info"])?,
    })
}

fn target(p: &Params) -> ApiResult<(String, Option<u64>)> {
    Ok((p.str_req(&["product"])?, p.u64_opt(&["license_id"])?))
}

fn text(body: &'static str) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// `POST /api/v4/register`. A heartbeat that only extends a live seat is answered from
/// the read path; anything that must change goes to the writer, which decides again.
pub async fn licenses_register(State(st): State<AppState>, _c: Caller, p: Params) -> ApiResult<Response> {
    let (product, license_id) = target(&p)?;
    let who = client_info(&p, USER)?;
    let entry = st.gate_entry(&product, license_id, action::REGISTER)?;
    let now = now_micros();
    let (who, fast) = read(st.store(), move |tx| {
        let r = service::register_read(tx, &entry.license, &who, now)?;
        Ok((who, r))
    })
    .await?;
    let registered = match fast {
        Some(r) => r,
        None => {
            let id = license_id_of(&st, &product, license_id)?;
            transact(st.store(), move |tx| service::register(tx, id, &who, now)).await?
        }
    };
    Ok(Json(registered.answer()).into_response())
}

/// The gate again before a write: the key may have left while the read ran.
fn license_id_of(st: &AppState, product: &str, license_id: Option<u64>) -> ApiResult<u64> {
    st.gate(product, license_id, action::REGISTER)
}

/// `POST /api/v4/unregister`: idempotent, answers `user_unregistered`.
pub async fn licenses_unregister(State(st): State<AppState>, _c: Caller, p: Params) -> ApiResult<Response> {
    let (product, license_id) = target(&p)?;
    let user = p.str_req(USER)?;
    let id = st.gate(&product, license_id, action::UNREGISTER)?;
    transact(st.store(), move |tx| service::unregister(tx, id, &user)).await?;
    Ok(text("user_unregistered"))
}

/// `GET|POST /api/v4/unregister/all`: every registration (optionally `?product=` /
/// `?license_id=`). Unfiltered, it skips key-bound licenses whose key is not in force
/// (licenses without the flag are never affected by key state); naming such a license
/// explicitly is refused by the gate.
pub async fn licenses_unregister_all(State(st): State<AppState>, _c: Caller, p: Params) -> ApiResult<Response> {
    let product = p.str_opt(&["product"])?;
    let license_id = p.u64_opt(&["license_id"])?;
    let ids: Vec<u64> = match (&product, license_id) {
        (Some(product), _) => vec![st.gate(product, license_id, action::UNREGISTER_ALL)?],
        (None, Some(id)) => {
            let catalog = st.catalog();
            let entry = catalog
                .get(id)
                .ok_or_else(|| ApiError::bad_request("license_not_found", format!("License {id} not found")))?;
            st.check_key(entry, action::UNREGISTER_ALL)?;
            vec![id]
        }
        (None, None) => {
            let catalog = st.catalog();
            let keys = st.keys().check();
            catalog
                .entries()
                .iter()
                .filter(|e| e.key.map_or(true, |t| keys.is(t)))
                .map(|e| e.id)
                .collect()
        }
    };
    transact(st.store(), move |tx| {
        for id in ids {
            tx.delete_registrations(Some(id))?;
        }
        Ok(())
    })
    .await?;
    Ok(text(""))
}

/// `POST /api/v4/borrow`.
pub async fn licenses_borrow(State(st): State<AppState>, _c: Caller, p: Params) -> ApiResult<Json<Value>> {
    let (product, license_id) = target(&p)?;
    let who = client_info(&p, USER)?;
    let until = match p.str_opt(&["borrowed_until", "borrow_until"])? {
        None => None,
        Some(s) => Some(clock::parse(&s).ok_or_else(|| {
            ApiError::bad_request("borrow_until_not_valid", format!("Cannot parse borrowed_until {s:?}"))
        })?),
    };
    let id = st.gate(&product, license_id, action::BORROW)?;
    let now = now_micros();
    Ok(Json(
        transact(st.store(), move |tx| service::borrow(tx, id, &who, until, now)).await?,
    ))
}

/// `POST /api/v4/add_consumption`.
pub async fn consumptions_add(State(st): State<AppState>, _c: Caller, p: Params) -> ApiResult<Response> {
    let (product, license_id) = target(&p)?;
    let amount = p
        .i64_opt(&["consumptions"])?
        .ok_or_else(|| ApiError::missing("consumptions"))?;
    let req = OverageRequest {
        allow: p.bool_opt(&["allow_overages", "allowOverages"])?,
        max: p.i64_opt(&["max_overages", "maxOverages"])?,
    };
    let id = st.gate(&product, license_id, action::CONSUMPTION)?;
    let now = now_micros();
    let l = transact(st.store(), move |tx| service::add_consumption(tx, id, amount, req, now)).await?;
    Ok(Json(ConsumptionAnswer::new(&l)).into_response())
}

/// `POST /api/v4/add_feature_consumption`.
pub async fn feature_consumptions_add(State(st): State<AppState>, _c: Caller, p: Params) -> ApiResult<Json<Value>> {
    let (product, license_id) = target(&p)?;
    let feature = p.str_req(&["feature"])?;
    let amount = p
        .i64_opt(&["consumptions"])?
        .ok_or_else(|| ApiError::missing("consumptions"))?;
    let id = st.gate(&product, license_id, action::FEATURE_CONSUMPTION)?;
    let now = now_micros();
    Ok(Json(
        transact(st.store(), move |tx| {
            service::add_feature_consumption(tx, id, &feature, amount, now)
        })
        .await?,
    ))
}

/// `POST /api/v4/featureRegister`, `GET|POST /api/v4/check_license_feature` (there the
/// License API's `hardware_id` names the user).
pub async fn features_register(State(st): State<AppState>, _c: Caller, p: Params) -> ApiResult<Json<Value>> {
    let (product, license_id) = target(&p)?;
    let feature = p.str_req(&["feature"])?;
    let who = client_info(&p, &["user", "hardware_id"])?;
    let id = st.gate(&product, license_id, action::FEATURE_REGISTER)?;
    let now = now_micros();
    Ok(Json(
        transact(st.store(), move |tx| {
            service::feature_register(tx, id, &feature, &who, now)
        })
        .await?,
    ))
}

/// `POST /api/v4/featureRelease` (alias `feature_release`): answers `feature_released`.
pub async fn features_release(State(st): State<AppState>, _c: Caller, p: Params) -> ApiResult<Response> {
    let (product, license_id) = target(&p)?;
    let feature = p.str_req(&["feature"])?;
    let user = p.str_req(USER)?;
    let id = st.gate(&product, license_id, action::FEATURE_RELEASE)?;
    let now = now_micros();
    transact(st.store(), move |tx| {
        service::feature_release(tx, id, &feature, Some(&user), now)
    })
    .await?;
    Ok(text("feature_released"))
}

/// `POST /api/v4/featureRelease/all` (alias `feature_release/all`): every user's slot.
pub async fn features_release_all(State(st): State<AppState>, _c: Caller, p: Params) -> ApiResult<Response> {
    let (product, license_id) = target(&p)?;
    let feature = p.str_req(&["feature"])?;
    let id = st.gate(&product, license_id, action::FEATURE_RELEASE_ALL)?;
    let now = now_micros();
    transact(st.store(), move |tx| {
        service::feature_release(tx, id, &feature, None, now)
    })
    .await?;
    Ok(text("feature_released"))
}
