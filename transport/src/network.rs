//! openraft's network traits over the QUIC transport: one client per (group, peer), all
//! sharing the node's endpoint and per-peer connection.

use std::sync::Arc;

use bytes::Bytes;

use kalamdb_log::GroupId;
use kalamdb_log::types::{NodeAddr, NodeId, TypeConfig, Vote};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};

use crate::error::Error;
use crate::frame::FrameKind;
use crate::quic::Transport;
use crate::wire::{self, WLogId, WVote};

/// Bytes of entries one AppendEntries frame carries at most; the rest go in the next round
/// (the follower reports the prefix it got as a partial success). openraft gives each
/// AppendEntries about one heartbeat interval, so a frame must cross the network in that time.
pub const APPEND_BYTES_MAX: usize = 4 << 20;

/// The network of one group: a factory of per-peer clients.
#[derive(Clone, Debug)]
pub struct GroupNetwork {
    pub transport: Arc<Transport>,
    pub group: GroupId,
}

#[derive(Debug)]
pub struct PeerClient {
    transport: Arc<Transport>,
    group: GroupId,
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerClient {
        // Membership carries every node's address: how a node added at runtime becomes
        // reachable without any config change on the others.
        self.transport.learn_member(target, &node.raft_addr);
        PeerClient { transport: self.transport.clone(), group: self.group, target }
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, NodeAddr, RaftError<NodeId, E>>;

fn rpc_err<E: std::error::Error>(e: Error) -> RpcErr<E> {
    match e {
        Error::Unreachable { .. } | Error::UnknownNode(_) | Error::Auth(_) => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        other => RPCError::Network(NetworkError::new(&other)),
    }
}

fn remote_err<E: std::error::Error>(message: String) -> RpcErr<E> {
    RPCError::Network(NetworkError::new(&Error::Stream { node: 0, reason: message }))
}

impl PeerClient {
    /// One request/response exchange with the target; the caller decodes the response body.
    async fn request(
        &self,
        kind: FrameKind,
        req: &impl wire::Encode,
        option: RPCOption,
    ) -> crate::error::Result<Bytes> {
        let body = wire::to_bytes(req)?;
        self.transport.call(self.target, kind, self.group.to_u32(), &body, option.hard_ttl()).await
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        // Split below the frame limit; always send at least one entry.
        let mut bytes = 0usize;
        let mut take = 0usize;
        for e in &rpc.entries {
            let n = wire::entry_wire_bytes(e);
            if take > 0 && bytes + n > APPEND_BYTES_MAX {
                break;
            }
            bytes += n;
            take += 1;
        }
        let truncated = take < rpc.entries.len();
        let last_sent = if truncated { rpc.entries.get(take - 1).map(|e| e.log_id) } else { None };
        let mut entries = Vec::with_capacity(take);
        for e in &rpc.entries[..take] {
            entries.push(wire::wire_entry(e).map_err(rpc_err)?);
        }
        // A follower given a prefix must not learn a commit index beyond it.
        let commit = match (truncated, rpc.leader_commit, last_sent) {
            (true, Some(c), Some(l)) => Some(std::cmp::min(c, l)),
            (_, c, _) => c,
        };
        let req = wire::AppendRequest {
            vote: WVote::from(&rpc.vote),
            prev: rpc.prev_log_id.map(WLogId::from),
            commit: commit.map(WLogId::from),
            entries,
        };
        let resp = self.request(FrameKind::AppendRequest, &req, option).await.map_err(rpc_err)?;
        let resp: wire::AppendResponse = wire::from_bytes(&resp).map_err(rpc_err)?;
        match resp {
            wire::AppendResponse::Success if truncated => Ok(AppendEntriesResponse::PartialSuccess(last_sent)),
            wire::AppendResponse::Success => Ok(AppendEntriesResponse::Success),
            wire::AppendResponse::PartialSuccess(l) => Ok(AppendEntriesResponse::PartialSuccess(l.map(Into::into))),
            wire::AppendResponse::Conflict => Ok(AppendEntriesResponse::Conflict),
            wire::AppendResponse::HigherVote(v) => Ok(AppendEntriesResponse::HigherVote(v.into())),
            wire::AppendResponse::Error(m) => Err(remote_err(m)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        let meta_json = serde_json::to_vec(&rpc.meta).map_err(|e| rpc_err(Error::Frame(e.to_string())))?;
        let req = wire::SnapshotRequest {
            vote: WVote::from(&rpc.vote),
            meta_json,
            offset: rpc.offset,
            data: rpc.data,
            done: rpc.done,
        };
        let resp = self.request(FrameKind::SnapshotRequest, &req, option).await.map_err(rpc_err)?;
        let resp: wire::SnapshotResponse = wire::from_bytes(&resp).map_err(rpc_err)?;
        match resp {
            wire::SnapshotResponse::Ok { vote } => Ok(InstallSnapshotResponse { vote: vote.into() }),
            wire::SnapshotResponse::Error(m) => Err(remote_err(m)),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcErr> {
        let req = wire::VoteRequest { vote: WVote::from(&rpc.vote), last: rpc.last_log_id.map(WLogId::from) };
        let resp = self.request(FrameKind::VoteRequest, &req, option).await.map_err(rpc_err)?;
        let resp: wire::VoteResponse = wire::from_bytes(&resp).map_err(rpc_err)?;
        match resp {
            wire::VoteResponse::Ok { vote, granted, last } => {
                Ok(VoteResponse { vote: vote.into(), vote_granted: granted, last_log_id: last.map(Into::into) })
            }
            wire::VoteResponse::Error(m) => Err(remote_err(m)),
        }
    }
}

// Receiving side: openraft's answers as wire bodies.

pub(crate) fn append_response(r: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>) -> wire::AppendResponse {
    match r {
        Ok(AppendEntriesResponse::Success) => wire::AppendResponse::Success,
        Ok(AppendEntriesResponse::PartialSuccess(l)) => wire::AppendResponse::PartialSuccess(l.map(Into::into)),
        Ok(AppendEntriesResponse::Conflict) => wire::AppendResponse::Conflict,
        Ok(AppendEntriesResponse::HigherVote(v)) => wire::AppendResponse::HigherVote(WVote::from(&v)),
        Err(e) => wire::AppendResponse::Error(e.to_string()),
    }
}

pub(crate) fn vote_request(req: &wire::VoteRequest) -> VoteRequest<NodeId> {
    VoteRequest { vote: Vote::from(req.vote), last_log_id: req.last.map(Into::into) }
}

pub(crate) fn vote_response(r: Result<VoteResponse<NodeId>, RaftError<NodeId>>) -> wire::VoteResponse {
    match r {
        Ok(v) => wire::VoteResponse::Ok {
            vote: WVote::from(&v.vote),
            granted: v.vote_granted,
            last: v.last_log_id.map(Into::into),
        },
        Err(e) => wire::VoteResponse::Error(e.to_string()),
    }
}

pub(crate) fn snapshot_request(req: wire::SnapshotRequest) -> crate::error::Result<InstallSnapshotRequest<TypeConfig>> {
    let meta = serde_json::from_slice(&req.meta_json).map_err(|e| Error::Frame(format!("snapshot meta: {e}")))?;
    Ok(InstallSnapshotRequest { vote: req.vote.into(), meta, offset: req.offset, data: req.data, done: req.done })
}

pub(crate) fn snapshot_response(
    r: Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
) -> wire::SnapshotResponse {
    match r {
        Ok(v) => wire::SnapshotResponse::Ok { vote: WVote::from(&v.vote) },
        Err(e) => wire::SnapshotResponse::Error(e.to_string()),
    }
}
