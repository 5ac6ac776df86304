//! The server app in process for handler tests: a temp data dir, SQLite, a simulated bus
//! with two vendor-provisioned keys, the vendor validator, requests through `oneshot`.
//!
//! The key picture reaches the cell one of two ways:
//! - **inline** (the default): [`InlineKeys`] feeds the bus's hot-plug events to the real
//!   monitor state machine ([`Driver`]) and validates inline, so when [`Harness::plug`] or
//!   [`Harness::unplug`] returns the cell already shows it. Nothing to wait for.
//! - **monitor thread** ([`Options::monitor`], [`Harness::start_monitor`]): the real
//!   monitor thread, for tests about its timing (grace periods, flap storms, restarts).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use keyfloat_hal::backend::sim::{provision_sim_key, SimBus, SimKeySpec};
use keyfloat_hal::trust::{VendorSigningKey, VendorValidator};
use keyfloat_hal::{
    Driver, HardwareId, HardwareIdCell, HotplugSource, Input, KeyProvider, MonitorConfig, MonitorHandle,
};
use keyfloat_server::auth::{hash_password, TokenKeys};
use keyfloat_server::model::{Account, Role};
use keyfloat_server::store::transact;
use keyfloat_server::{app, AppState, KeyControl, KeyPolicy, SqliteStore, StateParts, Store};
use serde_json::Value;
use tower::ServiceExt;

use crate::http::basic;
use crate::wait::wait_until_async;

pub use crate::http::q;

/// The simulated key plugged by default.
pub const KEY: &str = "key-a";
/// Its serial.
pub const SERIAL: &str = "12345678";
/// A second provisioned key (serial 87654321), not plugged.
pub const OTHER_KEY: &str = "key-b";
/// The machine's hardware id (in force while no valid key is).
pub const MACHINE: &str = "machine-under-test";

/// How long a key change may take to show with the monitor thread.
const KEY_LIMIT: Duration = Duration::from_secs(5);

/// The app, its state and everything behind it.
#[derive(Debug)]
pub struct Harness {
    /// The router requests go through.
    pub app: Router,
    /// Its state.
    pub state: AppState,
    /// The simulated bus with [`KEY`] and [`OTHER_KEY`].
    pub bus: SimBus,
    /// The vendor key that provisioned them.
    pub vendor: VendorSigningKey,
    /// The SQLite store under the app.
    pub store: Arc<SqliteStore>,
    /// The data dir.
    pub dir: tempfile::TempDir,
    /// The monitor thread, when one drives the cell.
    pub monitor: Option<MonitorHandle>,
    /// The cell's writing side while nothing drives it yet.
    pub cell: Option<HardwareIdCell>,
    /// The inline driver, when it drives the cell.
    pub keys: Option<InlineKeys>,
}

/// How [`harness_with`] builds the app.
#[derive(Debug)]
pub struct Options {
    /// `--user-authentication`.
    pub auth: bool,
    /// What a key-bound request does without a valid key.
    pub policy: KeyPolicy,
    /// Whether [`KEY`] is plugged (and validated) before the harness is returned.
    pub plugged: bool,
    /// Drive the cell with the real monitor thread instead of inline.
    pub monitor: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            auth: false,
            policy: KeyPolicy::Refuse,
            plugged: true,
            monitor: false,
        }
    }
}

/// A bus holding [`KEY`] (serial 12345678) and [`OTHER_KEY`] (87654321), both provisioned
/// by `vendor`, neither plugged.
pub fn sim_bus(vendor: &VendorSigningKey) -> SimBus {
    let bus = SimBus::new();
    bus.insert(provision_sim_key(SimKeySpec::generate(KEY, 12345678), vendor));
    bus.insert(provision_sim_key(SimKeySpec::generate(OTHER_KEY, 87654321), vendor));
    bus
}

/// The default harness with [`KEY`] plugged, inline key driver.
pub async fn harness(auth: bool) -> Harness {
    harness_with(Options {
        auth,
        ..Options::default()
    })
    .await
}

/// A harness as `o` says.
pub async fn harness_with(o: Options) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let vendor = VendorSigningKey::generate();
    let bus = sim_bus(&vendor);
    if o.plugged {
        bus.plug(KEY).expect("plug");
    }
    let mut h = build(dir, vendor, bus, o.auth, o.policy, false).await;
    if o.monitor {
        h.start_monitor();
    } else {
        h.drive_inline();
    }
    if o.plugged {
        h.wait_key(true).await;
    }
    h
}

