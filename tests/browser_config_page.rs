//! The configuration page in a real headless Chromium, driven through chromedriver's W3C
//! WebDriver HTTP API (the test kit's `webdriver` module: a few JSON requests over loopback).
//!
//! Against the real `keyfloat serve --key-backend sim --user-authentication` binary: log in,
//! add a key-bound license through the form, watch the key box follow the simulated key
//! (pulled with the page's own button), see the gate's error message on a force-release
//! while the key is out, plug it back and force-release the seat. Screenshots go to
//! `$KEYFLOAT_ARTIFACTS` (default `artifacts/`).
//!
//! Fails when chromium / chromedriver are missing; reported as ignored by a plain `cargo test`; `./scripts/dev.sh test` runs them (`--include-ignored`).
#![allow(clippy::unwrap_used)]

mod server_support;

use std::path::{Path, PathBuf};

use keyfloat_testkit::webdriver::{Driver, Session};
use serde_json::json;
use server_support::{add_user, data_dir, login, start};

fn tool(env: &str, default: &str) -> Option<PathBuf> {
    let p = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    if p.is_file() {
        return Some(p);
    }
    panic!(
        "{} not found: install Debian's chromium and chromium-driver (./scripts/dev.sh does), or set {env}",
        p.display()
    );
}

fn artifacts_dir() -> PathBuf {
    std::env::var_os("KEYFLOAT_ARTIFACTS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts"),
        PathBuf::from,
    )
}

/// Fills the add-license form's `fields` (selector, text), submits it and waits for `expr`.
fn add_license(s: &Session<'_>, fields: &[(&str, &str)], what: &str, expr: &str) {
    for (css, text) in fields {
        s.type_into(css, text);
    }
    s.click("#add-submit");
    s.wait_js(what, expr);
}

#[ignore = "needs chromium + chromedriver; ./scripts/dev.sh test runs it (--include-ignored)"]
#[test]
fn config_page_login_add_key_license_pull_key_and_force_release() {
    let Some(chromium) = tool("KEYFLOAT_CHROMIUM", "/usr/bin/chromium") else {
        return;
    };
    let Some(chromedriver) = tool("KEYFLOAT_CHROMEDRIVER", "/usr/bin/chromedriver") else {
        return;
    };
    let data = data_dir();
    add_user(data.path(), "admin", "s3cret-pw", "admin");
    let server = start(data.path(), &["--user-authentication"]);
    let driver = Driver::start(&chromedriver, data.path().join("chromedriver.log"));
    let profile = tempfile::tempdir().unwrap();
    let s = Session::new(&driver, &chromium, profile.path(), artifacts_dir());

    // Authentication mode: the page asks for a login first.
    s.go(&format!("http://{}/", server.addr));
    s.wait_js("the login form", "!document.getElementById('login-section').hidden");
    s.type_into("#login-user", "admin");
    s.type_into("#login-password", "s3cret-pw");
    s.click("#login-submit");
    s.wait_js(
        "login done and the key box shows the plugged key",
        "document.getElementById('login-section').hidden && document.getElementById('key-box').dataset.state === 'present'",
    );
    assert_eq!(s.text("#key-serial"), "12345678");
    assert_eq!(s.text("#key-backend"), "sim");
    assert_eq!(
        s.js("return sessionStorage.getItem('keyfloat.token') !== null;"),
        json!(true)
    );
    // Demo controls only because health says the backend is sim.
    s.wait_js("pull/plug buttons", "!document.getElementById('demo-controls').hidden");

    // Add a key-bound license through the form (Key Auth + hardware key checkbox).
    s.click("#add-hwkey");
    let features = r#"[{"code":"consFeature2","kind":"consumption","max_consumption":10}]"#;
    add_license(
        &s,
        &[
            ("#add-product", "hwbased"),
            ("#add-license-key", "AAAA-BBBB-CCCC"),
            ("#add-max-consumptions", "100"),
            ("#add-features", features),
        ],
        "the license row, key-bound and activated with the key serial",
        "[...document.querySelectorAll('#licenses tr[data-product=hwbased]')].some(r => r.textContent.includes('required') && r.textContent.includes('12345678'))",
    );

    // User Auth: the dropdown swaps the license-key field for username + password.
    s.click("#add-auth option[value=user]");
    s.wait_js(
        "user fields shown, key field hidden",
        "!document.getElementById('add-user-fields').hidden && document.getElementById('add-key-fields').hidden",
    );
    add_license(
        &s,
        &[
            ("#add-product", "userprod"),
            ("#add-username", "license-user@example.com"),
            ("#add-password", "license-pw"),
        ],
        "the User Auth license row, not key-bound",
        "[...document.querySelectorAll('#licenses tr[data-product=userprod]')].some(r => r.textContent.includes('User Auth') && !r.textContent.includes('required'))",
    );
    // A missing parameter shows the API's message and code.
    add_license(
        &s,
        &[("#add-product", "broken")],
        "the API error for a license with neither key nor user",
        "document.getElementById('message').className === 'error' && document.getElementById('message').textContent.includes('missing_parameters')",
    );

    // A user takes a seat through the API; the page shows it.
    let bearer = format!("Bearer {}", login(&server.addr, "admin", "s3cret-pw"));
    server.json(
        "POST",
        "/api/v4/register",
        Some(r#"{"product":"hwbased","user":"user2"}"#),
        Some(&bearer),
    );
    s.wait_js(
        "the registration row",
        "document.querySelector('#registrations tr[data-user=user2]') !== null",
    );

    // Pull the simulated key with the page's button: the box turns absent without reload.
    s.click("#key-pull");
    s.wait_js(
        "key box absent",
        "document.getElementById('key-box').dataset.state === 'absent'",
    );
    assert_eq!(s.text("#key-state"), "Absent");
    assert_eq!(
        s.js("return document.getElementById('key-live').getAttribute('aria-live');"),
        json!("polite")
    );

    // Force release while the key is out: the gate refuses and the page says why.
    s.click("#registrations button[data-user=user2]");
    s.accept_alert();
    s.wait_js(
        "the gate's error message",
        "document.getElementById('message').className === 'error' && document.getElementById('message').textContent.includes('hardware_key_not_accessible')",
    );
    assert!(s
        .text("#message")
        .contains("No available valid hardware key to perform the action: releasing registration"));
    s.wait_js(
        "audit shows the pull",
        "document.querySelector('#audit tr[data-kind=key_pulled]') !== null",
    );
    s.screenshot("browser-key-absent.png");

    // Plug it back, then the force-release goes through.
    s.click("#key-plug");
    s.wait_js(
        "key box present again",
        "document.getElementById('key-box').dataset.state === 'present'",
    );
    s.click("#registrations button[data-user=user2]");
    s.accept_alert();
    s.wait_js(
        "seat released",
        "document.querySelector('#registrations tr[data-user=user2]') === null && document.getElementById('message').className === 'info'",
    );
    s.wait_js(
        "audit shows the release",
        "document.querySelector('#audit tr[data-kind=registration_released]') !== null",
    );
    let shot = s.screenshot("browser-config-page.png");
    assert!(std::fs::metadata(shot).unwrap().len() > 10_000);

    let regs = server.json("GET", "/api/v4/registrations", None, Some(&bearer));
    assert_eq!(regs["registrations"], json!([]));
}
