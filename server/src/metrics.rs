//! `GET /metrics` (Prometheus text format) and the key-event watcher.
//!
//! Request counters live in a process-wide registry so the request path costs one
//! lock-free map load plus one atomic increment: counters are created on the first
//! request of a (route, status, code) combination under a mutex and then only read.
//! Gauges (key state, seats, consumptions) are computed at scrape time from the cell and
//! the store, so nothing on the request path maintains them.
//!
//! The watcher ([`watch_keys`]) follows the cell's generation and turns each change into
//! key events (plugged, validated, invalid with reason, contended, error, pulled): one log
//! line, one audit row and one counter each.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::{MatchedPath, State};
use axum::http::{header, Method, Request, Response};
use axum::middleware::Next;
use axum::response::IntoResponse;
use keyfloat_hal::{KeyId, KeyState, KeyStatus, Snapshot};

use crate::clock::now_micros;
use crate::error::ApiResult;
use crate::model::AuditEvent;
use crate::service;
use crate::state::AppState;
use crate::store::{read, transact};

/// The stable error code of an error response, left in the response extensions by
/// [`crate::ApiError`] so the counting layer need not parse bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

/// The gate's refusal code.
const GATE_CODE: &str = "hardware_key_not_accessible";

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct RequestKey {
    route: String,
    method: &'static str,
    status: u16,
    code: &'static str,
}

/// One counter of a route: method, status and error code.
#[derive(Debug)]
struct Cell {
    method: &'static str,
    status: u16,
    code: &'static str,
    n: AtomicU64,
}

/// The counters of one route pattern; few cells, so a linear scan beats hashing.
#[derive(Debug, Default)]
struct RouteCells(ArcSwap<Vec<Arc<Cell>>>);

