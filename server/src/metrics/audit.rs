//! The key watcher: follows the cell's generation and turns each change into key events
//! ([`super::diff`]), each written as one log line, one counter and one audit row.

use std::sync::Arc;
use std::time::Duration;

use keyfloat_hal::Snapshot;

use super::{diff, unix_ms, KeyEvent, Metrics};
use crate::model::AuditEvent;
use crate::state::AppState;
use crate::store::transact;

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
            log_and_count(state.metrics(), &e);
            let event = audit_event(&e);
            // An HA standby writes no audit rows (its key events are in its log and metrics).
            if state.role() == crate::ha::Role::Standby {
                continue;
            }
            if let Err(err) = transact(state.store(), move |tx| tx.audit(&event)).await {
                tracing::error!(error = %err, "cannot record a key event in the audit log");
            }
        }
    }
}

/// The audit row of a key event (kind `key_<event>`, actor `monitor`).
fn audit_event(e: &KeyEvent) -> AuditEvent {
    let kind = format!("key_{}", e.event);
    let mut detail = format!("key {} serial {}", e.key, e.serial.as_deref().unwrap_or("?"));
    if !e.reason.is_empty() {
        detail.push_str(" reason ");
        detail.push_str(&e.reason);
    }
    if !e.detail.is_empty() {
        detail.push_str(": ");
        detail.push_str(&e.detail);
    }
    AuditEvent::new(&kind, Some("monitor"), None, detail)
}

fn log_and_count(metrics: &Metrics, e: &KeyEvent) {
    metrics.record_key_event(e.event, &e.reason);
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
mod tests {
    use super::*;

    #[test]
    fn audit_rows_name_key_serial_reason_and_detail() {
        let e = KeyEvent {
            event: "invalid",
            key: "sim:a".into(),
            serial: Some("123".into()),
            reason: "wrong_vendor".into(),
            detail: "not ours".into(),
        };
        let row = audit_event(&e);
        assert_eq!(row.kind, "key_invalid");
        assert_eq!(row.actor.as_deref(), Some("monitor"));
        assert_eq!(row.detail, "key sim:a serial 123 reason wrong_vendor: not ours");
        let bare = KeyEvent {
            event: "pulled",
            key: "sim:a".into(),
            serial: None,
            reason: String::new(),
            detail: String::new(),
        };
        assert_eq!(audit_event(&bare).detail, "key sim:a serial ?");
    }
}
