//! `/v1/api/auth/login` (a password for an access token and a refresh token),
//! `/v1/api/auth/refresh` (a refresh token, once, for a new pair: rotation), `/v1/api/auth/logout`
//! (revokes the session: every token of that login stops working) and `/v1/api/auth/me` (who
//! the credentials identify). Paths and fields are KalamDB's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kalamdb_log::{GroupId, MetaGroup};
use serde::Deserialize;
use serde_json::json;

use super::{App, identify, json_body, node_error_response};
use crate::auth::Identity;

#[derive(Deserialize)]
struct LoginRequest {
    /// `user` (KalamDB's `username` is accepted too).
    #[serde(alias = "username")]
    user: String,
    password: String,
}

/// The user as KalamDB's clients decode it: `email`, `created_at` and `updated_at` (RFC 3339)
/// besides id, name and role. Root and anonymous have no catalog record: their times are the
/// answer's own, as KalamDB gives them.
fn user_json(app: &App, who: &Identity) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp_micros();
    let (email, created, updated) = app.auth.profile_of(&who.user_id).unwrap_or((None, now, now));
    let time = |micros: i64| {
        chrono::DateTime::from_timestamp_micros(micros)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default()
    };
    json!({
        "id": who.user_id,
        "username": who.username,
        "role": who.role.name(),
        "email": email,
        "created_at": time(created),
        "updated_at": time(updated),
    })
}

/// Whether KalamDB's admin UI would let this user in: dba and system.
fn admin_ui_access(who: &Identity) -> bool {
    matches!(who.role, kalamdb_log::Role::Dba | kalamdb_log::Role::System)
}

/// `POST /v1/api/auth/login {"user": ..., "password": ...}` → an access token.
pub(super) async fn login(
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
    match app.auth.issue_session(&who, None) {
        Ok(tokens) => (StatusCode::OK, axum::Json(session_json(&app, &who, &tokens))).into_response(),
        Err(e) => node_error_response(&e, start),
    }
}

fn rfc3339_secs(secs: u64) -> String {
    chrono::DateTime::from_timestamp(secs as i64, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// The answer to a login or a refresh, in KalamDB's shape (plus our `token_type`).
fn session_json(app: &App, who: &Identity, t: &crate::auth::SessionTokens) -> serde_json::Value {
    json!({
        "access_token": t.access.token,
        "token_type": "Bearer",
        "expires_at": rfc3339_secs(t.access.expires_at_secs),
        "refresh_token": t.refresh.token,
        "refresh_expires_at": rfc3339_secs(t.refresh.expires_at_secs),
        "user": user_json(app, who),
        "admin_ui_access": admin_ui_access(who),
    })
}

/// The bearer token of a request: `Authorization: Bearer <token>`, else a JSON body's
/// `refresh_token` (KalamDB's clients send the header; a body is accepted too).
async fn presented_token(
    app: &App,
    headers: &HeaderMap,
    body: Body,
    start: Instant,
) -> Result<Option<String>, Response> {
    if let Some(h) = headers.get(header::AUTHORIZATION) {
        let text = h.to_str().unwrap_or("").trim();
        return match text.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(token.trim().to_string())),
            _ => Err(super::error_response(
                StatusCode::UNAUTHORIZED,
                "INVALID_TOKEN",
                "send the token as 'Authorization: Bearer <token>'",
                start,
            )),
        };
    }
    let has_body = headers.get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
    if !has_body {
        return Ok(None);
    }
    #[derive(Deserialize)]
    struct TokenBody {
        refresh_token: Option<String>,
    }
    let b: TokenBody = json_body(app, headers, body, start).await?;
    Ok(b.refresh_token)
}

/// Record a revocation in the users group (replicated: every node refuses the id from then on).
async fn revoke(app: &App, token_id: &str, user_id: &str, expires_at_secs: u64) -> Result<bool, Response> {
    let op = kalamdb_log::Op::RevokeToken {
        token_id: token_id.to_string(),
        user_id: user_id.to_string(),
        expires_at_secs,
        now_secs: crate::auth::unix_secs(),
    };
    match app.groups.propose(GroupId::Meta(MetaGroup::Users), op).await {
        Ok(kalamdb_log::OpResult::Failed { code: kalamdb_log::command::ApplyErrorCode::Conflict, .. }) => Ok(false),
        Ok(kalamdb_log::OpResult::Failed { message, .. }) => {
            Err(super::error_response(StatusCode::SERVICE_UNAVAILABLE, "SERVER_BUSY", &message, Instant::now()))
        }
        Ok(_) => Ok(true),
        Err(e) => Err(super::query_error_response(&kalamdb_query::Error::from(e), Instant::now())),
    }
}