/// Builds the app over an existing data dir; `monitor = true` starts the monitor thread,
/// `false` leaves the cell at its start-up state ("no valid key", as right after a restart)
/// until [`Harness::start_monitor`] or [`Harness::drive_inline`].
pub async fn build(
    dir: tempfile::TempDir,
    vendor: VendorSigningKey,
    bus: SimBus,
    auth: bool,
    policy: KeyPolicy,
    monitor: bool,
) -> Harness {
    let store = Arc::new(SqliteStore::open(dir.path()).expect("open store"));
    let served = Arc::clone(&store) as Arc<dyn Store>;
    let mut h = build_over(dir, vendor, bus, store, served, auth, policy).await;
    if monitor {
        h.start_monitor();
    }
    h
}

/// Builds the app serving `served` (e.g. a wrapper around `store`), nothing driving the cell yet.
pub async fn build_over(
    dir: tempfile::TempDir,
    vendor: VendorSigningKey,
    bus: SimBus,
    store: Arc<SqliteStore>,
    served: Arc<dyn Store>,
    auth: bool,
    policy: KeyPolicy,
) -> Harness {
    let cell = HardwareIdCell::new(HardwareId::new(MACHINE));
    let state = AppState::new(StateParts {
        store: served,
        keys: cell.reader(),
        tokens: TokenKeys::load_or_create(dir.path()).expect("token keys"),
        user_authentication: auth,
        key_policy: policy,
        sim: Some(Arc::new(SimKey(bus.clone()))),
        backend: "sim".into(),
        vendor_key: Some(vendor.public_key()),
    })
    .await
    .expect("app state");
    Harness {
        app: app(state.clone()),
        state,
        bus,
        vendor,
        store,
        dir,
        monitor: None,
        cell: Some(cell),
        keys: None,
    }
}

/// The monitor settings of the tests: quick retries, no grace.
pub fn monitor_config() -> MonitorConfig {
    MonitorConfig {
        revalidate_every: Duration::from_secs(60),
        retry_initial: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        ..MonitorConfig::DEFAULT
    }
}

/// Feeds a bus's hot-plug events to the real monitor state machine and runs its
/// validations inline: no thread, no waiting. Cheap to clone (for hooks on other threads).
#[derive(Debug, Clone)]
pub struct InlineKeys(Arc<Mutex<Inline>>);

#[derive(Debug)]
struct Inline {
    driver: Driver,
    events: Box<dyn HotplugSource>,
    started: Instant,
}

impl InlineKeys {
    /// Drives `cell` from `bus`'s events, validating with `vendor`'s public key.
    pub fn new(cell: HardwareIdCell, bus: &SimBus, vendor: &VendorSigningKey) -> Self {
        let provider = bus.provider();
        let events = provider.watch().expect("watch the simulated bus");
        let validator = Arc::new(VendorValidator::new(vendor.public_key()));
        let driver = Driver::new(cell, vec![Arc::new(provider)], validator, monitor_config());
        Self(Arc::new(Mutex::new(Inline {
            driver,
            events,
            started: Instant::now(),
        })))
    }

    /// Publishes what the bus did since the last call: when this returns, the cell shows
    /// the keys as they are plugged now, validated.
    pub fn sync(&self) {
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let Inline {
            driver,
            events,
            started,
        } = &mut *guard;
        while let Ok(Some(event)) = events.next_event(Duration::ZERO) {
            driver.handle(started.elapsed(), Input::Hotplug(event));
        }
    }

    /// Pulls `key` from `bus` and publishes it.
    pub fn unplug(&self, bus: &SimBus, key: &str) {
        bus.unplug(key).expect("unplug");
        self.sync();
    }

    /// Plugs `key` into `bus` and publishes it.
    pub fn plug(&self, bus: &SimBus, key: &str) {
        bus.plug(key).expect("plug");
        self.sync();
    }
}

impl Harness {
    /// Starts the monitor thread on the cell (once).
    pub fn start_monitor(&mut self) {
        self.start_monitor_with(monitor_config());
    }

    /// Starts the monitor thread on the cell with `config` (once).
    pub fn start_monitor_with(&mut self, config: MonitorConfig) {
        let cell = self.cell.take().expect("the cell is already driven");
        let validator = Arc::new(VendorValidator::new(self.vendor.public_key()));
        let providers: Vec<Arc<dyn KeyProvider>> = vec![Arc::new(self.bus.provider())];
        self.monitor = Some(keyfloat_hal::spawn_monitor(cell, providers, validator, config).expect("spawn monitor"));
    }

    /// Drives the cell inline (once) and publishes the keys plugged now.
    pub fn drive_inline(&mut self) {
        let cell = self.cell.take().expect("the cell is already driven");
        let keys = InlineKeys::new(cell, &self.bus, &self.vendor);
        keys.sync();
        self.keys = Some(keys);
    }

