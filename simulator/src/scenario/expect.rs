//! Checking a step's expectations against the cell and a response — shared by both run modes.

use keyfloat_hal::{KeyStatus, Snapshot};

use super::format::Expect;
use super::http::Response;

/// The primary key's reason: an invalid reason (`wrong_vendor`) or an error code (`KEY_BUSY`).
pub(crate) fn reason(snap: &Snapshot) -> Option<String> {
    snap.primary_key().and_then(|k| match &k.status {
        KeyStatus::Invalid { reason } => Some(reason.code().to_string()),
        KeyStatus::Error { code, .. } => Some((*code).to_string()),
        _ => None,
    })
}

/// The first cell-level expectation that does not hold, if any. `label` is the hardware ID
/// in force as a trace label; `holder` the process name a contended key must name (the
/// scenario's, or the run mode's own contender).
pub(crate) fn cell_mismatch(expect: &Expect, snap: &Snapshot, label: &str, holder: Option<&str>) -> Option<String> {
    if let Some(want) = &expect.hardware_id {
        if label != want {
            return Some(format!("expected hardware_id={want}, got {label}"));
        }
    }
    if let Some(want) = &expect.key_state {
        let got = snap.state().as_str();
        if got != want {
            return Some(format!("expected key_state={want}, got {got}"));
        }
    }
    if let Some(want) = &expect.reason {
        let got = reason(snap).unwrap_or_else(|| "none".into());
        if &got != want {
            return Some(format!("expected reason={want}, got {got}"));
        }
    }
    if let Some(want) = holder.or(expect.holder.as_deref()).filter(|_| expect.holder.is_some()) {
        let holders: Vec<&str> = snap
            .keys
            .iter()
            .flat_map(|k| match &k.status {
                KeyStatus::Error { holders, .. } => holders.iter().map(|h| h.command.as_str()).collect(),
                _ => Vec::new(),
            })
            .collect();
        if !holders.contains(&want) {
            return Some(format!("expected holder {want} to be named, got {holders:?}"));
        }
    }
    None
}

/// The first HTTP expectation that does not hold, if any.
pub(crate) fn response_mismatch(expect: &Expect, response: Option<&Response>) -> Option<String> {
    if expect.status.is_none() && expect.code.is_none() && expect.json.is_empty() {
        return None;
    }
    let Some(resp) = response else {
        return Some("expected an HTTP result but the step sent no request".into());
    };
    if let Some(want) = expect.status {
        if resp.status != want {
            return Some(format!("expected status {want}, got {} {}", resp.status, resp.body));
        }
    }
    if let Some(want) = &expect.code {
        if resp.code().as_deref() != Some(want.as_str()) {
            return Some(format!("expected code {want}, got {} {}", resp.status, resp.body));
        }
    }
    for (pointer, want) in &expect.json {
        let want = serde_json::to_value(want).unwrap_or_default();
        if resp.body.pointer(pointer) != Some(&want) {
            return Some(format!(
                "expected {pointer} = {want} in the response, got {}",
                resp.body
            ));
        }
    }
    None
}
