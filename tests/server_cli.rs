//! `keyfloat user` and `keyfloat serve` as an operator uses them: accounts from stdin,
//! password change, a YAML config with the spec's camelCase keys, graceful shutdown that
//! keeps licenses and registrations.
#![allow(clippy::unwrap_used)]

mod server_support;

use std::io::Write;
use std::process::{Command, Stdio};

use server_support::{basic, data_dir, start, BIN};

fn user(args: &[&str], data: &std::path::Path, stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new(BIN)
        .arg("user")
        .args(args)
        .arg("--data-dir")
        .arg(data.join("db"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    keyfloat_testkit::process::outcome(&child.wait_with_output().unwrap())
}

#[test]
fn accounts_config_file_and_graceful_restart() {
    let dir = data_dir();
    let d = dir.path();
    let (ok, out) = user(&["add", "--username", "root", "--role", "admin"], d, Some("first-pw\n"));
    assert!(ok, "{out}");
    let (ok, out) = user(
        &["add", "--username", "root", "--role", "admin", "--password", "x"],
        d,
        None,
    );
    assert!(!ok && out.contains("already exists"), "{out}");
    let (ok, out) = user(&["add", "--username", "ann", "--password", "ann-pw"], d, None);
    assert!(ok, "{out}");
    let (ok, out) = user(&["passwd", "--username", "root"], d, Some("second-pw\n"));
    assert!(ok, "{out}");
    let (ok, out) = user(&["list"], d, None);
    assert!(ok && out.contains("root\tadmin") && out.contains("ann\tuser"), "{out}");

    let config = d.join("config.yaml");
    std::fs::write(
        &config,
        "userAuthentication: true\ncrashIfNoHardwareKey: false\nrevalidateSecs: 30\n",
    )
    .unwrap();
    let s = start(d, &["--config", config.to_str().unwrap()]);
    assert_eq!(s.call("GET", "/auth", None, Some(&basic("root", "first-pw"))).0, 401);
    let (st, body) = s.call("GET", "/auth", None, Some(&basic("root", "second-pw")));
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let admin = format!("Bearer {}", v["token"].as_str().unwrap());
    let (st, body) = s.call("GET", "/auth", None, Some(&basic("ann", "ann-pw")));
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ann = format!("Bearer {}", v["token"].as_str().unwrap());
    // The config file turned authentication mode on.
    assert_eq!(s.call("GET", "/api/v4/license", None, None).0, 401);
    assert_eq!(
        s.call("GET", "/api/v4/addProduct?product=p&licenseKey=K", None, Some(&ann))
            .0,
        403
    );
    s.json(
        "GET",
        "/api/v4/addProduct?product=p&licenseKey=K&maxConsumptions=9",
        None,
        Some(&admin),
    );
    s.json(
        "POST",
        "/api/v4/register",
        Some(r#"{"product":"p","user":"ws-1"}"#),
        Some(&ann),
    );
    s.json(
        "POST",
        "/api/v4/add_consumption",
        Some(r#"{"product":"p","consumptions":4}"#),
        Some(&ann),
    );
    assert_eq!(s.stop(), Some(0));

    // Shutdown deactivated nothing; tokens survive a restart (same secret).
    let s = start(d, &["--config", config.to_str().unwrap()]);
    let list = s.json("GET", "/api/v4/license", None, Some(&ann));
    assert_eq!(list[0]["total_consumptions"], 4);
    assert_eq!(list[0]["floating_in_use_devices"], 1);
    assert_eq!(s.stop(), Some(0));
}