    /// With the inline driver: publishes what the bus did (see [`InlineKeys::sync`]).
    pub fn sync_keys(&self) {
        if let Some(keys) = &self.keys {
            keys.sync();
        }
    }

    /// Until a valid key is (or is not) in force: at once with the inline driver, ≤ 5 s
    /// with the monitor thread.
    pub async fn wait_key(&self, valid: bool) {
        self.sync_keys();
        let reader = self.state.keys().clone();
        wait_until_async(KEY_LIMIT, format!("the key to become valid={valid}"), || {
            let now = reader.check().valid_key().is_some() == valid;
            async move { now }
        })
        .await;
    }

    /// Pulls [`KEY`] and waits until no valid key is in force.
    pub async fn unplug(&self) {
        self.bus.unplug(KEY).expect("unplug");
        self.wait_key(false).await;
    }

    /// Plugs [`KEY`] and waits until it is valid and in force.
    pub async fn plug(&self) {
        self.bus.plug(KEY).expect("plug");
        self.wait_key(true).await;
    }

    /// Stops the app, closes the store and builds it again over the same data dir and bus
    /// (the cell starts with no valid key, as after a restart); `monitor` as in [`build`].
    pub async fn restart(self, auth: bool, monitor: bool) -> Harness {
        let Harness {
            dir,
            vendor,
            bus,
            store,
            monitor: running,
            app,
            state,
            keys,
            ..
        } = self;
        drop((running, keys, app, state));
        store.close();
        drop(store);
        build(dir, vendor, bus, auth, KeyPolicy::Refuse, monitor).await
    }

    /// Stores an account (as `keyfloat user add` would) and reloads the server's copy.
    pub async fn add_account(&self, name: &str, password: &str, role: Role) {
        let a = Account {
            username: name.into(),
            password_hash: hash_password(password).expect("hash"),
            role,
        };
        transact(self.store.as_ref(), move |tx| tx.put_account(&a))
            .await
            .expect("put account");
        // The server keeps an in-memory copy of the accounts (it polls; tests reload).
        self.state.reload_accounts().await.expect("reload accounts");
    }

    /// `GET /auth` with Basic credentials.
    pub async fn login(&self, name: &str, password: &str) -> (StatusCode, Value) {
        self.send(login_request(name, password)).await
    }

    /// A bearer token for `name` (the login must succeed).
    pub async fn token(&self, name: &str, password: &str) -> String {
        let (s, v) = self.login(name, password).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["token"].as_str().expect("token").to_owned()
    }

    /// Sends `req`; status and JSON body (a non-JSON body as a JSON string).
    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let (s, _, v) = self.send_full(req).await;
        (s, v)
    }

    /// Sends `req`; status, headers and JSON body.
    pub async fn send_full(&self, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
        send_to(&self.app, req).await
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
                .body(Body::from(v.to_string())),
            None => b.body(Body::empty()),
        };
        self.send(req.expect("request")).await
    }

    /// `POST uri` with a JSON body.
    pub async fn post(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", uri, Some(body), None).await
    }

    /// `POST uri` with a JSON body: the status and the answer's error `code` (`Null` when it
    /// has none), for comparing with an expected refusal in one assertion.
    pub async fn post_code(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        let (s, v) = self.post(uri, body).await;
        (s, v["code"].clone())
    }

    /// `POST uri` with a JSON body and an optional bearer token.
    pub async fn post_as(&self, uri: &str, body: Value, token: Option<&str>) -> (StatusCode, Value) {
        self.call("POST", uri, Some(body), token).await
    }

    /// `GET uri`.
    pub async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call("GET", uri, None, None).await
    }

    /// `GET uri` with an optional bearer token.
    pub async fn get_as(&self, uri: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call("GET", uri, None, token).await
    }

    /// `addProduct` with query parameters; returns the license id.
    pub async fn add_product(&self, query: &str) -> u64 {
        let (s, v) = self.get(&format!("/api/v4/addProduct?{query}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["license_id"].as_u64().expect("license_id")
    }
}

/// `GET /auth` with Basic credentials.
pub fn login_request(name: &str, password: &str) -> Request<Body> {
    Request::get("/auth")
        .header(header::AUTHORIZATION, basic(name, password))
        .body(Body::empty())
        .expect("request")
}

/// Sends `req` through `app`; status, headers and JSON body (a non-JSON body as a JSON string).
pub async fn send_to(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let res = app.clone().oneshot(req).await.expect("infallible service");
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.expect("body");
    let v = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, headers, v)
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