impl RouteCells {
    fn bump(&self, method: &'static str, status: u16, code: &'static str) -> bool {
        let cells = self.0.load();
        match cells
            .iter()
            .find(|c| c.status == status && c.method == method && c.code == code)
        {
            Some(c) => {
                c.n.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

/// Process-wide counters (see the module docs).
#[derive(Debug, Default)]
pub struct Metrics {
    requests: ArcSwap<HashMap<Box<str>, Arc<RouteCells>>>,
    key_events: ArcSwap<HashMap<(&'static str, String), Arc<AtomicU64>>>,
    grow: Mutex<()>,
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// Increments `key` in a copy-on-write map: a lock-free load when the counter exists.
fn bump<K: std::hash::Hash + Eq + Clone>(map: &ArcSwap<HashMap<K, Arc<AtomicU64>>>, grow: &Mutex<()>, key: K) {
    if let Some(c) = map.load().get(&key) {
        c.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let _g = grow.lock().unwrap_or_else(|p| p.into_inner());
    let current = map.load_full();
    if let Some(c) = current.get(&key) {
        c.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut next = (*current).clone();
    next.insert(key, Arc::new(AtomicU64::new(1)));
    map.store(Arc::new(next));
}

/// Bounded method labels (extension methods would be unbounded).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

impl Metrics {
    /// The process-wide registry.
    pub fn global() -> &'static Metrics {
        &GLOBAL
    }

    /// Counts one answered request. Steady state: two lock-free loads, a hash lookup by
    /// `&str`, a short scan and one relaxed atomic add — no allocation, no lock.
    pub fn record_request(&self, route: &str, method: &Method, status: u16, code: Option<&'static str>) {
        let method = method_label(method);
        let code = code.unwrap_or("");
        if let Some(cells) = self.requests.load().get(route) {
            if cells.bump(method, status, code) {
                return;
            }
        }
        // First request of this combination: grow the maps under the writer lock.
        let _g = self.grow.lock().unwrap_or_else(|p| p.into_inner());
        let routes = self.requests.load_full();
        let cells = match routes.get(route) {
            Some(c) => Arc::clone(c),
            None => {
                let c = Arc::new(RouteCells::default());
                let mut next = (*routes).clone();
                next.insert(route.into(), Arc::clone(&c));
                self.requests.store(Arc::new(next));
                c
            }
        };
        if cells.bump(method, status, code) {
            return;
        }
        let mut next = (**cells.0.load()).clone();
        next.push(Arc::new(Cell {
            method,
            status,
            code,
            n: AtomicU64::new(1),
        }));
        cells.0.store(Arc::new(next));
    }

    /// Counts one key event (`event` like `plugged`, `detail` like the invalid reason).
    pub fn record_key_event(&self, event: &'static str, detail: &str) {
        bump(&self.key_events, &self.grow, (event, detail.to_owned()));
    }

    fn requests(&self) -> BTreeMap<RequestKey, u64> {
        let mut out = BTreeMap::new();
        for (route, cells) in self.requests.load().iter() {
            for c in cells.0.load().iter() {
                let key = RequestKey {
                    route: route.to_string(),
                    method: c.method,
                    status: c.status,
                    code: c.code,
                };
                out.insert(key, c.n.load(Ordering::Relaxed));
            }
        }
        out
    }

    fn key_events(&self) -> BTreeMap<(&'static str, String), u64> {
        self.key_events
            .load()
            .iter()
            .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Axum middleware: counts requests by matched route, method, status and error code.
/// The route is the route *pattern* (bounded label set); unmatched paths count as `other`.
pub async fn track(req: Request<Body>, next: Next) -> Response<Body> {
    // MatchedPath and standard methods clone without allocating.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let res = next.run(req).await;
    let code = res.extensions().get::<ErrorCode>().map(|c| c.0);
    let route = matched.as_ref().map_or("other", MatchedPath::as_str);
    let status = res.status().as_u16();
    Metrics::global().record_request(route, &method, status, code);
    // One log line per refused action (the gate, or a missing/insufficient login).
    match code {
        Some(GATE_CODE) => tracing::warn!(
            target: "keyfloat::gate",
            route,
            method = %method,
            code = GATE_CODE,
            "action refused: no valid hardware key for a key-bound license"
        ),
        Some(code @ ("unauthorized" | "forbidden")) => {
            tracing::info!(target: "keyfloat::gate", route, method = %method, code, status, "request refused")
        }
        _ => {}
    }
    res
}

/// Wall clock in ms since the Unix epoch (grace deadlines are wall-clock).
pub fn unix_ms() -> u64 {
    u64::try_from(now_micros() / 1000).unwrap_or(0)
}

/// Prometheus label value escaping.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn key_state_name(s: KeyState) -> &'static str {
    s.as_str()
}

/// Renders the exposition text. `licenses` = (id, product, key-bound, seats used, seats
/// total, consumptions total, feature consumption totals).
fn render(m: &Metrics, snap: &Snapshot, backend: &str, licenses: &[LicenseUsage]) -> String {
    let mut out = String::with_capacity(4096);
    let state = snap.state();
    out.push_str("# HELP keyfloat_key_state Current hardware key state (1 for the current state).\n");
    out.push_str("# TYPE keyfloat_key_state gauge\n");
    for s in [
        KeyState::Valid,
        KeyState::Absent,
        KeyState::Validating,
        KeyState::Invalid,
        KeyState::Error,
        KeyState::Grace,
    ] {
        let _ = writeln!(
            out,
            "keyfloat_key_state{{state=\"{}\",backend=\"{}\"}} {}",
            key_state_name(s),
            label(backend),
            u8::from(s == state)
        );
    }
    out.push_str("# HELP keyfloat_key_grace_seconds_left Seconds left in the key grace period (0 when none).\n");
    out.push_str("# TYPE keyfloat_key_grace_seconds_left gauge\n");
    let left = snap.grace.as_ref().map_or(0, |g| g.seconds_left(unix_ms()));
    let _ = writeln!(out, "keyfloat_key_grace_seconds_left {left}");
    out.push_str("# HELP keyfloat_key_valid 1 while a validated hardware key is in force.\n");
    out.push_str("# TYPE keyfloat_key_valid gauge\n");
    let _ = writeln!(out, "keyfloat_key_valid {}", u8::from(snap.in_force.is_some()));
    out.push_str("# HELP keyfloat_keys_attached Keys attached now.\n# TYPE keyfloat_keys_attached gauge\n");
    let _ = writeln!(out, "keyfloat_keys_attached {}", snap.keys.len());
    out.push_str(
        "# HELP keyfloat_key_cell_generation Publications of the key cell (every hot-plug or re-validation change).\n",
    );
    out.push_str("# TYPE keyfloat_key_cell_generation counter\n");
    let _ = writeln!(out, "keyfloat_key_cell_generation {}", snap.generation);

    let events = m.key_events();
    out.push_str("# HELP keyfloat_key_events_total Key events seen by the watcher.\n");
    out.push_str("# TYPE keyfloat_key_events_total counter\n");
    let mut by_event: BTreeMap<&str, u64> = BTreeMap::new();
    for ((event, _), n) in &events {
        *by_event.entry(event).or_default() += n;
    }
    for (event, n) in &by_event {
        let _ = writeln!(out, "keyfloat_key_events_total{{event=\"{event}\"}} {n}");
    }
    out.push_str("# HELP keyfloat_key_validation_failures_total Keys found invalid or unreadable, by reason.\n");
    out.push_str("# TYPE keyfloat_key_validation_failures_total counter\n");
    for ((event, reason), n) in &events {
        if matches!(*event, "invalid" | "contended" | "error") {
            let _ = writeln!(
                out,
                "keyfloat_key_validation_failures_total{{reason=\"{}\"}} {n}",
                label(reason)
            );
        }
    }

    out.push_str(
        "# HELP keyfloat_license_seats_in_use Floating seats in use.\n# TYPE keyfloat_license_seats_in_use gauge\n",
    );
    for l in licenses {
        let _ = writeln!(out, "keyfloat_license_seats_in_use{{{}}} {}", l.labels(), l.seats_used);
    }
    out.push_str("# HELP keyfloat_license_seats_total Floating seats of the license.\n# TYPE keyfloat_license_seats_total gauge\n");
    for l in licenses {
        let _ = writeln!(out, "keyfloat_license_seats_total{{{}}} {}", l.labels(), l.seats_total);
    }
    out.push_str("# HELP keyfloat_license_consumptions Consumptions recorded on the license.\n# TYPE keyfloat_license_consumptions gauge\n");
    for l in licenses {
        if let Some(c) = l.consumptions {
            let _ = writeln!(out, "keyfloat_license_consumptions{{{}}} {c}", l.labels());
        }
    }
    out.push_str("# HELP keyfloat_feature_consumptions Consumptions recorded on a feature.\n# TYPE keyfloat_feature_consumptions gauge\n");
    for l in licenses {
        for (f, c) in &l.features {
            let _ = writeln!(
                out,
                "keyfloat_feature_consumptions{{{},feature=\"{}\"}} {c}",
                l.labels(),
                label(f)
            );
        }
    }

    let requests = m.requests();
    out.push_str("# HELP keyfloat_http_requests_total HTTP requests by route, method and status.\n");
    out.push_str("# TYPE keyfloat_http_requests_total counter\n");
    let mut by_status: BTreeMap<(&str, &str, u16), u64> = BTreeMap::new();
    for (k, n) in &requests {
        *by_status.entry((&k.route, k.method, k.status)).or_default() += n;
    }
    for ((route, method, status), n) in &by_status {
        let _ = writeln!(
            out,
            "keyfloat_http_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}",
            label(route)
        );
    }
    out.push_str("# HELP keyfloat_http_errors_total Error answers by route and error code.\n");
    out.push_str("# TYPE keyfloat_http_errors_total counter\n");
    let mut gate: BTreeMap<&str, u64> = BTreeMap::new();
    for (k, n) in &requests {
        if k.status >= 400 {
            let code = if k.code.is_empty() { "unknown" } else { k.code };
            let _ = writeln!(
                out,
                "keyfloat_http_errors_total{{route=\"{}\",status=\"{}\",code=\"{code}\"}} {n}",
                label(&k.route),
                k.status
            );
            if k.code == GATE_CODE {
                *gate.entry(&k.route).or_default() += n;
            }
        }
    }
    out.push_str(
        "# HELP keyfloat_gate_refusals_total Actions refused because the license's hardware key is not accessible.\n",
    );
    out.push_str("# TYPE keyfloat_gate_refusals_total counter\n");
    for (route, n) in &gate {
        let _ = writeln!(out, "keyfloat_gate_refusals_total{{route=\"{}\"}} {n}", label(route));
    }
    out
}

/// Usage of one license at scrape time.
#[derive(Debug, Clone)]
struct LicenseUsage {
    id: u64,
    product: String,
    key_bound: bool,
    seats_used: usize,
    seats_total: u32,
    consumptions: Option<i64>,
    features: BTreeMap<String, i64>,
}

impl LicenseUsage {
    fn labels(&self) -> String {
        format!(
            "license_id=\"{}\",product=\"{}\",hardware_key=\"{}\"",
            self.id,
            label(&self.product),
            self.key_bound
        )
    }
}

/// `GET /metrics`. Open like `GET /` (Prometheus scrapers carry no token); it exposes
/// counts, never user names or keys.
pub async fn metrics_show(State(st): State<AppState>) -> ApiResult<impl IntoResponse> {
    let now = now_micros();
    let entries = st.catalog().entries().to_vec();
    let licenses = read(st.store(), move |tx| {
        let mut out = Vec::new();
        for e in &entries {
            let Some((l, seats, _features)) = service::usage(tx, &e.license, now)? else {
                continue;
            };
            out.push(LicenseUsage {
                id: l.id,
                product: l.terms.product.clone(),
                key_bound: l.terms.hardware_key_required,
                seats_used: seats,
                seats_total: l.terms.floating_users,
                consumptions: l.terms.consumption.as_ref().map(|_| l.total_consumptions),
                features: l.feature_totals.clone().into_iter().collect(),
            });
        }
        Ok(out)
    })
    .await?;
    let body = render(Metrics::global(), &st.keys().snapshot(), st.backend(), &licenses);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    ))
}

/// One key event derived from two snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEvent {
    /// `plugged`, `validated`, `invalid`, `contended`, `error`, `pulled`.
    pub event: &'static str,
    /// Key id (`backend:path`).
    pub key: String,
    /// Serial, when known.
    pub serial: Option<String>,
    /// Reason / error code (`invalid`, `contended`, `error`), else empty.
    pub reason: String,
    /// Human text (message, holders).
    pub detail: String,
}

fn status_event(status: &KeyStatus) -> Option<(&'static str, String, String)> {
    match status {
        KeyStatus::Validating => None,
        KeyStatus::Valid { proof } => Some(("validated", String::new(), format!("proof {}", proof_name(*proof)))),
        KeyStatus::Invalid { reason } => Some(("invalid", reason.code().to_owned(), reason.to_string())),
        KeyStatus::Error {
            kind,
            code,
            message,
            holders,
        } => {
            let busy = *kind == keyfloat_hal::ErrorKind::Busy;
            let mut detail = message.clone();
            if !holders.is_empty() {
                let names: Vec<String> = holders
                    .iter()
                    .map(|h| format!("{} (pid {})", h.command, h.pid))
                    .collect();
                let _ = write!(detail, "; held by {}", names.join(", "));
            }
            Some((if busy { "contended" } else { "error" }, (*code).to_owned(), detail))
        }
    }
}

fn proof_name(p: keyfloat_hal::ProofStatus) -> &'static str {
    match p {
        keyfloat_hal::ProofStatus::Verified => "verified",
        keyfloat_hal::ProofStatus::Attested => "verified, attested",
        keyfloat_hal::ProofStatus::SerialOnly => "serial only",
    }
}

fn same_judgement(a: &KeyStatus, b: &KeyStatus) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
        && match (a, b) {
            (KeyStatus::Invalid { reason: x }, KeyStatus::Invalid { reason: y }) => x == y,
            (KeyStatus::Error { code: x, .. }, KeyStatus::Error { code: y, .. }) => x == y,
            _ => true,
        }
}

/// The events that lead from `before` to `after` (pure; unit-tested).
pub fn diff(before: &Snapshot, after: &Snapshot) -> Vec<KeyEvent> {
    let mut out = Vec::new();
    let serial_of = |k: &keyfloat_hal::KeyView| {
        k.serial
            .as_ref()
            .or(k.info.serial.as_ref())
            .map(|s| s.as_str().to_owned())
    };
    for k in &after.keys {
        let old = before.key(&k.info.id);
        if old.is_none() {
            out.push(KeyEvent {
                event: "plugged",
                key: k.info.id.as_str().to_owned(),
                serial: serial_of(k),
                reason: String::new(),
                detail: format!("{} ({})", k.info.model, k.info.backend.as_str()),
            });
        }
        if old.is_some_and(|o| same_judgement(&o.status, &k.status)) {
            continue;
        }
        if let Some((event, reason, detail)) = status_event(&k.status) {
            out.push(KeyEvent {
                event,
                key: k.info.id.as_str().to_owned(),
                serial: serial_of(k),
                reason,
                detail,
            });
        }
    }
    match (&before.grace, &after.grace) {
        (None, Some(g)) => out.push(KeyEvent {
            event: "grace_started",
            key: g.key.as_str().to_owned(),
            serial: Some(g.serial.as_str().to_owned()),
            reason: String::new(),
            detail: format!(
                "serial {} stays in force for {} s (until unix ms {})",
                g.serial.as_str(),
                g.period_ms / 1000,
                g.deadline_unix_ms
            ),
        }),
        (Some(g), None) => out.push(KeyEvent {
            event: "grace_ended",
            key: g.key.as_str().to_owned(),
            serial: Some(g.serial.as_str().to_owned()),
            reason: after.grace_ended.map_or("ended", |e| e.as_str()).to_owned(),
            detail: format!("hardware id in force now {}", after.hardware_id.as_str()),
        }),
        _ => {}
    }
    for k in &before.keys {
        let id: &KeyId = &k.info.id;
        if after.key(id).is_none() {
            out.push(KeyEvent {
                event: "pulled",
                key: id.as_str().to_owned(),
                serial: serial_of(k),
                reason: String::new(),
                detail: format!("hardware id in force now {}", after.hardware_id.as_str()),
            });
        }
    }
    out
}

/// Logs, counts and audits every key event, polling the cell's generation (one atomic
/// load) every 10 ms; runs until the task is dropped with the runtime. A flap shorter than
/// one tick is not reported as events (the cell has no change notification), but it still
/// counts in `keyfloat_key_cell_generation`.
pub async fn watch_keys(state: AppState) {
    let mut last = Arc::new(Snapshot::no_key(state.keys().snapshot().machine_id.clone()));
    let mut last_generation = None;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut grace_warned: Option<std::time::Instant> = None;
    loop {
        tick.tick().await;
        if let Some(g) = &last.grace {
            // While in grace: a WARN line every 10 s with the seconds left.
            if grace_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                grace_warned = Some(std::time::Instant::now());
                let left = g.seconds_left(unix_ms());
                tracing::warn!(
                    target: "keyfloat::key",
                    serial = g.serial.as_str(),
                    seconds_left = left,
                    "key grace period: the key in force is gone; key-bound licenses stop in {left} s unless it comes back"
                );
            }
        } else {
            grace_warned = None;
        }
        let generation = state.keys().check().generation();
        if last_generation == Some(generation) {
            continue;
        }
        last_generation = Some(generation);
        let now = state.keys().snapshot();
        let events = diff(&last, &now);
        last = arc_swap::Guard::into_inner(now);
        for e in events {
            log_and_count(&e);
            let kind = format!("key_{}", e.event);
            let detail = format!(
                "key {} serial {}{}{}",
                e.key,
                e.serial.as_deref().unwrap_or("?"),
                if e.reason.is_empty() {
                    String::new()
                } else {
                    format!(" reason {}", e.reason)
                },
                if e.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", e.detail)
                },
            );
            let event = AuditEvent::new(&kind, Some("monitor"), None, detail);
            if let Err(err) = transact(state.store(), move |tx| Ok(tx.audit(&event)?)).await {
                tracing::error!(error = %err, "cannot record a key event in the audit log");
            }
        }
    }
}

fn log_and_count(e: &KeyEvent) {
    Metrics::global().record_key_event(e.event, &e.reason);
    let serial = e.serial.as_deref().unwrap_or("?");
    match e.event {
        "invalid" | "contended" | "error" | "grace_started" | "grace_ended" => {
            tracing::warn!(target: "keyfloat::key", event = e.event, key = %e.key, serial, reason = %e.reason, detail = %e.detail, "key event")
        }
        _ => {
            tracing::info!(target: "keyfloat::key", event = e.event, key = %e.key, serial, detail = %e.detail, "key event")
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use keyfloat_hal::{BackendKind, HardwareId, InvalidReason, KeyInfo, KeyView, ProofStatus, Serial};

    use super::*;

    fn view(path: &str, status: KeyStatus) -> KeyView {
        KeyView {
            info: KeyInfo {
                id: KeyId::new(BackendKind::Sim, path),
                backend: BackendKind::Sim,
                path: path.into(),
                serial: None,
                model: "YubiKey 5".into(),
                firmware: None,
                capability: keyfloat_hal::ProofCapability::Signature,
            },
            serial: Some(Serial::new("123")),
            firmware: None,
            status,
        }
    }

    fn snap(keys: Vec<KeyView>) -> Snapshot {
        let mut s = Snapshot::no_key(HardwareId::new("machine"));
        s.keys = keys;
        s
    }

    #[test]
    fn diff_names_plug_validation_invalid_and_pull() {
        let empty = snap(vec![]);
        let plugged = snap(vec![view("a", KeyStatus::Validating)]);
        let valid = snap(vec![view(
            "a",
            KeyStatus::Valid {
                proof: ProofStatus::Verified,
            },
        )]);
        let invalid = snap(vec![view(
            "a",
            KeyStatus::Invalid {
                reason: InvalidReason::WrongVendor,
            },
        )]);
        let ev = |a: &Snapshot, b: &Snapshot| diff(a, b).into_iter().map(|e| e.event).collect::<Vec<_>>();
        assert_eq!(ev(&empty, &plugged), ["plugged"]);
        assert_eq!(ev(&plugged, &valid), ["validated"]);
        assert_eq!(ev(&valid, &valid), Vec::<&str>::new());
        assert_eq!(ev(&valid, &invalid), ["invalid"]);
        assert_eq!(diff(&valid, &invalid)[0].reason, InvalidReason::WrongVendor.code());
        assert_eq!(ev(&invalid, &empty), ["pulled"]);
        assert_eq!(ev(&empty, &valid), ["plugged", "validated"]);
    }

    #[test]
    fn busy_key_is_contended_and_names_holders() {
        let busy = snap(vec![view(
            "a",
            KeyStatus::Error {
                kind: keyfloat_hal::ErrorKind::Busy,
                code: "KEY_BUSY",
                message: "in use".into(),
                holders: vec![keyfloat_hal::Holder {
                    pid: 42,
                    command: "scdaemon".into(),
                }],
            },
        )]);
        let e = diff(&snap(vec![]), &busy);
        assert_eq!(e[1].event, "contended");
        assert_eq!(e[1].reason, "KEY_BUSY");
        assert!(e[1].detail.contains("scdaemon (pid 42)"), "{}", e[1].detail);
    }

    #[test]
    fn concurrent_first_requests_lose_no_count() {
        let m = Arc::new(Metrics::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let m = Arc::clone(&m);
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        let status = if i % 2 == 0 { 200 } else { 400 + t };
                        m.record_request("/api/v4/register", &Method::POST, status, None);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total: u64 = m.requests().values().sum();
        assert_eq!(total, 4000);
        assert_eq!(m.requests().len(), 5);
    }

    #[test]
    fn counters_render_with_labels_and_gate_refusals() {
        let m = Metrics::default();
        m.record_request("/api/v4/add_feature_consumption", &Method::POST, 400, Some(GATE_CODE));
        m.record_request("/api/v4/add_feature_consumption", &Method::POST, 400, Some(GATE_CODE));
        m.record_request("/api/v4/register", &Method::POST, 200, None);
        m.record_key_event("invalid", "wrong_vendor");
        let lic = LicenseUsage {
            id: 7,
            product: "hw\"based".into(),
            key_bound: true,
            seats_used: 1,
            seats_total: 5,
            consumptions: Some(3),
            features: [("f1".to_owned(), 2)].into_iter().collect(),
        };
        let text = render(&m, &snap(vec![]), "sim", &[lic]);
        for line in [
            "keyfloat_key_state{state=\"absent\",backend=\"sim\"} 1",
            "keyfloat_key_state{state=\"valid\",backend=\"sim\"} 0",
            "keyfloat_http_requests_total{route=\"/api/v4/add_feature_consumption\",method=\"POST\",status=\"400\"} 2",
            "keyfloat_http_requests_total{route=\"/api/v4/register\",method=\"POST\",status=\"200\"} 1",
            "keyfloat_gate_refusals_total{route=\"/api/v4/add_feature_consumption\"} 2",
            "keyfloat_key_validation_failures_total{reason=\"wrong_vendor\"} 1",
            "keyfloat_license_seats_in_use{license_id=\"7\",product=\"hw\\\"based\",hardware_key=\"true\"} 1",
            "keyfloat_license_seats_total{license_id=\"7\",product=\"hw\\\"based\",hardware_key=\"true\"} 5",
            "keyfloat_license_consumptions{license_id=\"7\",product=\"hw\\\"based\",hardware_key=\"true\"} 3",
            "keyfloat_feature_consumptions{license_id=\"7\",product=\"hw\\\"based\",hardware_key=\"true\",feature=\"f1\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
