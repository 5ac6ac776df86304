//! Runs a `keyfloat` server process for end-to-end tests: free port on 127.0.0.1, temp data
//! dir, a simulated key provisioned by a throwaway vendor key, its log in the data dir.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keyfloat_hal::trust::VendorSigningKey;

use crate::http::http;

/// How long a server may take to print its `listening on` line.
pub const START_LIMIT: Duration = Duration::from_secs(30);

/// A data dir holding `vendor.pem`, the vendor signing key for the simulated key.
pub fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    VendorSigningKey::generate()
        .write_pem_file(dir.path().join("vendor.pem"))
        .expect("vendor.pem");
    dir
}

/// `keyfloat user add` into `data/db`.
pub fn add_user(bin: &Path, data: &Path, name: &str, password: &str, role: &str) {
    let out = Command::new(bin)
        .args(["user", "add", "--data-dir"])
        .arg(data.join("db"))
        .args(["--username", name, "--role", role, "--password", password])
        .output()
        .expect("keyfloat user add");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Spawns `cmd` with its stdout piped and reads its lines until `done` holds for the lines
/// so far (≤ `limit`); returns the child and those lines. Later lines are read and dropped
/// (the child never blocks on a full pipe). On timeout the child is killed and the test
/// fails, showing `log` (the file its stderr goes to), if any.
pub fn spawn_until(
    cmd: &mut Command,
    log: Option<&Path>,
    limit: Duration,
    mut done: impl FnMut(&[String]) -> bool,
) -> (Child, Vec<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + limit;
    let mut lines = Vec::new();
    while !done(&lines) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => lines.push(line),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{cmd:?} did not start; stdout so far: {lines:#?}\nlog:\n{}",
                    log.and_then(|l| std::fs::read_to_string(l).ok()).unwrap_or_default()
                );
            }
        }
    }
    (child, lines)
}

/// The address of the first `listening on {scheme}://ADDR` line, if any.
pub fn listening(lines: &[String], scheme: &str) -> Option<String> {
    let prefix = format!("listening on {scheme}://");
    lines.iter().find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
}

/// A running `keyfloat serve`; killed when dropped.
#[derive(Debug)]
pub struct Server {
    /// The process.
    pub child: Child,
    /// `127.0.0.1:PORT` it listens on.
    pub addr: String,
    /// Its data dir (the database is `data/db`, the log `data/server.log`).
    pub data: PathBuf,
}

/// `bin serve --key-backend sim` on a free port over `data` (see [`data_dir`]), then `extra`.
pub fn serve_command(bin: &Path, data: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--key-backend", "sim", "--data-dir"])
        .arg(data.join("db"))
        .arg("--sim-vendor-key")
        .arg(data.join("vendor.pem"))
        .args(extra);
    cmd
}

/// Starts `bin serve --key-backend sim` on a free port over `data` (see [`data_dir`]);
/// waits for its `listening on http://ADDR` line.
pub fn start(bin: &Path, data: &Path, extra: &[&str]) -> Server {
    let log_path = data.join("server.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("server.log");
    let mut cmd = serve_command(bin, data, extra);
    cmd.env("RUST_LOG", "info").stderr(Stdio::from(log));
    let (child, lines) = spawn_until(&mut cmd, Some(&log_path), START_LIMIT, |l| {
        listening(l, "http").is_some()
    });
    Server {
        child,
        addr: listening(&lines, "http").expect("listening line"),
        data: data.to_path_buf(),
    }
}

impl Server {
    /// One request; `auth` is a full `Authorization` value. Panics if the server does not answer.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>, auth: Option<&str>) -> (u16, String) {
        http(&self.addr, method, path, body, auth).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// One request that must succeed (status < 300), its JSON body.
    pub fn json(&self, method: &str, path: &str, body: Option<&str>, auth: Option<&str>) -> serde_json::Value {
        let (s, b) = self.call(method, path, body, auth);
        assert!(s < 300, "{method} {path}: {s} {b}");
        serde_json::from_str(&b).unwrap_or_else(|e| panic!("{method} {path}: {e}: {b}"))
    }

    /// Waits (≤ 10 s) until health shows the key state `want`.
    pub fn wait_key_state(&self, want: &str, auth: Option<&str>) {
        crate::http::wait_key_state(&self.addr, want, auth);
    }

    /// SIGTERM and wait (≤ 15 s); returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        wait_exit(&mut self.child, Duration::from_secs(15))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (≤ `limit`) for `child` to exit; returns its exit code. Kills it and fails the
/// test when it does not.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
