//! Which processes may be holding a key, found by scanning `/proc` (Linux, no external tools).
//!
//! PC/SC clients never open the device: they talk to pcscd over a Unix socket, and pcscd
//! keeps card-level locks to itself. So the candidates are the processes that map
//! `libpcsclite` and own at least one Unix socket, plus processes that hold a HID or raw USB
//! device node directly (GnuPG's internal CCID driver, libusb and hidraw users). This cannot
//! tell an exclusive holder from a passive monitor — only a failed connect proves
//! exclusivity — so the result names *candidates*. Ourselves, pcscd and keyfloat's own
//! processes are never listed, nor PC/SC clients of another pcscd (their
//! `PCSCLITE_CSOCK_NAME` names another socket than ours). The newest process comes first:
//! a card turns busy when its holder takes it, and passive monitors (desktop daemons) are
//! usually older. Processes of other users are only visible to root; unreadable entries
//! are skipped.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use crate::error::Holder;
use crate::procfs::{self, DEFAULT_PCSC_SOCKET as DEFAULT_SOCKET, PCSC_SOCKET_ENV as SOCKET_ENV};

/// Candidate holders on this machine (see the module docs), newest process first.
pub fn candidate_holders() -> Vec<Holder> {
    scan(Path::new("/proc"), std::process::id())
}

/// keyfloat's own server or doctor: never the holder to blame (its monitor only ever opens
/// shared connections). Other keyfloat commands (e.g. `simulate hold`) can hold a card.
fn is_keyfloat_service(base: &Path, command: &str) -> bool {
    command.starts_with("keyfloat")
        && fs::read(base.join("cmdline")).is_ok_and(|c| {
            c.split(|b| *b == 0)
                .skip(1)
                .find(|a| !a.starts_with(b"-"))
                .is_some_and(|sub| sub == b"serve" || sub == b"doctor")
        })
}

/// The pcscd socket `environ` (a `/proc/PID/environ` blob) points libpcsclite at.
fn socket_in_environ(environ: &[u8]) -> Option<String> {
    environ.split(|b| *b == 0).find_map(|kv| {
        let v = kv.strip_prefix(SOCKET_ENV.as_bytes())?.strip_prefix(b"=")?;
        Some(String::from_utf8_lossy(v).into_owned())
    })
}

/// Start time of a process in clock ticks since boot (field 22 of `/proc/PID/stat`).
fn start_ticks(stat: &str) -> u64 {
    // The command may contain spaces and parentheses: fields start after the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19)?.parse().ok())
        .unwrap_or(0)
}

/// Scans the proc file system mounted at `proc_root`, leaving out `self_pid`.
pub fn scan(proc_root: &Path, self_pid: u32) -> Vec<Holder> {
    let ours = std::env::var(SOCKET_ENV).unwrap_or_else(|_| DEFAULT_SOCKET.to_string());
    scan_for(proc_root, self_pid, &ours)
}

/// [`scan`] for PC/SC clients of the pcscd listening on `our_socket`.
pub fn scan_for(proc_root: &Path, self_pid: u32, our_socket: &str) -> Vec<Holder> {
    let unix_inodes = unix_socket_inodes(&proc_root.join("net/unix"));
    let mut out = Vec::new();
    for procfs::Process {
        pid,
        dir: base,
        command,
    } in procfs::processes(proc_root)
    {
        if pid == self_pid {
            continue;
        }
        if command.is_empty() || command == "pcscd" || is_keyfloat_service(&base, &command) {
            continue;
        }
        let fds = fd_targets(&base.join("fd"));
        let holds_device = fds
            .iter()
            .any(|t| t.starts_with("/dev/hidraw") || t.starts_with("/dev/bus/usb/"));
        let same_pcscd = || {
            let theirs = fs::read(base.join("environ")).ok().and_then(|e| socket_in_environ(&e));
            theirs.as_deref().unwrap_or(DEFAULT_SOCKET) == our_socket
        };
        let pcsc_client = || {
            fds.iter().any(|t| is_unix_socket(t, &unix_inodes))
                && fs::read_to_string(base.join("maps")).is_ok_and(|m| m.contains("libpcsclite"))
                && same_pcscd()
        };
        if holds_device || pcsc_client() {
            let started = fs::read_to_string(base.join("stat")).map_or(0, |s| start_ticks(&s));
            out.push((started, Holder { pid, command }));
        }
    }
    out.sort_by_key(|(started, h)| (std::cmp::Reverse(*started), h.pid));
    out.into_iter().map(|(_, h)| h).collect()
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

    use super::*;

    fn fake_proc() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
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
        tmp
    }

    #[test]
    fn finds_pcsc_clients_and_device_holders_but_not_self_or_pcscd() {
        let root = fake_proc();
        let found = scan(root.path(), 99);
        let names: Vec<_> = found.iter().map(|h| (h.pid, h.command.as_str())).collect();
        assert_eq!(names, [(10, "scdaemon"), (14, "fido-tool"), (15, "gpg-agent")]);
    }

    #[test]
    fn skips_keyfloat_and_clients_of_another_pcscd_and_ranks_the_newest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let proc_ = |pid: u32, comm: &str, started: u64, environ: &str| {
            let d = root.join(pid.to_string());
            fs::create_dir_all(d.join("fd")).unwrap();
            fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
            fs::write(d.join("maps"), "7f00 r-xp /usr/lib/libpcsclite.so.1\n").unwrap();
            fs::write(d.join("environ"), environ.replace(';', "\0")).unwrap();
            let stat = format!("{pid} ({comm} x) S 1 1 1 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 {started} 0 0");
            fs::write(d.join("stat"), stat).unwrap();
            symlink("socket:[601]", d.join("fd").join("0")).unwrap();
        };
        proc_(20, "old-monitor", 100, "HOME=/root;");
        proc_(21, "keyfloat", 300, "");
        fs::write(
            root.join("21/cmdline"),
            "/usr/bin/keyfloat\0--log-json\0serve\0--port\x000",
        )
        .unwrap();
        proc_(22, "kf-contender", 200, "PCSCLITE_CSOCK_NAME=/tmp/private.comm;");
        proc_(23, "other-pcscd-cl", 400, "PCSCLITE_CSOCK_NAME=/tmp/elsewhere.comm");
        proc_(24, "holder", 250, "X=1;PCSCLITE_CSOCK_NAME=/tmp/private.comm");
        fs::create_dir_all(root.join("net")).unwrap();
        fs::write(
            root.join("net/unix"),
            "Num RefCount Protocol Flags Type St Inode Path\n0000: 2 0 10000 1 1 601\n",
        )
        .unwrap();
        let names = |sock: &str| -> Vec<String> { scan_for(root, 1, sock).into_iter().map(|h| h.command).collect() };
        assert_eq!(names("/tmp/private.comm"), ["holder", "kf-contender"]);
        assert_eq!(names(DEFAULT_SOCKET), ["old-monitor"]);
    }

    #[test]
    fn real_proc_scan_never_lists_ourselves() {
        let found = candidate_holders();
        assert!(found.iter().all(|h| h.pid != std::process::id()));
        assert!(scan(Path::new("/nonexistent"), 1).is_empty());
    }
}
