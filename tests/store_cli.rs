//! The store as an operator meets it, with real processes: one server per SQLite data dir
//! (a second is refused and told the holder's pid), servers sharing a PostgreSQL store,
//! and `keyfloat store migrate` from a data dir into PostgreSQL.
#![allow(clippy::unwrap_used)]

mod server_support;

use std::process::Command;

use keyfloat_server::store::postgres::TempDatabase;
use keyfloat_testkit::serve::serve_command;
use server_support::{data_dir, start, BIN};

/// A consumption feature `cf` and a floating feature `fl` (one slot), URL-encoded JSON.
const FEATURES: &str = "%5B%7B%22code%22%3A%22cf%22%2C%22kind%22%3A%22consumption%22%2C%22max_consumption%22%3A1000%7D%2C%7B%22code%22%3A%22fl%22%2C%22kind%22%3A%22activation%22%2C%22floating_users%22%3A1%7D%5D";

fn pg_url() -> String {
    std::env::var("KEYFLOAT_PG_URL").expect("KEYFLOAT_PG_URL is not set (scripts/pg.sh start; scripts/dev.sh test)")
}

fn run(args: &[&str]) -> (bool, String) {
    keyfloat_testkit::process::outcome(&Command::new(BIN).args(args).output().unwrap())
}

/// A second `serve` on a data dir in use exits with status 2 naming the first one's pid;
/// the offline CLI (`keyfloat user`) keeps working alongside; once the first stops, the
/// data dir is free again.
#[test]
fn a_second_server_on_one_data_dir_is_refused_with_the_holders_pid() {
    let dir = data_dir();
    let first = start(dir.path(), &[]);
    let out = serve_command(std::path::Path::new(BIN), dir.path(), &[])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains(&format!("pid {}", first.child.id())), "{text}");
    let db = dir.path().join("db");
    let (ok, text) = run(&["user", "list", "--data-dir", db.to_str().unwrap()]);
    assert!(ok, "the offline CLI opens alongside the server: {text}");
    assert_eq!(first.stop(), Some(0));
    let second = start(dir.path(), &[]);
    assert_eq!(second.stop(), Some(0));
}

/// Two server processes on one PostgreSQL database: what one writes the other serves, and
/// the seat limit holds across both.
#[test]
#[ignore = "needs PostgreSQL (KEYFLOAT_PG_URL)"]
fn two_servers_share_one_postgres_store() {
    let db = TempDatabase::create(&pg_url(), "serve").unwrap();
    let (d1, d2) = (data_dir(), data_dir());
    let a = start(d1.path(), &["--store", db.url()]);
    a.json(
        "GET",
        "/api/v4/addProduct?product=p&licenseKey=K&floatingUsers=1",
        None,
        None,
    );
    let b = start(d2.path(), &["--store", db.url()]);
    let list = b.json("GET", "/api/v4/license", None, None);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    a.json("POST", "/api/v4/register", Some(r#"{"product":"p","user":"u1"}"#), None);
    let (status, body) = b.call("POST", "/api/v4/register", Some(r#"{"product":"p","user":"u2"}"#), None);
    assert_eq!(status, 400, "one seat, held through the other server: {body}");
    assert!(body.contains("floating_not_available"), "{body}");
    assert_eq!(a.stop(), Some(0));
    assert_eq!(b.stop(), Some(0));
}

/// An installation used for a while (products, seats, consumptions, accounts, a revoked
/// token, audit records) is copied into PostgreSQL: the copy verifies, a server on it
/// serves the same state, and the same target is refused a second time. A running server
/// on the source makes the copy refuse (it would be stale at once).
#[test]
#[ignore = "needs PostgreSQL (KEYFLOAT_PG_URL)"]
fn store_migrate_copies_a_used_installation_and_verifies_it() {
    let target = TempDatabase::create(&pg_url(), "migrate_cli").unwrap();
    let dir = data_dir();
    let db = dir.path().join("db");
    let db = db.to_str().unwrap();
    let s = start(dir.path(), &[]);
    s.json(
        "GET",
        &format!("/api/v4/addProduct?product=p&licenseKey=K&floatingUsers=3&maxConsumptions=50&features={FEATURES}"),
        None,
        None,
    );
    s.json("GET", "/api/v4/addProduct?product=q&licenseKey=Q", None, None);
    for user in ["u1", "u2"] {
        s.json(
            "POST",
            "/api/v4/register",
            Some(&format!(r#"{{"product":"p","user":"{user}"}}"#)),
            None,
        );
    }
    s.json(
        "POST",
        "/api/v4/add_consumption",
        Some(r#"{"product":"p","consumptions":7}"#),
        None,
    );
    s.json(
        "POST",
        "/api/v4/add_feature_consumption",
        Some(r#"{"product":"p","feature":"cf","consumptions":3}"#),
        None,
    );
    s.json(
        "POST",
        "/api/v4/featureRegister",
        Some(r#"{"product":"p","feature":"fl","user":"u1"}"#),
        None,
    );
    let (ok, text) = run(&["store", "migrate", "--from", db, "--to", target.url()]);
    assert!(!ok && text.contains(&format!("pid {}", s.child.id())), "{text}");
    let before = s.json("GET", "/api/v4/license", None, None);
    assert_eq!(s.stop(), Some(0));
    server_support::add_user(dir.path(), "root", "pw-1", "admin");
    let (ok, text) = run(&["user", "revoke", "--data-dir", db, "--username", "root"]);
    assert!(ok, "{text}");

    let (ok, text) = run(&["store", "migrate", "--from", db, "--to", target.url(), "--json"]);
    assert!(ok, "{text}");
    let report: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(report["licenses"], 2, "{report}");
    assert_eq!(report["registrations"], 2, "{report}");
    assert_eq!(report["feature_registrations"], 1, "{report}");
    assert_eq!(report["accounts"], 1, "{report}");
    assert_eq!(report["token_generations"], 1, "{report}");
    assert!(report["audit_records"].as_u64().unwrap() >= 3, "{report}");

    let (ok, text) = run(&["store", "migrate", "--from", db, "--to", target.url()]);
    assert!(!ok && text.contains("not empty"), "a second copy is refused: {text}");

    let other = data_dir();
    let s = start(other.path(), &["--store", target.url()]);
    let after = s.json("GET", "/api/v4/license", None, None);
    assert_eq!(after, before, "the copy serves the same licenses, totals and seats");
    assert_eq!(s.stop(), Some(0));
}

/// `keyfloat user … --store postgres://…` manages the accounts every server on that store
/// logs in with.
#[test]
#[ignore = "needs PostgreSQL (KEYFLOAT_PG_URL)"]
fn accounts_are_managed_in_the_shared_store() {
    let db = TempDatabase::create(&pg_url(), "accounts").unwrap();
    let url = db.url();
    let (ok, text) = run(&[
        "user",
        "add",
        "--store",
        url,
        "--username",
        "root",
        "--role",
        "admin",
        "--password",
        "pw-1",
    ]);
    assert!(ok, "{text}");
    let (ok, text) = run(&["user", "list", "--store", url]);
    assert!(ok && text.contains("root\tadmin"), "{text}");
    let (ok, text) = run(&["user", "list"]);
    assert!(!ok && text.contains("--data-dir"), "a place is required: {text}");
    let dir = data_dir();
    let s = start(dir.path(), &["--store", url, "--user-authentication"]);
    let (status, body) = s.call("GET", "/auth", None, Some(&server_support::basic("root", "pw-1")));
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.stop(), Some(0));
}
