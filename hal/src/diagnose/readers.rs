//! The readers pcscd knows and the keys in them, each validated as the server would.

use std::path::Path;

use super::Report;
use crate::validate::KeyValidator;

#[cfg(feature = "pcsc")]
pub(super) use with_pcsc::check;

#[cfg(not(feature = "pcsc"))]
pub(super) fn check(r: &mut Report, _validator: &dyn KeyValidator, _proc_root: &Path) {
    r.note(
        "pcsc_not_compiled",
        "this build has no PC/SC backend; readers and keys are not checked",
        "build keyfloat with the `pcsc` feature (the default)",
    );
}

#[cfg(feature = "pcsc")]
mod with_pcsc {
    use super::*;
    use crate::backend::pcsc::{PcscKey, PcscProvider, Timeouts};
    use crate::diagnose::{Key, KeyFacts, Proc, Reader};
    use crate::error::{Error, ErrorKind};
    use crate::validate::Validation;

    /// Lists the readers, then opens and validates the key in each one that holds a card.
    pub(in crate::diagnose) fn check(r: &mut Report, validator: &dyn KeyValidator, proc_root: &Path) {
        let timeouts = Timeouts::default();
        let Some(readers) = list(r, timeouts) else {
            return;
        };
        for (reader, _) in readers.iter().filter(|(_, present)| *present) {
            let mut key = Key {
                reader: reader.clone(),
                facts: KeyFacts {
                    proof: "error".into(),
                    ..KeyFacts::default()
                },
                holders: Vec::new(),
            };
            match PcscKey::open(reader, timeouts) {
                Err(e) => key_error(r, &mut key, &e, proc_root),
                Ok(mut k) => match validator.validate(&mut k) {
                    Validation::Failed(e) => key_error(r, &mut key, &e, proc_root),
                    outcome => record(r, &mut key, outcome),
                },
            }
            r.keys.push(key);
        }
        if r.keys.is_empty() {
            let names: Vec<&str> = readers.iter().map(|(n, _)| n.as_str()).collect();
            r.problem(
                "no_key",
                format!("no card in any reader ({})", names.join(", ")),
                "plug the provisioned key in (a YubiKey shows up as a reader with a card always inserted)",
            );
        }
    }

    /// The readers with whether a card is in each; `None` when there is nothing to look at.
    fn list(r: &mut Report, timeouts: Timeouts) -> Option<Vec<(String, bool)>> {
        let readers = match PcscProvider::with_timeouts(timeouts).readers() {
            Ok(list) => list,
            Err(e) if e.kind() == ErrorKind::NotPresent => Vec::new(),
            Err(e) => {
                r.problem(
                    "pcsc_error",
                    format!("pcscd answered but listing readers failed: {e}"),
                    "restart pcscd (`systemctl restart pcscd`) and look at `journalctl -u pcscd`",
                );
                return None;
            }
        };
        r.readers = readers
            .iter()
            .map(|(name, card_present)| Reader {
                name: name.clone(),
                card_present: *card_present,
            })
            .collect();
        if readers.is_empty() {
            r.problem(
                "no_readers",
                "pcscd sees no smart-card reader",
                "plug the key in; if it is plugged, enable its CCID interface (`ykman config usb --enable PIV`) and check `dmesg` for the USB device",
            );
            return None;
        }
        Some(readers)
    }

    /// A key that answered: valid (with its proof) or invalid (a problem with a hint).
    fn record(r: &mut Report, key: &mut Key, outcome: Validation) {
        if let Some(facts) = KeyFacts::answered(&outcome) {
            key.facts = facts;
        }
        if let Validation::Invalid { reason, .. } = outcome {
            r.problem(
                "key_invalid",
                format!(
                    "the key in {} (serial {}) is not valid: {reason}",
                    key.reader,
                    key.facts.serial.as_deref().unwrap_or("?")
                ),
                invalid_hint(reason.code()),
            );
        }
    }

    /// A key that could not be read: busy (naming its holders), not allowed, or unreadable.
    fn key_error(r: &mut Report, key: &mut Key, e: &Error, proc_root: &Path) {
        key.facts = KeyFacts::failed("error", e.code().to_owned());
        key.holders = e
            .holders()
            .iter()
            .map(|h| Proc::read(proc_root, h.pid, h.command.clone()))
            .collect();
        match e.kind() {
            ErrorKind::Busy => {
                key.facts.proof = "busy".into();
                r.problem(
                    "key_busy",
                    format!(
                        "the card in {} is held exclusively by {}",
                        key.reader,
                        holders_text(key)
                    ),
                    format!(
                        "{}; for GnuPG use `gpgconf --kill scdaemon` and put `pcsc-shared` in scdaemon.conf",
                        stop_hint(key)
                    ),
                );
            }
            ErrorKind::PermissionDenied => r.problem(
                "key_permission_denied",
                format!("no permission to use the card in {}: {e}", key.reader),
                "run as root or allow this user in pcscd's polkit rules",
            ),
            _ => r.problem(
                "key_unreadable",
                format!("the card in {} cannot be read: {e}", key.reader),
                "re-plug the key; if it persists, check `journalctl -u pcscd` for the reader",
            ),
        }
    }

    fn holders_text(key: &Key) -> String {
        if key.holders.is_empty() {
            return "a process this user cannot see (run doctor as root)".to_owned();
        }
        key.holders
            .iter()
            .map(|h| format!("{} (pid {}: {})", h.command, h.pid, h.cmdline))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn stop_hint(key: &Key) -> String {
        key.holders.first().map_or_else(
            || "find it with `fuser -v /dev/bus/usb/*/*` and stop it".to_owned(),
            |h| format!("stop {} (`kill {}`)", h.command, h.pid),
        )
    }

    fn invalid_hint(reason: &str) -> &'static str {
        match reason {
            "unprovisioned" => {
                "provision it: generate a key in PIV slot 9e (`yubico-piv-tool -a generate -s 9e`), sign its certificate with `keyfloat vendor sign-key-cert` and import it"
            }
            "wrong_vendor" => "the key was provisioned by another vendor key: check --vendor-public-key",
            "expired_certificate" => "the key certificate is outside its validity: re-issue it with `keyfloat vendor sign-key-cert`",
            "serial_mismatch" => "the certificate names another serial: re-issue it for this key",
            "bad_signature" => "the key failed the challenge: its certificate belongs to another key (a clone?) — re-provision it",
            "serial_not_allowed" => "this serial is not in the allowed list of the configuration",
            "not_attested" => "the key gave no attestation chaining to the configured roots for its serial and certified key (an imported or cloned key): generate the key on the YubiKey and re-provision it with `keyfloat vendor sign-key-cert --attestation`",
            _ => "re-provision the key with `keyfloat vendor sign-key-cert`",
        }
    }
}
