//! Membership changes at runtime: adding a node to every group (a learner until it holds the
//! log, then a voter), removing one, and the joining node's own side (`cluster.join`).
//!
//! Every change is openraft's joint-consensus `change_membership`, made by the group's leader,
//! one group at a time; a node that is asked and does not lead the group names the leader it
//! knows, and the asker tries there. Membership lives in each group's log and state machine,
//! so it survives restarts; the static member list only forms a new cluster.

use super::leadership::MoveError;
use super::*;
use kalamdb_transport::wire::{MembershipRequest, MembershipResponse};
use openraft::ChangeMembers;
use std::collections::BTreeSet;

/// How long one group may take to bring a new learner up to date (log or snapshot) before
/// the addition is abandoned; the learner then stays a learner.
pub const CATCH_UP_TIMEOUT_MS: u64 = 600_000;
/// How long a membership change of all groups may spend finding each group's leader.
pub const ROUTE_TIMEOUT_MS: u64 = 30_000;
/// How long a peer has to answer the liveness check before a removal.
const PING_TIMEOUT_MS: u64 = 500;
/// How long one group's configuration change may take to commit (both steps of the joint
/// change); past it the outcome is unknown: openraft finishes it once a quorum answers.
pub const CHANGE_TIMEOUT_MS: u64 = 30_000;
/// Pause between rounds of a joining node asking to be added.
const JOIN_RETRY_MS: u64 = 1_000;

/// One group's outcome of a cluster-wide membership change.
#[derive(Debug)]
pub struct GroupChange {
    pub group: GroupId,
    /// The group's voters afterwards, or why it did not change.
    pub outcome: std::result::Result<Vec<NodeId>, GroupError>,
}

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>) -> MoveError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => MoveError::NotLeader(f.leader_id),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => MoveError::Refused(c.to_string()),
        other => MoveError::Timeout(other.to_string()),
    }
}

/// One joint-consensus configuration change of `g`, bounded by [`CHANGE_TIMEOUT_MS`]; the
/// voters of the configuration it committed.
async fn change(g: &Group, members: ChangeMembers<NodeId, NodeAddr>) -> std::result::Result<Vec<NodeId>, MoveError> {
    match tokio::time::timeout(Duration::from_millis(CHANGE_TIMEOUT_MS), g.raft.change_membership(members, false)).await
    {
        Ok(Ok(resp)) => Ok(match resp.membership {
            Some(m) => m.voter_ids().collect(),
            None => g.raft.metrics().borrow().membership_config.membership().voter_ids().collect(),
        }),
        Ok(Err(e)) => Err(write_error(e)),
        Err(_) => Err(MoveError::Timeout(format!(
            "group {}: the configuration change did not commit within {CHANGE_TIMEOUT_MS} ms; its outcome is unknown (it completes once a quorum answers)",
            g.id
        ))),
    }
}

