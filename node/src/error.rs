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
    /// Missing, malformed, wrong or expired credentials (HTTP 401 with `code`).
    #[error("{message}")]
    Unauthorized { code: &'static str, message: String },
    /// Too many failed logins for a user or a client address (HTTP 429).
    #[error("too many failed logins; try again in {retry_after_secs} s")]
    TooManyAttempts { retry_after_secs: u64 },
    /// Too much work of this kind in progress (password checks): HTTP 503 with Retry-After.
    #[error("{0}")]
    Busy(String),
    /// The cluster could not answer in time (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
    /// A backup could not be written, or a backup to restore is missing, damaged or foreign.
    #[error("backup: {0}")]
    Backup(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
