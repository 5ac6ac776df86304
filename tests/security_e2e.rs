//! Issue 13 attacks against the real `keyfloat serve` binary: token revocation through
//! the CLI while the server runs, a wrong-password flood, half-open connections, SIGTERM
//! with a half-sent request, file modes under umask 000, forged log lines and a refusal
//! flood, and `keyfloat audit verify` after an edit with `sqlite3`.
#![allow(clippy::unwrap_used)]

mod server_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keyfloat_testkit::serve::{listening, spawn_until, START_LIMIT};
use server_support::{add_user, basic, data_dir, free_port, http, start, wait_exit, wait_until, Server, BIN};

fn token(s: &Server, user: &str, password: &str) -> String {
    let v = s.json("GET", "/auth", None, Some(&basic(user, password)));
    v["token"].as_str().unwrap().to_owned()
}

fn status_with(s: &Server, token: &str) -> u16 {
    s.call("GET", "/api/v4/license", None, Some(&format!("Bearer {token}")))
        .0
}

/// Polls (≤ 5 s; the server re-reads accounts every second) until `token` is refused.
fn refused_soon(s: &Server, token: &str, what: &str) {
    wait_until(Duration::from_secs(5), what, || status_with(s, token) == 401);
}

fn cli(args: &[&str], data: &Path) -> std::process::Output {
    let out = Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    out
}

/// `keyfloat user revoke|passwd|delete` against the data dir of a running server: the
/// tokens stop working within the refresh interval, without a restart.
#[test]
fn cli_account_changes_revoke_tokens_of_a_running_server() {
    let dir = data_dir();
    add_user(dir.path(), "ops", "pw-1", "admin");
    let s = start(dir.path(), &["--user-authentication"]);
    let db = dir.path().join("db");

    let t = token(&s, "ops", "pw-1");
    assert_eq!(status_with(&s, &t), 200);
    let out = cli(&["user", "revoke", "ops"], &db);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    refused_soon(&s, &t, "the revoked token to be refused");

    let t = token(&s, "ops", "pw-1");
    let out = cli(&["user", "passwd", "--username", "ops", "--password", "pw-2"], &db);
    assert!(out.status.success());
    refused_soon(&s, &t, "the token to be refused after a password change");
    let t = token(&s, "ops", "pw-2");

    let out = cli(&["user", "delete", "--username", "ops"], &db);
    assert!(out.status.success());
    refused_soon(&s, &t, "the token to be refused after the account's deletion");
    assert_eq!(s.call("GET", "/auth", None, Some(&basic("ops", "pw-2"))).0, 401);
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

/// One request from `source` over a fresh connection; returns the status.
async fn request_from(source: std::net::IpAddr, addr: std::net::SocketAddr, req: &[u8]) -> std::io::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(std::net::SocketAddr::new(source, 0))?;
    let mut s = sock.connect(addr).await?;
    s.write_all(req).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))
}

