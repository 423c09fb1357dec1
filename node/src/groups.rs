//! The node's Raft groups: one openraft instance per group over the shared RocksDB log and
//! projections; group commit (client ops queue per group and are proposed as one log entry,
//! one append and one fsync per batch, with a bounded number of entries in flight); routing
//! of writes to the group leader, and linearizable read barriers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kalamdb_log::types::{NodeAddr, NodeId, Raft};
use kalamdb_log::{EncodedCommand, GroupId, GroupLayout, LogCommand, LogDb, LogStore, Op, OpResult, Value};
use kalamdb_projections::{Catalog, PROJECTION_CFS, Projection, RowReader, StorageEnv};
use kalamdb_query::Error as QueryError;
use kalamdb_transport::wire::{ForwardResponse, GroupStatus, ReadIndexResponse, RemoteError, StatusResponse};
use kalamdb_transport::{GroupNetwork, Transport, TransportConfig};
use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::config::Config;
use crate::error::{Error, Result};

/// Rows one log entry may carry in total, below the projection's `_seq` packing limit.
pub const BATCH_ROWS_MAX: usize = (kalamdb_projections::rows::ENTRY_ROWS_MAX / 4) as usize;
/// Estimated bytes one log entry may carry; keeps every entry inside one AppendEntries frame
/// (`kalamdb_transport::network::APPEND_BYTES_MAX`).
pub const BATCH_BYTES_MAX: usize = 4 << 20;
/// Pause between attempts while a group has no (reachable) leader.
pub const LEADER_RETRY_MS: u64 = 20;
/// Time one read-index round (local quorum check or request to the leader) may take before
/// it is retried.
pub const PEER_REQUEST_TIMEOUT_MS: u64 = 1_000;
/// Reads answered by one read-index round at most.
pub const READS_PER_ROUND_MAX: usize = 4096;
/// How long a flush or compaction may take to commit and apply before its outcome is unknown.
pub const STORAGE_JOB_TIMEOUT_MS: u64 = 600_000;
/// openraft snapshot chunk size: one chunk per QUIC frame.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 4 << 20;
pub const SNAPSHOT_CHUNK_TIMEOUT_MS: u64 = 10_000;

/// Why a proposal failed.
enum ProposeError {
    /// This node does not lead the group; nothing was proposed.
    NotLeader(Option<NodeId>),
    Query(QueryError),
}

type ProposeResult = std::result::Result<(OpResult, u64), ProposeError>;

struct Proposal {
    op: Op,
    rows: usize,
    bytes: usize,
    reply: oneshot::Sender<ProposeResult>,
}

/// One running group.
pub struct Group {
    pub id: GroupId,
    pub raft: Raft,
    pub applied: watch::Receiver<u64>,
    queue: mpsc::Sender<Proposal>,
    read_queue: mpsc::Sender<ReadIndexWaiter>,
}

/// Why one read-index round gave no index.
#[derive(Debug, Clone)]
enum ReadIndexError {
    /// No leader, leader unreachable or not confirmed in time: safe to try again.
    Retry,
    Failed {
        code: String,
        message: String,
    },
}

type ReadIndexWaiter = oneshot::Sender<std::result::Result<u64, ReadIndexError>>;

/// All groups of this node.
pub struct Groups {
    pub node_id: NodeId,
    pub layout: GroupLayout,
    pub groups: HashMap<GroupId, Group>,
    pub catalog: Arc<Catalog>,
    pub rows: RowReader,
    /// Cold storage root and the per-node job log and write counters.
    pub storage: Arc<StorageEnv>,
    /// Every member, this node included (one entry in a single-node layout).
    pub members: BTreeMap<NodeId, NodeAddr>,
    pub cluster_id: Option<String>,
    pub transport: Option<Arc<Transport>>,
    write_timeout: Duration,
}

fn op_rows(op: &Op) -> usize {
    match op {
        Op::Insert { rows, .. } | Op::Update { rows, .. } | Op::Delete { rows, .. } => rows.len(),
        _ => 1,
    }
}

fn value_bytes(v: &Value) -> usize {
    match v {
        Value::Text(s) | Value::Json(s) => s.len() + 8,
        Value::Bytes(b) => b.len() + 8,
        _ => 16,
    }
}

