//! What this node answers its peers over QUIC: Raft messages, writes forwarded to the groups it
//! leads, read-index requests and its status.

use super::*;

pub(super) fn remote_failure(e: &GroupError) -> RemoteError {
    RemoteError::Failed { code: e.code().to_string(), message: e.to_string() }
}

/// What peers may ask of this node. Holds a weak reference: the groups own the transport.
pub(super) struct PeerService(pub(super) std::sync::Weak<Groups>);
#[async_trait]
impl kalamdb_transport::Handler for PeerService {
    fn raft(&self, group: GroupId) -> Option<Raft> {
        self.0.upgrade()?.groups.get(&group).map(|g| g.raft.clone())
    }

    fn may_vote(&self, group: GroupId) -> std::result::Result<(), String> {
        match self.0.upgrade() {
            Some(groups) => groups.may_vote(group),
            None => Err("shutting down".into()),
        }
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
            Err(ProposeError::Failed(e)) => ForwardResponse::Err(remote_failure(&e)),
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

    async fn leadership(
        &self,
        group: GroupId,
        request: kalamdb_transport::wire::LeadershipRequest,
    ) -> kalamdb_transport::wire::LeadershipResponse {
        use kalamdb_transport::wire::{LeadershipRequest, LeadershipResponse};
        let Some(groups) = self.0.upgrade() else {
            return LeadershipResponse::Err(RemoteError::NotLeader { leader: None });
        };
        let Ok(g) = groups.group(group) else {
            return LeadershipResponse::Err(RemoteError::NotLeader { leader: None });
        };
        match request {
            LeadershipRequest::ElectNow => groups.elect_now(g).await,
            LeadershipRequest::TransferTo { target } => match groups.hand_over(g, target).await {
                Ok(leader) => LeadershipResponse::Ok { leader: Some(leader) },
                Err(leadership::MoveError::NotLeader(leader)) => {
                    LeadershipResponse::Err(RemoteError::NotLeader { leader })
                }
                Err(e) => LeadershipResponse::Err(remote_failure(&e.into())),
            },
        }
    }

    async fn membership(
        &self,
        group: GroupId,
        request: kalamdb_transport::wire::MembershipRequest,
    ) -> kalamdb_transport::wire::MembershipResponse {
        use kalamdb_transport::wire::{MembershipRequest, MembershipResponse};
        let Some(groups) = self.0.upgrade() else {
            return MembershipResponse::Err(RemoteError::NotLeader { leader: None });
        };
        let Ok(g) = groups.group(group) else {
            return MembershipResponse::Err(RemoteError::NotLeader { leader: None });
        };
        let outcome = match request {
            MembershipRequest::AddVoter { node, raft_addr, http_addr } => {
                groups.add_voter_local(g, node, NodeAddr { raft_addr, http_addr }).await
            }
            MembershipRequest::Remove { node } => groups.remove_local(g, node).await,
            MembershipRequest::Retired => {
                if groups.voters_of(group).contains(&groups.node_id) && groups.leads(group) {
                    return MembershipResponse::Err(remote_failure(&GroupError::Refused(
                        "this node leads the group; it was not removed".into(),
                    )));
                }
                groups.retire(g);
                Ok(groups.voters_of(group))
            }
        };
        match outcome {
            Ok(voters) => MembershipResponse::Ok { voters },
            Err(leadership::MoveError::NotLeader(leader)) => MembershipResponse::Err(RemoteError::NotLeader { leader }),
            Err(e) => MembershipResponse::Err(remote_failure(&e.into())),
        }
    }

    fn status(&self) -> StatusResponse {
        match self.0.upgrade() {
            Some(g) => g.local_status(),
            None => StatusResponse { node_id: 0, groups: Vec::new() },
        }
    }

    fn info(&self) -> kalamdb_transport::wire::NodeInfo {
        match self.0.upgrade() {
            Some(g) => g.node_info(),
            // Shutting down: it lets nothing move past the first format.
            None => kalamdb_transport::wire::NodeInfo {
                node_id: 0,
                apply_format_max: kalamdb_projections::format::FORMAT_FIRST,
            },
        }
    }
}
