//! The HTTP API: `POST /v1/api/sql`, login (`/v1/api/auth/*`), health checks and `/metrics`.
//! Every error is JSON with a stable code and the matching status; nothing a client sends can
//! panic a handler.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kalamdb_log::{GroupId, Op, OpResult};
use kalamdb_query::{Engine, ExecContext, Proposer, QueryResult};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Auth, Identity, Method};
use crate::groups::Groups;

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
    pub tail_state: crate::tail::TailState,
    /// One digest computation at a time per node: each hashes every projection.
    pub digest_slot: tokio::sync::Semaphore,
}

pub(crate) struct NodeProposer<'a>(pub(crate) &'a Groups);

#[async_trait]
impl Proposer for NodeProposer<'_> {
    async fn propose(&self, group: GroupId, op: Op) -> Result<OpResult, kalamdb_query::Error> {
        self.0.propose(group, op).await
    }
}

#[derive(Debug, Deserialize)]
struct SqlRequest {
    sql: String,
    #[serde(default)]
    params: Vec<serde_json::Value>,
    #[serde(default)]
    namespace_id: Option<String>,
    /// "linearizable" (default) or "local".
    #[serde(default)]
    consistency: Option<String>,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/api/sql", post(sql))
        .route("/v1/api/tail", get(crate::tail::tail))
        .route("/v1/api/auth/login", post(login))
        .route("/v1/api/auth/me", get(me))
        .route("/health", get(health))
        .route("/v1/api/healthcheck", get(health))
        .route("/metrics", get(metrics_text))
        .route("/v1/api/cluster/health", get(cluster_health))
        .route("/v1/api/cluster/digest", get(cluster_digest))
        .route("/v1/api/debug/isolate", post(debug_isolate))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(crate::metrics::track_http))
        .with_state(app)
}

