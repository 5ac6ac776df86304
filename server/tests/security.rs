//! Issue 13 attacks, in process: each one reproduced against the app and refused.
#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{harness, login_request, q, Harness};
use keyfloat_server::model::Role;
use keyfloat_server::store::transact;
use serde_json::json;

/// Restarts the app over the same data dir with `auth` (the monitor thread revalidates).
async fn restart(h: Harness, auth: bool) -> Harness {
    h.restart(auth, true).await
}

async fn licenses_status(h: &Harness, token: &str) -> StatusCode {
    h.get_as("/api/v4/license", Some(token)).await.0
}

/// Attack: a token minted by `/auth` while authentication was off (any credentials,
/// role admin, ten years) used after the same data dir restarts in authentication mode.
#[tokio::test]
async fn a_no_auth_token_is_refused_after_switching_authentication_on() {
    let h = harness(false).await;
    let (s, v) = h.login("admin", "anything").await;
    assert_eq!(s, StatusCode::OK);
    let open_token = v["token"].as_str().unwrap().to_owned();
    let h = restart(h, true).await;
    h.add_account("admin", "real-pw", Role::Admin).await;
    assert_eq!(licenses_status(&h, &open_token).await, StatusCode::UNAUTHORIZED);
    let (s, _) = h
        .get_as("/api/v4/addProduct?product=p&licenseKey=K", Some(&open_token))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let real = h.token("admin", "real-pw").await;
    assert_eq!(licenses_status(&h, &real).await, StatusCode::OK);
}

async fn bump(h: &Harness, name: &'static str) {
    transact(h.store.as_ref(), move |tx| tx.bump_token_generation(name))
        .await
        .unwrap();
    h.state.reload_accounts().await.unwrap();
}

/// Attack: keep using a token after the password changed, the role changed, the tokens
/// were revoked, or the account was deleted (and re-created with the same name).
#[tokio::test]
async fn tokens_die_with_password_role_revocation_and_deletion() {
    let h = harness(true).await;
    h.add_account("ann", "pw1", Role::Admin).await;

    // Password change (what `keyfloat user passwd` does: new hash, next generation).
    let t = h.token("ann", "pw1").await;
    assert_eq!(licenses_status(&h, &t).await, StatusCode::OK);
    h.add_account("ann", "pw2", Role::Admin).await;
    bump(&h, "ann").await;
    assert_eq!(licenses_status(&h, &t).await, StatusCode::UNAUTHORIZED, "after passwd");
    assert_eq!(h.login("ann", "pw1").await.0, StatusCode::UNAUTHORIZED, "old password");

    // Role change: an admin token of a demoted account.
    let t = h.token("ann", "pw2").await;
    h.add_account("ann", "pw2", Role::User).await;
    bump(&h, "ann").await;
    let (s, _) = h.get_as("/api/v4/addProduct?product=p&licenseKey=K", Some(&t)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "after demotion");

    // Revocation.
    let t = h.token("ann", "pw2").await;
    assert_eq!(licenses_status(&h, &t).await, StatusCode::OK);
    bump(&h, "ann").await;
    assert_eq!(licenses_status(&h, &t).await, StatusCode::UNAUTHORIZED, "after revoke");

    // Deletion, then re-creation under the same name.
    let t = h.token("ann", "pw2").await;
    transact(h.store.as_ref(), |tx| {
        tx.delete_account("ann")?;
        tx.bump_token_generation("ann").map(drop)
    })
    .await
    .unwrap();
    h.state.reload_accounts().await.unwrap();
    assert_eq!(licenses_status(&h, &t).await, StatusCode::UNAUTHORIZED, "after delete");
    h.add_account("ann", "pw2", Role::User).await;
    assert_eq!(
        licenses_status(&h, &t).await,
        StatusCode::UNAUTHORIZED,
        "a re-created account does not revive old tokens"
    );
}

/// Attack: 40 wrong passwords in a row from one address against one account. After the
/// free failures the address gets `429` with `Retry-After` before any hashing; the burst
/// is audited once.
#[tokio::test]
async fn a_wrong_password_flood_gets_429_and_is_audited() {
    let h = harness(true).await;
    h.add_account("admin", "right", Role::Admin).await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..40 {
        let (s, headers, v) = h.send_full(login_request("admin", "wrong")).await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(v["code"], "too_many_requests");
            retry_after = headers.get(header::RETRY_AFTER).cloned();
        }
        statuses.push(s);
    }
    let limited = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
    assert!(limited >= 30, "{limited} × 429, {refused} × 401");
    assert!(refused <= 10, "only the free failures reach the hash: {refused}");
    let secs: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    assert!(secs >= 1);
    // Even the right password waits out the delay (same address, same account).
    assert_eq!(h.login("admin", "right").await.0, StatusCode::TOO_MANY_REQUESTS);
    // The burst was audited once.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let events = transact(h.store.as_ref(), |tx| tx.audit_events(None, 1000))
        .await
        .unwrap();
    let bursts: Vec<_> = events.iter().filter(|e| e.kind == "login_failures").collect();
    assert_eq!(bursts.len(), 2, "one per address and one per account: {bursts:?}");
}

