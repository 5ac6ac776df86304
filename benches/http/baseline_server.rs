//! The HTTP baseline `scripts/bench-http.sh` measures keyfloat against, in the same run:
//! a minimal axum 0.8 server (same runtime and HTTP stack as `keyfloat serve`) that does
//! the least a licensing endpoint has to do.
//!
//! - `GET  /static`: a fixed small JSON body (routing + HTTP only).
//! - `POST /json`: parses a ~300 B JSON body and answers ~500 B of JSON built from it.
//! - `POST /json_db`: the same, plus one row written per request to SQLite (WAL,
//!   `synchronous=FULL`) by one writer thread that group-commits everything queued (up to
//!   512 requests per transaction, one fsync per batch) and answers after the commit.
//! - `POST /json_db_seat`: the least any new floating seat has to do, for the floor a
//!   keyfloat new seat is compared with: parse the register body, insert one row keyed by
//!   (license, user) with the seat's columns (keyfloat's seat table, its key index
//!   included) through the same group-committing writer (its own database), and answer a
//!   register answer of the same shape and size (the license object's fields, then the
//!   object again as the `license_json` string; ≈ 1.9 KB). No seat count, no limit, no
//!   model: strictly less than a correct new seat does.
//! - `POST /json_pg` (with `--pg URL`): the same single-row write to PostgreSQL through the
//!   client keyfloat's PostgreSQL store uses (the sync `postgres` crate), by one writer
//!   connection that group-commits the same way (`scripts/bench-http-pg.sh`).
//!
//! Run: `cargo run --release --example baseline_server -- --listen 127.0.0.1:0 --data-dir DIR [--pg URL]`;
//! it prints `listening on http://ADDR` and serves until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::sync::mpsc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// Most rows committed together, as in the keyfloat store.
const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<i64, String>>;

#[derive(Clone)]
struct Db(mpsc::Sender<(String, Reply)>);

#[derive(Clone)]
struct Dbs {
    sqlite: Db,
    seats: mpsc::Sender<(Seat, Reply)>,
    pg: Option<Db>,
}

fn open(dir: &std::path::Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(dir.join("baseline.db"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY, user TEXT NOT NULL, body TEXT NOT NULL)",
    )?;
    Ok(conn)
}

type Job = (String, Reply);

