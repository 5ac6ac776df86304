//! `keyfloat serve` with `require_attestation`: the configuration reaches the validator.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod server_support;

use std::process::{Command, Stdio};
use std::time::Duration;

use server_support::{data_dir, start, wait_exit, BIN};

/// `--key-backend sim` with `--require-attestation`: the simulated key attests with a TEST CA
/// the server trusts, so it is in force with proof "attested"; the flag off gives "verified".
#[test]
fn sim_key_is_attested_when_required() {
    for (extra, want) in [(&["--require-attestation"][..], "attested"), (&[][..], "verified")] {
        let dir = data_dir();
        let s = start(dir.path(), extra);
        s.wait_key_state("valid", None);
        let health = s.json("GET", "/api/v4/health", None, None);
        assert_eq!(health["key"]["keys"][0]["status"]["proof"], want, "{health}");
        s.stop();
    }
}

/// Attestation required but no roots configured: the server refuses to start, saying why.
#[test]
fn require_attestation_without_roots_refuses_to_start() {
    let dir = data_dir();
    let vendor_pub = dir.path().join("vendor.pub.pem");
    let vendor = keyfloat_hal::trust::VendorSigningKey::read_pem_file(dir.path().join("vendor.pem")).unwrap();
    std::fs::write(&vendor_pub, vendor.public_key().to_pem()).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "requireAttestation: true\nkey_backend: pcsc\n").unwrap();
    let serve = || {
        let mut c = Command::new(BIN);
        c.args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--vendor-public-key")
            .arg(&vendor_pub)
            .arg("--data-dir")
            .arg(dir.path().join("db"));
        c
    };
    let mut child = serve().stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let code = wait_exit(&mut child, Duration::from_secs(20));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no attestation_roots"), "{err}");

    // A root that is not a certificate: refused too, naming the setting.
    std::fs::write(dir.path().join("root.pem"), "not a certificate").unwrap();
    let out = serve()
        .arg("--attestation-root")
        .arg(dir.path().join("root.pem"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("attestation_roots"), "{err}");
}
