//! `keyfloat demo` end to end: start it on a free port, read the banner it prints, and run
//! the printed `curl` lines (the seed page's flow) over HTTP — including the unplug that
//! makes `add_feature_consumption` answer the page's exact error body.
#![allow(clippy::unwrap_used)]

mod server_support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keyfloat_testkit::serve::spawn_until;
use serde_json::{json, Value};
use server_support::{basic, free_port, http, login, wait_for, BIN};

struct Demo {
    child: Child,
    base: String,
    banner: Vec<String>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_demo(data: &std::path::Path, global: &[&str]) -> Demo {
    let listen = format!("127.0.0.1:{}", free_port());
    let log = data.with_extension("log");
    let mut cmd = Command::new(BIN);
    cmd.args(global)
        .args(["demo", "--listen", &listen, "--data-dir"])
        .arg(data)
        .env("RUST_LOG", "info")
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    let (child, mut banner) = spawn_until(&mut cmd, Some(&log), Duration::from_secs(60), |lines| {
        lines.last().is_some_and(|l| l.starts_with("listening on http://"))
    });
    banner.pop();
    Demo {
        child,
        base: listen,
        banner,
    }
}

/// One printed `curl` line, understood well enough to replay it.
#[derive(Debug)]
struct Curl {
    method: &'static str,
    path: String,
    body: Option<String>,
    basic: Option<(String, String)>,
    bearer: bool,
}

fn parse_curl(line: &str) -> Option<Curl> {
    let start = line.find("curl ")?;
    let cmd = &line[start..];
    let url_at = cmd.find("\"$KF/")?;
    let path = cmd[url_at + 4..].split('"').next()?.to_owned();
    let body = cmd
        .find("-d '")
        .map(|i| cmd[i + 4..].split('\'').next().unwrap_or_default().to_owned());
    let basic = cmd.find("-u '").map(|i| {
        let creds = cmd[i + 4..].split('\'').next().unwrap_or_default();
        let (u, p) = creds.split_once(':').unwrap_or((creds, ""));
        (u.to_owned(), p.to_owned())
    });
    let method = if cmd.contains("-X POST") || body.is_some() {
        "POST"
    } else {
        "GET"
    };
    Some(Curl {
        method,
        path,
        body,
        basic,
        bearer: cmd.contains("Bearer $TOKEN"),
    })
}

fn wait_key(base: &str, token: &str, want: &str) {
    wait_for(Duration::from_secs(10), format_args!("key state {want}"), || {
        let (s, b) = http(base, "GET", "/api/v4/health", None, Some(&format!("Bearer {token}"))).unwrap();
        assert_eq!(s, 200, "{b}");
        let v: Value = serde_json::from_str(&b).unwrap();
        if v["key"]["state"] == want {
            Ok(())
        } else {
            Err(v)
        }
    });
}

/// `/metrics` needs a token in authentication mode (the demo's mode).
fn wait_metric(base: &str, token: &str, line: &str) {
    wait_for(Duration::from_secs(10), format_args!("metrics line {line:?}"), || {
        let (s, text) = http(base, "GET", "/metrics", None, Some(&format!("Bearer {token}"))).unwrap();
        assert_eq!(s, 200, "{text}");
        if text.lines().any(|l| l == line) {
            Ok(())
        } else {
            Err(text)
        }
    });
}

#[test]
fn demo_prints_a_seed_flow_that_works_and_unplug_refuses_with_the_page_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("demo");
    let demo = start_demo(&data, &[]);
    let text = demo.banner.join("\n");
    assert!(text.contains("admin login: admin / demo-admin"), "{text}");
    assert!(text.contains(&format!("export KF=http://{}", demo.base)), "{text}");

    // The demo vendor key: generated now, private to its owner.
    let key = data.join("demo-vendor-key.pem");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{}", key.display());

    let curls: Vec<Curl> = demo.banner.iter().filter_map(|l| parse_curl(l)).collect();
    assert!(curls.len() >= 8, "{curls:#?}");

