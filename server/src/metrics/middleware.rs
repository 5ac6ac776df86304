//! The counting layer: every answered request counts by matched route, method, status and
//! error code, and a refused action leaves one (rate-limited) log line.

use axum::body::Body;
use axum::extract::{MatchedPath, State};
use axum::http::{Request, Response};
use axum::middleware::Next;

use crate::state::AppState;

/// The stable error code of an error response, left in the response extensions by
/// [`crate::ApiError`] so the counting layer need not parse bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

/// The gate's refusal code.
pub(super) const GATE_CODE: &str = "hardware_key_not_accessible";

/// Axum middleware (`from_fn_with_state`): counts requests by matched route, method,
/// status and error code in the app's [`super::Metrics`]. The route is the route
/// *pattern* (bounded label set); unmatched paths count as `other`.
pub async fn track(State(st): State<AppState>, req: Request<Body>, next: Next) -> Response<Body> {
    // MatchedPath and standard methods clone without allocating.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let res = next.run(req).await;
    let code = res.extensions().get::<ErrorCode>().map(|c| c.0);
    let route = matched.as_ref().map_or("other", MatchedPath::as_str);
    let status = res.status().as_u16();
    st.metrics().record_request(route, &method, status, code);
    // One log line per refused action (the gate, or a missing/insufficient login), at
    // most 20 a second: a flood of refusals must not flood the log (the metrics count all).
    let refused = matches!(
        code,
        Some(GATE_CODE | "unauthorized" | "forbidden" | "too_many_requests")
    );
    if let Some(suppressed) = refused.then(crate::logs::admit_refused).flatten() {
        match code {
            Some(GATE_CODE) => tracing::warn!(
                target: "keyfloat::gate",
                route,
                method = %method,
                code = GATE_CODE,
                suppressed,
                "action refused: no valid hardware key for a key-bound license"
            ),
            Some(code) => {
                tracing::info!(target: "keyfloat::gate", route, method = %method, code, status, suppressed, "request refused")
            }
            None => {}
        }
    }
    res
}
