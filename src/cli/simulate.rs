//! `keyfloat simulate`.

use std::io::BufRead;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use keyfloat_hal::backend::sim::provision_sim_key;
use keyfloat_hal::backend::sim::SimKeySpec;
use keyfloat_hal::trust::attestation::sim_ca::SimAttestationCa;
use keyfloat_hal::trust::VendorSigningKey;
use keyfloat_simulator::card::{CardServer, VirtualCard, DEFAULT_VPCD};

/// Subcommands of `keyfloat simulate`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Serve a virtual provisioned YubiKey to pcscd through vsmartcard's vpcd reader.
    /// Type `remove` / `insert` on stdin to unplug / replug it; stopping the process unplugs it.
    Card(CardArgs),
    /// Run scenario files, print their traces, exit non-zero naming the scenario and step of
    /// the first failed expectation.
    Run(super::scenario::RunArgs),
    /// Hold a reader with an exclusive PC/SC connection (the contender of pcsc-mode scenarios).
    #[command(hide = true)]
    Hold(super::scenario::HoldArgs),
}

/// Arguments of `keyfloat simulate card`.
#[derive(Debug, clap::Args)]
pub struct CardArgs {
    /// Serial number the card reports.
    #[arg(long)]
    serial: u32,
    /// vpcd reader address (slot 0).
    #[arg(long, default_value = DEFAULT_VPCD)]
    vpcd: String,
    /// vpcd slot: added to the port (the Debian reader has slots 0 and 1).
    #[arg(long, default_value_t = 0)]
    reader_slot: u16,
    /// Vendor signing key (PEM) that certifies the card's key. Without it a throwaway demo
    /// vendor key is generated and its public key written next to the temp directory.
    #[arg(long)]
    vendor_key: Option<PathBuf>,
    /// Give the card a slot-F9 attestation key issued by a TEST attestation CA generated now
    /// (never a Yubico key), and write that CA's root certificate (PEM) here: the
    /// `--attestation-root` for `keyfloat vendor sign-key-cert`, `keyfloat keys` and servers.
    #[arg(long, value_name = "FILE")]
    attestation_root_out: Option<PathBuf>,
    /// Start without a vendor certificate in slot 9E (a key fresh from the shop), to run the
    /// README's provisioning recipe against the card.
    #[arg(long)]
    unprovisioned: bool,
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Card(args) => card(args),
        Command::Run(args) => super::scenario::run(args),
        Command::Hold(args) => super::scenario::hold(args),
    }
}

fn vpcd_address(vpcd: &str, slot: u16) -> anyhow::Result<SocketAddr> {
    let mut addr = vpcd
        .to_socket_addrs()
        .with_context(|| format!("--vpcd {vpcd:?}"))?
        .next()
        .with_context(|| format!("--vpcd {vpcd:?} resolves to nothing"))?;
    let Some(port) = addr.port().checked_add(slot) else {
        bail!("--reader-slot {slot} is too large for port {}", addr.port());
    };
    addr.set_port(port);
    Ok(addr)
}

fn card(args: CardArgs) -> anyhow::Result<ExitCode> {
    let addr = vpcd_address(&args.vpcd, args.reader_slot)?;
    let vendor = match &args.vendor_key {
        Some(path) => {
            VendorSigningKey::read_pem_file(path).with_context(|| format!("--vendor-key {}", path.display()))?
        }
        None => {
            let vendor = VendorSigningKey::generate();
            let path = std::env::temp_dir().join(format!("keyfloat-demo-vendor-{}.pub.pem", std::process::id()));
            std::fs::write(&path, vendor.public_key().to_pem())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "keyfloat: DEMO vendor key generated; its public key is in {} (pass it as --vendor-public-key)",
                path.display()
            );
            vendor
        }
    };
    let base = SimKeySpec::generate(&format!("card-{}", args.serial), args.serial);
    let spec = if args.unprovisioned {
        base
    } else {
        provision_sim_key(base, &vendor)
    };
    let mut card = VirtualCard::new(&spec);
    if let Some(path) = &args.attestation_root_out {
        let ca = SimAttestationCa::generate().context("creating the test attestation CA")?;
        std::fs::write(path, ca.root_pem()).with_context(|| format!("writing {}", path.display()))?;
        card = card.with_attester(
            ca.issue_device(args.serial)
                .context("issuing the card's F9 certificate")?,
        );
        eprintln!(
            "keyfloat: TEST attestation root (not Yubico) written to {}; keys generated on the card can be attested",
            path.display()
        );
    }
    let server = CardServer::connect(addr, card).context("starting the card")?;
    println!(
        "virtual YubiKey serial {} (firmware {}) inserted into vpcd {addr}; type remove / insert / quit",
        args.serial, spec.firmware
    );
    for line in std::io::stdin().lock().lines() {
        match line.context("reading stdin")?.trim() {
            "remove" | "unplug" => {
                server.remove();
                println!("removed");
            }
            "insert" | "plug" => {
                server.insert();
                println!("inserted");
            }
            "quit" | "exit" => {
                server.stop();
                return Ok(ExitCode::SUCCESS);
            }
            "" => {}
            other => eprintln!("keyfloat: unknown command {other:?} (remove, insert, quit)"),
        }
    }
    // stdin closed (e.g. started in the background): keep the card in until killed.
    loop {
        std::thread::park();
    }
}
