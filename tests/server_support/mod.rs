//! Runs the real `keyfloat serve` binary for end-to-end tests: free port on 127.0.0.1, temp
//! data dir, simulated key provisioned by a throwaway vendor key; a tiny HTTP/1.1 client
//! over `TcpStream` (loopback only).
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keyfloat_hal::trust::VendorSigningKey;

pub const BIN: &str = env!("CARGO_BIN_EXE_keyfloat");

pub struct Server {
    pub child: Child,
    pub addr: String,
    pub data: PathBuf,
}

/// A data dir with a vendor signing key for the simulated key.
pub fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    VendorSigningKey::generate()
        .write_pem_file(dir.path().join("vendor.pem"))
        .unwrap();
    dir
}

pub fn add_user(data: &Path, name: &str, password: &str, role: &str) {
    let out = Command::new(BIN)
        .args(["user", "add", "--data-dir"])
        .arg(data.join("db"))
        .args(["--username", name, "--role", role, "--password", password])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Starts `keyfloat serve --key-backend sim` on a free port; waits for its
/// `listening on http://ADDR` line (≤ 30 s).
pub fn start(data: &Path, extra: &[&str]) -> Server {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.join("server.log"))
        .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--key-backend", "sim", "--data-dir"])
        .arg(data.join("db"))
        .arg("--sim-vendor-key")
        .arg(data.join("vendor.pem"))
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on http://") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            panic!(
                "server did not start; log:\n{}",
                std::fs::read_to_string(data.join("server.log")).unwrap_or_default()
            );
        }
    };
    Server {
        child,
        addr,
        data: data.to_path_buf(),
    }
}

impl Server {
    pub fn call(&self, method: &str, path: &str, body: Option<&str>, auth: Option<&str>) -> (u16, String) {
        http(&self.addr, method, path, body, auth).unwrap()
    }

    pub fn json(&self, method: &str, path: &str, body: Option<&str>, auth: Option<&str>) -> serde_json::Value {
        let (s, b) = self.call(method, path, body, auth);
        assert!(s < 300, "{method} {path}: {s} {b}");
        serde_json::from_str(&b).unwrap()
    }

    /// Waits (≤ 10 s) until health shows the key state `state`.
    pub fn wait_key_state(&self, want: &str, auth: Option<&str>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.json("GET", "/api/v4/health", None, auth);
            if v["key"]["state"] == want {
                return;
            }
            assert!(Instant::now() < deadline, "key never reached {want}: {v}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait (≤ 15 s); returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        wait_exit(&mut self.child, Duration::from_secs(15))
    }
}

pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("server did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request (`Connection: close`). `auth` is a full header value.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    auth: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no HTTP header"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad status line"))?;
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(rest) } else { rest.to_owned() };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// The Python interpreter with the official SDK: `KEYFLOAT_PYTHON`, else
/// `target/venv/bin/python`. Missing = test failure (tests using it are
/// `#[ignore = "needs the licensespring Python SDK …"]`; `./scripts/dev.sh test` runs them).
pub fn python() -> Option<PathBuf> {
    let p = std::env::var_os("KEYFLOAT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python"));
    let ok = Command::new(&p)
        .args(["-c", "import licensespring"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(p);
    }
    panic!(
        "no Python with the licensespring SDK at {} (set KEYFLOAT_PYTHON, or run ./scripts/dev.sh install)",
        p.display()
    );
}
