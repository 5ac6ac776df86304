//! PIV attestation end to end on a real pcscd: the README's provisioning recipe run
//! literally with the real `yubico-piv-tool` against the virtual YubiKey (generate in 9E,
//! attest, read F9, `keyfloat vendor sign-key-cert --attestation …`, import, `keyfloat keys`),
//! `openssl verify` of the chain, and the attacks the attestation must stop.
//!
//! Each test starts its own private pcscd. They need pcscd + vsmartcard-vpcd (as root),
//! yubico-piv-tool, openssl (and ykman), so they are `#[ignore = …]`: a plain `cargo test`
//! reports them as ignored, `./scripts/dev.sh test` runs them (`--include-ignored`), and
//! then they FAIL when something is missing.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use keyfloat_hal::backend::sim::provision_sim_key;
use keyfloat_hal::backend::sim::{SimAttestation, SimKeySpec};
use keyfloat_hal::trust::attestation::sim_ca::SimAttestationCa;
use keyfloat_hal::trust::VendorSigningKey;
use keyfloat_simulator::card::{require_pcscd, require_tools, CardServer, PrivatePcscd, VirtualCard, CSOCK_ENV};
use keyfloat_testkit::process::{output_text, run_until, Piped};
use p256::pkcs8::{EncodePrivateKey, LineEnding};

const KEYFLOAT: &str = env!("CARGO_BIN_EXE_keyfloat");

struct Rig {
    pcscd: PrivatePcscd,
    card: CardServer,
    dir: tempfile::TempDir,
}

/// A private pcscd and a card built by `make` (given the rig's test attestation CA).
fn rig(port_hint: u16, make: impl FnOnce(&SimAttestationCa) -> VirtualCard) -> Rig {
    require_tools(&["yubico-piv-tool", "openssl"]).unwrap_or_else(|e| panic!("{e}"));
    require_pcscd().unwrap_or_else(|e| panic!("{e}"));
    let pcscd = PrivatePcscd::start(port_hint).expect("private pcscd");
    let ca = SimAttestationCa::generate().expect("test attestation CA");
    let card = CardServer::connect(pcscd.vpcd_addr(0), make(&ca)).expect("card");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("root.pem"), ca.root_pem()).expect("write root");
    Rig { pcscd, card, dir }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.card.remove();
    }
}

impl Rig {
    fn cmd(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.env(CSOCK_ENV, self.pcscd.socket())
            .args(args)
            .current_dir(self.dir.path());
        c
    }

