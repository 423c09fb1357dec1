//! The node's Raft groups: one openraft instance per group over the shared RocksDB log and
//! projections; group commit (client ops queue per group and are proposed as one log entry,
//! one append and one fsync per batch, with a bounded number of entries in flight); routing
//! of writes to the group leader, and linearizable read barriers.
//!
//! By concern: `propose` (group commit and forwarding to the leader), `read_index` (read
//! barriers, batched per group), `lease` (a leader's reads without a round), `peers` (what
//! this node answers its peers over QUIC); this file starts the groups and answers questions
//! about them.

pub mod balance;
mod error;
pub mod leadership;
pub mod lease;
pub mod membership;
mod peers;
mod propose;
mod read_index;

use crate::config::Config;
use crate::error::{Error, Result};
use async_trait::async_trait;
pub use error::GroupError;
use kalamdb_log::types::{NodeAddr, NodeId, Raft};
use kalamdb_log::{EncodedCommand, GroupId, GroupLayout, LogCommand, LogDb, LogStore, Op, OpResult, Value};
use kalamdb_projections::{Catalog, PROJECTION_CFS, Projection, RowReader, StorageEnv};
use kalamdb_transport::wire::{ForwardResponse, GroupStatus, ReadIndexResponse, RemoteError, StatusResponse};
use kalamdb_transport::{GroupNetwork, Transport, TransportConfig};
use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;

use peers::*;
use propose::*;
use read_index::*;

/// Rows one log entry may carry in total, below the projection's `_seq` packing limit.
pub const BATCH_ROWS_MAX: usize = (kalamdb_projections::stored::ENTRY_ROWS_MAX / 4) as usize;
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

/// One running group.
pub struct Group {
    pub id: GroupId,
    pub raft: Raft,
    pub applied: watch::Receiver<u64>,
    queue: mpsc::Sender<Proposal>,
    /// Entries in flight (`limits.proposals_in_flight_max`), shared by the group-commit
    /// batcher and the single-op fast path.
    slots: Arc<Semaphore>,
    /// `limits.proposals_in_flight_max`: the number of `slots`.
    in_flight_max: usize,
    read_queue: mpsc::Sender<ReadIndexWaiter>,
    /// Closed while this node hands the group's leadership over: nothing new is proposed.
    gate: Arc<leadership::WriteGate>,
    /// One handover of the group at a time.
    moving: tokio::sync::Mutex<()>,
    /// When this node last became the group's leader (a leader's own vote is leased from then).
    elected_at: Arc<std::sync::Mutex<Option<Instant>>>,
    /// This node's read lease as the group's leader (see `lease`).
    lease: Arc<lease::ReadLease>,
    /// `raft.lease_reads`: whether reads may be served under the lease.
    lease_reads: bool,
}

