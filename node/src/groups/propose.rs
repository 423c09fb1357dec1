//! Writes: group commit (ops queue per group and go into the log as one entry, one append and
//! one fsync per batch, with a bounded number of entries in flight) and forwarding to the
//! leader, whose answer carries the entry's index so this node can wait until it applied it.

use super::*;

/// Why a proposal failed.
#[derive(Clone)]
pub(super) enum ProposeError {
    /// This node does not lead the group; nothing was proposed.
    NotLeader(Option<NodeId>),
    Failed(GroupError),
}

pub(super) type ProposeResult = std::result::Result<(OpResult, u64), ProposeError>;

pub(super) struct Proposal {
    op: Op,
    rows: usize,
    bytes: usize,
    reply: oneshot::Sender<ProposeResult>,
}

pub(super) fn op_rows(op: &Op) -> usize {
    match op {
        Op::Insert { rows, .. } | Op::Update { rows, .. } | Op::Delete { rows, .. } => rows.len(),
        Op::Transaction { writes } => writes.iter().map(|w| w.rows.len()).sum::<usize>().max(1),
        _ => 1,
    }
}

pub(super) fn value_bytes(v: &Value) -> usize {
    match v {
        Value::Text(s) | Value::Json(s) => s.len() + 8,
        Value::Bytes(b) => b.len() + 8,
        _ => 16,
    }
}

pub(super) fn rows_bytes(rows: &[kalamdb_log::RowWrite]) -> usize {
    rows.iter().map(|r| 32 + value_bytes(&r.pk) + r.values.iter().map(value_bytes).sum::<usize>()).sum()
}

/// Estimated encoded size of an op, for bounding entries without encoding twice.
pub(super) fn op_bytes(op: &Op) -> usize {
    match op {
        Op::Insert { rows, .. } | Op::Update { rows, .. } | Op::Delete { rows, .. } => rows_bytes(rows),
        Op::Transaction { writes } => writes.iter().map(|w| 64 + w.scope.len() + rows_bytes(&w.rows)).sum(),
        _ => 4096,
    }
}

impl Groups {
    /// Propose an op: through this node's group commit if it leads the group, otherwise
    /// forwarded over QUIC to the leader. Leader changes are retried until the write timeout;
    /// a retry only happens when the failed attempt certainly proposed nothing.
    pub async fn propose(&self, group: GroupId, op: Op) -> std::result::Result<OpResult, GroupError> {
        let g = self.group(group)?;
        // Files of a flush or compaction go to the bucket after apply: while it cannot take
        // them, rows stay hot rather than pile up on local disk.
        if let (Some(bucket), Op::Flush { .. } | Op::PrepareFlush { .. } | Op::FlushUpto { .. } | Op::Compact { .. }) =
            (&self.bucket, &op)
        {
            bucket.check().await.map_err(|e| {
                GroupError::StorageUnavailable(format!("cold storage is unavailable, nothing was flushed: {e}"))
            })?;
        }
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
                Err(ProposeError::Failed(e)) => return Err(e),
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
            Some(l) => GroupError::NotLeader(format!(
                "group {group}: leader (last known: node {l}) not reachable within the write timeout"
            )),
            None => GroupError::Unavailable(format!(
                "group {group} has no leader (no quorum reachable from node {})",
                self.node_id
            )),
        })
    }

    pub(super) async fn propose_local(&self, g: &Group, op: Op, deadline: Instant) -> ProposeResult {
        if g.gate.is_closed() {
            // Nothing proposed: the caller retries with the next leader.
            return Err(ProposeError::NotLeader(None));
        }
        let rows = op_rows(&op);
        if rows > BATCH_ROWS_MAX {
            return Err(ProposeError::Failed(GroupError::TooLarge(format!(
                "a statement writes at most {BATCH_ROWS_MAX} rows"
            ))));
        }
        let bytes = op_bytes(&op);
        if bytes > BATCH_BYTES_MAX {
            return Err(ProposeError::Failed(GroupError::TooLarge(format!(
                "a statement writes at most {BATCH_BYTES_MAX} bytes of row data"
            ))));
        }
        let group = g.id;
        // Fast path: the group is idle (nothing queued for group commit, no entry in flight;
        // the batcher holds one slot while it waits), so a batch would hold this op alone.
        // Proposed from this task, it skips the batcher's wake-up, the spawned proposal task
        // and the reply hop (one client's write latency). Under load entries are in flight,
        // so writes go through the batcher as before. A cancelled request (client gone) loses
        // only its answer, as a timed-out one does: openraft owns the entry once it was sent.
        if g.queue.capacity() == g.queue.max_capacity()
            && g.slots.available_permits() + 1 >= g.in_flight_max
            && let Ok(permit) = g.slots.clone().try_acquire_owned()
        {
            metrics::histogram!("kalamdb_group_commit_ops").record(1.0);
            let written = write_entry(group, &g.raft, vec![op], &g.gate);
            let outcome = tokio::time::timeout_at(deadline, written).await;
            drop(permit);
            return match outcome {
                Ok(Ok((mut results, index))) => Ok((results.pop().unwrap_or(OpResult::Skipped), index)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ProposeError::Failed(unavailable(group, "write timed out; its outcome is unknown"))),
            };
        }
        let (reply, rx) = oneshot::channel();
        tokio::time::timeout_at(deadline, g.queue.send(Proposal { op, rows, bytes, reply }))
            .await
            .map_err(|_| ProposeError::Failed(unavailable(group, "write queue is full")))?
            .map_err(|_| ProposeError::Failed(unavailable(group, "shutting down")))?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ProposeError::Failed(unavailable(group, "the write was dropped"))),
            // The write may still commit; the client must treat the outcome as unknown.
            Err(_) => Err(ProposeError::Failed(unavailable(group, "write timed out; its outcome is unknown"))),
        }
    }

    pub(super) async fn propose_remote(&self, g: &Group, leader: NodeId, op: &Op, deadline: Instant) -> ProposeResult {
        let Some(t) = &self.transport else { return Err(ProposeError::NotLeader(None)) };
        let cmd = EncodedCommand::encode(&LogCommand::now(vec![op.clone()]))
            .map_err(|e| ProposeError::Failed(GroupError::Internal(e.to_string())))?;
        let timeout = deadline.saturating_duration_since(Instant::now());
        tracing::debug!(target: "kalamdb_raft", group = %g.id, leader, "forwarding write");
        match t.forward(leader, g.id, &cmd, timeout).await {
            Ok(ForwardResponse::Ok { mut results, index }) if results.len() == 1 => {
                Ok((results.pop().unwrap_or(OpResult::Skipped), index))
            }
            Ok(ForwardResponse::Ok { results, .. }) => Err(ProposeError::Failed(GroupError::Internal(format!(
                "leader returned {} results for one op",
                results.len()
            )))),
            Ok(ForwardResponse::Err(RemoteError::NotLeader { leader })) => Err(ProposeError::NotLeader(leader)),
            Ok(ForwardResponse::Err(RemoteError::Failed { code, message })) => {
                Err(ProposeError::Failed(GroupError::from_remote(&code, message)))
            }
            // Nothing was sent: safe to retry (maybe with a new leader).
            Err(kalamdb_transport::Error::Unreachable { .. }) => Err(ProposeError::NotLeader(None)),
            Err(e) => Err(ProposeError::Failed(unavailable(g.id, &format!("forwarding failed, outcome unknown: {e}")))),
        }
    }

    /// Wait (until `deadline`) for this node's projection of `g` to reach `index`.
    pub(super) async fn wait_applied(&self, g: &Group, index: u64, deadline: Instant) -> bool {
        let mut rx = g.applied.clone();
        let reached = tokio::time::timeout_at(deadline, rx.wait_for(|a| *a >= index)).await;
        matches!(reached, Ok(Ok(_)))
    }
}

