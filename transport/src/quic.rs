//! The QUIC endpoint of a node: one UDP socket for every group, one connection per peer
//! (dialed lazily, re-dialed after failures), one bidirectional stream per request. Every
//! connection is authenticated by a Hello exchange before any other frame is served.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use kalamdb_log::types::{NodeId, Raft};
use kalamdb_log::{EncodedCommand, GroupId};
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};

use crate::auth;
use crate::error::{Error, Result};
use crate::frame::{FrameKind, HEADER_BYTES, Header, encode_frame};
use crate::wire::{self, ForwardResponse, Hello, ReadIndexResponse, StatusResponse};

/// Time to dial and authenticate a peer.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// After a failed dial, calls to that peer fail fast for this long instead of each waiting
/// for its own dial (openraft retries every heartbeat, for every group).
pub const REDIAL_BACKOFF_MS: u64 = 200;
/// Time an accepted connection has to send its Hello.
pub const HELLO_TIMEOUT_MS: u64 = 2_000;
/// How long a refused connection stays open for the peer to read our answer.
pub const REFUSAL_LINGER_MS: u64 = 1_000;
/// Largest Hello body: read before the peer is authenticated, so kept tiny.
pub const HELLO_BYTES_MAX: usize = 4 << 10;
/// QUIC flow-control windows: large enough that a multi-MiB AppendEntries frame moves in a
/// few round trips on a LAN.
pub const STREAM_WINDOW_BYTES: u32 = 16 << 20;
pub const CONNECTION_WINDOW_BYTES: u32 = 64 << 20;
/// Concurrent requests one peer may have open on a connection.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 512;
/// Before its Hello is verified a dialer gets one stream and a small connection window: an
/// unauthenticated party can make this node buffer no more than this.
pub const PREAUTH_WINDOW_BYTES: u32 = 64 << 10;
/// A peer silent this long (keep-alives included) is considered gone and its connection closed.
pub const IDLE_TIMEOUT_MS: u32 = 5_000;
pub const KEEP_ALIVE_MS: u64 = 1_000;
/// QUIC application error code for a connection refused by authentication.
pub const CLOSE_AUTH_FAILED: u32 = 0x10;
/// QUIC stream reset code of a request the receiver cannot read: a kind it does not know (a
/// build older than the request) or a body that does not decode.
pub const CLOSE_BAD_FRAME: u32 = 0x11;
/// QUIC stream reset code of a request that arrived before the node serves its peers.
pub const CLOSE_NOT_SERVING: u32 = 0x12;

/// What this node's transport needs to know about the cluster.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub node_id: NodeId,
    pub cluster_id: String,
    pub secret: Vec<u8>,
    pub bind: SocketAddr,
    /// The configured members' Raft addresses (host:port; resolved at dial time). Members
    /// that join later are learned from Raft membership ([`Transport::learn_member`]).
    pub members: BTreeMap<NodeId, String>,
    /// Canonical text of what every member must agree on (the shard counts, which fix the set
    /// of groups): exchanged in Hello, and a peer whose layout differs is refused with both in
    /// the log.
    pub layout: String,
}

/// A refusal (ours or a peer's) is logged at error level once per this interval per
/// message, not on every redial.
pub const REFUSAL_LOG_INTERVAL_MS: u64 = 30_000;

/// The node-side services the transport serves to peers.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    fn raft(&self, group: GroupId) -> Option<Raft>;
    /// Whether this node may answer a vote request of `group` now; `Err` says why not (the
    /// candidate then counts no vote from it). Asked before openraft sees the request.
    fn may_vote(&self, _group: GroupId) -> std::result::Result<(), String> {
        Ok(())
    }
    async fn forward(&self, group: GroupId, command: EncodedCommand) -> ForwardResponse;
    async fn read_index(&self, group: GroupId) -> ReadIndexResponse;
    fn status(&self) -> StatusResponse;
    /// What this node is (see [`wire::NodeInfo`]).
    fn info(&self) -> wire::NodeInfo;
    /// A leadership move of `group` (see [`wire::LeadershipRequest`]).
    async fn leadership(&self, group: GroupId, request: wire::LeadershipRequest) -> wire::LeadershipResponse;
    /// A membership change of `group` (see [`wire::MembershipRequest`]).
    async fn membership(&self, group: GroupId, request: wire::MembershipRequest) -> wire::MembershipResponse;
}

