//! `keyfloat vendor`: the vendor's signing key and the certificates that provision keys.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use keyfloat_hal::trust::attestation::{certificate_der, pem_certificates, AttestationRequirement};
use keyfloat_hal::trust::{
    issue_key_certificate_attested, key_spki_from_pem, AttestationRoots, KeyCertificate, VendorSigningKey,
};
use keyfloat_hal::{KeyAttestation, Serial};

/// Subcommands of `keyfloat vendor`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a vendor signing key (ECDSA P-256). Keep it offline; servers get the public half.
    Keygen(KeygenArgs),
    /// Sign a certificate for a key's slot-9E public key, naming the key's serial.
    SignKeyCert(SignKeyCertArgs),
    /// Enroll the FIDO credential of the one YubiKey connected over HID: makeCredential
    /// (TOUCH THE KEY when asked), verify its packed attestation against the FIDO roots,
    /// certify the credential key for the key's serial and write `<serial>.cred.json`.
    #[cfg(feature = "hid")]
    FidoEnroll(FidoEnrollArgs),
}

/// Arguments of `keyfloat vendor fido-enroll`.
#[cfg(feature = "hid")]
#[derive(Debug, clap::Args)]
pub struct FidoEnrollArgs {
    /// The vendor's private key (PEM).
    #[arg(long, value_name = "FILE")]
    vendor_key: PathBuf,
    /// A trusted FIDO attestation root (PEM; repeatable): Yubico's FIDO root CA in production.
    #[arg(long, value_name = "FILE", required = true)]
    fido_attestation_root: Vec<String>,
    /// Where the credential file goes (the servers' KEYFLOAT_HID_PROVISIONING_DIR).
    #[arg(long, value_name = "DIR")]
    provisioning_dir: PathBuf,
    /// Validity in days from now.
    #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
    days: u32,
}

/// Arguments of `keyfloat vendor keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write the private key (PKCS#8 PEM, mode 0600). Never overwritten.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Where to write the public key (SPKI PEM) that servers are configured with.
    #[arg(long, value_name = "FILE")]
    public_out: Option<PathBuf>,
}

/// Arguments of `keyfloat vendor sign-key-cert`.
#[derive(Debug, clap::Args)]
pub struct SignKeyCertArgs {
    /// The vendor's private key (PEM).
    #[arg(long, value_name = "FILE")]
    vendor_key: PathBuf,
    /// The key's serial, as `yubico-piv-tool -a status` or `ykman info` shows it.
    #[arg(long)]
    serial: String,
    /// The key's slot-9E public key: the PEM `yubico-piv-tool -a generate -s 9e -A ECCP256`
    /// prints (RSA2048 keys are accepted too).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "from_key",
        conflicts_with = "from_key"
    )]
    public_key: Option<PathBuf>,
    /// Read the slot-9E public key, its attestation and the F9 certificate from the one
    /// PIV key connected through PC/SC (a provisioning station) instead of files; the key must
    /// report `--serial`. Needs `--attestation-root`.
    #[arg(long, requires = "attestation_root", conflicts_with = "attestation")]
    from_key: bool,
    /// Validity in days from now.
    #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
    days: u32,
    /// Where to write the certificate (PEM unless --der or the name ends in .der).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Write DER instead of PEM.
    #[arg(long)]
    der: bool,
    /// The key's attestation of slot 9E (`yubico-piv-tool -a attest -s 9e`, PEM or DER).
    /// With it the certificate is only signed if the attestation proves the key was
    /// generated on a genuine key, and it records that (servers with `require_attestation`
    /// demand it).
    #[arg(long, value_name = "FILE", requires_all = ["attestation_intermediate", "attestation_root"])]
    attestation: Option<PathBuf>,
    /// The key's attestation certificate, slot F9 (`yubico-piv-tool -a read-certificate -s f9`);
    /// further CA certificates may follow in the same file.
    #[arg(long, value_name = "FILE", requires = "attestation")]
    attestation_intermediate: Option<PathBuf>,
    /// A trusted attestation root (PEM file; repeatable): Yubico's PIV root CA in production.
    #[arg(long, value_name = "FILE")]
    attestation_root: Vec<String>,
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Keygen(a) => keygen(a),
        Command::SignKeyCert(a) => sign_key_cert(a),
        #[cfg(feature = "hid")]
        Command::FidoEnroll(a) => fido_enroll(a),
    }
}

