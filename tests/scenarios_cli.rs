//! `keyfloat simulate run` end to end: the shipped suite in virtual mode (with the
//! determinism check) and in pcsc mode (real private pcscd + virtual YubiKey through vpcd),
//! and a deliberately broken expectation.
//!
//! The pcsc arm fails when pcscd / vsmartcard-vpcd / unshare are missing; it is
//! reported as ignored by a plain `cargo test`; `./scripts/dev.sh test` runs them (`--include-ignored`).

use std::path::{Path, PathBuf};
use std::process::Command;

use keyfloat_testkit::process::success_stdout;

fn keyfloat() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keyfloat"));
    c.env("RUST_LOG", "error");
    c
}

fn scenarios() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("simulator/scenarios");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("scenarios")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn suite_passes_in_virtual_mode_deterministically() {
    let out = keyfloat()
        .args(["simulate", "run", "--mode", "virtual", "--check-determinism"])
        .args(scenarios())
        .output()
        .expect("run keyfloat");
    let stdout = success_stdout(&out);
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.matches("PASS").count() >= 10, "{stdout}");
    // pcsc-only scenarios are skipped, each with its line, not failed.
    assert!(
        stdout.contains("SKIP pcscd-restart (runs in pcsc, not virtual)"),
        "{stdout}"
    );
    // Per-event log lines stay out of the way: the trace has the events.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("WARN"), "{stderr}");
    // Long traces (the 1 kHz flap) are condensed unless --full-trace.
    assert!(stdout.contains("(--full-trace shows them)"), "{stdout}");
}

#[test]
fn strict_modes_fails_on_a_scenario_for_another_mode_and_full_trace_prints_everything() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("simulator/scenarios");
    let out = keyfloat()
        .args(["simulate", "run", "--strict-modes"])
        .arg(dir.join("pcscd-restart.toml"))
        .output()
        .expect("run keyfloat");
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAIL"), "{stdout}");

    let out = keyfloat()
        .args(["simulate", "run", "--full-trace"])
        .arg(dir.join("flap-1khz.toml"))
        .output()
        .expect("run keyfloat");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(!stdout.contains("--full-trace shows them"), "{stdout}");
    assert!(stdout.lines().count() > 1000, "a 1 kHz flap traces every half cycle");
}

/// One process per scenario: libpcsclite binds a process to one pcscd socket.
#[ignore = "needs pcscd + vsmartcard-vpcd, as root; ./scripts/dev.sh test runs it (--include-ignored)"]
#[test]
fn suite_passes_in_pcsc_mode() {
    keyfloat_simulator::card::require_pcscd().unwrap_or_else(|e| panic!("{e}"));
    let mut passed = 0;
    for file in scenarios() {
        let out = keyfloat()
            .args(["simulate", "run", "--mode", "pcsc"])
            .arg(&file)
            .output()
            .expect("run keyfloat");
        eprintln!("{}", file.display());
        let stdout = success_stdout(&out);
        passed += stdout.matches("PASS").count();
    }
    assert!(passed >= 5, "only {passed} scenarios support pcsc mode");
}

#[test]
fn a_broken_expectation_fails_the_run_naming_scenario_and_step() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("broken.toml");
    std::fs::write(
        &file,
        r#"
name = "deliberately-broken"
seed = 3
keys = [{ name = "alpha", serial = 1 }]
steps = [{ at = "0ms", action = "plug", key = "alpha", expect = { hardware_id = "machine" } }]
"#,
    )
    .expect("write");
    let out = keyfloat()
        .args(["simulate", "run"])
        .arg(&file)
        .output()
        .expect("run keyfloat");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("FAIL scenario \"deliberately-broken\" step 0"),
        "{stdout}"
    );
    assert!(stdout.contains("expected hardware_id=machine, got alpha"), "{stdout}");
}

#[test]
fn json_trace_is_written_on_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out_file = dir.path().join("trace.json");
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("simulator/scenarios/contention.toml");
    let out = keyfloat()
        .args(["simulate", "run", "--json-trace"])
        .arg(&out_file)
        .arg(scenario)
        .output()
        .expect("run keyfloat");
    success_stdout(&out);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out_file).expect("trace")).expect("json");
    assert_eq!(v[0]["scenario"], "contention");
    assert_eq!(v[0]["trace"][1]["reason"], "KEY_BUSY");
}
