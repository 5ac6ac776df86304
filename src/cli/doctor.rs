//! `keyfloat doctor`: why is my key not seen? The checks live in the HAL
//! ([`keyfloat_hal::diagnose`]: pcscd, readers, keys and their proof status, holders, USB /
//! HID device nodes, the vendor key); this command adds the server's data directory and
//! renders the report, as text or JSON.
//!
//! Exit status: 0 = nothing wrong, 1 = at least one problem, 2 = doctor itself failed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use keyfloat_hal::diagnose::{diagnose, Finding, Pcscd, Report, Roots, SOCKET_ENV};

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
    let mut report = diagnose(vendor.as_deref(), &roots, Roots::system());
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

/// The readable report.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    render_pcscd(&mut s, &r.pcscd);
    render_keys(&mut s, r);
    let _ = writeln!(
        s,
        "vendor key   {}",
        r.vendor_key.as_deref().unwrap_or("none (proofs not checked)")
    );
    render_findings(&mut s, "PROBLEM", &r.problems);
    render_findings(&mut s, "note", &r.notes);
    if r.ok {
        let _ = writeln!(s, "result       ok");
    } else {
        let _ = writeln!(s, "result       {} problem(s)", r.problems.len());
    }
    s
}

fn render_pcscd(s: &mut String, p: &Pcscd) {
    let from = if p.socket_from_env {
        format!(" (from {SOCKET_ENV})")
    } else {
        String::new()
    };
    let state = if p.reachable { "ok " } else { "!! " };
    let _ = writeln!(s, "pcscd        {state} {}{from}", p.socket);
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
}

/// Readers, keys, USB devices and possible holders.
fn render_keys(s: &mut String, r: &Report) {
    if r.readers.is_empty() {
        let _ = writeln!(s, "readers      none");
    }
    for rd in &r.readers {
        let card = if rd.card_present { "card" } else { "empty" };
        let _ = writeln!(s, "reader       {} [{card}]", rd.name);
    }
    for k in &r.keys {
        let _ = writeln!(s, "key          {} {}", k.reader, k.facts);
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
}

fn render_findings(s: &mut String, label: &str, findings: &[Finding]) {
    for f in findings {
        let _ = writeln!(
            s,
            "{label:<12} [{}] {}\n             hint: {}",
            f.code, f.message, f.hint
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_problems_with_hints() {
        let mut r = Report::default();
        r.problem("pcscd_not_running", "no socket", "start it");
        r.note("no_vendor_key", "no vendor key", "give one");
        let text = render(&r);
        assert!(text.contains("PROBLEM      [pcscd_not_running] no socket"));
        assert!(text.contains("hint: start it"));
        assert!(text.contains("note         [no_vendor_key] no vendor key"));
        assert!(text.contains("1 problem(s)"));
    }
}
