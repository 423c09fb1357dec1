//! One WebSocket connection: authentication (within `websocket.auth_timeout_ms`), the client's
//! messages (rate-limited, size-checked), its subscriptions (each a task of `live.rs`), pings
//! and the idle timeout, and the writer that drains the connection's bounded outbox.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use serde_json::Value as J;
use tokio::sync::{Notify, mpsc};

use super::live::{self, LiveRequest, Start};
use super::protocol::{self, ClientMessage, SUBSCRIPTION_ID_BYTES_MAX, code};
use crate::api::App;
use crate::api::tail::guard::{Entitlement, Refusal};
use crate::auth::Identity;

/// Queued messages written to the socket before one flush at most.
const WRITE_BATCH_MESSAGES_MAX: usize = 64;

/// Close codes (RFC 6455) the server uses.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const POLICY: u16 = 1008;
    /// "Try again later": the client fell behind; it reconnects and resumes from its `_seq`.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// A close the writer sends once everything queued before it is out.
#[derive(Default)]
struct CloseSignal {
    requested: std::sync::Mutex<Option<(u16, String)>>,
    notify: Notify,
    closed: AtomicBool,
}

impl CloseSignal {
    fn request(&self, code: u16, reason: &str) {
        let mut r = self.requested.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some((code, reason.to_string()));
        }
        drop(r);
        // Nothing more is queued: the writer drains what is and then closes.
        self.closed.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }
}

/// Where a connection's server messages are queued (bounded: `websocket.send_buffer_messages`).
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Message>,
    compress: bool,
    stall: Duration,
    close: Arc<CloseSignal>,
}

impl Outbox {
    /// Queue a message. A queue that stays full for `tail.stall_ms` means the client reads too
    /// slowly: the connection is closed (1013) after what is queued. `false`: it is closing.
    pub async fn send(&self, message: J) -> bool {
        if self.close.closed.load(Ordering::Relaxed) {
            return false;
        }
        match self.tx.send_timeout(protocol::frame(&message, self.compress), self.stall).await {
            Ok(()) => true,
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                metrics::counter!("kalamdb_ws_dropped_total", "reason" => "overflow").increment(1);
                self.close.request(
                    close::TRY_AGAIN_LATER,
                    "the client fell behind; reconnect and resume from the last _seq received",
                );
                false
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => false,
        }
    }

    /// Queue a message now, or not at all (answers to the client's own messages, pings).
    fn offer(&self, message: Message) {
        let _ = self.tx.try_send(message);
    }

    pub async fn closed(&self) {
        self.tx.closed().await;
    }
}

/// One subscription of the connection.
struct SubHandle {
    next: mpsc::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// A connection's state on the reading side.
struct Conn {
    app: Arc<App>,
    out: Outbox,
    entitlement: Option<Entitlement>,
    subs: HashMap<String, SubHandle>,
    /// This connection in `system.sessions`.
    session: crate::sessions::SessionHandle,
    /// Message budget of the current second.
    window_start: Instant,
    window_messages: u32,
}

/// Serve one upgraded connection. `pre_auth`: the identity of an `Authorization` header sent
/// with the upgrade (then `auth_success` is the first message, unprompted).
pub async fn serve(
    app: Arc<App>,
    socket: WebSocket,
    pre_auth: Option<Entitlement>,
    compress: bool,
    session: crate::sessions::SessionHandle,
) {
    let cfg = app.websocket.clone();
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(cfg.send_buffer_messages);
    let signal = Arc::new(CloseSignal::default());
    let out = Outbox { tx, compress, stall: Duration::from_millis(app.tail.stall_ms), close: signal.clone() };
    // The writer: queued messages in order; a requested close after what was queued before it.
    let writer_signal = signal.clone();
    let writer = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                m = rx.recv() => match m {
                    Some(m) => {
                        // Everything queued goes out in one write: frames are fed, then
                        // flushed once, not one system call per message.
                        if sink.feed(m).await.is_err() {
                            return;
                        }
                        for _ in 0..WRITE_BATCH_MESSAGES_MAX {
                            let Ok(m) = rx.try_recv() else { break };
                            if sink.feed(m).await.is_err() {
                                return;
                            }
                        }
                        if sink.flush().await.is_err() {
                            return;
                        }
                    }
                    None => break,
                },
                () = writer_signal.notify.notified() => break,
            }
        }
        // What was queued before the close goes out first, then the close with its reason.
        while let Ok(m) = rx.try_recv() {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        writer_signal.closed.store(true, Ordering::Relaxed);
        let requested = writer_signal.requested.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (code, reason) = requested.unwrap_or((close::NORMAL, String::new()));
        let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
        let _ = sink.close().await;
    });
    let mut conn = Conn {
        app: app.clone(),
        out: out.clone(),
        entitlement: None,
        subs: HashMap::new(),
        session,
        window_start: Instant::now(),
        window_messages: 0,
    };
    if let Some(e) = pre_auth {
        conn.out.offer(protocol::frame(&protocol::auth_success(&e.who.user_id, e.who.role), false));
        conn.entitlement = Some(e);
    }
    let auth_deadline = tokio::time::Instant::now() + Duration::from_millis(cfg.auth_timeout_ms);
    let idle = Duration::from_millis(cfg.client_timeout_ms);
    let mut last_seen = tokio::time::Instant::now();
    let mut ping = tokio::time::interval(Duration::from_millis(cfg.ping_interval_ms));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        let authed = conn.entitlement.is_some();
        tokio::select! {
            frame = stream.next() => {
                let Some(Ok(frame)) = frame else { break };
                last_seen = tokio::time::Instant::now();
                if !conn.on_frame(frame).await {
                    break;
                }
            }
            () = tokio::time::sleep_until(auth_deadline), if !authed => {
                conn.out.offer(protocol::frame(&protocol::auth_error("Authentication timeout - no auth message received in time"), false));
                signal.request(close::POLICY, "Authentication timeout");
                break;
            }
            () = tokio::time::sleep_until(last_seen + idle) => {
                signal.request(close::NORMAL, "Heartbeat timeout");
                break;
            }
            _ = ping.tick() => {
                conn.out.offer(Message::Ping(bytes::Bytes::new()));
                // A token that expired or a user dropped ends the connection; the client logs
                // in again and resumes its subscriptions from their last `_seq`.
                if let Some(e) = &conn.entitlement
                    && let Err(why) = e.recheck(&app.auth, None, false)
                {
                    conn.out.offer(protocol::frame(&protocol::auth_error(&why), false));
                    signal.request(close::POLICY, "Authentication expired");
                    break;
                }
            }
            () = signal.notify.notified() => {
                // A subscription asked for the close: hand the request back to the writer.
                signal.notify.notify_one();
                break;
            }
        }
    }
    for (_, s) in conn.subs.drain() {
        s.task.abort();
    }
    // The writer ends once every sender is gone (or after the requested close).
    drop(conn);
    drop(out);
    let _ = tokio::time::timeout(Duration::from_millis(app.tail.stall_ms), writer).await;
}

