//! The client (licensing) API, spec §4.2–§4.9. Each handler validates its parameters,
//! resolves the license, passes the key gate, then runs one store job.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use crate::auth::Caller;
use crate::clock::{self, now_micros};
use crate::error::{ApiError, ApiResult};
use crate::model::ConsumptionAnswer;
use crate::params::{lenient, Req, Required};
use crate::routes::{json_sized, REGISTER_ANSWER_BYTES};
use crate::service::{self, ClientInfo, OverageRequest};
use crate::state::{gated, AppState, CommitCheck};
use crate::store::{transact, transact_no_savepoint, Tx};

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

/// The parameters of the client API (spec §4.2–§4.9), typed. Every field is optional at
/// this level (a handler says what it requires); both spellings of a name are kept apart
/// so a client sending both is not refused; unknown fields are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ClientRequest {
    /// Product short code.
    #[serde(deserialize_with = "lenient::string")]
    pub product: Option<String>,
    /// License id (the most recent license of the product when absent).
    #[serde(deserialize_with = "lenient::u64")]
    pub license_id: Option<u64>,
    /// Client identity.
    #[serde(deserialize_with = "lenient::string")]
    pub user: Option<String>,
    /// The License API's name for the client identity (`check_license_feature`).
    #[serde(deserialize_with = "lenient::string")]
    pub hardware_id: Option<String>,
    /// Host name.
    #[serde(deserialize_with = "lenient::string")]
    pub os_hostname: Option<String>,
    /// IP.
    #[serde(deserialize_with = "lenient::string")]
    pub ip_local: Option<String>,
    /// Free text.
    #[serde(deserialize_with = "lenient::string")]
    pub user_info: Option<String>,
    /// Feature code.
    #[serde(deserialize_with = "lenient::string")]
    pub feature: Option<String>,
    /// Consumptions to add.
    #[serde(deserialize_with = "lenient::i64")]
    pub consumptions: Option<i64>,
    /// Overage allowed for this call.
    #[serde(deserialize_with = "lenient::bool")]
    pub allow_overages: Option<bool>,
    /// Same, node's spelling.
    #[serde(rename = "allowOverages", deserialize_with = "lenient::bool")]
    pub allow_overages_camel: Option<bool>,
    /// Overage cap for this call.
    #[serde(deserialize_with = "lenient::i64")]
    pub max_overages: Option<i64>,
    /// Same, node's spelling.
    #[serde(rename = "maxOverages", deserialize_with = "lenient::i64")]
    pub max_overages_camel: Option<i64>,
    /// Borrow end.
    #[serde(deserialize_with = "lenient::string")]
    pub borrowed_until: Option<String>,
    /// Same, other spelling.
    #[serde(deserialize_with = "lenient::string")]
    pub borrow_until: Option<String>,
}

impl ClientRequest {
    fn client_info(&mut self, user: Option<String>) -> ApiResult<ClientInfo> {
        Ok(ClientInfo {
            user: user.required("user")?,
            os_hostname: self.os_hostname.take(),
            ip_local: self.ip_local.take(),
            user_info: self.user_info.take(),
        })
    }

    fn target(&mut self) -> ApiResult<(String, Option<u64>)> {
        Ok((self.product.take().required("product")?, self.license_id))
    }

    fn feature(&mut self) -> ApiResult<String> {
        self.feature.take().required("feature")
    }

    fn user(&mut self) -> ApiResult<String> {
        self.user.take().required("user")
    }
}

