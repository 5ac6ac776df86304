//! `keyfloat user`: accounts for authentication mode, stored (argon2 hashes) in the data
//! dir's store, or in a shared PostgreSQL store (`--store postgres://…`).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use keyfloat_server::auth::hash_password;
use keyfloat_server::model::{Account, AuditEvent, Role};
use keyfloat_server::store::{transact_blocking, PgStore, PgStoreOptions, StoreSpec};
use keyfloat_server::{SqliteStore, Store};

/// Where the accounts live: the data dir's SQLite store (opened alongside a running
/// server, which re-reads accounts every second), or `--store postgres://…`.
#[derive(Debug, clap::Args)]
pub struct Where {
    /// Server data directory.
    #[arg(long, required_unless_present = "store")]
    data_dir: Option<PathBuf>,
    /// The servers' shared store instead: `postgres://user[:password]@host[:port]/db`.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
}

impl Where {
    fn open(&self) -> anyhow::Result<Arc<dyn Store>> {
        let data_dir = self.data_dir.clone().unwrap_or_default();
        let spec = StoreSpec::parse(self.store.as_deref(), &data_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(match spec {
            StoreSpec::Sqlite { data_dir } => Arc::new(SqliteStore::open(&data_dir)?),
            StoreSpec::Postgres { url } => Arc::new(
                PgStore::open(&url, PgStoreOptions::default())
                    .map_err(|e| anyhow::anyhow!("{}: {e}", keyfloat_server::store::open::redact(&url)))?,
            ),
        })
    }
}

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
        #[command(flatten)]
        data_dir: Where,
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
        #[command(flatten)]
        data_dir: Where,
        /// Login name.
        #[arg(long)]
        username: String,
        /// New password (read from stdin when absent).
        #[arg(long)]
        password: Option<String>,
    },
    /// Change an account's role (its tokens stop working).
    Role {
        #[command(flatten)]
        data_dir: Where,
        /// Login name.
        #[arg(long)]
        username: String,
        /// New role.
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// Delete an account (its tokens stop working).
    Delete {
        #[command(flatten)]
        data_dir: Where,
        /// Login name.
        #[arg(long)]
        username: String,
    },
    /// Revoke every token of an account (the account stays; it logs in again).
    Revoke {
        #[command(flatten)]
        data_dir: Where,
        /// Login name (or --username).
        name: Option<String>,
        /// Login name.
        #[arg(long, conflicts_with = "name")]
        username: Option<String>,
    },
    /// List accounts.
    List {
        #[command(flatten)]
        data_dir: Where,
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
        } => add(&data_dir, &username, role.into(), given)?,
        Command::Passwd {
            data_dir,
            username,
            password: given,
        } => passwd(&data_dir, &username, given)?,
        Command::Role {
            data_dir,
            username,
            role,
        } => set_role(&data_dir, &username, role.into())?,
        Command::Delete { data_dir, username } => delete(&data_dir, &username)?,
        Command::Revoke {
            data_dir,
            name,
            username,
        } => {
            let Some(username) = name.or(username) else {
                bail!("name the account: keyfloat user revoke NAME");
            };
            revoke(&data_dir, &username)?;
        }
        Command::List { data_dir } => {
            let store = data_dir.open()?;
            let accounts = transact_blocking(store.as_ref(), |tx| tx.accounts()).map_err(|e| anyhow::anyhow!("{e}"))?;
            for a in accounts {
                println!("{}\t{}", a.username, a.role.as_str());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Admin => Role::Admin,
            RoleArg::User => Role::User,
        }
    }
}

fn add(data_dir: &Where, username: &str, role: Role, given: Option<String>) -> anyhow::Result<()> {
    if username.trim().is_empty() || username.contains(':') {
        bail!("invalid user name {username:?} (must be non-empty, without ':')");
    }
    let hash = hash_password(&password(given)?).map_err(|e| anyhow::anyhow!("{e}"))?;
    let name = username.to_owned();
    change(data_dir, move |tx| {
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
    })?;
    println!("user {username} added ({})", role.as_str());
    Ok(())
}

fn passwd(data_dir: &Where, username: &str, given: Option<String>) -> anyhow::Result<()> {
    let hash = hash_password(&password(given)?).map_err(|e| anyhow::anyhow!("{e}"))?;
    update_account(data_dir, username, "password_changed", None, move |a| {
        a.password_hash = hash
    })?;
    println!("password of {username} changed");
    Ok(())
}

fn set_role(data_dir: &Where, username: &str, role: Role) -> anyhow::Result<()> {
    let detail = format!("{username} ({})", role.as_str());
    update_account(data_dir, username, "role_changed", Some(detail), move |a| a.role = role)?;
    println!("role of {username} is now {}; its tokens were revoked", role.as_str());
    Ok(())
}

/// Changes an existing account, revokes its tokens and audits `event` (detail: the name
/// unless given), in one transaction.
fn update_account(
    data_dir: &Where,
    username: &str,
    event: &'static str,
    detail: Option<String>,
    mutate: impl FnOnce(&mut Account) + Send + 'static,
) -> anyhow::Result<()> {
    let name = username.to_owned();
    change(data_dir, move |tx| {
        let Some(mut a) = tx.account(&name)? else {
            return Err(not_found(&name));
        };
        mutate(&mut a);
        tx.put_account(&a)?;
        tx.bump_token_generation(&name)?;
        let detail = detail.unwrap_or_else(|| name.clone());
        tx.audit(&AuditEvent::new(event, Some("cli"), None, detail))?;
        Ok(())
    })
}

fn delete(data_dir: &Where, username: &str) -> anyhow::Result<()> {
    let name = username.to_owned();
    change(data_dir, move |tx| {
        if !tx.delete_account(&name)? {
            return Err(not_found(&name));
        }
        // Kept after the account: a re-created account does not revive old tokens.
        tx.bump_token_generation(&name)?;
        tx.audit(&AuditEvent::new("user_deleted", Some("cli"), None, name.clone()))?;
        Ok(())
    })?;
    println!("user {username} deleted");
    Ok(())
}

fn revoke(data_dir: &Where, username: &str) -> anyhow::Result<()> {
    let name = username.to_owned();
    let gen = change(data_dir, move |tx| {
        if tx.account(&name)?.is_none() {
            return Err(not_found(&name));
        }
        let gen = tx.bump_token_generation(&name)?;
        tx.audit(&AuditEvent::new("tokens_revoked", Some("cli"), None, name.clone()))?;
        Ok(gen)
    })?;
    println!("tokens of {username} revoked (generation {gen}); a running server refuses them within a second");
    Ok(())
}

fn not_found(name: &str) -> keyfloat_server::ApiError {
    keyfloat_server::ApiError::bad_request("user_not_found", format!("no user {name:?}"))
}

/// Runs one change on the data dir's store.
fn change<T: Send + 'static>(
    data_dir: &Where,
    f: impl FnOnce(&mut dyn keyfloat_server::store::Tx) -> Result<T, keyfloat_server::ApiError> + Send + 'static,
) -> anyhow::Result<T> {
    let store = data_dir.open()?;
    transact_blocking(store.as_ref(), f).map_err(|e| anyhow::anyhow!("{}", e.message))
}
