//! The configuration page in a real headless Chromium, driven through chromedriver's W3C
//! WebDriver HTTP API (a few JSON requests over loopback; no WebDriver crate needed).
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
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use server_support::{add_user, basic, data_dir, http, start};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One WebDriver request. chromedriver keeps connections open despite `Connection: close`,
/// so the body is read by its `Content-Length`.
fn wd_http(addr: &str, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, String)> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut len = 0usize;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut buf = vec![0; len];
    r.read_exact(&mut buf)?;
    Ok((status, String::from_utf8_lossy(&buf).into_owned()))
}

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
    let dir = std::env::var_os("KEYFLOAT_ARTIFACTS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Driver {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start(binary: &Path, log: PathBuf) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = Driver {
            child,
            addr: format!("127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, b)) = wd_http(&d.addr, "GET", "/status", None) {
                if serde_json::from_str::<Value>(&b).is_ok_and(|v| v["value"]["ready"] == true) {
                    return d;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string());
        let (s, text) = wd_http(&self.addr, method, path, body.as_deref()).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: {s} {text}"));
        assert!(
            s == 200,
            "{method} {path}: {s} {v}\nchromedriver log: {}",
            self.log.display()
        );
        v["value"].clone()
    }

    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let body = body.map(|b| b.to_string());
        let (s, text) = wd_http(&self.addr, method, path, body.as_deref()).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if s == 200 {
            Ok(v["value"].clone())
        } else {
            Err(v["value"].clone())
        }
    }
}

struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = self.driver.try_call("DELETE", &format!("/session/{}", self.id), None);
    }
}

impl<'a> Session<'a> {
    fn new(driver: &'a Driver, chromium: &Path, profile: &Path) -> Self {
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=1280,1700".to_owned(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium.to_string_lossy(), "args": args},
        }}});
        let v = driver.call("POST", "/session", Some(caps));
        Session {
            driver,
            id: v["sessionId"].as_str().unwrap().to_owned(),
        }
    }

    fn path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.id)
    }

    fn go(&self, url: &str) {
        self.driver
            .call("POST", &self.path("/url"), Some(json!({ "url": url })));
    }

    fn find(&self, css: &str) -> String {
        let v = self.driver.call(
            "POST",
            &self.path("/element"),
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT].as_str().unwrap().to_owned()
    }

    /// Finds and clicks; retried while the page re-renders the element (stale reference).
    fn click(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let e = self.find(css);
            match self
                .driver
                .try_call("POST", &self.path(&format!("/element/{e}/click")), Some(json!({})))
            {
                Ok(_) => return,
                Err(err) if Instant::now() < deadline && err["error"] == "stale element reference" => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(err) => panic!("click {css}: {err}"),
            }
        }
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.driver
            .call("POST", &self.path(&format!("/element/{e}/clear")), Some(json!({})));
        self.driver.call(
            "POST",
            &self.path(&format!("/element/{e}/value")),
            Some(json!({ "text": text })),
        );
    }

    fn text(&self, css: &str) -> String {
        let e = self.find(css);
        self.driver
            .call("GET", &self.path(&format!("/element/{e}/text")), None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn js(&self, script: &str) -> Value {
        self.driver.call(
            "POST",
            &self.path("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Polls `script` (a JS expression) until it returns true (≤ 15 s).
    fn wait_js(&self, what: &str, expr: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.js(&format!("return !!({expr});")) == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                self.screenshot("browser-failure.png");
                panic!(
                    "timed out waiting for: {what}\npage message: {:?}",
                    self.js("return document.getElementById('message').textContent;")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Accepts the page's `confirm()` once it is open (≤ 5 s).
    fn accept_alert(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self
            .driver
            .try_call("POST", &self.path("/alert/accept"), Some(json!({})))
            .is_err()
        {
            assert!(Instant::now() < deadline, "no confirm dialog appeared");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.driver.call("GET", &self.path("/screenshot"), None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = artifacts_dir().join(name);
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
        path
    }
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
    let s = Session::new(&driver, &chromium, profile.path());

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
    s.type_into("#add-product", "hwbased");
    s.type_into("#add-license-key", "AAAA-BBBB-CCCC");
    s.click("#add-hwkey");
    s.type_into("#add-max-consumptions", "100");
    s.type_into(
        "#add-features",
        r#"[{"code":"consFeature2","kind":"consumption","max_consumption":10}]"#,
    );
    s.click("#add-submit");
    s.wait_js(
        "the license row, key-bound and activated with the key serial",
        "[...document.querySelectorAll('#licenses tr[data-product=hwbased]')].some(r => r.textContent.includes('required') && r.textContent.includes('12345678'))",
    );

    // User Auth: the dropdown swaps the license-key field for username + password.
    s.click("#add-auth option[value=user]");
    s.wait_js(
        "user fields shown, key field hidden",
        "!document.getElementById('add-user-fields').hidden && document.getElementById('add-key-fields').hidden",
    );
    s.type_into("#add-product", "userprod");
    s.type_into("#add-username", "license-user@example.com");
    s.type_into("#add-password", "license-pw");
    s.click("#add-submit");
    s.wait_js(
        "the User Auth license row, not key-bound",
        "[...document.querySelectorAll('#licenses tr[data-product=userprod]')].some(r => r.textContent.includes('User Auth') && !r.textContent.includes('required'))",
    );
    // A missing parameter shows the API's message and code.
    s.type_into("#add-product", "broken");
    s.click("#add-submit");
    s.wait_js(
        "the API error for a license with neither key nor user",
        "document.getElementById('message').className === 'error' && document.getElementById('message').textContent.includes('missing_parameters')",
    );

    // A user takes a seat through the API; the page shows it.
    let (st, login) = http(&server.addr, "GET", "/auth", None, Some(&basic("admin", "s3cret-pw"))).unwrap();
    assert_eq!(st, 200, "{login}");
    let token = serde_json::from_str::<Value>(&login).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bearer = format!("Bearer {token}");
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
