//! `GET /ui`: the web console, a small page the node serves itself (HTML, CSS and vanilla JS
//! compiled into the binary; no build step, nothing fetched from elsewhere). It talks to the
//! same public API as any client: login, SQL, `/v1/ws` for the live view, cluster health.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("ui/index.html");
const CONSOLE_JS: &str = include_str!("ui/console.js");
const CONSOLE_CSS: &str = include_str!("ui/console.css");

/// Scripts, styles and connections from this origin only; no framing by other sites.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

pub(super) async fn index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

pub(super) async fn script() -> Response {
    asset(CONSOLE_JS, "text/javascript; charset=utf-8")
}

pub(super) async fn style() -> Response {
    asset(CONSOLE_CSS, "text/css; charset=utf-8")
}
