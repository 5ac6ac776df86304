//! The few W3C WebDriver calls a browser test needs, as JSON over [`crate::http`]: start
//! chromedriver, open a headless Chromium session, find, click, type, run JS, screenshot.
//!
//! Why not `fantoccini` or `thirtyfour`: both are async and bring an HTTP stack of their
//! own plus the `webdriver` crate (cookie, time, url with its ICU/IDNA tables); a dozen
//! JSON calls over the test kit's one HTTP client cost no new dependency at all.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::http::{free_port, send};
use crate::wait::{wait_for, wait_until};

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser action may take long (page loads, screenshots).
const CALL_LIMIT: Duration = Duration::from_secs(60);

/// A chromedriver process on a free loopback port; killed when dropped.
#[derive(Debug)]
pub struct Driver {
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
    /// Starts `binary` (chromedriver) logging to `log`; waits (≤ 30 s) until it is ready.
    pub fn start(binary: &Path, log: PathBuf) -> Self {
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let d = Driver {
            child,
            addr: format!("127.0.0.1:{port}"),
            log,
        };
        wait_until(Duration::from_secs(30), "chromedriver to become ready", || {
            d.try_call("GET", "/status", None).is_ok_and(|v| v["ready"] == true)
        });
        d
    }

    /// One call that must succeed; its `value`.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|err| panic!("{method} {path}: {err}\nchromedriver log: {}", self.log.display()))
    }

    /// One call; `Ok(value)` on 200, else `Err(value)` (the W3C error object), or an
    /// error string when chromedriver did not answer with JSON.
    pub fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let body = body.map(|b| b.to_string());
        let headers = [("content-type", "application/json; charset=utf-8")];
        let (status, text) = send(&self.addr, method, path, &headers, body.as_deref(), CALL_LIMIT)
            .map_err(|e| Value::String(format!("no answer: {e}")))?;
        let v: Value = serde_json::from_str(&text).map_err(|_| Value::String(format!("{status}: {text}")))?;
        if status == 200 {
            Ok(v["value"].clone())
        } else {
            Err(v["value"].clone())
        }
    }
}

/// One headless Chromium session; deleted when dropped.
#[derive(Debug)]
pub struct Session<'a> {
    driver: &'a Driver,
    id: String,
    artifacts: PathBuf,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = self.driver.try_call("DELETE", &format!("/session/{}", self.id), None);
    }
}

impl<'a> Session<'a> {
    /// Opens `chromium` headless with the profile dir `profile`; screenshots go to `artifacts`.
    pub fn new(driver: &'a Driver, chromium: &Path, profile: &Path, artifacts: PathBuf) -> Self {
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
            id: v["sessionId"].as_str().expect("sessionId").to_owned(),
            artifacts,
        }
    }

    fn path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.id)
    }

    /// Navigates to `url`.
    pub fn go(&self, url: &str) {
        self.driver
            .call("POST", &self.path("/url"), Some(json!({ "url": url })));
    }

    /// The element reference of the first match of `css`.
    pub fn find(&self, css: &str) -> String {
        let v = self.driver.call(
            "POST",
            &self.path("/element"),
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT].as_str().expect("element reference").to_owned()
    }

    /// Finds and clicks; retried (≤ 5 s) while the page re-renders the element (stale reference).
    pub fn click(&self, css: &str) {
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

    /// Clears the field `css` and types `text` into it.
    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.driver
            .call("POST", &self.path(&format!("/element/{e}/clear")), Some(json!({})));
        self.driver.call(
            "POST",
            &self.path(&format!("/element/{e}/value")),
            Some(json!({ "text": text })),
        );
    }

    /// The visible text of the first match of `css`.
    pub fn text(&self, css: &str) -> String {
        let e = self.find(css);
        self.driver
            .call("GET", &self.path(&format!("/element/{e}/text")), None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Runs `script` (a function body) in the page; its return value.
    pub fn js(&self, script: &str) -> Value {
        self.driver.call(
            "POST",
            &self.path("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Polls the JS expression `expr` until it is true (≤ 15 s); on timeout saves
    /// `browser-failure.png` and fails with the page's `#message` text.
    pub fn wait_js(&self, what: &str, expr: &str) {
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
    pub fn accept_alert(&self) {
        wait_for(Duration::from_secs(5), "a confirm dialog", || {
            self.driver
                .try_call("POST", &self.path("/alert/accept"), Some(json!({})))
        });
    }

    /// Saves a PNG screenshot as `artifacts/name`; returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.driver.call("GET", &self.path("/screenshot"), None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .expect("base64 screenshot");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::create_dir_all(&self.artifacts).expect("artifacts dir");
        let path = self.artifacts.join(name);
        std::fs::write(&path, png).expect("screenshot file");
        eprintln!("screenshot: {}", path.display());
        path
    }
}
