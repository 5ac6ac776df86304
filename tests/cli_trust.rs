//! The vendor workflow through the real binary: keygen → sign-key-cert → license issue →
//! verify → tamper → verify fails. Plus: no private key PEM is ever part of the source tree.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::Path;
use std::process::{Command, Output};

fn keyfloat(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyfloat"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("KEYFLOAT_LICENSE_PASSWORD")
        .output()
        .expect("run keyfloat")
}

fn ok(args: &[&str]) -> String {
    let out = keyfloat(args);
    assert!(
        out.status.success(),
        "keyfloat {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let out = keyfloat(args);
    assert!(
        !out.status.success(),
        "keyfloat {args:?} should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `vendor sign-key-cert` arguments.
fn sign_key_cert<'a>(
    vendor: &'a str,
    serial: &'a str,
    public_key: &'a str,
    out: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "vendor",
        "sign-key-cert",
        "--vendor-key",
        vendor,
        "--serial",
        serial,
        "--public-key",
        public_key,
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    args
}

/// `license issue` arguments for license `license_id` of product `cad`, written to `out`.
fn license_issue<'a>(vendor: &'a str, license_id: &'a str, out: &'a str, terms: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "license",
        "issue",
        "--vendor-key",
        vendor,
        "--product",
        "cad",
        "--license-id",
        license_id,
        "--out",
        out,
    ];
    args.extend_from_slice(terms);
    args
}

/// A temp dir handing out file paths as strings (for command lines).
struct TempDir(tempfile::TempDir);

impl TempDir {
    fn new() -> Self {
        Self(tempfile::tempdir().expect("temp dir"))
    }
    fn path(&self, file: &str) -> String {
        self.0.path().join(file).to_string_lossy().into_owned()
    }
}

