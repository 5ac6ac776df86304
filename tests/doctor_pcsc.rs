//! `keyfloat doctor` as a child process against: no pcscd, a private pcscd with an empty
//! reader, the virtual YubiKey (right and wrong vendor key), and the card held exclusively
//! by another process (`keyfloat simulate hold`), which doctor must name.
//!
//! The pcscd cases need pcscd + vsmartcard-vpcd and fail without them; they are
//! reported as ignored by a plain `cargo test`; `./scripts/dev.sh test` runs them (`--include-ignored`).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keyfloat_hal::backend::sim::provision_sim_key;
use keyfloat_hal::backend::sim::SimKeySpec;
use keyfloat_hal::trust::VendorSigningKey;
use keyfloat_simulator::card::{require_pcscd, CardServer, PrivatePcscd, VirtualCard, CSOCK_ENV};
use keyfloat_testkit::serve::{listening, spawn_until, START_LIMIT};
use keyfloat_testkit::wait_for_every;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_keyfloat");

/// A private pcscd owned by the test (dropped = stopped, also when the test fails).
fn pcscd() -> PrivatePcscd {
    require_pcscd().unwrap_or_else(|e| panic!("{e}"));
    PrivatePcscd::start(0x9C40).expect("private pcscd")
}

/// Runs `keyfloat doctor --json` with pcscd's socket set; returns (exit code, report).
fn doctor(socket: &Path, extra: &[&str]) -> (i32, Value) {
    let out = Command::new(BIN)
        .args(["doctor", "--json"])
        .args(extra)
        .env(CSOCK_ENV, socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{e}: {text}\nstderr: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), v)
}

fn codes(report: &Value) -> Vec<String> {
    report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap().to_owned())
        .collect()
}

/// Runs doctor until `cond` holds (≤ 15 s): pcscd needs a moment to notice a card.
fn doctor_until(socket: &Path, extra: &[&str], what: &str, cond: impl Fn(i32, &Value) -> bool) -> (i32, Value) {
    wait_for_every(
        Duration::from_millis(100),
        Duration::from_secs(15),
        format_args!("doctor to show {what}"),
        || {
            let (code, v) = doctor(socket, extra);
            if cond(code, &v) {
                Ok((code, v))
            } else {
                Err(format!("exit {code}, {v:#}"))
            }
        },
    )
}

#[test]
fn pcscd_absent_is_a_problem_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no-pcscd.comm");
    let (code, v) = doctor(&socket, &[]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["ok"], false);
    assert_eq!(v["pcscd"]["reachable"], false);
    assert_eq!(v["pcscd"]["socket_from_env"], true);
    assert_eq!(v["pcscd"]["socket"], socket.display().to_string());
    assert_eq!(codes(&v), ["pcscd_not_running"]);
    assert!(v["problems"][0]["hint"].as_str().unwrap().contains("pcscd"));

    // The readable form says the same.
    let out = Command::new(BIN)
        .arg("doctor")
        .env(CSOCK_ENV, &socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("PROBLEM      [pcscd_not_running]"), "{text}");
    assert!(text.contains("hint: "), "{text}");
}

