//! The configuration page served at `/`: one self-contained HTML/CSS/JS asset (no build
//! step), compiled into the binary. It talks only to the public API: `GET /auth` (Basic →
//! token kept in `sessionStorage`), `/api/v4/health` (the hardware key box, polled every
//! second), the license list, registrations with force-release, the audit log, add/upload
//! license, and — only when health reports the `sim` backend — the simulated key's
//! pull/plug endpoints. Python's `FloatingManager.is_online` also needs a 200 here.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::state::AppState;

/// The page.
pub const INDEX_HTML: &str = include_str!("index.html");

/// Routes of the web UI.
pub fn routes() -> Router<AppState> {
    Router::new().route("/", get(home_show))
}

/// `GET /`. Open in every mode: the page itself asks for a login when the API answers 401.
pub async fn home_show() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        INDEX_HTML,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_has_the_seed_controls_and_accessible_labels() {
        for needle in [
            "id=\"key-box\"",
            "aria-live=\"polite\"",
            "<option value=\"key\">Key Auth</option>",
            "<option value=\"user\">User Auth</option>",
            "id=\"add-hwkey\"",
            "isHWKeyReq",
            "/api/v4/license/upload",
            "/api/v4/registrations/release",
            "/api/v4/audit",
            "/api/v4/sim/unplug",
            "sessionStorage",
        ] {
            assert!(INDEX_HTML.contains(needle), "page lacks {needle}");
        }
        // Every input / select / textarea has a <label for=…>.
        for tag in ["<input id=\"", "<select id=\"", "<textarea id=\""] {
            for (at, _) in INDEX_HTML.match_indices(tag) {
                let tail = &INDEX_HTML[at + tag.len()..];
                let id = &tail[..tail.find('"').unwrap_or(0)];
                assert!(
                    INDEX_HTML.contains(&format!("for=\"{id}\"")),
                    "control #{id} has no <label for>"
                );
            }
        }
    }
}
