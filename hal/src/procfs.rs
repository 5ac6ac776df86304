//! The one walk over `/proc` that [`crate::holders`] and [`crate::diagnose`] share: which
//! processes run, their command names and command lines. Unreadable entries are skipped
//! (other users' processes are only visible to root).

use std::fs;
use std::path::{Path, PathBuf};

/// The variable libpcsclite reads to find pcscd's socket.
pub(crate) const PCSC_SOCKET_ENV: &str = "PCSCLITE_CSOCK_NAME";
/// pcscd's default client socket.
pub(crate) const DEFAULT_PCSC_SOCKET: &str = "/run/pcscd/pcscd.comm";

/// One process directory under the proc root.
#[derive(Debug, Clone)]
pub(crate) struct Process {
    /// Process id.
    pub(crate) pid: u32,
    /// `/proc/PID`.
    pub(crate) dir: PathBuf,
    /// `/proc/PID/comm`, empty when unreadable.
    pub(crate) command: String,
}

/// Every process under `proc_root`, in directory order.
pub(crate) fn processes(proc_root: &Path) -> Vec<Process> {
    let Ok(dir) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let dir = entry.path();
            let command = command(&dir).unwrap_or_default();
            Some(Process { pid, dir, command })
        })
        .collect()
}

/// `/proc/PID/comm` of the process directory `dir`.
pub(crate) fn command(dir: &Path) -> Option<String> {
    fs::read_to_string(dir.join("comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

/// `/proc/PID/cmdline` with its arguments joined by spaces; empty when unreadable.
pub(crate) fn cmdline(dir: &Path) -> String {
    fs::read(dir.join("cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}