    /// Runs a command once.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        self.cmd(program, args).output().expect("command runs")
    }

    /// Runs `yubico-piv-tool` until it succeeds (the card appears at pcscd's next poll), at
    /// most 10 s.
    fn piv_tool(&self, args: &[&str]) -> Output {
        let what = format!(
            "yubico-piv-tool {args:?} to succeed (pcscd log: {})",
            self.pcscd.log_path().display()
        );
        run_until(
            Duration::from_secs(10),
            what,
            || self.cmd("yubico-piv-tool", args),
            |out| out.status.success(),
        )
    }

    fn vendor_keygen(&self) {
        let out = self.run(
            KEYFLOAT,
            &[
                "vendor",
                "keygen",
                "--out",
                "vendor.pem",
                "--public-out",
                "vendor.pub.pem",
            ],
        );
        assert!(out.status.success(), "{}", output_text(&out));
    }

    /// `keyfloat vendor sign-key-cert` with the rig's vendor key: `serial`, where the key
    /// comes from (`key_source`: `--public-key …`, `--from-key`, attestation files), `out`.
    fn sign_key_cert(&self, serial: &str, key_source: &[&str], out: &str) -> Output {
        let mut args = vec![
            "vendor",
            "sign-key-cert",
            "--vendor-key",
            "vendor.pem",
            "--serial",
            serial,
        ];
        args.extend_from_slice(key_source);
        args.extend_from_slice(&["--out", out]);
        self.run(KEYFLOAT, &args)
    }

    /// `keyfloat vendor sign-key-cert --attestation …` with the rig's files.
    fn sign_attested(&self, serial: u32, root: &str) -> Output {
        let attestation = [
            "--public-key",
            "pub.pem",
            "--attestation",
            "attest.pem",
            "--attestation-intermediate",
            "f9.pem",
            "--attestation-root",
            root,
        ];
        self.sign_key_cert(&serial.to_string(), &attestation, "cert.pem")
    }

    /// `openssl verify` of the attestation chain: test root, F9 intermediate.
    fn openssl_verify(&self) -> Output {
        let verify = self.run(
            "openssl",
            &["verify", "-CAfile", "root.pem", "-untrusted", "f9.pem", "attest.pem"],
        );
        assert!(verify.status.success(), "{}", output_text(&verify));
        verify
    }

    /// `keyfloat keys --json` on this pcscd with the vendor key and the test root.
    fn keys(&self, expect_serial: &str) -> serde_json::Value {
        self.keys_with(expect_serial, &["--attestation-root", "root.pem"])
    }

    /// `keyfloat keys --json` on this pcscd with the vendor key and `extra`, once it lists
    /// `expect_serial`.
    fn keys_with(&self, expect_serial: &str, extra: &[&str]) -> serde_json::Value {
        let mut args = vec![
            "keys",
            "--json",
            "--key-backend",
            "pcsc",
            "--vendor-public-key",
            "vendor.pub.pem",
        ];
        args.extend_from_slice(extra);
        let out = run_until(
            Duration::from_secs(10),
            format_args!("keyfloat keys to list {expect_serial}"),
            || self.cmd(KEYFLOAT, &args),
            |out| out.status.success() && String::from_utf8_lossy(&out.stdout).contains(expect_serial),
        );
        serde_json::from_slice(&out.stdout).expect("keys --json is JSON")
    }
}

/// A command that must have failed, saying `why` on stderr.
#[track_caller]
fn assert_refused(out: &Output, why: &str) {
    assert!(!out.status.success(), "{}", output_text(out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(why),
        "{why}: {}",
        output_text(out)
    );
}

/// An unprovisioned card (key imported, no certificate) with a YubiKey's F9 attester.
fn fresh_card(ca: &SimAttestationCa, serial: u32) -> VirtualCard {
    let spec = SimKeySpec::generate("card", serial);
    VirtualCard::new(&spec).with_attester(ca.issue_device(serial).expect("F9"))
}

/// The `yubico-piv-tool` arguments that generate an ECC P-256 key in slot 9E, its public
/// key to `pub.pem`, with `policies`.
fn generate_9e<'a>(policies: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["-a", "generate", "-s", "9e", "-A", "ECCP256"];
    args.extend_from_slice(policies);
    args.extend_from_slice(&["-o", "pub.pem"]);
    args
}

/// A rig around [`fresh_card`] with a vendor key made now (`vendor.pem`, `vendor.pub.pem`).
fn fresh_rig(port_hint: u16, serial: u32) -> Rig {
    let rig = rig(port_hint, |ca| fresh_card(ca, serial));
    rig.vendor_keygen();
    rig
}

/// A [`fresh_rig`] whose 9E key was generated on the card (PIN and touch policy never) and
/// attested: `attest.pem`, and the F9 certificate in `f9.pem`.
fn attested_rig(port_hint: u16, serial: u32) -> Rig {
    let rig = fresh_rig(port_hint, serial);
    rig.piv_tool(&generate_9e(&["--pin-policy=never", "--touch-policy=never"]));
    rig.piv_tool(&["-a", "attest", "-s", "9e", "-o", "attest.pem"]);
    rig.piv_tool(&["-a", "read-certificate", "-s", "f9", "-o", "f9.pem"]);
    rig
}

