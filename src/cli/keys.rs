//! `keyfloat keys`: the keys connected now, validated once.

use std::process::ExitCode;

use anyhow::Context;
use keyfloat_hal::diagnose::KeyFacts;
use keyfloat_hal::trust::{AttestationRoots, VendorPublicKey, VendorValidator};
use keyfloat_hal::{BackendKind, KeyBackend, KeyInfo, KeyValidator, SerialReadable, Validation};
use serde::Serialize;

use super::common::{key_backend_parser, providers};

/// Arguments of `keyfloat keys`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
    /// Which backends to look at.
    #[arg(long, value_parser = key_backend_parser(), default_value = "auto")]
    key_backend: KeyBackend,
    /// Check each key's certificate and proof of possession against this vendor public key
    /// (a PEM file, or the PEM itself); without it only serials are read.
    #[arg(long, value_name = "PATH|PEM", allow_hyphen_values = true)]
    vendor_public_key: Option<String>,
    /// Also demand a fresh PIV attestation of slot 9E chaining to this root (PEM file or PEM;
    /// repeatable), as a server with `require_attestation` does.
    #[arg(
        long,
        value_name = "PATH|PEM",
        requires = "vendor_public_key",
        allow_hyphen_values = true
    )]
    attestation_root: Vec<String>,
}

/// One line of output.
#[derive(Debug, Serialize)]
struct Row {
    backend: BackendKind,
    path: String,
    model: String,
    /// What validation read (`attested` only checked with --attestation-root).
    #[serde(flatten)]
    facts: KeyFacts,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let validator = validator(&args)?;
    let mut rows = Vec::new();
    for provider in providers(args.key_backend, None)? {
        let infos = match provider.list() {
            Ok(infos) => infos,
            Err(e) => {
                eprintln!("keyfloat: {} backend: {e}", provider.kind());
                continue;
            }
        };
        for info in infos {
            let outcome = provider.open(&info.id).map(|mut key| validator.validate(key.as_mut()));
            rows.push(row(&info, outcome));
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        println!("no keys found");
    } else {
        for r in &rows {
            println!("{:<5} {:<40} {}", r.backend.as_str(), r.path, r.facts);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// With a vendor key, keys are judged as a server would (serial-only dongles are listed
/// as such, not refused); without one, only serials are read.
fn validator(args: &Args) -> anyhow::Result<Box<dyn KeyValidator>> {
    let Some(v) = &args.vendor_public_key else {
        return Ok(Box::new(SerialReadable));
    };
    let roots = if args.attestation_root.is_empty() {
        None
    } else {
        Some(AttestationRoots::from_paths_or_inline(&args.attestation_root).context("--attestation-root")?)
    };
    Ok(Box::new(
        VendorValidator::new(VendorPublicKey::from_path_or_inline(v).context("--vendor-public-key")?)
            .allow_serial_only(true)
            .require_attestation(roots),
    ))
}

/// One listed key: what enumeration showed, completed by what validation read.
fn row(info: &KeyInfo, outcome: keyfloat_hal::Result<Validation>) -> Row {
    let mut facts = match outcome {
        Ok(Validation::Failed(e)) | Err(e) => KeyFacts::failed("error", e.to_string()),
        Ok(answered) => KeyFacts::answered(&answered).unwrap_or_default(),
    };
    if facts.serial.is_none() {
        facts.serial = info.serial.as_ref().map(|s| s.to_string());
    }
    if facts.firmware.is_none() {
        facts.firmware = info.firmware.map(|f| f.to_string());
    }
    Row {
        backend: info.backend,
        path: info.path.clone(),
        model: info.model.clone(),
        facts,
    }
}
