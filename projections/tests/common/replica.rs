//! One group's projection in a folder of its own, applied entry by entry: the replica of the
//! tests that compare what replicas which remember different things end with.

use std::path::Path;
use std::sync::Arc;

use kalamdb_log::types::Entry;
use kalamdb_log::{GroupId, LogDb, Op, OpResult, RowWrite, TableDef, TableType};
use kalamdb_projections::{Catalog, PROJECTION_CFS, Projection, StorageEnv, digest_group};
use openraft::storage::RaftStateMachine;

/// The group of these tests' logs, and the scopes their user table's rows go to.
pub const GROUP: GroupId = GroupId::UserShard(0);
pub const SCOPES: [&str; 3] = ["a", "b", "c"];

/// Table 1: a user table of (id BIGINT, v TEXT).
pub fn def() -> TableDef {
    crate::common::id_text_table(1, "t", TableType::User)
}

pub fn row(k: i64, v: &str, expected_seq: Option<u64>) -> RowWrite {
    crate::common::id_text_row(k, v, expected_seq)
}

/// An `Update` (or a `Delete`) of up to `max` of `live` (a scope's keys with the `_seq` each
/// expects), chosen at random, written at log `index`; returns it and the keys it writes, in
/// order (each key's new version is `index`'s ordinal of its place).
pub fn rewrite(
    rng: &mut fastrand::Rng,
    mut live: Vec<(i64, u64)>,
    max: usize,
    (index, scope, delete): (u64, &str, bool),
) -> (Op, Vec<i64>) {
    rng.shuffle(&mut live);
    live.truncate(rng.usize(1..=max));
    let rows = live.iter().map(|(k, at)| row(*k, &format!("u{index}"), Some(*at))).collect();
    let (schema_version, table_id, scope) = (1, 1, scope.to_string());
    let op = if delete {
        Op::Delete { schema_version, table_id, scope, rows }
    } else {
        Op::Update { schema_version, table_id, scope, rows }
    };
    (op, live.into_iter().map(|(k, _)| k).collect())
}

pub struct Replica {
    pub _dir: tempfile::TempDir,
    pub db: Arc<LogDb>,
    pub env: Arc<StorageEnv>,
    group: GroupId,
    sm: Projection,
}

/// A fresh replica of `group`.
pub fn replica(group: GroupId) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let path: &Path = dir.path();
    let db = LogDb::open(&path.join("rocksdb"), &PROJECTION_CFS).unwrap();
    let env = StorageEnv::new(path.join("snap"), path.join("storage"));
    let sm = Projection::open(db.clone(), group, Catalog::new(), env.clone()).unwrap();
    Replica { _dir: dir, db, env, group, sm }
}

impl Replica {
    /// Apply `entries` in one call; each entry's op results.
    pub async fn apply(&mut self, entries: &[Entry]) -> Vec<Vec<OpResult>> {
        self.sm.apply(entries.to_vec()).await.unwrap().into_iter().map(|r| r.results).collect()
    }

    pub fn digest(&self) -> String {
        digest_group(self.db.db(), self.group).unwrap()
    }
}
