//! Real third-party PC/SC clients (yubico-piv-tool, OpenSC) and `keyfloat keys` against the
//! virtual YubiKey served to a real pcscd through vpcd.
//!
//! Each test starts its own private pcscd (own mount namespace, own vpcd ports) and talks to
//! it only through child processes given `PCSCLITE_CSOCK_NAME`, so the tests run in parallel
//! and never touch the system pcscd. They FAIL when pcscd / vpcd / the tools are missing;
//! reported as ignored by a plain `cargo test`; `./scripts/dev.sh test` runs them (`--include-ignored`).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use keyfloat_hal::backend::sim::provision_sim_key;
use keyfloat_hal::backend::sim::SimKeySpec;
use keyfloat_hal::trust::VendorSigningKey;
use keyfloat_simulator::card::{require_pcscd, require_tools, CardServer, PrivatePcscd, VirtualCard, CSOCK_ENV};
use keyfloat_testkit::process::{run_until, Piped};
use keyfloat_testkit::wait_for_every;

struct Rig {
    pcscd: PrivatePcscd,
    card: CardServer,
    vendor: VendorSigningKey,
    certificate: Vec<u8>,
    dir: tempfile::TempDir,
}

/// pcscd + a provisioned card with `serial` in slot 0.
fn rig(port_hint: u16, serial: u32) -> Rig {
    require_pcscd().unwrap_or_else(|e| panic!("{e}"));
    let pcscd = PrivatePcscd::start(port_hint).expect("private pcscd");
    let vendor = VendorSigningKey::generate();
    let spec = provision_sim_key(SimKeySpec::generate("card", serial), &vendor);
    let certificate = spec.certificate.clone().expect("provisioned");
    let card = CardServer::connect(pcscd.vpcd_addr(0), VirtualCard::new(&spec)).expect("card");
    let dir = tempfile::tempdir().expect("temp dir");
    Rig {
        pcscd,
        card,
        vendor,
        certificate,
        dir,
    }
}