/// The login flood: 32 concurrent wrong-password clients for 10 s against the
/// admin account, from another address than the admin's. RSS stays ≤ 64 MiB, the
/// attackers get 429s, and the admin's logins and health keep answering (latencies are
/// printed; they are measured, not asserted).
#[test]
fn a_wrong_password_flood_stays_bounded() {
    let dir = data_dir();
    add_user(dir.path(), "admin", "right", "admin");
    let s = start(dir.path(), &["--user-authentication"]);
    let pid = s.child.id();
    let addr: std::net::SocketAddr = s.addr.parse().unwrap();
    let good_token = token(&s, "admin", "right");
    let rss_before = rss_kib(pid);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (attacks, logins, healths, max_rss) = rt.block_on(async move {
        let end = Instant::now() + Duration::from_secs(10);
        let attacker: std::net::IpAddr = "127.0.0.2".parse().unwrap();
        let wrong = format!(
            "GET /auth HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {}\r\n\r\n",
            basic("admin", "guess")
        );
        let attackers: Vec<_> = (0..32)
            .map(|_| {
                let wrong = wrong.clone();
                tokio::spawn(async move {
                    let mut counts = std::collections::BTreeMap::<u16, u64>::new();
                    while Instant::now() < end {
                        let s = request_from(attacker, addr, wrong.as_bytes()).await.unwrap_or(0);
                        *counts.entry(s).or_default() += 1;
                    }
                    counts
                })
            })
            .collect();
        let owner: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let right = format!(
            "GET /auth HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {}\r\n\r\n",
            basic("admin", "right")
        );
        let health = format!(
            "GET /api/v4/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {good_token}\r\n\r\n"
        );
        let legit = tokio::spawn(async move {
            let (mut logins, mut healths) = (Vec::new(), Vec::new());
            while Instant::now() < end {
                let t = Instant::now();
                assert_eq!(request_from(owner, addr, right.as_bytes()).await.unwrap(), 200);
                logins.push(t.elapsed());
                let t = Instant::now();
                assert_eq!(request_from(owner, addr, health.as_bytes()).await.unwrap(), 200);
                healths.push(t.elapsed());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (logins, healths)
        });
        let sampler = tokio::spawn(async move {
            let mut max = 0;
            while Instant::now() < end {
                max = max.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            max
        });
        let mut total = std::collections::BTreeMap::<u16, u64>::new();
        for a in attackers {
            for (k, v) in a.await.unwrap() {
                *total.entry(k).or_default() += v;
            }
        }
        let (logins, healths) = legit.await.unwrap();
        (total, logins, healths, sampler.await.unwrap())
    });
    let (mut logins, mut healths) = (logins, healths);
    eprintln!(
        "login flood: attackers {attacks:?}; RSS {rss_before} KiB before, max {max_rss} KiB; \
         owner logins n={} p50={:?} p99={:?}; health n={} p50={:?} p99={:?}",
        logins.len(),
        percentile(&mut logins, 0.5),
        percentile(&mut logins, 0.99),
        healths.len(),
        percentile(&mut healths, 0.5),
        percentile(&mut healths, 0.99),
    );
    assert!(max_rss <= 64 * 1024, "RSS reached {max_rss} KiB");
    assert!(attacks.get(&429).copied().unwrap_or(0) > 100, "{attacks:?}");
    assert!(!attacks.contains_key(&200), "{attacks:?}");
    assert!(!attacks.contains_key(&500) && !attacks.contains_key(&0), "{attacks:?}");
    assert!(logins.len() >= 10, "the owner kept logging in");
    // Still serving after the flood.
    assert_eq!(status_with(&s, &token(&s, "admin", "right")), 200);
}

/// 10,000 half-open connections (connected, nothing sent) do not keep a new client out;
/// once the header timeout passes they are closed.
#[test]
fn ten_thousand_half_open_connections_do_not_lock_out_a_new_client() {
    let dir = data_dir();
    let s = start(dir.path(), &["--header-timeout-secs", "3"]);
    let mut held = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        held.push(TcpStream::connect(&s.addr).unwrap());
    }
    let t = Instant::now();
    let (status, _) = http(&s.addr, "GET", "/api/v4/health", None, None).unwrap();
    let took = t.elapsed();
    eprintln!(
        "new client answered in {took:?} beside {} half-open connections",
        held.len()
    );
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(1), "{took:?}");
    // The held ones are cut off by the header timeout.
    let probe = &mut held[0];
    probe.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(probe.read(&mut buf), Ok(0) | Err(_)), "not closed");
}