/// Runs `job` as one store job for the gated license `id`: the key gate for `action` is
/// checked again right before the job commits (see [`gated`]).
async fn run_gated<T, E, F>(st: &AppState, id: u64, action: &'static str, job: F) -> ApiResult<T>
where
    T: Send + 'static,
    E: Into<ApiError>,
    F: FnOnce(&mut dyn Tx) -> Result<T, E> + Send + 'static,
{
    transact(st.store(), gated(st.commit_check(id, action), job)).await
}

/// [`run_gated`] for a job whose writes come last (it refuses only before writing). On a
/// plain license it runs without a savepoint of its own ([`transact_no_savepoint`]); a
/// key-bound license keeps it: its key is checked again after the writes.
async fn run_gated_writes_last<T, E, F>(st: &AppState, check: CommitCheck, job: F) -> ApiResult<T>
where
    T: Send + 'static,
    E: Into<ApiError>,
    F: FnOnce(&mut dyn Tx) -> Result<T, E> + Send + 'static,
{
    if check.is_keyed() {
        transact(st.store(), gated(check, job)).await
    } else {
        transact_no_savepoint(st.store(), gated(check, job)).await
    }
}

fn text(body: &'static str) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// `POST /api/v4/register`. A heartbeat that only extends a live seat is answered from
/// the read path; anything that must change goes to the writer, which decides again.
pub async fn licenses_register(
    State(st): State<AppState>,
    _c: Caller,
    Req(mut r): Req<ClientRequest>,
) -> ApiResult<Response> {
    let (product, license_id) = r.target()?;
    let user = r.user.take();
    let who = r.client_info(user)?;
    let entry = st.gate_entry(&product, license_id, action::REGISTER)?;
    let now = now_micros();
    // A heartbeat of a live seat is answered from the model, on this task.
    let fast = st
        .model()
        .with(|m| service::register_from_model(m, &entry.license, &who, now))?;
    match fast {
        // The same license, gated again: the key may have left meanwhile (a heartbeat
        // answered from the model commits nothing, but must not answer 200 without its key).
        Some(r) => {
            st.check_key(&entry, action::REGISTER)?;
            Ok(json_sized(&r.answer_cached(st.renders()), REGISTER_ANSWER_BYTES))
        }
        None => {
            let check = st.commit_check(entry.id, action::REGISTER);
            let registered =
                run_gated_writes_last(&st, check, move |tx| service::register(tx, &entry.license, &who, now)).await?;
            Ok(json_sized(&registered.answer(), REGISTER_ANSWER_BYTES))
        }
    }
}

/// `POST /api/v4/unregister`: idempotent, answers `user_unregistered`.
pub async fn licenses_unregister(
    State(st): State<AppState>,
    _c: Caller,
    Req(mut r): Req<ClientRequest>,
) -> ApiResult<Response> {
    let (product, license_id) = r.target()?;
    let user = r.user()?;
    let id = st.gate(&product, license_id, action::UNREGISTER)?;
    run_gated(&st, id, action::UNREGISTER, move |tx| {
        service::unregister(tx, id, &user)
    })
    .await?;
    Ok(text("user_unregistered"))
}

/// `GET|POST /api/v4/unregister/all`: every registration (optionally `?product=` /
/// `?license_id=`). Unfiltered, it skips key-bound licenses whose key is not in force
/// (licenses without the flag are never affected by key state); naming such a license
/// explicitly is refused by the gate.
pub async fn licenses_unregister_all(
    State(st): State<AppState>,
    _c: Caller,
    Req(r): Req<ClientRequest>,
) -> ApiResult<Response> {
    let (product, license_id) = (r.product, r.license_id);
    let ids: Vec<u64> = match (&product, license_id) {
        (Some(product), _) => vec![st.gate(product, license_id, action::UNREGISTER_ALL)?],
        (None, Some(id)) => vec![st.gate_id(id, action::UNREGISTER_ALL)?],
        (None, None) => {
            let catalog = st.catalog();
            let keys = st.keys().check();
            catalog
                .entries()
                .iter()
                .filter(|e| e.allows(keys))
                .map(|e| e.id)
                .collect()
        }
    };
    let checks: Vec<_> = ids
        .iter()
        .map(|id| st.commit_check(*id, action::UNREGISTER_ALL))
        .collect();
    transact(st.store(), move |tx| {
        for id in ids {
            tx.delete_registrations(Some(id))?;
        }
        // A key that left after the filter above refuses the whole job (nothing released).
        checks.iter().try_for_each(CommitCheck::verify)
    })
    .await?;
    Ok(text(""))
}

/// `POST /api/v4/borrow`.
pub async fn licenses_borrow(
    State(st): State<AppState>,
    _c: Caller,
    Req(mut r): Req<ClientRequest>,
) -> ApiResult<Json<Value>> {
    let (product, license_id) = r.target()?;
    let user = r.user.take();
    let who = r.client_info(user)?;
    let until = match r.borrowed_until.take().or(r.borrow_until.take()) {
        None => None,
        Some(s) => Some(clock::parse(&s).ok_or_else(|| {
            ApiError::bad_request("borrow_until_not_valid", format!("Cannot parse borrowed_until {s:?}"))
        })?),
    };
    let id = st.gate(&product, license_id, action::BORROW)?;
    let now = now_micros();
    Ok(Json(
        run_gated(&st, id, action::BORROW, move |tx| {
            service::borrow(tx, id, &who, until, now)
        })
        .await?,
    ))
}

/// `POST /api/v4/add_consumption`.
pub async fn consumptions_add(
    State(st): State<AppState>,
    _c: Caller,
    Req(mut r): Req<ClientRequest>,
) -> ApiResult<Response> {
    let (product, license_id) = r.target()?;
    let amount = r.consumptions.required("consumptions")?;
    let req = OverageRequest {
        allow: r.allow_overages.or(r.allow_overages_camel),
        max: r.max_overages.or(r.max_overages_camel),
    };
    let id = st.gate(&product, license_id, action::CONSUMPTION)?;
    let now = now_micros();
    let l = run_gated_writes_last(&st, st.commit_check(id, action::CONSUMPTION), move |tx| {
        service::add_consumption(tx, id, amount, req, now)
    })
    .await?;
    Ok(Json(ConsumptionAnswer::new(&l)).into_response())
}

/// `POST /api/v4/add_feature_consumption`.
pub async fn feature_consumptions_add(
    State(st): State<AppState>,
    _c: Caller,
    Req(mut r): Req<ClientRequest>,
) -> ApiResult<Json<Value>> {
    let (product, license_id) = r.target()?;
    let feature = r.feature()?;
    let amount = r.consumptions.required("consumptions")?;
    let id = st.gate(&product, license_id, action::FEATURE_CONSUMPTION)?;
    let now = now_micros();
    Ok(Json(
        run_gated(&st, id, action::FEATURE_CONSUMPTION, move |tx| {
            service::add_feature_consumption(tx, id, &feature, amount, now)
        })
        .await?,
    ))
}

/// `POST /api/v4/featureRegister`, `GET|POST /api/v4/check_license_feature` (there the
/// License API's `hardware_id` names the user).
pub async fn features_register(
    State(st): State<AppState>,
    _c: Caller,
    Req(mut r): Req<ClientRequest>,
) -> ApiResult<Json<Value>> {
    let (product, license_id) = r.target()?;
    let feature = r.feature()?;
    let user = r.user.take().or(r.hardware_id.take());
    let who = r.client_info(user)?;
    let id = st.gate(&product, license_id, action::FEATURE_REGISTER)?;
    let now = now_micros();
    Ok(Json(
        run_gated(&st, id, action::FEATURE_REGISTER, move |tx| {
            service::feature_register(tx, id, &feature, &who, now)
        })
        .await?,
    ))
}

/// `POST /api/v4/featureRelease` (alias `feature_release`): answers `feature_released`.
pub async fn features_release(
    State(st): State<AppState>,
    _c: Caller,
    Req(mut r): Req<ClientRequest>,
) -> ApiResult<Response> {
    let (product, license_id) = r.target()?;
    let feature = r.feature()?;
    let user = r.user()?;
    let id = st.gate(&product, license_id, action::FEATURE_RELEASE)?;
    let now = now_micros();
    run_gated(&st, id, action::FEATURE_RELEASE, move |tx| {
        service::feature_release(tx, id, &feature, Some(&user), now)
    })
    .await?;
    Ok(text("feature_released"))
}

/// `POST /api/v4/featureRelease/all` (alias `feature_release/all`): every user's slot.
pub async fn features_release_all(
    State(st): State<AppState>,
    _c: Caller,
    Req(mut r): Req<ClientRequest>,
) -> ApiResult<Response> {
    let (product, license_id) = r.target()?;
    let feature = r.feature()?;
    let id = st.gate(&product, license_id, action::FEATURE_RELEASE_ALL)?;
    let now = now_micros();
    run_gated(&st, id, action::FEATURE_RELEASE_ALL, move |tx| {
        service::feature_release(tx, id, &feature, None, now)
    })
    .await?;
    Ok(text("feature_released"))
}
