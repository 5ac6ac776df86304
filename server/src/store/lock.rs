//! Single-node safety for the SQLite store: a server holds an exclusive `flock` on
//! `<data_dir>/keyfloat.lock` (which records its pid) for as long as it runs, so a second
//! server on the same data dir refuses to start and names the holder instead of running
//! with its own in-memory view of the same database. The kernel drops the lock when the
//! process dies (even by `kill -9`): a stale file never blocks a restart.
//!
//! The CLI's offline commands (`keyfloat user`, `keyfloat audit`) do not take the lock:
//! they are short SQLite transactions that the running server tolerates (and re-reads,
//! see `auth::watch_accounts`), as before.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// File name inside the data dir.
pub const LOCK_FILE: &str = "keyfloat.lock";

/// Why the data dir could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "the data dir {dir} is in use by another keyfloat server (pid {pid}); stop it first or use another --data-dir"
    )]
    Held {
        /// The data dir.
        dir: PathBuf,
        /// The pid recorded by the holder (`unknown` if unreadable).
        pid: String,
    },
    /// The lock file could not be opened or locked.
    #[error("locking {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// An exclusive hold on a data dir, released on drop (or when the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock without waiting and records this process's pid in it.
    pub fn acquire(data_dir: &Path) -> Result<Self, LockError> {
        let path = data_dir.join(LOCK_FILE);
        let io = |source: std::io::Error| LockError::Io {
            path: path.clone(),
            source,
        };
        crate::files::make_private_dir(data_dir).map_err(io)?;
        // No truncation at open: the holder's pid must survive a refused attempt.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        if let Err(e) = flock(&file, FlockOperation::NonBlockingLockExclusive) {
            if e != rustix::io::Errno::WOULDBLOCK {
                return Err(io(e.into()));
            }
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(LockError::Held {
                dir: data_dir.to_path_buf(),
                pid: if pid.is_empty() { "unknown".into() } else { pid.into() },
            });
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// `flock` locks belong to the open file description: a second open in the same
    /// process conflicts like another process would (the two-process test is in
    /// tests/server_cli.rs).
    #[test]
    fn a_second_holder_is_refused_with_the_pid_and_a_release_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let e = DataDirLock::acquire(dir.path()).unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&format!("pid {}", std::process::id())), "{text}");
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