/// One peer's connection state. `state` is a std mutex held only for instants; `dialing`
/// serializes dials and is never needed by the accept path (two nodes dialing each other
/// at once must not wait on each other).
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    dialing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct SlotState {
    conn: Option<Connection>,
    /// The incarnation of the process `conn` reaches.
    incarnation: u64,
    failed_at: Option<Instant>,
    last_error: String,
}

impl Slot {
    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self) -> Option<Connection> {
        let mut s = self.state();
        match s.conn.as_ref().map(|c| c.close_reason().is_none()) {
            Some(true) => s.conn.clone(),
            Some(false) => {
                s.conn = None;
                None
            }
            None => None,
        }
    }
}

pub struct Transport {
    cfg: TransportConfig,
    /// Raft address of every node this one may dial: the configured members, then whatever
    /// Raft membership names (a node added at runtime). Bounded by the node id range.
    members: Mutex<BTreeMap<NodeId, String>>,
    endpoint: Endpoint,
    slots: Mutex<HashMap<NodeId, Arc<Slot>>>,
    /// Test-only fault switch: when set, this node neither sends nor serves any frame, as if
    /// its network were cut.
    isolated: AtomicBool,
    next_request: AtomicU64,
    handler: OnceLock<Arc<dyn Handler>>,
    incarnation: u64,
    /// Last refusal logged at error level, and when (see `REFUSAL_LOG_INTERVAL_MS`).
    refusal_logged: Mutex<HashMap<String, Instant>>,
    /// Per group: the snapshot being received (its meta, as sent) and the offset of the next
    /// byte expected. openraft writes a chunk wherever its offset says; a chunk that does not
    /// continue what has arrived is refused here, so a received snapshot has no holes.
    snapshot_offsets: Mutex<HashMap<u32, (Vec<u8>, u64)>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("node_id", &self.cfg.node_id).field("bind", &self.cfg.bind).finish()
    }
}

/// What the outgoing connection to one peer has counted since it was dialed (for metrics and
/// for tests that pin the packets a call costs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerStats {
    /// QUIC's smoothed round-trip time estimate.
    pub rtt: Duration,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub lost_packets: u64,
    /// STOP_SENDING frames sent and received: a stream whose end was never read. Each is a
    /// packet of its own, so a healthy connection counts none.
    pub stop_sending_frames: u64,
}

/// `accept_streams`: the acceptor side serves requests, but grants one stream and a small
/// window until the dialer's Hello is verified (then [`Transport::serve_connection`] opens
/// them up); the dialer side never accepts a stream on its outgoing connection, so it grants
/// none.
fn transport_config(accept_streams: bool) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    let (streams, window) = if accept_streams { (1, PREAUTH_WINDOW_BYTES) } else { (0, CONNECTION_WINDOW_BYTES) };
    t.max_concurrent_bidi_streams(VarInt::from_u32(streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW_BYTES));
    t.receive_window(VarInt::from_u32(window));
    t.send_window(u64::from(CONNECTION_WINDOW_BYTES));
    t.max_idle_timeout(Some(VarInt::from_u32(IDLE_TIMEOUT_MS).into()));
    t.keep_alive_interval(Some(Duration::from_millis(KEEP_ALIVE_MS)));
    Arc::new(t)
}

fn exported(conn: &Connection) -> Result<[u8; auth::EXPORTER_BYTES]> {
    let mut out = [0u8; auth::EXPORTER_BYTES];
    conn.export_keying_material(&mut out, auth::EXPORTER_LABEL, b"")
        .map_err(|_| Error::Auth("TLS keying material export failed".into()))?;
    Ok(out)
}

fn rejected(reason: &'static str) {
    metrics::counter!("kalamdb_transport_frames_rejected_total", "reason" => reason).increment(1);
}

/// Read one frame from a stream: the header first (so an oversized body is refused before
/// it is buffered), then exactly `body_len` bytes.
pub async fn read_frame(recv: &mut RecvStream) -> Result<(Header, Bytes)> {
    read_frame_limited(recv, crate::frame::FRAME_BYTES_MAX).await
}

