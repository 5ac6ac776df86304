//! `GET /metrics` (Prometheus text format) and the key-event watcher, by responsibility:
//!
//! - [`registry`]: the request and key-event counters, held in the app state;
//! - [`middleware`]: the layer that counts every answered request;
//! - [`exposition`]: the text format, written by `prometheus-client` at scrape time;
//! - [`key_events`]: what changed between two key-cell snapshots (pure);
//! - [`audit`]: the watcher that logs, counts and audits each key event.
//!
//! Gauges (key state, seats, consumptions) are computed at scrape time from the cell and
//! the store, so nothing on the request path maintains them.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::clock::now_micros;
use crate::error::{ApiError, ApiResult};
use crate::service;
use crate::state::AppState;

mod audit;
mod exposition;
mod key_events;
mod middleware;
mod registry;

pub use audit::watch_keys;
pub use key_events::{diff, KeyEvent};
pub use middleware::{track, ErrorCode};
pub use registry::Metrics;

use exposition::{render, LicenseUsage};

/// Wall clock in ms since the Unix epoch (grace deadlines are wall-clock).
pub fn unix_ms() -> u64 {
    u64::try_from(now_micros() / 1000).unwrap_or(0)
}

/// `GET /metrics`. Open in no-auth mode; in authentication mode it needs an account
/// token or the dedicated `metrics_token` unless `metrics_public` is set (see
/// [`crate::auth::metrics_allowed`]). It exposes counts, never user names or keys;
/// per-license series can be turned off.
pub async fn metrics_show(State(st): State<AppState>, headers: axum::http::HeaderMap) -> ApiResult<impl IntoResponse> {
    if !crate::auth::metrics_allowed(&st, &headers) {
        return Err(ApiError::unauthorized());
    }
    metrics_open(State(st)).await
}

/// `GET /metrics` on the separate `metrics_listen` address: no check (bind it privately).
pub async fn metrics_open(State(st): State<AppState>) -> ApiResult<impl IntoResponse> {
    let licenses = if st.security().metrics.hide_license_labels {
        Vec::new()
    } else {
        license_usage(&st).await?
    };
    let body = render(st.metrics(), &st.keys().snapshot(), st.backend(), licenses);
    Ok(([(header::CONTENT_TYPE, exposition::CONTENT_TYPE)], body))
}

/// Every license's usage, from the in-memory model.
async fn license_usage(st: &AppState) -> ApiResult<Vec<LicenseUsage>> {
    let now = now_micros();
    let entries = st.catalog().entries().to_vec();
    Ok(st.model().with(|m| {
        entries
            .iter()
            .filter_map(|e| service::usage(m, e.id, now))
            .map(|(l, seats, _features)| LicenseUsage {
                id: l.id,
                product: l.terms.product.clone(),
                key_bound: l.terms.hardware_key_required,
                seats_used: seats,
                seats_total: l.terms.floating_users,
                consumptions: l.terms.consumption.as_ref().map(|_| l.total_consumptions),
                features: l.feature_totals.clone().into_iter().collect(),
            })
            .collect()
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::http::Method;

    use super::key_events::tests::snap;
    use super::middleware::GATE_CODE;
    use super::*;

    #[test]
    fn counters_render_with_labels_and_gate_refusals() {
        let m = Metrics::default();
        m.record_request("/api/v4/add_feature_consumption", &Method::POST, 400, Some(GATE_CODE));
        m.record_request("/api/v4/add_feature_consumption", &Method::POST, 400, Some(GATE_CODE));
        m.record_request("/api/v4/register", &Method::POST, 200, None);
        m.record_key_event("invalid", "wrong_vendor");
        let lic = LicenseUsage {
            id: 7,
            product: "hw\"based".into(),
            key_bound: true,
            seats_used: 1,
            seats_total: 5,
            consumptions: Some(3),
            features: [("f1".to_owned(), 2)].into_iter().collect(),
        };
        let text = render(&m, &snap(vec![]), "sim", vec![lic]);
        for line in [
            "# HELP keyfloat_key_state Current hardware key state (1 for the current state).",
            "# TYPE keyfloat_key_state gauge",
            "# TYPE keyfloat_http_requests_total counter",
            "# TYPE keyfloat_key_cell_generation gauge",
            "keyfloat_key_cell_generation 0",
            "keyfloat_key_valid 0",
            "keyfloat_key_events_total{event=\"invalid\"} 1",
            "keyfloat_http_errors_total{route=\"/api/v4/add_feature_consumption\",status=\"400\",code=\"hardware_key_not_accessible\"} 2",
            "keyfloat_key_state{state=\"absent\",backend=\"sim\"} 1",
            "keyfloat_key_state{state=\"valid\",backend=\"sim\"} 0",
            "keyfloat_http_requests_total{route=\"/api/v4/add_feature_consumption\",method=\"POST\",status=\"400\"} 2",
            "keyfloat_http_requests_total{route=\"/api/v4/register\",method=\"POST\",status=\"200\"} 1",
            "keyfloat_gate_refusals_total{route=\"/api/v4/add_feature_consumption\"} 2",
            "keyfloat_key_validation_failures_total{reason=\"wrong_vendor\"} 1",
            "keyfloat_license_seats_in_use{license_id=\"7\",product=\"hw\\\"based\",hardware_key=\"true\"} 1",
            "keyfloat_license_seats_total{license_id=\"7\",product=\"hw\\\"based\",hardware_key=\"true\"} 5",
            "keyfloat_license_consumptions{license_id=\"7\",product=\"hw\\\"based\",hardware_key=\"true\"} 3",
            "keyfloat_feature_consumptions{license_id=\"7\",product=\"hw\\\"based\",hardware_key=\"true\",feature=\"f1\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
