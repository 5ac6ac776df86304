//! The API error: every 4xx/5xx answer is `{"status","code","message"}` with a string `code`
//! (the Python SDK crashes on error bodies without one, spec §3).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::service::LicenseError;
use crate::store::StoreError;

/// An error answered to a client. `code` is stable; `message` is for humans.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status (4xx/5xx).
    pub status: StatusCode,
    /// Stable snake_case code.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Set on internal errors: the id under which the details were logged.
    pub request_id: Option<String>,
}

/// A short id, unique in this process and unlikely to repeat across restarts.
fn next_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = *PREFIX.get_or_init(|| rand_core::RngCore::next_u32(&mut rand_core::OsRng));
    format!("{prefix:08x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

impl ApiError {
    /// Any error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            request_id: None,
        }
    }

    /// A 400 licensing error (the SDKs raise `ClientError` for it).
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// `missing_parameters` naming the field.
    pub fn missing(field: &str) -> Self {
        Self::bad_request("missing_parameters", format!("Missing required parameter: {field}"))
    }

    /// `invalid_parameters` naming the field.
    pub fn invalid(field: &str, why: impl std::fmt::Display) -> Self {
        Self::bad_request("invalid_parameters", format!("Invalid parameter {field}: {why}"))
    }

    /// The documented unauthorized body (plus `status` and `code`).
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized: Please log in")
    }

    /// A user-role token on an admin endpoint.
    pub fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Admin role required")
    }

    /// The key gate refused `action` (exact text of the hardware-key page).
    pub fn key_not_accessible(action: &str) -> Self {
        Self::bad_request(
            "hardware_key_not_accessible",
            format!("No available valid hardware key to perform the action: {action}"),
        )
    }

    /// Unknown route.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "Not found")
    }

    /// Known route, wrong method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
        )
    }

    /// Something broke on our side: `detail` goes to the log under a fresh request id;
    /// the client gets `internal_error` and that id, never the detail (SQL text, paths).
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        let id = next_request_id();
        tracing::error!(request_id = %id, detail = %detail, "internal error");
        Self {
            request_id: Some(id.clone()),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                format!("Internal error (request id {id})"),
            )
        }
    }

    /// The store's queue is full: `503 server_busy` with `Retry-After`.
    pub fn busy() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_busy",
            "The server is busy; retry shortly",
        )
    }

    /// This node lost (or never held) the write lease: `503 not_leader`; a write it
    /// started was rolled back, never acknowledged.
    pub fn not_leader() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_leader",
            "This node is not the leader; retry through the cluster's address",
        )
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        match &self.request_id {
            None => json!({ "status": self.status.as_u16(), "code": self.code, "message": self.message }),
            Some(id) => json!({
                "status": self.status.as_u16(), "code": self.code, "message": self.message, "request_id": id,
            }),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Internal errors were logged with their detail where they were made.
        if self.status.is_server_error() && self.request_id.is_none() && self.code != "server_busy" {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let mut res = (self.status, Json(self.body())).into_response();
        if self.code == "server_busy" {
            res.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        res.extensions_mut().insert(crate::metrics::ErrorCode(self.code));
        res
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Busy => ApiError::busy(),
            StoreError::NotLeader => ApiError::not_leader(),
            other => ApiError::internal(other.to_string()),
        }
    }
}

/// The edge of the licensing service: every refusal is a `400` with the error's code and
/// message (the SDKs raise `ClientError` for it); storage failures are `503`/`500`.
impl From<LicenseError> for ApiError {
    fn from(e: LicenseError) -> Self {
        match e {
            LicenseError::Store(e) => e.into(),
            other => ApiError::bad_request(other.code(), other.to_string()),
        }
    }
}

/// A rejected license file: `400 license_file_invalid`, the reason's own code in the message.
impl From<crate::license_file::LicenseFileError> for ApiError {
    fn from(e: crate::license_file::LicenseFileError) -> Self {
        ApiError::bad_request("license_file_invalid", format!("{e} ({})", e.code()))
    }
}

/// `Retry-After` of a `server_busy` answer: a full queue drains within a second.
const RETRY_AFTER_SECS: &str = "1";