/// A client holding a half-sent request: SIGTERM still ends the server within the drain
/// time, and what was acknowledged before is on disk.
#[test]
fn sigterm_finishes_within_the_drain_time_whatever_the_clients_do() {
    let dir = data_dir();
    let s = start(
        dir.path(),
        &[
            "--drain-secs",
            "2",
            "--header-timeout-secs",
            "60",
            "--body-timeout-secs",
            "60",
        ],
    );
    s.json("GET", "/api/v4/addProduct?product=kept&licenseKey=K", None, None);
    let mut half = TcpStream::connect(&s.addr).unwrap();
    half.write_all(b"POST /api/v4/register HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"product\":")
        .unwrap();
    let mut silent = TcpStream::connect(&s.addr).unwrap();
    silent.write_all(b"GET /api/v4/hea").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let code = s.stop();
    let took = t.elapsed();
    eprintln!("SIGTERM with two half-sent requests: exit {code:?} after {took:?}");
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(8), "{took:?}");
    let s = start(dir.path(), &[]);
    let list = s.json("GET", "/api/v4/license", None, None);
    assert!(list.to_string().contains("\"kept\""), "{list}");
}

/// Starts `keyfloat serve` under `umask 000`.
fn start_with_umask_000(data: &Path) -> (std::process::Child, String) {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--key-backend", "sim", "--data-dir"])
        .arg(data)
        .stderr(Stdio::null());
    let (child, lines) = spawn_until(&mut cmd, None, START_LIMIT, |l| listening(l, "http").is_some());
    (child, listening(&lines, "http").unwrap())
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Under umask 000 the data dir is 0700 and the database, WAL, shared memory and secret
/// 0600; `doctor --data-dir` flags a file made readable again.
#[test]
fn data_files_are_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (mut child, addr) = start_with_umask_000(&data);
    let (s, _) = http(&addr, "GET", "/api/v4/addProduct?product=p&licenseKey=K", None, None).unwrap();
    assert_eq!(s, 200);
    assert_eq!(mode(&data), 0o700);
    for f in ["keyfloat.db", "keyfloat.db-wal", "keyfloat.db-shm", "jwt-secret"] {
        let p = data.join(f);
        assert!(p.exists(), "{f} missing");
        assert_eq!(mode(&p), 0o600, "{f}");
    }
    let _ = child.kill();
    let _ = child.wait();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(data.join("keyfloat.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(BIN)
        .args(["doctor", "--data-dir"])
        .arg(&data)
        .env("PCSCLITE_CSOCK_NAME", tmp.path().join("no-pcscd"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("data_dir_permissions") && text.contains("644"), "{text}");
}

/// A product code carrying `\n` cannot forge a log line, and a flood of refused requests
/// writes a bounded number of lines that count what they suppressed.
#[test]
fn logs_escape_values_and_throttle_refusals() {
    let dir = data_dir();
    add_user(dir.path(), "admin", "pw", "admin");
    let s = start(dir.path(), &["--user-authentication"]);
    let t = token(&s, "admin", "pw");
    let forged = "evil%0A2031-01-01T00:00:00.000000Z%20%20INFO%20keyfloat:%20FORGED%20admin%20login";
    let (st, _) = s.call(
        "GET",
        &format!("/api/v4/addProduct?product={forged}&licenseKey=K"),
        None,
        Some(&format!("Bearer {t}")),
    );
    assert_eq!(st, 200);
    let t0 = Instant::now();
    for _ in 0..2_000 {
        assert_eq!(s.call("GET", "/api/v4/license", None, Some("Bearer nope")).0, 401);
    }
    let secs = t0.elapsed().as_secs() + 1;
    std::thread::sleep(Duration::from_millis(1100));
    // One more, admitted with the count of the suppressed ones.
    assert_eq!(s.call("GET", "/api/v4/license", None, None).0, 401);
    std::thread::sleep(Duration::from_millis(200));
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(
        !log.lines().any(|l| l.starts_with("2031-01-01")),
        "a forged line:\n{log}"
    );
    assert!(log.contains("evil\\n2031"), "the value is logged escaped");
    let refused = log.lines().filter(|l| l.contains("request refused")).count() as u64;
    eprintln!("2000 refused requests in ~{secs} s wrote {refused} log lines");
    assert!(refused <= 20 * (secs + 2), "{refused} lines");
    assert!(log.contains("suppressed="), "the suppressed count is logged");
}

/// `keyfloat audit verify` passes on an untouched database and names the record edited
/// with `sqlite3`; `audit export` writes every record as a JSON line.
#[test]
fn audit_verify_names_a_record_edited_with_sqlite3() {
    let dir = data_dir();
    let s = start(dir.path(), &[]);
    for p in ["a", "b", "c"] {
        s.json(
            "GET",
            &format!("/api/v4/addProduct?product={p}&licenseKey=K"),
            None,
            None,
        );
    }
    assert_eq!(s.stop(), Some(0));
    let db = dir.path().join("db");
    let out = cli(&["audit", "verify"], &db);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("intact"), "{text}");
    let out = cli(&["audit", "export"], &db);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 3, "{lines:?}");
    let victim = lines.iter().find(|l| l["kind"] == "license_added").unwrap()["id"]
        .as_i64()
        .unwrap();
    let edit = Command::new("sqlite3")
        .arg(db.join("keyfloat.db"))
        .arg(format!(
            "UPDATE audit SET detail = 'nothing to see' WHERE id = {victim}"
        ))
        .status()
        .unwrap();
    assert!(edit.success());
    let out = cli(&["audit", "verify"], &db);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("record {victim}")), "{text}");
    let _ = wait_exit;
}

