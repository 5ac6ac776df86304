//! The opt-in key grace period end to end: a pulled key's licenses keep working until the
//! grace ends (expiry, return of the same key, another valid key), with health, metrics and
//! audit showing it; `crashIfNoHardwareKey` fires only after the grace.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use common::{build, monitor_config, sim_bus, Harness, KEY, OTHER_KEY};
use keyfloat_hal::trust::VendorSigningKey;
use keyfloat_hal::MonitorConfig;
use keyfloat_server::KeyPolicy;
use keyfloat_testkit::wait_for_async;
use serde_json::{json, Value};

const HW: &str = "product=hwbased&licenseKey=K&isHWKeyReq=true&floatingUsers=5&maxConsumptions=1000";

async fn grace_harness(grace: Duration, policy: KeyPolicy) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let vendor = VendorSigningKey::generate();
    let bus = sim_bus(&vendor);
    bus.plug(KEY).unwrap();
    let mut h = build(dir, vendor, bus, false, policy, false).await;
    h.start_monitor_with(MonitorConfig {
        grace,
        ..monitor_config()
    });
    tokio::spawn(keyfloat_server::metrics::watch_keys(h.state.clone()));
    h.wait_key(true).await;
    h
}

/// A harness with a key-bound license whose key was just pulled: in its grace period.
async fn pulled_in_grace(grace: Duration, policy: KeyPolicy) -> Harness {
    let h = grace_harness(grace, policy).await;
    h.add_product(HW).await;
    h.bus.unplug(KEY).unwrap();
    wait_state(&h, "grace").await;
    h
}

async fn wait_state(h: &Harness, state: &str) -> Value {
    wait_for_async(Duration::from_secs(5), format!("key state {state}"), || async {
        let (_, v) = h.get("/api/v4/health").await;
        if v["key"]["state"] == state {
            Ok(v)
        } else {
            Err(v)
        }
    })
    .await
}

async fn consume(h: &Harness) -> (StatusCode, Value) {
    h.post("/api/v4/add_consumption", json!({"product":"hwbased","consumptions":1}))
        .await
}

/// The audit log, oldest first, once `done` holds (the watcher audits key events in the
/// background, and the listing reads a snapshot that may not hold them yet); at most 10 s.
async fn audit_kinds(h: &Harness, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    wait_for_async(Duration::from_secs(10), "the audit events", || async {
        let kinds = audit_once(h).await;
        if done(&kinds) {
            Ok(kinds)
        } else {
            Err(format!("{kinds:?}"))
        }
    })
    .await
}

async fn audit_once(h: &Harness) -> Vec<String> {
    let (s, v) = h.get("/api/v4/audit?limit=1000").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut kinds: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["kind"].as_str().or(e["event"].as_str()).unwrap_or("?"),
                e["detail"]
            )
        })
        .collect();
    kinds.reverse();
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_key_keeps_its_licenses_until_it_returns() {
    let h = grace_harness(Duration::from_secs(30), KeyPolicy::Refuse).await;
    h.add_product(HW).await;
    h.bus.unplug(KEY).unwrap();
    let health = wait_state(&h, "grace").await;
    assert_eq!(health["hardware_id"], "12345678", "{health}");
    assert_eq!(health["key"]["grace"]["serial"], "12345678");
    let left = health["key"]["grace"]["seconds_left"].as_u64().unwrap();
    assert!((1..=30).contains(&left), "{health}");
    assert!(health["key"]["grace"]["deadline_unix_ms"].as_u64().unwrap() > 0);
    let (s, v) = consume(&h).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, m) = h.get("/metrics").await;
    let m = m.as_str().unwrap().to_owned();
    assert!(
        m.contains("keyfloat_key_state{state=\"grace\",backend=\"sim\"} 1"),
        "{m}"
    );
    assert!(!m.contains("keyfloat_key_grace_seconds_left 0\n"), "{m}");
    // The watcher samples the cell every 10 ms: a grace shorter than that is not an event.
    audit_kinds(&h, |k| k.iter().any(|k| k.starts_with("key_grace_started"))).await;
    // The same key back: valid again, grace ended as "returned".
    h.bus.plug(KEY).unwrap();
    let health = wait_state(&h, "valid").await;
    assert_eq!(health["key"]["grace_ended"], "returned");
    let ended_returned = |k: &String| k.starts_with("key_grace_ended") && k.contains("returned");
    let kinds = audit_kinds(&h, |k| k.iter().any(ended_returned)).await;
    let started = kinds.iter().position(|k| k.starts_with("key_grace_started"));
    let ended = kinds.iter().position(ended_returned);
    assert!(started.is_some() && ended > started, "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_ends_on_expiry_and_then_everything_is_refused() {
    let h = pulled_in_grace(Duration::from_millis(600), KeyPolicy::Refuse).await;
    assert_eq!(consume(&h).await.0, StatusCode::OK);
    let health = wait_state(&h, "absent").await;
    assert_eq!(health["key"]["grace_ended"], "expired");
    assert_eq!(health["hardware_id"], common::MACHINE);
    let (s, v) = consume(&h).await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("hardware_key_not_accessible"))
    );
    let ended_expired = |k: &String| k.starts_with("key_grace_ended") && k.contains("expired");
    let kinds = audit_kinds(&h, |k| k.iter().any(ended_expired)).await;
    assert!(kinds.iter().any(ended_expired), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_valid_key_ends_the_grace_at_once() {
    let h = pulled_in_grace(Duration::from_secs(30), KeyPolicy::Refuse).await;
    h.bus.plug(OTHER_KEY).unwrap();
    let health = wait_state(&h, "valid").await;
    assert_eq!(health["hardware_id"], "87654321");
    assert_eq!(health["key"]["grace_ended"], "replaced");
    let (s, v) = consume(&h).await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("hardware_key_not_accessible"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_if_no_hardware_key_fires_only_after_the_grace() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let policy = KeyPolicy::Crash(Arc::new(move |_: &str| {
        c.fetch_add(1, Ordering::SeqCst);
    }));
    let h = pulled_in_grace(Duration::from_millis(600), policy).await;
    assert_eq!(consume(&h).await.0, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    wait_state(&h, "absent").await;
    let _ = consume(&h).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_grace_a_pull_refuses_at_once() {
    let h = grace_harness(Duration::ZERO, KeyPolicy::Refuse).await;
    h.add_product(HW).await;
    h.bus.unplug(KEY).unwrap();
    let health = wait_state(&h, "absent").await;
    assert!(health["key"]["grace"].is_null());
    assert_eq!(consume(&h).await.0, StatusCode::BAD_REQUEST);
}
