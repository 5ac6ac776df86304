//! `keyfloat doctor`: why is my key not seen? Checks pcscd (socket, pid file, process and
//! how it was started), its readers, the keys and their proof status, the processes that
//! hold or may hold a reader, Yubico USB / HID device nodes and their permissions, and the
//! configured vendor key — with one concrete hint per problem.
//!
//! Exit status: 0 = nothing wrong, 1 = at least one problem, 2 = doctor itself failed.
//! Everything is read from `/proc`, `/sys` and PC/SC; no external tools.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use keyfloat_hal::trust::{AttestationRoots, VendorPublicKey, VendorValidator};
use keyfloat_hal::{KeyValidator, ProofStatus, SerialReadable};
use serde::Serialize;

/// libpcsclite's socket variable and its compiled-in default.
const CSOCK_ENV: &str = "PCSCLITE_CSOCK_NAME";
const DEFAULT_SOCKET: &str = "/run/pcscd/pcscd.comm";
/// Yubico's USB vendor id.
const YUBICO_VID: &str = "1050";

/// Arguments of `keyfloat doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Check each key's certificate and proof of possession against this vendor public key
    /// (PEM file or the PEM itself). Without it only serials are read.
    #[arg(long, value_name = "PATH|PEM", allow_hyphen_values = true)]
    vendor_public_key: Option<String>,
    /// Read `vendor_public_key` (`require_attestation` / `attestation_roots`, `data_dir`) from
    /// this server configuration file instead.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Also demand a fresh PIV attestation chaining to this root (PEM; repeatable).
    #[arg(long, value_name = "PATH|PEM")]
    attestation_root: Vec<String>,
    /// Check that this server data directory and its files are private (0700 / 0600).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

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
    /// Serial, when read.
    pub serial: Option<String>,
    /// Firmware, when read.
    pub firmware: Option<String>,
    /// `verified`, `serial_only`, `invalid`, `busy`, `error`.
    pub proof: String,
    /// Invalid reason / error code.
    pub reason: Option<String>,
    /// A fresh PIV attestation chained to a configured root (checked only when attestation
    /// roots are given).
    pub attested: bool,
    /// Processes that hold it (busy keys).
    pub holders: Vec<Proc>,
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
    fn problem(&mut self, code: &'static str, message: impl Into<String>, hint: impl Into<String>) {
        self.problems.push(Finding {
            code,
            message: message.into(),
            hint: hint.into(),
        });
    }

    fn note(&mut self, code: &'static str, message: impl Into<String>, hint: impl Into<String>) {
        self.notes.push(Finding {
            code,
            message: message.into(),
            hint: hint.into(),
        });
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = match &args.config {
        Some(path) => {
            Some(keyfloat_server::ServerConfig::load(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    let vendor = args
        .vendor_public_key
        .clone()
        .or_else(|| config.as_ref().and_then(|c| c.vendor_public_key.clone()));
    let mut roots = args.attestation_root.clone();
    if roots.is_empty() {
        if let Some(c) = config.as_ref().filter(|c| c.require_attestation) {
            roots = c.attestation_roots.clone();
        }
    }
    let mut report = diagnose_with(vendor.as_deref(), &roots, Path::new("/proc"), Path::new("/sys"));
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| config.as_ref().map(|c| c.data_dir.clone()));
    if let Some(dir) = &data_dir {
        check_data_dir(&mut report, dir);
    }
    let text = if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        render(&report)
    };
    // A closed pipe (`doctor | head`) is not an error of the diagnosis.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Warns about a data dir or data files that group or others can read: they hold argon2
/// hashes, license keys and the JWT secret.
pub fn check_data_dir(r: &mut Report, dir: &Path) {
    for warning in keyfloat_server::files::permission_warnings(dir) {
        r.problem(
            "data_dir_permissions",
            warning,
            "make the data dir 0700 and its files 0600 (the server does so at start)",
        );
    }
    r.ok = r.problems.is_empty();
}

/// Runs every check; keys must also attest (chaining to `attestation_roots`) when any are given.
pub fn diagnose_with(vendor: Option<&str>, attestation_roots: &[String], proc_root: &Path, sys_root: &Path) -> Report {
    let mut r = Report::default();
    let roots = if attestation_roots.is_empty() {
        None
    } else {
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
    };
    let validator: Box<dyn KeyValidator> = match vendor {
        Some(v) => match VendorPublicKey::from_path_or_inline(v) {
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
        },
        None => {
            r.note(
                "no_vendor_key",
                "no vendor public key given: keys are listed, their certificates and proofs are not checked",
                "re-run with --vendor-public-key vendor.pub.pem (or --config config.yaml)",
            );
            Box::new(SerialReadable)
        }
    };
    check_pcscd(&mut r, proc_root);
    if r.pcscd.reachable {
        check_readers(&mut r, validator.as_ref(), proc_root);
    }
    check_devices(&mut r, sys_root);
    r.holders = keyfloat_hal::holders::scan(proc_root, std::process::id())
        .into_iter()
        .map(|h| proc_info(proc_root, h.pid, h.command))
        .collect();
    if !r.holders.is_empty() && r.problems.iter().all(|p| p.code != "key_busy") {
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
    r.ok = r.problems.is_empty();
    r
}

fn proc_info(proc_root: &Path, pid: u32, command: String) -> Proc {
    let cmdline = fs::read(proc_root.join(pid.to_string()).join("cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    Proc { pid, command, cmdline }
}

fn comm(proc_root: &Path, pid: u32) -> Option<String> {
    fs::read_to_string(proc_root.join(pid.to_string()).join("comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

fn check_pcscd(r: &mut Report, proc_root: &Path) {
    let from_env = std::env::var_os(CSOCK_ENV).filter(|v| !v.is_empty());
    let socket = from_env
        .clone()
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from);
    let pid_file = socket
        .parent()
        .unwrap_or_else(|| Path::new("/run/pcscd"))
        .join("pcscd.pid");
    let p = &mut r.pcscd;
    p.socket = socket.display().to_string();
    p.socket_from_env = from_env.is_some();
    p.pid_file = pid_file.display().to_string();
    p.processes = fs::read_dir(proc_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| comm(proc_root, *pid).as_deref() == Some("pcscd"))
        .map(|pid| proc_info(proc_root, pid, "pcscd".into()))
        .collect();
    p.processes.sort_by_key(|x| x.pid);
    // pcscd writes "PID\n\0".
    p.pid = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim_matches(|c: char| c.is_whitespace() || c == '\0').parse().ok());
    p.process = p
        .pid
        .filter(|pid| comm(proc_root, *pid).as_deref() == Some("pcscd"))
        .map(|pid| proc_info(proc_root, pid, "pcscd".into()));
    p.socket_exists = fs::metadata(&socket).is_ok_and(|m| m.file_type().is_socket());
    let connect = std::os::unix::net::UnixStream::connect(&socket);
    p.reachable = connect.is_ok();
    p.error = connect.err().map(|e| e.to_string());
    let (socket_s, pid, alive, reachable, error, n_procs) = (
        p.socket.clone(),
        p.pid,
        p.process.is_some(),
        p.reachable,
        p.error.clone().unwrap_or_default(),
        p.processes.len(),
    );
    let env_hint = if from_env.is_some() {
        format!(" ({CSOCK_ENV} is set: unset it to use the system pcscd)")
    } else {
        String::new()
    };
    if reachable {
        if pid.is_some() && !alive {
            r.note(
                "pcscd_stale_pid_file",
                format!("{} names pid {} which is not pcscd", r.pcscd.pid_file, pid.unwrap_or(0)),
                "harmless while the socket answers; a restart of pcscd rewrites it",
            );
        }
        return;
    }
    if !Path::new(&socket_s).exists() {
        let running = if n_procs > 0 {
            format!("; {n_procs} pcscd process(es) run elsewhere (another mount namespace or socket path?)")
        } else {
            String::new()
        };
        r.problem(
            "pcscd_not_running",
            format!("pcscd is not reachable: no socket at {socket_s}{env_hint}{running}"),
            "start it: `systemctl start pcscd.socket` (or `pcscd --auto-exit` / `pcscd -f &` in a container)",
        );
    } else if error.contains("ermission") {
        r.problem(
            "pcscd_permission_denied",
            format!("cannot connect to {socket_s}: {error}"),
            "run as a user allowed by pcscd's polkit rules (org.debian.pcsc-lite.access_pcsc) or as root",
        );
    } else {
        r.problem(
            "pcscd_socket_stale",
            format!("{socket_s} exists but nobody answers ({error}); pcscd probably crashed"),
            format!("remove the stale socket and restart pcscd: `rm {socket_s} && systemctl restart pcscd`"),
        );
    }
}

#[cfg(feature = "pcsc")]
fn check_readers(r: &mut Report, validator: &dyn KeyValidator, proc_root: &Path) {
    use keyfloat_hal::backend::pcsc::{PcscKey, PcscProvider, Timeouts};
    use keyfloat_hal::{ErrorKind, Validation};

    let timeouts = Timeouts::default();
    let readers = match PcscProvider::with_timeouts(timeouts).readers() {
        Ok(list) => list,
        Err(e) if e.kind() == ErrorKind::NotPresent => Vec::new(),
        Err(e) => {
            r.problem(
                "pcsc_error",
                format!("pcscd answered but listing readers failed: {e}"),
                "restart pcscd (`systemctl restart pcscd`) and look at `journalctl -u pcscd`",
            );
            return;
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
        return;
    }
    for (reader, present) in &readers {
        if !present {
            continue;
        }
        let mut key = Key {
            reader: reader.clone(),
            serial: None,
            firmware: None,
            proof: "error".into(),
            reason: None,
            attested: false,
            holders: Vec::new(),
        };
        match PcscKey::open(reader, timeouts) {
            Err(e) => note_key_error(r, &mut key, &e, proc_root),
            Ok(mut k) => match validator.validate(&mut k) {
                Validation::Valid {
                    serial,
                    firmware,
                    proof,
                } => {
                    key.serial = Some(serial.to_string());
                    key.firmware = firmware.map(|f| f.to_string());
                    key.attested = proof == ProofStatus::Attested;
                    let proof = if key.attested { ProofStatus::Verified } else { proof };
                    key.proof = serde_json::to_value(proof)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_else(|| "valid".into());
                }
                Validation::Invalid { serial, reason } => {
                    key.serial = serial.map(|s| s.to_string());
                    key.proof = "invalid".into();
                    key.reason = Some(reason.code().to_owned());
                    r.problem(
                        "key_invalid",
                        format!(
                            "the key in {reader} (serial {}) is not valid: {reason}",
                            key.serial.as_deref().unwrap_or("?")
                        ),
                        invalid_hint(reason.code()),
                    );
                }
                Validation::Failed(e) => note_key_error(r, &mut key, &e, proc_root),
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

#[cfg(not(feature = "pcsc"))]
fn check_readers(r: &mut Report, _validator: &dyn KeyValidator, _proc_root: &Path) {
    r.note(
        "pcsc_not_compiled",
        "this build has no PC/SC backend; readers and keys are not checked",
        "build keyfloat with the `pcsc` feature (the default)",
    );
}

#[cfg(feature = "pcsc")]
fn note_key_error(r: &mut Report, key: &mut Key, e: &keyfloat_hal::Error, proc_root: &Path) {
    use keyfloat_hal::ErrorKind;
    key.reason = Some(e.code().to_owned());
    key.holders = e
        .holders()
        .iter()
        .map(|h| proc_info(proc_root, h.pid, h.command.clone()))
        .collect();
    match e.kind() {
        ErrorKind::Busy => {
            key.proof = "busy".into();
            let who = if key.holders.is_empty() {
                "a process this user cannot see (run doctor as root)".to_owned()
            } else {
                key.holders
                    .iter()
                    .map(|h| format!("{} (pid {}: {})", h.command, h.pid, h.cmdline))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let stop = key.holders.first().map_or_else(
                || "find it with `fuser -v /dev/bus/usb/*/*` and stop it".to_owned(),
                |h| format!("stop {} (`kill {}`)", h.command, h.pid),
            );
            r.problem(
                "key_busy",
                format!("the card in {} is held exclusively by {who}", key.reader),
                format!("{stop}; for GnuPG use `gpgconf --kill scdaemon` and put `pcsc-shared` in scdaemon.conf"),
            );
        }
        ErrorKind::PermissionDenied => {
            key.proof = "error".into();
            r.problem(
                "key_permission_denied",
                format!("no permission to use the card in {}: {e}", key.reader),
                "run as root or allow this user in pcscd's polkit rules",
            );
        }
        _ => {
            key.proof = "error".into();
            r.problem(
                "key_unreadable",
                format!("the card in {} cannot be read: {e}", key.reader),
                "re-plug the key; if it persists, check `journalctl -u pcscd` for the reader",
            );
        }
    }
}

#[cfg(feature = "pcsc")]
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

/// Yubico USB devices (`/sys/bus/usb/devices/*/idVendor` = 1050) and their hidraw nodes;
/// a hidraw node we cannot open is a problem for the HID backend.
fn check_devices(r: &mut Report, sys_root: &Path) {
    let Ok(dir) = fs::read_dir(sys_root.join("bus/usb/devices")) else {
        return;
    };
    let read = |p: PathBuf| fs::read_to_string(p).map(|s| s.trim().to_owned()).unwrap_or_default();
    let mut hidraw_of: Vec<(String, String)> = Vec::new(); // (hidraw name, sysfs device path)
    if let Ok(h) = fs::read_dir(sys_root.join("class/hidraw")) {
        for e in h.flatten() {
            if let Ok(target) = fs::canonicalize(e.path()) {
                hidraw_of.push((
                    e.file_name().to_string_lossy().into_owned(),
                    target.display().to_string(),
                ));
            }
        }
    }
    for e in dir.flatten() {
        let p = e.path();
        if read(p.join("idVendor")) != YUBICO_VID {
            continue;
        }
        let bus: u32 = read(p.join("busnum")).parse().unwrap_or(0);
        let dev: u32 = read(p.join("devnum")).parse().unwrap_or(0);
        let real = fs::canonicalize(&p)
            .map(|x| x.display().to_string())
            .unwrap_or_default();
        let hidraw: Vec<String> = hidraw_of
            .iter()
            .filter(|(_, t)| !real.is_empty() && t.starts_with(&real))
            .map(|(n, _)| format!("/dev/{n}"))
            .collect();
        for node in &hidraw {
            if let Err(err) = fs::OpenOptions::new().read(true).write(true).open(node) {
                if err.kind() == std::io::ErrorKind::PermissionDenied {
                    r.problem(
                        "hidraw_permission_denied",
                        format!("cannot open {node} (Yubico HID interface): {err}"),
                        "install a udev rule granting access (Debian: package libu2f-udev) or run as root",
                    );
                }
            }
        }
        r.usb_devices.push(UsbDevice {
            node: format!("/dev/bus/usb/{bus:03}/{dev:03}"),
            product: read(p.join("product")),
            hidraw,
        });
    }
}

/// The readable report.
pub fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let p = &r.pcscd;
    let _ = writeln!(
        s,
        "pcscd        {} {}{}",
        if p.reachable { "ok " } else { "!! " },
        p.socket,
        if p.socket_from_env {
            format!(" (from {CSOCK_ENV})")
        } else {
            String::new()
        }
    );
    match (&p.process, p.pid) {
        (Some(pr), _) => {
            let _ = writeln!(s, "             pid {} ({}): {}", pr.pid, p.pid_file, pr.cmdline);
        }
        (None, Some(pid)) => {
            let _ = writeln!(s, "             pid file {} names {pid}, not running", p.pid_file);
        }
        (None, None) => {
            let _ = writeln!(s, "             no pid file at {}", p.pid_file);
        }
    }
    for pr in &p.processes {
        let _ = writeln!(s, "             process {}: {}", pr.pid, pr.cmdline);
    }
    if r.readers.is_empty() {
        let _ = writeln!(s, "readers      none");
    }
    for rd in &r.readers {
        let _ = writeln!(
            s,
            "reader       {} [{}]",
            rd.name,
            if rd.card_present { "card" } else { "empty" }
        );
    }
    for k in &r.keys {
        let _ = writeln!(
            s,
            "key          {} serial={} fw={} proof={}{}{}",
            k.reader,
            k.serial.as_deref().unwrap_or("?"),
            k.firmware.as_deref().unwrap_or("?"),
            k.proof,
            if k.attested { " attested" } else { "" },
            k.reason.as_deref().map(|x| format!(" ({x})")).unwrap_or_default()
        );
        for h in &k.holders {
            let _ = writeln!(s, "             held by {} (pid {}): {}", h.command, h.pid, h.cmdline);
        }
    }
    for d in &r.usb_devices {
        let _ = writeln!(s, "usb          {} {} {}", d.node, d.product, d.hidraw.join(" "));
    }
    for h in &r.holders {
        let _ = writeln!(s, "may hold     {} (pid {}): {}", h.command, h.pid, h.cmdline);
    }
    let _ = writeln!(
        s,
        "vendor key   {}",
        r.vendor_key.as_deref().unwrap_or("none (proofs not checked)")
    );
    for f in &r.problems {
        let _ = writeln!(
            s,
            "PROBLEM      [{}] {}\n             hint: {}",
            f.code, f.message, f.hint
        );
    }
    for f in &r.notes {
        let _ = writeln!(
            s,
            "note         [{}] {}\n             hint: {}",
            f.code, f.message, f.hint
        );
    }
    let _ = writeln!(
        s,
        "{}",
        if r.ok {
            "result       ok".to_owned()
        } else {
            format!("result       {} problem(s)", r.problems.len())
        }
    );
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_hidraw_are_found_in_a_fake_sys() {
        let root = tempfile::tempdir().unwrap();
        let dev = root.path().join("devices/pci0/usb1/1-2");
        fs::create_dir_all(dev.join("1-2:1.0/hidraw/hidraw7")).unwrap();
        for (f, v) in [
            ("idVendor", "1050"),
            ("busnum", "1"),
            ("devnum", "4"),
            ("product", "YubiKey OTP+FIDO+CCID"),
        ] {
            fs::write(dev.join(f), format!("{v}\n")).unwrap();
        }
        fs::create_dir_all(root.path().join("bus/usb/devices")).unwrap();
        std::os::unix::fs::symlink(&dev, root.path().join("bus/usb/devices/1-2")).unwrap();
        fs::create_dir_all(root.path().join("class/hidraw")).unwrap();
        std::os::unix::fs::symlink(
            dev.join("1-2:1.0/hidraw/hidraw7"),
            root.path().join("class/hidraw/hidraw7"),
        )
        .unwrap();
        let mut r = Report::default();
        check_devices(&mut r, root.path());
        assert_eq!(r.usb_devices.len(), 1);
        assert_eq!(r.usb_devices[0].node, "/dev/bus/usb/001/004");
        assert_eq!(r.usb_devices[0].hidraw, ["/dev/hidraw7"]);
    }

    #[test]
    fn render_lists_problems_with_hints() {
        let mut r = Report::default();
        r.problem("pcscd_not_running", "no socket", "start it");
        let text = render(&r);
        assert!(text.contains("PROBLEM      [pcscd_not_running] no socket"));
        assert!(text.contains("hint: start it"));
        assert!(text.contains("1 problem(s)"));
    }
}
