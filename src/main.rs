//! `keyfloat`: the floating-license server with hardware-key binding, and its tools.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// Floating-license server whose licenses can be bound to a USB hardware key.
#[derive(Debug, Parser)]
#[command(name = "keyfloat", version, about)]
struct Cli {
    /// Log as JSON lines instead of readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size of the largest arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the floating-license server.
    Serve(cli::serve::Args),
    /// A complete local demo with a simulated key.
    Demo(cli::demo::Args),
    /// List the hardware keys connected now.
    Keys(cli::keys::Args),
    /// Diagnose pcscd, readers, keys and the processes holding them.
    Doctor(cli::doctor::Args),
    /// Virtual keys and scripted scenarios.
    #[command(subcommand)]
    Simulate(cli::simulate::Command),
    /// Vendor side: signing keys and key certificates.
    #[command(subcommand)]
    Vendor(cli::vendor::Command),
    /// Issue and verify signed license files.
    #[command(subcommand)]
    License(cli::license::Command),
    /// Accounts for authentication mode.
    #[command(subcommand)]
    User(cli::user::Command),
    /// The tamper-evident audit log: verify the hash chain, export JSON lines.
    #[command(subcommand)]
    Audit(cli::audit::Command),
    /// The store: copy a single-node installation into PostgreSQL (`store migrate`).
    #[command(subcommand)]
    Store(cli::store::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A scenario run reports its events in its trace; its servers' and monitors' per-event
    // log lines (thousands in a flap) would only bury the PASS / FAIL lines.
    let default_level = match &cli.command {
        Command::Simulate(cli::simulate::Command::Run(_)) => "error",
        _ => "info",
    };
    cli::init_logging(cli.log_json, default_level);
    let result = match cli.command {
        Command::Serve(a) => cli::serve::run(a),
        Command::Demo(a) => cli::demo::run(a),
        Command::Keys(a) => cli::keys::run(a),
        Command::Doctor(a) => cli::doctor::run(a),
        Command::Simulate(c) => cli::simulate::run(c),
        Command::Vendor(c) => cli::vendor::run(c),
        Command::License(c) => cli::license::run(c),
        Command::User(c) => cli::user::run(c),
        Command::Audit(c) => cli::audit::run(c),
        Command::Store(c) => cli::store::run(c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keyfloat: {e:#}");
            ExitCode::from(2)
        }
    }
}
