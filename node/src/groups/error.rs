//! Why a proposal or a read barrier did not go through: the groups' own error, which crosses
//! to the query layer at one boundary (`From<GroupError> for kalamdb_query::Error`) and to
//! peers as a code (`code` / `from_remote`).

/// A failed proposal or read barrier.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GroupError {
    /// No leader, no quorum, a full queue, a timeout: try again later (the outcome of a write
    /// that timed out is unknown).
    #[error("{0}")]
    Unavailable(String),
    /// This node's view of the leader was stale or the leader moved mid-write.
    #[error("{0}")]
    NotLeader(String),
    /// The write is larger than one log entry may be.
    #[error("{0}")]
    TooLarge(String),
    /// A remote leader reported a write conflict.
    #[error("{0}")]
    Conflict(String),
    /// The object store behind cold files failed its check before a flush or compaction.
    #[error("{0}")]
    StorageUnavailable(String),
    /// A leadership or membership change that cannot be made as asked.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Internal(String),
}

impl GroupError {
    /// The code peers send for this error (the HTTP API's codes, so a forwarded write fails
    /// as a local one would).
    pub fn code(&self) -> &'static str {
        match self {
            GroupError::Unavailable(_) => "CLUSTER_UNAVAILABLE",
            GroupError::NotLeader(_) => "NOT_LEADER",
            GroupError::TooLarge(_) => "INVALID_SQL",
            GroupError::Conflict(_) => "WRITE_CONFLICT",
            GroupError::StorageUnavailable(_) => "STORAGE_UNAVAILABLE",
            GroupError::Refused(_) => "CLUSTER_OPERATION_REFUSED",
            GroupError::Internal(_) => "INTERNAL_ERROR",
        }
    }

    /// The error a peer reported by code.
    pub fn from_remote(code: &str, message: String) -> GroupError {
        match code {
            "INVALID_SQL" => GroupError::TooLarge(message),
            "WRITE_CONFLICT" => GroupError::Conflict(message),
            "INTERNAL_ERROR" => GroupError::Internal(message),
            "NOT_LEADER" => GroupError::NotLeader(message),
            "STORAGE_UNAVAILABLE" => GroupError::StorageUnavailable(message),
            "CLUSTER_OPERATION_REFUSED" => GroupError::Refused(message),
            _ => GroupError::Unavailable(message),
        }
    }
}

impl From<GroupError> for kalamdb_query::Error {
    fn from(e: GroupError) -> Self {
        use kalamdb_query::Error as Q;
        match e {
            GroupError::Unavailable(m) => Q::Unavailable(m),
            GroupError::NotLeader(m) => Q::NotLeader(m),
            GroupError::TooLarge(m) => Q::InvalidSql(m),
            GroupError::Conflict(m) => Q::Conflict(m),
            GroupError::StorageUnavailable(m) => Q::StorageUnavailable(m),
            GroupError::Refused(m) => Q::ClusterRefused(m),
            GroupError::Internal(m) => Q::Internal(m),
        }
    }
}
