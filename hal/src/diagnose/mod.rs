//! Why is my key not seen? The checks behind `keyfloat doctor`: pcscd (socket, pid file,
//! process and how it was started), its readers, the keys and their proof status, the
//! processes that hold or may hold a reader, Yubico USB / HID device nodes and their
//! permissions, and the vendor key — each problem a [`Finding`] with a stable code and one
//! concrete hint. Everything is read from `/proc`, `/sys` and PC/SC; no external tools.
//! The caller renders the [`Report`].

mod pcscd;
mod readers;
mod usb;

use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::procfs;
use crate::trust::{AttestationRoots, VendorPublicKey, VendorValidator};
use crate::validate::{KeyValidator, ProofStatus, SerialReadable, Validation};

pub use pcscd::SOCKET_ENV;

/// One problem or note, with what to do about it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    /// Stable code, e.g. `pcscd_not_running`.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
    /// One concrete next step.
    pub hint: String,
}

/// A process seen in `/proc`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Proc {
    /// Process id.
    pub pid: u32,
    /// `/proc/PID/comm`.
    pub command: String,
    /// `/proc/PID/cmdline` (how it was started).
    pub cmdline: String,
}

impl Proc {
    fn read(proc_root: &Path, pid: u32, command: String) -> Self {
        let cmdline = procfs::cmdline(&proc_root.join(pid.to_string()));
        Self { pid, command, cmdline }
    }
}

/// pcscd as found.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Pcscd {
    /// Socket path checked.
    pub socket: String,
    /// True when the path came from `PCSCLITE_CSOCK_NAME`.
    pub socket_from_env: bool,
    /// The socket exists (and is a socket).
    pub socket_exists: bool,
    /// A connection to it succeeded.
    pub reachable: bool,
    /// Why not, when not.
    pub error: Option<String>,
    /// Pid file next to the socket.
    pub pid_file: String,
    /// Pid in it.
    pub pid: Option<u32>,
    /// The pid-file process, when alive.
    pub process: Option<Proc>,
    /// Every pcscd process on the machine.
    pub processes: Vec<Proc>,
}

/// A reader.
#[derive(Debug, Clone, Serialize)]
pub struct Reader {
    /// Reader name.
    pub name: String,
    /// A card is in it.
    pub card_present: bool,
}

/// A key (or a card that could not be read) in a reader.
#[derive(Debug, Clone, Serialize)]
pub struct Key {
    /// Reader.
    pub reader: String,
    /// What validating it found.
    #[serde(flatten)]
    pub facts: KeyFacts,
    /// Processes that hold it (busy keys).
    pub holders: Vec<Proc>,
}

/// What validating a key found, as `doctor` and `keyfloat keys` report it (JSON fields, and
/// `serial=… fw=… proof=…[ attested][ (reason)]` as text).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KeyFacts {
    /// Serial, when read.
    pub serial: Option<String>,
    /// Firmware, when read.
    pub firmware: Option<String>,
    /// `verified`, `serial_only`, `invalid`, `busy`, `error`.
    pub proof: String,
    /// Invalid reason / error code.
    pub reason: Option<String>,
    /// A fresh PIV attestation chained to a configured root (checked only when attestation
    /// roots are given); `proof` then says `verified`.
    pub attested: bool,
}

impl KeyFacts {
    /// The facts of a key that answered (valid or invalid); `None` when the validation failed.
    pub fn answered(outcome: &Validation) -> Option<Self> {
        match outcome {
            Validation::Valid {
                serial,
                firmware,
                proof,
            } => {
                let attested = *proof == ProofStatus::Attested;
                let proof = if attested { ProofStatus::Verified } else { *proof };
                Some(Self {
                    serial: Some(serial.to_string()),
                    firmware: firmware.map(|f| f.to_string()),
                    proof: proof.as_str().into(),
                    reason: None,
                    attested,
                })
            }
            Validation::Invalid { serial, reason } => Some(Self {
                serial: serial.as_ref().map(|s| s.to_string()),
                firmware: None,
                proof: "invalid".into(),
                reason: Some(reason.code().to_owned()),
                attested: false,
            }),
            Validation::Failed(_) => None,
        }
    }

    /// A key that could not be asked: `proof` (`error`, `busy`) and why.
    pub fn failed(proof: &str, reason: String) -> Self {
        Self {
            proof: proof.into(),
            reason: Some(reason),
            ..Self::default()
        }
    }
}

impl fmt::Display for KeyFacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "serial={:<10} fw={:<7} proof={}",
            self.serial.as_deref().unwrap_or("?"),
            self.firmware.as_deref().unwrap_or("?"),
            self.proof
        )?;
        if self.attested {
            f.write_str(" attested")?;
        }
        match &self.reason {
            Some(reason) => write!(f, " ({reason})"),
            None => Ok(()),
        }
    }
}

