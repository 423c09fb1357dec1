//! `GET /v1/ws`: live queries over WebSocket in KalamDB's protocol, so its SDKs, its CLI's
//! `\subscribe` and its admin UI follow tables here unchanged. The origin is checked by the
//! CORS middleware before the upgrade (a page on an unlisted origin gets 403); the client
//! authenticates with an `Authorization: Bearer` header on the upgrade or an `authenticate`
//! message after it. Subscriptions read the same change records as the tail endpoint, under
//! the same access rules and caps (`live.rs`); `session.rs` runs a connection.

pub mod live;
pub mod protocol;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::Response;

use super::{App, error_response, node_error_response};

/// Frames larger than this are refused by the WebSocket layer itself (the connection closes
/// with 1009); messages between `websocket.message_bytes_max` and this get a
/// `MESSAGE_TOO_LARGE` answer and the connection stays open.
pub const FRAME_SLACK_BYTES: usize = 64 << 10;

/// Open connections of this node.
#[derive(Debug)]
pub struct WsState {
    connections: AtomicUsize,
    /// Each connection while it lives (`system.sessions`).
    sessions: Arc<crate::sessions::Sessions>,
}

impl WsState {
    pub fn new(sessions: Arc<crate::sessions::Sessions>) -> WsState {
        WsState { connections: AtomicUsize::new(0), sessions }
    }
}

struct ConnectionGuard(Arc<App>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let left = self.0.ws_state.connections.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
        metrics::gauge!("kalamdb_ws_connections").set(left as f64);
    }
}

/// `GET /v1/ws` (`?compress=false` turns gzip frames off).
pub async fn upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let start = Instant::now();
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                &format!("/v1/ws is a WebSocket endpoint: {e}"),
                start,
            );
        }
    };
    // Credentials on the upgrade (non-browser clients): checked now, so a bad token gets a
    // 401 with its code instead of an upgraded socket.
    // No credentials on a server that allows anonymous requests: the anonymous identity, as
    // on every other endpoint (an `authenticate` message later replaces it).
    let pre_auth = match headers.get(header::AUTHORIZATION) {
        None => app.auth.anonymous_role().map(|role| {
            let who = crate::auth::Identity {
                user_id: crate::auth::ANONYMOUS_USER.into(),
                username: crate::auth::ANONYMOUS_USER.into(),
                role,
            };
            session::entitlement(who, None, Vec::new())
        }),
        Some(h) => match app.auth.authenticate(Some(h.as_bytes()), client.ip()).await {
            Ok((who, _)) => {
                let expires = app.auth.bearer_expiry(Some(h.as_bytes()));
                let ids =
                    super::tail::bearer_token(Some(h.as_bytes())).map(|t| app.auth.token_ids(t)).unwrap_or_default();
                Some(session::entitlement(who, expires, ids))
            }
            Err(e) => return node_error_response(&e, start),
        },
    };
    let compress = !uri.query().unwrap_or("").split('&').any(|kv| kv.eq_ignore_ascii_case("compress=false"));
    let cfg = &app.websocket;
    if app.ws_state.connections.fetch_add(1, Ordering::SeqCst) >= cfg.connections_max {
        app.ws_state.connections.fetch_sub(1, Ordering::SeqCst);
        metrics::counter!("kalamdb_ws_refused_total", "reason" => "connections").increment(1);
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "TOO_MANY_CONNECTIONS",
            &format!("this node serves at most {} WebSocket connections", cfg.connections_max),
            start,
        );
    }
    metrics::gauge!("kalamdb_ws_connections").set(app.ws_state.connections.load(Ordering::SeqCst) as f64);
    let guard = ConnectionGuard(app.clone());
    let user = pre_auth.as_ref().map_or("", |e| e.who.user_id.as_str());
    let registered = app.ws_state.sessions.open(client, "websocket", user);
    let limit = cfg.message_bytes_max.saturating_add(FRAME_SLACK_BYTES);
    ws.max_message_size(limit).max_frame_size(limit).on_upgrade(move |socket| async move {
        let _guard = guard;
        session::serve(app, socket, pre_auth, compress, registered).await;
    })
}