#[test]
#[ignore = "needs pcscd + vsmartcard-vpcd, as root, yubico-piv-tool and openssl; ./scripts/dev.sh test runs it (--include-ignored)"]
fn readme_recipe_runs_literally_and_the_key_proves_attested() {
    const SERIAL: u32 = 13572468;
    let rig = attested_rig(0xA640, SERIAL);
    assert!(rig.card.with_card(|c| c.key_generated()));

    // openssl accepts the chain with the test root and the F9 intermediate.
    let verify = rig.openssl_verify();
    assert!(String::from_utf8_lossy(&verify.stdout).contains("attest.pem: OK"));

    let signed = rig.sign_attested(SERIAL, "root.pem");
    assert!(signed.status.success(), "{}", output_text(&signed));
    let out = String::from_utf8_lossy(&signed.stdout);
    assert!(out.contains("attestation verified: serial 13572468"), "{out}");
    assert!(out.contains("attested certificate"), "{out}");

    // The provisioning-station mode reads the same from the connected key.
    let serial = SERIAL.to_string();
    let station = |serial: &str| {
        rig.sign_key_cert(
            serial,
            &["--from-key", "--attestation-root", "root.pem"],
            "cert-station.pem",
        )
    };
    let out = station(&serial);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("attested certificate"),
        "{}",
        output_text(&out)
    );
    assert_refused(&station("99999999"), "reports serial 13572468");

    rig.piv_tool(&["-a", "import-certificate", "-s", "9e", "-i", "cert.pem"]);
    let status = rig.piv_tool(&["-a", "status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("CN=keyfloat key 13572468"),
        "{}",
        output_text(&status)
    );

    let rows = rig.keys("13572468");
    assert_eq!(rows[0]["proof"], "verified", "{rows}");
    assert_eq!(rows[0]["attested"], true, "{rows}");
    assert_eq!(rows[0]["serial"], "13572468", "{rows}");
}

