//! The fast request path under attack: an overload far above the store's queues gets
//! `503 server_busy` with `Retry-After` (never a growing queue), the server serves again
//! at once when the load stops, and no acknowledged write is lost; heartbeats are answered
//! while the writer is stuck; the paginated listing walks every seat exactly once.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use keyfloat_hal::{HardwareId, HardwareIdCell};
use keyfloat_server::auth::TokenKeys;
use keyfloat_server::store::sqlite::StoreOptions;
use keyfloat_server::store::{read, transact, StoreError};
use keyfloat_server::{app, AppState, KeyPolicy, SqliteStore, StateParts, Store};
use serde_json::{json, Value};
use tower::ServiceExt;

struct Server {
    app: Router,
    state: AppState,
    store: Arc<SqliteStore>,
    dir: tempfile::TempDir,
    _cell: HardwareIdCell,
}

async fn server(options: StoreOptions) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open_with(dir.path(), options).unwrap());
    let cell = HardwareIdCell::new(HardwareId::new("fast-path-machine"));
    let state = AppState::new(StateParts {
        store: Arc::clone(&store) as Arc<dyn Store>,
        keys: cell.reader(),
        tokens: TokenKeys::load_or_create(dir.path()).unwrap(),
        user_authentication: false,
        key_policy: KeyPolicy::Refuse,
        sim: None,
        backend: "none".into(),
        vendor_key: None,
    })
    .await
    .unwrap();
    Server {
        app: app(state.clone()),
        state,
        store,
        dir,
        _cell: cell,
    }
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Option<String>, Value) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let retry = res
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
    let v = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, retry, v)
}

fn register(user: &str) -> Request<Body> {
    Request::post("/api/v4/register")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({"product": "p", "user": user}).to_string()))
        .unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

