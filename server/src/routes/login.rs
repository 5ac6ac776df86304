//! `GET /auth`: HTTP Basic in, `{"message":"Login successful","token":…}` out.
//!
//! Authentication mode: the client address and the account name are rate-limited before
//! any hashing (`429 too_many_requests` with `Retry-After`); the password is checked on
//! the bounded hashing pool against the in-memory account copy, and unknown users are
//! checked against a dummy hash so they cost (and take) the same as known ones.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::header::{AUTHORIZATION, RETRY_AFTER};
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::auth::{parse_basic, MODE_AUTH, MODE_OPEN};
use crate::error::ApiError;
use crate::model::{AuditEvent, Role};
use crate::state::AppState;
use crate::store::transact;

/// How long a login refused by the rate limits waits before its 429 (at most its
/// `Retry-After`).
const REFUSAL_DELAY: Duration = Duration::from_millis(200);

/// `429 too_many_requests` with `Retry-After` (whole seconds, at least 1).
pub fn too_many(retry_after: Duration) -> Response {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut res = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        "Too many login attempts; retry later",
    )
    .into_response();
    res.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
    res
}

/// The client's address (unspecified when the server runs without connect info, as in
/// `oneshot` tests).
pub fn client_addr(ext: &Extensions) -> IpAddr {
    ext.get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

/// Authentication mode: checks the account's argon2 hash. No-auth mode: any credentials
/// (or none) get a token, because the node SDK refuses to register before it has one;
/// such tokens are marked and never accepted in authentication mode.
pub async fn auth_login(State(st): State<AppState>, ext: Extensions, headers: HeaderMap) -> Response {
    match login(&st, &ext, &headers).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn login(st: &AppState, ext: &Extensions, headers: &HeaderMap) -> Result<Value, Response> {
    let creds = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_basic);
    let token = if st.user_authentication() {
        let (user, password) = creds.ok_or_else(|| ApiError::unauthorized().into_response())?;
        let addr = client_addr(ext);
        let limiter = st.login_limiter();
        let attempt = match limiter.begin(addr, &user, Instant::now()) {
            Ok(attempt) => attempt,
            Err(retry_after) => {
                // A tarpit: a refused guess waits a moment for its 429, so a flood from a
                // few connections costs little CPU, which the legitimate logins need.
                tokio::time::sleep(retry_after.min(REFUSAL_DELAY)).await;
                return Err(too_many(retry_after));
            }
        };
        let account = st.accounts().get(&user);
        let pool = st.hash_pool();
        let verified = match &account {
            Some(a) => pool.verify(password, a.password_hash.clone(), attempt.trusted()).await,
            None => pool.verify_dummy(password).await,
        }
        .map_err(|_| too_many(Duration::from_secs(1)))?;
        let Some(account) = account.filter(|_| verified) else {
            let bursts = limiter.failure(addr, &user, Instant::now());
            for b in bursts {
                tracing::warn!(scope = b.scope, key = %b.key, failures = b.failures, "failed-login burst: delaying further attempts");
                let detail = format!(
                    "{} failed logins for {} {}; further attempts delayed",
                    b.failures, b.scope, b.key
                );
                let event = AuditEvent::new("login_failures", Some(&user), None, detail);
                // Audited in the background: the refusal does not wait for a commit.
                let done = transact(st.store(), move |tx| tx.audit(&event));
                tokio::spawn(done);
            }
            return Err(ApiError::unauthorized().into_response());
        };
        limiter.success(addr, &user);
        st.tokens().issue(&user, account.role, account.generation, MODE_AUTH)
    } else {
        let name = creds.map_or_else(|| "anonymous".to_owned(), |(u, _)| u);
        st.tokens().issue(&name, Role::Admin, 0, MODE_OPEN)
    };
    let token = token.map_err(|e| ApiError::internal(format!("cannot sign token: {e}")).into_response())?;
    Ok(json!({ "message": "Login successful", "token": token }))
}
