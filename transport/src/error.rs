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