/// A Yubico USB device and its device nodes.
#[derive(Debug, Clone, Serialize)]
pub struct UsbDevice {
    /// `/dev/bus/usb/BBB/DDD`.
    pub node: String,
    /// Product string.
    pub product: String,
    /// hidraw nodes of the device.
    pub hidraw: Vec<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// No problems.
    pub ok: bool,
    /// pcscd.
    pub pcscd: Pcscd,
    /// Readers pcscd knows.
    pub readers: Vec<Reader>,
    /// Keys found in the readers.
    pub keys: Vec<Key>,
    /// Processes that may hold a reader (PC/SC clients, raw USB / hidraw users).
    pub holders: Vec<Proc>,
    /// Yubico USB devices.
    pub usb_devices: Vec<UsbDevice>,
    /// Fingerprint of the vendor key keys are checked against.
    pub vendor_key: Option<String>,
    /// Things that stop keys from working.
    pub problems: Vec<Finding>,
    /// Worth knowing, not wrong.
    pub notes: Vec<Finding>,
}

impl Report {
    /// Records a problem (the caller sets [`Report::ok`] once every check ran).
    pub fn problem(&mut self, code: &'static str, message: impl Into<String>, hint: impl Into<String>) {
        self.problems.push(Finding {
            code,
            message: message.into(),
            hint: hint.into(),
        });
    }

    /// Records a note (worth knowing, not wrong).
    pub fn note(&mut self, code: &'static str, message: impl Into<String>, hint: impl Into<String>) {
        self.notes.push(Finding {
            code,
            message: message.into(),
            hint: hint.into(),
        });
    }
}

/// Where the checks read the machine: `/proc` and `/sys`, or a fake tree in tests.
#[derive(Debug, Clone, Copy)]
pub struct Roots<'a> {
    /// The proc file system.
    pub proc: &'a Path,
    /// The sys file system.
    pub sys: &'a Path,
}

impl Roots<'static> {
    /// This machine's `/proc` and `/sys`.
    pub fn system() -> Self {
        Self {
            proc: Path::new("/proc"),
            sys: Path::new("/sys"),
        }
    }
}

/// Runs every check. Keys are checked against `vendor` (PEM file or PEM) when given, and
/// must also attest (chaining to `attestation_roots`) when any are given.
pub fn diagnose(vendor: Option<&str>, attestation_roots: &[String], roots: Roots<'_>) -> Report {
    let mut r = Report::default();
    let validator = validator(&mut r, vendor, attestation_roots);
    pcscd::check(&mut r, roots.proc);
    if r.pcscd.reachable {
        readers::check(&mut r, validator.as_ref(), roots.proc);
    }
    usb::check(&mut r, roots.sys);
    note_holders(&mut r, roots.proc);
    r.ok = r.problems.is_empty();
    r
}

/// The validator keys are checked with: the vendor's when its key reads, else serials only.
fn validator(r: &mut Report, vendor: Option<&str>, attestation_roots: &[String]) -> Box<dyn KeyValidator> {
    let roots = attestation(r, attestation_roots);
    let Some(vendor) = vendor else {
        r.note(
            "no_vendor_key",
            "no vendor public key given: keys are listed, their certificates and proofs are not checked",
            "re-run with --vendor-public-key vendor.pub.pem (or --config config.yaml)",
        );
        return Box::new(SerialReadable);
    };
    match VendorPublicKey::from_path_or_inline(vendor) {
        Ok(pk) => {
            r.vendor_key = Some(pk.fingerprint());
            Box::new(
                VendorValidator::new(pk)
                    .allow_serial_only(true)
                    .require_attestation(roots),
            )
        }
        Err(e) => {
            r.problem(
                "vendor_key_invalid",
                format!("the vendor public key cannot be read: {e}"),
                "pass the vendor's public key PEM (`keyfloat vendor keygen` prints where it is written)",
            );
            Box::new(SerialReadable)
        }
    }
}

/// The attestation roots, `None` when none are given or they do not read (a problem).
fn attestation(r: &mut Report, attestation_roots: &[String]) -> Option<AttestationRoots> {
    if attestation_roots.is_empty() {
        return None;
    }
    match AttestationRoots::from_paths_or_inline(attestation_roots) {
        Ok(roots) => Some(roots),
        Err(e) => {
            r.problem(
                "attestation_roots_invalid",
                format!("the attestation roots cannot be read: {e}"),
                "give the PEM of Yubico's PIV root CA (see README, Provisioning)",
            );
            None
        }
    }
}

/// Lists the processes that may hold a key; a note unless a busy key already names them.
fn note_holders(r: &mut Report, proc_root: &Path) {
    r.holders = crate::holders::scan(proc_root, std::process::id())
        .into_iter()
        .map(|h| Proc::read(proc_root, h.pid, h.command))
        .collect();
    if r.holders.is_empty() || r.problems.iter().any(|p| p.code == "key_busy") {
        return;
    }
    let names: Vec<String> = r
        .holders
        .iter()
        .map(|h| format!("{} (pid {})", h.command, h.pid))
        .collect();
    r.note(
        "possible_holders",
        format!(
            "processes that talk to pcscd or hold a key device: {}",
            names.join(", ")
        ),
        "if a key ever shows as busy, stop the process that holds it exclusively (e.g. `gpgconf --kill scdaemon`)",
    );
}