#[cfg(feature = "hid")]
fn fido_enroll(args: FidoEnrollArgs) -> anyhow::Result<ExitCode> {
    use keyfloat_hal::backend::hid::{HidProvider, ProvisionedCredential, ProvisioningStore};
    use keyfloat_hal::HardwareKey;

    let vendor = VendorSigningKey::read_pem_file(&args.vendor_key)
        .with_context(|| format!("vendor key {}", args.vendor_key.display()))?;
    let roots =
        AttestationRoots::from_paths_or_inline(&args.fido_attestation_root).context("--fido-attestation-root")?;
    let provider = HidProvider::system();
    let keys: Vec<_> = provider
        .devices()
        .context("listing HID devices")?
        .into_iter()
        .filter(|d| d.fido.is_some())
        .collect();
    let [device] = keys.as_slice() else {
        bail!(
            "found {} FIDO keys over HID; connect exactly one YubiKey (with its FIDO interface enabled)",
            keys.len()
        );
    };
    let mut key = provider.open_hid(&device.key_info().id)?;
    let serial = key.read_serial().context("reading the key's serial (OTP interface)")?;
    eprintln!("keyfloat: touch the key (serial {serial}) now…");
    let enrolled = key
        .enroll_attested(&roots, SystemTime::now())
        .context("enrolling the FIDO credential")?;
    let now = SystemTime::now();
    let der = issue_key_certificate_attested(
        &vendor,
        &serial,
        &enrolled.public_key_der(),
        now - Duration::from_secs(300),
        now + Duration::from_secs(u64::from(args.days) * 86_400),
        Some(enrolled.attestation_sha256),
    )
    .context("cannot sign the certificate")?;
    let store = ProvisioningStore::new(&args.provisioning_dir);
    let path = store.save(
        &serial,
        &ProvisionedCredential {
            credential_id: enrolled.credential_id,
            certificate_der: der,
        },
    )?;
    println!(
        "attested FIDO credential of key {serial} (AAGUID {}) certified and written to {}",
        hex_lower(&enrolled.aaguid),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "hid")]
fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    if let Some(public_out) = &args.public_out {
        if public_out == &args.out {
            bail!("--out and --public-out must be different files");
        }
    }
    let key = VendorSigningKey::generate();
    key.write_pem_file(&args.out)
        .with_context(|| format!("cannot create the vendor key {}", args.out.display()))?;
    let public = key.public_key();
    if let Some(public_out) = &args.public_out {
        std::fs::write(public_out, public.to_pem())
            .with_context(|| format!("cannot write the public key {}", public_out.display()))?;
    }
    println!("vendor key written to {} (mode 0600)", args.out.display());
    if let Some(public_out) = &args.public_out {
        println!("public key written to {}", public_out.display());
    }
    println!("fingerprint (SHA-256 of the public key): {}", public.fingerprint());
    Ok(ExitCode::SUCCESS)
}