/// [`read_frame`] with a smaller body limit (for frames read before authentication).
///
/// A stream carries exactly one frame each way, so the frame must be followed by the stream's
/// end, and reading that end matters beyond the check: quinn answers a receive stream dropped
/// before its end was read with a STOP_SENDING frame, one more ack-eliciting packet (and the
/// peer's ACK of it) per message on the path of every write.
async fn read_frame_limited(recv: &mut RecvStream, body_bytes_max: usize) -> Result<(Header, Bytes)> {
    let mut head = [0u8; HEADER_BYTES];
    recv.read_exact(&mut head).await.map_err(|e| match e {
        quinn::ReadExactError::ReadError(quinn::ReadError::Reset(code)) => Error::Reset(code.into_inner()),
        e => Error::Frame(format!("read header: {e}")),
    })?;
    let header = Header::decode(&head)?;
    if header.body_len as usize > body_bytes_max {
        return Err(Error::Frame(format!(
            "{} body of {} bytes exceeds {body_bytes_max}",
            header.kind.name(),
            header.body_len
        )));
    }
    let mut body = vec![0u8; header.body_len as usize];
    recv.read_exact(&mut body).await.map_err(|e| Error::Frame(format!("read body: {e}")))?;
    let mut past_end = [0u8; 1];
    match recv.read(&mut past_end).await {
        Ok(None) => {}
        Ok(Some(_)) => return Err(Error::Frame(format!("bytes after the {} frame", header.kind.name()))),
        // The frame is whole: a connection lost (a peer shutting down) or a stream reset
        // right after it does not unsay it. Failing here would turn a write's answer, already
        // received, into an unknown outcome.
        Err(e) => tracing::debug!(target: "kalamdb_transport", error = %e, "stream end not read"),
    }
    metrics::counter!("kalamdb_transport_frames_total", "direction" => "received").increment(1);
    metrics::counter!("kalamdb_transport_frame_bytes_total", "direction" => "received")
        .increment((HEADER_BYTES + body.len()) as u64);
    Ok((header, Bytes::from(body)))
}

async fn write_frame(send: &mut SendStream, kind: FrameKind, group: u32, rid: u64, body: &[u8]) -> Result<()> {
    let frame = encode_frame(kind, group, rid, body)?;
    send.write_all(&frame).await.map_err(|e| Error::Frame(format!("write: {e}")))?;
    metrics::counter!("kalamdb_transport_frames_total", "direction" => "sent").increment(1);
    metrics::counter!("kalamdb_transport_frame_bytes_total", "direction" => "sent").increment(frame.len() as u64);
    send.finish().map_err(|e| Error::Frame(format!("finish: {e}")))?;
    Ok(())
}

impl Transport {
    /// Bind the endpoint. Must run inside a tokio runtime.
    pub fn bind(cfg: TransportConfig) -> Result<Arc<Transport>> {
        let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crate::tls::server_config()?)
            .map_err(|e| Error::Setup(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport_config(true));
        let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crate::tls::client_config()?)
            .map_err(|e| Error::Setup(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport_config(false));
        let mut endpoint = Endpoint::server(server, cfg.bind)
            .map_err(|e| Error::Setup(format!("bind QUIC endpoint on {}: {e}", cfg.bind)))?;
        endpoint.set_default_client_config(client);
        tracing::info!(target: "kalamdb_transport", bind = %cfg.bind, node_id = cfg.node_id, "QUIC endpoint listening");
        Ok(Arc::new(Transport {
            members: Mutex::new(cfg.members.clone()),
            cfg,
            endpoint,
            slots: Mutex::new(HashMap::new()),
            isolated: AtomicBool::new(false),
            next_request: AtomicU64::new(1),
            handler: OnceLock::new(),
            incarnation: fastrand::u64(1..),
            refusal_logged: Mutex::new(HashMap::new()),
            snapshot_offsets: Mutex::new(HashMap::new()),
        }))
    }

    pub fn node_id(&self) -> NodeId {
        self.cfg.node_id
    }

    /// Remember (or update) the Raft address of `node`, as Raft membership names it. A changed
    /// address takes effect at the next dial.
    pub fn learn_member(&self, node: NodeId, raft_addr: &str) {
        if raft_addr.is_empty() || node == self.cfg.node_id || !(1..=auth::NODE_ID_MAX).contains(&node) {
            return;
        }
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        if members.get(&node).map(String::as_str) != Some(raft_addr) {
            tracing::info!(target: "kalamdb_transport", peer = node, raft_addr, "member address learned");
            members.insert(node, raft_addr.to_owned());
        }
    }