/// All groups of this node.
pub struct Groups {
    pub node_id: NodeId,
    pub layout: GroupLayout,
    pub groups: HashMap<GroupId, Group>,
    pub catalog: Arc<Catalog>,
    pub rows: RowReader,
    /// Cold storage root and the per-node job log and write counters.
    pub storage: Arc<StorageEnv>,
    /// The bucket cold files live in, when the storage path is an `s3://` URL.
    pub bucket: Option<Arc<crate::bucket::Bucket>>,
    /// The members named in config, this node included (one entry in a single-node layout):
    /// who forms the groups. Once formed, Raft membership is the authority ([`Groups::members`]).
    pub configured_members: BTreeMap<NodeId, NodeAddr>,
    /// This node joins a running cluster (`cluster.join`): it never initializes a group and
    /// asks the groups' leaders to add it.
    pub joining: bool,
    pub cluster_id: Option<String>,
    pub transport: Option<Arc<Transport>>,
    write_timeout: Duration,
    /// openraft's leader lease (its `election_timeout_max`): a voter refuses to vote for
    /// another candidate this long after it last heard from, or became, the leader.
    leader_lease: Duration,
    /// When the groups started: for `leader_lease` after it this node neither votes nor stands
    /// for election (it may have forgotten a leader's lease it granted before a restart).
    started_at: Instant,
    /// Set when a graceful shutdown began: this node hands its leaderships away and stands
    /// for no election.
    draining: Arc<std::sync::atomic::AtomicBool>,
    /// `storage.apply_format_max`: the highest apply format this node lets its groups move to.
    pub apply_format_max: u32,
    /// Held while this node raises a group's apply format, and while it checks a new member
    /// against a group's format and adds it: neither may see the group's members or format
    /// from before the other's change.
    pub format_change: tokio::sync::Mutex<()>,
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

fn unavailable(group: GroupId, why: &str) -> GroupError {
    GroupError::Unavailable(format!("group {group}: {why}"))
}

/// One group's projection digest on this node (`GET /v1/api/cluster/digest`).
#[derive(Debug, Clone)]
pub struct GroupDigest {
    pub group: GroupId,
    pub applied_index: u64,
    /// The applied index did not move while the digest was computed.
    pub stable: bool,
    pub digest: String,
}

/// The members every group starts with: the configured cluster, or this node alone.
pub fn initial_members(cfg: &Config) -> BTreeMap<NodeId, NodeAddr> {
    match &cfg.cluster {
        None => {
            let http_me = format!("{}:{}", cfg.server.host, cfg.server.port);
            BTreeMap::from([(cfg.server.node_id, NodeAddr { raft_addr: String::new(), http_addr: http_me })])
        }
        Some(c) => c
            .members
            .iter()
            .map(|m| (m.node_id, NodeAddr { raft_addr: m.raft_addr.clone(), http_addr: m.http_addr.clone() }))
            .collect(),
    }
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
        let started = std::time::Instant::now();
        let reused = log_db.prefill_wal(cfg.storage.wal_prefill_bytes)?;
        tracing::info!(
            reused,
            direct_io_for_table_files = log_db.direct_io(),
            bytes = cfg.storage.wal_prefill_bytes,
            ms = started.elapsed().as_millis() as u64,
            "WAL file prepared"
        );
        let (files, bucket) = crate::bucket::open_files(cfg)?;
        // Before any group applies: the temp files this node's own earlier run left are then
        // surely no write in progress.
        let started = std::time::Instant::now();
        let swept = files.sweep_temp_files()?;
        if swept.files > 0 {
            tracing::info!(
                files = swept.files,
                bytes = swept.bytes,
                ms = started.elapsed().as_millis() as u64,
                "removed temp files of interrupted writes"
            );
        }
        if let Some(b) = &bucket {
            b.start_uploader(files.clone(), cfg.storage.cache_bytes_max);
        }
        let storage = StorageEnv::with_files(cfg.snapshot_path(), files);
        let catalog = Catalog::new();
        let raft_cfg = raft_config(cfg)?;
        let node_id = cfg.server.node_id;
        let members = initial_members(cfg);
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
                    layout: cluster_layout(user_shards, shared_shards),
                })?)
            }
            _ => None,
        };
        let joining = cfg.cluster.as_ref().is_some_and(|c| c.join);
        let initializer = !joining && members.keys().next().copied() == Some(node_id);
        let mut groups = HashMap::new();
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let started_at = Instant::now();
        let leader_lease = Duration::from_millis(cfg.raft.election_timeout_max_ms);
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
            // In a cluster, no election before `leader_lease` has passed since the start
            // (`watch_leadership` allows them then): see `lease`. A single node has no peer
            // whose lease it could break.
            if transport.is_some() {
                raft.runtime_config().elect(false);
            }
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
            let gate = Arc::new(leadership::WriteGate::default());
            let slots = Arc::new(Semaphore::new(cfg.limits.proposals_in_flight_max));
            tokio::spawn(run_batcher(id, raft.clone(), rx, cfg.limits.batch_ops_max, slots.clone(), gate.clone()));
            let elected_at = Arc::new(std::sync::Mutex::new(None));
            let may_elect_at = if transport.is_some() { started_at + leader_lease } else { started_at };
            tokio::spawn(watch_leadership(id, raft.clone(), elected_at.clone(), draining.clone(), may_elect_at));
            let (read_queue, read_rx) = mpsc::channel(cfg.limits.proposal_queue_len_max);
            let lease = Arc::new(lease::ReadLease::default());
            let reads = ReadIndexer {
                group: id,
                node_id,
                raft: raft.clone(),
                transport: transport.clone(),
                gate: gate.clone(),
                lease: cfg.raft.lease_reads.then(|| (lease.clone(), lease::lease_length(leader_lease))),
            };
            tokio::spawn(run_read_index_batcher(reads, read_rx));
            let moving = tokio::sync::Mutex::new(());
            groups.insert(
                id,
                Group {
                    id,
                    raft,
                    applied,
                    queue,
                    slots,
                    in_flight_max: cfg.limits.proposals_in_flight_max,
                    read_queue,
                    gate,
                    moving,
                    elected_at,
                    lease,
                    lease_reads: cfg.raft.lease_reads,
                },
            );
        }
        let rows = RowReader::new(log_db.clone(), storage.files.clone());
        let me = Arc::new(Groups {
            node_id,
            layout,
            groups,
            catalog,
            rows,
            storage,
            bucket,
            configured_members: members,
            joining,
            cluster_id: cfg.cluster.as_ref().map(|c| c.cluster_id.clone()),
            transport: transport.clone(),
            write_timeout: Duration::from_millis(cfg.limits.write_timeout_ms),
            leader_lease,
            started_at,
            draining,
            apply_format_max: cfg.storage.apply_format_max,
            format_change: tokio::sync::Mutex::new(()),
        });
        if let Some(t) = &transport {
            t.serve(Arc::new(PeerService(Arc::downgrade(&me))));
            if joining {
                tokio::spawn(membership::run_join(Arc::downgrade(&me)));
            }
            if cfg.raft.leader_balance_interval_ms > 0 {
                tokio::spawn(balance::run_balancer(
                    Arc::downgrade(&me),
                    Duration::from_millis(cfg.raft.leader_balance_interval_ms),
                    cfg.raft.leader_transfers_per_minute_max,
                ));
            }
        }
        Ok(me)
    }

    /// Whether this node is a member of a cluster (it has peers and a transport).
    pub fn is_cluster(&self) -> bool {
        self.transport.is_some()
    }

    /// Test-only fault switch: cut this node off the cluster network, or reconnect it. False
    /// on a single node (nothing to cut).
    pub fn set_isolated(&self, isolated: bool) -> bool {
        match &self.transport {
            Some(t) => {
                t.set_isolated(isolated);
                true
            }
            None => false,
        }
    }

    /// The last index this node applied in `group` (0 for a group it does not host).
    pub fn applied_index(&self, group: GroupId) -> u64 {
        self.groups.get(&group).map_or(0, |g| *g.applied.borrow())
    }

    /// Every node of the cluster with its addresses: the union of the groups' memberships
    /// (nodes added at runtime included, removed ones gone), or the configured members while
    /// no group has a membership yet.
    pub fn members(&self) -> BTreeMap<NodeId, NodeAddr> {
        let mut out = BTreeMap::new();
        for g in self.groups.values() {
            let m = g.raft.metrics().borrow().membership_config.clone();
            for (id, addr) in m.membership().nodes() {
                out.entry(*id).or_insert_with(|| addr.clone());
            }
        }
        if out.is_empty() { self.configured_members.clone() } else { out }
    }

    /// Every member of `group` (voters and learners) in this node's view of its membership.
    pub fn members_of(&self, group: GroupId) -> Vec<NodeId> {
        self.groups.get(&group).map_or_else(Vec::new, |g| {
            g.raft.metrics().borrow().membership_config.membership().nodes().map(|(id, _)| *id).collect()
        })
    }

    /// A watch of `group`'s applied index; `None` for a group this node does not host.
    pub fn applied_watch(&self, group: GroupId) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.groups.get(&group).map(|g| g.applied.clone())
    }

    /// Per group: the applied index, whether it stayed the same while the digest was computed,
    /// and the SHA-256 of the projection. Reads every projection: call it off the async runtime.
    pub fn digests(&self) -> std::result::Result<Vec<GroupDigest>, kalamdb_projections::Error> {
        let mut out = Vec::new();
        for id in self.layout.all() {
            let Some(g) = self.groups.get(&id) else { continue };
            let before = *g.applied.borrow();
            let digest = kalamdb_projections::digest_group(self.rows.db(), id)?;
            let applied_index = *g.applied.borrow();
            out.push(GroupDigest { group: id, applied_index, stable: before == applied_index, digest });
        }
        Ok(out)
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

    fn group(&self, group: GroupId) -> std::result::Result<&Group, GroupError> {
        self.groups.get(&group).ok_or_else(|| GroupError::Internal(format!("unknown group {group}")))
    }

    fn leader_of(&self, group: &Group) -> Option<NodeId> {
        group.raft.metrics().borrow().current_leader
    }

    /// Does this node lead `group` right now?
    pub fn leads(&self, group: GroupId) -> bool {
        self.groups.get(&group).is_some_and(|g| self.leader_of(g) == Some(self.node_id))
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
                files_needed_from: self.storage.pins.lowest(id).unwrap_or(u64::MAX),
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
        // Tasks may still hold the storage registries when `run` returns, so the reclaiming
        // thread is stopped here, not left inside RocksDB while the process exits.
        let storage = self.storage.clone();
        let _ = tokio::task::spawn_blocking(move || storage.reclaim.stop()).await;
    }
}

