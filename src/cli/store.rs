//! `keyfloat store`: moving an installation between stores.

use std::path::PathBuf;
use std::process::ExitCode;

use keyfloat_server::store::open::redact;

/// Subcommands of `keyfloat store`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Copy a single-node installation (its data dir's SQLite file) into an empty
    /// PostgreSQL database, then verify the copy. Stop the server first.
    Migrate {
        /// Data directory of the installation.
        #[arg(long, value_name = "DATA_DIR")]
        from: PathBuf,
        /// Target: `postgres://user[:password]@host[:port]/db` (must hold no data yet).
        #[arg(long, value_name = "URL")]
        to: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Migrate { from, to, json } => {
            keyfloat_server::store::StoreSpec::parse(Some(&to), &from).map_err(|e| anyhow::anyhow!("{e}"))?;
            let report = keyfloat_server::store::copy::sqlite_to_postgres(&from, &to)
                .map_err(|e| anyhow::anyhow!("migrating {} to {}: {e}", from.display(), redact(&to)))?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "copied and verified: {} licenses, {} registrations, {} feature registrations, {} accounts, \
                     {} token generations, {} audit records (chain intact) into {}",
                    report.licenses,
                    report.registrations,
                    report.feature_registrations,
                    report.accounts,
                    report.token_generations,
                    report.audit_records,
                    redact(&to)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