/// Short form for handler results.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn key_error_body_is_the_documented_one() {
        let e = ApiError::key_not_accessible("adding feature consumption");
        assert_eq!(
            e.body(),
            json!({"code":"hardware_key_not_accessible","message":"No available valid hardware key to perform the action: adding feature consumption","status":400})
        );
    }

    /// Each licensing refusal answers 400 with its code and the exact message the SDKs
    /// and `server/tests/http.rs` read; storage failures keep their 503/500.
    #[test]
    fn license_errors_map_to_status_code_and_message() {
        let cases: Vec<(LicenseError, u16, &str, &str)> = vec![
            (
                LicenseError::LicenseNotFound(7),
                400,
                "license_not_found",
                "License 7 not found",
            ),
            (
                LicenseError::LicenseNotActive,
                400,
                "license_not_active",
                "License is not active yet",
            ),
            (
                LicenseError::LicenseExpired,
                400,
                "license_expired",
                "License is expired",
            ),
            (
                LicenseError::FloatingNotAvailable,
                400,
                "floating_not_available",
                "No floating slots left for this license",
            ),
            (
                LicenseError::UserNotRegistered("bob".into()),
                400,
                "user_not_registered",
                "User bob is not registered to this license",
            ),
            (
                LicenseError::BorrowNotAllowed,
                400,
                "license_borrow_not_allowed",
                "This license cannot be borrowed",
            ),
            (
                LicenseError::BorrowUntilNotValid { max_hours: 48 },
                400,
                "borrow_until_not_valid",
                "borrowed_until must be in the future and at most 48 hours from now",
            ),
            (
                LicenseError::NotConsumptionLicense,
                400,
                "license_not_consumption",
                "This license is not a consumption license",
            ),
            (
                LicenseError::NegativeConsumptions { on: "license" },
                400,
                "negative_consumptions_not_allowed",
                "Negative consumptions are not allowed for this license",
            ),
            (
                LicenseError::NegativeConsumptions { on: "feature" },
                400,
                "negative_consumptions_not_allowed",
                "Negative consumptions are not allowed for this feature",
            ),
            (
                LicenseError::LicenseNotEnoughConsumptions,
                400,
                "license_not_enough_consumptions",
                "Not enough consumptions left on this license",
            ),
            (
                LicenseError::FeatureNotFound("f1".into()),
                400,
                "feature_not_found",
                "Feature f1 not found on this license",
            ),
            (
                LicenseError::FeatureNotConsumption("f1".into()),
                400,
                "feature_not_consumption",
                "Feature f1 is not a consumption feature",
            ),
            (
                LicenseError::FeatureNotEnoughConsumptions("f1".into()),
                400,
                "feature_not_enough_consumptions",
                "Not enough consumptions left on feature f1",
            ),
            (
                LicenseError::FeatureNotAvailable("f1".into()),
                400,
                "feature_not_available",
                "No floating slots left for feature f1",
            ),
            (
                LicenseError::InvalidParameter {
                    field: "consumptions",
                    why: "adding 1 to 9223372036854775807 overflows".into(),
                },
                400,
                "invalid_parameters",
                "Invalid parameter consumptions: adding 1 to 9223372036854775807 overflows",
            ),
            (
                LicenseError::Store(StoreError::Busy),
                503,
                "server_busy",
                "The server is busy; retry shortly",
            ),
        ];
        for (domain, status, code, message) in cases {
            assert_eq!(domain.code(), code, "{domain:?}");
            let api = ApiError::from(domain);
            assert_eq!(
                api.body(),
                json!({"status": status, "code": code, "message": message}),
                "{code}"
            );
        }
    }

    /// A storage failure is an internal error: the client gets a request id, never the
    /// detail (SQL text, paths).
    #[test]
    fn store_failures_are_internal_errors_without_detail() {
        let domain = LicenseError::Store(StoreError::Failed("disk I/O error at /var/x".into()));
        assert_eq!(domain.code(), "internal_error");
        let api = ApiError::from(domain);
        assert_eq!(api.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(api.code, "internal_error");
        assert!(api.request_id.is_some());
        assert!(!api.message.contains("/var/x"), "{}", api.message);
        let closed = ApiError::from(StoreError::Closed);
        assert_eq!(
            (closed.status, closed.code),
            (StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
        );
    }
}
