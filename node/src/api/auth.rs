//! `/v1/api/auth/login` (a password for an access token) and `/v1/api/auth/me` (who the
//! credentials identify).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
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
    match app.auth.issue(&who) {
        Ok(issued) => {
            let expires_at = chrono::DateTime::from_timestamp(issued.expires_at_secs as i64, 0)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default();
            let body = json!({
                "access_token": issued.token,
                "token_type": "Bearer",
                "expires_at": expires_at,
                "user": user_json(&app, &who),
                "admin_ui_access": admin_ui_access(&who),
            });
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(e) => node_error_response(&e, start),
    }
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
