//! Leadership moves: handing a group's leadership to a chosen voter, stepping down, draining
//! before a graceful shutdown (the balancer that decides which moves to make is `balance.rs`).
//!
//! openraft 0.9 has no leader transfer, so a transfer is built from what it has: the leader
//! stops proposing (writes wait and retry, nothing is lost or doubled), waits until its own
//! entries are applied and the successor holds its whole log, then asks the successor to elect
//! itself (`LeadershipRequest::ElectNow`). The leader grants that vote (the candidate's log is
//! as long as its own, and a leader's lease does not cover its own vote), which with the
//! successor's own vote is a majority of three; with more voters the leader also stops its
//! heartbeats so the other followers' leases run out. No election timeout is waited for.

use super::*;
use kalamdb_transport::wire::{LeadershipRequest, LeadershipResponse};
use std::sync::atomic::{AtomicBool, Ordering};

/// How long one transfer may take before it is abandoned and the old leader resumes writes.
pub const TRANSFER_TIMEOUT_MS: u64 = 3_000;
/// Times a transfer starts over when leadership landed on another voter than the target.
const TRANSFER_ATTEMPTS_MAX: u32 = 2;
/// How long the leader waits for the successor's election before asking again.
const ELECT_RETRY_MS: u64 = 200;
/// How long a node shutting down spends handing over its leaderships, in total.
pub const DRAIN_TIMEOUT_MS: u64 = 15_000;
/// A successor more than this many entries behind is not chosen by the balancer (it would make
/// the transfer wait for its catch-up).
pub const BALANCE_LAG_ENTRIES_MAX: u64 = 1_000;
/// Added to the leader lease before a freshly elected leader hands over (clock granularity).
const LEASE_MARGIN_MS: u64 = 50;
/// Pause between polls of a group's metrics while a transfer waits.
const POLL_MS: u64 = 5;

/// Why a leadership move failed.
#[derive(Debug)]
pub enum MoveError {
    /// Asked of a node that does not lead the group (the leader it knows, if any).
    NotLeader(Option<NodeId>),
    /// The move cannot be made (a target that is not a voter, a draining target, ...).
    Refused(String),
    /// The move did not finish in time; the old leader kept the group.
    Timeout(String),
}

impl MoveError {
    fn message(&self) -> String {
        match self {
            MoveError::NotLeader(l) => format!("not the leader (leader: {l:?})"),
            MoveError::Refused(m) | MoveError::Timeout(m) => m.clone(),
        }
    }
}

impl From<MoveError> for GroupError {
    fn from(e: MoveError) -> GroupError {
        match e {
            MoveError::Refused(m) => GroupError::Refused(m),
            other => GroupError::Unavailable(other.message()),
        }
    }
}

/// Paused writes and stopped heartbeats of a group while it is handed over; undone on drop,
/// whatever way the transfer ends.
struct HandoverGuard<'a> {
    group: &'a Group,
    /// Whether the node stands for elections once the handover ends (not while draining).
    may_elect: bool,
}

impl<'a> HandoverGuard<'a> {
    /// Also stops this node standing for elections meanwhile: should the successor's election
    /// unsettle the group, the old leader must not simply win it back.
    fn new(group: &'a Group, may_elect: bool) -> HandoverGuard<'a> {
        group.gate.set_closed(true);
        // The successor asks this leader for its vote: no read may rely on the lease after.
        group.lease.end();
        group.raft.runtime_config().elect(false);
        HandoverGuard { group, may_elect }
    }
}

impl Drop for HandoverGuard<'_> {
    fn drop(&mut self) {
        self.group.raft.runtime_config().heartbeat(true);
        self.group.raft.runtime_config().elect(self.may_elect);
        self.group.gate.set_closed(false);
    }
}

/// The pieces of a group's metrics a transfer decides by.
pub(super) struct Progress {
    pub(super) leader: Option<NodeId>,
    pub(super) last: u64,
    pub(super) applied: u64,
    pub(super) matched: BTreeMap<NodeId, u64>,
    pub(super) voters: Vec<NodeId>,
}

pub(super) fn progress(g: &Group) -> Progress {
    let m = g.raft.metrics().borrow().clone();
    let matched = m
        .replication
        .as_ref()
        .map(|r| r.iter().map(|(n, l)| (*n, l.map_or(0, |l| l.index))).collect())
        .unwrap_or_default();
    Progress {
        leader: m.current_leader,
        last: m.last_log_index.unwrap_or(0),
        applied: m.last_applied.map_or(0, |l| l.index),
        matched,
        voters: m.membership_config.membership().voter_ids().collect(),
    }
}

