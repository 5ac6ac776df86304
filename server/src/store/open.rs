//! Which store a server runs on: `--store` / YAML `store` (a `postgres://…` URL), or by
//! default the SQLite file in the data dir.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::lock::DataDirLock;
use super::{Fence, PgStore, PgStoreOptions, SqliteStore, Store, StoreError, StoreResult};

/// The `store` setting as written (YAML `store`, `--store`): printed redacted.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct StoreUrl(pub String);

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact(&self.0))
    }
}

/// Where the durable state lives.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// `<data_dir>/keyfloat.db`, one server at a time.
    Sqlite {
        /// The data dir.
        data_dir: PathBuf,
    },
    /// A PostgreSQL database shared by several servers.
    Postgres {
        /// `postgres://user[:password]@host[:port]/db[?…]`.
        url: String,
    },
}

impl StoreSpec {
    /// `store` as given (`None`, empty or `sqlite` = the data dir's SQLite file).
    pub fn parse(store: Option<&str>, data_dir: &Path) -> StoreResult<Self> {
        match store.map(str::trim) {
            None | Some("" | "sqlite") => Ok(Self::Sqlite {
                data_dir: data_dir.to_path_buf(),
            }),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                url.parse::<tokio_postgres::Config>()
                    .map_err(|e| StoreError::Failed(format!("bad store URL {}: {e}", redact(url))))?;
                Ok(Self::Postgres { url: url.to_owned() })
            }
            Some(other) => Err(StoreError::Failed(format!(
                "unknown store {}: expected postgres://… or sqlite (the default)",
                redact(other)
            ))),
        }
    }
}

/// The URL with any password replaced by `***` (for logs and errors).
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let mut out = url[..scheme_end].to_owned();
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.split_once(':') {
                Some((user, _)) => out.push_str(&format!("{user}:***")),
                None => out.push_str(userinfo),
            }
            out.push_str(&rest[at..]);
        }
        None => out.push_str(rest),
    }
    // `?password=…` in the query string too.
    match out.split_once('?') {
        Some((base, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{base}?{}", query.join("&"))
        }
        None => out,
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite { data_dir } => write!(f, "sqlite:{}", data_dir.join(super::sqlite::DB_FILE).display()),
            Self::Postgres { url } => f.write_str(&redact(url)),
        }
    }
}

// Debug goes to logs too: never the password.
impl fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreSpec({self})")
    }
}

/// Opens the store a server runs on. SQLite: takes the data-dir lock first (a second
/// server on the same dir is refused, naming the holder's pid). A `fence` (leadership)
/// needs PostgreSQL.
pub fn open(spec: &StoreSpec, fence: Option<Fence>) -> StoreResult<Arc<dyn Store>> {
    match spec {
        StoreSpec::Sqlite { data_dir } => {
            if fence.is_some() {
                return Err(StoreError::Failed(
                    "leadership (--node-id) needs a shared PostgreSQL store (--store postgres://…)".into(),
                ));
            }
            let lock = DataDirLock::acquire(data_dir).map_err(|e| StoreError::Failed(e.to_string()))?;
            Ok(Arc::new(SqliteStore::open(data_dir)?.holding(lock)))
        }
        StoreSpec::Postgres { url } => Ok(Arc::new(
            PgStore::open(
                url,
                PgStoreOptions {
                    fence,
                    ..Default::default()
                },
            )
            .map_err(|e| StoreError::Failed(format!("{}: {e}", redact(url))))?,
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_default_and_urls_and_never_shows_a_password() {
        let dir = Path::new("/d");
        assert_eq!(
            StoreSpec::parse(None, dir).unwrap(),
            StoreSpec::Sqlite { data_dir: dir.into() }
        );
        assert_eq!(
            StoreSpec::parse(Some("sqlite"), dir).unwrap().to_string(),
            "sqlite:/d/keyfloat.db"
        );
        let pg = StoreSpec::parse(Some("postgres://kf:s3cret@db:5432/keyfloat"), dir).unwrap();
        assert_eq!(pg.to_string(), "postgres://kf:***@db:5432/keyfloat");
        assert!(!format!("{pg:?}").contains("s3cret"));
        assert_eq!(
            redact("postgresql://kf@db/k?sslmode=disable&password=s3cret"),
            "postgresql://kf@db/k?sslmode=disable&password=***"
        );
        assert_eq!(redact("postgres://db/k"), "postgres://db/k");
        let url = StoreUrl("postgres://kf:s3cret@db/k".into());
        assert!(!format!("{url:?}").contains("s3cret"));
        let e = StoreSpec::parse(Some("mysql://u:s3cret@h/db"), dir).unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn a_second_sqlite_server_on_one_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spec = StoreSpec::parse(None, dir.path()).unwrap();
        let first = open(&spec, None).unwrap();
        let e = open(&spec, None).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(first);
        open(&spec, None).unwrap();
        assert!(open(&spec, Some(Fence::new("n"))).is_err(), "HA needs PostgreSQL");
    }
}