#[test]
fn vendor_round_trip_and_tampering() {
    let dir = TempDir::new();
    let (vendor, vendor_pub) = (dir.path("vendor.pem"), dir.path("vendor.pub.pem"));

    let out = ok(&["vendor", "keygen", "--out", &vendor, "--public-out", &vendor_pub]);
    assert!(out.contains("fingerprint"), "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&vendor).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "vendor key must be private");
    }
    let err = fails(&["vendor", "keygen", "--out", &vendor]);
    assert!(
        err.contains("vendor.pem"),
        "refuses to overwrite, naming the file: {err}"
    );

    // A key pair standing in for a YubiKey's slot 9E: its public half is the same SPKI PEM
    // `yubico-piv-tool -a generate -s 9e -A ECCP256` prints.
    let (key, key_pub) = (dir.path("key9e.pem"), dir.path("key9e.pub.pem"));
    ok(&["vendor", "keygen", "--out", &key, "--public-out", &key_pub]);

    let cert = dir.path("cert.pem");
    let out = ok(&sign_key_cert(&vendor, "12345678", &key_pub, &cert, &["--days", "30"]));
    assert!(out.contains("12345678"), "{out}");
    let pem = std::fs::read_to_string(&cert).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
    let cert_der = dir.path("cert.der");
    ok(&sign_key_cert(&vendor, "12345678", &key_pub, &cert_der, &[]));
    let der = std::fs::read(&cert_der).unwrap();
    assert_eq!(der[0], 0x30, "DER certificate starts with a SEQUENCE");
    let parsed = keyfloat_hal::trust::KeyCertificate::from_der(&der).unwrap();
    assert_eq!(parsed.serial().unwrap().as_str(), "12345678");
    let vendor_key = keyfloat_hal::trust::VendorPublicKey::read_pem_file(&vendor_pub).unwrap();
    parsed.verify_issued_by(&vendor_key).unwrap();

    // A private key where the public key belongs is refused with a reason.
    let x = dir.path("x.pem");
    let err = fails(&sign_key_cert(&vendor, "1", &key, &x, &[]));
    assert!(err.contains("wrong key type"), "{err}");

    let lic = dir.path("license.json");
    ok(&license_issue(
        &vendor,
        "1001",
        &lic,
        &[
            "--user",
            "alice@example.com",
            "--password",
            "s3cret",
            "--floating-users",
            "5",
            "--floating-timeout",
            "30",
            "--max-borrow-hours",
            "24",
            "--consumptions",
            "100",
            "--overages",
            "10",
            "--feature",
            "render:consumption:50",
            "--feature",
            "export:floating:2",
            "--feature",
            "basic",
            "--allowed-serial",
            "12345678",
            "--valid-until",
            "2099-01-01T00:00:00Z",
        ],
    ));
    let text = std::fs::read_to_string(&lic).unwrap();
    assert!(!text.contains("s3cret"), "the password itself is never written");
    assert!(text.contains("$argon2id$"), "{text}");

    let out = ok(&["license", "verify", &lic, "--vendor-public-key", &vendor_pub]);
    assert!(out.contains("signature OK"), "{out}");
    assert!(
        out.contains("1001") && out.contains("cad") && out.contains("12345678"),
        "{out}"
    );
    let json = ok(&["license", "verify", &lic, "--vendor-public-key", &vendor_pub, "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["floating_users"], 5);
    assert_eq!(doc["hardware_key_required"], true);
    assert_eq!(doc["consumption"]["max_overages"], 10);

    // Inline PEM works as well as a path.
    let inline = std::fs::read_to_string(&vendor_pub).unwrap();
    ok(&["license", "verify", &lic, "--vendor-public-key", &inline]);

    // One seat more: the signature no longer verifies.
    let tampered = dir.path("tampered.json");
    std::fs::write(
        &tampered,
        text.replacen("\"floating_users\": 5", "\"floating_users\": 6", 1),
    )
    .unwrap();
    let out = keyfloat(&["license", "verify", &tampered, "--vendor-public-key", &vendor_pub]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("signature_invalid") && err.contains("FAILED"), "{err}");

    // Signed by another vendor.
    let other_pub = dir.path("other.pub.pem");
    ok(&[
        "vendor",
        "keygen",
        "--out",
        &dir.path("other.pem"),
        "--public-out",
        &other_pub,
    ]);
    let err = fails(&["license", "verify", &lic, "--vendor-public-key", &other_pub]);
    assert!(err.contains("signature_invalid"), "{err}");

    // Signature block removed.
    let unsigned = dir.path("unsigned.json");
    std::fs::write(&unsigned, &text[..text.find("-----BEGIN").unwrap()]).unwrap();
    let err = fails(&["license", "verify", &unsigned, "--vendor-public-key", &vendor_pub]);
    assert!(err.contains("missing_signature"), "{err}");

    // Terms out of range are refused before signing.
    let bad = dir.path("bad.json");
    let err = fails(&license_issue(
        &vendor,
        "1",
        &bad,
        &["--license-key", "K", "--license-type", "time-limited"],
    ));
    assert!(err.contains("valid_until"), "{err}");
    assert!(!Path::new(&bad).exists());
}

/// The demo vendor key is generated at demo time; no private key may ever be shipped.
#[test]
fn no_private_key_pem_in_the_source_tree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Built at run time so this file does not match itself.
    let markers: Vec<String> = ["", "EC ", "RSA ", "ENCRYPTED ", "OPENSSH "]
        .iter()
        .map(|kind| format!("-----BEGIN {kind}PRIVATE {}-----\n", "KEY"))
        .collect();
    let mut offenders = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                if !(name.starts_with('.') || name == "target" || name == "node_modules") {
                    stack.push(path);
                }
            } else if ft.is_file() && entry.metadata().is_ok_and(|m| m.len() < 4 * 1024 * 1024) {
                if let Ok(text) = std::fs::read(&path) {
                    let text = String::from_utf8_lossy(&text);
                    if markers.iter().any(|m| text.contains(m.as_str())) {
                        offenders.push(path);
                    }
                }
            }
        }
    }
    assert!(offenders.is_empty(), "private key PEM found in: {offenders:?}");
}
