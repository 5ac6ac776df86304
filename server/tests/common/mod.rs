//! Test harness: the app over a temp data dir, a simulated bus with a vendor-provisioned
//! key, the real monitor and the vendor validator. Requests go through `oneshot`.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use base64::Engine;
use keyfloat_hal::backend::sim::provision_sim_key;
use keyfloat_hal::backend::sim::{SimBus, SimKeySpec};
use keyfloat_hal::trust::{VendorSigningKey, VendorValidator};
use keyfloat_hal::{HardwareId, HardwareIdCell, MonitorConfig, MonitorHandle};
use keyfloat_server::auth::{hash_password, TokenKeys};
use keyfloat_server::model::{Account, Role};
use keyfloat_server::store::transact;
use keyfloat_server::{app, AppState, KeyControl, KeyPolicy, SqliteStore, StateParts, Store};
use serde_json::Value;
use tower::ServiceExt;

pub const KEY: &str = "key-a";
pub const SERIAL: &str = "12345678";
pub const OTHER_KEY: &str = "key-b";
pub const MACHINE: &str = "machine-under-test";

pub struct Harness {
    pub app: Router,
    pub state: AppState,
    pub bus: SimBus,
    pub vendor: VendorSigningKey,
    pub store: Arc<SqliteStore>,
    pub dir: tempfile::TempDir,
    pub monitor: Option<MonitorHandle>,
    pub cell: Option<HardwareIdCell>,
}

pub struct Options {
    pub auth: bool,
    pub policy: KeyPolicy,
    pub plugged: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            auth: false,
            policy: KeyPolicy::Refuse,
            plugged: true,
        }
    }
}

pub async fn harness(auth: bool) -> Harness {
    harness_with(Options {
        auth,
        ..Options::default()
    })
    .await
}

pub async fn harness_with(o: Options) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let vendor = VendorSigningKey::generate();
    let bus = SimBus::new();
    bus.insert(provision_sim_key(SimKeySpec::generate(KEY, 12345678), &vendor));
    bus.insert(provision_sim_key(SimKeySpec::generate(OTHER_KEY, 87654321), &vendor));
    if o.plugged {
        bus.plug(KEY).unwrap();
    }
    let h = build(dir, vendor, bus, o.auth, o.policy, true).await;
    if o.plugged {
        h.wait_key(true).await;
    }
    h
}

/// Builds the app over an existing data dir; `monitor = false` leaves the cell at its
/// start-up state ("no valid key"), as right after a restart.
pub async fn build(
    dir: tempfile::TempDir,
    vendor: VendorSigningKey,
    bus: SimBus,
    auth: bool,
    policy: KeyPolicy,
    monitor: bool,
) -> Harness {
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let cell = HardwareIdCell::new(HardwareId::new(MACHINE));
    let reader = cell.reader();
    let state = AppState::new(StateParts {
        store: Arc::clone(&store) as Arc<dyn Store>,
        keys: reader,
        tokens: TokenKeys::load_or_create(dir.path()).unwrap(),
        user_authentication: auth,
        key_policy: policy,
        sim: Some(Arc::new(SimKey(bus.clone()))),
        backend: "sim".into(),
        vendor_key: Some(vendor.public_key()),
    })
    .await
    .unwrap();
    let mut h = Harness {
        app: app(state.clone()),
        state,
        bus,
        vendor,
        store,
        dir,
        monitor: None,
        cell: Some(cell),
    };
    if monitor {
        h.start_monitor();
    }
    h
}

impl Harness {
    /// Starts the monitor on the cell (once).
    pub fn start_monitor(&mut self) {
        let cell = self.cell.take().unwrap();
        let validator = Arc::new(VendorValidator::new(self.vendor.public_key()));
        let config = MonitorConfig {
            revalidate_every: Duration::from_secs(60),
            retry_initial: Duration::from_millis(20),
            retry_max: Duration::from_millis(200),
            ..MonitorConfig::DEFAULT
        };
        self.monitor =
            Some(keyfloat_hal::spawn_monitor(cell, vec![Arc::new(self.bus.provider())], validator, config).unwrap());
    }

    /// Waits (≤ 5 s) until a valid key is (or is not) in force.
    pub async fn wait_key(&self, valid: bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.state.keys().check().valid_key().is_some() != valid {
            assert!(Instant::now() < deadline, "key never became valid={valid}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn unplug(&self) {
        self.bus.unplug(KEY).unwrap();
        self.wait_key(false).await;
    }

    pub async fn plug(&self) {
        self.bus.plug(KEY).unwrap();
        self.wait_key(true).await;
    }

    pub async fn add_account(&self, name: &str, password: &str, role: Role) {
        let a = Account {
            username: name.into(),
            password_hash: hash_password(password).unwrap(),
            role,
        };
        transact(self.store.as_ref(), move |tx| tx.put_account(&a))
            .await
            .unwrap();
        // The server keeps an in-memory copy of the accounts (it polls; tests reload).
        self.state.reload_accounts().await.unwrap();
    }

    pub async fn login(&self, name: &str, password: &str) -> (StatusCode, Value) {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{name}:{password}"));
        self.send(
            Request::get("/auth")
                .header(header::AUTHORIZATION, format!("Basic {basic}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    pub async fn token(&self, name: &str, password: &str) -> String {
        let (s, v) = self.login(name, password).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }

    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let (s, _, v) = self.send_full(req).await;
        (s, v)
    }

    pub async fn send_full(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
        let v =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, headers, v)
    }

    /// A JSON call (`body = None` = no body), optional bearer token.
    pub async fn call(&self, method: &str, uri: &str, body: Option<Value>, token: Option<&str>) -> (StatusCode, Value) {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(v) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        self.send(req).await
    }

    pub async fn post(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", uri, Some(body), None).await
    }

    pub async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call("GET", uri, None, None).await
    }

    /// `addProduct` with query parameters; returns the license id.
    pub async fn add_product(&self, query: &str) -> u64 {
        let (s, v) = self.get(&format!("/api/v4/addProduct?{query}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["license_id"].as_u64().unwrap()
    }
}

/// `%`-encodes a JSON value for a query string.
pub fn q(v: &Value) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The plug/unplug endpoints' control over the test's simulated key.
#[derive(Debug)]
pub struct SimKey(pub SimBus);

impl KeyControl for SimKey {
    fn key(&self) -> &str {
        KEY
    }
    fn plug(&self) -> Result<(), String> {
        self.0.plug(KEY).map_err(|e| e.to_string())
    }
    fn unplug(&self) -> Result<(), String> {
        self.0.unplug(KEY).map_err(|e| e.to_string())
    }
}
