//! Node-to-node transport: the openraft network traits. A node without peers (the
//! single-node layout) uses [`NoPeers`], which reports every peer unreachable; QUIC
//! transport for multi-node clusters lives here too once the cluster exists.

use kalamdb_log::types::{NodeAddr, NodeId, TypeConfig};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("node {0} is not a member this transport can reach")]
    NoRoute(NodeId),
}

/// The network of a node that is the only member of every group. openraft never needs to
/// reach a peer in that layout; if it tries (a misconfigured membership), it learns the
/// peer is unreachable and keeps running.
#[derive(Debug, Clone, Default)]
pub struct NoPeers;

#[derive(Debug)]
pub struct NoPeerClient {
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeerClient;

    async fn new_client(&mut self, target: NodeId, _node: &NodeAddr) -> NoPeerClient {
        NoPeerClient { target }
    }
}

impl NoPeerClient {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, NodeAddr, E> {
        RPCError::Unreachable(Unreachable::new(&Error::NoRoute(self.target)))
    }
}

impl RaftNetwork<TypeConfig> for NoPeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId, InstallSnapshotError>>>
    {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}
