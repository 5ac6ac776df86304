//! Key events: what changed between two snapshots of the key cell (plugged, validated,
//! invalid with reason, contended, error, grace started/ended, pulled). Pure, unit-tested.

use std::fmt::Write as _;

use keyfloat_hal::{KeyId, KeyStatus, Snapshot};

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(super) mod tests {
    use keyfloat_hal::{BackendKind, HardwareId, InvalidReason, KeyInfo, KeyView, ProofStatus, Serial};

    use super::*;

    pub(in crate::metrics) fn view(path: &str, status: KeyStatus) -> KeyView {
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

    pub(in crate::metrics) fn snap(keys: Vec<KeyView>) -> Snapshot {
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
}
