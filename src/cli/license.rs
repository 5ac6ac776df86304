//! `keyfloat license`: issue and verify signed license files.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
use keyfloat_hal::trust::{VendorPublicKey, VendorSigningKey};
use keyfloat_server::license_file::{
    read_license_file, sign_license, ConsumptionTerms, FeatureKind, FeatureTerms, LicenseAuth, LicenseDoc,
};

/// Subcommands of `keyfloat license`.
#[allow(clippy::large_enum_variant)] // parsed once
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write a license file signed with the vendor key.
    Issue(IssueArgs),
    /// Check a license file's signature and terms, and print a summary.
    Verify(VerifyArgs),
}

/// Arguments of `keyfloat license issue`.
#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("auth").required(true).args(["license_key", "user"]))]
pub struct IssueArgs {
    /// The vendor's private key (PEM).
    #[arg(long, value_name = "FILE")]
    vendor_key: PathBuf,
    /// Product short code.
    #[arg(long)]
    product: String,
    /// Product display name.
    #[arg(long)]
    product_name: Option<String>,
    /// License id.
    #[arg(long)]
    license_id: u64,
    /// Key-based authorisation: the license key applications present.
    #[arg(long)]
    license_key: Option<String>,
    /// User-based authorisation: the license user.
    #[arg(long, requires = "password")]
    user: Option<String>,
    /// The license user's password (only its argon2 hash is written).
    #[arg(long, env = "KEYFLOAT_LICENSE_PASSWORD", hide_env_values = true, requires = "user")]
    password: Option<String>,
    /// perpetual, time-limited, consumption or subscription (default: consumption when
    /// --consumptions is given, else perpetual).
    #[arg(long)]
    license_type: Option<String>,
    /// Floating seats.
    #[arg(long, default_value_t = 1)]
    floating_users: u32,
    /// Minutes after which a seat that was not re-registered is released.
    #[arg(long = "floating-timeout", value_name = "MINUTES", default_value_t = 120)]
    floating_timeout: u32,
    /// Longest borrow in hours; 0 = borrowing not allowed.
    #[arg(long, value_name = "HOURS", default_value_t = 0)]
    max_borrow_hours: u32,
    /// Included consumptions (makes a consumption license).
    #[arg(long, value_name = "MAX")]
    consumptions: Option<i64>,
    /// Allowed overages beyond --consumptions (0 = unlimited overages).
    #[arg(long, value_name = "N", requires = "consumptions")]
    overages: Option<i64>,
    /// Consumption reset period: daily, weekly, monthly or annually.
    #[arg(long, requires = "consumptions")]
    reset_period: Option<String>,
    /// A feature: `code`, `code:consumption:MAX` or `code:floating:N`. Repeatable.
    #[arg(long = "feature", value_name = "SPEC")]
    features: Vec<String>,
    /// Every action needs a valid, vendor-provisioned hardware key.
    #[arg(long)]
    hardware_key_required: bool,
    /// Only keys with this serial may serve the license (implies --hardware-key-required). Repeatable.
    #[arg(long = "allowed-serial", value_name = "SERIAL")]
    allowed_serials: Vec<String>,
    /// Not valid before this time (RFC 3339, e.g. 2026-01-01T00:00:00Z).
    #[arg(long, value_name = "RFC3339")]
    valid_from: Option<String>,
    /// Not valid after this time (RFC 3339, e.g. 2027-01-31T23:59:59Z).
    #[arg(long, value_name = "RFC3339")]
    valid_until: Option<String>,
    /// Where to write the license file.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// Arguments of `keyfloat license verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The license file.
    file: PathBuf,
    /// The vendor's public key: a PEM file, or the PEM itself.
    #[arg(long, value_name = "FILE|PEM", allow_hyphen_values = true)]
    vendor_public_key: String,
    /// Print the verified license as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Issue(a) => issue(a),
        Command::Verify(a) => verify(a),
    }
}

fn parse_feature(spec: &str) -> anyhow::Result<FeatureTerms> {
    let parts: Vec<&str> = spec.split(':').collect();
    let mut f = FeatureTerms {
        code: parts[0].to_string(),
        name: None,
        kind: FeatureKind::Activation,
        floating_users: None,
        floating_timeout_minutes: None,
        max_consumption: None,
        allow_overages: false,
        max_overages: 0,
    };
    match parts[1..] {
        [] => {}
        ["consumption", max] => {
            f.kind = FeatureKind::Consumption;
            f.max_consumption = Some(
                max.parse()
                    .with_context(|| format!("--feature {spec}: {max:?} is not a number"))?,
            );
        }
        ["floating", n] => {
            f.floating_users = Some(
                n.parse()
                    .with_context(|| format!("--feature {spec}: {n:?} is not a number"))?,
            );
        }
        _ => bail!("--feature {spec:?}: expected code, code:consumption:MAX or code:floating:N"),
    }
    Ok(f)
}

