//! The in-process server a virtual scenario talks to: the real `keyfloat-server` app and
//! SQLite store in a scratch data dir, driven request by request with `oneshot` on a
//! current-thread runtime, so the scenario stays deterministic.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request};
use keyfloat_hal::CellReader;
use keyfloat_server::auth::TokenKeys;
use keyfloat_server::{AppState, KeyPolicy, SqliteStore, StateParts};
use tower::ServiceExt;

use super::format::ScenarioSpec;
use super::http::{HttpTarget, Response, ServerFactory};

/// A factory for [`InProcessServer`] when `spec` talks HTTP (has licenses or requests),
/// `None` otherwise.
pub fn in_process_server(spec: &ScenarioSpec) -> Option<ServerFactory> {
    let needs = !spec.licenses.is_empty() || spec.steps.iter().any(|s| s.http.is_some());
    if !needs {
        return None;
    }
    let spec = spec.clone();
    Some(Box::new(move |reader| {
        let server = InProcessServer::start(&spec, reader)?;
        Ok(Box::new(server) as Box<dyn HttpTarget>)
    }))
}

/// The real app over a scratch data dir.
pub struct InProcessServer {
    runtime: tokio::runtime::Runtime,
    data_dir: PathBuf,
    crash: bool,
    exited: Arc<AtomicBool>,
    state: Option<AppState>,
}

impl std::fmt::Debug for InProcessServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessServer")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

impl InProcessServer {
    /// Starts the app and adds the scenario's licenses through the admin API.
    pub fn start(spec: &ScenarioSpec, reader: CellReader) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let data_dir = std::env::temp_dir().join(format!(
            "keyfloat-scenario-{}-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed),
            spec.name
        ));
        let _ = std::fs::remove_dir_all(&data_dir);
        let mut server = Self {
            runtime,
            data_dir,
            crash: spec.server.crash_if_no_hardware_key,
            exited: Arc::new(AtomicBool::new(false)),
            state: None,
        };
        server.boot(reader)?;
        for l in &spec.licenses {
            let mut body = serde_json::json!({
                "product": l.product,
                "licenseKey": l.license_key.clone().unwrap_or_else(|| format!("{}-KEY", l.product.to_uppercase())),
                "isHWKeyReq": l.hardware_key_required,
                "floatingUsers": l.floating_users,
            });
            if let Some(max) = l.consumptions {
                body["maxConsumptions"] = max.into();
            }
            let r = server.request("POST", "/api/v4/addProduct", Some(&body));
            if r.status != 200 {
                return Err(format!(
                    "adding license {:?} failed: {} {}",
                    l.product, r.status, r.body
                ));
            }
        }
        Ok(server)
    }

    fn boot(&mut self, reader: CellReader) -> Result<(), String> {
        let store = SqliteStore::open(&self.data_dir).map_err(|e| e.to_string())?;
        let tokens = TokenKeys::load_or_create(&self.data_dir).map_err(|e| e.to_string())?;
        let key_policy = if self.crash {
            let exited = Arc::clone(&self.exited);
            KeyPolicy::Crash(Arc::new(move |reason: &str| {
                tracing::error!(reason, "crashIfNoHardwareKey: the server would exit now");
                exited.store(true, Ordering::SeqCst);
            }))
        } else {
            KeyPolicy::Refuse
        };
        let parts = StateParts {
            store: Arc::new(store),
            keys: reader,
            tokens,
            user_authentication: false,
            key_policy,
            sim: None,
            backend: "sim".into(),
            vendor_key: None,
        };
        let state = self
            .runtime
            .block_on(AppState::new(parts))
            .map_err(|e| format!("{e:?}"))?;
        self.state = Some(state);
        Ok(())
    }
}

impl HttpTarget for InProcessServer {
    fn request(&mut self, method: &str, path: &str, body: Option<&serde_json::Value>) -> Response {
        let refused = Response {
            status: 0,
            body: serde_json::Value::Null,
        };
        if self.exited.load(Ordering::SeqCst) {
            return refused;
        }
        let Some(state) = self.state.clone() else {
            return refused;
        };
        let mut req = Request::builder().method(method).uri(path);
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let Ok(req) = req.body(body) else { return refused };
        self.runtime.block_on(async move {
            let Ok(res) = keyfloat_server::app(state).oneshot(req).await;
            let status = res.status().as_u16();
            let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap_or_default();
            let body = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            Response { status, body }
        })
    }

    fn restart(&mut self, reader: CellReader) -> Result<(), String> {
        if let Some(state) = self.state.take() {
            drop(state);
        }
        self.exited.store(false, Ordering::SeqCst);
        self.boot(reader)
    }

    fn exited(&self) -> bool {
        self.exited.load(Ordering::SeqCst)
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        self.state = None;
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