impl Groups {
    /// On the leader of `g`: add `node` as a learner, wait until it holds the log, then make
    /// it a voter. Already a voter: nothing to do.
    pub(super) async fn add_voter_local(
        &self,
        g: &Group,
        node: NodeId,
        addr: NodeAddr,
    ) -> std::result::Result<Vec<NodeId>, MoveError> {
        let (leader, voters) = {
            let m = g.raft.metrics().borrow().clone();
            (m.current_leader, m.membership_config.membership().voter_ids().collect::<Vec<_>>())
        };
        if leader != Some(self.node_id) {
            return Err(MoveError::NotLeader(leader));
        }
        if voters.contains(&node) {
            return Ok(voters);
        }
        if let Some(t) = &self.transport {
            t.learn_member(node, &addr.raft_addr);
        }
        // Until the node is in the membership, the group's format must not move past it.
        let _format_held = self.format_change.lock().await;
        let format = self.apply_format(g.id).map_err(MoveError::Refused)?;
        if format > kalamdb_projections::format::FORMAT_FIRST {
            let allowed = self.apply_format_max_of(node).await.map_err(|e| {
                MoveError::Timeout(format!("group {}: cannot ask node {node} which apply formats it allows: {e}", g.id))
            })?;
            if allowed < format {
                return Err(MoveError::Refused(format!(
                    "group {} applies format {format}, and node {node} allows formats up to {allowed}: run a build \
                     there that applies format {format}, with storage.apply_format_max at least {format}",
                    g.id
                )));
            }
        }
        let started = Instant::now();
        match tokio::time::timeout(Duration::from_millis(CATCH_UP_TIMEOUT_MS), g.raft.add_learner(node, addr, true))
            .await
        {
            Err(_) => {
                return Err(MoveError::Timeout(format!(
                    "group {}: node {node} did not catch up within {CATCH_UP_TIMEOUT_MS} ms; it stays a learner",
                    g.id
                )));
            }
            Ok(Err(e)) => return Err(write_error(e)),
            Ok(Ok(_)) => {}
        }
        let caught_up_ms = started.elapsed().as_millis() as u64;
        let voters = change(g, ChangeMembers::AddVoterIds(BTreeSet::from([node]))).await?;
        tracing::info!(target: "kalamdb_raft", group = %g.id, node, caught_up_ms, ?voters, "node added as a voter");
        Ok(voters)
    }

    /// On the leader of `g`: take `node` out of the group. The leader never removes itself
    /// (its leadership is handed over first, by [`Groups::remove_node`]).
    pub(super) async fn remove_local(&self, g: &Group, node: NodeId) -> std::result::Result<Vec<NodeId>, MoveError> {
        let (leader, voters, nodes) = {
            let m = g.raft.metrics().borrow().clone();
            let c = m.membership_config.membership();
            (m.current_leader, c.voter_ids().collect::<Vec<_>>(), c.nodes().map(|(id, _)| *id).collect::<Vec<_>>())
        };
        if leader != Some(self.node_id) {
            return Err(MoveError::NotLeader(leader));
        }
        if node == self.node_id {
            return Err(MoveError::Refused(format!(
                "group {}: node {node} leads it; hand leadership over first",
                g.id
            )));
        }
        let voters = if voters.contains(&node) {
            if voters.len() == 1 {
                return Err(MoveError::Refused(format!("group {}: node {node} is its last voter", g.id)));
            }
            change(g, ChangeMembers::RemoveVoters(BTreeSet::from([node]))).await?
        } else if nodes.contains(&node) {
            change(g, ChangeMembers::RemoveNodes(BTreeSet::from([node]))).await?
        } else {
            voters
        };
        tracing::info!(target: "kalamdb_raft", group = %g.id, node, ?voters, "node removed");
        Ok(voters)
    }

    /// A node told it was removed from `g`: it stops standing for elections there (it never
    /// learns the final configuration, so it would otherwise keep trying).
    pub(super) fn retire(&self, g: &Group) {
        g.raft.runtime_config().elect(false);
        tracing::warn!(target: "kalamdb_raft", group = %g.id, "this node was removed from the group; it may be stopped");
    }

