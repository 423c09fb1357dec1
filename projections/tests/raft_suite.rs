//! openraft's storage conformance suite against the real RocksDB log store and projection.

use kalamdb_log::types::{StorageError, TypeConfig};
use kalamdb_log::{GroupId, LogDb, LogStore};
use kalamdb_projections::{Catalog, PROJECTION_CFS, Projection, StorageEnv};
use openraft::testing::{StoreBuilder, Suite};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, Projection, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, Projection), StorageError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = LogDb::open(&dir.path().join("rocksdb"), &PROJECTION_CFS).expect("open db");
        let group = GroupId::SharedShard(0);
        let log = LogStore::new(db.clone(), group).expect("log store");
        let sm = Projection::open(
            db,
            group,
            Catalog::new(),
            StorageEnv::new(dir.path().join("snapshots"), dir.path().join("storage")),
        )
        .expect("projection");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("storage suite");
}
