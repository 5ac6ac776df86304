//! The counters: one per (route, method, status, error code) and per key event. They live
//! in the app state ([`crate::state::AppState::metrics`]), so two apps in one process
//! (tests, the separate metrics listener) never mix their counts.
//!
//! The request path costs one lock-free map load plus one atomic increment: counters are
//! created on the first request of a combination under a mutex and then only read.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use axum::http::Method;

/// One request counter's labels, as the exposition reads them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct RequestKey {
    pub(super) route: String,
    pub(super) method: &'static str,
    pub(super) status: u16,
    pub(super) code: &'static str,
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

/// The app's counters (see the module docs).
#[derive(Debug, Default)]
pub struct Metrics {
    requests: ArcSwap<HashMap<Box<str>, Arc<RouteCells>>>,
    key_events: ArcSwap<HashMap<(&'static str, String), Arc<AtomicU64>>>,
    grow: Mutex<()>,
}

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

    /// Every request counter, ordered by its labels.
    pub(super) fn requests(&self) -> BTreeMap<RequestKey, u64> {
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

    /// Every key-event counter by (event, reason).
    pub(super) fn key_events(&self) -> BTreeMap<(&'static str, String), u64> {
        self.key_events
            .load()
            .iter()
            .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
    fn two_registries_count_apart() {
        let (a, b) = (Metrics::default(), Metrics::default());
        a.record_request("/metrics", &Method::GET, 200, None);
        a.record_key_event("pulled", "");
        assert_eq!(a.requests().values().sum::<u64>(), 1);
        assert!(b.requests().is_empty() && b.key_events().is_empty());
    }
}