    /// Ask `group`'s leader, wherever it is, to make `request`, until `deadline`.
    async fn route_membership(
        &self,
        group: GroupId,
        request: &MembershipRequest,
        deadline: Instant,
    ) -> std::result::Result<Vec<NodeId>, GroupError> {
        let g = self.group(group)?;
        let timeout = Duration::from_millis(CATCH_UP_TIMEOUT_MS + PEER_REQUEST_TIMEOUT_MS);
        let mut hint: Option<NodeId> = None;
        loop {
            // The leader this node or the last answer named first, then every known member.
            let mut candidates: Vec<NodeId> = hint.or_else(|| self.leader_of(g)).into_iter().collect();
            let first = candidates.first().copied();
            candidates.extend(self.members().keys().copied().filter(|n| Some(*n) != first));
            hint = None;
            let mut last_error = String::from("no member answered");
            for c in candidates {
                let outcome = if c == self.node_id {
                    let local = match request.clone() {
                        MembershipRequest::AddVoter { node, raft_addr, http_addr } => {
                            self.add_voter_local(g, node, NodeAddr { raft_addr, http_addr }).await
                        }
                        MembershipRequest::Remove { node } => self.remove_local(g, node).await,
                        MembershipRequest::Retired => Err(MoveError::Refused("not a routed request".into())),
                    };
                    match local {
                        Ok(v) => MembershipResponse::Ok { voters: v },
                        Err(MoveError::NotLeader(l)) => MembershipResponse::Err(RemoteError::NotLeader { leader: l }),
                        Err(e) => MembershipResponse::Err(super::peers::remote_failure(&e.into())),
                    }
                } else {
                    let Some(t) = &self.transport else { break };
                    match t.membership(c, group, request, timeout).await {
                        Ok(r) => r,
                        Err(e) => {
                            last_error = format!("node {c}: {e}");
                            continue;
                        }
                    }
                };
                match outcome {
                    MembershipResponse::Ok { voters } => return Ok(voters),
                    MembershipResponse::Err(RemoteError::NotLeader { leader }) => {
                        if leader.is_some() && leader != Some(c) {
                            hint = leader;
                            break;
                        }
                        last_error = format!("node {c} does not lead group {group}");
                    }
                    MembershipResponse::Err(RemoteError::Failed { code, message }) => {
                        return Err(GroupError::from_remote(&code, message));
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(GroupError::Unavailable(format!(
                    "group {group}: no leader took the membership change within {ROUTE_TIMEOUT_MS} ms ({last_error})"
                )));
            }
            if hint.is_none() {
                tokio::time::sleep(Duration::from_millis(LEADER_RETRY_MS * 10)).await;
            }
        }
    }

    /// Add `node` to every group, one group at a time: a learner until it holds the log, then
    /// a voter.
    pub async fn add_node(&self, node: NodeId, addr: NodeAddr) -> Vec<GroupChange> {
        let request = MembershipRequest::AddVoter { node, raft_addr: addr.raft_addr, http_addr: addr.http_addr };
        let mut out = Vec::new();
        for group in self.layout.all() {
            let deadline = Instant::now() + Duration::from_millis(ROUTE_TIMEOUT_MS);
            let outcome = self.route_membership(group, &request, deadline).await;
            out.push(GroupChange { group, outcome });
        }
        out
    }

    /// The peers among `nodes` that answer a status request now (this node counts too). A
    /// connection that looks open proves nothing: a peer killed a moment ago keeps one until
    /// the idle timeout.
    async fn answering(&self, nodes: &BTreeSet<NodeId>) -> BTreeSet<NodeId> {
        let Some(t) = &self.transport else { return BTreeSet::from([self.node_id]) };
        let peers: Vec<NodeId> = nodes.iter().copied().filter(|n| *n != self.node_id).collect();
        let calls = peers.iter().map(|p| t.status(*p, Duration::from_millis(PING_TIMEOUT_MS)));
        let answers = futures::future::join_all(calls).await;
        let mut up: BTreeSet<NodeId> =
            peers.into_iter().zip(answers).filter(|(_, r)| r.is_ok()).map(|(p, _)| p).collect();
        if nodes.contains(&self.node_id) {
            up.insert(self.node_id);
        }
        up
    }

    /// Whether removing `node` leaves every group it votes in with a majority of the remaining
    /// voters that answers right now: a joint configuration needs both majorities, so a
    /// removal that cannot commit would leave the group stuck.
    pub async fn check_removal(&self, node: NodeId) -> std::result::Result<(), GroupError> {
        let everyone: BTreeSet<NodeId> = self.layout.all().into_iter().flat_map(|g| self.voters_of(g)).collect();
        let up = self.answering(&everyone).await;
        let mut member_somewhere = false;
        for group in self.layout.all() {
            let voters = self.voters_of(group);
            let nodes = self.members_of(group);
            if !nodes.contains(&node) {
                continue;
            }
            member_somewhere = true;
            if !voters.contains(&node) {
                continue;
            }
            let rest: Vec<NodeId> = voters.iter().copied().filter(|v| *v != node).collect();
            if rest.is_empty() {
                return Err(GroupError::Refused(format!("node {node} is the last voter of group {group}")));
            }
            let answering = rest.iter().filter(|v| up.contains(v)).count();
            if answering * 2 <= rest.len() {
                return Err(GroupError::Refused(format!(
                    "removing node {node} would leave group {group} without a majority that answers: {answering} of the remaining voters {rest:?} answered node {}",
                    self.node_id
                )));
            }
        }
        if !member_somewhere {
            return Err(GroupError::Refused(format!("node {node} is not a member of any group")));
        }
        Ok(())
    }

    /// Remove `node` from every group: its leaderships are handed over first, then each
    /// group's leader removes it; finally the node is told, so it stops standing for
    /// elections. Refused up front if a group would be left without a reachable majority.
    pub async fn remove_node(&self, node: NodeId) -> std::result::Result<Vec<GroupChange>, GroupError> {
        self.check_removal(node).await?;
        let mut out = Vec::new();
        for group in self.layout.all() {
            if !self.members_of(group).contains(&node) {
                continue;
            }
            if self.leader(group) == Some(node) {
                let others: Vec<NodeId> = self.voters_of(group).into_iter().filter(|v| *v != node).collect();
                let target = others
                    .iter()
                    .copied()
                    .find(|v| *v == self.node_id || self.transport.as_ref().is_some_and(|t| t.is_connected(*v)));
                if let Some(t) = target
                    && let Err(e) = self.transfer_leader(group, t).await
                {
                    out.push(GroupChange { group, outcome: Err(e) });
                    continue;
                }
            }
            let deadline = Instant::now() + Duration::from_millis(ROUTE_TIMEOUT_MS);
            let outcome = self.route_membership(group, &MembershipRequest::Remove { node }, deadline).await;
            if outcome.is_ok()
                && let Some(t) = &self.transport
                && node != self.node_id
            {
                // Best effort: a node that is down learns nothing, and stays out anyway.
                let notice = MembershipRequest::Retired;
                let _ = t.membership(node, group, &notice, Duration::from_millis(PEER_REQUEST_TIMEOUT_MS)).await;
            }
            out.push(GroupChange { group, outcome });
        }
        Ok(out)
    }

    /// This node is a voter of every group.
    pub fn is_voter_everywhere(&self) -> bool {
        self.layout.all().into_iter().all(|g| self.voters_of(g).contains(&self.node_id))
    }
}

/// The joining node's side (`cluster.join = true`): until it is a voter of every group, ask
/// the groups' leaders (through the configured members) to add it. Each group's leader
/// replicates the log (or a snapshot) to it as a learner and promotes it once it is caught up.
pub async fn run_join(groups: std::sync::Weak<Groups>) {
    let started = Instant::now();
    loop {
        let Some(g) = groups.upgrade() else { return };
        if g.is_draining() {
            return;
        }
        if g.is_voter_everywhere() {
            tracing::info!(target: "kalamdb_raft", node = g.node_id, elapsed_ms = started.elapsed().as_millis() as u64, "joined the cluster: a voter of every group");
            return;
        }
        let me = g.configured_members.get(&g.node_id).cloned().unwrap_or_default();
        for change in g.add_node(g.node_id, me).await {
            if let Err(e) = change.outcome {
                tracing::warn!(target: "kalamdb_raft", group = %change.group, error = %e, "not added yet; will ask again");
            }
        }
        drop(g);
        tokio::time::sleep(Duration::from_millis(JOIN_RETRY_MS)).await;
    }
}