/// `/metrics` in authentication mode: no token = 401; an account token works; the
/// per-license series can be turned off.
#[tokio::test]
async fn metrics_need_a_token_in_authentication_mode() {
    let h = harness(true).await;
    h.add_account("admin", "pw", Role::Admin).await;
    let t = h.token("admin", "pw").await;
    let (s, _) = h
        .get_as("/api/v4/addProduct?product=secret-product&licenseKey=K", Some(&t))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = h.get("/metrics").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, v) = h.get_as("/metrics", Some("not-a-token")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, v) = h.get_as("/metrics", Some(&t)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v.as_str().unwrap().contains("secret-product"));
}

/// Attack: nonsense terms in `addProduct`. Each is refused with `400 invalid_parameters`
/// naming the field, and nothing is added.
#[tokio::test]
async fn nonsense_terms_are_refused_naming_the_field() {
    let h = harness(false).await;
    let features = |f: serde_json::Value| format!("&features={}", q(&f));
    let cases = [
        ("maxConsumptions=-1", "maxConsumptions"),
        ("floatingUsers=0", "floatingUsers"),
        (
            &*features(json!([{"code":"f","feature_type":"consumption","max_consumption":-5}])),
            "features.max_consumption",
        ),
        ("maxConsumptions=10&consumptionPeriod=fortnightly", "consumptionPeriod"),
        ("license_id=0", "license_id"),
        ("license_id=9007199254740992", "license_id"),
        ("license_id=18446744073709551615", "license_id"),
        (
            "validFrom=2027-01-01T00:00:00Z&validUntil=2026-01-01T00:00:00Z",
            "validUntil",
        ),
        ("allowedSerials=%5B%7B%7D%5D&isHWKeyReq=true", "allowedSerials"),
        ("allowedSerials=%5Btrue%5D&isHWKeyReq=true", "allowedSerials"),
        ("allowedSerials=%5B-5%5D&isHWKeyReq=true", "allowedSerials"),
    ];
    for (extra, field) in cases {
        let (s, v) = h
            .get(&format!("/api/v4/addProduct?product=p&licenseKey=K&{extra}"))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{extra}: {v}");
        assert_eq!(v["code"], "invalid_parameters", "{extra}: {v}");
        assert!(v["message"].as_str().unwrap().contains(field), "{extra}: {v}");
    }
    let (_, list) = h.get("/api/v4/license").await;
    assert_eq!(list.as_array().unwrap().len(), 0, "nothing was added: {list}");
    // The largest id JavaScript holds exactly is fine.
    let id = h
        .add_product("product=p&licenseKey=K&license_id=9007199254740991")
        .await;
    assert_eq!(id, 9_007_199_254_740_991);
}

/// Attack: `allowedSerials` given as numbers used to be dropped, binding the license to
/// whatever key was in force. Numbers are serials now: a license allowed only for another
/// serial cannot be activated with the key in force.
#[tokio::test]
async fn numeric_allowed_serials_bind_the_license() {
    let h = harness(false).await;
    let (s, v) = h
        .get("/api/v4/addProduct?product=p&licenseKey=K&isHWKeyReq=true&allowedSerials=%5B99999999%5D")
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["code"], "hardware_key_not_allowed", "{v}");
    let id = h
        .add_product(&format!(
            "product=p&licenseKey=K&isHWKeyReq=true&allowedSerials=%5B{}%5D",
            common::SERIAL
        ))
        .await;
    let (_, list) = h.get(&format!("/api/v4/license?license_id={id}")).await;
    assert!(list.to_string().contains(common::SERIAL), "{list}");
}

/// Attack: drive totals past i64::MAX, and below zero with negative consumptions. Both
/// are refused with 400 and change nothing.
#[tokio::test]
async fn consumption_arithmetic_is_exact() {
    let h = harness(false).await;
    h.add_product(
        "product=c&licenseKey=K&maxConsumptions=10&allowUnlimitedConsumptions=true&allowNegativeConsumptions=true",
    )
    .await;
    let add = |n: i64| h.post("/api/v4/add_consumption", json!({"product":"c","consumptions":n}));
    let (s, v) = add(i64::MAX - 1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = add(5).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_parameters")),
        "{v}"
    );
    let (s, v) = add(1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["total_consumptions"], json!(i64::MAX), "{v}");
    let (s, _) = add(1).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a saturated addition is not acknowledged");

    h.add_product("product=n&licenseKey=K&maxConsumptions=10&allowNegativeConsumptions=true")
        .await;
    let sub = |n: i64| h.post("/api/v4/add_consumption", json!({"product":"n","consumptions":n}));
    assert_eq!(sub(3).await.0, StatusCode::OK);
    let (s, v) = sub(-4).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "below zero: {v}");
    let (s, v) = sub(i64::MIN).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = sub(-3).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["total_consumptions"], 0, "{v}");
    // The max-10 license still holds exactly 10.
    assert_eq!(sub(10).await.0, StatusCode::OK);
    assert_eq!(sub(1).await.0, StatusCode::BAD_REQUEST);
}

