//! One blocking HTTP/1.1 client for tests, over loopback: ureq without TLS. Statuses come
//! back as numbers (a 4xx is an answer, not an error); bodies as text.

use std::io;
use std::time::Duration;

use base64::Engine;

/// The default limit on one whole request (connect, send, answer).
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// One request to `http://{addr}{path}` with a JSON content type; `auth` is a full
/// `Authorization` header value. A connection refused or reset is an `Err`.
pub fn http(addr: &str, method: &str, path: &str, body: Option<&str>, auth: Option<&str>) -> io::Result<(u16, String)> {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    send(addr, method, path, &headers, body, TIMEOUT)
}

/// Waits (≤ 10 s) until `GET /api/v4/health` at `addr` shows the key state `want` (e.g.
/// `valid`: only then can a key-bound product be added).
pub fn wait_key_state(addr: &str, want: &str, auth: Option<&str>) {
    crate::wait_for(
        Duration::from_secs(10),
        format_args!("key state {want} at {addr}"),
        || {
            let (status, body) = http(addr, "GET", "/api/v4/health", None, auth).map_err(|e| e.to_string())?;
            let health: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{status} {e}: {body}"))?;
            if status < 300 && health["key"]["state"] == want {
                Ok(())
            } else {
                Err(format!("{status} {body}"))
            }
        },
    )
}

/// One request with the given headers and limit; answers `(status, body as text)`.
pub fn send(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let mut builder = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let sent = match body {
        Some(b) => agent.run(builder.body(b.as_bytes().to_vec()).map_err(io::Error::other)?),
        None => agent.run(builder.body(()).map_err(io::Error::other)?),
    };
    let mut res = sent.map_err(io::Error::other)?;
    let status = res.status().as_u16();
    let bytes = res.body_mut().read_to_vec().map_err(io::Error::other)?;
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// `GET /auth` at `addr` with Basic credentials; the token (the login must succeed).
pub fn login(addr: &str, user: &str, password: &str) -> String {
    let (status, body) =
        http(addr, "GET", "/auth", None, Some(&basic(user, password))).unwrap_or_else(|e| panic!("GET /auth: {e}"));
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["token"].as_str().expect("a token").to_owned()
}

/// A `Basic` authorization header value.
pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// `%`-encodes a JSON value for a query string.
pub fn q(v: &serde_json::Value) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A free TCP port on 127.0.0.1 (bound and released; the caller binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"))
}
