//! The real HID path on this machine: hidapi (pure-Rust Linux backend) must build, run and
//! enumerate without error. CI machines have no USB and no uhid, so no HID device can exist
//! there and the honest outcome is an empty list.
#![cfg(feature = "hid")]

use std::process::Command;

use keyfloat_hal::backend::hid::{HidApiTransport, HidProvider, HidTransport};
use keyfloat_hal::KeyProvider;
use keyfloat_testkit::process::success_stdout;

/// Whether the kernel shows any hidraw node (a developer machine with a keyboard may).
fn has_hidraw() -> bool {
    std::fs::read_dir("/dev")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("hidraw"))
        })
        .unwrap_or(false)
}

#[test]
fn hidapi_transport_enumerates_without_error() {
    let devices = HidApiTransport::new().enumerate().expect("hidapi enumerates");
    if !has_hidraw() {
        assert!(devices.is_empty(), "{devices:?}");
    }
    let keys = HidProvider::system().list().expect("HID provider lists");
    if !has_hidraw() {
        assert!(keys.is_empty());
    }
}

#[test]
fn keys_json_with_the_hid_backend_prints_an_empty_list() {
    let out = Command::new(env!("CARGO_BIN_EXE_keyfloat"))
        .args(["keys", "--json", "--key-backend", "hid"])
        .env_remove("KEYFLOAT_HID_DONGLES")
        .output()
        .expect("run keyfloat");
    let stdout = success_stdout(&out);
    let rows: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert!(rows.is_array(), "{stdout}");
    if !has_hidraw() {
        assert_eq!(rows, serde_json::json!([]), "{stdout}");
        assert_eq!(stdout.trim(), "[]");
    }
}