/// The page's Content-Security-Policy allows only its own script and style.
#[tokio::test]
async fn the_page_sends_a_strict_csp() {
    let h = harness(false).await;
    let (s, headers, _) = h.send_full(Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'sha256-"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
}

/// The page's badge endpoint: intact, then the edited record is named.
#[tokio::test]
async fn audit_verify_endpoint_names_an_edited_record() {
    let h = harness(false).await;
    for p in ["a", "b"] {
        h.add_product(&format!("product={p}&licenseKey=K")).await;
    }
    let (s, v) = h.get("/api/v4/audit/verify").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    let (_, events) = h.get("/api/v4/audit?limit=1").await;
    let id = events[0]["id"].as_i64().unwrap();
    // A second connection edits the row behind the server's back.
    rusqlite_edit(&h, id);
    let (_, v) = h.get("/api/v4/audit/verify").await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["first_bad"]["id"], id, "{v}");
}

fn rusqlite_edit(h: &Harness, id: i64) {
    let conn = keyfloat_server::store::audit_chain::Connection::open(h.dir.path().join("keyfloat.db")).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    conn.execute("UPDATE audit SET detail = 'edited' WHERE id = ?1", [id])
        .unwrap();
}

/// User enumeration: an unknown user name costs one argon2 verification, like a known
/// one with a wrong password (the dummy hash), and gets the same answer.
#[tokio::test]
async fn unknown_users_cost_a_hash_like_known_ones() {
    let h = harness(true).await;
    h.add_account("real", "pw", Role::User).await;
    let pool = h.state.hash_pool();
    let before = pool.hashes_done();
    let known = h.login("real", "wrong").await;
    let after_known = pool.hashes_done();
    let unknown = h.login("ghost", "wrong").await;
    let after_unknown = pool.hashes_done();
    assert_eq!(known, unknown, "same status and body");
    assert_eq!(after_known - before, 1);
    assert_eq!(after_unknown - after_known, 1, "the unknown user was hashed too");
}

/// Garbage in `Authorization` on `/auth` and on a protected route: 401 or 429, never a
/// 5xx, never a token.
#[tokio::test]
async fn garbage_credentials_never_crash_or_pass() {
    let h = harness(true).await;
    h.add_account("admin", "pw", Role::Admin).await;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let fixed = [
        "Basic".to_owned(),
        "Basic ".to_owned(),
        "Basic ====".to_owned(),
        "Basic OjpaOg==".to_owned(),
        format!("Basic {}", "A".repeat(64 * 1024)),
        "Bearer".to_owned(),
        "Bearer a.b.c".to_owned(),
        "bEaReR eyJhbGciOiJIUzI1NiJ9.e30.x".to_owned(),
        "Basic \u{0}\u{1}".to_owned(),
    ];
    let mut headers: Vec<String> = fixed.to_vec();
    for _ in 0..300 {
        let len = (next() % 80) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| (next() % 95 + 32) as u8).collect();
        let tail = String::from_utf8(bytes).unwrap();
        headers.push(if next() % 2 == 0 {
            format!("Basic {tail}")
        } else {
            format!("Bearer {tail}")
        });
    }
    for (i, value) in headers.iter().enumerate() {
        let Ok(v) = axum::http::HeaderValue::from_str(value) else {
            continue;
        };
        for uri in ["/auth", "/api/v4/license"] {
            let mut req = Request::get(uri).body(Body::empty()).unwrap();
            req.headers_mut().insert(header::AUTHORIZATION, v.clone());
            let (s, body) = h.send(req).await;
            assert!(
                s == StatusCode::UNAUTHORIZED || s == StatusCode::TOO_MANY_REQUESTS,
                "#{i} {uri} {value:.80}: {s} {body}"
            );
            assert!(body.get("token").is_none());
        }
    }
}

/// A signed license file whose id a JavaScript client cannot hold is refused like the
/// same id in `addProduct`, and nothing is added.
#[tokio::test]
async fn a_signed_file_with_an_id_beyond_2_53_is_refused() {
    use keyfloat_server::license_file::{sign_license, LicenseAuth, LicenseDoc};
    let h = harness(false).await;
    let doc = LicenseDoc::new(
        1 << 53,
        "big",
        LicenseAuth::Key {
            license_key: "K".into(),
        },
    );
    let (s, v) = h
        .send(
            Request::post("/api/v4/license/upload")
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from(sign_license(&doc, &h.vendor)))
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["code"], "invalid_parameters", "{v}");
    assert!(v["message"].as_str().unwrap().contains("license_id"), "{v}");
    let (_, list) = h.get("/api/v4/license").await;
    assert_eq!(list.as_array().unwrap().len(), 0);
}
