//! Linearizable reads: before reading a group the node learns the leader's read index (the
//! leader confirms its leadership with a quorum, or holds a read lease: see `lease`) and
//! waits until it applied that far. Concurrent reads of a group share one round, the
//! read-side twin of group commit.

use super::*;

/// Why one read-index round gave no index.
#[derive(Debug, Clone)]
pub(super) enum ReadIndexError {
    /// No leader, leader unreachable or not confirmed in time: safe to try again.
    Retry,
    Failed {
        code: String,
        message: String,
    },
}

pub(super) type ReadIndexWaiter = oneshot::Sender<std::result::Result<u64, ReadIndexError>>;

impl Groups {
    /// Whether this node may answer a vote request of `group` now (see `lease`): not within
    /// `leader_lease` of its start, and not while it leads the group under a read lease
    /// (a handover ends the lease before it asks for this node's vote).
    pub(super) fn may_vote(&self, group: GroupId) -> std::result::Result<(), String> {
        let now = Instant::now();
        if now < self.started_at + self.leader_lease {
            return Err(format!("node {} started less than a leader lease ago; it votes after that", self.node_id));
        }
        let g = self.group(group).map_err(|e| e.to_string())?;
        if g.lease.held(now) && !g.gate.is_closed() {
            return Err(format!("node {} leads group {group} under a read lease", self.node_id));
        }
        Ok(())
    }

    /// Linearizable read barrier (ReadIndex): learn the leader's commit index after it has
    /// confirmed leadership with a quorum, then wait until this node has applied it.
    pub async fn read_barrier(&self, group: GroupId) -> std::result::Result<(), GroupError> {
        let g = self.group(group)?;
        let deadline = Instant::now() + self.write_timeout;
        // A leader under its read lease knows the index without a round: it answers here,
        // without the two task hops through the group's read-index batcher (a single-client
        // write pays this barrier on the catalog group before its own commit).
        if let Some(index) = lease_read(g.lease_reads.then_some(g.lease.as_ref()), &g.gate, &g.raft, self.node_id) {
            if self.wait_applied(g, index, deadline).await {
                return Ok(());
            }
            return Err(unavailable(group, "this node is too far behind to serve a linearizable read"));
        }
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
                Ok(Ok(Err(ReadIndexError::Failed { code, message }))) => {
                    return Err(GroupError::from_remote(&code, message));
                }
                Ok(Ok(Err(ReadIndexError::Retry))) | Ok(Err(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(LEADER_RETRY_MS)).await;
                }
                _ => return Err(unavailable(group, "no leader confirmed for a linearizable read")),
            }
        }
    }
}

/// What one group's read-index rounds need.
pub(super) struct ReadIndexer {
    pub(super) group: GroupId,
    pub(super) node_id: NodeId,
    pub(super) raft: Raft,
    pub(super) transport: Option<Arc<Transport>>,
    /// Closed during a handover: no lease is used or taken then.
    pub(super) gate: Arc<leadership::WriteGate>,
    /// The group's read lease and its length; `None` when `raft.lease_reads` is off.
    pub(super) lease: Option<(Arc<lease::ReadLease>, Duration)>,
}

/// Read-index batching for one group: every read waiting when a round starts shares that
/// round's index. Linearizable, because each waiter's request arrived before the leader
/// confirmed its leadership for the round. One round in flight per group.
pub(super) async fn run_read_index_batcher(reads: ReadIndexer, mut rx: mpsc::Receiver<ReadIndexWaiter>) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while waiters.len() < READS_PER_ROUND_MAX {
            match rx.try_recv() {
                Ok(w) => waiters.push(w),
                Err(_) => break,
            }
        }
        metrics::histogram!("kalamdb_read_index_batch").record(waiters.len() as f64);
        let result = reads.round().await;
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

impl ReadIndexer {
    async fn round(&self) -> std::result::Result<u64, ReadIndexError> {
        let timeout = Duration::from_millis(PEER_REQUEST_TIMEOUT_MS);
        let leader = self.raft.metrics().borrow().current_leader;
        match leader {
            Some(l) if l == self.node_id => self.leader_round(timeout).await,
            // Retrying a read index is always safe, so a dead leader costs one short timeout.
            Some(l) => match self.transport.as_ref().map(|t| t.read_index(l, self.group, timeout)) {
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

    /// This node leads the group: under a read lease, its newest entry; otherwise a quorum
    /// round, which (outside a handover) takes a new lease from the moment it started.
    async fn leader_round(&self, timeout: Duration) -> std::result::Result<u64, ReadIndexError> {
        if let Some(index) =
            lease_read(self.lease.as_ref().map(|(l, _)| l.as_ref()), &self.gate, &self.raft, self.node_id)
        {
            return Ok(index);
        }
        let lease = self.lease.as_ref().filter(|_| !self.gate.is_closed());
        let leading = lease::Leading::of(&self.raft, self.node_id);
        metrics::counter!("kalamdb_read_index_rounds_total", "kind" => "quorum").increment(1);
        let (started, generation) = (Instant::now(), lease.map(|(l, _)| l.generation()));
        // A leader cut off from its quorum cannot confirm leadership: bounded wait.
        match tokio::time::timeout(timeout, self.raft.get_read_log_id()).await {
            Ok(Ok((read, _))) => {
                // Renewed only for the term and membership the round ran under.
                if let (Some((lease, length)), Some(generation), Some(before)) = (lease, generation, leading)
                    && lease::Leading::of(&self.raft, self.node_id)
                        .is_some_and(|now| now.term == before.term && now.membership == before.membership)
                    && !self.gate.is_closed()
                {
                    lease.renew(generation, started, *length, before);
                }
                Ok(read.map_or(0, |l| l.index))
            }
            // No quorum answered this round: peers not reconnected yet after a restart look the
            // same as a partition for a moment, and a round is safe to repeat until the
            // request's deadline (a node cut off still fails then, with 503).
            Ok(Err(RaftError::APIError(
                CheckIsLeaderError::ForwardToLeader(_) | CheckIsLeaderError::QuorumNotEnough(_),
            )))
            | Err(_) => Err(ReadIndexError::Retry),
            Ok(Err(e)) => Err(ReadIndexError::Failed {
                code: "CLUSTER_UNAVAILABLE".into(),
                message: format!("group {}: read index: {e}", self.group),
            }),
        }
    }
}

/// The read index this node serves now without a round: it leads the group and holds a read
/// lease for its term and membership (`lease` is `None` when leases are off), and no handover
/// has closed the write gate.
fn lease_read(lease: Option<&lease::ReadLease>, gate: &leadership::WriteGate, raft: &Raft, me: NodeId) -> Option<u64> {
    if gate.is_closed() {
        return None;
    }
    let index = lease?.read_index(Instant::now(), lease::Leading::of(raft, me)?)?;
    metrics::counter!("kalamdb_read_index_rounds_total", "kind" => "lease").increment(1);
    Some(index)
}
