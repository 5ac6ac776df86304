//! Every endpoint, role and error of the FS v1 API through `app().oneshot(..)`.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{harness, harness_with, q, Options, KEY, MACHINE, OTHER_KEY, SERIAL};
use keyfloat_server::license_file::{sign_license, ConsumptionTerms, LicenseAuth, LicenseDoc};
use keyfloat_server::model::Role;
use keyfloat_server::KeyPolicy;
use serde_json::{json, Value};

const HW_FEATURES: &str = r#"[{"code":"consFeature2","kind":"consumption","max_consumption":10},{"code":"floatFeature","kind":"activation","floating_users":1}]"#;

fn hw_query() -> String {
    format!(
        "product=hwbased&licenseKey=AAAA-BBBB&isHWKeyReq=true&floatingUsers=2&maxConsumptions=100&features={}",
        q(&serde_json::from_str::<Value>(HW_FEATURES).unwrap())
    )
}

fn is_wire_date(s: &str) -> bool {
    // 2025-03-04T10:15:30Z or 2025-03-04T10:15:30.123456Z
    let b = s.as_bytes();
    (s.len() == 20 || (s.len() == 27 && b[19] == b'.')) && s.ends_with('Z') && b[10] == b'T'
}

/// The seed page's whole flow: admin login, add `hwbased` with isHWKeyReq, consumptions,
/// feature consumptions, register, feature register, pull the key, refused.
#[tokio::test]
async fn seed_flow_with_authentication_and_key_pull() {
    let h = harness(true).await;
    h.add_account("user1", "pw1", Role::Admin).await;
    let (s, login) = h.login("user1", "pw1").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(login["message"], "Login successful");
    let admin = login["token"].as_str().unwrap().to_owned();

    let (s, added) = h
        .call("GET", &format!("/api/v4/addProduct?{}", hw_query()), None, Some(&admin))
        .await;
    assert_eq!(s, StatusCode::OK, "{added}");
    assert_eq!(added["activation_hardware_id"], SERIAL);
    let id = added["license_id"].as_u64().unwrap();

    let t = Some(admin.as_str());
    let add_one_cons_feature2 = || {
        h.post_as(
            "/api/v4/add_feature_consumption",
            json!({"product":"hwbased","feature":"consFeature2","consumptions":1}),
            t,
        )
    };
    let (s, v) = h
        .post_as(
            "/api/v4/add_consumption",
            json!({"product":"hwbased","consumptions":"2"}),
            t,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["total_consumptions"], 2);
    assert_eq!(v["id"], id);
    let (s, v) = add_one_cons_feature2().await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["total_consumptions"], 1);
    let (s, v) = h
        .post_as("/api/v4/register", json!({"product":"hwbased","user":"user2"}), t)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["license_json"].is_string());
    let (s, v) = h
        .post_as("/api/v4/featureRegister", json!({"product":"hwbased","feature":"consFeature2","user":"user2","os_hostname":"","ip_local":"0.1.1.1","user_info":"","registered_at":"2024-09-19T12:39:16.356495803-07:00","borrowed_until":"0001-01-01T00:00:00Z"}), t)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["product"], "hwbased");
    assert_eq!(v["feature"], "consFeature2");
    assert_eq!(v["borrowed_until"], Value::Null);

    // The license list shows the activation hardware id = key serial.
    let (s, list) = h.get_as("/api/v4/license", t).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list[0]["activation_hardware_id"], SERIAL);
    assert_eq!(list[0]["hardware_key_required"], true);

    h.unplug().await;
    let (s, v) = add_one_cons_feature2().await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        v,
        json!({"code":"hardware_key_not_accessible","message":"No available valid hardware key to perform the action: adding feature consumption","status":400})
    );
    // Nothing changed.
    let (_, list) = h.get_as("/api/v4/license", t).await;
    let feats = list[0]["product_features"].as_array().unwrap();
    assert_eq!(feats[0]["total_consumptions"], 1);

    // Every action names itself.
    for (uri, body, action) in [
        (
            "/api/v4/register",
            json!({"product":"hwbased","user":"u"}),
            "registering user",
        ),
        (
            "/api/v4/unregister",
            json!({"product":"hwbased","user":"u"}),
            "unregistering user",
        ),
        (
            "/api/v4/borrow",
            json!({"product":"hwbased","user":"user2","borrowed_until":null}),
            "borrowing license",
        ),
        (
            "/api/v4/add_consumption",
            json!({"product":"hwbased","consumptions":1}),
            "adding consumption",
        ),
        (
            "/api/v4/featureRegister",
            json!({"product":"hwbased","user":"user2","feature":"floatFeature"}),
            "registering feature",
        ),
        (
            "/api/v4/featureRelease",
            json!({"product":"hwbased","user":"user2","feature":"floatFeature"}),
            "releasing feature",
        ),
    ] {
        let (s, v) = h.call("POST", uri, Some(body), t).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(v["code"], "hardware_key_not_accessible", "{uri}");
        assert_eq!(
            v["message"],
            format!("No available valid hardware key to perform the action: {action}")
        );
    }

    // Plugged back: service resumes by itself.
    h.plug().await;
    let (s, v) = add_one_cons_feature2().await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["total_consumptions"], 2);
}

