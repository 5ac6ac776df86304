//! Runs the real `keyfloat serve` binary for end-to-end tests. The runner, the HTTP client
//! and the waits live in the workspace's test kit (`keyfloat_testkit`); this module binds
//! them to this crate's binary and keeps the old `server_support::…` names working.
#![allow(dead_code, unused_imports, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub use keyfloat_testkit::http::{basic, free_port, http, login, q, wait_key_state};
pub use keyfloat_testkit::serve::{data_dir, wait_exit, Server};
pub use keyfloat_testkit::{wait_for, wait_until};

pub const BIN: &str = env!("CARGO_BIN_EXE_keyfloat");

/// `keyfloat user add` into `data/db`.
pub fn add_user(data: &Path, name: &str, password: &str, role: &str) {
    keyfloat_testkit::serve::add_user(Path::new(BIN), data, name, password, role);
}

/// Starts `keyfloat serve --key-backend sim` on a free port; waits for its
/// `listening on http://ADDR` line (≤ 30 s).
pub fn start(data: &Path, extra: &[&str]) -> Server {
    keyfloat_testkit::serve::start(Path::new(BIN), data, extra)
}

/// The Python interpreter with the official SDK: `KEYFLOAT_PYTHON`, else
/// `target/venv/bin/python`. Missing = test failure (tests using it are
/// `#[ignore = "needs the licensespring Python SDK …"]`; `./scripts/dev.sh test` runs them).
pub fn python() -> PathBuf {
    let p = std::env::var_os("KEYFLOAT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python"));
    let ok = Command::new(&p)
        .args(["-c", "import licensespring"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "no Python with the licensespring SDK at {} (set KEYFLOAT_PYTHON, or run ./scripts/dev.sh install)",
        p.display()
    );
    p
}