impl Rig {
    fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env(CSOCK_ENV, self.pcscd.socket());
        c
    }

    /// Runs the command until it succeeds and `accept`s its stdout (the card shows up at
    /// pcscd's next 400 ms poll), for at most 10 s; returns that output.
    fn run_until(&self, make: impl FnMut() -> Command, accept: impl Fn(&str) -> bool) -> Output {
        let what = format!(
            "the command to succeed (pcscd log: {})",
            self.pcscd.log_path().display()
        );
        run_until(Duration::from_secs(10), what, make, |out| {
            out.status.success() && accept(&String::from_utf8_lossy(&out.stdout))
        })
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.card.remove();
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn pem_body(der: &[u8]) -> String {
    keyfloat_hal::trust::KeyCertificate::from_der(der)
        .expect("certificate parses")
        .to_pem()
}

#[ignore = "needs pcscd + vsmartcard-vpcd, as root and needs yubico-piv-tool and OpenSC; ./scripts/dev.sh test runs it (--include-ignored)"]
#[test]
fn yubico_piv_tool_reads_status_certificate_and_verifies_a_signature() {
    require_tools(&["yubico-piv-tool"]).unwrap_or_else(|e| panic!("{e}"));
    let rig = rig(0x9D00, 31415926);
    let status = rig.run_until(
        || {
            let mut c = rig.cmd("yubico-piv-tool");
            c.args(["-r", "", "-a", "status"]);
            c
        },
        |s| s.contains("Serial Number"),
    );
    let text = stdout(&status);
    assert!(text.contains("Serial Number:\t31415926"), "{text}");
    assert!(text.contains("Version:\t5.4.3"), "{text}");
    assert!(text.contains("Slot 9e:"), "{text}");
    assert!(text.contains("ECCP256"), "{text}");
    assert!(text.contains("PIN tries left:\t3"), "{text}");

    // Default reader filter ("Yubikey") matches the private reader's name.
    let cert = rig.run_until(
        || {
            let mut c = rig.cmd("yubico-piv-tool");
            c.args(["-a", "read-certificate", "-s", "9e"]);
            c
        },
        |s| s.contains("BEGIN CERTIFICATE"),
    );
    assert_eq!(
        stdout(&cert).trim(),
        pem_body(&rig.certificate).trim(),
        "the tool reads back exactly the provisioned certificate"
    );

    let pem = rig.dir.path().join("cert.pem");
    std::fs::write(&pem, stdout(&cert)).expect("write pem");
    let sig = rig.run_until(
        || {
            let mut c = rig.cmd("yubico-piv-tool");
            c.args(["-a", "test-signature", "-s", "9e", "-i"]).arg(&pem);
            c
        },
        |_| true,
    );
    let all = format!("{}{}", stdout(&sig), String::from_utf8_lossy(&sig.stderr));
    assert!(all.contains("Successful ECDSA verification"), "{all}");
}

#[ignore = "needs pcscd + vsmartcard-vpcd, as root and needs yubico-piv-tool and OpenSC; ./scripts/dev.sh test runs it (--include-ignored)"]
#[test]
fn opensc_sees_a_piv_card_with_the_card_auth_certificate() {
    require_tools(&["opensc-tool", "pkcs15-tool", "pkcs11-tool"]).unwrap_or_else(|e| panic!("{e}"));
    let rig = rig(0x9D20, 27182818);
    let name = rig.run_until(
        || {
            let mut c = rig.cmd("opensc-tool");
            c.args(["-r", "0", "-n"]);
            c
        },
        |s| s.contains("Personal Identity Verification Card"),
    );
    assert!(stdout(&name).contains("Personal Identity Verification Card"));
    let certs = rig.run_until(
        || {
            let mut c = rig.cmd("pkcs15-tool");
            c.args(["-r", "0", "--list-certificates"]);
            c
        },
        |s| s.contains("Card Authentication"),
    );
    assert!(stdout(&certs).contains("ID             : 04"), "{}", stdout(&certs));
    let module = [
        "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so",
        "/usr/lib/aarch64-linux-gnu/opensc-pkcs11.so",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("opensc-pkcs11.so installed with opensc");
    let objects = rig.run_until(
        || {
            let mut c = rig.cmd("pkcs11-tool");
            c.args(["--module", module, "--list-objects"]);
            c
        },
        |s| s.contains("CARD AUTH"),
    );
    let text = stdout(&objects);
    assert!(text.contains("Private Key Object; EC"), "{text}");
    assert!(text.contains("CN=keyfloat key 27182818"), "{text}");
}

#[ignore = "needs pcscd + vsmartcard-vpcd, as root; ./scripts/dev.sh test runs it (--include-ignored)"]
#[test]
fn keyfloat_keys_lists_the_card_with_serial_firmware_and_proof() {
    let rig = rig(0x9D40, 16180339);
    let keyfloat = env!("CARGO_BIN_EXE_keyfloat");
    let rows = |extra: &[&str]| -> serde_json::Value {
        let out = rig.run_until(
            || {
                let mut c = rig.cmd(keyfloat);
                c.args(["keys", "--json", "--key-backend", "pcsc"]).args(extra);
                c
            },
            |s| s.contains("16180339"),
        );
        serde_json::from_slice(&out.stdout).expect("keys --json is JSON")
    };
    let plain = rows(&[]);
    let row = &plain[0];
    assert_eq!(row["backend"], "pcsc");
    assert_eq!(row["path"], rig.pcscd.reader(0));
    assert_eq!(row["serial"], "16180339");
    assert_eq!(row["firmware"], "5.4.3");
    assert_eq!(row["proof"], "serial_only");

    let vendor_pub = rig.dir.path().join("vendor.pub.pem");
    std::fs::write(&vendor_pub, rig.vendor.public_key().to_pem()).expect("write vendor key");
    let verified = rows(&["--vendor-public-key", vendor_pub.to_str().expect("utf-8 path")]);
    assert_eq!(verified[0]["proof"], "verified", "{verified}");

    let other = rig.dir.path().join("other.pub.pem");
    std::fs::write(&other, VendorSigningKey::generate().public_key().to_pem()).expect("write key");
    let wrong = rows(&["--vendor-public-key", other.to_str().expect("utf-8 path")]);
    assert_eq!(wrong[0]["proof"], "invalid", "{wrong}");
    assert_eq!(wrong[0]["reason"], "wrong_vendor", "{wrong}");
}

#[ignore = "needs pcscd + vsmartcard-vpcd, as root; ./scripts/dev.sh test runs it (--include-ignored)"]
#[test]
fn simulate_card_command_serves_unplugs_and_replugs() {
    require_pcscd().unwrap_or_else(|e| panic!("{e}"));
    let pcscd = PrivatePcscd::start(0x9D60).expect("private pcscd");
    let keyfloat = env!("CARGO_BIN_EXE_keyfloat");
    let vpcd = pcscd.vpcd_addr(0).to_string();
    let tmp = tempfile::tempdir().expect("temp dir");
    let vendor_key = tmp.path().join("vendor.pem");
    VendorSigningKey::generate()
        .write_pem_file(&vendor_key)
        .expect("vendor key file");
    let mut card = Piped::spawn(
        Command::new(keyfloat)
            .args([
                "simulate",
                "card",
                "--serial",
                "11223344",
                "--vpcd",
                &vpcd,
                "--reader-slot",
                "1",
            ])
            .arg("--vendor-key")
            .arg(&vendor_key)
            .stderr(std::process::Stdio::piped()),
    );
    let first = card.line();
    assert!(first.contains("serial 11223344"), "{first}");

    let keys = || -> serde_json::Value {
        let out = Command::new(keyfloat)
            .args(["keys", "--json", "--key-backend", "pcsc"])
            .env(CSOCK_ENV, pcscd.socket())
            .output()
            .expect("keyfloat keys");
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    let wait_keys = |what: &str, cond: &dyn Fn(&serde_json::Value) -> bool| {
        wait_for_every(Duration::from_millis(50), Duration::from_secs(10), what, || {
            let v = keys();
            if cond(&v) {
                Ok(v)
            } else {
                Err(v)
            }
        })
    };
    let listed = wait_keys("the card in slot 1", &|v| v[0]["serial"] == "11223344");
    assert_eq!(listed[0]["path"], pcscd.reader(1));

    card.ask("remove", "removed");
    wait_keys("no card", &|v| v.as_array().is_some_and(Vec::is_empty));

    card.ask("insert", "inserted");
    wait_keys("the card again", &|v| v[0]["serial"] == "11223344");

    card.finish("quit");
}
