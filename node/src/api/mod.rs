//! The HTTP API, one file per endpoint family: `sql` (`POST /v1/api/sql`), `auth`
//! (`/v1/api/auth/*`), `tail` (`GET /v1/api/tail`, live change streams), `ws` (`GET /v1/ws`,
//! live queries in KalamDB's WebSocket protocol), `ui` (`GET /ui`, the web console) and `admin`
//! (health checks, cluster health and digests, `/metrics`, the test-only fault switch). What every
//! handler shares lives here: who sends a request (`identify`), the checked JSON body
//! (`json_body`), and errors as JSON with a stable code and the matching status. Nothing a
//! client sends can panic a handler.

mod admin;
mod auth;
pub mod cors;
mod sql;
pub mod tail;
mod ui;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kalamdb_query::Engine;
use serde_json::json;

use crate::auth::{Auth, Identity, Method};
use crate::groups::Groups;

/// Everything a handler may use.
pub struct App {
    pub engine: Engine,
    pub groups: Arc<Groups>,
    pub auth: Arc<Auth>,
    pub body_bytes_max: usize,
    pub body_read_timeout: std::time::Duration,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Serve `POST /v1/api/debug/isolate` (tests only).
    pub fault_injection: bool,
    pub tail: crate::config::TailConfig,
    pub tail_state: tail::TailState,
    pub websocket: crate::config::WebSocketConfig,
    pub ws_state: ws::WsState,
    /// One digest computation at a time per node: each hashes every projection.
    pub digest_slot: tokio::sync::Semaphore,
    /// `security.cors.allowed_origins`.
    pub cors_allowed_origins: Vec<String>,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/api/sql", post(sql::sql))
        .route("/v1/api/tail", get(tail::tail))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/api/auth/login", post(auth::login))
        .route("/v1/api/auth/me", get(auth::me))
        .route("/v1/api/auth/refresh", post(auth::refresh))
        .route("/v1/api/auth/logout", post(auth::logout))
        .route("/v1/api/auth/status", get(auth::status))
        .route("/ui", get(ui::index))
        .route("/ui/", get(ui::index))
        .route("/ui/console.js", get(ui::script))
        .route("/ui/console.css", get(ui::style))
        .route("/health", get(admin::health))
        .route("/v1/api/healthcheck", get(admin::health))
        .route("/metrics", get(admin::metrics_text))
        .route("/v1/api/cluster/health", get(admin::cluster_health))
        .route("/v1/api/cluster/digest", get(admin::cluster_digest))
        .route("/v1/api/debug/isolate", post(admin::debug_isolate))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(app.clone(), cors::cors))
        .layer(axum::middleware::from_fn(crate::metrics::track_http))
        .with_state(app)
}

pub(crate) fn took_ms(start: Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

pub(crate) fn error_response(status: StatusCode, code: &str, message: &str, start: Instant) -> Response {
    metrics::counter!("kalamdb_sql_errors_total", "code" => code.to_string()).increment(1);
    let body = json!({
        "status": "error",
        "results": [],
        "took": took_ms(start),
        "error": {"code": code, "message": message, "details": null},
    });
    (status, axum::Json(body)).into_response()
}

/// The response to a node error (authentication, availability).
pub(crate) fn node_error_response(e: &crate::Error, start: Instant) -> Response {
    use crate::Error as E;
    match e {
        E::Unauthorized { code, message } => {
            let mut r = error_response(StatusCode::UNAUTHORIZED, code, message, start);
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"kalamdb\""));
            r
        }
        E::TooManyAttempts { retry_after_secs } => {
            let mut r = error_response(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_ATTEMPTS", &e.to_string(), start);
            if let Ok(v) = header::HeaderValue::from_str(&retry_after_secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        E::Unavailable(m) => error_response(StatusCode::SERVICE_UNAVAILABLE, "CLUSTER_UNAVAILABLE", m, start),
        E::Busy(m) => {
            let mut r = error_response(StatusCode::SERVICE_UNAVAILABLE, "SERVER_BUSY", m, start);
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(BUSY_RETRY_AFTER_SECS));
            r
        }
        other => error_response(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", &other.to_string(), start),
    }
}

/// Who sends this request, or the response that refuses it.
pub(crate) async fn identify(
    app: &App,
    headers: &HeaderMap,
    client: SocketAddr,
    start: Instant,
) -> Result<(Identity, Method), Response> {
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    app.auth.authenticate(authorization, client.ip()).await.map_err(|e| node_error_response(&e, start))
}

/// Reads a JSON request body: content type, declared and actual size checked.
pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(
    app: &App,
    headers: &HeaderMap,
    body: Body,
    start: Instant,
) -> Result<T, Response> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/json"));
    if !json_type {
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            "INVALID_CONTENT_TYPE",
            "Content-Type must be application/json",
            start,
        ));
    }
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            &format!("request body exceeds {} bytes", app.body_bytes_max),
            start,
        )
    };
    if declared.is_some_and(|n| n > app.body_bytes_max) {
        return Err(too_large());
    }
    let bytes = match tokio::time::timeout(app.body_read_timeout, axum::body::to_bytes(body, app.body_bytes_max)).await
    {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => return Err(too_large()),
        Err(_) => {
            return Err(error_response(
                StatusCode::REQUEST_TIMEOUT,
                "REQUEST_TIMEOUT",
                &format!("the request body did not arrive within {} ms", app.body_read_timeout.as_millis()),
                start,
            ));
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        error_response(StatusCode::BAD_REQUEST, "INVALID_REQUEST", &format!("malformed JSON request: {e}"), start)
    })
}

/// HTTP status of a query error code.
pub fn status_of(e: &kalamdb_query::Error) -> StatusCode {
    use kalamdb_query::Error as E;
    match e {
        E::Unavailable(_) | E::NotLeader(_) | E::Busy(_) | E::StorageUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        E::RequestTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        E::Conflict(_) | E::SchemaChanged(_) | E::JobRunning(_) | E::ClusterRefused(_) => StatusCode::CONFLICT,
        E::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
        E::PermissionDenied(_) => StatusCode::FORBIDDEN,
        E::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// Seconds a busy node asks a client to wait before retrying.
pub const BUSY_RETRY_AFTER_SECS: u64 = 1;

/// The response to a query error; a busy node adds `Retry-After`.
pub(crate) fn query_error_response(e: &kalamdb_query::Error, start: Instant) -> Response {
    let mut r = error_response(status_of(e), e.code(), &e.to_string(), start);
    if matches!(e, kalamdb_query::Error::Busy(_)) {
        r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(BUSY_RETRY_AFTER_SECS));
    }
    r
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint", Instant::now())
}