    let mut token = String::new();
    let mut answers: Vec<(String, u16, Value)> = Vec::new();
    let mut raws: Vec<(String, String)> = Vec::new();
    for c in &curls {
        if let Some((u, p)) = &c.basic {
            let (s, b) = http(&demo.base, "GET", &c.path, None, Some(&basic(u, p))).unwrap();
            assert_eq!(s, 200, "login: {b}");
            let v: Value = serde_json::from_str(&b).unwrap();
            assert_eq!(v["message"], "Login successful");
            token = v["token"].as_str().unwrap().to_owned();
            // The simulated key is validated by the monitor shortly after start.
            wait_key(&demo.base, &token, "valid");
            continue;
        }
        let auth = c.bearer.then(|| format!("Bearer {token}"));
        let (s, b) = http(&demo.base, c.method, &c.path, c.body.as_deref(), auth.as_deref()).unwrap();
        let v: Value = serde_json::from_str(&b).unwrap_or(Value::String(b.clone()));
        if c.path.ends_with("/sim/unplug") {
            wait_key(&demo.base, &token, "absent");
            // The key-event watcher polls the cell: let it see the pull before the replug.
            wait_metric(&demo.base, &token, "keyfloat_key_events_total{event=\"pulled\"} 1");
        }
        if c.path.ends_with("/sim/plug") {
            wait_key(&demo.base, &token, "valid");
        }
        answers.push((c.path.clone(), s, v));
        raws.push((c.path.clone(), b));
    }
    let find = |path: &str, nth: usize| -> &(String, u16, Value) {
        answers
            .iter()
            .filter(|(p, _, _)| p == path)
            .nth(nth)
            .unwrap_or_else(|| panic!("no answer #{nth} for {path}: {answers:#?}"))
    };
    let (_, s, v) = find("/api/v4/add_consumption", 0);
    assert_eq!((*s, &v["total_consumptions"]), (200, &json!(2)), "{v}");
    let (_, s, v) = find("/api/v4/add_feature_consumption", 0);
    assert_eq!((*s, &v["total_consumptions"]), (200, &json!(1)), "{v}");
    let (_, s, v) = find("/api/v4/register", 0);
    assert_eq!(*s, 200, "{v}");
    assert!(v["license_json"].is_string(), "{v}");
    let (_, s, v) = find("/api/v4/featureRegister", 0);
    assert_eq!(*s, 200, "{v}");
    assert_eq!(
        (&v["product"], &v["feature"]),
        (&json!("hwbased"), &json!("consFeature2"))
    );
    let (_, s, v) = find("/api/v4/add_feature_consumption", 1);
    assert_eq!(*s, 400);
    assert_eq!(
        v,
        &json!({"code":"hardware_key_not_accessible","message":"No available valid hardware key to perform the action: adding feature consumption","status":400})
    );
    // Byte for byte as on the seed page.
    let raw = raws
        .iter()
        .filter(|(p, _)| p == "/api/v4/add_feature_consumption")
        .nth(1)
        .unwrap();
    assert_eq!(
        raw.1,
        r#"{"code":"hardware_key_not_accessible","message":"No available valid hardware key to perform the action: adding feature consumption","status":400}"#
    );
    let (_, s, v) = find("/api/v4/register", 1);
    assert_eq!(*s, 200, "plain license must keep working without the key: {v}");

    // After the replug the key-bound license serves again, and the refusal was recorded.
    let bearer = format!("Bearer {token}");
    let (s, b) = http(
        &demo.base,
        "POST",
        "/api/v4/add_feature_consumption",
        Some(r#"{"product":"hwbased","feature":"consFeature2","consumptions":1}"#),
        Some(&bearer),
    )
    .unwrap();
    assert_eq!(s, 200, "{b}");
    assert_eq!(http(&demo.base, "GET", "/metrics", None, None).unwrap().0, 401);
    let (s, metrics) = http(&demo.base, "GET", "/metrics", None, Some(&bearer)).unwrap();
    assert_eq!(s, 200);
    assert!(
        metrics.contains("keyfloat_gate_refusals_total{route=\"/api/v4/add_feature_consumption\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keyfloat_key_events_total{event=\"pulled\"} 1"),
        "{metrics}"
    );
    let (s, b) = http(&demo.base, "GET", "/api/v4/audit?limit=100", None, Some(&bearer)).unwrap();
    assert_eq!(s, 200, "{b}");
    let audit: Value = serde_json::from_str(&b).unwrap();
    let kinds: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    for k in ["key_plugged", "key_validated", "key_pulled", "license_added"] {
        assert!(kinds.contains(&k), "audit lacks {k}: {kinds:?}");
    }
    // The page is served and offers the simulated key's buttons.
    let (s, page) = http(&demo.base, "GET", "/", None, None).unwrap();
    assert_eq!(s, 200);
    assert!(page.contains("Pull key") && page.contains("Plug key"));
}

#[test]
fn demo_refuses_a_data_dir_that_has_data() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("something"), "x").unwrap();
    let out = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
}

#[test]
fn log_json_gives_one_json_line_per_key_event_and_refused_action() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("demo");
    let demo = start_demo(&data, &["--log-json"]);
    let token = login(&demo.base, "admin", "demo-admin");
    let bearer = format!("Bearer {token}");
    wait_key(&demo.base, &token, "valid");
    let (s, _) = http(&demo.base, "POST", "/api/v4/sim/unplug", None, Some(&bearer)).unwrap();
    assert_eq!(s, 200);
    wait_key(&demo.base, &token, "absent");
    let (s, _) = http(
        &demo.base,
        "POST",
        "/api/v4/add_consumption",
        Some(r#"{"product":"hwbased","consumptions":1}"#),
        Some(&bearer),
    )
    .unwrap();
    assert_eq!(s, 400);
    let log = data.with_extension("log");
    wait_for(
        Duration::from_secs(10),
        "the key event and the refusal in the log",
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<Value> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
                .collect();
            let pulled = lines
                .iter()
                .any(|v| v["fields"]["event"] == "pulled" && v["fields"]["serial"] == "12345678");
            let refused = lines.iter().any(|v| {
                v["fields"]["code"] == "hardware_key_not_accessible"
                    && v["fields"]["route"] == "/api/v4/add_consumption"
            });
            if pulled && refused {
                Ok(())
            } else {
                Err(text)
            }
        },
    );
}
