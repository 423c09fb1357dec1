//! The one error type of the node crate, and its mapping to HTTP statuses.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config: {0}")]
    Config(String),
    #[error("log: {0}")]
    Log(#[from] kalamdb_log::Error),
    #[error("projections: {0}")]
    Projections(#[from] kalamdb_projections::Error),
    #[error("transport: {0}")]
    Transport(#[from] kalamdb_transport::Error),
    #[error("raft: {0}")]
    Raft(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
