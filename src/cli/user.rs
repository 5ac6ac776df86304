//! `keyfloat user`: accounts for authentication mode, stored (argon2 hashes) in the data dir.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use keyfloat_server::auth::hash_password;
use keyfloat_server::model::{Account, AuditEvent, Role};
use keyfloat_server::store::transact_blocking;
use keyfloat_server::SqliteStore;

/// Account role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// Everything, including adding and removing licenses.
    Admin,
    /// Licensing calls, reports, health.
    User,
}

/// Subcommands of `keyfloat user`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create an account (replaces nothing: fails if it exists).
    Add {
        /// Server data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Login name.
        #[arg(long)]
        username: String,
        /// Role.
        #[arg(long, value_enum, default_value = "user")]
        role: RoleArg,
        /// Password (read from stdin when absent).
        #[arg(long)]
        password: Option<String>,
    },
    /// Change an account's password.
    Passwd {
        /// Server data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Login name.
        #[arg(long)]
        username: String,
        /// New password (read from stdin when absent).
        #[arg(long)]
        password: Option<String>,
    },
    /// List accounts.
    List {
        /// Server data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

fn password(given: Option<String>) -> anyhow::Result<String> {
    let p = match given {
        Some(p) => p,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from stdin")?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if p.is_empty() {
        bail!("the password must not be empty");
    }
    Ok(p)
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Add {
            data_dir,
            username,
            role,
            password: given,
        } => {
            if username.trim().is_empty() || username.contains(':') {
                bail!("invalid user name {username:?} (must be non-empty, without ':')");
            }
            let hash = hash_password(&password(given)?).map_err(|e| anyhow::anyhow!("{e}"))?;
            let role = match role {
                RoleArg::Admin => Role::Admin,
                RoleArg::User => Role::User,
            };
            let store = SqliteStore::open(&data_dir)?;
            let name = username.clone();
            transact_blocking(&store, move |tx| {
                if tx.account(&name)?.is_some() {
                    return Err(keyfloat_server::ApiError::bad_request(
                        "user_exists",
                        format!("user {name:?} already exists (use `keyfloat user passwd`)"),
                    ));
                }
                tx.put_account(&Account {
                    username: name.clone(),
                    password_hash: hash,
                    role,
                })?;
                tx.audit(&AuditEvent::new(
                    "user_added",
                    Some("cli"),
                    None,
                    format!("{name} ({})", role.as_str()),
                ))?;
                Ok(())
            })
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            println!("user {username} added ({})", role.as_str());
        }
        Command::Passwd {
            data_dir,
            username,
            password: given,
        } => {
            let hash = hash_password(&password(given)?).map_err(|e| anyhow::anyhow!("{e}"))?;
            let store = SqliteStore::open(&data_dir)?;
            let name = username.clone();
            transact_blocking(&store, move |tx| {
                let Some(mut a) = tx.account(&name)? else {
                    return Err(keyfloat_server::ApiError::bad_request(
                        "user_not_found",
                        format!("no user {name:?}"),
                    ));
                };
                a.password_hash = hash;
                tx.put_account(&a)?;
                tx.audit(&AuditEvent::new("password_changed", Some("cli"), None, name.clone()))?;
                Ok(())
            })
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            println!("password of {username} changed");
        }
        Command::List { data_dir } => {
            let store = SqliteStore::open(&data_dir)?;
            let accounts =
                transact_blocking(&store, |tx| Ok(tx.accounts()?)).map_err(|e| anyhow::anyhow!("{}", e.message))?;
            for a in accounts {
                println!("{}\t{}", a.username, a.role.as_str());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
