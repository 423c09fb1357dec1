//! Projections: the Raft state machine that turns committed log entries into RocksDB tables
//! (catalog and rows), builds and installs snapshots, and computes state digests.

pub mod catalog;
pub mod error;
pub mod keys;
pub mod machine;
pub mod rows;
pub mod snapshot;

pub use catalog::{Catalog, NamespaceRecord};
pub use error::Error;
pub use machine::Projection;
pub use rows::{RowReader, StoredRow};
pub use snapshot::digest_group;

/// Column families the projections add to the node's RocksDB instance.
pub const CF_SM: &str = "sm";
pub const CF_CATALOG: &str = "catalog";
pub const CF_ROWS: &str = "rows";
pub const PROJECTION_CFS: [&str; 3] = [CF_SM, CF_CATALOG, CF_ROWS];
