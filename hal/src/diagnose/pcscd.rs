//! pcscd: where its socket is, whether it answers, its pid file and processes.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use super::{Pcscd, Proc, Report};
use crate::procfs;

/// The variable libpcsclite reads to find pcscd's socket.
pub const SOCKET_ENV: &str = procfs::PCSC_SOCKET_ENV;

/// Finds pcscd and records what is wrong with it.
pub(super) fn check(r: &mut Report, proc_root: &Path) {
    let from_env = std::env::var_os(SOCKET_ENV).filter(|v| !v.is_empty());
    r.pcscd = find(proc_root, from_env);
    judge(r);
}

/// The facts: socket (`from_env`, else the default), pid file, processes, connect.
fn find(proc_root: &Path, from_env: Option<std::ffi::OsString>) -> Pcscd {
    let socket = from_env
        .clone()
        .map_or_else(|| PathBuf::from(procfs::DEFAULT_PCSC_SOCKET), PathBuf::from);
    let pid_file = socket
        .parent()
        .unwrap_or_else(|| Path::new("/run/pcscd"))
        .join("pcscd.pid");
    let mut processes: Vec<Proc> = procfs::processes(proc_root)
        .into_iter()
        .filter(|p| p.command == "pcscd")
        .map(|p| Proc::read(proc_root, p.pid, p.command))
        .collect();
    processes.sort_by_key(|x| x.pid);
    // pcscd writes "PID\n\0".
    let pid = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim_matches(|c: char| c.is_whitespace() || c == '\0').parse().ok());
    let process = pid
        .filter(|pid: &u32| procfs::command(&proc_root.join(pid.to_string())).as_deref() == Some("pcscd"))
        .map(|pid| Proc::read(proc_root, pid, "pcscd".into()));
    let connect = std::os::unix::net::UnixStream::connect(&socket);
    Pcscd {
        socket: socket.display().to_string(),
        socket_from_env: from_env.is_some(),
        socket_exists: fs::metadata(&socket).is_ok_and(|m| m.file_type().is_socket()),
        reachable: connect.is_ok(),
        error: connect.err().map(|e| e.to_string()),
        pid_file: pid_file.display().to_string(),
        pid,
        process,
        processes,
    }
}

/// The findings: not running, not allowed, a stale socket or pid file.
fn judge(r: &mut Report) {
    let p = &r.pcscd;
    let socket = p.socket.clone();
    let error = p.error.clone().unwrap_or_default();
    if p.reachable {
        if let (Some(pid), None) = (p.pid, &p.process) {
            let message = format!("{} names pid {pid} which is not pcscd", p.pid_file);
            r.note(
                "pcscd_stale_pid_file",
                message,
                "harmless while the socket answers; a restart of pcscd rewrites it",
            );
        }
        return;
    }
    if !Path::new(&socket).exists() {
        let env_hint = if p.socket_from_env {
            format!(" ({SOCKET_ENV} is set: unset it to use the system pcscd)")
        } else {
            String::new()
        };
        let running = match p.processes.len() {
            0 => String::new(),
            n => format!("; {n} pcscd process(es) run elsewhere (another mount namespace or socket path?)"),
        };
        r.problem(
            "pcscd_not_running",
            format!("pcscd is not reachable: no socket at {socket}{env_hint}{running}"),
            "start it: `systemctl start pcscd.socket` (or `pcscd --auto-exit` / `pcscd -f &` in a container)",
        );
    } else if error.contains("ermission") {
        r.problem(
            "pcscd_permission_denied",
            format!("cannot connect to {socket}: {error}"),
            "run as a user allowed by pcscd's polkit rules (org.debian.pcsc-lite.access_pcsc) or as root",
        );
    } else {
        r.problem(
            "pcscd_socket_stale",
            format!("{socket} exists but nobody answers ({error}); pcscd probably crashed"),
            format!("remove the stale socket and restart pcscd: `rm {socket} && systemctl restart pcscd`"),
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_pcscd_without_our_socket_is_not_running_here() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let proc_ = root.join("proc/42");
        fs::create_dir_all(&proc_).unwrap();
        fs::write(proc_.join("comm"), "pcscd\n").unwrap();
        fs::write(proc_.join("cmdline"), "pcscd\0-f\0").unwrap();
        let run = root.join("run");
        fs::create_dir_all(&run).unwrap();
        fs::write(run.join("pcscd.pid"), "42\n\0").unwrap();
        let socket = run.join("pcscd.comm");

        let mut r = Report {
            pcscd: find(&root.join("proc"), Some(socket.clone().into_os_string())),
            ..Report::default()
        };
        judge(&mut r);

        let p = &r.pcscd;
        assert!(p.socket_from_env && !p.socket_exists && !p.reachable);
        assert_eq!(p.pid, Some(42));
        assert_eq!(p.process.as_ref().map(|x| x.cmdline.as_str()), Some("pcscd -f"));
        assert_eq!(p.processes.len(), 1);
        let [finding] = r.problems.as_slice() else {
            panic!("{:?}", r.problems)
        };
        assert_eq!(finding.code, "pcscd_not_running");
        assert!(finding.message.contains(&socket.display().to_string()), "{finding:?}");
        assert!(
            finding.message.contains("1 pcscd process(es) run elsewhere"),
            "{finding:?}"
        );
        assert!(finding.message.contains("PCSCLITE_CSOCK_NAME is set"), "{finding:?}");
    }
}
