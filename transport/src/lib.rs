//! Node-to-node transport: QUIC (quinn) carrying rkyv frames, peer authentication, the
//! openraft network traits, and the forward/read-index/status requests the node uses. The
//! only crate that knows the wire layout. A single-node layout uses [`NoPeers`].

pub mod auth;
pub mod error;
pub mod frame;
pub mod network;
pub mod quic;
pub mod tls;
pub mod wire;

pub use error::Error;
pub use network::GroupNetwork;
pub use quic::{Handler, PeerStats, Transport, TransportConfig};

use kalamdb_log::types::{NodeAddr, NodeId, TypeConfig};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};

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
        RPCError::Unreachable(Unreachable::new(&Error::UnknownNode(self.target)))
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
