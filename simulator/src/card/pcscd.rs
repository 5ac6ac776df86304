//! A private pcscd for tests and benchmarks (hardware.md §1.6).
//!
//! pcscd's server socket path is compiled in (`/run/pcscd/pcscd.comm`) and a second pcscd
//! refuses to start beside a live one. So each instance runs in its own mount namespace
//! (`unshare -m`, needs root) with a private directory bind-mounted on `/run/pcscd`, and its
//! own reader configuration (`-c DIR`) whose vpcd reader uses its own pair of TCP ports.
//! Clients reach it through the bind-mounted directory: set `PCSCLITE_CSOCK_NAME` to
//! [`PrivatePcscd::socket`]. The path stays the same across [`PrivatePcscd::restart`], which
//! matters because libpcsclite reads that variable once per process.

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::YUBICO_READER_NAME;

const VPCD_DRIVER: &str = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so";

fn in_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Checks that third-party command-line `tools` are on the `PATH`. `Err` names the missing
/// ones: the caller (a test) must fail, never skip.
pub fn require_tools(tools: &[&str]) -> Result<(), String> {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !in_path(t)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("missing {missing:?}: install them (./scripts/dev.sh install)"))
    }
}

/// Checks that pcscd, unshare and the vpcd driver are installed.
/// `Err` names what is missing: the caller (a test) must fail, never pass. Tests that need
/// pcscd are `#[ignore = "needs pcscd …"]`, so a plain `cargo test` reports them as ignored
/// and `./scripts/dev.sh test` (`--include-ignored`) runs them.
pub fn require_pcscd() -> Result<(), String> {
    let mut missing = Vec::new();
    for tool in ["pcscd", "unshare", "mount"] {
        if !in_path(tool) && !Path::new("/usr/sbin").join(tool).is_file() {
            missing.push(tool.to_string());
        }
    }
    if !Path::new(VPCD_DRIVER).exists() {
        missing.push(format!("vsmartcard-vpcd ({VPCD_DRIVER})"));
    }
    if missing.is_empty() {
        return Ok(());
    }
    let msg = format!(
        "missing {}: install pcscd, vsmartcard-vpcd and util-linux (./scripts/dev.sh install)",
        missing.join(", ")
    );
    Err(msg)
}

/// A running private pcscd with one vpcd reader (two slots). Killed when dropped.
#[derive(Debug)]
pub struct PrivatePcscd {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    name: String,
}

fn ports_free(port: u16) -> bool {
    [port, port + 1]
        .iter()
        .all(|p| TcpListener::bind(("0.0.0.0", *p)).is_ok())
}

impl PrivatePcscd {
    /// Starts a pcscd whose vpcd reader is named like a real YubiKey ([`YUBICO_READER_NAME`])
    /// and whose slots listen on the first free pair of ports at or after `port_hint`.
    pub fn start(port_hint: u16) -> io::Result<Self> {
        Self::start_named(port_hint, YUBICO_READER_NAME)
    }

    /// Like [`PrivatePcscd::start`] with another reader name (e.g. "Virtual PCD", Debian's).
    pub fn start_named(port_hint: u16, reader_name: &str) -> io::Result<Self> {
        let port = (0..200u16)
            .map(|i| port_hint.saturating_add(i * 2))
            .find(|p| *p < u16::MAX && ports_free(*p))
            .ok_or_else(|| io::Error::new(io::ErrorKind::AddrInUse, "no free vpcd port pair"))?;
        let dir = std::env::temp_dir().join(format!("keyfloat-pcscd-{}-{port}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("run"))?;
        fs::create_dir_all(dir.join("conf"))?;
        fs::write(
            dir.join("conf/vpcd"),
            format!(
                "FRIENDLYNAME \"{reader_name}\"\nDEVICENAME /dev/null:0x{port:X}\nLIBPATH {VPCD_DRIVER}\nCHANNELID 0x{port:X}\n"
            ),
        )?;
        let mut me = Self {
            child: None,
            dir,
            port,
            name: reader_name.to_string(),
        };
        me.spawn()?;
        Ok(me)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let run = self.dir.join("run");
        for f in ["pcscd.comm", "pcscd.pid"] {
            let _ = fs::remove_file(run.join(f));
        }
        let log = fs::File::create(self.log_path())?;
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg("mkdir -p /run/pcscd && mount --bind \"$1\" /run/pcscd && exec pcscd -f -d -a -c \"$2\"")
            .arg("sh")
            .arg(&run)
            .arg(self.dir.join("conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        // A test binary keeps its pcscd in a static, which is never dropped: a watchdog
        // kills pcscd when this process exits (checking the pid still is that pcscd).
        let _ = Command::new("sh")
            .args([
                "-c",
                "while kill -0 \"$1\" 2>/dev/null && kill -0 \"$2\" 2>/dev/null; do sleep 1; done; \
                 grep -qF \"$3\" /proc/\"$2\"/cmdline 2>/dev/null && kill -9 \"$2\"",
                "sh",
                &std::process::id().to_string(),
                &child.id().to_string(),
            ])
            .arg(self.dir.join("conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.socket().exists() && !ports_free(self.port) {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(io::Error::other(format!(
                    "pcscd exited at start-up ({status}); log: {}",
                    self.log_path().display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("pcscd did not come up; log: {}", self.log_path().display()),
        ))
    }

    /// Path for `PCSCLITE_CSOCK_NAME` (stable across restarts).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("run/pcscd.comm")
    }

    /// pcscd's log (debug level, with APDUs).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("pcscd.log")
    }

    /// pcscd's process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The reader name of vpcd slot `slot` (0 or 1).
    pub fn reader(&self, slot: u8) -> String {
        format!("{} 00 {slot:02X}", self.name)
    }

    /// Where a virtual card connects to be inserted in slot `slot`.
    pub fn vpcd_addr(&self, slot: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port + u16::from(slot)))
    }

    /// Kills pcscd (like a crash: clients get CommError, then NoService).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts pcscd again with the same configuration and socket path.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        // The kernel frees the listening ports with the process; wait for that.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ports_free(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.spawn()
    }
}

impl Drop for PrivatePcscd {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("KEYFLOAT_KEEP_PCSCD_LOGS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
