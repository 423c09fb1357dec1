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

fn user_json(who: &Identity) -> serde_json::Value {
    json!({"id": who.user_id, "username": who.username, "role": who.role.name()})
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
                "user": user_json(&who),
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
            (StatusCode::OK, axum::Json(json!({"user": user_json(&who), "auth": method.name()}))).into_response()
        }
        Err(resp) => resp,
    }
}
