//! HTTP handlers, one module per area. Handlers are named `resource_verb`.

pub mod admin;
pub mod client;
pub mod health;
pub mod login;
pub mod sim;

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use crate::auth::{parse_bearer, Caller};
use crate::error::ApiError;
use crate::model::Role;
use crate::state::AppState;

/// A JSON answer written once into a buffer of `capacity` bytes (axum's `Json` starts at
/// 128 bytes and doubles: four reallocations and copies for a 2 KB register answer).
pub(crate) fn json_sized<T: serde::Serialize>(value: &T, capacity: usize) -> Response {
    let mut body = Vec::with_capacity(capacity);
    match serde_json::to_writer(&mut body, value) {
        Ok(()) => ([(CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// Room for a register answer: the license object twice (its fields, and escaped as
/// `license_json`) plus the seat's fields.
pub(crate) const REGISTER_ANSWER_BYTES: usize = 3072;

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    /// No-auth mode: everyone, and the `Authorization` header is ignored (node sends
    /// `Bearer undefined`). Authentication mode: a valid HS256 bearer token from
    /// authentication mode whose account exists and still has the token's generation.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if !state.user_authentication() {
            return Ok(Caller {
                username: "anonymous".into(),
                role: Role::Admin,
            });
        }
        parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_bearer)
            .and_then(|t| state.tokens().decode(t))
            .and_then(|claims| state.accounts().caller(&claims))
            .ok_or_else(ApiError::unauthorized)
    }
}

/// A caller with the admin role (403 `forbidden` for a user token).
#[derive(Debug, Clone)]
pub struct Admin(pub Caller);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.role != Role::Admin {
            return Err(ApiError::forbidden());
        }
        Ok(Admin(caller))
    }
}