impl Groups {
    /// Whether this node is shutting down and handing its leaderships away.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Who leads `group` in this node's view.
    pub fn leader(&self, group: GroupId) -> Option<NodeId> {
        self.groups.get(&group).and_then(|g| self.leader_of(g))
    }

    /// The voters of `group` in this node's view.
    pub fn voters_of(&self, group: GroupId) -> Vec<NodeId> {
        self.groups.get(&group).map_or_else(Vec::new, |g| progress(g).voters)
    }

    /// Make `target` the leader of `group`, asking whichever node leads it now. Returns the
    /// leader afterwards (`target` unless leadership moved elsewhere meanwhile).
    pub async fn transfer_leader(&self, group: GroupId, target: NodeId) -> std::result::Result<NodeId, GroupError> {
        let g = self.group(group)?;
        if !progress(g).voters.contains(&target) {
            return Err(GroupError::Refused(format!("node {target} is not a voter of group {group}")));
        }
        let deadline = Instant::now() + Duration::from_millis(TRANSFER_TIMEOUT_MS * 2);
        let mut landed_elsewhere = 0;
        loop {
            let attempt = match self.leader_of(g) {
                Some(l) if l == target => return Ok(l),
                Some(l) if l == self.node_id => self.hand_over(g, target).await,
                Some(l) => self.ask_leader(g, l, target).await,
                None => Err(MoveError::NotLeader(None)),
            };
            match attempt {
                // Another voter won the election the successor started (its log was longer):
                // ask again from there, a bounded number of times.
                Ok(leader) if leader != target && landed_elsewhere < TRANSFER_ATTEMPTS_MAX => {
                    landed_elsewhere += 1;
                }
                Ok(leader) => return Ok(leader),
                Err(MoveError::NotLeader(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(LEADER_RETRY_MS)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn ask_leader(&self, g: &Group, leader: NodeId, target: NodeId) -> std::result::Result<NodeId, MoveError> {
        let Some(t) = &self.transport else { return Err(MoveError::NotLeader(None)) };
        let timeout = Duration::from_millis(TRANSFER_TIMEOUT_MS + PEER_REQUEST_TIMEOUT_MS);
        match t.leadership(leader, g.id, LeadershipRequest::TransferTo { target }, timeout).await {
            Ok(LeadershipResponse::Ok { leader: Some(l) }) => Ok(l),
            Ok(LeadershipResponse::Ok { leader: None }) => Err(MoveError::NotLeader(None)),
            Ok(LeadershipResponse::Err(RemoteError::NotLeader { leader })) => Err(MoveError::NotLeader(leader)),
            Ok(LeadershipResponse::Err(RemoteError::Failed { code, message })) if code == "CLUSTER_OPERATION_REFUSED" => {
                Err(MoveError::Refused(message))
            }
            Ok(LeadershipResponse::Err(RemoteError::Failed { message, .. })) => Err(MoveError::Timeout(message)),
            Err(e) => Err(MoveError::NotLeader(None)).inspect_err(|_| {
                tracing::debug!(target: "kalamdb_raft", group = %g.id, leader, error = %e, "transfer request not delivered");
            }),
        }
    }

    /// On the leader: pause writes, let the successor catch up, and have it elect itself.
    pub(super) async fn hand_over(&self, g: &Group, target: NodeId) -> std::result::Result<NodeId, MoveError> {
        let Some(t) = &self.transport else {
            return Err(MoveError::Refused("a single node has no one to hand leadership to".into()));
        };
        // Another handover of this group (the balancer's, say) finishes first; then this one
        // re-checks who leads (the caller asks the new leader if it moved).
        let Ok(_one_at_a_time) =
            tokio::time::timeout(Duration::from_millis(TRANSFER_TIMEOUT_MS), g.moving.lock()).await
        else {
            return Err(MoveError::Refused(format!("group {} is already being handed over", g.id)));
        };
        let p = progress(g);
        if p.leader != Some(self.node_id) {
            return Err(MoveError::NotLeader(p.leader));
        }
        if !p.voters.contains(&target) || target == self.node_id {
            return Err(MoveError::Refused(format!("node {target} is not another voter of group {}", g.id)));
        }
        let started = Instant::now();
        let deadline = started + Duration::from_millis(TRANSFER_TIMEOUT_MS);
        let _paused = HandoverGuard::new(g, !self.is_draining());
        // A leader refuses to vote for anyone within its lease of becoming leader: a group
        // elected a moment ago (by the balancer, say) waits out the rest of it.
        let elected_at = *g.elected_at.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = elected_at {
            let settled = at + self.leader_lease + Duration::from_millis(LEASE_MARGIN_MS);
            if settled > Instant::now() {
                tokio::time::sleep_until(settled).await;
            }
        }
        let mut asked = 0u32;
        loop {
            // Every entry this leader appended is applied (its clients have their answers)
            // and the successor holds all of them, so it can win and nothing is in doubt.
            let p = progress(g);
            if p.leader != Some(self.node_id) {
                let leader = self.wait_new_leader(g, deadline).await;
                let elapsed_ms = started.elapsed().as_millis() as u64;
                return match leader {
                    Some(l) if l != self.node_id => {
                        tracing::info!(target: "kalamdb_raft", group = %g.id, leader = l, target, elapsed_ms, "leadership handed over");
                        metrics::counter!("kalamdb_leader_transfers_total", "outcome" => "done").increment(1);
                        Ok(l)
                    }
                    _ => {
                        metrics::counter!("kalamdb_leader_transfers_total", "outcome" => "timeout").increment(1);
                        Err(MoveError::Timeout(format!(
                            "group {}: node {} gave up leadership but no successor took over within {elapsed_ms} ms",
                            g.id, self.node_id
                        )))
                    }
                };
            }
            if Instant::now() >= deadline {
                metrics::counter!("kalamdb_leader_transfers_total", "outcome" => "timeout").increment(1);
                return Err(MoveError::Timeout(format!(
                    "group {}: node {target} did not take over within {TRANSFER_TIMEOUT_MS} ms (matched {} of {}); node {} keeps leading",
                    g.id,
                    p.matched.get(&target).copied().unwrap_or(0),
                    p.last,
                    self.node_id
                )));
            }
            let caught_up =
                !g.gate.busy() && p.applied >= p.last && p.matched.get(&target).is_some_and(|m| *m >= p.last);
            if !caught_up {
                tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
                continue;
            }
            if asked > 0 {
                // The first election was not enough (more than three voters, whose leases
                // the heartbeats keep alive): stop them so the other followers vote too.
                g.raft.runtime_config().heartbeat(false);
            }
            asked += 1;
            match t
                .leadership(target, g.id, LeadershipRequest::ElectNow, Duration::from_millis(PEER_REQUEST_TIMEOUT_MS))
                .await
            {
                Ok(LeadershipResponse::Ok { .. }) => {}
                Ok(LeadershipResponse::Err(e)) => {
                    let why = match e {
                        RemoteError::NotLeader { .. } => "it cannot stand".to_owned(),
                        RemoteError::Failed { message, .. } => message,
                    };
                    metrics::counter!("kalamdb_leader_transfers_total", "outcome" => "refused").increment(1);
                    return Err(MoveError::Refused(format!("group {}: node {target} refused: {why}", g.id)));
                }
                Err(e) => {
                    metrics::counter!("kalamdb_leader_transfers_total", "outcome" => "unreachable").increment(1);
                    return Err(MoveError::Refused(format!("group {}: node {target} is unreachable: {e}", g.id)));
                }
            }
            let mut metrics = g.raft.metrics();
            let _ = tokio::time::timeout(
                Duration::from_millis(ELECT_RETRY_MS),
                metrics.wait_for(|m| m.current_leader != Some(self.node_id)),
            )
            .await;
        }
    }

    /// After this node gave up a group: the leader it learns of, waiting until `deadline`.
    async fn wait_new_leader(&self, g: &Group, deadline: Instant) -> Option<NodeId> {
        let mut metrics = g.raft.metrics();
        let seen = tokio::time::timeout_at(
            deadline.max(Instant::now() + Duration::from_millis(PEER_REQUEST_TIMEOUT_MS)),
            metrics.wait_for(|m| m.current_leader.is_some_and(|l| l != self.node_id)),
        )
        .await;
        match seen {
            Ok(Ok(m)) => m.current_leader,
            _ => self.leader_of(g),
        }
    }

    /// On the successor: start an election now, if this node may lead.
    pub(super) async fn elect_now(&self, g: &Group) -> LeadershipResponse {
        if self.is_draining() {
            return LeadershipResponse::Err(RemoteError::Failed {
                code: "CLUSTER_OPERATION_REFUSED".into(),
                message: format!("node {} is shutting down", self.node_id),
            });
        }
        if !progress(g).voters.contains(&self.node_id) {
            return LeadershipResponse::Err(RemoteError::Failed {
                code: "CLUSTER_OPERATION_REFUSED".into(),
                message: format!("node {} is not a voter of group {}", self.node_id, g.id),
            });
        }
        match g.raft.trigger().elect().await {
            Ok(()) => LeadershipResponse::Ok { leader: None },
            Err(e) => {
                LeadershipResponse::Err(RemoteError::Failed { code: "UNAVAILABLE".into(), message: e.to_string() })
            }
        }
    }

    /// The voter of `g` that should take over from this node: caught up, connected, not this
    /// node, leading the fewest groups; `None` when there is none.
    pub fn successor(&self, group: GroupId) -> Option<NodeId> {
        let g = self.groups.get(&group)?;
        let p = progress(g);
        let counts = self.leader_counts();
        p.voters
            .iter()
            .copied()
            .filter(|n| *n != self.node_id)
            .filter(|n| self.transport.as_ref().is_some_and(|t| t.is_connected(*n)))
            .filter(|n| p.matched.get(n).is_some_and(|m| m + BALANCE_LAG_ENTRIES_MAX >= p.last))
            .min_by_key(|n| (counts.get(n).copied().unwrap_or(0), std::cmp::Reverse(p.matched[n]), *n))
    }

    /// Hand every group this node leads to a successor. Returns the groups moved and the
    /// errors of those that could not be.
    pub async fn step_down(&self) -> (Vec<(GroupId, NodeId)>, Vec<String>) {
        let mut moved = Vec::new();
        let mut failed = Vec::new();
        for id in self.layout.all() {
            if !self.leads(id) {
                continue;
            }
            let Some(target) = self.successor(id) else {
                failed.push(format!("group {id}: no caught-up voter to hand it to"));
                continue;
            };
            match self.transfer_leader(id, target).await {
                Ok(l) => moved.push((id, l)),
                Err(e) => failed.push(e.to_string()),
            }
        }
        (moved, failed)
    }

    /// A graceful shutdown's first step: stop standing for elections, and hand every group
    /// this node leads to another voter, so no group waits for an election timeout.
    pub async fn drain(&self) {
        if !self.is_cluster() {
            return;
        }
        self.draining.store(true, Ordering::SeqCst);
        for g in self.groups.values() {
            g.raft.runtime_config().elect(false);
        }
        let started = Instant::now();
        let (moved, failed) =
            match tokio::time::timeout(Duration::from_millis(DRAIN_TIMEOUT_MS), self.step_down()).await {
                Ok(r) => r,
                Err(_) => (Vec::new(), vec![format!("handing over took longer than {DRAIN_TIMEOUT_MS} ms")]),
            };
        tracing::info!(target: "kalamdb_raft", moved = moved.len(), ?failed, elapsed_ms = started.elapsed().as_millis() as u64, "leaderships handed over before shutdown");
    }

    /// How many groups each node leads, in this node's view.
    pub fn leader_counts(&self) -> BTreeMap<NodeId, usize> {
        let mut counts = BTreeMap::new();
        for g in self.groups.values() {
            if let Some(l) = self.leader_of(g) {
                *counts.entry(l).or_insert(0) += 1;
            }
        }
        counts
    }
}

/// The door between a group's proposals and openraft. A handover closes it and then waits
/// until no proposal is past it, so no entry is appended behind the successor's back.
#[derive(Debug, Default)]
pub struct WriteGate {
    closed: AtomicBool,
    passing: std::sync::atomic::AtomicUsize,
}

/// A proposal on its way into openraft; leaving drops it.
pub struct GatePass(Arc<WriteGate>);

impl Drop for GatePass {
    fn drop(&mut self) {
        self.0.passing.fetch_sub(1, Ordering::SeqCst);
    }
}

impl WriteGate {
    /// Enter before `client_write`; `None` while a handover holds the door. Counting first
    /// and checking second (both SeqCst) means a handover that closed the door either is
    /// seen here or sees this proposal in `busy`.
    pub fn enter(self: &Arc<Self>) -> Option<GatePass> {
        self.passing.fetch_add(1, Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            self.passing.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(GatePass(self.clone()))
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn set_closed(&self, closed: bool) {
        self.closed.store(closed, Ordering::SeqCst);
    }

    /// Some proposal is between the door and openraft's answer.
    fn busy(&self) -> bool {
        self.passing.load(Ordering::SeqCst) > 0
    }
}