async fn add_product(app: &Router, seats: u32) -> u64 {
    let (s, _, v) = send(
        app,
        get(&format!(
            "/api/v4/addProduct?product=p&licenseKey=K&floatingUsers={seats}"
        )),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["license_id"].as_u64().unwrap()
}

/// A store job that reports it started, then blocks until released (or 30 s):
/// (release, started, job).
fn holding_job() -> (
    std::sync::mpsc::Sender<()>,
    std::sync::mpsc::Receiver<()>,
    impl FnOnce() -> Result<(), StoreError> + Send + 'static,
) {
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    let job = move || {
        let _ = started_tx.send(());
        let _ = hold.recv_timeout(Duration::from_secs(30));
        Ok(())
    };
    (release, started, job)
}

/// Waits until the queued holding job runs; the answer resolves once it has finished.
fn held(
    started: std::sync::mpsc::Receiver<()>,
    done: impl std::future::Future<Output = Result<(), StoreError>>,
) -> impl std::future::Future<Output = ()> {
    started.recv_timeout(Duration::from_secs(10)).unwrap();
    async move { done.await.unwrap() }
}

/// Holds the store writer until the returned sender is used.
fn hold_writer(store: &dyn Store) -> (std::sync::mpsc::Sender<()>, impl std::future::Future<Output = ()>) {
    let (release, started, job) = holding_job();
    (release, held(started, transact(store, move |_| job())))
}

/// Holds one store reader until the returned sender is used.
fn hold_reader(store: &dyn Store) -> (std::sync::mpsc::Sender<()>, impl std::future::Future<Output = ()>) {
    let (release, started, job) = holding_job();
    (release, held(started, read(store, move |_| job())))
}

/// Both store queues `n` long and one reader: a flood overflows them soon.
fn short_queues(n: usize) -> StoreOptions {
    StoreOptions {
        write_queue: n,
        read_queue: n,
        readers: 1,
    }
}

async fn wait_refused(store: &SqliteStore, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.stats().refused.load(Ordering::Relaxed) < n {
        assert!(
            Instant::now() < deadline,
            "only {} refusals",
            store.stats().refused.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn vm_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// 2,000 new-seat registrations at once while the writer is stuck: exactly the queue's
/// capacity is taken, every other one is refused at once with `503 server_busy` and
/// `Retry-After`; once the writer moves the server serves again immediately, and every
/// acknowledged seat is in the database after a restart, none of the refused ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_gets_server_busy_and_loses_no_acknowledged_write() {
    const QUEUE: usize = 32;
    const FLOOD: usize = 2000;
    let s = server(short_queues(QUEUE)).await;
    let id = add_product(&s.app, 100_000).await;
    let rss_before = vm_kib("VmRSS:");
    let (release, held) = hold_writer(s.store.as_ref());
    let refused_before = s.store.stats().refused.load(Ordering::Relaxed);
    let flood: Vec<_> = (0..FLOOD)
        .map(|i| {
            let app = s.app.clone();
            tokio::spawn(async move { (i, send(&app, register(&format!("flood-{i:05}"))).await) })
        })
        .collect();
    // Everything beyond the queue is refused while the writer is still stuck.
    wait_refused(&s.store, refused_before + (FLOOD - QUEUE) as u64).await;
    let rss_flooded = vm_kib("VmRSS:");
    release.send(()).unwrap();
    held.await;
    let mut acked = Vec::new();
    let mut busy = 0;
    for t in flood {
        let (i, (status, retry, v)) = t.await.unwrap();
        match status {
            StatusCode::OK => acked.push(format!("flood-{i:05}")),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(v["code"], "server_busy", "{v}");
                assert_eq!(v["status"], 503);
                assert_eq!(retry.as_deref(), Some("1"), "Retry-After");
                busy += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(acked.len(), QUEUE, "the queue's capacity was served");
    assert_eq!(busy, FLOOD - QUEUE);
    // Recovery is immediate: the very next request is served.
    let (st, _, v) = send(&s.app, register("after-the-flood")).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    acked.push("after-the-flood".into());
    println!(
        "overload: {FLOOD} requests, {busy} refused with 503, VmRSS {} KiB before, {} KiB while flooded",
        rss_before, rss_flooded
    );
    // Restart from the data dir: exactly the acknowledged seats are there.
    let Server {
        app, state, store, dir, ..
    } = s;
    drop((app, state));
    store.close();
    drop(store);
    let reopened = SqliteStore::open(dir.path()).unwrap();
    let mut users: Vec<String> = read(&reopened, move |tx| {
        tx.registrations(Some(id))
            .map(|regs| regs.into_iter().map(|r| r.user).collect())
    })
    .await
    .unwrap();
    users.sort();
    acked.sort();
    assert_eq!(users, acked, "every acknowledged seat, and only those");
}

/// Heartbeats of live seats are answered while the writer is stuck (they need no write),
/// and a flood of them beyond the read queue is refused, not queued without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_do_not_wait_for_the_writer_and_overflow_is_refused() {
    const QUEUE: usize = 16;
    let s = server(short_queues(QUEUE)).await;
    add_product(&s.app, 10).await;
    for u in ["a", "b"] {
        assert_eq!(send(&s.app, register(u)).await.0, StatusCode::OK);
    }
    let (release, held) = hold_writer(s.store.as_ref());
    // The writer is stuck: heartbeats still answer, with the live count.
    for _ in 0..20 {
        let (st, _, v) = send(&s.app, register("a")).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["floating_slots_in_use"], 2);
        let lj: Value = serde_json::from_str(v["license_json"].as_str().unwrap()).unwrap();
        assert_eq!(lj["floating_in_use_devices"], 2);
    }
    let (st, _, v) = send(&s.app, get("/api/v4/license")).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v[0]["floating_in_use_devices"], 2);
    release.send(()).unwrap();
    held.await;
    // Now the reader is stuck: heartbeats (answered from the in-memory model) do not
    // notice, and reads beyond its queue (a listing) are refused at once.
    let (release, held) = hold_reader(s.store.as_ref());
    for _ in 0..20 {
        let (st, _, v) = send(&s.app, register("a")).await;
        assert_eq!(
            (st, v["floating_slots_in_use"].as_u64()),
            (StatusCode::OK, Some(2)),
            "{v}"
        );
    }
    let refused_before = s.store.stats().refused.load(Ordering::Relaxed);
    let flood: Vec<_> = (0..200)
        .map(|_| {
            let app = s.app.clone();
            tokio::spawn(async move { send(&app, get("/api/v4/registrations")).await })
        })
        .collect();
    wait_refused(&s.store, refused_before + 200 - QUEUE as u64).await;
    release.send(()).unwrap();
    held.await;
    let mut ok = 0;
    for t in flood {
        let (st, retry, v) = t.await.unwrap();
        if st == StatusCode::OK {
            ok += 1;
        } else {
            assert_eq!(
                (st, v["code"].as_str(), retry.as_deref()),
                (StatusCode::SERVICE_UNAVAILABLE, Some("server_busy"), Some("1"))
            );
        }
    }
    assert_eq!(ok, QUEUE);
}

/// The paginated listing: pages of `limit`, each seat exactly once, the cursor opaque and
/// checked; a bad cursor is a clear 400, not a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_listed_a_page_at_a_time() {
    let s = server(StoreOptions::default()).await;
    add_product(&s.app, 1000).await;
    let users: Vec<String> = (0..57).map(|i| format!("user-{i:03}")).collect();
    for u in &users {
        assert_eq!(send(&s.app, register(u)).await.0, StatusCode::OK);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let uri = match &cursor {
            Some(c) => format!("/api/v4/registrations?limit=10&cursor={c}"),
            None => "/api/v4/registrations?limit=10".into(),
        };
        let (st, _, v) = send(&s.app, get(&uri)).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let page = v["registrations"].as_array().unwrap();
        assert!(page.len() <= 10);
        seen.extend(page.iter().map(|r| r["user"].as_str().unwrap().to_owned()));
        pages += 1;
        assert!(pages <= 10, "the listing ends");
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, users, "every seat once, in order");
    for bad in ["x", "%00", "eyJzZWF0IjoxfQ"] {
        let (st, _, v) = send(&s.app, get(&format!("/api/v4/registrations?cursor={bad}"))).await;
        assert_eq!(
            (st, v["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_parameters")),
            "{bad}: {v}"
        );
    }
    // The audit log pages through its cursor header.
    let (st, _, v) = send(&s.app, get("/api/v4/audit?limit=1")).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 1);
}