impl Conn {
    /// Handle one client frame; `false` ends the connection.
    async fn on_frame(&mut self, frame: Message) -> bool {
        let text = match frame {
            Message::Text(t) => t,
            Message::Binary(_) => {
                self.reply(protocol::error(
                    "protocol",
                    code::UNSUPPORTED_DATA,
                    "Binary not supported: send JSON text frames",
                ));
                return true;
            }
            Message::Close(_) => return false,
            Message::Ping(_) | Message::Pong(_) => return true,
        };
        let cfg = &self.app.websocket;
        if text.len() > cfg.message_bytes_max {
            let m = format!("Message exceeds maximum size of {} bytes", cfg.message_bytes_max);
            self.reply(protocol::error("protocol", code::MESSAGE_TOO_LARGE, &m));
            return true;
        }
        if self.window_start.elapsed() >= Duration::from_secs(1) {
            self.window_start = Instant::now();
            self.window_messages = 0;
        }
        self.window_messages += 1;
        if self.window_messages > cfg.messages_per_sec_max {
            metrics::counter!("kalamdb_ws_refused_total", "reason" => "rate").increment(1);
            self.reply(protocol::error("rate_limit", code::RATE_LIMIT_EXCEEDED, "Too many messages"));
            return true;
        }
        let message: ClientMessage = match serde_json::from_str(text.as_str()) {
            Ok(m) => m,
            Err(e) => {
                self.reply(protocol::error("protocol", code::INVALID_MESSAGE, &format!("Invalid message: {e}")));
                return true;
            }
        };
        self.session.seen(message.kind());
        let reply = self.on_message(message).await;
        self.session.subscriptions(self.subs.len());
        reply
    }

    /// Handle one parsed client message; `false` ends the connection.
    async fn on_message(&mut self, message: ClientMessage) -> bool {
        match message {
            ClientMessage::Authenticate { method, token, protocol: _ } => {
                return self.authenticate(method, &token).await;
            }
            ClientMessage::Ping => {}
            _ if self.entitlement.is_none() => {
                self.reply(protocol::error(
                    "subscribe",
                    code::AUTH_REQUIRED,
                    "Authentication required before subscribing",
                ));
            }
            ClientMessage::Subscribe { subscription } => self.subscribe(subscription),
            ClientMessage::NextBatch { subscription_id, .. } => match self.subs.get(&subscription_id) {
                // A request while one is pending, or after the last batch, changes nothing.
                Some(s) => {
                    let _ = s.next.try_send(());
                }
                None => self.reply(protocol::error(
                    &subscription_id,
                    code::NOT_FOUND,
                    "no such subscription on this connection",
                )),
            },
            ClientMessage::Unsubscribe { subscription_id } => {
                if let Some(s) = self.subs.remove(&subscription_id) {
                    s.task.abort();
                }
            }
        }
        true
    }

    fn reply(&self, message: J) {
        self.out.offer(protocol::frame(&message, false));
    }