#[test]
#[ignore = "needs pcscd + vsmartcard-vpcd, as root, yubico-piv-tool and openssl; ./scripts/dev.sh test runs it (--include-ignored)"]
fn vendor_refuses_unknown_root_other_serial_and_other_key() {
    const SERIAL: u32 = 24681357;
    let rig = attested_rig(0xA660, SERIAL);
    let refused = |out: &Output, code: &str| {
        assert_refused(out, &format!("refused ({code})"));
        assert!(!rig.dir.path().join("cert.pem").exists(), "a certificate was written");
    };

    // An attestation signed by an unknown root (a CA of the same name, another key).
    std::fs::write(
        rig.dir.path().join("other-root.pem"),
        SimAttestationCa::generate().unwrap().root_pem(),
    )
    .unwrap();
    refused(&rig.sign_attested(SERIAL, "other-root.pem"), "attestation_untrusted");
    // The attestation names another serial than the one to certify.
    refused(
        &rig.sign_attested(SERIAL + 1, "root.pem"),
        "attestation_serial_mismatch",
    );
    // A different public key: the key was re-generated after the attestation was taken.
    rig.piv_tool(&generate_9e(&[]));
    refused(&rig.sign_attested(SERIAL, "root.pem"), "attestation_key_mismatch");
    // A PIN policy an unattended server cannot satisfy.
    rig.piv_tool(&generate_9e(&["--pin-policy=always"]));
    rig.piv_tool(&["-a", "attest", "-s", "9e", "-o", "attest.pem"]);
    refused(&rig.sign_attested(SERIAL, "root.pem"), "attestation_pin_policy");
    // Garbage in place of the attestation: a clear refusal, no panic.
    std::fs::write(rig.dir.path().join("attest.pem"), "not a certificate").unwrap();
    let out = rig.sign_attested(SERIAL, "root.pem");
    assert!(!out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
#[ignore = "needs pcscd + vsmartcard-vpcd, as root, yubico-piv-tool and openssl; ./scripts/dev.sh test runs it (--include-ignored)"]
fn an_imported_software_key_cannot_be_attested_and_is_not_attested() {
    const SERIAL: u32 = 11223344;
    let rig = fresh_rig(0xA680, SERIAL);
    // The attacker's software key, imported into the card.
    let soft = p256::SecretKey::random(&mut rand_core::OsRng);
    std::fs::write(
        rig.dir.path().join("soft.pem"),
        soft.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
    )
    .unwrap();
    rig.piv_tool(&["-a", "import-key", "-s", "9e", "-i", "soft.pem", "--pin-policy=never"]);
    assert!(!rig.card.with_card(|c| c.key_generated()));
    let attest = rig.run("yubico-piv-tool", &["-a", "attest", "-s", "9e"]);
    assert!(
        !attest.status.success(),
        "an imported key was attested: {}",
        output_text(&attest)
    );
    // The provisioning-station mode refuses to certify it.
    let out = rig.sign_key_cert(
        "11223344",
        &["--from-key", "--attestation-root", "root.pem"],
        "cert.pem",
    );
    assert_refused(&out, "no attestation");
    assert!(!rig.dir.path().join("cert.pem").exists());

    // A vendor certifying it anyway (the old flow, no attestation): the server refuses it.
    use p256::pkcs8::EncodePublicKey;
    std::fs::write(
        rig.dir.path().join("pub.pem"),
        soft.public_key().to_public_key_pem(LineEnding::LF).unwrap(),
    )
    .unwrap();
    let out = rig.sign_key_cert(&SERIAL.to_string(), &["--public-key", "pub.pem"], "cert.pem");
    assert!(out.status.success(), "{}", output_text(&out));
    rig.piv_tool(&["-a", "import-certificate", "-s", "9e", "-i", "cert.pem"]);
    let rows = rig.keys("11223344");
    assert_eq!(rows[0]["proof"], "invalid", "{rows}");
    assert_eq!(rows[0]["reason"], "not_attested", "{rows}");
    assert_eq!(rows[0]["attested"], false, "{rows}");
}

#[test]
#[ignore = "needs pcscd + vsmartcard-vpcd, as root, yubico-piv-tool and openssl; ./scripts/dev.sh test runs it (--include-ignored)"]
fn a_valid_attestation_replayed_by_another_card_is_not_attested() {
    // Card A is a genuine, attested key; card B is a programmable card with its own
    // (software) key, certified for B's serial, replaying A's captured attestation.
    let vendor = VendorSigningKey::generate();
    let rig = rig(0xA6A0, |ca| {
        let a = SimKeySpec::generate("a", 55550001)
            .with_attestation(Some(SimAttestation::Device(ca.issue_device(55550001).unwrap())));
        let captured = a.attestation().expect("A attests");
        let b = SimKeySpec::generate("b", 55550002).with_attestation(Some(SimAttestation::Replay(captured)));
        VirtualCard::new(&provision_sim_key(b, &vendor))
    });
    std::fs::write(rig.dir.path().join("vendor.pub.pem"), vendor.public_key().to_pem()).unwrap();
    // The replayed attestation itself is genuine: openssl accepts its chain …
    rig.piv_tool(&["-a", "attest", "-s", "9e", "-o", "attest.pem"]);
    rig.piv_tool(&["-a", "read-certificate", "-s", "f9", "-o", "f9.pem"]);
    rig.openssl_verify();
    // … but it is for another serial and another key, so the server refuses card B.
    let rows = rig.keys("55550002");
    assert_eq!(rows[0]["proof"], "invalid", "{rows}");
    assert_eq!(rows[0]["reason"], "not_attested", "{rows}");
    // The same card passes without the attestation requirement: the refusal is the attestation's.
    let rows = rig.keys_with("55550002", &[]);
    assert_eq!(rows[0]["proof"], "verified", "{rows}");
    assert_eq!(rows[0]["attested"], false, "{rows}");
}

/// `keyfloat simulate card --unprovisioned --attestation-root-out root.pem` (the README's
/// way to try the recipe) in a child process; `yubico-piv-tool` generates the key, then
/// `ykman piv keys attest 9e -` and `ykman piv certificates export f9` read what `openssl
/// verify` accepts with the test root. ykman is `KEYFLOAT_YKMAN`, else the one beside
/// `KEYFLOAT_PYTHON` (`./scripts/dev.sh` installs yubikey-manager into that venv), else
/// `ykman` on PATH.
#[test]
#[ignore = "needs pcscd + vsmartcard-vpcd, as root, yubico-piv-tool, openssl and ykman; ./scripts/dev.sh test runs it (--include-ignored)"]
fn simulate_card_with_ykman_attests_and_openssl_accepts_the_chain() {
    let beside_python = std::env::var_os("KEYFLOAT_PYTHON")
        .map(|p| Path::new(&p).with_file_name("ykman"))
        .filter(|p| p.is_file())
        .and_then(|p| p.to_str().map(str::to_string));
    let ykman = std::env::var("KEYFLOAT_YKMAN")
        .ok()
        .or(beside_python)
        .unwrap_or_else(|| "ykman".into());
    let found = Path::new(&ykman).is_file()
        || std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|d| d.join(&ykman).is_file());
    assert!(
        found,
        "ykman missing: ./scripts/dev.sh install puts yubikey-manager in target/venv"
    );
    require_tools(&["yubico-piv-tool", "openssl"]).unwrap_or_else(|e| panic!("{e}"));
    require_pcscd().unwrap_or_else(|e| panic!("{e}"));
    let pcscd = PrivatePcscd::start(0xA6C0).expect("private pcscd");
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let vpcd = pcscd.vpcd_addr(0).to_string();
    let mut card = Piped::spawn(
        Command::new(KEYFLOAT)
            .args([
                "simulate",
                "card",
                "--serial",
                "36925814",
                "--vpcd",
                &vpcd,
                "--unprovisioned",
                "--attestation-root-out",
                "root.pem",
            ])
            .current_dir(dir)
            .stderr(std::process::Stdio::null()),
    );
    let first = card.line();
    assert!(first.contains("serial 36925814"), "{first}");

    let run = |program: &str, args: &[&str]| {
        let mut attempt = || {
            let mut c = Command::new(program);
            c.args(args)
                .env(CSOCK_ENV, pcscd.socket())
                .env("YKMAN_NO_EXLUSIVE", "1")
                .current_dir(dir);
            c
        };
        run_until(
            Duration::from_secs(15),
            format_args!("{program} {args:?} to succeed"),
            &mut attempt,
            |out| out.status.success(),
        )
    };
    run(
        "yubico-piv-tool",
        &generate_9e(&["--pin-policy=never", "--touch-policy=never"]),
    );
    let reader = pcscd.reader(0);
    let attest = run(&ykman, &["--reader", &reader, "piv", "keys", "attest", "9e", "-"]);
    assert!(String::from_utf8_lossy(&attest.stdout).starts_with("-----BEGIN CERTIFICATE-----"));
    std::fs::write(dir.join("attest.pem"), &attest.stdout).expect("write");
    run(
        &ykman,
        &["--reader", &reader, "piv", "certificates", "export", "f9", "f9.pem"],
    );
    let verify = run(
        "openssl",
        &["verify", "-CAfile", "root.pem", "-untrusted", "f9.pem", "attest.pem"],
    );
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains("attest.pem: OK"),
        "{}",
        output_text(&verify)
    );
    // The attested key is the one generate printed.
    let pubkey = |args: &[&str]| run("openssl", args).stdout;
    assert_eq!(
        pubkey(&["x509", "-in", "attest.pem", "-noout", "-pubkey"]),
        std::fs::read(dir.join("pub.pem")).expect("pub.pem")
    );

    card.finish("quit");
}