/// Group commit for one group. Waits for an in-flight slot first, so while all slots are busy
/// requests pile up in the queue and the next entry carries all of them.
pub(super) async fn run_batcher(
    group: GroupId,
    raft: Raft,
    mut rx: mpsc::Receiver<Proposal>,
    batch_ops_max: usize,
    slots: Arc<Semaphore>,
    gate: Arc<leadership::WriteGate>,
) {
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let (mut rows, mut bytes) = (first.rows, first.bytes);
        // A storage job is an entry of its own: ops of one entry share a write batch and each
        // reads the state before the entry, so two `Settle`s of a scope in one entry would
        // both start at the same cursor (and settle the same rows twice).
        let alone = first.op.is_storage_job();
        let mut batch = vec![first];
        while !alone && batch.len() < batch_ops_max {
            match rx.try_recv() {
                Ok(p)
                    if !p.op.is_storage_job()
                        && rows + p.rows <= BATCH_ROWS_MAX
                        && bytes + p.bytes <= BATCH_BYTES_MAX =>
                {
                    rows += p.rows;
                    bytes += p.bytes;
                    batch.push(p);
                }
                Ok(p) => {
                    // Too big for this entry, or a storage job: propose it alone.
                    let raft = raft.clone();
                    tokio::spawn(propose_batch(group, raft, vec![p], None, gate.clone()));
                    break;
                }
                Err(_) => break,
            }
        }
        metrics::histogram!("kalamdb_group_commit_ops").record(batch.len() as f64);
        tokio::spawn(propose_batch(group, raft.clone(), batch, Some(permit), gate.clone()));
    }
}

pub(super) async fn propose_batch(
    group: GroupId,
    raft: Raft,
    batch: Vec<Proposal>,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    gate: Arc<leadership::WriteGate>,
) {
    let mut ops = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    for p in batch {
        ops.push(p.op);
        replies.push(p.reply);
    }
    match write_entry(group, &raft, ops, &gate).await {
        Ok((results, index)) => {
            for (reply, r) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok((r, index)));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Propose `ops` as one log entry and wait for openraft's answer: one result per op and the
/// entry's index.
async fn write_entry(
    group: GroupId,
    raft: &Raft,
    ops: Vec<Op>,
    gate: &Arc<leadership::WriteGate>,
) -> std::result::Result<(Vec<OpResult>, u64), ProposeError> {
    // Held until openraft answered: a handover waits for it.
    let Some(_pass) = gate.enter() else {
        // Queued before the handover began; not proposed, so its callers retry elsewhere.
        return Err(ProposeError::NotLeader(None));
    };
    let n = ops.len();
    let encoded = EncodedCommand::encode(&LogCommand::now(ops))
        .map_err(|e| ProposeError::Failed(GroupError::Internal(format!("encode command: {e}"))))?;
    match raft.client_write(encoded).await {
        Ok(resp) => {
            let results = resp.data.results;
            assert_eq!(results.len(), n, "apply must return one result per op");
            Ok((results, resp.log_id.index))
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
            Err(ProposeError::Failed(GroupError::NotLeader(message)))
        }
        Err(e) => {
            tracing::warn!(target: "kalamdb_raft", group = %group, error = %e, "proposal failed");
            Err(ProposeError::Failed(GroupError::Unavailable(format!("group {group}: {e}"))))
        }
    }
}
