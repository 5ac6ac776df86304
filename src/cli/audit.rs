//! `keyfloat audit`: checks and exports the tamper-evident audit log.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use keyfloat_server::store::audit_chain;
use keyfloat_server::SqliteStore;

/// Subcommands of `keyfloat audit`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check the hash chain; exit status 1 and the first bad record when it is broken.
    Verify {
        /// Server data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write every audit record, with its hashes, as JSON lines.
    Export {
        /// Server data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Output file [default: stdout].
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

fn open(data_dir: &std::path::Path) -> anyhow::Result<audit_chain::Connection> {
    if !data_dir.join(keyfloat_server::store::sqlite::DB_FILE).exists() {
        anyhow::bail!("{} holds no keyfloat database", data_dir.display());
    }
    // Brings an older database's schema up to date (the chain anchor) first.
    SqliteStore::open(data_dir)?.close();
    Ok(audit_chain::open_read_only(data_dir)?)
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Verify { data_dir, json } => {
            let report = audit_chain::verify(&open(&data_dir)?)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else if let Some(bad) = &report.first_bad {
                println!("audit log BROKEN at record {}: {}", bad.id, bad.reason);
            } else {
                println!(
                    "audit log intact: {} records chained from id {} ({} older records outside the chain)",
                    report.records, report.start_id, report.before_chain
                );
            }
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Export { data_dir, output } => {
            let conn = open(&data_dir)?;
            let n = match output {
                Some(path) => {
                    let mut f = std::io::BufWriter::new(
                        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
                    );
                    let n = audit_chain::export(&conn, &mut f)?;
                    std::io::Write::flush(&mut f)?;
                    n
                }
                None => audit_chain::export(&conn, &mut std::io::stdout().lock())?,
            };
            eprintln!("{n} audit records exported");
            Ok(ExitCode::SUCCESS)
        }
    }
}