    async fn authenticate(&mut self, method: Option<String>, token: &str) -> bool {
        if let Some(e) = self.entitlement.as_ref().filter(|e| e.who.user_id != crate::auth::ANONYMOUS_USER) {
            self.reply(protocol::auth_success(&e.who.user_id, e.who.role));
            return true;
        }
        if method.as_deref().is_some_and(|m| !m.eq_ignore_ascii_case("jwt")) {
            self.reply(protocol::auth_error("Unsupported authentication method: send method \"jwt\" with a token"));
            self.out.close.request(close::POLICY, "Authentication failed");
            return false;
        }
        match self.app.auth.verify_token(token).await {
            Ok(who) => {
                let expires = self.app.auth.token_expiry(token);
                self.reply(protocol::auth_success(&who.user_id, who.role));
                self.session.user(&who.user_id);
                self.entitlement = Some(entitlement(who, expires, self.app.auth.token_ids(token)));
                true
            }
            Err(e) => {
                metrics::counter!("kalamdb_ws_refused_total", "reason" => "auth").increment(1);
                self.reply(protocol::auth_error(&e.to_string()));
                self.out.close.request(close::POLICY, "Authentication failed");
                false
            }
        }
    }

    fn subscribe(&mut self, req: protocol::SubscriptionRequest) {
        let id = req.id.trim().to_string();
        if id.is_empty() || id.len() > SUBSCRIPTION_ID_BYTES_MAX {
            let m = format!("a subscription id is 1 to {SUBSCRIPTION_ID_BYTES_MAX} bytes");
            self.reply(protocol::error("invalid_subscription", code::INVALID_SUBSCRIPTION_ID, &m));
            return;
        }
        // Finished subscriptions (failed, table dropped) free their ids.
        self.subs.retain(|_, s| !s.task.is_finished());
        if self.subs.contains_key(&id) {
            self.reply(protocol::error(
                &id,
                code::INVALID_SUBSCRIPTION_ID,
                "this id is already subscribed on this connection",
            ));
            return;
        }
        let cfg = &self.app.websocket;
        if self.subs.len() >= cfg.subscriptions_per_connection_max {
            let m = format!("a connection holds at most {} subscriptions", cfg.subscriptions_per_connection_max);
            self.reply(protocol::error(&id, code::SUBSCRIPTION_LIMIT_EXCEEDED, &m));
            return;
        }
        let Some(entitlement) = self.entitlement.clone() else { return };
        let options = req.options;
        let start = match &options {
            None => Start::Live,
            Some(o) => match (o.from, o.last_rows) {
                (Some(seq), _) => Start::Resume(seq.0),
                (None, last_rows) => {
                    let batch_size = o.batch_size.unwrap_or(DEFAULT_BATCH_ROWS);
                    if batch_size == 0 || batch_size > cfg.batch_rows_max {
                        let m = format!("batch_size must be 1..={}", cfg.batch_rows_max);
                        self.reply(protocol::error(&id, code::UNSUPPORTED, &m));
                        return;
                    }
                    if let Some(n) = last_rows.filter(|n| *n > batch_size) {
                        let m = format!(
                            "last_rows ({n}) cannot exceed batch_size ({batch_size}); paginated last_rows replay is not supported"
                        );
                        self.reply(protocol::error(&id, code::UNSUPPORTED, &m));
                        return;
                    }
                    Start::Initial { batch_size, last_rows }
                }
            },
        };
        let state = &self.app.tail_state;
        let tail = &self.app.tail;
        if let Err(refusal) =
            state.slots.acquire(&entitlement.who.user_id, tail.subscribers_max, tail.subscribers_per_user_max)
        {
            let m = match refusal {
                Refusal::Node(max) => format!("this node serves at most {max} subscriptions"),
                Refusal::User(max) => format!("Maximum subscriptions reached ({max} per user on one node)"),
            };
            self.reply(protocol::error(&id, code::SUBSCRIPTION_LIMIT_EXCEEDED, &m));
            return;
        }
        let slot = crate::api::tail::ActiveGuard(self.app.clone(), entitlement.who.user_id.clone());
        let (next_tx, next_rx) = mpsc::channel(1);
        let sub =
            LiveRequest { app: self.app.clone(), id: id.clone(), sql: req.sql, entitlement, out: self.out.clone() };
        let task = tokio::spawn(async move {
            let _slot = slot;
            live::run(sub, start, next_rx).await;
        });
        self.subs.insert(id, SubHandle { next: next_tx, task });
    }
}

/// Rows per initial data batch when the client does not say (KalamDB's default).
pub const DEFAULT_BATCH_ROWS: u64 = 1000;

/// What a subscription re-checks while it runs: the token's expiry and revocation, the user,
/// its role.
pub fn entitlement(who: Identity, expires_at_secs: Option<u64>, token_ids: Vec<String>) -> Entitlement {
    Entitlement { who, expires_at_secs, basic_password_hash: None, token_ids }
}
