//! The one error type of the query crate. Each variant has a stable API code.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidSql(String),
    #[error("{0}")]
    NamespaceNotFound(String),
    #[error("{0}")]
    TableNotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    ConstraintViolation(String),
    #[error("{0}")]
    NamespaceNotEmpty(String),
    #[error("{0}")]
    Execution(String),
    /// The statement kept conflicting with concurrent writers.
    #[error("{0}")]
    Conflict(String),
    /// A write kept meeting a schema change of its table (planned again each time).
    #[error("{0}")]
    SchemaChanged(String),
    /// No leader could take the write (election in progress, partition).
    #[error("{0}")]
    Unavailable(String),
    /// The group's leader could not be reached in time (leader change, partition).
    #[error("{0}")]
    NotLeader(String),
    /// A past position (AS OF, REBUILD) that files and the retained log no longer cover.
    #[error("{0}")]
    HistoryUnavailable(String),
    /// The caller's role does not allow the statement.
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    UserNotFound(String),
    /// The statement ran past `limits.query_timeout_ms` and was cancelled.
    #[error("{0}")]
    QueryTimeout(String),
    /// The query needed more memory (or spill space) than it may have.
    #[error("{0}")]
    ResourcesExhausted(String),
    /// The answer passed `limits.result_rows_max` or `limits.result_bytes_max`.
    #[error("{0}")]
    ResultTooLarge(String),
    /// The request itself is over a limit (statements per request, parameters).
    #[error("{0}")]
    RequestTooLarge(String),
    /// Every query slot is taken and the wait queue is full or timed out (HTTP 503, retry).
    #[error("{0}")]
    Busy(String),
    /// A `BEGIN ... COMMIT` batch would write to more than one Raft group.
    #[error("{0}")]
    CrossGroupTransaction(String),
    /// A feature this build does not have yet (e.g. an object-storage backup destination).
    #[error("{0}")]
    Unsupported(String),
    /// A job of that kind already runs on this node (one backup at a time).
    #[error("{0}")]
    JobRunning(String),
    /// The object store that holds cold files refused or could not be reached; nothing was
    /// proposed (a flush's rows stay hot).
    #[error("{0}")]
    StorageUnavailable(String),
    /// A cluster operation (leadership transfer, membership change) that cannot be made as
    /// asked: a target that is not a voter, a node shutting down, ...
    #[error("{0}")]
    ClusterRefused(String),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The code the HTTP API reports in `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidSql(_) => "INVALID_SQL",
            Error::NamespaceNotFound(_) => "NAMESPACE_NOT_FOUND",
            Error::TableNotFound(_) => "TABLE_NOT_FOUND",
            Error::AlreadyExists(_) => "ALREADY_EXISTS",
            Error::ConstraintViolation(_) => "CONSTRAINT_VIOLATION",
            Error::NamespaceNotEmpty(_) => "NAMESPACE_NOT_EMPTY",
            Error::Execution(_) => "SQL_EXECUTION_ERROR",
            Error::Conflict(_) => "WRITE_CONFLICT",
            Error::SchemaChanged(_) => "SCHEMA_CHANGED",
            Error::Unavailable(_) => "CLUSTER_UNAVAILABLE",
            Error::NotLeader(_) => "NOT_LEADER",
            Error::HistoryUnavailable(_) => "HISTORY_UNAVAILABLE",
            Error::PermissionDenied(_) => "PERMISSION_DENIED",
            Error::UserNotFound(_) => "USER_NOT_FOUND",
            Error::QueryTimeout(_) => "QUERY_TIMEOUT",
            Error::ResourcesExhausted(_) => "RESOURCES_EXHAUSTED",
            Error::ResultTooLarge(_) => "RESULT_TOO_LARGE",
            Error::RequestTooLarge(_) => "REQUEST_TOO_LARGE",
            Error::Busy(_) => "SERVER_BUSY",
            Error::CrossGroupTransaction(_) => "CROSS_GROUP_TRANSACTION",
            Error::Unsupported(_) => "NOT_SUPPORTED",
            Error::JobRunning(_) => "JOB_IN_PROGRESS",
            Error::StorageUnavailable(_) => "STORAGE_UNAVAILABLE",
            Error::ClusterRefused(_) => "CLUSTER_OPERATION_REFUSED",
            Error::Internal(_) => "INTERNAL_ERROR",
        }
    }

    /// The same error with its message rewritten (e.g. to name the failing statement).
    pub fn map_message(self, f: impl FnOnce(String) -> String) -> Error {
        match self {
            Error::InvalidSql(m) => Error::InvalidSql(f(m)),
            Error::NamespaceNotFound(m) => Error::NamespaceNotFound(f(m)),
            Error::TableNotFound(m) => Error::TableNotFound(f(m)),
            Error::AlreadyExists(m) => Error::AlreadyExists(f(m)),
            Error::ConstraintViolation(m) => Error::ConstraintViolation(f(m)),
            Error::NamespaceNotEmpty(m) => Error::NamespaceNotEmpty(f(m)),
            Error::Execution(m) => Error::Execution(f(m)),
            Error::Conflict(m) => Error::Conflict(f(m)),
            Error::SchemaChanged(m) => Error::SchemaChanged(f(m)),
            Error::Unavailable(m) => Error::Unavailable(f(m)),
            Error::NotLeader(m) => Error::NotLeader(f(m)),
            Error::HistoryUnavailable(m) => Error::HistoryUnavailable(f(m)),
            Error::PermissionDenied(m) => Error::PermissionDenied(f(m)),
            Error::UserNotFound(m) => Error::UserNotFound(f(m)),
            Error::QueryTimeout(m) => Error::QueryTimeout(f(m)),
            Error::ResourcesExhausted(m) => Error::ResourcesExhausted(f(m)),
            Error::ResultTooLarge(m) => Error::ResultTooLarge(f(m)),
            Error::RequestTooLarge(m) => Error::RequestTooLarge(f(m)),
            Error::Busy(m) => Error::Busy(f(m)),
            Error::CrossGroupTransaction(m) => Error::CrossGroupTransaction(f(m)),
            Error::Unsupported(m) => Error::Unsupported(f(m)),
            Error::JobRunning(m) => Error::JobRunning(f(m)),
            Error::StorageUnavailable(m) => Error::StorageUnavailable(f(m)),
            Error::ClusterRefused(m) => Error::ClusterRefused(f(m)),
            Error::Internal(m) => Error::Internal(f(m)),
        }
    }
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Error {
        use datafusion::error::DataFusionError as D;
        // Running out of the memory pool or spill space may surface wrapped in arrow or shared
        // errors from another partition: look at the root first.
        if let D::ResourcesExhausted(m) = e.find_root() {
            return Error::ResourcesExhausted(format!(
                "the query needs more memory than it may use ({m}); limits.query_memory_bytes_max bounds all running queries"
            ));
        }
        if spill_space_exhausted(&e) {
            return Error::ResourcesExhausted(
                "the query needs more spill space than it may use; limits.query_spill_bytes_max bounds all running queries"
                    .into(),
            );
        }
        // Planning errors arrive wrapped (diagnostics, context); classify by the root cause.
        let e = match e {
            D::Diagnostic(_, inner) => return Error::from(*inner),
            D::Context(ctx, inner) => match Error::from(*inner) {
                Error::InvalidSql(m) => return Error::InvalidSql(format!("{ctx}: {m}")),
                other => return other,
            },
            other => other,
        };
        match e {
            D::SQL(e, _) => Error::InvalidSql(e.to_string()),
            D::Plan(m) => {
                // DataFusion reports unknown tables as plan errors; give them their own code.
                if m.contains("table") && m.contains("not found") {
                    Error::TableNotFound(m)
                } else {
                    Error::InvalidSql(m)
                }
            }
            D::SchemaError(e, _) => Error::InvalidSql(e.to_string()),
            // Our own errors raised inside table scans (read barriers) keep their code.
            D::External(e) => match e.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => Error::Execution(other.to_string()),
            },
            other => Error::Execution(other.to_string()),
        }
    }
}

/// DataFusion's disk manager reports a full spill folder as a plain I/O error with a fixed
/// text (no typed variant), wrapped in arrow's errors: recognise it anywhere in the chain.
fn spill_space_exhausted(e: &datafusion::error::DataFusionError) -> bool {
    const SPILL_LIMIT_MARKER: &str = "max_temp_directory_size";
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>().is_some_and(|io| io.to_string().contains(SPILL_LIMIT_MARKER)) {
            return true;
        }
        cause = c.source();
    }
    e.to_string().contains(SPILL_LIMIT_MARKER)
}

impl From<kalamdb_projections::Error> for Error {
    fn from(e: kalamdb_projections::Error) -> Error {
        match e {
            kalamdb_projections::Error::History(m) => Error::HistoryUnavailable(m),
            e @ kalamdb_projections::Error::StoreUnavailable(_) => Error::StorageUnavailable(e.to_string()),
            other => Error::Internal(other.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
