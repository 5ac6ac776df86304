//! The API error: every 4xx/5xx answer is `{"status","code","message"}` with a string `code`
//! (the Python SDK crashes on error bodies without one, spec §3).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

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
}

impl ApiError {
    /// Any error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
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

    /// Something broke on our side; details go to the log, not to the client.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_server_error", message)
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({ "status": self.status.as_u16(), "code": self.code, "message": self.message })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let mut res = (self.status, Json(self.body())).into_response();
        res.extensions_mut().insert(crate::metrics::ErrorCode(self.code));
        res
    }
}

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
}