#[ignore = "needs pcscd + vsmartcard-vpcd, as root; ./scripts/dev.sh test runs it (--include-ignored)"]
#[test]
fn private_pcscd_empty_reader_then_card_then_held_card() {
    let pcscd = pcscd();
    let socket = pcscd.socket();

    // pcscd up, reader empty: pcscd found with its pid and command line, no key = problem.
    let (code, v) = doctor(&socket, &[]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["pcscd"]["reachable"], true, "{v:#}");
    let proc_ = &v["pcscd"]["process"];
    assert_eq!(proc_["pid"].as_u64(), pcscd.pid().map(u64::from), "{v:#}");
    assert!(proc_["cmdline"].as_str().unwrap().starts_with("pcscd "), "{v:#}");
    let readers = v["readers"].as_array().unwrap();
    assert!(
        readers
            .iter()
            .any(|r| r["name"] == pcscd.reader(0) && r["card_present"] == false),
        "{v:#}"
    );
    assert_eq!(codes(&v), ["no_key"], "{v:#}");

    // The virtual card: serial read, proof verified with the right vendor key, exit 0.
    let vendor = VendorSigningKey::generate();
    let spec = provision_sim_key(SimKeySpec::generate("card", 31337001), &vendor);
    let dir = tempfile::tempdir().unwrap();
    let vendor_pub = dir.path().join("vendor.pub.pem");
    std::fs::write(&vendor_pub, vendor.public_key().to_pem()).unwrap();
    let vendor_arg = vendor_pub.to_str().unwrap();
    let card = CardServer::connect(pcscd.vpcd_addr(0), VirtualCard::new(&spec)).expect("card");
    let (code, v) = doctor_until(&socket, &["--vendor-public-key", vendor_arg], "the card", |_, v| {
        !v["keys"].as_array().unwrap().is_empty()
    });
    assert_eq!(code, 0, "{v:#}");
    let key = &v["keys"][0];
    assert_eq!(key["reader"], pcscd.reader(0));
    assert_eq!(key["serial"], "31337001");
    assert_eq!(key["proof"], "verified", "{v:#}");
    assert_eq!(v["vendor_key"], vendor.public_key().fingerprint());

    // Another vendor's key: invalid, with the reason and a hint.
    let other = dir.path().join("other.pub.pem");
    std::fs::write(&other, VendorSigningKey::generate().public_key().to_pem()).unwrap();
    let (code, v) = doctor(&socket, &["--vendor-public-key", other.to_str().unwrap()]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(codes(&v), ["key_invalid"]);
    assert_eq!(v["keys"][0]["reason"], "wrong_vendor");

    // Held exclusively by another process while the keyfloat server watches the same
    // pcscd: busy, the holder is named first, the server never.
    let data = tempfile::tempdir().unwrap();
    let mut server = spawn_server(&socket, data.path());
    let server_pid = u64::from(server.id());
    let mut holder = spawn_holder(&socket, &pcscd.reader(0));
    let holder_pid = u64::from(holder.id());
    let (code, v) = doctor_until(&socket, &[], "the busy card", |_, v| v["keys"][0]["proof"] == "busy");
    assert_eq!(code, 1, "{v:#}");
    assert!(codes(&v).contains(&"key_busy".to_owned()), "{v:#}");
    let holders = v["keys"][0]["holders"].as_array().unwrap();
    let named = holders.iter().find(|h| h["pid"].as_u64() == Some(holder_pid));
    let named = named.unwrap_or_else(|| panic!("holder {holder_pid} not named: {v:#}"));
    assert_eq!(
        holders[0]["pid"].as_u64(),
        Some(holder_pid),
        "the holder comes first: {v:#}"
    );
    assert!(
        holders.iter().all(|h| h["pid"].as_u64() != Some(server_pid)),
        "the keyfloat server is named as a holder: {v:#}"
    );
    assert!(!v.to_string().contains(&format!("kill {server_pid}")), "{v:#}");
    assert!(named["cmdline"].as_str().unwrap().contains("simulate hold"), "{v:#}");
    let problem = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["code"] == "key_busy")
        .unwrap();
    let says = |field: &str, text: String| {
        assert!(problem[field].as_str().unwrap().contains(&text), "{problem}");
    };
    says("message", format!("pid {holder_pid}"));
    says("hint", format!("kill {holder_pid}"));
    let _ = holder.kill();
    let _ = holder.wait();
    let _ = server.kill();
    let _ = server.wait();
    card.stop();
}

/// `keyfloat serve --key-backend pcsc` on the private pcscd (its monitor is a PC/SC client).
fn spawn_server(socket: &Path, data: &Path) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--key-backend",
        "pcsc",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(data)
    .env(CSOCK_ENV, socket)
    .stderr(Stdio::null());
    spawn_until(&mut cmd, None, START_LIMIT, |l| listening(l, "http").is_some()).0
}

/// `keyfloat simulate hold`: a real second PC/SC client with an exclusive connection.
fn spawn_holder(socket: &Path, reader: &str) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.args(["simulate", "hold", "--reader", reader, "--millis", "60000"])
        .env(CSOCK_ENV, socket)
        .stderr(Stdio::inherit());
    spawn_until(&mut cmd, None, START_LIMIT, |l| l.iter().any(|l| l.trim() == "HOLDING")).0
}