/// Estimated encoded size of an op, for bounding entries without encoding twice.
fn op_bytes(op: &Op) -> usize {
    match op {
        Op::Insert { rows, .. } | Op::Update { rows, .. } | Op::Delete { rows, .. } => {
            rows.iter().map(|r| 32 + value_bytes(&r.pk) + r.values.iter().map(value_bytes).sum::<usize>()).sum()
        }
        _ => 4096,
    }
}

fn raft_config(cfg: &Config) -> Result<Arc<openraft::Config>> {
    let c = openraft::Config {
        cluster_name: "kalamdb".into(),
        heartbeat_interval: cfg.raft.heartbeat_interval_ms,
        election_timeout_min: cfg.raft.election_timeout_min_ms,
        election_timeout_max: cfg.raft.election_timeout_max_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.raft.snapshot_logs_since_last),
        max_in_snapshot_log_to_keep: cfg.raft.logs_to_keep,
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
        // Per snapshot chunk; openraft's 200 ms default is short for 4 MiB on a busy machine.
        install_snapshot_timeout: SNAPSHOT_CHUNK_TIMEOUT_MS,
        ..Default::default()
    };
    Ok(Arc::new(c.validate().map_err(|e| Error::Raft(e.to_string()))?))
}

fn unavailable(group: GroupId, why: &str) -> QueryError {
    QueryError::Unavailable(format!("group {group}: {why}"))
}