/// The seat floor's database: keyfloat's seat table (the same columns and key).
fn open_seats(dir: &std::path::Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(dir.join("seats.db"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS registrations (
            license_id INTEGER NOT NULL, user TEXT NOT NULL, registered_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL, borrowed_until INTEGER, os_hostname TEXT,
            ip_local TEXT, user_info TEXT, PRIMARY KEY (license_id, user))",
    )?;
    Ok(conn)
}

/// Group commit: waits for a job, takes whatever else is queued (up to [`MAX_BATCH`]), runs
/// `commit` on the batch in one transaction and answers every job after it (its row id, or
/// the error). Ends when every sender is gone.
fn group_commit<T, E: ToString>(
    rx: &mpsc::Receiver<(T, Reply)>,
    mut commit: impl FnMut(&[(T, Reply)]) -> Result<Vec<i64>, E>,
) {
    let mut batch: Vec<(T, Reply)> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        match commit(&batch) {
            Ok(ids) => {
                for ((_, reply), id) in batch.drain(..).zip(ids) {
                    let _ = reply.send(Ok(id));
                }
            }
            Err(e) => {
                let e = e.to_string();
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// A SQLite writer: one transaction per drained batch, `insert` once per job with `bind`'s
/// parameters; every request of the batch is answered after COMMIT.
fn sqlite_writer<T>(
    conn: &Connection,
    rx: &mpsc::Receiver<(T, Reply)>,
    insert: &str,
    bind: impl Fn(&mut rusqlite::Statement<'_>, &T) -> rusqlite::Result<usize>,
) {
    group_commit(rx, |batch| {
        let result = (|| -> rusqlite::Result<Vec<i64>> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let mut ids = Vec::with_capacity(batch.len());
            {
                let mut st = conn.prepare_cached(insert)?;
                for (job, _) in batch {
                    bind(&mut st, job)?;
                    ids.push(conn.last_insert_rowid());
                }
            }
            conn.execute_batch("COMMIT")?;
            Ok(ids)
        })();
        if result.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        result
    });
}

/// `json_db`'s writer: the body as one row.
fn writer(conn: Connection, rx: mpsc::Receiver<Job>) {
    sqlite_writer(
        &conn,
        &rx,
        "INSERT INTO rows (user, body) VALUES (?1, ?2)",
        |st, body| st.execute((user_of(body), body)),
    );
}

/// One seat to insert, taken from a register body.
struct Seat {
    license_id: i64,
    user: String,
    now: i64,
    os_hostname: Option<String>,
    ip_local: Option<String>,
    user_info: Option<String>,
}

/// `json_db_seat`'s writer: one keyed seat row per job.
fn seat_writer(conn: Connection, rx: mpsc::Receiver<(Seat, Reply)>) {
    let insert = "INSERT INTO registrations (license_id, user, registered_at, expires_at,
                    os_hostname, ip_local, user_info) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
    sqlite_writer(&conn, &rx, insert, |st, s| {
        st.execute((
            s.license_id,
            &s.user,
            s.now,
            s.now + 1_800_000_000,
            &s.os_hostname,
            &s.ip_local,
            &s.user_info,
        ))
    });
}

fn user_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["user"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn open_pg(url: &str) -> Result<postgres::Client, postgres::Error> {
    let mut client = postgres::Client::connect(url, postgres::NoTls)?;
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS rows (id BIGSERIAL PRIMARY KEY, user_name TEXT NOT NULL, body TEXT NOT NULL)",
    )?;
    Ok(client)
}

/// The PostgreSQL twin of [`writer`]: one transaction per drained batch, one prepared
/// INSERT per request, every request answered after COMMIT.
fn pg_writer(mut client: postgres::Client, rx: mpsc::Receiver<Job>) {
    let insert = match client.prepare("INSERT INTO rows (user_name, body) VALUES ($1, $2) RETURNING id") {
        Ok(st) => st,
        Err(e) => {
            eprintln!("baseline: preparing the insert failed: {e}");
            return;
        }
    };
    group_commit(&rx, |batch| {
        let result = (|| -> Result<Vec<i64>, postgres::Error> {
            client.batch_execute("BEGIN")?;
            let mut ids = Vec::with_capacity(batch.len());
            for (body, _) in batch {
                ids.push(client.query_one(&insert, &[&user_of(body), body])?.get(0));
            }
            client.batch_execute("COMMIT")?;
            Ok(ids)
        })();
        if result.is_err() {
            let _ = client.batch_execute("ROLLBACK");
        }
        result
    });
}

/// ~500 B of JSON derived from the request, like a register answer.
fn answer(req: &Value, row: Option<i64>) -> Value {
    json!({
        "id": 1_000_000_000_000_001u64,
        "product": req["product"],
        "user": req["user"],
        "os_hostname": req["os_hostname"],
        "ip_local": req["ip_local"],
        "row": row,
        "license_type": "perpetual",
        "floating_users": 100000,
        "floating_timeout": 30,
        "floating_slots_in_use": 1,
        "is_floating": true,
        "is_floating_cloud": false,
        "is_borrowed": false,
        "borrowed_until": null,
        "max_borrow_time": 24,
        "registered_at": "2026-01-01T00:00:00.000000Z",
        "validity_period": null,
        "product_features": [],
        "hardware_key_required": true,
        "activation_hardware_id": "12345678",
    })
}

/// A register body, as the seat floor reads it.
#[derive(Deserialize)]
struct Register {
    product: String,
    license_id: i64,
    user: String,
    os_hostname: Option<String>,
    ip_local: Option<String>,
    user_info: Option<String>,
}

/// The license object of a register answer: keyfloat's field set, written out here (not
/// borrowed from keyfloat's renderer) so the floor stays independent of the code it
/// measures; typed, the cheapest way to render it.
#[derive(Serialize)]
struct LicenseObject<'a> {
    id: i64,
    license_type: &'a str,
    is_floating: bool,
    is_floating_cloud: bool,
    floating_timeout: u32,
    floating_users: u32,
    floating_in_use_devices: i64,
    validity_period: Option<&'a str>,
    start_date: Option<&'a str>,
    maintenance_period: Option<&'a str>,
    enable_maintenance_period: bool,
    prevent_vm: bool,
    is_trial: bool,
    max_activations: u32,
    allow_unlimited_activations: bool,
    times_activated: u32,
    transfer_count: u32,
    max_transfers: u32,
    allow_grace_period: bool,
    grace_period: u32,
    can_borrow: bool,
    max_borrow_time: u32,
    is_borrowed: bool,
    borrowed_until: Option<&'a str>,
    is_hardware_key_auth: bool,
    metadata: Empty,
    customer: Empty,
    custom_fields: [u8; 0],
    product_details: ProductDetails<'a>,
    product_features: [u8; 0],
    license_key: &'a str,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct ProductDetails<'a> {
    product_id: u32,
    product_name: &'a str,
    short_code: &'a str,
    authorization_method: &'a str,
    floating_timeout: u32,
    prevent_vm: bool,
}

/// A register answer: the license object's fields, the seat's, and the object again as
/// the `license_json` string.
#[derive(Serialize)]
struct SeatAnswer<'a> {
    #[serde(flatten)]
    license: &'a LicenseObject<'a>,
    product: &'a str,
    license_id: i64,
    floating_slots_in_use: i64,
    floating_in_use: i64,
    registered_at: String,
    license_json: String,
}

async fn plain(Json(req): Json<Value>) -> Json<Value> {
    Json(answer(&req, None))
}

async fn durable(State(dbs): State<Dbs>, body: String) -> Result<Json<Value>, (StatusCode, String)> {
    write_through(&dbs.sqlite, body).await
}

async fn durable_seat(State(dbs): State<Dbs>, body: String) -> Result<impl IntoResponse, (StatusCode, String)> {
    let req: Register = serde_json::from_str(&body).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    let seat = Seat {
        license_id: req.license_id,
        user: req.user,
        now,
        os_hostname: req.os_hostname,
        ip_local: req.ip_local,
        user_info: req.user_info,
    };
    let (tx, rx) = oneshot::channel();
    dbs.seats
        .send((seat, tx))
        .map_err(|_| (StatusCode::SERVICE_UNAVAILABLE, "writer stopped".to_owned()))?;
    let row = rx
        .await
        .map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "writer dropped".to_owned()))?
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let license = LicenseObject {
        id: req.license_id,
        license_type: "perpetual",
        is_floating: true,
        is_floating_cloud: false,
        floating_timeout: 30,
        floating_users: 1_000_000,
        floating_in_use_devices: row,
        validity_period: None,
        start_date: None,
        maintenance_period: None,
        enable_maintenance_period: false,
        prevent_vm: false,
        is_trial: false,
        max_activations: 1,
        allow_unlimited_activations: false,
        times_activated: 1,
        transfer_count: 0,
        max_transfers: 0,
        allow_grace_period: false,
        grace_period: 0,
        can_borrow: true,
        max_borrow_time: 24,
        is_borrowed: false,
        borrowed_until: None,
        is_hardware_key_auth: false,
        metadata: Empty {},
        customer: Empty {},
        custom_fields: [],
        product_details: ProductDetails {
            product_id: 0,
            product_name: &req.product,
            short_code: &req.product,
            authorization_method: "license-key",
            floating_timeout: 30,
            prevent_vm: false,
        },
        product_features: [],
        license_key: &req.product,
    };
    let to_text = |e: serde_json::Error| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let answer = SeatAnswer {
        license: &license,
        product: &req.product,
        license_id: req.license_id,
        floating_slots_in_use: row,
        floating_in_use: row,
        registered_at: format!("{}.{:06}Z", now / 1_000_000, now % 1_000_000),
        license_json: serde_json::to_string(&license).map_err(to_text)?,
    };
    let json = serde_json::to_string(&answer).map_err(to_text)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json))
}

