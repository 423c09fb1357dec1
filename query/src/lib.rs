//! SQL for KalamDB: parsing (sqlparser plus our own statements), DataFusion table providers
//! over the RocksDB projections, the `system.*` tables, and the engine that answers reads
//! locally and turns writes into log ops for the node to propose.

pub mod access;
pub mod engine;
pub mod error;
pub mod filter;
pub mod introspection;
pub mod limits;
pub mod live;
pub mod parse;
pub mod password;
pub mod ports;
pub mod provider;
pub mod values;

pub use engine::{
    Engine, ExecContext, QueryResult, SCHEMA_BUMPS_MAX, SCHEMA_CHANGE_WAIT_MS, SCHEMA_RETRY_PAUSE_MS, SeqWindow,
    StorageJob, Subscription, ttl_secs,
};
pub use error::Error;
pub use filter::RowFilter;
pub use limits::QueryLimits;
pub use live::{LiveColumn, LiveQuery};
pub use parse::ClusterCommand;
pub use parse::{FlushPolicy, redact_passwords};
pub use ports::{
    ClusterControl, ClusterGroup, ClusterNode, ClusterView, JobSource, LeadershipChange, MembershipChange, NodeView,
    Proposer, ReadBarrier, SessionInfo,
};
