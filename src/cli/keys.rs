//! `keyfloat keys`: the keys connected now, validated once.

use std::process::ExitCode;

use anyhow::Context;
use keyfloat_hal::trust::{VendorPublicKey, VendorValidator};
use keyfloat_hal::{BackendKind, KeyValidator, SerialReadable, Validation};
use serde::Serialize;

use super::common::{providers, KeyBackendArg};

/// Arguments of `keyfloat keys`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
    /// Which backends to look at.
    #[arg(long, value_enum, default_value = "auto")]
    key_backend: KeyBackendArg,
    /// Check each key's certificate and proof of possession against this vendor public key
    /// (a PEM file, or the PEM itself); without it only serials are read.
    #[arg(long, value_name = "PATH|PEM", allow_hyphen_values = true)]
    vendor_public_key: Option<String>,
}

/// One line of output.
#[derive(Debug, Serialize)]
struct Row {
    backend: BackendKind,
    path: String,
    serial: Option<String>,
    model: String,
    firmware: Option<String>,
    proof: String,
    reason: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // With a vendor key, keys are judged as a server would (serial-only dongles are listed
    // as such, not refused); without one, only serials are read.
    let validator: Box<dyn KeyValidator> = match &args.vendor_public_key {
        Some(v) => Box::new(
            VendorValidator::new(VendorPublicKey::from_path_or_inline(v).context("--vendor-public-key")?)
                .allow_serial_only(true),
        ),
        None => Box::new(SerialReadable),
    };
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
            let (serial, firmware, proof, reason) = match provider.open(&info.id) {
                Ok(mut key) => match validator.validate(key.as_mut()) {
                    Validation::Valid {
                        serial,
                        firmware,
                        proof,
                    } => (
                        Some(serial.to_string()),
                        firmware.map(|f| f.to_string()),
                        serde_json::to_value(proof)?.as_str().unwrap_or_default().to_string(),
                        None,
                    ),
                    Validation::Invalid { serial, reason } => (
                        serial.map(|s| s.to_string()),
                        None,
                        "invalid".into(),
                        Some(reason.code().to_string()),
                    ),
                    Validation::Failed(e) => (None, None, "error".into(), Some(e.to_string())),
                },
                Err(e) => (None, None, "error".into(), Some(e.to_string())),
            };
            rows.push(Row {
                backend: info.backend,
                path: info.path.clone(),
                serial: serial.or_else(|| info.serial.as_ref().map(|s| s.to_string())),
                model: info.model.clone(),
                firmware: firmware.or_else(|| info.firmware.map(|f| f.to_string())),
                proof,
                reason,
            });
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        println!("no keys found");
    } else {
        for r in &rows {
            println!(
                "{:<5} {:<40} serial={:<10} fw={:<7} proof={}{}",
                r.backend.as_str(),
                r.path,
                r.serial.as_deref().unwrap_or("?"),
                r.firmware.as_deref().unwrap_or("?"),
                r.proof,
                r.reason.as_deref().map(|x| format!(" ({x})")).unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
