//! Shared by the tests that apply a hand-written log to one group's projection.

use std::path::Path;
use std::sync::Arc;

use std::collections::BTreeMap;

use kalamdb_log::codec::encode_entry;
use kalamdb_log::storage::CF_LOG;
use kalamdb_log::types::{Entry, NodeAddr};
use kalamdb_log::{
    ColumnDef, DataType, EncodedCommand, GroupId, LogCommand, LogDb, Op, OpResult, RowWrite, TableDef, TableType, Value,
};
use kalamdb_projections::{Catalog, PROJECTION_CFS, Projection, RowReader, StorageEnv, digest_group};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, LogId, Membership};

/// A normal entry of term 1 at `index` holding `ops`.
pub fn entry(index: u64, ops: Vec<Op>) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(EncodedCommand::encode(&LogCommand { ops, committed_at_micros: 0 }).unwrap()),
    }
}

/// The first entry of a one-node group: its membership, at index 1.
pub fn membership_entry() -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
        payload: EntryPayload::Membership(Membership::new(
            vec![[1u64].into()],
            BTreeMap::from([(1u64, NodeAddr::default())]),
        )),
    }
}

/// A column of a test table: the primary key is NOT NULL, other columns nullable.
pub fn column(name: &str, data_type: DataType, primary_key: bool) -> ColumnDef {
    ColumnDef {
        name: name.into(),
        data_type,
        nullable: !primary_key,
        primary_key,
        default: None,
        stored_as: String::new(),
        backfill: None,
        dropped: false,
    }
}

/// The table `ns.<name> (id BIGINT PRIMARY KEY, v TEXT)` with the given id and type.
pub fn id_text_table(table_id: u64, name: &str, table_type: TableType) -> TableDef {
    TableDef {
        table_id,
        namespace: "ns".into(),
        name: name.into(),
        table_type,
        columns: vec![column("id", DataType::BigInt, true), column("v", DataType::Text, false)],
        options: vec![],
        created_at_micros: 1,
        versions: Vec::new(),
    }
}

/// A row of an [`id_text_table`]: key `k`, text `v`, expecting `_seq` `expected_seq`.
pub fn id_text_row(k: i64, v: &str, expected_seq: Option<u64>) -> RowWrite {
    RowWrite { pk: Value::BigInt(k), values: vec![Value::BigInt(k), Value::Text(v.into())], expected_seq }
}

/// Apply `entries` to `group` in a fresh database under `dir` (appended to the group's log
/// first, as Raft would, so history replay finds them), in apply calls of `chunk` entries.
/// Returns every entry's results, the group's digest and a reader.
pub async fn apply_log(
    dir: &Path,
    group: GroupId,
    entries: Vec<Entry>,
    chunk: usize,
) -> (Vec<Vec<OpResult>>, String, RowReader) {
    let db = LogDb::open(&dir.join("rocksdb"), &PROJECTION_CFS).unwrap();
    let env = StorageEnv::new(dir.join("snap"), dir.join("storage"));
    let mut sm = Projection::open(db.clone(), group, Catalog::new(), Arc::clone(&env)).unwrap();
    let cf = db.db().cf_handle(CF_LOG).unwrap();
    for e in &entries {
        let mut key = group.prefix().to_vec();
        key.extend_from_slice(&e.log_id.index.to_be_bytes());
        db.db().put_cf(cf, key, encode_entry(e).unwrap()).unwrap();
    }
    let mut results = Vec::new();
    let mut rest = entries;
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(chunk));
        results.extend(sm.apply(rest).await.unwrap().into_iter().map(|r| r.results));
        rest = tail;
    }
    let digest = digest_group(db.db(), group).unwrap();
    let files = Arc::new(kalamdb_projections::cold::FileStore::folder(dir.join("storage")));
    (results, digest, RowReader::new(db, files))
}
