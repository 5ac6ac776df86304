//! `--key-backend sim` only: plug and unplug the simulated key of a running server
//! (end-to-end tests, demo). Admin-only; 404 on any other backend.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::routes::Admin;
use crate::state::AppState;

fn control(st: &AppState) -> ApiResult<&dyn crate::state::KeyControl> {
    st.sim().ok_or_else(ApiError::not_found)
}

/// `POST /api/v4/sim/plug`.
pub async fn sim_plug(State(st): State<AppState>, _a: Admin) -> ApiResult<Json<Value>> {
    let sim = control(&st)?;
    sim.plug().map_err(|e| ApiError::bad_request("sim_error", e))?;
    Ok(Json(json!({"status": "ok", "key": sim.key(), "plugged": true})))
}

/// `POST /api/v4/sim/unplug`.
pub async fn sim_unplug(State(st): State<AppState>, _a: Admin) -> ApiResult<Json<Value>> {
    let sim = control(&st)?;
    sim.unplug().map_err(|e| ApiError::bad_request("sim_error", e))?;
    Ok(Json(json!({"status": "ok", "key": sim.key(), "plugged": false})))
}