fn took_ms(start: Instant) -> f64 {
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
fn node_error_response(e: &crate::Error, start: Instant) -> Response {
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
async fn json_body<T: serde::de::DeserializeOwned>(
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

#[derive(Deserialize)]
struct LoginRequest {
    /// `user` (KalamDB's `username` is accepted too).
    #[serde(alias = "username")]
    user: String,
    password: String,
}

fn user_json(who: &Identity) -> serde_json::Value {
    json!({"id": who.user_id, "username": who.username, "role": who.role.name()})
}

/// `POST /v1/api/auth/login {"user": ..., "password": ...}` → an access token.
async fn login(
    State(app): State<Arc<App>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Instant::now();
    let req: LoginRequest = match json_body(&app, &headers, body, start).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let who = match app.auth.check_password(&req.user, &req.password, client.ip()).await {
        Ok(w) => w,
        Err(e) => {
            tracing::info!(target: "kalamdb_auth", user = %req.user, client = %client.ip(), "login refused: {e}");
            return node_error_response(&e, start);
        }
    };
    match app.auth.issue(&who) {
        Ok(issued) => {
            let expires_at = chrono::DateTime::from_timestamp(issued.expires_at_secs as i64, 0)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default();
            let body = json!({
                "access_token": issued.token,
                "token_type": "Bearer",
                "expires_at": expires_at,
                "user": user_json(&who),
            });
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(e) => node_error_response(&e, start),
    }
}

/// `GET /v1/api/auth/me`: who the credentials identify.
async fn me(State(app): State<Arc<App>>, ConnectInfo(client): ConnectInfo<SocketAddr>, headers: HeaderMap) -> Response {
    let start = Instant::now();
    match identify(&app, &headers, client, start).await {
        Ok((who, method)) => {
            (StatusCode::OK, axum::Json(json!({"user": user_json(&who), "auth": method.name()}))).into_response()
        }
        Err(resp) => resp,
    }
}

/// HTTP status of a query error code.
pub fn status_of(e: &kalamdb_query::Error) -> StatusCode {
    use kalamdb_query::Error as E;
    match e {
        E::Unavailable(_) | E::NotLeader(_) | E::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        E::RequestTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        E::Conflict(_) => StatusCode::CONFLICT,
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

async fn sql(
    State(app): State<Arc<App>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Instant::now();
    // Credentials first: a stranger learns nothing, not even whether its SQL parses.
    let (who, method) = match identify(&app, &headers, client, start).await {
        Ok(w) => w,
        Err(resp) => return resp,
    };
    let req: SqlRequest = match json_body(&app, &headers, body, start).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if req.sql.trim().is_empty() {
        return error_response(StatusCode::BAD_REQUEST, "EMPTY_SQL", "the 'sql' field is empty", start);
    }
    let linearizable = match req.consistency.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("linearizable") => true,
        Some("local") => false,
        Some(other) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                &format!("consistency must be \"linearizable\" or \"local\", got \"{other}\""),
                start,
            );
        }
    };
    // A single node applies every write before acknowledging it: local reads are already
    // linearizable there, so only cluster members pay for the barrier.
    let barrier: Option<Arc<dyn kalamdb_query::ReadBarrier>> = if linearizable && app.groups.transport.is_some() {
        Some(Arc::new(crate::cluster::RequestBarrier::new(app.groups.clone())))
    } else {
        None
    };
    // A linearizable request also sees every user change committed before it: a user
    // dropped (or demoted) through another node a moment ago is refused (or demoted) here.
    let who = match &barrier {
        Some(b) if method != Method::Anonymous && who.user_id != crate::auth::ROOT_USER => {
            if let Err(e) = b.wait(kalamdb_log::GroupId::Meta(kalamdb_log::MetaGroup::Users)).await {
                return query_error_response(&e, start);
            }
            match app.auth.confirm(who) {
                Ok(w) => w,
                Err(e) => return node_error_response(&e, start),
            }
        }
        _ => who,
    };
    tracing::debug!(target: "kalamdb_sql", user = %who.username, sql = %kalamdb_query::redact_passwords(&req.sql), linearizable, "statement");
    let ctx = ExecContext {
        user_id: who.user_id,
        role: who.role,
        namespace: req.namespace_id,
        params: req.params,
        barrier,
        impersonated_by: None,
    };
    match app.engine.execute(&req.sql, &ctx, &NodeProposer(&app.groups)).await {
        Ok(results) => {
            // Each result carries its statement's kind: the text is not split again here.
            for r in &results {
                metrics::counter!("kalamdb_sql_statements_total", "kind" => r.kind).increment(1);
            }
            success_response(&results, start)
        }
        Err(e) => query_error_response(&e, start),
    }
}

fn success_response(results: &[QueryResult], start: Instant) -> Response {
    let body = json!({"status": "success", "results": results, "took": took_ms(start)});
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let ready = app.groups.all_have_leader();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if ready { "healthy" } else { "unavailable" },
        "version": env!("CARGO_PKG_VERSION"),
        "api_version": "v1",
    });
    (status, axum::Json(body)).into_response()
}

#[derive(Debug, Deserialize)]
struct HealthQuery {
    /// `?local=true`: this node's view only, without asking the peers.
    #[serde(default)]
    local: bool,
}

async fn cluster_health(
    State(app): State<Arc<App>>,
    axum::extract::Query(q): axum::extract::Query<HealthQuery>,
) -> Response {
    let (body, all_led) = crate::cluster::health(&app.groups, !q.local).await;
    let status = if all_led { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

/// Per group: this node's applied index and a SHA-256 of its projection. Equal digests at
/// equal applied indexes on every member mean the replicas hold the same bytes. It reads every
/// projection, so it is for operators (dba or system), one at a time.
async fn cluster_digest(
    State(app): State<Arc<App>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let start = Instant::now();
    let who = match identify(&app, &headers, client, start).await {
        Ok((who, _)) => who,
        Err(resp) => return resp,
    };
    if let Err(e) = kalamdb_query::access::require(who.role, kalamdb_log::Role::Dba, "the cluster digest") {
        return query_error_response(&e, start);
    }
    let Ok(_slot) = app.digest_slot.try_acquire() else {
        return node_error_response(
            &crate::Error::Busy("a digest is already being computed; retry shortly".into()),
            start,
        );
    };
    let groups = app.groups.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for id in groups.layout.all() {
            let Some(g) = groups.groups.get(&id) else { continue };
            let before = *g.applied.borrow();
            let digest = kalamdb_projections::digest_group(groups.rows.db(), id)?;
            let after = *g.applied.borrow();
            out.push(
                json!({"group": id.to_string(), "applied_index": after, "stable": before == after, "digest": digest}),
            );
        }
        Ok::<_, kalamdb_projections::Error>(out)
    })
    .await;
    match result {
        Ok(Ok(groups)) => {
            (StatusCode::OK, axum::Json(json!({"node_id": app.groups.node_id, "groups": groups}))).into_response()
        }
        Ok(Err(e)) => error_response(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", &e.to_string(), start),
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", &e.to_string(), start),
    }
}

#[derive(Debug, Deserialize)]
struct IsolateRequest {
    isolated: bool,
}

/// Test-only fault switch: cut this node off the cluster network (both directions).
async fn debug_isolate(State(app): State<Arc<App>>, body: axum::body::Bytes) -> Response {
    let start = Instant::now();
    let Some(t) = app.groups.transport.as_ref().filter(|_| app.fault_injection) else {
        return not_found().await;
    };
    match serde_json::from_slice::<IsolateRequest>(&body) {
        Ok(r) => {
            t.set_isolated(r.isolated);
            (StatusCode::OK, axum::Json(json!({"status": "success", "isolated": r.isolated}))).into_response()
        }
        Err(e) => error_response(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            &format!("expected {{\"isolated\": bool}}: {e}"),
            start,
        ),
    }
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    match &app.metrics {
        Some(h) => {
            crate::metrics::before_render();
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.render()).into_response()
        }
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint", Instant::now())
}
