//! `GET /api/v4/health`: version, hardware ID in force, machine ID, key state, HA role.

use axum::extract::State;
use axum::Json;
use keyfloat_hal::{KeyStatus, KeyView, Snapshot};
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::state::AppState;

fn key_json(k: &KeyView) -> Value {
    let (valid, reason) = match &k.status {
        KeyStatus::Valid { .. } => (true, None),
        KeyStatus::Validating => (false, Some("validating".to_owned())),
        KeyStatus::Invalid { reason } => (false, Some(reason.code().to_owned())),
        KeyStatus::Error { code, message, .. } => (false, Some(format!("{code}: {message}"))),
    };
    json!({
        "id": k.info.id.as_str(),
        "backend": k.info.backend.as_str(),
        "model": k.info.model,
        "serial": k.serial.as_ref().or(k.info.serial.as_ref()).map(|s| s.as_str()),
        "firmware": k.firmware.or(k.info.firmware).map(|f| f.to_string()),
        "valid": valid,
        "reason": reason,
        "status": k.status,
    })
}

/// The key part of health, shared with the web page.
pub fn key_state(snap: &Snapshot) -> Value {
    let primary = snap.primary_key();
    json!({
        "state": snap.state().as_str(),
        "present": !snap.keys.is_empty(),
        "valid": snap.in_force.is_some(),
        "serial": primary.and_then(|k| k.serial.as_ref().or(k.info.serial.as_ref())).map(|s| s.as_str()),
        "backend": primary.map(|k| k.info.backend.as_str()),
        "firmware": primary.and_then(|k| k.firmware.or(k.info.firmware)).map(|f| f.to_string()),
        "reason": primary.and_then(|k| key_json(k)["reason"].as_str().map(str::to_owned))
            .or_else(|| snap.keys.is_empty().then(|| "no key attached".to_owned())),
        "keys": snap.keys.iter().map(key_json).collect::<Vec<_>>(),
        "backend_error": snap.backend_error.as_ref().map(|e| json!({
            "backend": e.backend.map(|b| b.as_str()), "code": e.code, "message": e.message,
        })),
        "generation": snap.generation,
        "grace": snap.grace.as_ref().map(|g| json!({
            "serial": g.serial.as_str(),
            "key": g.key.as_str(),
            "started_unix_ms": g.started_unix_ms,
            "deadline_unix_ms": g.deadline_unix_ms,
            "seconds_left": g.seconds_left(crate::metrics::unix_ms()),
        })),
        "grace_ended": snap.grace_ended.map(|e| e.as_str()),
    })
}

/// Health of the server and its key.
pub async fn health_show(State(st): State<AppState>, _c: Caller) -> Json<Value> {
    let snap = st.keys().snapshot();
    let cluster = crate::ha::guard::cluster_json(&st);
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "hardware_id": snap.hardware_id.as_str(),
        "machine_id": snap.machine_id.as_str(),
        "key_backend": st.backend(),
        "user_authentication": st.user_authentication(),
        "licenses": st.catalog().entries().len(),
        "key": key_state(&snap),
        "role": cluster["role"],
        "node_id": cluster["node_id"],
        "epoch": cluster["epoch"],
        "leader": cluster["leader"],
        "cluster": cluster,
    }))
}
