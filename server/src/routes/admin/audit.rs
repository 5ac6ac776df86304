//! The audit log: newest-first pages and the hash chain's check.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::AdminRequest;
use crate::error::{ApiError, ApiResult};
use crate::model::AuditEvent;
use crate::params::Req;
use crate::routes::Admin;
use crate::state::AppState;
use crate::store::{read, transact};

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
