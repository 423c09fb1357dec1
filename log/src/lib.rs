//! The replicated log: Raft type config, the commands every write becomes, group ids and the
//! durable RocksDB log storage that openraft appends to.

pub mod codec;
pub mod command;
pub mod error;
pub mod group;
pub mod snapshot_data;
pub mod storage;
pub mod types;

pub use command::{
    ApplyResponse, ColumnDef, DataType, DefaultExpr, EncodedCommand, LogCommand, Op, OpResult, PriorColumn, Role,
    RowWrite, SchemaVersion, TableChange, TableDef, TableType, TxWrite, UserDef, Value, WriteKind,
};
pub use error::Error;
pub use group::{GroupId, GroupLayout, MetaGroup};
pub use storage::{LogDb, LogStore, WAL_PREFILL_BYTES_MAX};
pub use types::{NodeAddr, NodeId, TypeConfig};
