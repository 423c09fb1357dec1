//! What `query` needs from the node, as traits the node implements: proposing ops to the
//! log, read barriers for linearizable reads, the cluster view behind `system.cluster*`, and
//! the storage job log behind `system.jobs`, and the backup runner behind `BACKUP DATABASE`. `query` itself never writes and never talks to
//! peers; everything it asks of the outside goes through here.

use async_trait::async_trait;
use kalamdb_log::{GroupId, Op, OpResult, TableDef};
use kalamdb_projections::JobLog;

use crate::error::Result;

/// The node side of a write: put an op in the given group's log and return its apply result.
#[async_trait]
pub trait Proposer: Send + Sync {
    async fn propose(&self, group: GroupId, op: Op) -> Result<OpResult>;

    /// Flush all of `table`'s rows in `group` (`FLUSH TABLE`). The default proposes one
    /// `Op::Flush`, which writes the files inside apply; the node overrides it with the
    /// automatic flush's prepared path, where the files are written before the entry that
    /// publishes them, so the group's writers do not wait for the encoding.
    async fn flush_table(&self, group: GroupId, table: TableDef) -> Result<OpResult> {
        self.propose(group, Op::Flush { table, scope: None }).await
    }
}

/// Makes a read linearizable: returns once this node's projection of `group` has applied
/// everything committed before the call (ReadIndex). The node implements it.
#[async_trait]
pub trait ReadBarrier: Send + Sync + std::fmt::Debug {
    async fn wait(&self, group: GroupId) -> Result<()>;
}

/// A row of `system.cluster`.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    /// The cluster's id (`standalone` for a single node).
    pub cluster_id: String,
    pub node_id: u64,
    pub raft_addr: String,
    pub http_addr: String,
    /// "leader" when the node leads the catalog group, else "follower".
    pub role: String,
    pub groups_led: u64,
    pub reachable: bool,
    pub is_self: bool,
    /// "voter" when it votes in every group, else "learner" (joining).
    pub membership: String,
    /// While a learner: how far it caught up, in percent (the least over the groups).
    pub catchup_progress_pct: Option<u64>,
    /// Entries it is behind the catalog group's leader.
    pub replication_lag: Option<u64>,
}

/// A row of `system.cluster_groups`.
#[derive(Debug, Clone)]
pub struct ClusterGroup {
    pub group: String,
    /// The group's number (KalamDB's `group_id`): meta groups 0..=2, user shard n 65536 + n,
    /// shared shard n 131072 + n.
    pub id: u32,
    /// The node answering (its view of the group).
    pub node_id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
}

/// The cluster state behind `system.cluster` and `system.cluster_groups`; the node
/// implements it (a single node reports itself and its groups).
#[async_trait]
pub trait ClusterView: Send + Sync + std::fmt::Debug {
    async fn nodes(&self) -> Vec<ClusterNode>;
    async fn groups(&self) -> Vec<ClusterGroup>;
}

/// What became of one group in a `CLUSTER` leadership statement.
#[derive(Debug, Clone)]
pub struct LeadershipChange {
    /// The group's name (`shared:0`) and KalamDB's number for it.
    pub group: String,
    pub group_id: u32,
    /// The leader before and after (`None`: not known).
    pub from: Option<u64>,
    pub to: Option<u64>,
    /// Why the group did not move, when it did not.
    pub error: Option<String>,
}

/// What became of one group in `CLUSTER JOIN` / `CLUSTER REMOVE NODE`.
#[derive(Debug, Clone)]
pub struct MembershipChange {
    pub group: String,
    pub group_id: u32,
    /// The group's voters afterwards (empty when the change failed).
    pub voters: Vec<u64>,
    pub error: Option<String>,
}

/// Carries out `CLUSTER` statements (leadership transfers, step-down, rebalancing, joining and
/// removing nodes); the node implements it by talking to its peers, which query never does.
#[async_trait]
pub trait ClusterControl: Send + Sync + std::fmt::Debug {
    /// A leadership command: one entry per group it concerned.
    async fn run(&self, command: crate::parse::ClusterCommand) -> Result<Vec<LeadershipChange>>;
    /// `JOIN` or `REMOVE NODE`: one entry per group.
    async fn change_membership(&self, command: crate::parse::ClusterCommand) -> Result<Vec<MembershipChange>>;
}

/// One open client session of a node (a WebSocket connection), a row of `system.sessions`.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub session_id: String,
    pub user_id: String,
    /// `websocket`.
    pub transport: String,
    pub client_addr: Option<String>,
    pub opened_at_micros: i64,
    pub last_seen_at_micros: i64,
    /// The type of the last message the client sent (`subscribe`, `ping`, ...).
    pub last_method: Option<String>,
    pub subscriptions: u64,
}

/// What the node knows about itself beyond the catalog: its metrics (`system.stats`) and its
/// open client sessions (`system.sessions`). The node implements it.
pub trait NodeView: Send + Sync + std::fmt::Debug {
    /// `(metric_name, metric_value)` pairs, at most `max` of them.
    fn stats(&self, max: usize) -> Vec<(String, String)>;
    /// The open sessions, at most `max` of them.
    fn sessions(&self, max: usize) -> Vec<SessionInfo>;
}

/// Where `system.jobs` comes from: the node's storage job log.
pub trait JobSource: Send + Sync + std::fmt::Debug {
    fn job_log(&self) -> &JobLog;
}

/// Runs `BACKUP DATABASE TO '<destination>'`: the node copies every group's state and files as
/// a job (shown in `system.jobs`) and answers at once with the job's id.
#[async_trait]
pub trait BackupRunner: Send + Sync + std::fmt::Debug {
    async fn start_backup(&self, destination: &str) -> Result<String>;
}