/// Revoke a whole session: every token it issued expires within the refresh lifetime from now,
/// so the revocation is kept that long.
async fn revoke_session(app: &App, session_id: &str, user_id: &str) -> Result<bool, Response> {
    revoke(app, session_id, user_id, crate::auth::unix_secs() + app.auth.refresh_ttl_secs()).await
}

/// `POST /v1/api/auth/refresh` with `Authorization: Bearer <refresh token>`: a new access
/// token and a new refresh token of the same session. The presented refresh token is revoked
/// first (through the log), so it works once; presented again, it revokes the whole session
/// (someone else has it).
pub(super) async fn refresh(
    State(app): State<Arc<App>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Instant::now();
    let token = match presented_token(&app, &headers, body, start).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return node_error_response(
                &crate::Error::Unauthorized {
                    code: "AUTH_REQUIRED",
                    message: "send the refresh token as 'Authorization: Bearer <refresh token>'".into(),
                },
                start,
            );
        }
        Err(resp) => return resp,
    };
    let grant = match app.auth.check_refresh(&token).await {
        Ok(g) => g,
        Err(e) => {
            // A used refresh token presented again: end its session for everyone holding it.
            if let (crate::Error::Unauthorized { code: "TOKEN_REVOKED", .. }, Some((sid, user))) =
                (&e, app.auth.session_of(&token))
                && !app.auth.any_revoked(std::slice::from_ref(&sid))
            {
                tracing::warn!(target: "kalamdb_auth", user = %user, client = %client.ip(), "a used refresh token was presented again: session revoked");
                let _ = revoke_session(&app, &sid, &user).await;
            }
            return node_error_response(&e, start);
        }
    };
    match revoke(&app, &grant.token_id, &grant.identity.user_id, grant.expires_at_secs).await {
        Ok(true) => {}
        Ok(false) => {
            // Two refreshes raced with one token: the loser ends the session.
            let _ = revoke_session(&app, &grant.session_id, &grant.identity.user_id).await;
            return node_error_response(
                &crate::Error::Unauthorized {
                    code: "TOKEN_REVOKED",
                    message: "the refresh token was already used; log in again".into(),
                },
                start,
            );
        }
        Err(resp) => return resp,
    }
    match app.auth.issue_session(&grant.identity, Some(&grant.session_id)) {
        Ok(tokens) => (StatusCode::OK, axum::Json(session_json(&app, &grant.identity, &tokens))).into_response(),
        Err(e) => node_error_response(&e, start),
    }
}

/// `POST /v1/api/auth/logout` with `Authorization: Bearer <access or refresh token>`: the
/// token's session is revoked on every node; its access and refresh tokens stop working.
/// Without a token there is nothing to revoke (KalamDB answers the same).
pub(super) async fn logout(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let start = Instant::now();
    let token = match presented_token(&app, &headers, body, start).await {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    if let Some((sid, user)) = token.as_deref().and_then(|t| app.auth.session_of(t))
        && let Err(resp) = revoke_session(&app, &sid, &user).await
    {
        return resp;
    }
    (StatusCode::OK, axum::Json(json!({"message": "Logged out successfully"}))).into_response()
}

/// `GET /v1/api/auth/me`: who the credentials identify.
pub(super) async fn me(
    State(app): State<Arc<App>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let start = Instant::now();
    match identify(&app, &headers, client, start).await {
        Ok((who, method)) => {
            let body =
                json!({"user": user_json(&app, &who), "auth": method.name(), "admin_ui_access": admin_ui_access(&who)});
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(resp) => resp,
    }
}

/// `GET /v1/api/auth/status`: KalamDB's setup probe, which its CLI asks before prompting for
/// credentials. This server has no setup step (root's password comes from config; without
/// one root may log in from loopback only), so the answer is always `needs_setup: false`.
pub(super) async fn status(State(app): State<Arc<App>>) -> Response {
    let message = if app.auth.root_has_password() {
        "Server is configured: log in with a user's credentials"
    } else {
        "Server is configured: root has no password and may log in from loopback only"
    };
    (StatusCode::OK, axum::Json(json!({"needs_setup": false, "message": message}))).into_response()
}