/// `/metrics` in authentication mode: refused without a token, served with the dedicated
/// `--metrics-token`, served without any token on the private `--metrics-listen` address,
/// and without per-license series when `--metrics-license-labels false`.
#[test]
fn metrics_access_is_configurable() {
    let dir = data_dir();
    add_user(dir.path(), "admin", "pw", "admin");
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let s = start(
        dir.path(),
        &[
            "--user-authentication",
            "--metrics-token",
            "scrape-s3cret",
            "--metrics-listen",
            &metrics_addr,
            "--metrics-license-labels",
            "false",
        ],
    );
    let t = token(&s, "admin", "pw");
    s.json(
        "GET",
        "/api/v4/addProduct?product=hidden-product&licenseKey=K",
        None,
        Some(&format!("Bearer {t}")),
    );
    assert_eq!(s.call("GET", "/metrics", None, None).0, 401);
    assert_eq!(s.call("GET", "/metrics", None, Some("Bearer wrong")).0, 401);
    let (st, body) = s.call("GET", "/metrics", None, Some("Bearer scrape-s3cret"));
    assert_eq!(st, 200);
    assert!(body.contains("keyfloat_key_valid"), "{body}");
    assert!(!body.contains("hidden-product"), "license labels are off: {body}");
    let (st, body) = http(&metrics_addr, "GET", "/metrics", None, None).unwrap();
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("keyfloat_key_valid"));
    // The metrics address serves nothing else.
    assert_eq!(
        http(&metrics_addr, "GET", "/api/v4/license", None, None).unwrap().0,
        404
    );
}

/// The first attack, as reported: a token from `/auth` without authentication
/// (any credentials, admin) on the same data dir restarted with `--user-authentication true`.
#[test]
fn a_no_auth_token_is_refused_after_a_restart_with_authentication() {
    let dir = data_dir();
    let s = start(dir.path(), &[]);
    let open = token(&s, "admin", "anything");
    assert_eq!(s.stop(), Some(0));
    add_user(dir.path(), "admin", "real", "admin");
    let s = start(dir.path(), &["--user-authentication", "true"]);
    assert_eq!(status_with(&s, &open), 401);
    let (st, _) = s.call(
        "GET",
        "/api/v4/addProduct?product=p&licenseKey=K",
        None,
        Some(&format!("Bearer {open}")),
    );
    assert_eq!(st, 401);
    assert_eq!(status_with(&s, &token(&s, "admin", "real")), 200);
}
