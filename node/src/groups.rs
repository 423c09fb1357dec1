//! The node's Raft groups: one openraft instance per group over the shared RocksDB log and
//! projections, plus group commit: client ops queue per group and are proposed as one log
//! entry (one append, one fsync) per batch, with a bounded number of entries in flight.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kalamdb_log::types::{NodeAddr, NodeId, Raft};
use kalamdb_log::{GroupId, GroupLayout, LogCommand, LogDb, LogStore, Op, OpResult};
use kalamdb_projections::{Catalog, PROJECTION_CFS, Projection, RowReader};
use kalamdb_query::Error as QueryError;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::config::Config;
use crate::error::{Error, Result};

/// Rows one log entry may carry in total, below the projection's `_seq` packing limit.
pub const BATCH_ROWS_MAX: usize = (kalamdb_projections::rows::ENTRY_ROWS_MAX / 2) as usize;

struct Proposal {
    op: Op,
    rows: usize,
    reply: oneshot::Sender<Result<OpResult, QueryError>>,
}

/// One running group.
pub struct Group {
    pub id: GroupId,
    pub raft: Raft,
    pub applied: watch::Receiver<u64>,
    queue: mpsc::Sender<Proposal>,
}

/// All groups of this node.
pub struct Groups {
    pub node_id: NodeId,
    pub layout: GroupLayout,
    pub groups: HashMap<GroupId, Group>,
    pub catalog: Arc<Catalog>,
    pub rows: RowReader,
    write_timeout: Duration,
}

fn op_rows(op: &Op) -> usize {
    match op {
        Op::Insert { rows, .. } | Op::Update { rows, .. } | Op::Delete { rows, .. } => rows.len(),
        _ => 1,
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
        ..Default::default()
    };
    Ok(Arc::new(c.validate().map_err(|e| Error::Raft(e.to_string()))?))
}

impl Groups {
    /// Open storage, start every group, and (single-node layout) initialize each group with
    /// this node as its only voter. Initializing an initialized group is a no-op.
    pub async fn start(cfg: &Config) -> Result<Arc<Groups>> {
        let layout = GroupLayout::new(cfg.sharding.user_shards, cfg.sharding.shared_shards);
        std::fs::create_dir_all(&cfg.storage.data_path)?;
        let log_db = LogDb::open(&cfg.rocksdb_path(), &PROJECTION_CFS)?;
        let catalog = Catalog::new();
        let raft_cfg = raft_config(cfg)?;
        let node_id = cfg.server.node_id;
        let me = NodeAddr { raft_addr: String::new(), http_addr: format!("{}:{}", cfg.server.host, cfg.server.port) };
        let mut groups = HashMap::new();
        for id in layout.all() {
            let log_store = LogStore::new(log_db.clone(), id)?;
            let sm = Projection::open(log_db.clone(), id, catalog.clone(), &cfg.snapshot_path())?;
            let applied = sm.applied_watch();
            let raft = Raft::new(node_id, raft_cfg.clone(), kalamdb_transport::NoPeers, log_store, sm)
                .await
                .map_err(|e| Error::Raft(format!("group {id}: {e}")))?;
            let members = BTreeMap::from([(node_id, me.clone())]);
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(target: "kalamdb_raft", group = %id, "group initialized"),
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                    tracing::debug!(target: "kalamdb_raft", group = %id, "group already initialized");
                }
                Err(e) => return Err(Error::Raft(format!("initialize group {id}: {e}"))),
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
            groups.insert(id, Group { id, raft, applied, queue });
        }
        let rows = RowReader::new(log_db.db().clone());
        Ok(Arc::new(Groups {
            node_id,
            layout,
            groups,
            catalog,
            rows,
            write_timeout: Duration::from_millis(cfg.limits.write_timeout_ms),
        }))
    }

    /// True once every group has a leader (this node can serve reads and writes).
    pub fn all_have_leader(&self) -> bool {
        self.groups.values().all(|g| g.raft.metrics().borrow().current_leader.is_some())
    }

    /// Wait (bounded) until every group has a leader.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.all_have_leader() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Queue an op for group commit and wait for its apply result.
    pub async fn propose(&self, group: GroupId, op: Op) -> Result<OpResult, QueryError> {
        let g = self.groups.get(&group).ok_or_else(|| QueryError::Internal(format!("unknown group {group}")))?;
        let rows = op_rows(&op);
        if rows > BATCH_ROWS_MAX {
            return Err(QueryError::InvalidSql(format!("a statement writes at most {BATCH_ROWS_MAX} rows")));
        }
        let (reply, rx) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        tokio::time::timeout_at(deadline, g.queue.send(Proposal { op, rows, reply }))
            .await
            .map_err(|_| QueryError::Unavailable(format!("group {group} write queue is full")))?
            .map_err(|_| QueryError::Unavailable(format!("group {group} is shutting down")))?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(QueryError::Unavailable(format!("group {group} dropped the write"))),
            // The write may still commit; the client must treat the outcome as unknown.
            Err(_) => Err(QueryError::Unavailable(format!("write to group {group} timed out; its outcome is unknown"))),
        }
    }

    pub async fn shutdown(&self) {
        for g in self.groups.values() {
            if let Err(e) = g.raft.shutdown().await {
                tracing::warn!(target: "kalamdb_raft", group = %g.id, error = %e, "shutdown failed");
            }
        }
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
        let mut rows = first.rows;
        let mut batch = vec![first];
        while batch.len() < batch_ops_max {
            match rx.try_recv() {
                Ok(p) if rows + p.rows <= BATCH_ROWS_MAX => {
                    rows += p.rows;
                    batch.push(p);
                }
                Ok(p) => {
                    // Too many rows for this entry: propose it alone in the next round.
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
    match raft.client_write(LogCommand { ops }).await {
        Ok(resp) => {
            let results = resp.data.results;
            assert_eq!(results.len(), n, "apply must return one result per op");
            for (reply, r) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(r));
            }
        }
        Err(e) => {
            let message = match &e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                    format!("NOT_LEADER: group {group} leader is {:?}", f.leader_id)
                }
                other => format!("group {group}: {other}"),
            };
            tracing::warn!(target: "kalamdb_raft", group = %group, error = %e, "proposal failed");
            for reply in replies {
                let _ = reply.send(Err(QueryError::Unavailable(message.clone())));
            }
        }
    }
}

/// Log leader and term changes of a group under the `kalamdb_raft` target.
async fn watch_leadership(group: GroupId, raft: Raft) {
    let mut metrics = raft.metrics();
    let mut last: (Option<NodeId>, u64) = (None, 0);
    loop {
        let (leader, term, state) = {
            let m = metrics.borrow_and_update();
            (m.current_leader, m.current_term, format!("{:?}", m.state))
        };
        if (leader, term) != last {
            tracing::info!(target: "kalamdb_raft", group = %group, ?leader, term, state, "leadership changed");
            last = (leader, term);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
