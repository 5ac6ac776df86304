//! The store as an operator meets it, with real processes: one server per SQLite data dir
//! (a second is refused and told the holder's pid), servers sharing a PostgreSQL store,
//! and `keyfloat store migrate` from a data dir into PostgreSQL.
#![allow(clippy::unwrap_used)]

mod server_support;

use std::process::Command;

use keyfloat_server::store::postgres::TempDatabase;
use keyfloat_testkit::serve::serve_command;
use server_support::{data_dir, start, BIN};

fn pg_url() -> String {
    std::env::var("KEYFLOAT_PG_URL").expect("KEYFLOAT_PG_URL is not set (scripts/pg.sh start; scripts/dev.sh test)")
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
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
