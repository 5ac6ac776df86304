//! The router and the server loop.

use std::future::Future;

use axum::body::Body;
use axum::http::{header, HeaderValue, Response, StatusCode};
use axum::middleware::{from_fn_with_state, map_response};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;

use crate::error::ApiError;
use crate::ha::guard::standby_guard;
use crate::routes::{admin, client, health, login, sim};
use crate::state::AppState;

/// Builds the router; tests call this directly with `oneshot`.
pub fn app(state: AppState) -> Router {
    // Full paths rather than `nest`: a nested router rewrites every request's URI.
    let v4 = Router::new()
        // Client API (§4.2–§4.9).
        .route("/api/v4/register", post(client::licenses_register))
        .route("/api/v4/unregister", post(client::licenses_unregister))
        .route(
            "/api/v4/unregister/all",
            get(client::licenses_unregister_all).post(client::licenses_unregister_all),
        )
        .route("/api/v4/borrow", post(client::licenses_borrow))
        .route("/api/v4/add_consumption", post(client::consumptions_add))
        .route(
            "/api/v4/add_feature_consumption",
            post(client::feature_consumptions_add),
        )
        .route("/api/v4/featureRegister", post(client::features_register))
        .route(
            "/api/v4/check_license_feature",
            get(client::features_register).post(client::features_register),
        )
        .route("/api/v4/featureRelease", post(client::features_release))
        .route("/api/v4/feature_release", post(client::features_release))
        .route("/api/v4/featureRelease/all", post(client::features_release_all))
        .route("/api/v4/feature_release/all", post(client::features_release_all))
        // Admin API (§4.10–§4.12, §4.15) and additions.
        .route("/api/v4/addProduct", get(admin::products_add).post(admin::products_add))
        .route(
            "/api/v4/removeProduct",
            get(admin::products_remove).post(admin::products_remove),
        )
        .route("/api/v4/license", get(admin::licenses_list))
        .route("/api/v4/license/upload", post(admin::licenses_upload))
        .route("/api/v4/registrations", get(admin::registrations_list))
        .route("/api/v4/registrations/release", post(admin::registrations_release))
        .route("/api/v4/audit", get(admin::audit_list))
        .route("/api/v4/audit/verify", get(admin::audit_verify))
        .route_layer(from_fn_with_state(state.clone(), standby_guard))
        // Open on a standby too: its health, readiness, and the demo key it holds.
        .route("/api/v4/health", get(health::health_show))
        .route("/api/v4/ready", get(crate::ha::guard::ready_show))
        .route("/api/v4/sim/plug", post(sim::sim_plug))
        .route("/api/v4/sim/unplug", post(sim::sim_unplug));
    let login = Router::new()
        .route("/auth", get(login::auth_login))
        .route_layer(from_fn_with_state(state.clone(), standby_guard));
    let router = Router::new()
        .merge(crate::web::routes())
        .merge(login)
        .route("/metrics", get(crate::metrics::metrics_show))
        .merge(v4)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone());
    with_error_layers(router).layer(axum::middleware::from_fn_with_state(state, crate::metrics::track))
}

/// The layers every response passes: JSON error safety net and panic catcher.
fn with_error_layers(router: Router) -> Router {
    router
        .layer(map_response(json_errors))
        .layer(CatchPanicLayer::custom(panic_response))
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// Safety net: any error response that is not already JSON (a framework rejection, an
/// empty 405...) becomes the JSON error object, so no client ever sees a bare body.
async fn json_errors(res: Response<Body>) -> Response<Body> {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return res;
    }
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal_error",
        _ => "bad_request",
    };
    let message = status.canonical_reason().unwrap_or("Error").to_owned();
    let mut out = ApiError::new(status, code, message).into_response();
    for (name, value) in res.headers() {
        if name == header::ALLOW {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

fn panic_response(_err: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    let mut res = ApiError::internal("internal error while processing the request").into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// Serves until `shutdown` resolves, then finishes the requests in flight (for at most
/// the default drain time), with the default connection limits and timeouts of
/// [`crate::listen::ServeOptions`]. Licenses are never deactivated on shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::listen::serve_with(
        listener,
        app(state),
        crate::listen::ServeOptions::default(),
        std::sync::Arc::new(crate::listen::PlainTcp),
        shutdown,
    )
    .await
}

/// The router of the separate `metrics_listen` address: `/metrics` only, unauthenticated.
pub fn metrics_app(state: AppState) -> Router {
    let router = Router::new()
        .route("/metrics", get(crate::metrics::metrics_open))
        .fallback(not_found)
        .with_state(state);
    with_error_layers(router)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn boom() -> &'static str {
        panic!("handler bug")
    }

    async fn plain_teapot() -> (StatusCode, &'static str) {
        (StatusCode::IM_A_TEAPOT, "short and stout")
    }

    #[tokio::test]
    async fn panics_and_bare_errors_become_json() {
        let app = with_error_layers(Router::new().route("/boom", get(boom)).route("/tea", get(plain_teapot)));
        let res = app
            .clone()
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "internal_error");
        assert!(v["request_id"].is_string(), "{v}");
        let res = app
            .oneshot(Request::get("/tea").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::IM_A_TEAPOT);
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "bad_request");
        assert_eq!(v["status"], 418);
    }
}
