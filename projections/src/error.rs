//! The one error type of the projections crate.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("log: {0}")]
    Log(#[from] kalamdb_log::Error),
    #[error("projection data is corrupt: {0}")]
    Corrupt(String),
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// A past position that the files and the retained log no longer cover.
    #[error("{0}")]
    History(String),
    #[error("cold storage: {0}")]
    Storage(String),
    /// The bucket behind the file cache could not be read (a passing fault, unlike `Storage`).
    #[error("cold storage unavailable: {0}")]
    StoreUnavailable(String),
    /// The log asks for an apply format this build does not apply (`format`).
    #[error("{0}")]
    Format(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
