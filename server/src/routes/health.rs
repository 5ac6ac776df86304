//! `GET /api/v4/health`: version, hardware ID in force, machine ID, key state, HA role.
//! Typed answer structs borrowing from the key snapshot: health is polled by load
//! balancers and monitors, so it is written straight into the response buffer.

use std::borrow::Cow;

use axum::extract::State;
use axum::Json;
use keyfloat_hal::{BackendError, Grace, KeyStatus, KeyView, Snapshot};
use serde::Serialize;

use crate::auth::Caller;
use crate::ha::guard::{cluster_info, ClusterInfo};
use crate::state::AppState;

/// Why a key is not valid (`None` when it is).
fn key_reason(k: &KeyView) -> Option<Cow<'static, str>> {
    match &k.status {
        KeyStatus::Valid { .. } => None,
        KeyStatus::Validating => Some(Cow::Borrowed("validating")),
        KeyStatus::Invalid { reason } => Some(Cow::Borrowed(reason.code())),
        KeyStatus::Error { code, message, .. } => Some(Cow::Owned(format!("{code}: {message}"))),
    }
}

fn key_serial(k: &KeyView) -> Option<&str> {
    k.serial.as_ref().or(k.info.serial.as_ref()).map(|s| s.as_str())
}

fn key_firmware(k: &KeyView) -> Option<String> {
    k.firmware.or(k.info.firmware).map(|f| f.to_string())
}

/// One attached key.
#[derive(Debug, Serialize)]
struct KeyJson<'a> {
    id: &'a str,
    backend: &'static str,
    model: &'a str,
    serial: Option<&'a str>,
    firmware: Option<String>,
    valid: bool,
    reason: Option<Cow<'static, str>>,
    status: &'a KeyStatus,
}

impl<'a> KeyJson<'a> {
    fn new(k: &'a KeyView) -> Self {
        let reason = key_reason(k);
        Self {
            id: k.info.id.as_str(),
            backend: k.info.backend.as_str(),
            model: &k.info.model,
            serial: key_serial(k),
            firmware: key_firmware(k),
            valid: reason.is_none(),
            reason,
            status: &k.status,
        }
    }
}

#[derive(Debug, Serialize)]
struct BackendErrorJson<'a> {
    backend: Option<&'static str>,
    code: &'static str,
    message: &'a str,
}

impl<'a> BackendErrorJson<'a> {
    fn new(e: &'a BackendError) -> Self {
        Self {
            backend: e.backend.map(|b| b.as_str()),
            code: e.code,
            message: &e.message,
        }
    }
}

#[derive(Debug, Serialize)]
struct GraceJson<'a> {
    serial: &'a str,
    key: &'a str,
    started_unix_ms: u64,
    deadline_unix_ms: u64,
    seconds_left: u64,
}

impl<'a> GraceJson<'a> {
    fn new(g: &'a Grace) -> Self {
        Self {
            serial: g.serial.as_str(),
            key: g.key.as_str(),
            started_unix_ms: g.started_unix_ms,
            deadline_unix_ms: g.deadline_unix_ms,
            seconds_left: g.seconds_left(crate::metrics::unix_ms()),
        }
    }
}

/// The key part of health.
#[derive(Debug, Serialize)]
pub struct KeyStateJson<'a> {
    state: &'static str,
    present: bool,
    valid: bool,
    serial: Option<&'a str>,
    backend: Option<&'static str>,
    firmware: Option<String>,
    reason: Option<Cow<'static, str>>,
    keys: Vec<KeyJson<'a>>,
    backend_error: Option<BackendErrorJson<'a>>,
    generation: u64,
    grace: Option<GraceJson<'a>>,
    grace_ended: Option<&'static str>,
}

/// The key part of health for `snap`.
pub fn key_state(snap: &Snapshot) -> KeyStateJson<'_> {
    let primary = snap.primary_key();
    KeyStateJson {
        state: snap.state().as_str(),
        present: !snap.keys.is_empty(),
        valid: snap.in_force.is_some(),
        serial: primary.and_then(key_serial),
        backend: primary.map(|k| k.info.backend.as_str()),
        firmware: primary.and_then(key_firmware),
        reason: primary
            .and_then(key_reason)
            .or_else(|| snap.keys.is_empty().then_some(Cow::Borrowed("no key attached"))),
        keys: snap.keys.iter().map(KeyJson::new).collect(),
        backend_error: snap.backend_error.as_ref().map(BackendErrorJson::new),
        generation: snap.generation,
        grace: snap.grace.as_ref().map(GraceJson::new),
        grace_ended: snap.grace_ended.map(|e| e.as_str()),
    }
}

/// The health answer.
#[derive(Debug, Serialize)]
pub struct Health<'a> {
    status: &'static str,
    version: &'static str,
    hardware_id: &'a str,
    machine_id: &'a str,
    key_backend: &'a str,
    user_authentication: bool,
    licenses: usize,
    key: KeyStateJson<'a>,
    role: &'static str,
    node_id: Option<&'a str>,
    epoch: Option<u64>,
    leader: Option<String>,
    cluster: ClusterInfo<'a>,
}

/// Health of the server and its key.
pub async fn health_show(State(st): State<AppState>, _c: Caller) -> axum::response::Response {
    use axum::response::IntoResponse;
    let snap = st.keys().snapshot();
    let cluster = cluster_info(&st);
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        hardware_id: snap.hardware_id.as_str(),
        machine_id: snap.machine_id.as_str(),
        key_backend: st.backend(),
        user_authentication: st.user_authentication(),
        licenses: st.catalog().entries().len(),
        key: key_state(&snap),
        role: cluster.role,
        node_id: cluster.node_id,
        epoch: cluster.epoch,
        leader: cluster.leader.clone(),
        cluster,
    })
    .into_response()
}