async fn durable_pg(State(dbs): State<Dbs>, body: String) -> Result<Json<Value>, (StatusCode, String)> {
    let Some(db) = &dbs.pg else {
        return Err((StatusCode::NOT_FOUND, "start with --pg URL".to_owned()));
    };
    write_through(db, body).await
}

async fn write_through(db: &Db, body: String) -> Result<Json<Value>, (StatusCode, String)> {
    let req: Value = serde_json::from_str(&body).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let (tx, rx) = oneshot::channel();
    db.0.send((body, tx))
        .map_err(|_| (StatusCode::SERVICE_UNAVAILABLE, "writer stopped".to_owned()))?;
    let id = rx
        .await
        .map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "writer dropped".to_owned()))?
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(Json(answer(&req, Some(id))))
}

async fn fixed() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

fn arg(name: &str) -> Option<String> {
    let mut it = std::env::args();
    while let Some(a) = it.next() {
        if a == name {
            return it.next();
        }
    }
    None
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:0".into());
    let dir = PathBuf::from(arg("--data-dir").ok_or("--data-dir DIR is required")?);
    std::fs::create_dir_all(&dir)?;
    let conn = open(&dir)?;
    let (tx, rx) = mpsc::channel();
    let writer = std::thread::spawn(move || writer(conn, rx));
    let seats_conn = open_seats(&dir)?;
    let (seats, seats_rx) = mpsc::channel();
    let seat_writer = std::thread::spawn(move || seat_writer(seats_conn, seats_rx));
    let pg = match arg("--pg") {
        Some(url) => {
            let client = open_pg(&url)?;
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || pg_writer(client, rx));
            Some(Db(tx))
        }
        None => None,
    };

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let app = Router::new()
            .route("/static", get(fixed))
            .route("/json", post(plain))
            .route("/json_db", post(durable))
            .route("/json_db_seat", post(durable_seat))
            .route("/json_pg", post(durable_pg))
            .with_state(Dbs {
                sqlite: Db(tx),
                seats,
                pg,
            });
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        println!("listening on http://{}", listener.local_addr()?);
        axum::serve(listener, app).with_graceful_shutdown(shutdown()).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    // The router (and its sender) is gone: the writer drains and stops.
    let _ = writer.join();
    let _ = seat_writer.join();
    Ok(())
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}
