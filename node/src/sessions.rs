//! What the node tells SQL about itself: `system.sessions` (its open WebSocket connections,
//! registered here while they live) and `system.stats` (its Prometheus metrics as rows).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kalamdb_query::{NodeView, SessionInfo};
use metrics_exporter_prometheus::PrometheusHandle;

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// One open connection. Its count is bounded by `websocket.connections_max`: an entry is made
/// only for a connection that got a slot.
#[derive(Debug)]
struct Entry {
    client_addr: SocketAddr,
    transport: &'static str,
    opened_at_micros: i64,
    last_seen_at_micros: AtomicI64,
    user_id: Mutex<String>,
    last_method: Mutex<Option<&'static str>>,
    subscriptions: AtomicU64,
}

/// The node's open sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Entry>>>,
}

/// A registered session; dropping it (the connection ends) unregisters it.
#[derive(Debug)]
pub struct SessionHandle {
    id: u64,
    entry: Arc<Entry>,
    sessions: Arc<Sessions>,
}

impl Sessions {
    pub fn open(self: &Arc<Self>, client_addr: SocketAddr, transport: &'static str, user_id: &str) -> SessionHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let now = now_micros();
        let entry = Arc::new(Entry {
            client_addr,
            transport,
            opened_at_micros: now,
            last_seen_at_micros: AtomicI64::new(now),
            user_id: Mutex::new(user_id.to_string()),
            last_method: Mutex::new(None),
            subscriptions: AtomicU64::new(0),
        });
        self.open.lock().unwrap_or_else(|p| p.into_inner()).insert(id, entry.clone());
        SessionHandle { id, entry, sessions: self.clone() }
    }

    fn list(&self, max: usize) -> Vec<SessionInfo> {
        let open: Vec<(u64, Arc<Entry>)> = {
            let map = self.open.lock().unwrap_or_else(|p| p.into_inner());
            map.iter().take(max).map(|(id, e)| (*id, e.clone())).collect()
        };
        open.into_iter()
            .map(|(id, e)| SessionInfo {
                session_id: format!("{}-{id}", e.transport),
                user_id: e.user_id.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                transport: e.transport.to_string(),
                client_addr: Some(e.client_addr.to_string()),
                opened_at_micros: e.opened_at_micros,
                last_seen_at_micros: e.last_seen_at_micros.load(Ordering::Relaxed),
                last_method: e.last_method.lock().unwrap_or_else(|p| p.into_inner()).map(str::to_string),
                subscriptions: e.subscriptions.load(Ordering::Relaxed),
            })
            .collect()
    }
}

impl SessionHandle {
    /// The client sent a message of type `method`.
    pub fn seen(&self, method: &'static str) {
        self.entry.last_seen_at_micros.store(now_micros(), Ordering::Relaxed);
        *self.entry.last_method.lock().unwrap_or_else(|p| p.into_inner()) = Some(method);
    }

    /// The connection now acts as `user_id`.
    pub fn user(&self, user_id: &str) {
        *self.entry.user_id.lock().unwrap_or_else(|p| p.into_inner()) = user_id.to_string();
    }

    pub fn subscriptions(&self, n: usize) {
        self.entry.subscriptions.store(n as u64, Ordering::Relaxed);
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        self.sessions.open.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

/// The node as [`NodeView`] sees it.
#[derive(Debug)]
pub struct NodeIntrospection {
    pub sessions: Arc<Sessions>,
    pub metrics: Option<PrometheusHandle>,
}

impl NodeView for NodeIntrospection {
    /// Every sample of the node's Prometheus exposition as `(name{labels}, value)`: the same
    /// figures `/metrics` serves, readable over SQL (KalamDB's `\stats`).
    fn stats(&self, max: usize) -> Vec<(String, String)> {
        let Some(handle) = &self.metrics else { return Vec::new() };
        crate::metrics::before_render();
        let text = handle.render();
        text.lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' ').map(|(name, value)| (name.to_string(), value.to_string())))
            .take(max)
            .collect()
    }

    fn sessions(&self, max: usize) -> Vec<SessionInfo> {
        self.sessions.list(max)
    }
}
