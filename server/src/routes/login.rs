//! `GET /auth`: HTTP Basic in, `{"message":"Login successful","token":…}` out.

use axum::extract::State;
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use crate::auth::{parse_basic, verify_password};
use crate::error::{ApiError, ApiResult};
use crate::model::Role;
use crate::state::AppState;
use crate::store::read;

/// Authentication mode: checks the account's argon2 hash. No-auth mode: any credentials
/// (or none) get a token, because the node SDK refuses to register before it has one.
pub async fn auth_login(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let creds = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_basic);
    let (username, role) = if st.user_authentication() {
        let (user, password) = creds.ok_or_else(ApiError::unauthorized)?;
        let name = user.clone();
        let account = read(st.store(), move |tx| Ok(tx.account(&name)?)).await?;
        let Some(account) = account else {
            return Err(ApiError::unauthorized());
        };
        // Argon2 is deliberately slow: keep it off the async workers.
        let hash = account.password_hash.clone();
        let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .unwrap_or(false);
        if !ok {
            return Err(ApiError::unauthorized());
        }
        (account.username, account.role)
    } else {
        let name = creds.map_or_else(|| "anonymous".to_owned(), |(u, _)| u);
        (name, Role::Admin)
    };
    let token = st
        .tokens()
        .issue(&username, role)
        .map_err(|e| ApiError::internal(format!("cannot sign token: {e}")))?;
    Ok(Json(json!({ "message": "Login successful", "token": token })))
}
