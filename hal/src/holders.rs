//! Which processes may be holding a key, found by scanning `/proc` (Linux, no external tools).
//!
//! PC/SC clients never open the device: they talk to pcscd over a Unix socket, and pcscd
//! keeps card-level locks to itself. So the candidates are the processes that map
//! `libpcsclite` and own at least one Unix socket, plus processes that hold a HID or raw USB
//! device node directly (GnuPG's internal CCID driver, libusb and hidraw users). This cannot
//! tell an exclusive holder from a passive monitor — only a failed connect proves
//! exclusivity — so the result names *candidates*. Ourselves and pcscd are never listed.
//! Processes of other users are only visible to root; unreadable entries are skipped.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use crate::error::Holder;

/// Candidate holders on this machine (see the module docs), sorted by pid.
pub fn candidate_holders() -> Vec<Holder> {
    scan(Path::new("/proc"), std::process::id())
}

/// Scans the proc file system mounted at `proc_root`, leaving out `self_pid`.
pub fn scan(proc_root: &Path, self_pid: u32) -> Vec<Holder> {
    let unix_inodes = unix_socket_inodes(&proc_root.join("net/unix"));
    let Ok(dir) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == self_pid {
            continue;
        }
        let base = entry.path();
        let command = fs::read_to_string(base.join("comm"))
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default();
        if command.is_empty() || command == "pcscd" {
            continue;
        }
        let fds = fd_targets(&base.join("fd"));
        let holds_device = fds
            .iter()
            .any(|t| t.starts_with("/dev/hidraw") || t.starts_with("/dev/bus/usb/"));
        let pcsc_client = || {
            fds.iter().any(|t| is_unix_socket(t, &unix_inodes))
                && fs::read_to_string(base.join("maps")).is_ok_and(|m| m.contains("libpcsclite"))
        };
        if holds_device || pcsc_client() {
            out.push(Holder { pid, command });
        }
    }
    out.sort_by_key(|h| h.pid);
    out
}

fn fd_targets(dir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(dir) else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

fn is_unix_socket(target: &str, unix_inodes: &HashSet<u64>) -> bool {
    target
        .strip_prefix("socket:[")
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse::<u64>().ok())
        .is_some_and(|inode| unix_inodes.contains(&inode))
}

/// Inodes of the Unix sockets listed in `/proc/net/unix` (7th column).
fn unix_socket_inodes(path: &Path) -> HashSet<u64> {
    let Ok(text) = fs::read_to_string(path) else {
        return HashSet::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(6)?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    use super::*;

    fn fake_proc() -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "keyfloat-holders-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&root);
        let proc_ = |pid: u32, comm: &str, maps: &str, fds: &[&str]| {
            let d = root.join(pid.to_string());
            fs::create_dir_all(d.join("fd")).unwrap();
            fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
            fs::write(d.join("maps"), maps).unwrap();
            for (i, t) in fds.iter().enumerate() {
                symlink(t, d.join("fd").join(i.to_string())).unwrap();
            }
        };
        proc_(
            10,
            "scdaemon",
            "7f00 r-xp /usr/lib/libpcsclite.so.1\n",
            &["/dev/null", "socket:[501]"],
        );
        proc_(11, "monitor", "7f00 r-xp /usr/lib/libc.so.6\n", &["socket:[502]"]);
        proc_(12, "tcp-only", "/usr/lib/libpcsclite.so.1\n", &["socket:[999]"]);
        proc_(13, "pcscd", "/usr/lib/libpcsclite.so.1\n", &["socket:[503]"]);
        proc_(14, "fido-tool", "", &["/dev/hidraw3"]);
        proc_(15, "gpg-agent", "", &["/dev/bus/usb/001/004"]);
        proc_(99, "self", "/usr/lib/libpcsclite.so.1\n", &["socket:[504]"]);
        fs::create_dir_all(root.join("net")).unwrap();
        fs::write(
            root.join("net/unix"),
            "Num       RefCount Protocol Flags    Type St Inode Path\n\
             0000: 00000002 00000000 00010000 0001 01 501 /run/pcscd/pcscd.comm\n\
             0000: 00000002 00000000 00010000 0001 01 502\n\
             0000: 00000002 00000000 00010000 0001 01 503\n\
             0000: 00000002 00000000 00010000 0001 01 504\n",
        )
        .unwrap();
        root
    }

    #[test]
    fn finds_pcsc_clients_and_device_holders_but_not_self_or_pcscd() {
        let root = fake_proc();
        let found = scan(&root, 99);
        let names: Vec<_> = found.iter().map(|h| (h.pid, h.command.as_str())).collect();
        assert_eq!(names, [(10, "scdaemon"), (14, "fido-tool"), (15, "gpg-agent")]);
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn real_proc_scan_never_lists_ourselves() {
        let found = candidate_holders();
        assert!(found.iter().all(|h| h.pid != std::process::id()));
        assert!(scan(Path::new("/nonexistent"), 1).is_empty());
    }
}
