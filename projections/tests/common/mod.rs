//! Shared by the tests that apply a hand-written log to one group's projection.

use std::path::Path;
use std::sync::Arc;

use kalamdb_log::codec::encode_entry;
use kalamdb_log::storage::CF_LOG;
use kalamdb_log::types::Entry;
use kalamdb_log::{GroupId, LogDb, OpResult};
use kalamdb_projections::{Catalog, PROJECTION_CFS, Projection, RowReader, StorageEnv, digest_group};
use openraft::storage::RaftStateMachine;

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