impl Groups {
    /// Open storage, start every group, and initialize each group once: the lowest member id
    /// does it with the whole member list (a single node with itself). Initializing an
    /// initialized group is a no-op, so restarts in any order need no manual step.
    pub async fn start(cfg: &Config) -> Result<Arc<Groups>> {
        let (user_shards, shared_shards) = cfg.shards();
        let layout = GroupLayout::new(user_shards, shared_shards);
        std::fs::create_dir_all(&cfg.storage.data_path)?;
        let log_db = LogDb::open(&cfg.rocksdb_path(), &PROJECTION_CFS)?;
        let storage_path = cfg.storage_path();
        std::fs::create_dir_all(&storage_path)?;
        // Absolute: DataFusion addresses files by absolute path.
        let storage = StorageEnv::new(cfg.snapshot_path(), std::fs::canonicalize(&storage_path)?);
        let catalog = Catalog::new();
        let raft_cfg = raft_config(cfg)?;
        let node_id = cfg.server.node_id;
        let http_me = format!("{}:{}", cfg.server.host, cfg.server.port);
        let members: BTreeMap<NodeId, NodeAddr> = match &cfg.cluster {
            None => BTreeMap::from([(node_id, NodeAddr { raft_addr: String::new(), http_addr: http_me })]),
            Some(c) => c
                .members
                .iter()
                .map(|m| (m.node_id, NodeAddr { raft_addr: m.raft_addr.clone(), http_addr: m.http_addr.clone() }))
                .collect(),
        };
        let transport = match (&cfg.cluster, cfg.me()) {
            (Some(c), Some(me)) => {
                let bind = match &c.raft_bind {
                    Some(b) => b.clone(),
                    None => {
                        let port = me.raft_addr.rsplit(':').next().unwrap_or_default();
                        format!("0.0.0.0:{port}")
                    }
                };
                let bind =
                    bind.parse().map_err(|e| Error::Config(format!("cluster raft bind address '{bind}': {e}")))?;
                Some(Transport::bind(TransportConfig {
                    node_id,
                    cluster_id: c.cluster_id.clone(),
                    secret: c.jwt_secret.as_bytes().to_vec(),
                    bind,
                    members: members.iter().map(|(id, a)| (*id, a.raft_addr.clone())).collect(),
                    layout: cluster_layout(&members, user_shards, shared_shards),
                })?)
            }
            _ => None,
        };
        let initializer = members.keys().next().copied() == Some(node_id);
        let mut groups = HashMap::new();
        for id in layout.all() {
            let log_store = LogStore::new(log_db.clone(), id)?;
            let sm = Projection::open(log_db.clone(), id, catalog.clone(), storage.clone())?;
            let applied = sm.applied_watch();
            let raft = match &transport {
                Some(t) => {
                    Raft::new(
                        node_id,
                        raft_cfg.clone(),
                        GroupNetwork { transport: t.clone(), group: id },
                        log_store,
                        sm,
                    )
                    .await
                }
                None => Raft::new(node_id, raft_cfg.clone(), kalamdb_transport::NoPeers, log_store, sm).await,
            }
            .map_err(|e| Error::Raft(format!("group {id}: {e}")))?;
            if initializer {
                match raft.initialize(members.clone()).await {
                    Ok(()) => {
                        tracing::info!(target: "kalamdb_raft", group = %id, members = ?members.keys().collect::<Vec<_>>(), "group initialized")
                    }
                    Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                        tracing::debug!(target: "kalamdb_raft", group = %id, "group already initialized");
                    }
                    Err(e) => return Err(Error::Raft(format!("initialize group {id}: {e}"))),
                }
            }
            let (queue, rx) = mpsc::channel(cfg.limits.proposal_queue_len_max);
            tokio::spawn(run_batcher(
                id,
                raft.clone(),
                rx,
                cfg.limits.batch_ops_max,
                cfg.limits.proposals_in_flight_max,
            ));
            tokio::spawn(watch_leadership(id, raft.clone()));
            let (read_queue, read_rx) = mpsc::channel(cfg.limits.proposal_queue_len_max);
            tokio::spawn(run_read_index_batcher(id, node_id, raft.clone(), transport.clone(), read_rx));
            groups.insert(id, Group { id, raft, applied, queue, read_queue });
        }
        let rows = RowReader::new(log_db.clone(), storage.storage_dir.clone());
        let me = Arc::new(Groups {
            node_id,
            layout,
            groups,
            catalog,
            rows,
            storage,
            members,
            cluster_id: cfg.cluster.as_ref().map(|c| c.cluster_id.clone()),
            transport: transport.clone(),
            write_timeout: Duration::from_millis(cfg.limits.write_timeout_ms),
        });
        if let Some(t) = &transport {
            t.serve(Arc::new(PeerService(Arc::downgrade(&me))));
        }
        Ok(me)
    }

    /// True once every group has a leader (this node can serve reads and writes).
    pub fn all_have_leader(&self) -> bool {
        self.groups.values().all(|g| g.raft.metrics().borrow().current_leader.is_some())
    }

    /// Wait (bounded) until every group has a leader.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.all_have_leader() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    fn group(&self, group: GroupId) -> std::result::Result<&Group, QueryError> {
        self.groups.get(&group).ok_or_else(|| QueryError::Internal(format!("unknown group {group}")))
    }

    fn leader_of(&self, group: &Group) -> Option<NodeId> {
        group.raft.metrics().borrow().current_leader
    }

    /// Does this node lead `group` right now?
    pub fn leads(&self, group: GroupId) -> bool {
        self.groups.get(&group).is_some_and(|g| self.leader_of(g) == Some(self.node_id))
    }

    /// Propose an op: through this node's group commit if it leads the group, otherwise
    /// forwarded over QUIC to the leader. Leader changes are retried until the write timeout;
    /// a retry only happens when the failed attempt certainly proposed nothing.
    pub async fn propose(&self, group: GroupId, op: Op) -> std::result::Result<OpResult, QueryError> {
        let g = self.group(group)?;
        // A flush or compaction writes files inside apply: allow it far longer than a row write.
        let timeout = if op.is_storage_job() {
            self.write_timeout.max(Duration::from_millis(STORAGE_JOB_TIMEOUT_MS))
        } else {
            self.write_timeout
        };
        let deadline = Instant::now() + timeout;
        let mut last_leader: Option<NodeId>;
        loop {
            let leader = self.leader_of(g);
            let attempt = match leader {
                None => Err(ProposeError::NotLeader(None)),
                Some(l) if l == self.node_id => self.propose_local(g, op.clone(), deadline).await,
                Some(l) => self.propose_remote(g, l, &op, deadline).await,
            };
            match attempt {
                Ok((result, index)) => {
                    // Read-your-writes on this node: the next statement here sees it.
                    if leader != Some(self.node_id) && !self.wait_applied(g, index, deadline).await {
                        tracing::warn!(target: "kalamdb_raft", group = %group, index, "forwarded write committed but not yet applied here");
                    }
                    return Ok(result);
                }
                Err(ProposeError::Query(e)) => return Err(e),
                Err(ProposeError::NotLeader(hint)) => {
                    last_leader = hint.or(leader);
                    if Instant::now() >= deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(LEADER_RETRY_MS)).await;
                }
            }
        }
        Err(match last_leader {
            Some(l) => QueryError::NotLeader(format!(
                "group {group}: leader (last known: node {l}) not reachable within the write timeout"
            )),
            None => QueryError::Unavailable(format!(
                "group {group} has no leader (no quorum reachable from node {})",
                self.node_id
            )),
        })
    }

    async fn propose_local(&self, g: &Group, op: Op, deadline: Instant) -> ProposeResult {
        let rows = op_rows(&op);
        if rows > BATCH_ROWS_MAX {
            return Err(ProposeError::Query(QueryError::InvalidSql(format!(
                "a statement writes at most {BATCH_ROWS_MAX} rows"
            ))));
        }
        let bytes = op_bytes(&op);
        if bytes > BATCH_BYTES_MAX {
            return Err(ProposeError::Query(QueryError::InvalidSql(format!(
                "a statement writes at most {BATCH_BYTES_MAX} bytes of row data"
            ))));
        }
        let (reply, rx) = oneshot::channel();
        let group = g.id;
        tokio::time::timeout_at(deadline, g.queue.send(Proposal { op, rows, bytes, reply }))
            .await
            .map_err(|_| ProposeError::Query(unavailable(group, "write queue is full")))?
            .map_err(|_| ProposeError::Query(unavailable(group, "shutting down")))?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ProposeError::Query(unavailable(group, "the write was dropped"))),
            // The write may still commit; the client must treat the outcome as unknown.
            Err(_) => Err(ProposeError::Query(unavailable(group, "write timed out; its outcome is unknown"))),
        }
    }

    async fn propose_remote(&self, g: &Group, leader: NodeId, op: &Op, deadline: Instant) -> ProposeResult {
        let Some(t) = &self.transport else { return Err(ProposeError::NotLeader(None)) };
        let cmd = EncodedCommand::encode(&LogCommand::now(vec![op.clone()]))
            .map_err(|e| ProposeError::Query(QueryError::Internal(e.to_string())))?;
        let timeout = deadline.saturating_duration_since(Instant::now());
        tracing::debug!(target: "kalamdb_raft", group = %g.id, leader, "forwarding write");
        match t.forward(leader, g.id, &cmd, timeout).await {
            Ok(ForwardResponse::Ok { mut results, index }) if results.len() == 1 => {
                Ok((results.pop().unwrap_or(OpResult::Skipped), index))
            }
            Ok(ForwardResponse::Ok { results, .. }) => Err(ProposeError::Query(QueryError::Internal(format!(
                "leader returned {} results for one op",
                results.len()
            )))),
            Ok(ForwardResponse::Err(RemoteError::NotLeader { leader })) => Err(ProposeError::NotLeader(leader)),
            Ok(ForwardResponse::Err(RemoteError::Failed { code, message })) => {
                Err(ProposeError::Query(query_error_from(&code, message)))
            }
            // Nothing was sent: safe to retry (maybe with a new leader).
            Err(kalamdb_transport::Error::Unreachable { .. }) => Err(ProposeError::NotLeader(None)),
            Err(e) => Err(ProposeError::Query(unavailable(g.id, &format!("forwarding failed, outcome unknown: {e}")))),
        }
    }

    /// Wait (until `deadline`) for this node's projection of `g` to reach `index`.
    async fn wait_applied(&self, g: &Group, index: u64, deadline: Instant) -> bool {
        let mut rx = g.applied.clone();
        let reached = tokio::time::timeout_at(deadline, rx.wait_for(|a| *a >= index)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Linearizable read barrier (ReadIndex): learn the leader's commit index after it has
    /// confirmed leadership with a quorum, then wait until this node has applied it.
    pub async fn read_barrier(&self, group: GroupId) -> std::result::Result<(), QueryError> {
        let g = self.group(group)?;
        let deadline = Instant::now() + self.write_timeout;
        loop {
            let (reply, rx) = oneshot::channel();
            tokio::time::timeout_at(deadline, g.read_queue.send(reply))
                .await
                .map_err(|_| unavailable(group, "read-index queue is full"))?
                .map_err(|_| unavailable(group, "shutting down"))?;
            let answer = tokio::time::timeout_at(deadline, rx).await;
            match answer {
                Ok(Ok(Ok(index))) => {
                    if self.wait_applied(g, index, deadline).await {
                        return Ok(());
                    }
                    return Err(unavailable(group, "this node is too far behind to serve a linearizable read"));
                }
                Ok(Ok(Err(ReadIndexError::Failed { code, message }))) => return Err(query_error_from(&code, message)),
                Ok(Ok(Err(ReadIndexError::Retry))) | Ok(Err(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(LEADER_RETRY_MS)).await;
                }
                _ => return Err(unavailable(group, "no leader confirmed for a linearizable read")),
            }
        }
    }

    /// This node's view of every group; the leader's view adds per-member progress.
    pub fn local_status(&self) -> StatusResponse {
        let mut out = Vec::with_capacity(self.groups.len());
        for id in self.layout.all() {
            let Some(g) = self.groups.get(&id) else { continue };
            let m = g.raft.metrics().borrow().clone();
            let applied = m.last_applied.map_or(0, |l| l.index);
            let last = m.last_log_index.unwrap_or(0);
            let mut matched: Vec<(u64, u64)> = Vec::new();
            let mut commit = applied;
            if let Some(rep) = &m.replication {
                for (node, l) in rep.iter() {
                    matched.push((*node, l.map_or(0, |l| l.index)));
                }
                if !matched.iter().any(|(n, _)| *n == self.node_id) {
                    matched.push((self.node_id, last));
                }
                // Committed = the highest index a majority of voters has.
                let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
                let mut idx: Vec<u64> = matched.iter().filter(|(n, _)| voters.contains(n)).map(|(_, i)| *i).collect();
                idx.sort_unstable_by(|a, b| b.cmp(a));
                if let Some(i) = idx.get(voters.len() / 2) {
                    commit = commit.max(*i);
                }
                matched.sort_unstable();
            }
            out.push(GroupStatus {
                group: id.to_u32(),
                leader: m.current_leader,
                term: m.current_term,
                last_log_index: last,
                commit_index: commit,
                applied_index: applied,
                matched,
            });
        }
        StatusResponse { node_id: self.node_id, groups: out }
    }

    pub async fn shutdown(&self) {
        for g in self.groups.values() {
            if let Err(e) = g.raft.shutdown().await {
                tracing::warn!(target: "kalamdb_raft", group = %g.id, error = %e, "shutdown failed");
            }
        }
        if let Some(t) = &self.transport {
            t.close();
        }
    }
}

/// Rebuild a query error from the code a remote node reported.
fn query_error_from(code: &str, message: String) -> QueryError {
    match code {
        "INVALID_SQL" => QueryError::InvalidSql(message),
        "WRITE_CONFLICT" => QueryError::Conflict(message),
        "INTERNAL_ERROR" => QueryError::Internal(message),
        "NOT_LEADER" => QueryError::NotLeader(message),
        _ => QueryError::Unavailable(message),
    }
}

fn remote_failure(e: &QueryError) -> RemoteError {
    RemoteError::Failed { code: e.code().to_string(), message: e.to_string() }
}

/// What peers may ask of this node. Holds a weak reference: the groups own the transport.
struct PeerService(std::sync::Weak<Groups>);

#[async_trait]
impl kalamdb_transport::Handler for PeerService {
    fn raft(&self, group: GroupId) -> Option<Raft> {
        self.0.upgrade()?.groups.get(&group).map(|g| g.raft.clone())
    }

    async fn forward(&self, group: GroupId, command: EncodedCommand) -> ForwardResponse {
        let Some(groups) = self.0.upgrade() else {
            return ForwardResponse::Err(RemoteError::NotLeader { leader: None });
        };
        let Ok(g) = groups.group(group) else {
            return ForwardResponse::Err(RemoteError::Failed {
                code: "INTERNAL_ERROR".into(),
                message: format!("group {group} is not hosted here"),
            });
        };
        let mut cmd = match command.decode() {
            Ok(c) => c,
            Err(e) => {
                return ForwardResponse::Err(RemoteError::Failed {
                    code: "INTERNAL_ERROR".into(),
                    message: e.to_string(),
                });
            }
        };
        let Some(op) = cmd.ops.pop().filter(|_| cmd.ops.is_empty()) else {
            return ForwardResponse::Err(RemoteError::Failed {
                code: "INTERNAL_ERROR".into(),
                message: "a forwarded write carries exactly one op".into(),
            });
        };
        let leader = groups.leader_of(g);
        if leader != Some(groups.node_id) {
            return ForwardResponse::Err(RemoteError::NotLeader { leader });
        }
        let deadline = Instant::now() + groups.write_timeout;
        match groups.propose_local(g, op, deadline).await {
            Ok((result, index)) => ForwardResponse::Ok { results: vec![result], index },
            Err(ProposeError::NotLeader(leader)) => ForwardResponse::Err(RemoteError::NotLeader { leader }),
            Err(ProposeError::Query(e)) => ForwardResponse::Err(remote_failure(&e)),
        }
    }

    async fn read_index(&self, group: GroupId) -> ReadIndexResponse {
        let Some(groups) = self.0.upgrade() else {
            return ReadIndexResponse::Err(RemoteError::NotLeader { leader: None });
        };
        let Ok(g) = groups.group(group) else {
            return ReadIndexResponse::Err(RemoteError::NotLeader { leader: None });
        };
        let leader = groups.leader_of(g);
        if leader != Some(groups.node_id) {
            return ReadIndexResponse::Err(RemoteError::NotLeader { leader });
        }
        // Through the group's read-index batcher: one quorum round for many followers' reads.
        let (reply, rx) = oneshot::channel();
        if g.read_queue.send(reply).await.is_err() {
            return ReadIndexResponse::Err(RemoteError::NotLeader { leader: None });
        }
        match rx.await {
            Ok(Ok(index)) => ReadIndexResponse::Ok { index },
            Ok(Err(ReadIndexError::Failed { code, message })) => {
                ReadIndexResponse::Err(RemoteError::Failed { code, message })
            }
            Ok(Err(ReadIndexError::Retry)) | Err(_) => ReadIndexResponse::Err(RemoteError::NotLeader { leader: None }),
        }
    }

    fn status(&self) -> StatusResponse {
        match self.0.upgrade() {
            Some(g) => g.local_status(),
            None => StatusResponse { node_id: 0, groups: Vec::new() },
        }
    }
}

/// Read-index batching for one group: every read waiting when a round starts shares that
/// round's index. Linearizable, because each waiter's request arrived before the leader
/// confirmed its leadership for the round. One round in flight per group.
async fn run_read_index_batcher(
    group: GroupId,
    node_id: NodeId,
    raft: Raft,
    transport: Option<Arc<Transport>>,
    mut rx: mpsc::Receiver<ReadIndexWaiter>,
) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while waiters.len() < READS_PER_ROUND_MAX {
            match rx.try_recv() {
                Ok(w) => waiters.push(w),
                Err(_) => break,
            }
        }
        metrics::histogram!("kalamdb_read_index_batch").record(waiters.len() as f64);
        let result = read_index_round(group, node_id, &raft, transport.as_deref()).await;
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

async fn read_index_round(
    group: GroupId,
    node_id: NodeId,
    raft: &Raft,
    transport: Option<&Transport>,
) -> std::result::Result<u64, ReadIndexError> {
    let timeout = Duration::from_millis(PEER_REQUEST_TIMEOUT_MS);
    let leader = raft.metrics().borrow().current_leader;
    match leader {
        // A leader cut off from its quorum cannot confirm leadership: bounded wait.
        Some(l) if l == node_id => match tokio::time::timeout(timeout, raft.get_read_log_id()).await {
            Ok(Ok((read, _))) => Ok(read.map_or(0, |l| l.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) | Err(_) => Err(ReadIndexError::Retry),
            Ok(Err(e)) => Err(ReadIndexError::Failed {
                code: "CLUSTER_UNAVAILABLE".into(),
                message: format!("group {group}: read index: {e}"),
            }),
        },
        // Retrying a read index is always safe, so a dead leader costs one short timeout.
        Some(l) => match transport.map(|t| t.read_index(l, group, timeout)) {
            None => Err(ReadIndexError::Retry),
            Some(call) => match call.await {
                Ok(ReadIndexResponse::Ok { index }) => Ok(index),
                Ok(ReadIndexResponse::Err(RemoteError::Failed { code, message })) => {
                    Err(ReadIndexError::Failed { code, message })
                }
                Ok(ReadIndexResponse::Err(RemoteError::NotLeader { .. })) | Err(_) => Err(ReadIndexError::Retry),
            },
        },
        None => Err(ReadIndexError::Retry),
    }
}

/// Group commit for one group. Waits for an in-flight slot first, so while all slots are busy
/// requests pile up in the queue and the next entry carries all of them.
async fn run_batcher(
    group: GroupId,
    raft: Raft,
    mut rx: mpsc::Receiver<Proposal>,
    batch_ops_max: usize,
    in_flight_max: usize,
) {
    let slots = Arc::new(Semaphore::new(in_flight_max));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let (mut rows, mut bytes) = (first.rows, first.bytes);
        let mut batch = vec![first];
        while batch.len() < batch_ops_max {
            match rx.try_recv() {
                Ok(p) if rows + p.rows <= BATCH_ROWS_MAX && bytes + p.bytes <= BATCH_BYTES_MAX => {
                    rows += p.rows;
                    bytes += p.bytes;
                    batch.push(p);
                }
                Ok(p) => {
                    // Too big for this entry: propose it alone.
                    let raft = raft.clone();
                    tokio::spawn(propose_batch(group, raft, vec![p], None));
                    break;
                }
                Err(_) => break,
            }
        }
        metrics::histogram!("kalamdb_group_commit_ops").record(batch.len() as f64);
        tokio::spawn(propose_batch(group, raft.clone(), batch, Some(permit)));
    }
}

async fn propose_batch(
    group: GroupId,
    raft: Raft,
    batch: Vec<Proposal>,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let mut ops = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    for p in batch {
        ops.push(p.op);
        replies.push(p.reply);
    }
    let n = ops.len();
    let encoded = match EncodedCommand::encode(&LogCommand::now(ops)) {
        Ok(e) => e,
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(ProposeError::Query(QueryError::Internal(format!("encode command: {e}")))));
            }
            return;
        }
    };
    match raft.client_write(encoded).await {
        Ok(resp) => {
            let index = resp.log_id.index;
            let results = resp.data.results;
            assert_eq!(results.len(), n, "apply must return one result per op");
            for (reply, r) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok((r, index)));
            }
        }
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            // openraft answers this both when it refused the entry and when it had appended
            // it and then lost leadership (the entry may still commit under the next leader).
            // The two cannot be told apart, so the write is not retried: its outcome is unknown.
            tracing::debug!(target: "kalamdb_raft", group = %group, leader = ?f.leader_id, "leadership lost during a write");
            let message = format!(
                "group {group}: leadership moved (to {:?}) while the write was in flight; its outcome is unknown",
                f.leader_id
            );
            for reply in replies {
                let _ = reply.send(Err(ProposeError::Query(QueryError::NotLeader(message.clone()))));
            }
        }
        Err(e) => {
            tracing::warn!(target: "kalamdb_raft", group = %group, error = %e, "proposal failed");
            let message = format!("group {group}: {e}");
            for reply in replies {
                let _ = reply.send(Err(ProposeError::Query(QueryError::Unavailable(message.clone()))));
            }
        }
    }
}

