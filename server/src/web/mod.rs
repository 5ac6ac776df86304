//! The configuration page served at `/` (Python's `FloatingManager.is_online` needs a 200
//! there). A minimal page for now; the full page plugs in behind [`routes`].

use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use axum::Router;

use crate::state::AppState;

/// Routes of the web UI.
pub fn routes() -> Router<AppState> {
    Router::new().route("/", get(home_show))
}

/// `GET /`.
pub async fn home_show(State(st): State<AppState>) -> Html<String> {
    let snap = st.keys().snapshot();
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>keyfloat</title></head><body>\
         <h1>keyfloat floating server</h1><p>Hardware ID: <code>{}</code> &middot; key: {}</p>\
         <p>API: <code>/api/v4/…</code>, health: <a href=\"/api/v4/health\">/api/v4/health</a></p></body></html>",
        escape(snap.hardware_id.as_str()),
        snap.state().as_str()
    ))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
