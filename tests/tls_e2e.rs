//! HTTPS against the real binary with a throwaway test CA (rcgen): the official Python SDK
//! over HTTPS (`REQUESTS_CA_BUNDLE`), a SIGHUP certificate swap seen by a new connection
//! while an open one keeps working, mutual TLS, and no plain HTTP unless asked for.
#![allow(clippy::unwrap_used)]

mod server_support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keyfloat_testkit::serve::{listening, serve_command, spawn_until, START_LIMIT};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use server_support::{data_dir, http, python, wait_for, wait_key_state, wait_until, BIN};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A leaf for 127.0.0.1/localhost (server) or a client, written as `<stem>.pem/.key`.
fn leaf(ca: &Ca, cn: &str, client: bool, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    let mut p = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let (c, k) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// What each test starts from: the Python interpreter and a data directory holding the
/// certificate of a new CA named `ca_name` (`ca.pem`) and the server leaf "server-one" it
/// issued: (Python, directory, CA, certificate, key, CA file).
fn setup(ca_name: &str) -> (PathBuf, tempfile::TempDir, Ca, PathBuf, PathBuf, PathBuf) {
    let py = python();
    let dir = data_dir();
    let ca = ca(ca_name);
    let (cert, key) = leaf(&ca, "server-one", false, dir.path(), "server");
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, ca.cert.pem()).unwrap();
    (py, dir, ca, cert, key, ca_pem)
}