/// What every member must agree on, as text peers compare in Hello: the member list (ids
/// and Raft addresses) and the shard counts, which fix the set of Raft groups.
fn cluster_layout(members: &BTreeMap<NodeId, NodeAddr>, user_shards: u16, shared_shards: u16) -> String {
    let list: Vec<String> = members.iter().map(|(id, a)| format!("{id}={}", a.raft_addr)).collect();
    format!("members {}; user_shards {user_shards}; shared_shards {shared_shards}", list.join(","))
}

/// Log leader, term and membership changes of a group under the `kalamdb_raft` target.
async fn watch_leadership(group: GroupId, raft: Raft) {
    let mut metrics = raft.metrics();
    let mut last: (Option<NodeId>, u64) = (None, 0);
    let mut last_membership = None;
    loop {
        let (leader, term, state, membership) = {
            let m = metrics.borrow_and_update();
            (m.current_leader, m.current_term, format!("{:?}", m.state), m.membership_config.log_id().map(|l| l.index))
        };
        if (leader, term) != last {
            tracing::info!(target: "kalamdb_raft", group = %group, ?leader, term, state, "leadership changed");
            last = (leader, term);
        }
        if membership != last_membership {
            let voters: Vec<NodeId> = metrics.borrow().membership_config.membership().voter_ids().collect();
            tracing::debug!(target: "kalamdb_raft", group = %group, ?voters, log_index = ?membership, "membership");
            last_membership = membership;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
