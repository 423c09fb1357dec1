//! The one error type of the transport crate.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad frame: {0}")]
    Frame(String),
    /// Nothing was sent: the peer could not be reached (or this node is isolated by the
    /// test-only fault switch). Safe to retry anywhere.
    #[error("node {node} is unreachable: {reason}")]
    Unreachable { node: u64, reason: String },
    /// The request may have been delivered; its outcome is unknown.
    #[error("request to node {node} failed: {reason}")]
    Stream { node: u64, reason: String },
    /// The peer reset the request's stream as a bad frame: it could not read the request (a
    /// build older than its kind). Nothing was done.
    #[error("node {node} refused the request as a frame it cannot read")]
    Refused { node: u64 },
    /// The peer reset the stream with this code (within one call; callers see `Refused` or
    /// `Stream`).
    #[error("stream reset by the peer with code {0}")]
    Reset(u64),
    /// A request arrived before this node serves its peers.
    #[error("not serving peers yet")]
    NotServing,
    #[error("request to node {node} timed out")]
    Timeout { node: u64 },
    #[error("peer authentication failed: {0}")]
    Auth(String),
    #[error("node {0} is not a cluster member")]
    UnknownNode(u64),
    #[error("transport setup: {0}")]
    Setup(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