/// Store failures never show SQL text to clients: an `internal_error` with a request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failures_answer_a_request_id_not_sql() {
    let s = server(StoreOptions::default()).await;
    add_product(&s.app, 10).await;
    // Break the schema under the server: every seat write now fails inside SQLite.
    let conn = rusqlite_free_break(&s.dir);
    let (st, _, v) = send(&s.app, register("victim")).await;
    assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    assert_eq!(v["code"], "internal_error");
    let id = v["request_id"].as_str().unwrap();
    assert!(v["message"].as_str().unwrap().contains(id));
    let text = v.to_string().to_lowercase();
    for leak in ["sql", "no such table", "registrations", "trigger"] {
        assert!(!text.contains(leak), "{leak} leaked: {v}");
    }
    drop(conn);
}

/// Renames the seat table out of the way through a second connection (the server's own
/// connections keep running): a real SQLite failure, not a mock.
fn rusqlite_free_break(dir: &tempfile::TempDir) -> std::process::Output {
    let db = dir.path().join(keyfloat_server::store::sqlite::DB_FILE);
    std::process::Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('ALTER TABLE registrations RENAME TO gone'); c.commit()")
        .arg(&db)
        .output()
        .unwrap()
}

/// Heartbeats answered off the writer never hand out a seat: 24 clients race new seats,
/// heartbeats and releases on a 5-seat license; no answer ever reports more than 5 seats,
/// and the database never holds more than 5 live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_racing_new_seats_and_releases_never_oversell() {
    const SEATS: u64 = 5;
    let s = server(StoreOptions::default()).await;
    let id = add_product(&s.app, SEATS as u32).await;
    let clients: Vec<_> = (0..24)
        .map(|c| {
            let app = s.app.clone();
            tokio::spawn(async move {
                let mut held = 0;
                for round in 0..30 {
                    let user = format!("c{c}");
                    let (st, _, v) = send(&app, register(&user)).await;
                    match st {
                        StatusCode::OK => {
                            held += 1;
                            let n = v["floating_slots_in_use"].as_u64().unwrap();
                            assert!((1..=SEATS).contains(&n), "answer reports {n} seats: {v}");
                        }
                        StatusCode::BAD_REQUEST => assert_eq!(v["code"], "floating_not_available", "{v}"),
                        other => panic!("unexpected {other}: {v}"),
                    }
                    if (c + round) % 7 == 0 {
                        let req = Request::post("/api/v4/unregister")
                            .header(header::CONTENT_TYPE, "application/json")
                            .body(Body::from(json!({"product": "p", "user": user}).to_string()))
                            .unwrap();
                        assert_eq!(send(&app, req).await.0, StatusCode::OK);
                    }
                }
                held
            })
        })
        .collect();
    let mut answered = 0;
    for c in clients {
        answered += c.await.unwrap();
    }
    assert!(answered > 0);
    let now = keyfloat_server::clock::now_micros();
    let live = read(s.store.as_ref(), move |tx| tx.count_active_registrations(id, now))
        .await
        .unwrap();
    assert!(live as u64 <= SEATS, "{live} live seats on a {SEATS}-seat license");
}