struct Tls {
    child: Child,
    https: String,
    http: Option<String>,
    data: PathBuf,
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `keyfloat serve` with `--tls-cert cert --tls-key key` and `extra`.
fn start_tls(data: &Path, cert: &Path, key: &Path, extra: &[&str]) -> Tls {
    let log = data.join("server.log");
    let mut cmd = serve_command(Path::new(BIN), data, extra);
    cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
    cmd.stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    let want_http = extra.contains(&"--http-listen");
    let (child, lines) = spawn_until(&mut cmd, Some(&log), START_LIMIT, |l| {
        listening(l, "https").is_some() && (!want_http || listening(l, "http").is_some())
    });
    Tls {
        child,
        https: listening(&lines, "https").unwrap(),
        http: listening(&lines, "http"),
        data: data.to_path_buf(),
    }
}

/// Python `ssl` probe: prints `STATUS CN` per request. `hold` = keep the connection,
/// wait for a line on stdin, reuse it once, then open a fresh one.
const PROBE: &str = r#"
import http.client, ssl, sys
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cert = sys.argv[4] if len(sys.argv) > 5 else None
key = sys.argv[5] if len(sys.argv) > 5 else None
hold = sys.argv[-1] == "hold"
ctx = ssl.create_default_context(cafile=ca)
if cert:
    ctx.load_cert_chain(cert, key)
def cn(conn):
    return dict(x[0] for x in conn.sock.getpeercert()["subject"])["commonName"]
def get(conn):
    conn.request("GET", "/api/v4/health")
    r = conn.getresponse(); r.read()
    print(r.status, cn(conn), flush=True)
c = http.client.HTTPSConnection(host, port, context=ctx)
get(c)
if hold:
    sys.stdin.readline()
    get(c)
    get(http.client.HTTPSConnection(host, port, context=ctx))
"#;

fn probe(py: &Path, addr: &str, ca: &Path, client: Option<(&Path, &Path)>) -> Result<String, String> {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut cmd = Command::new(py);
    cmd.args(["-c", PROBE, host, port]).arg(ca);
    if let Some((c, k)) = client {
        cmd.arg(c).arg(k).arg("once");
    }
    let out = cmd.output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The official SDK's flows over HTTPS, the CA given through `REQUESTS_CA_BUNDLE`; plain
/// HTTP only on the `--http-listen` address asked for.
#[ignore = "needs the licensespring Python SDK; ./scripts/dev.sh test runs it (--include-ignored)"]
#[test]
fn the_python_sdk_runs_over_https() {
    let (py, dir, _ca, cert, key, ca_pem) = setup("keyfloat test CA");
    let s = start_tls(dir.path(), &cert, &key, &["--http-listen", "127.0.0.1:0"]);
    // Plain HTTP on the TLS port is not served.
    assert!(http(&s.https, "GET", "/api/v4/health", None, None).map_or(true, |(st, _)| st != 200));
    let plain = s.http.clone().unwrap();
    // A key-bound product can only be added once the simulated key has been validated.
    wait_key_state(&plain, "valid", None);
    // Products through the plain address (asked for), the SDK through HTTPS.
    for (product, hw) in [("plain", false), ("hwbased", true)] {
        let (st, body) = http(
            &plain,
            "GET",
            &format!(
                "/api/v4/addProduct?product={product}&licenseKey=KEY-{product}&isHWKeyReq={hw}&floatingUsers=5&maxConsumptions=1000&maxBorrowTime=24&features=%5B%7B%22code%22%3A%22cf%22%2C%22kind%22%3A%22consumption%22%2C%22max_consumption%22%3A1000%7D%2C%7B%22code%22%3A%22fl%22%2C%22kind%22%3A%22activation%22%2C%22floating_users%22%3A1%7D%5D"
            ),
            None,
            None,
        )
        .unwrap();
        assert_eq!(st, 200, "{body}");
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/fs_flow.py");
    let sdk = |ca_bundle: &Path| {
        Command::new(&py)
            .arg(script)
            .arg(&s.https)
            .arg("plugged")
            .env("KF_PROTOCOL", "https")
            .env("REQUESTS_CA_BUNDLE", ca_bundle)
            .env_remove("KF_USER")
            .env_remove("KF_PASSWORD")
            .output()
            .unwrap()
    };
    let out = sdk(&ca_pem);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("OK plugged"),
        "SDK over HTTPS failed\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(s.data.join("server.log")).unwrap_or_default()
    );
    // With another CA the SDK's requests refuse the certificate.
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, self::ca("another CA").cert.pem()).unwrap();
    let out = sdk(&other);
    assert!(!out.status.success(), "an unverified certificate was accepted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("CERTIFICATE_VERIFY_FAILED"));
}

/// SIGHUP swaps the certificate: an open connection keeps working, a new one sees the
/// new certificate. A broken file on SIGHUP keeps the one in force.
#[ignore = "needs the licensespring Python SDK; ./scripts/dev.sh test runs it (--include-ignored)"]
#[test]
fn sighup_swaps_the_certificate_without_dropping_connections() {
    let (py, dir, ca, cert, key, ca_pem) = setup("keyfloat test CA");
    let s = start_tls(dir.path(), &cert, &key, &[]);
    assert_eq!(probe(&py, &s.https, &ca_pem, None).unwrap(), "200 server-one");
    let (host, port) = s.https.rsplit_once(':').unwrap();
    let mut held = Command::new(&py)
        .args(["-c", PROBE, host, port])
        .arg(&ca_pem)
        .arg("hold")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(held.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "200 server-one");
    // Swap the files, then SIGHUP.
    leaf(&ca, "server-two", false, dir.path(), "server");
    let pid = s.child.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    wait_for(Duration::from_secs(10), "the reloaded certificate", || {
        probe(&py, &s.https, &ca_pem, None).and_then(|seen| if seen == "200 server-two" { Ok(()) } else { Err(seen) })
    });
    writeln!(held.stdin.take().unwrap(), "go").unwrap();
    assert_eq!(
        lines.next().unwrap().unwrap(),
        "200 server-one",
        "the open connection kept working"
    );
    assert_eq!(
        lines.next().unwrap().unwrap(),
        "200 server-two",
        "a new connection sees the new certificate"
    );
    assert!(held.wait().unwrap().success());
    // A broken key on SIGHUP: the server keeps serving the certificate in force.
    std::fs::write(&key, "not a key").unwrap();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let log = s.data.join("server.log");
    wait_until(Duration::from_secs(10), "TLS reload failed in the log", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("TLS reload failed"))
    });
    assert_eq!(probe(&py, &s.https, &ca_pem, None).unwrap(), "200 server-two");
}

/// Mutual TLS: no client certificate, or one from another CA, fails the handshake; one
/// from the configured CA is served.
#[ignore = "needs the licensespring Python SDK; ./scripts/dev.sh test runs it (--include-ignored)"]
#[test]
fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let (py, dir, _server_ca, cert, key, ca_pem) = setup("server CA");
    let client_ca = ca("client CA");
    let rogue_ca = ca("rogue CA");
    let (good_c, good_k) = leaf(&client_ca, "client", true, dir.path(), "client");
    let (bad_c, bad_k) = leaf(&rogue_ca, "client", true, dir.path(), "rogue");
    let client_ca_pem = dir.path().join("client-ca.pem");
    std::fs::write(&client_ca_pem, client_ca.cert.pem()).unwrap();
    let s = start_tls(
        dir.path(),
        &cert,
        &key,
        &["--tls-client-ca", client_ca_pem.to_str().unwrap()],
    );
    assert!(probe(&py, &s.https, &ca_pem, None).is_err(), "no client certificate");
    assert!(
        probe(&py, &s.https, &ca_pem, Some((&bad_c, &bad_k))).is_err(),
        "rogue CA"
    );
    assert_eq!(
        probe(&py, &s.https, &ca_pem, Some((&good_c, &good_k))).unwrap(),
        "200 server-one"
    );
}
