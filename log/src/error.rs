//! The one error type of the log crate.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("log record is corrupt: {0}")]
    Corrupt(String),
    #[error("log codec: {0}")]
    Codec(String),
    #[error("unknown raft group id {0}")]
    UnknownGroup(u32),
    #[error("group {0} already has a log: restore needs an empty node")]
    NotEmpty(String),
    #[error("log folder: {0}")]
    Io(#[from] std::io::Error),
    #[error("log writer has stopped")]
    WriterStopped,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