#[tokio::test]
async fn adding_a_key_bound_license_needs_a_valid_key() {
    let h = harness_with(Options {
        plugged: false,
        ..Options::default()
    })
    .await;
    let (s, v) = h.get(&format!("/api/v4/addProduct?{}", hw_query())).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        v["message"],
        "No available valid hardware key to perform the action: adding product"
    );
    // Without the flag, the machine's hardware id is recorded.
    let id = h.add_product("product=plain&licenseKey=K").await;
    let (_, list) = h.get(&format!("/api/v4/license?license_id={id}")).await;
    assert_eq!(list[0]["activation_hardware_id"], MACHINE);
    // allowed serials
    h.plug().await;
    let (s, v) = h
        .get("/api/v4/addProduct?product=p2&licenseKey=K&isHWKeyReq=1&allowedSerials=999")
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["code"], "hardware_key_not_allowed");
    h.add_product(&format!(
        "product=p2&licenseKey=K&isHWKeyReq=1&allowedSerials=999,{SERIAL}"
    ))
    .await;
}

#[tokio::test]
async fn another_valid_key_is_not_the_activation_key_and_plain_licenses_ignore_keys() {
    let h = harness(false).await;
    h.add_product(&hw_query()).await;
    h.add_product("product=plain&licenseKey=K&floatingUsers=3").await;
    h.bus.swap(KEY, OTHER_KEY).unwrap();
    h.sync_keys();
    assert_eq!(
        h.state.keys().hardware_id().as_str(),
        "87654321",
        "the other key is in force"
    );
    let (s, v) = h
        .post("/api/v4/register", json!({"product":"hwbased","user":"a"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["code"], "hardware_key_not_accessible");
    let (s, _) = h.post("/api/v4/register", json!({"product":"plain","user":"a"})).await;
    assert_eq!(s, StatusCode::OK);
    h.bus.unplug(OTHER_KEY).unwrap();
    h.wait_key(false).await;
    let (s, _) = h.post("/api/v4/register", json!({"product":"plain","user":"b"})).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn after_a_restart_key_bound_actions_wait_for_revalidation() {
    let h = harness(false).await;
    h.add_product(&hw_query()).await;
    let (s, _) = h
        .post("/api/v4/register", json!({"product":"hwbased","user":"a"}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut h2 = h.restart(false, false).await;
    let (s, v) = h2
        .post("/api/v4/add_consumption", json!({"product":"hwbased","consumptions":1}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["code"], "hardware_key_not_accessible");
    h2.start_monitor();
    h2.wait_key(true).await;
    let (s, v) = h2
        .post("/api/v4/add_consumption", json!({"product":"hwbased","consumptions":1}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The registration survived the restart.
    let (_, regs) = h2.get("/api/v4/registrations").await;
    assert_eq!(regs["registrations"][0]["user"], "a");
}

#[tokio::test]
async fn crash_policy_calls_the_hook_instead_of_answering() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let h = harness_with(Options {
        policy: KeyPolicy::Crash(Arc::new(move |_reason: &str| {
            c.fetch_add(1, Ordering::SeqCst);
        })),
        ..Options::default()
    })
    .await;
    h.add_product(&hw_query()).await;
    h.add_product("product=plain&licenseKey=K").await;
    h.unplug().await;
    let _ = h.post("/api/v4/register", json!({"product":"plain","user":"a"})).await;
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let _ = h
        .post("/api/v4/register", json!({"product":"hwbased","user":"a"}))
        .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn authentication_mode_roles_and_bad_tokens() {
    let h = harness(true).await;
    h.add_account("admin", "a-pw", Role::Admin).await;
    h.add_account("bob", "b-pw", Role::User).await;
    let admin = h.token("admin", "a-pw").await;
    let user = h.token("bob", "b-pw").await;
    let unauthorized = json!({"status":401,"code":"unauthorized","message":"Unauthorized: Please log in"});

    let (s, v) = h.login("bob", "wrong").await;
    assert_eq!((s, v), (StatusCode::UNAUTHORIZED, unauthorized.clone()));
    let (s, _) = h.login("nobody", "x").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = h.get("/auth").await;
    assert_eq!((s, v), (StatusCode::UNAUTHORIZED, unauthorized.clone()));

    // User token on admin endpoints: 403.
    for (m, uri) in [
        ("GET", "/api/v4/addProduct?product=p&licenseKey=K"),
        ("GET", "/api/v4/removeProduct?product=p"),
        ("POST", "/api/v4/license/upload"),
        ("GET", "/api/v4/audit"),
        ("POST", "/api/v4/registrations/release"),
        ("POST", "/api/v4/sim/unplug"),
    ] {
        let (s, v) = h.call(m, uri, None, Some(&user)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{uri}");
        assert_eq!(v["code"], "forbidden");
    }
    let (s, _) = h
        .get_as("/api/v4/addProduct?product=p&licenseKey=K", Some(&admin))
        .await;
    assert_eq!(s, StatusCode::OK);
    // Users may do licensing calls, reports and health.
    let (s, _) = h
        .post_as("/api/v4/register", json!({"product":"p","user":"x"}), Some(&user))
        .await;
    assert_eq!(s, StatusCode::OK);
    for uri in ["/api/v4/license", "/api/v4/health", "/api/v4/unregister/all"] {
        let (s, _) = h.get_as(uri, Some(&user)).await;
        assert_eq!(s, StatusCode::OK, "{uri}");
    }

    // Missing, garbage, wrongly signed, alg none: 401.
    let forged = keyfloat_server::auth::TokenKeys::from_secret(&[1; 32])
        .issue("admin", Role::Admin, 0, "auth")
        .unwrap();
    let payload = admin.split('.').nth(1).unwrap();
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    for tok in [
        None,
        Some("garbage"),
        Some(forged.as_str()),
        Some(none.as_str()),
        Some("undefined"),
    ] {
        let (s, v) = h
            .call("POST", "/api/v4/register", Some(json!({"product":"p","user":"x"})), tok)
            .await;
        assert_eq!((s, v), (StatusCode::UNAUTHORIZED, unauthorized.clone()), "{tok:?}");
    }
    // An expired token.
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"username":"admin","role":"admin","iat":1,"exp":2}),
        &jsonwebtoken::EncodingKey::from_secret(
            &base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                std::fs::read_to_string(h.dir.path().join("jwt-secret")).unwrap().trim(),
            )
            .unwrap(),
        ),
    )
    .unwrap();
    let (s, _) = h.get_as("/api/v4/license", Some(&expired)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Open endpoints.
    let (s, _) = h.get("/").await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn no_auth_mode_ignores_authorization_and_still_issues_tokens() {
    let h = harness(false).await;
    h.add_product("product=p&licenseKey=K").await;
    let (s, v) = h.get("/auth").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["message"], "Login successful");
    assert!(v["token"].as_str().is_some_and(|t| !t.is_empty()));
    let (s, _) = h
        .post_as(
            "/api/v4/add_consumption",
            json!({"product":"p","consumptions":1}),
            Some("undefined"),
        )
        .await;
    // Not a consumption license, but the header was ignored (400, not 401).
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = h
        .post_as("/api/v4/register", json!({"product":"p","user":"x"}), Some("undefined"))
        .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn register_response_shape_for_the_sdks() {
    let h = harness(false).await;
    let id = h
        .add_product(&format!(
            "product=acme&licenseKey=K-1&floatingUsers=10&maxConsumptions=500&allowOverages=true&maxOverages=50&features={}",
            q(&json!([{"code":"render","kind":"activation","floating_users":3,"floating_timeout":15},{"code":"pdf","kind":"consumption","max_consumption":50}]))
        ))
        .await;
    let (s, v) = h
        .post(
            "/api/v4/register",
            json!({"sdk_ver":"PythonSDK 4.0.0","ip_local":null,"user_info":null,"os_hostname":"ws","product":"acme","user":"3281355014145","license_id":id,"unknown":{"x":1}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v.get("user").is_none(), "no top-level user");
    assert_eq!(v["floating_slots_in_use"], 1);
    assert_eq!(v["floating_in_use"], 1);
    assert_eq!(v["borrowed_until"], Value::Null);
    assert!(is_wire_date(v["registered_at"].as_str().unwrap()));
    let lj: Value = serde_json::from_str(v["license_json"].as_str().unwrap()).unwrap();
    assert_eq!(lj["id"], id);
    assert_eq!(lj["is_floating"], true);
    assert_eq!(lj["floating_timeout"], 30);
    assert_eq!(lj["product_details"]["short_code"], "acme");
    assert_eq!(lj["product_features"][0]["floating_timeout"], 15);
    assert_eq!(lj["product_features"][1]["feature_type"], "consumption");
    assert_eq!(lj["product_features"][1]["max_consumption"], 50);
    assert_eq!(lj["max_overages"], 50);
    assert!(lj.get("hardware_id").is_none());
    assert_eq!(v["id"], id, "license fields duplicated at the top level");
    assert_eq!(v["is_floating"], true);
}

#[tokio::test]
async fn floating_seats_renewal_and_unregister() {
    let h = harness(false).await;
    h.add_product("product=p&licenseKey=K&floatingUsers=2").await;
    let reg = |u: &str| json!({"product":"p","user":u});
    assert_eq!(h.post("/api/v4/register", reg("a")).await.0, StatusCode::OK);
    assert_eq!(h.post("/api/v4/register", reg("a")).await.1["floating_slots_in_use"], 1);
    assert_eq!(h.post("/api/v4/register", reg("b")).await.0, StatusCode::OK);
    let (s, v) = h.post("/api/v4/register", reg("c")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["code"], "floating_not_available");
    // Renewal by a holder never takes a second seat.
    assert_eq!(h.post("/api/v4/register", reg("b")).await.1["floating_slots_in_use"], 2);
    let (s, v) = h.post("/api/v4/unregister", reg("a")).await;
    assert_eq!((s, v), (StatusCode::OK, json!("user_unregistered")));
    // Idempotent.
    assert_eq!(h.post("/api/v4/unregister", reg("a")).await.0, StatusCode::OK);
    assert_eq!(h.post("/api/v4/register", reg("c")).await.0, StatusCode::OK);
    let (s, v) = h.get("/api/v4/unregister/all").await;
    assert_eq!((s, v), (StatusCode::OK, json!("")));
    let (_, regs) = h.get("/api/v4/registrations").await;
    assert_eq!(regs["registrations"], json!([]));
}

#[tokio::test]
async fn registrations_lapse_after_the_floating_timeout() {
    use keyfloat_server::service::{self, ClientInfo};
    use keyfloat_server::store::transact;
    let h = harness(false).await;
    let id = h
        .add_product("product=p&licenseKey=K&floatingUsers=1&floatingTimeout=30")
        .await;
    let now = keyfloat_server::clock::now_micros();
    let who = |u: &str| ClientInfo {
        user: u.into(),
        ..ClientInfo::default()
    };
    let (a, b) = (who("a"), who("b"));
    let license = h.state.catalog().get(id).unwrap().license.clone();
    let (l1, l2, l3) = (license.clone(), license.clone(), license);
    transact(h.state.store(), move |tx| service::register(tx, &l1, &a, now))
        .await
        .unwrap();
    let b2 = b.clone();
    let e = transact(h.state.store(), move |tx| {
        service::register(tx, &l2, &b2, now + 29 * 60_000_000)
    })
    .await
    .unwrap_err();
    assert_eq!(e.code(), "floating_not_available");
    transact(h.state.store(), move |tx| {
        service::register(tx, &l3, &b, now + 31 * 60_000_000)
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn borrowing() {
    let h = harness(false).await;
    h.add_product("product=p&licenseKey=K&maxBorrowTime=48").await;
    h.add_product("product=nb&licenseKey=K&maxBorrowTime=0").await;
    let borrow_until = |until: &str| {
        h.post_code(
            "/api/v4/borrow",
            json!({"product":"p","user":"a","borrowed_until":until}),
        )
    };
    assert_eq!(
        borrow_until("2099-01-01T00:00:00Z").await,
        (StatusCode::BAD_REQUEST, json!("user_not_registered"))
    );
    h.post("/api/v4/register", json!({"product":"p","user":"a"})).await;
    assert_eq!(
        borrow_until("2099-01-01T00:00:00Z").await,
        (StatusCode::BAD_REQUEST, json!("borrow_until_not_valid"))
    );
    assert_eq!(
        borrow_until("yesterday").await,
        (StatusCode::BAD_REQUEST, json!("borrow_until_not_valid"))
    );
    let until = keyfloat_server::clock::format_micros(keyfloat_server::clock::now_micros() + 3_600_000_000);
    let (s, v) = h
        .post(
            "/api/v4/borrow",
            json!({"product":"p","user":"a","borrowed_until":until}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(is_wire_date(v["borrowed_until"].as_str().unwrap()));
    assert_eq!(v["max_borrow_time"], 48);
    assert!(v.get("user").is_none());
    let (s, v) = h.post("/api/v4/register", json!({"product":"p","user":"a"})).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["borrowed_until"].is_string());
    h.post("/api/v4/register", json!({"product":"nb","user":"a"})).await;
    assert_eq!(
        h.post_code("/api/v4/borrow", json!({"product":"nb","user":"a"})).await,
        (StatusCode::BAD_REQUEST, json!("license_borrow_not_allowed"))
    );
}

#[tokio::test]
async fn consumptions_and_overages() {
    let h = harness(false).await;
    h.add_product("product=c&licenseKey=K&maxConsumptions=10&allowOverages=true&maxOverages=5")
        .await;
    h.add_product("product=n&licenseKey=K&maxConsumptions=10&allowNegativeConsumptions=true&allowNegativeTotal=true")
        .await;
    h.add_product("product=plain&licenseKey=K").await;
    let add = |p: &str, body: Value| {
        let mut b = body;
        b["product"] = json!(p);
        b
    };
    let (s, v) = h
        .post("/api/v4/add_consumption", add("c", json!({"consumptions":"10"})))
        .await;
    assert_eq!((s, v["total_consumptions"].clone()), (StatusCode::OK, json!(10)));
    // Overage refused for this call (camelCase spelling, node style).
    assert_eq!(
        h.post_code(
            "/api/v4/add_consumption",
            add("c", json!({"consumptions":1,"allowOverages":false,"max_overages":null})),
        )
        .await,
        (StatusCode::BAD_REQUEST, json!("license_not_enough_consumptions"))
    );
    let (s, _) = h
        .post(
            "/api/v4/add_consumption",
            add("c", json!({"consumptions":5,"allow_overages":"true"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        h.post_code("/api/v4/add_consumption", add("c", json!({"consumptions":1})))
            .await,
        (StatusCode::BAD_REQUEST, json!("license_not_enough_consumptions"))
    );
    assert_eq!(
        h.post_code("/api/v4/add_consumption", add("c", json!({"consumptions":-1})))
            .await,
        (StatusCode::BAD_REQUEST, json!("negative_consumptions_not_allowed"))
    );
    let (s, v) = h
        .post("/api/v4/add_consumption", add("n", json!({"consumptions":-3})))
        .await;
    assert_eq!((s, v["total_consumptions"].clone()), (StatusCode::OK, json!(-3)));
    assert_eq!(
        h.post_code("/api/v4/add_consumption", add("plain", json!({"consumptions":1})))
            .await,
        (StatusCode::BAD_REQUEST, json!("license_not_consumption"))
    );
    assert_eq!(
        h.post_code("/api/v4/add_consumption", add("c", json!({}))).await,
        (StatusCode::BAD_REQUEST, json!("missing_parameters"))
    );
    assert_eq!(
        h.post_code("/api/v4/add_consumption", add("c", json!({"consumptions":"many"})))
            .await,
        (StatusCode::BAD_REQUEST, json!("invalid_parameters"))
    );
}

#[tokio::test]
async fn floating_features() {
    let h = harness(false).await;
    h.add_product(&format!(
        "product=f&licenseKey=K&floatingUsers=5&features={}",
        q(&json!([{"code":"fl","kind":"activation","floating_users":1},{"code":"cf","kind":"consumption","max_consumption":2,"allow_overages":true,"max_overages":1}]))
    ))
    .await;
    let fr = |u: &str, f: &str| json!({"product":"f","user":u,"feature":f});
    assert_eq!(
        h.post_code("/api/v4/featureRegister", fr("a", "fl")).await,
        (StatusCode::BAD_REQUEST, json!("user_not_registered"))
    );
    h.post("/api/v4/register", json!({"product":"f","user":"a"})).await;
    h.post("/api/v4/register", json!({"product":"f","user":"b"})).await;
    let (s, v) = h.post("/api/v4/featureRegister", fr("a", "fl")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["floating_in_use_devices"], 1);
    assert!(v.get("user").is_none());
    assert_eq!(h.post("/api/v4/featureRegister", fr("a", "fl")).await.0, StatusCode::OK);
    assert_eq!(
        h.post_code("/api/v4/featureRegister", fr("b", "fl")).await,
        (StatusCode::BAD_REQUEST, json!("feature_not_available"))
    );
    assert_eq!(
        h.post_code("/api/v4/featureRegister", fr("a", "nope")).await,
        (StatusCode::BAD_REQUEST, json!("feature_not_found"))
    );
    let (s, v) = h.post("/api/v4/featureRelease", fr("a", "fl")).await;
    assert_eq!((s, v), (StatusCode::OK, json!("feature_released")));
    // License API style alias with hardware_id.
    let (s, v) = h
        .get("/api/v4/check_license_feature?product=f&feature=fl&hardware_id=b")
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = h
        .post("/api/v4/feature_release/all", json!({"product":"f","feature":"fl"}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h.post("/api/v4/featureRegister", fr("a", "fl")).await.0, StatusCode::OK);
    // Unregistering the user frees its feature slot too.
    h.post("/api/v4/unregister", json!({"product":"f","user":"a"})).await;
    assert_eq!(h.post("/api/v4/featureRegister", fr("b", "fl")).await.0, StatusCode::OK);
    // Feature consumptions with overages.
    let fc = |n: i64, f: &str| json!({"product":"f","feature":f,"consumptions":n});
    assert_eq!(
        h.post("/api/v4/add_feature_consumption", fc(3, "cf")).await.1["total_consumptions"],
        3
    );
    assert_eq!(
        h.post_code("/api/v4/add_feature_consumption", fc(1, "cf")).await,
        (StatusCode::BAD_REQUEST, json!("feature_not_enough_consumptions"))
    );
    assert_eq!(
        h.post_code("/api/v4/add_feature_consumption", fc(1, "fl")).await,
        (StatusCode::BAD_REQUEST, json!("feature_not_consumption"))
    );
}

#[tokio::test]
async fn several_licenses_per_product_and_removal() {
    let h = harness(false).await;
    let first = h.add_product("product=p&licenseKey=K1&floatingUsers=1").await;
    let second = h.add_product("product=p&licenseKey=K2&floatingUsers=1").await;
    assert_ne!(first, second);
    let (_, v) = h.post("/api/v4/register", json!({"product":"p","user":"a"})).await;
    assert_eq!(v["license_id"], second);
    let (_, v) = h
        .post(
            "/api/v4/register",
            json!({"product":"p","user":"a","license_id":first.to_string()}),
        )
        .await;
    assert_eq!(v["license_id"], first);
    assert_eq!(
        h.post_code("/api/v4/register", json!({"product":"p","user":"a","license_id":1}))
            .await,
        (StatusCode::BAD_REQUEST, json!("license_not_found"))
    );
    let (s, v) = h.post("/api/v4/register", json!({"product":"zzz","user":"a"})).await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("unknown_product"))
    );
    let (_, list) = h.get("/api/v4/license?product=p").await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (s, _) = h.get("/api/v4/removeProduct?product=p").await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = h.post("/api/v4/register", json!({"product":"p","user":"a"})).await;
    assert_eq!(v["license_id"], first);
    let (s, v) = h
        .get(&format!("/api/v4/removeProduct?product=p&license_id={second}"))
        .await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("license_not_found"))
    );
    // POST JSON form of addProduct, User Auth.
    let (s, v) = h
        .post(
            "/api/v4/addProduct",
            json!({"product":"u","username":"lic@example.com","password":"pw","isHWKeyReq":false}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = h.post("/api/v4/register", json!({"product":"u","user":"x"})).await;
    let lj: Value = serde_json::from_str(v["license_json"].as_str().unwrap()).unwrap();
    assert_eq!(lj["product_details"]["authorization_method"], "user");
    assert!(lj.get("license_key").is_none());
    let (s, v) = h.get("/api/v4/addProduct?product=x").await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("missing_parameters"))
    );
}

#[tokio::test]
async fn signed_license_upload() {
    let h = harness(false).await;
    let mut doc = LicenseDoc::new(
        4242000000000001,
        "cad",
        LicenseAuth::Key {
            license_key: "QWER".into(),
        },
    );
    doc.floating_users = 3;
    let terms = json!({"max_consumptions": 10, "allow_unlimited": false, "allow_overages": false, "max_overages": 0,
        "allow_negative": false, "allow_negative_total": false, "reset_period": null});
    doc.consumption = Some(serde_json::from_value::<ConsumptionTerms>(terms).unwrap());
    doc.license_type = "consumption".into();
    doc.hardware_key_required = true;
    let text = sign_license(&doc, &h.vendor);
    // `POST /api/v4/license/upload` of `body`, with a content type when given.
    let upload = |content_type: Option<String>, body: String| {
        let mut req = Request::post("/api/v4/license/upload");
        if let Some(t) = content_type {
            req = req.header(header::CONTENT_TYPE, t);
        }
        req.body(Body::from(body)).unwrap()
    };
    let (s, v) = h.send(upload(Some("text/plain".into()), text.clone())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["license_id"], 4242000000000001u64);
    assert_eq!(v["activation_hardware_id"], SERIAL);
    let (s, v) = h
        .post("/api/v4/add_consumption", json!({"product":"cad","consumptions":4}))
        .await;
    assert_eq!((s, v["total_consumptions"].clone()), (StatusCode::OK, json!(4)));
    // The same file again: conflict.
    let boundary = "XyZ";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"l.lic\"\r\nContent-Type: application/octet-stream\r\n\r\n{text}\r\n--{boundary}--\r\n"
    );
    let multipart = format!("multipart/form-data; boundary={boundary}");
    let (s, v) = h.send(upload(Some(multipart), body)).await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::CONFLICT, json!("license_already_exists"))
    );
    // Tampered or signed by another vendor: refused.
    let tampered = text.replacen("\"floating_users\": 3", "\"floating_users\": 9", 1);
    let (s, v) = h.send(upload(None, tampered)).await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("license_file_invalid"))
    );
    let other = keyfloat_hal::trust::VendorSigningKey::generate();
    doc.license_id += 1;
    let (s, _) = h.send(upload(None, sign_license(&doc, &other))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn errors_are_always_json_objects_with_a_code() {
    let h = harness(false).await;
    h.add_product("product=p&licenseKey=K").await;
    let (s, v) = h.get("/api/v5/ping").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["code"], "not_found");
    assert_ne!(v.get("message"), Some(&json!("pong")));
    let (s, h405, v) = h
        .send_full(Request::get("/api/v4/register").body(Body::empty()).unwrap())
        .await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::METHOD_NOT_ALLOWED, json!("method_not_allowed"))
    );
    assert!(h405
        .get(header::CONTENT_TYPE)
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let (s, v) = h
        .send(
            Request::post("/api/v4/register")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{\"product\":"))
                .unwrap(),
        )
        .await;
    assert_eq!((s, v["code"].clone()), (StatusCode::BAD_REQUEST, json!("invalid_json")));
    assert_eq!(
        h.post_code("/api/v4/register", json!(["product"])).await,
        (StatusCode::BAD_REQUEST, json!("invalid_json"))
    );
    assert_eq!(
        h.post_code("/api/v4/register", json!({"product":{"a":1},"user":"u"}))
            .await,
        (StatusCode::BAD_REQUEST, json!("invalid_parameters"))
    );
    assert_eq!(
        h.post_code("/api/v4/register", json!({"user":"u"})).await,
        (StatusCode::BAD_REQUEST, json!("missing_parameters"))
    );
    let big = "x".repeat(70 * 1024);
    let (s, v) = h
        .post("/api/v4/register", json!({"product":"p","user":"u","pad":big}))
        .await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::PAYLOAD_TOO_LARGE, json!("payload_too_large"))
    );
    assert!(v["status"].is_u64() && v["message"].is_string());
    assert_eq!(
        h.post_code("/api/v4/nope", json!({})).await,
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
}

#[tokio::test]
async fn health_and_sim_endpoints() {
    let h = harness(false).await;
    let (s, v) = h.get("/api/v4/health").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["hardware_id"], SERIAL);
    assert_eq!(v["machine_id"], MACHINE);
    assert_eq!(v["key"]["state"], "valid");
    assert_eq!(v["key"]["present"], true);
    assert_eq!(v["key"]["serial"], SERIAL);
    assert_eq!(v["key"]["backend"], "sim");
    assert_eq!(v["key"]["firmware"], "5.4.3");
    assert!(v["version"].is_string());
    let (s, _) = h.post("/api/v4/sim/unplug", json!({})).await;
    assert_eq!(s, StatusCode::OK);
    h.wait_key(false).await;
    let (_, v) = h.get("/api/v4/health").await;
    assert_eq!(v["hardware_id"], MACHINE, "the hardware id reverts on unplug");
    assert_eq!(v["key"]["state"], "absent");
    assert_eq!(v["key"]["present"], false);
    let (s, _) = h.post("/api/v4/sim/plug", json!({})).await;
    assert_eq!(s, StatusCode::OK);
    h.wait_key(true).await;
    // An unprovisioned key is present but invalid, with a reason.
    h.bus.unplug(KEY).unwrap();
    h.bus
        .insert(keyfloat_hal::backend::sim::SimKeySpec::generate("rogue", 5555));
    h.bus.plug("rogue").unwrap();
    h.sync_keys();
    let (_, v) = h.get("/api/v4/health").await;
    assert_eq!(v["key"]["state"], "invalid", "{v}");
    assert_eq!(v["key"]["valid"], false);
    assert_eq!(v["key"]["reason"], "unprovisioned");
}

#[tokio::test]
async fn admin_force_release_and_audit() {
    let h = harness(false).await;
    let id = h.add_product(&hw_query()).await;
    h.post("/api/v4/register", json!({"product":"hwbased","user":"a"}))
        .await;
    let (s, v) = h
        .post("/api/v4/registrations/release", json!({"license_id":id,"user":"a"}))
        .await;
    assert_eq!((s, v["released"].clone()), (StatusCode::OK, json!(true)));
    let (_, ev) = h.get("/api/v4/audit?limit=10").await;
    let kinds: Vec<&str> = ev
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["registration_released", "license_added"]);
    h.unplug().await;
    assert_eq!(
        h.post_code("/api/v4/registrations/release", json!({"license_id":id,"user":"a"}))
            .await,
        (StatusCode::BAD_REQUEST, json!("hardware_key_not_accessible"))
    );
}

/// Many clients race for N seats: never more than N.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seat_limit_holds_under_concurrency() {
    let h = Arc::new(harness(false).await);
    h.add_product("product=race&licenseKey=K&floatingUsers=7").await;
    h.add_product("product=cons&licenseKey=K&maxConsumptions=25").await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let h = Arc::clone(&h);
        tasks.push(tokio::spawn(async move {
            let seat = h
                .post("/api/v4/register", json!({"product":"race","user":format!("u{i}")}))
                .await
                .0
                == StatusCode::OK;
            let cons = h
                .post("/api/v4/add_consumption", json!({"product":"cons","consumptions":1}))
                .await
                .0
                == StatusCode::OK;
            (seat, cons)
        }));
    }
    let mut seats = 0;
    let mut cons = 0;
    for t in tasks {
        let (s, c) = t.await.unwrap();
        seats += usize::from(s);
        cons += usize::from(c);
    }
    assert_eq!(seats, 7);
    assert_eq!(cons, 25);
    let (_, list) = h.get("/api/v4/license?product=race").await;
    assert_eq!(list[0]["floating_in_use_devices"], 7);
    let (_, list) = h.get("/api/v4/license?product=cons").await;
    assert_eq!(list[0]["total_consumptions"], 25);
}

#[tokio::test]
async fn sim_endpoints_exist_only_with_the_sim_backend() {
    use keyfloat_server::auth::TokenKeys;
    use keyfloat_server::{app, AppState, SqliteStore, StateParts, Store};
    use tower::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    let cell = keyfloat_hal::HardwareIdCell::new(keyfloat_hal::HardwareId::new("m"));
    let state = AppState::new(StateParts {
        store: Arc::new(SqliteStore::open(dir.path()).unwrap()) as Arc<dyn Store>,
        keys: cell.reader(),
        tokens: TokenKeys::from_secret(&[3; 32]),
        user_authentication: false,
        key_policy: KeyPolicy::Refuse,
        sim: None,
        backend: "pcsc".into(),
        vendor_key: None,
    })
    .await
    .unwrap();
    let res = app(state)
        .oneshot(Request::post("/api/v4/sim/unplug").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let body = axum::body::to_bytes(res.into_body(), 4096).await.unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["code"], "not_found");
}