fn issue(args: IssueArgs) -> anyhow::Result<ExitCode> {
    let vendor = VendorSigningKey::read_pem_file(&args.vendor_key)
        .with_context(|| format!("vendor key {}", args.vendor_key.display()))?;
    let auth = match (args.license_key, args.user, args.password) {
        (Some(license_key), None, None) => LicenseAuth::Key { license_key },
        (None, Some(username), Some(password)) => {
            let salt = SaltString::generate(&mut OsRng);
            let hash = argon2::Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?;
            LicenseAuth::User {
                username,
                password_hash: hash.to_string(),
            }
        }
        _ => bail!("give either --license-key, or --user with --password"),
    };
    let mut doc = LicenseDoc::new(args.license_id, args.product, auth);
    doc.product_name = args.product_name;
    doc.license_type = match (args.license_type, args.consumptions) {
        (Some(t), _) => t,
        (None, Some(_)) => "consumption".into(),
        (None, None) => "perpetual".into(),
    };
    doc.floating_users = args.floating_users;
    doc.floating_timeout_minutes = args.floating_timeout;
    doc.max_borrow_time_hours = args.max_borrow_hours;
    doc.consumption = args.consumptions.map(|max| ConsumptionTerms {
        max_consumptions: max,
        allow_unlimited: false,
        allow_overages: args.overages.is_some(),
        max_overages: args.overages.unwrap_or(0),
        allow_negative: false,
        allow_negative_total: false,
        reset_period: args.reset_period,
    });
    doc.features = args
        .features
        .iter()
        .map(|s| parse_feature(s))
        .collect::<anyhow::Result<_>>()?;
    doc.hardware_key_required = args.hardware_key_required || !args.allowed_serials.is_empty();
    doc.allowed_serials = args.allowed_serials;
    doc.valid_from = args.valid_from;
    doc.valid_until = args.valid_until;
    doc.validate().context("refusing to sign")?;
    let text = sign_license(&doc, &vendor);
    std::fs::write(&args.out, &text).with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "license {} for product {} signed by vendor {}, written to {}",
        doc.license_id,
        doc.product,
        vendor.public_key().fingerprint_short(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let vendor = VendorPublicKey::from_path_or_inline(&args.vendor_public_key).context("vendor public key")?;
    let doc = match read_license_file(&args.file, &vendor) {
        Ok(doc) => doc,
        Err(e) => {
            eprintln!(
                "keyfloat: {}: verification FAILED ({}): {e}",
                args.file.display(),
                e.code()
            );
            return Ok(ExitCode::from(1));
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}: signature OK (vendor {})",
        args.file.display(),
        vendor.fingerprint_short()
    );
    print_terms(&doc);
    Ok(ExitCode::SUCCESS)
}

/// The terms of a verified license, one per line.
fn print_terms(doc: &LicenseDoc) {
    println!("  license id      {}", doc.license_id);
    match &doc.product_name {
        Some(name) => println!("  product         {} ({name})", doc.product),
        None => println!("  product         {}", doc.product),
    }
    match &doc.auth {
        LicenseAuth::Key { license_key } => println!("  auth            license key {license_key}"),
        LicenseAuth::User { username, .. } => println!("  auth            user {username}"),
    }
    println!("  type            {}", doc.license_type);
    println!(
        "  floating        {} seat(s), timeout {} min",
        doc.floating_users, doc.floating_timeout_minutes
    );
    if doc.max_borrow_time_hours == 0 {
        println!("  borrowing       not allowed");
    } else {
        println!("  borrowing       up to {} h", doc.max_borrow_time_hours);
    }
    if let Some(c) = &doc.consumption {
        let overages = if c.allow_overages {
            if c.max_overages == 0 {
                ", unlimited overages".to_string()
            } else {
                format!(", {} overages", c.max_overages)
            }
        } else {
            String::new()
        };
        println!("  consumptions    {}{overages}", c.max_consumptions);
    }
    for f in &doc.features {
        let detail = match (f.kind, f.max_consumption, f.floating_users) {
            (FeatureKind::Consumption, Some(max), _) => format!("consumption, max {max}"),
            (_, _, Some(n)) => format!("floating, {n} seat(s)"),
            _ => "activation".into(),
        };
        println!("  feature         {} ({detail})", f.code);
    }
    println!(
        "  valid           {} .. {}",
        doc.valid_from.as_deref().unwrap_or("-"),
        doc.valid_until.as_deref().unwrap_or("-")
    );
    println!(
        "  hardware key    {}",
        if doc.hardware_key_required {
            if doc.allowed_serials.is_empty() {
                "required (any key provisioned by this vendor)".to_string()
            } else {
                format!("required, serial {}", doc.allowed_serials.join(", "))
            }
        } else {
            "not required".into()
        }
    );
    println!("  issued at       {}", doc.issued_at);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn feature_specs_parse() {
        let f = parse_feature("render:consumption:50").unwrap();
        assert_eq!((f.kind, f.max_consumption), (FeatureKind::Consumption, Some(50)));
        let f = parse_feature("export:floating:2").unwrap();
        assert_eq!((f.kind, f.floating_users), (FeatureKind::Activation, Some(2)));
        let f = parse_feature("basic").unwrap();
        assert_eq!(f.kind, FeatureKind::Activation);
        assert!(parse_feature("x:floating:many").is_err());
        assert!(parse_feature("x:other:1").is_err());
    }
}
