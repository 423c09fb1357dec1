//! Projections: the Raft state machine that turns committed log entries into RocksDB tables
//! (catalog, users and rows), flushes and compacts rows into Parquet files (cold storage), builds and
//! installs snapshots, and computes state digests.

pub mod catalog;
pub mod ceiling;
pub mod changes;
pub mod cold;
pub mod columnar;
pub mod error;
pub mod failpoint;
pub mod fences;
pub mod format;
pub mod history;
pub mod install;
pub mod keys;
pub mod machine;
pub mod refused;
pub mod rows;
pub mod sm;
pub mod snapshot;
pub mod snapshot_store;
pub mod stored;
pub mod users;

pub use catalog::{Catalog, NamespaceRecord};
pub use cold::{JobLog, JobRecord, StorageEnv, TableView};
pub use error::Error;
pub use machine::Projection;
pub use rows::{RowReader, StoredRow};
pub use snapshot::{approximate_state_bytes, digest_group};
pub use users::Users;

/// Column families the projections add to the node's RocksDB instance.
pub const CF_SM: &str = "sm";
pub const CF_CATALOG: &str = "catalog";
pub const CF_ROWS: &str = "rows";
pub const CF_COLD: &str = "cold";
/// Change records for the tail endpoint (see [`changes`]).
pub const CF_CHANGES: &str = "changes";
pub const PROJECTION_CFS: [&str; 5] = [CF_SM, CF_CATALOG, CF_ROWS, CF_COLD, CF_CHANGES];

/// Wall-clock microseconds, for job records only: nothing replicated may depend on it.
pub(crate) fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}
