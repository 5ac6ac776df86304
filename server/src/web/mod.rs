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

/// The text between `open` and `close` (the page's one inline script or style).
fn inline(open: &str, close: &str) -> &'static str {
    let start = INDEX_HTML.find(open).map_or(0, |i| i + open.len());
    let end = INDEX_HTML[start..].find(close).map_or(start, |i| start + i);
    &INDEX_HTML[start..end]
}

fn sha256_source(text: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(text.as_bytes()))
    )
}

/// The page's Content-Security-Policy: only its own inline script and style (by hash),
/// API calls to this origin, nothing else — an injected `<script>`, inline handler,
/// style or foreign resource does not run.
pub fn content_security_policy() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            sha256_source(inline("<script>", "</script>")),
            sha256_source(inline("<style>", "</style>")),
        )
    })
}

/// `GET /`. Open in every mode: the page itself asks for a login when the API answers 401.
pub async fn home_show() -> impl IntoResponse {
    (
        [
            (header::CONTENT_SECURITY_POLICY, content_security_policy()),
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
    fn csp_allows_exactly_the_page_own_script_and_style() {
        let csp = content_security_policy();
        assert!(csp.starts_with("default-src 'none'; script-src 'sha256-"), "{csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
        assert!(inline("<script>", "</script>").contains("sessionStorage"));
        assert!(inline("<style>", "</style>").contains('{'));
        // One inline script and one inline style: a second one would be blocked.
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        assert_eq!(INDEX_HTML.matches("<style").count(), 1);
        assert!(!INDEX_HTML.contains(" onclick=") && !INDEX_HTML.contains(" style=\""));
    }

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
            "id=\"audit-chain\"",
            "/api/v4/audit/verify",
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