fn sign_key_cert(args: SignKeyCertArgs) -> anyhow::Result<ExitCode> {
    let vendor = VendorSigningKey::read_pem_file(&args.vendor_key)
        .with_context(|| format!("vendor key {}", args.vendor_key.display()))?;
    let serial = Serial::new(args.serial.trim());
    if !args.attestation_root.is_empty() && args.attestation.is_none() && !args.from_key {
        bail!("--attestation-root needs --attestation (or --from-key)");
    }
    let (spki, attested) = match &args.public_key {
        Some(public_key) => {
            let text = std::fs::read_to_string(public_key)
                .with_context(|| format!("cannot read the key's public key {}", public_key.display()))?;
            let spki = key_spki_from_pem(&text).with_context(|| {
                format!(
                    "{}: expected the slot-9E public key PEM (yubico-piv-tool -a generate -s 9e -A ECCP256 -o pub.pem)",
                    public_key.display()
                )
            })?;
            let attested = match &args.attestation {
                Some(path) => Some(check_attestation(
                    &args,
                    &attestation_files(&args, path)?,
                    &serial,
                    &spki,
                )?),
                None => None,
            };
            (spki, attested)
        }
        None => from_key(&args, &serial)?,
    };
    let now = SystemTime::now();
    // Back-dated a little so a server whose clock lags accepts it at once.
    let not_before = now - Duration::from_secs(300);
    let not_after = now + Duration::from_secs(u64::from(args.days) * 86_400);
    let der = issue_key_certificate_attested(&vendor, &serial, &spki, not_before, not_after, attested)
        .context("cannot sign the certificate")?;
    let cert = KeyCertificate::from_der(&der).context("the new certificate does not parse back")?;
    let as_der = args.der || has_extension(&args.out, "der");
    let bytes = if as_der {
        der.clone()
    } else {
        cert.to_pem().into_bytes()
    };
    std::fs::write(&args.out, bytes).with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "{}certificate for key serial {serial} signed by vendor {}, valid until {}, written to {} ({})",
        if attested.is_some() { "attested " } else { "" },
        vendor.public_key().fingerprint_short(),
        rfc3339(cert.not_after()),
        args.out.display(),
        if as_der { "DER" } else { "PEM" }
    );
    println!(
        "import it with: yubico-piv-tool -a import-certificate -s 9e -i {}{}",
        args.out.display(),
        if as_der { " -K DER" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

/// `--from-key`: the public key and the attestation read from the one connected PC/SC key,
/// which must report `serial`.
#[cfg(feature = "pcsc")]
fn from_key(args: &SignKeyCertArgs, serial: &Serial) -> anyhow::Result<(Vec<u8>, Option<[u8; 32]>)> {
    use keyfloat_hal::backend::pcsc::PcscProvider;
    use keyfloat_hal::KeyProvider;

    let provider = PcscProvider::new();
    let keys = provider.list().context("listing PC/SC keys")?;
    let [info] = keys.as_slice() else {
        bail!("found {} PIV keys through PC/SC; connect exactly one", keys.len());
    };
    let mut key = provider.open(&info.id)?;
    let reported = key.read_serial().context("reading the key's serial")?;
    if reported != *serial {
        bail!("the connected key reports serial {reported}, not {serial}");
    }
    let attestation = key
        .prover()
        .context("the key cannot prove possession (serial only)")?
        .attest()
        .context("the key gives no attestation of slot 9E (key imported, or not a YubiKey)")?;
    // The key certified is the one the attestation is for; the check below still verifies
    // that attestation before anything is signed.
    let spki = KeyCertificate::from_der(&attestation.certificate)
        .and_then(|c| c.spki_der())
        .context("the attestation certificate does not parse")?;
    let digest = check_attestation(args, &attestation, serial, &spki)?;
    Ok((spki, Some(digest)))
}

#[cfg(not(feature = "pcsc"))]
fn from_key(_: &SignKeyCertArgs, _: &Serial) -> anyhow::Result<(Vec<u8>, Option<[u8; 32]>)> {
    bail!("--public-key is required (this build has no PC/SC support)")
}

/// The attestation and intermediate files as a [`KeyAttestation`].
fn attestation_files(args: &SignKeyCertArgs, path: &Path) -> anyhow::Result<KeyAttestation> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let certificate = certificate_der(&read(path)?).with_context(|| format!("--attestation {}", path.display()))?;
    let intermediate_path = args
        .attestation_intermediate
        .as_deref()
        .context("--attestation needs --attestation-intermediate")?;
    let bytes = read(intermediate_path)?;
    let intermediates = match std::str::from_utf8(&bytes).ok().filter(|t| t.contains("-----BEGIN ")) {
        Some(text) => pem_certificates(text),
        None => Ok(vec![bytes]),
    }
    .with_context(|| format!("--attestation-intermediate {}", intermediate_path.display()))?;
    Ok(KeyAttestation {
        certificate,
        intermediates,
    })
}

/// Verifies `attestation` against the roots, the serial and the public key; the SHA-256 of
/// the attestation certificate on success, a refusal naming the reason otherwise.
fn check_attestation(
    args: &SignKeyCertArgs,
    attestation: &KeyAttestation,
    serial: &Serial,
    spki: &[u8],
) -> anyhow::Result<[u8; 32]> {
    let roots = AttestationRoots::from_paths_or_inline(&args.attestation_root).context("--attestation-root")?;
    let requirement = AttestationRequirement { serial, spki_der: spki };
    match requirement.check(&roots, attestation, SystemTime::now()) {
        Ok(facts) => {
            println!(
                "attestation verified: serial {}, firmware {}, PIN policy {}, touch policy {}",
                facts.serial.map(|s| s.to_string()).unwrap_or_default(),
                facts.firmware.map(|f| f.to_string()).unwrap_or_else(|| "?".into()),
                facts.pin_policy.map(|p| p.to_string()).unwrap_or_default(),
                facts.touch_policy.map(|p| p.to_string()).unwrap_or_default(),
            );
            Ok(facts.certificate_sha256)
        }
        Err(e) => bail!("refused ({}): {e}; no certificate was signed", e.code()),
    }
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

fn rfc3339(t: SystemTime) -> String {
    keyfloat_server::license_file::format_rfc3339(t.into())
}