/// What every member must agree on, as text peers compare in Hello: the shard counts, which
/// fix the set of Raft groups. (Who the members are is Raft membership's business: nodes join
/// and leave at runtime.)
fn cluster_layout(user_shards: u16, shared_shards: u16) -> String {
    format!("user_shards {user_shards}; shared_shards {shared_shards}")
}

/// Log leader, term and membership changes of a group under the `kalamdb_raft` target; note
/// when this node becomes leader; and stand for elections once this node is a voter (at the
/// start, and after a node was removed and added again), unless it is shutting down; never
/// before `may_elect_at` (see `lease`).
async fn watch_leadership(
    group: GroupId,
    raft: Raft,
    elected_at: Arc<std::sync::Mutex<Option<Instant>>>,
    draining: Arc<std::sync::atomic::AtomicBool>,
    may_elect_at: Instant,
) {
    let mut metrics = raft.metrics();
    let mut last: (Option<NodeId>, u64) = (None, 0);
    let mut last_membership = None;
    loop {
        let (leader, term, state, membership) = {
            let m = metrics.borrow_and_update();
            (m.current_leader, m.current_term, format!("{:?}", m.state), m.membership_config.log_id().map(|l| l.index))
        };
        if (leader, term) != last {
            if leader.is_some() && leader == Some(metrics.borrow().id) {
                *elected_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            }
            tracing::info!(target: "kalamdb_raft", group = %group, ?leader, term, state, "leadership changed");
            last = (leader, term);
        }
        if membership != last_membership {
            let (voters, learners): (Vec<NodeId>, Vec<NodeId>) = {
                let m = metrics.borrow();
                let c = m.membership_config.membership();
                (c.voter_ids().collect(), c.learner_ids().collect())
            };
            tracing::info!(target: "kalamdb_raft", group = %group, ?voters, ?learners, log_index = ?membership, "membership");
            let me = metrics.borrow().id;
            if voters.contains(&me) {
                let (raft, draining) = (raft.clone(), draining.clone());
                tokio::spawn(async move {
                    tokio::time::sleep_until(may_elect_at).await;
                    if !draining.load(std::sync::atomic::Ordering::SeqCst) {
                        raft.runtime_config().elect(true);
                    }
                });
            }
            last_membership = membership;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