    fn member_addr(&self, node: NodeId) -> Option<String> {
        self.members.lock().unwrap_or_else(|p| p.into_inner()).get(&node).cloned()
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Start serving peers with `handler`. Called once, after the groups exist.
    pub fn serve(self: &Arc<Self>, handler: Arc<dyn Handler>) {
        if self.handler.set(handler).is_err() {
            tracing::warn!(target: "kalamdb_transport", "serve called twice; ignoring");
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(incoming) = me.endpoint.accept().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let remote = incoming.remote_address();
                    match incoming.await {
                        Ok(conn) => me.serve_connection(conn).await,
                        Err(e) => tracing::debug!(target: "kalamdb_transport", %remote, error = %e, "handshake failed"),
                    }
                });
            }
        });
    }

    /// Test-only fault switch (exposed by the node only when fault injection is enabled).
    pub fn set_isolated(&self, isolated: bool) {
        self.isolated.store(isolated, Ordering::SeqCst);
        if isolated {
            // Drop live connections so peers notice at once rather than at idle timeout.
            let slots: Vec<_> = self.slots.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
            for slot in slots {
                if let Some(c) = slot.state().conn.take() {
                    c.close(VarInt::from_u32(0), b"isolated");
                }
            }
        }
        tracing::warn!(target: "kalamdb_transport", isolated, "fault switch changed");
    }

    pub fn is_isolated(&self) -> bool {
        self.isolated.load(Ordering::SeqCst)
    }

    /// Whether a live, authenticated connection to `node` exists right now.
    pub fn is_connected(&self, node: NodeId) -> bool {
        if node == self.cfg.node_id {
            return true;
        }
        let slot = self.slots.lock().unwrap_or_else(|p| p.into_inner()).get(&node).cloned();
        slot.is_some_and(|s| s.live().is_some())
    }

    /// Counters of the live outgoing connection to `node` since it was dialed; `None` while
    /// there is none.
    pub fn peer_stats(&self, node: NodeId) -> Option<PeerStats> {
        let slot = self.slots.lock().unwrap_or_else(|p| p.into_inner()).get(&node).cloned()?;
        let stats = slot.live()?.stats();
        Some(PeerStats {
            rtt: stats.path.rtt,
            datagrams_sent: stats.udp_tx.datagrams,
            datagrams_received: stats.udp_rx.datagrams,
            lost_packets: stats.path.lost_packets,
            stop_sending_frames: stats.frame_tx.stop_sending + stats.frame_rx.stop_sending,
        })
    }

    /// The peers this node has dialed (live connection or not).
    pub fn peers(&self) -> Vec<NodeId> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).keys().copied().collect()
    }

    pub fn close(&self) {
        self.endpoint.close(VarInt::from_u32(0), b"shutdown");
    }

    fn slot(&self, node: NodeId) -> Arc<Slot> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).entry(node).or_default().clone()
    }

    async fn connection(&self, node: NodeId) -> Result<Connection> {
        let slot = self.slot(node);
        if let Some(c) = slot.live() {
            return Ok(c);
        }
        let _dialing = slot.dialing.lock().await;
        // Someone else may have dialed while we waited.
        if let Some(c) = slot.live() {
            return Ok(c);
        }
        {
            let s = slot.state();
            if let Some(at) = s.failed_at
                && at.elapsed() < Duration::from_millis(REDIAL_BACKOFF_MS)
            {
                return Err(Error::Unreachable { node, reason: s.last_error.clone() });
            }
        }
        let result = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), self.dial(node)).await;
        let mut s = slot.state();
        match result {
            Ok(Ok((c, incarnation))) => {
                tracing::info!(target: "kalamdb_transport", peer = node, "connected");
                s.conn = Some(c.clone());
                s.incarnation = incarnation;
                s.failed_at = None;
                Ok(c)
            }
            Ok(Err(e)) => {
                s.failed_at = Some(Instant::now());
                s.last_error = e.to_string();
                match &e {
                    Error::Auth(m) => self.log_refusal(&format!("node {node} and this node cannot join: {m}")),
                    _ => tracing::debug!(target: "kalamdb_transport", peer = node, error = %e, "dial failed"),
                }
                Err(match e {
                    Error::Auth(m) => Error::Auth(m),
                    other => Error::Unreachable { node, reason: other.to_string() },
                })
            }
            Err(_) => {
                s.failed_at = Some(Instant::now());
                s.last_error = "dial timed out".into();
                Err(Error::Unreachable { node, reason: "dial timed out".into() })
            }
        }
    }

    /// Dial and authenticate `node`; returns the connection and the peer's incarnation.
    async fn dial(&self, node: NodeId) -> Result<(Connection, u64)> {
        let addr = self.member_addr(node).ok_or(Error::UnknownNode(node))?;
        let sock = tokio::net::lookup_host(addr.as_str())
            .await?
            .next()
            .ok_or_else(|| Error::Setup(format!("{addr} resolves to no address")))?;
        let conn = self
            .endpoint
            .connect(sock, crate::tls::SERVER_NAME)
            .map_err(|e| Error::Setup(e.to_string()))?
            .await
            .map_err(|e| Error::Setup(format!("QUIC handshake with {addr}: {e}")))?;
        let ekm = exported(&conn)?;
        let hello = Hello {
            cluster_id: self.cfg.cluster_id.clone(),
            node_id: self.cfg.node_id,
            incarnation: self.incarnation,
            layout: self.cfg.layout.clone(),
            proof: auth::prove(&self.cfg.secret, auth::ROLE_DIALER, &self.cfg.cluster_id, self.cfg.node_id, &ekm)?,
        };
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| Error::Setup(e.to_string()))?;
        write_frame(&mut send, FrameKind::Hello, 0, 0, &wire::to_bytes(&hello)?).await?;
        let (header, body) = read_frame(&mut recv).await.map_err(|_| {
            Error::Auth(format!("node {node} refused our hello (wrong jwt_secret or cluster_id: see its log)"))
        })?;
        if header.kind != FrameKind::HelloAck {
            return Err(Error::Auth(format!("node {node} answered hello with {}", header.kind.name())));
        }
        let ack: Hello = wire::from_bytes(&body)?;
        if ack.cluster_id != self.cfg.cluster_id {
            return Err(Error::Auth(format!(
                "{addr} is in cluster '{}', this node in '{}': check cluster_id in every server.toml",
                ack.cluster_id, self.cfg.cluster_id
            )));
        }
        if ack.node_id != node {
            return Err(Error::Auth(format!("{addr} is node {}, our member list says node {node}", ack.node_id)));
        }
        auth::verify(&self.cfg.secret, auth::ROLE_ACCEPTOR, &ack.cluster_id, ack.node_id, &ekm, &ack.proof)
            .map_err(|_| Error::Auth(format!("node {node} does not know our jwt_secret: check every server.toml")))?;
        if ack.layout != self.cfg.layout {
            return Err(Error::Auth(format!(
                "node {node} has a different cluster layout: theirs [{}], ours [{}]: check the shard counts in every server.toml",
                ack.layout, self.cfg.layout
            )));
        }
        Ok((conn, ack.incarnation))
    }

    /// Send one request and wait for its response body.
    pub async fn call(
        &self,
        node: NodeId,
        kind: FrameKind,
        group: u32,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Bytes> {
        if self.is_isolated() {
            return Err(Error::Unreachable { node, reason: "isolated by fault switch".into() });
        }
        let expect = kind.response().ok_or_else(|| Error::Frame(format!("{} is not a request", kind.name())))?;
        let rid = self.next_request.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("kalamdb_transport_requests_total", "kind" => kind.name()).increment(1);
        // The whole call, dialing included, counts against the caller's timeout.
        let exchange = async {
            let conn = self.connection(node).await?;
            let (mut send, mut recv) =
                conn.open_bi().await.map_err(|e| Error::Unreachable { node, reason: e.to_string() })?;
            write_frame(&mut send, kind, group, rid, body)
                .await
                .map_err(|e| Error::Stream { node, reason: e.to_string() })?;
            let (header, body) = read_frame(&mut recv).await.map_err(|e| match e {
                Error::Reset(code) if code == u64::from(CLOSE_BAD_FRAME) => Error::Refused { node },
                e => Error::Stream { node, reason: e.to_string() },
            })?;
            if header.kind != expect || header.request_id != rid || header.group != group {
                rejected("unexpected_response");
                return Err(Error::Stream { node, reason: format!("unexpected {} response", header.kind.name()) });
            }
            Ok(body)
        };
        let started = std::time::Instant::now();
        let outcome = match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout { node }),
        };
        if outcome.is_ok() {
            metrics::histogram!("kalamdb_transport_call_seconds", "kind" => kind.name())
                .record(started.elapsed().as_secs_f64());
        }
        outcome
    }

    pub async fn forward(
        &self,
        node: NodeId,
        group: GroupId,
        command: &EncodedCommand,
        timeout: Duration,
    ) -> Result<ForwardResponse> {
        let body = wire::to_bytes(&wire::ForwardRequest { command: command.bytes().to_vec() })?;
        let resp = self.call(node, FrameKind::ForwardRequest, group.to_u32(), &body, timeout).await?;
        wire::from_bytes(&resp)
    }

    pub async fn read_index(&self, node: NodeId, group: GroupId, timeout: Duration) -> Result<ReadIndexResponse> {
        let body = wire::to_bytes(&wire::Empty)?;
        let resp = self.call(node, FrameKind::ReadIndexRequest, group.to_u32(), &body, timeout).await?;
        wire::from_bytes(&resp)
    }

    pub async fn leadership(
        &self,
        node: NodeId,
        group: GroupId,
        request: wire::LeadershipRequest,
        timeout: Duration,
    ) -> Result<wire::LeadershipResponse> {
        let body = wire::to_bytes(&request)?;
        let resp = self.call(node, FrameKind::LeadershipRequest, group.to_u32(), &body, timeout).await?;
        wire::from_bytes(&resp)
    }

    pub async fn membership(
        &self,
        node: NodeId,
        group: GroupId,
        request: &wire::MembershipRequest,
        timeout: Duration,
    ) -> Result<wire::MembershipResponse> {
        let body = wire::to_bytes(request)?;
        let resp = self.call(node, FrameKind::MembershipRequest, group.to_u32(), &body, timeout).await?;
        wire::from_bytes(&resp)
    }

    /// What `node` is; `None` when it refuses the request as a bad frame, as builds from
    /// before the request do.
    pub async fn info(&self, node: NodeId, timeout: Duration) -> Result<Option<wire::NodeInfo>> {
        let body = wire::to_bytes(&wire::Empty)?;
        match self.call(node, FrameKind::InfoRequest, 0, &body, timeout).await {
            Ok(resp) => Ok(Some(wire::from_bytes(&resp)?)),
            Err(Error::Refused { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn status(&self, node: NodeId, timeout: Duration) -> Result<StatusResponse> {
        let body = wire::to_bytes(&wire::Empty)?;
        let resp = self.call(node, FrameKind::StatusRequest, 0, &body, timeout).await?;
        wire::from_bytes(&resp)
    }

    async fn serve_connection(self: Arc<Self>, conn: Connection) {
        let remote = conn.remote_address();
        let peer = match tokio::time::timeout(Duration::from_millis(HELLO_TIMEOUT_MS), self.accept_hello(&conn)).await {
            Ok(Ok(peer)) => peer,
            Ok(Err(e)) => {
                metrics::counter!("kalamdb_transport_auth_failures_total").increment(1);
                self.log_refusal(&format!("refused a peer at {remote}: {e}"));
                // A refusal may have answered with our Hello so the peer can log what
                // differs; closing at once would discard it. The peer closes as soon as it
                // has read it; wait for that, briefly.
                let _ = tokio::time::timeout(Duration::from_millis(REFUSAL_LINGER_MS), conn.closed()).await;
                conn.close(VarInt::from_u32(CLOSE_AUTH_FAILED), b"authentication failed");
                return;
            }
            Err(_) => {
                metrics::counter!("kalamdb_transport_auth_failures_total").increment(1);
                conn.close(VarInt::from_u32(CLOSE_AUTH_FAILED), b"no hello");
                return;
            }
        };
        tracing::debug!(target: "kalamdb_transport", %remote, peer, "peer authenticated");
        conn.set_max_concurrent_bi_streams(VarInt::from_u32(STREAMS_PER_CONNECTION_MAX));
        conn.set_receive_window(VarInt::from_u32(CONNECTION_WINDOW_BYTES));
        loop {
            match conn.accept_bi().await {
                Ok((send, recv)) => {
                    let me = self.clone();
                    tokio::spawn(async move { me.serve_stream(peer, send, recv).await });
                }
                Err(e) => {
                    tracing::debug!(target: "kalamdb_transport", peer, error = %e, "connection closed");
                    return;
                }
            }
        }
    }

    async fn accept_hello(&self, conn: &Connection) -> Result<NodeId> {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| Error::Auth(e.to_string()))?;
        let (header, body) = read_frame_limited(&mut recv, HELLO_BYTES_MAX).await?;
        if header.kind != FrameKind::Hello {
            return Err(Error::Auth(format!("first frame was {}", header.kind.name())));
        }
        let hello: Hello = wire::from_bytes(&body)?;
        let ekm = exported(conn)?;
        let (verdict, answer) = auth::check_hello(&self.cfg, self.incarnation, &hello, &ekm);
        if verdict.is_ok() {
            self.forget_stale(hello.node_id, hello.incarnation);
        }
        if let Some(answer) = answer {
            let written = write_frame(&mut send, FrameKind::HelloAck, 0, 0, &wire::to_bytes(&answer)?).await;
            if verdict.is_ok() {
                written?;
            }
        }
        verdict
    }

    /// A misconfigured member redials every few hundred milliseconds: say why it cannot
    /// join at error level, but once per message per `REFUSAL_LOG_INTERVAL_MS`.
    fn log_refusal(&self, message: &str) {
        let mut logged = self.refusal_logged.lock().unwrap_or_else(|p| p.into_inner());
        let due = logged.get(message).is_none_or(|at| at.elapsed() >= Duration::from_millis(REFUSAL_LOG_INTERVAL_MS));
        if due {
            // Bounded: a handful of distinct messages in practice; forget them all if not.
            if logged.len() >= 64 {
                logged.clear();
            }
            logged.insert(message.to_string(), Instant::now());
            tracing::error!(target: "kalamdb_transport", "{message}");
        } else {
            tracing::debug!(target: "kalamdb_transport", "{message}");
        }
    }

    /// `node` dialed us as a new process: our connection to its previous process would only
    /// time out (QUIC cannot tell a silent peer from a dead one before the idle timeout).
    fn forget_stale(&self, node: NodeId, incarnation: u64) {
        let slot = self.slots.lock().unwrap_or_else(|p| p.into_inner()).get(&node).cloned();
        let Some(slot) = slot else { return };
        let stale = {
            let mut s = slot.state();
            if s.conn.is_some() && s.incarnation != incarnation { s.conn.take() } else { None }
        };
        if let Some(c) = stale {
            tracing::info!(target: "kalamdb_transport", peer = node, "peer restarted; dropping the old connection");
            c.close(VarInt::from_u32(0), b"peer restarted");
        }
    }

    async fn serve_stream(&self, peer: NodeId, mut send: SendStream, mut recv: RecvStream) {
        if self.is_isolated() {
            let _ = send.reset(VarInt::from_u32(0));
            return;
        }
        let (header, body) = match read_frame(&mut recv).await {
            Ok(f) => f,
            Err(e) => {
                rejected("bad_frame");
                tracing::warn!(target: "kalamdb_transport", peer, error = %e, "bad frame");
                let _ = send.reset(VarInt::from_u32(CLOSE_BAD_FRAME));
                return;
            }
        };
        let Some(reply_kind) = header.kind.response() else {
            rejected("not_a_request");
            let _ = send.reset(VarInt::from_u32(CLOSE_BAD_FRAME));
            return;
        };
        let started = std::time::Instant::now();
        let dispatched = self.dispatch(header, body).await;
        metrics::histogram!("kalamdb_transport_serve_seconds", "kind" => header.kind.name())
            .record(started.elapsed().as_secs_f64());
        let reply = match dispatched {
            Ok(r) => r,
            // Not a bad frame: a caller asking what this node is must not take it for an old
            // build.
            Err(Error::NotServing) => {
                let _ = send.reset(VarInt::from_u32(CLOSE_NOT_SERVING));
                return;
            }
            Err(e) => {
                rejected("invalid_body");
                tracing::warn!(target: "kalamdb_transport", peer, kind = header.kind.name(), error = %e, "bad request");
                let _ = send.reset(VarInt::from_u32(CLOSE_BAD_FRAME));
                return;
            }
        };
        if self.is_isolated() {
            let _ = send.reset(VarInt::from_u32(0));
            return;
        }
        if let Err(e) = write_frame(&mut send, reply_kind, header.group, header.request_id, &reply).await {
            tracing::debug!(target: "kalamdb_transport", peer, error = %e, "reply not delivered");
        }
    }

    /// Accept a snapshot chunk only if it starts a snapshot (offset 0) or continues the one
    /// being received exactly where the bytes so far end.
    fn check_snapshot_chunk(&self, group: u32, req: &wire::SnapshotRequest) -> std::result::Result<(), String> {
        let mut offsets = self.snapshot_offsets.lock().unwrap_or_else(|p| p.into_inner());
        let expected = match offsets.get(&group) {
            Some((meta, next)) if *meta == req.meta_json => *next,
            _ => 0,
        };
        if req.offset != 0 && req.offset != expected {
            return Err(format!("snapshot chunk at offset {} for group {group}; expected {expected}", req.offset));
        }
        if req.done {
            offsets.remove(&group);
        } else {
            offsets.insert(group, (req.meta_json.clone(), req.offset + req.data.len() as u64));
        }
        Ok(())
    }

    async fn dispatch(&self, header: Header, body: Bytes) -> Result<Vec<u8>> {
        let handler = self.handler.get().ok_or(Error::NotServing)?;
        let group = GroupId::from_u32(header.group).ok_or_else(|| Error::Frame(format!("bad group {}", header.group)));
        match header.kind {
            FrameKind::AppendRequest => {
                let req = wire::read_append(&body, &body)?;
                let resp = match handler.raft(group?) {
                    None => wire::AppendResponse::Error(format!("group {} is not hosted here", header.group)),
                    Some(raft) => crate::network::append_response(raft.append_entries(req).await),
                };
                wire::to_bytes(&resp)
            }
            FrameKind::VoteRequest => {
                let req: wire::VoteRequest = wire::from_bytes(&body)?;
                let group = group?;
                let resp = match handler.raft(group) {
                    None => wire::VoteResponse::Error(format!("group {} is not hosted here", header.group)),
                    Some(_) if let Err(why) = handler.may_vote(group) => wire::VoteResponse::Error(why),
                    Some(raft) => crate::network::vote_response(raft.vote(crate::network::vote_request(&req)).await),
                };
                wire::to_bytes(&resp)
            }
            FrameKind::SnapshotRequest => {
                let req: wire::SnapshotRequest = wire::from_bytes(&body)?;
                let resp = match handler.raft(group?) {
                    None => wire::SnapshotResponse::Error(format!("group {} is not hosted here", header.group)),
                    Some(_) if let Err(e) = self.check_snapshot_chunk(header.group, &req) => {
                        wire::SnapshotResponse::Error(e)
                    }
                    Some(raft) => match crate::network::snapshot_request(req) {
                        Ok(req) => crate::network::snapshot_response(raft.install_snapshot(req).await),
                        Err(e) => wire::SnapshotResponse::Error(e.to_string()),
                    },
                };
                wire::to_bytes(&resp)
            }
            FrameKind::ForwardRequest => {
                let req = rkyv::access::<wire::ArchivedForwardRequest, rkyv::rancor::Error>(&body)
                    .map_err(|e| Error::Frame(format!("invalid forward body: {e}")))?;
                let command = EncodedCommand::validated(body.slice_ref(req.command.as_slice()))
                    .map_err(|e| Error::Frame(e.to_string()))?;
                wire::to_bytes(&handler.forward(group?, command).await)
            }
            FrameKind::ReadIndexRequest => wire::to_bytes(&handler.read_index(group?).await),
            FrameKind::StatusRequest => wire::to_bytes(&handler.status()),
            FrameKind::InfoRequest => wire::to_bytes(&handler.info()),
            FrameKind::LeadershipRequest => {
                let req: wire::LeadershipRequest = wire::from_bytes(&body)?;
                wire::to_bytes(&handler.leadership(group?, req).await)
            }
            FrameKind::MembershipRequest => {
                let req: wire::MembershipRequest = wire::from_bytes(&body)?;
                wire::to_bytes(&handler.membership(group?, req).await)
            }
            other => Err(Error::Frame(format!("{} is not a request", other.name()))),
        }
    }
}
