//! Linearizable reads: before reading a group the node learns the leader's read index (the
//! leader confirms its leadership with a quorum) and waits until it applied that far.
//! Concurrent reads of a group share one round, the read-side twin of group commit.

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
    /// Linearizable read barrier (ReadIndex): learn the leader's commit index after it has
    /// confirmed leadership with a quorum, then wait until this node has applied it.
    pub async fn read_barrier(&self, group: GroupId) -> std::result::Result<(), GroupError> {
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

/// Read-index batching for one group: every read waiting when a round starts shares that
/// round's index. Linearizable, because each waiter's request arrived before the leader
/// confirmed its leadership for the round. One round in flight per group.
pub(super) async fn run_read_index_batcher(
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

pub(super) async fn read_index_round(
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
