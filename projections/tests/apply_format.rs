//! The group's apply format: where it starts, how `SetFormat` moves it, what it changes in a
//! flush's bytes, and that snapshots and reopening keep it.

mod common;

use std::sync::Arc;

use common::{entry, id_text_row, id_text_table, membership_entry};
use kalamdb_log::{GroupId, LogDb, Op, OpResult, TableType};
use kalamdb_projections::format::{FORMAT_FIRST, FORMAT_MAX, load};
use kalamdb_projections::{Catalog, PROJECTION_CFS, Projection, StorageEnv, digest_group};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};

const GROUP: GroupId = GroupId::SharedShard(0);

fn open(dir: &std::path::Path) -> (Arc<LogDb>, Projection) {
    let db = LogDb::open(&dir.join("rocksdb"), &PROJECTION_CFS).unwrap();
    let env = StorageEnv::new(dir.join("snap"), dir.join("storage"));
    let sm = Projection::open(db.clone(), GROUP, Catalog::new(), env).unwrap();
    (db, sm)
}

fn set_format(index: u64, format: u32) -> kalamdb_log::types::Entry {
    entry(index, vec![Op::SetFormat { format }])
}

/// Stub records of table 1's shared scope.
fn stub_records(db: &rocksdb::DB) -> usize {
    let sp = kalamdb_projections::keys::table_scope_prefix(GROUP, 1, "");
    let stubs = kalamdb_projections::cold::stub_range(&sp);
    let cold = db.cf_handle("cold").unwrap();
    db.prefix_iterator_cf(cold, &stubs).map(|item| item.unwrap()).take_while(|(k, _)| k.starts_with(&stubs)).count()
}

#[tokio::test]
async fn a_group_starts_at_the_first_format_and_set_format_only_raises_it() {
    let dir = tempfile::tempdir().unwrap();
    let digest_before;
    {
        let (db, mut sm) = open(dir.path());
        sm.apply(vec![membership_entry()]).await.unwrap();
        assert_eq!(load(db.db(), GROUP).unwrap(), FORMAT_FIRST);
        digest_before = digest_group(db.db(), GROUP).unwrap();
        // A raise to the first format changes no byte: format 1 has no record.
        let r = sm.apply(vec![set_format(2, FORMAT_FIRST)]).await.unwrap();
        assert_eq!(r[0].results, vec![OpResult::Done { affected: 0 }]);
        assert_eq!(digest_group(db.db(), GROUP).unwrap(), digest_before);
        // Two raises in one call see each other: the lower second one does not lower it.
        sm.apply(vec![set_format(3, FORMAT_MAX), set_format(4, FORMAT_FIRST)]).await.unwrap();
        assert_eq!(load(db.db(), GROUP).unwrap(), FORMAT_MAX);
        assert_ne!(digest_group(db.db(), GROUP).unwrap(), digest_before, "the digest covers the format");
    }
    // Reopened, the projection still knows it: a lower raise leaves it.
    let (db, mut sm) = open(dir.path());
    sm.apply(vec![set_format(5, FORMAT_FIRST)]).await.unwrap();
    assert_eq!(load(db.db(), GROUP).unwrap(), FORMAT_MAX);
    // A format past this build's stops apply instead of applying on the old way.
    let err = sm.apply(vec![set_format(6, FORMAT_MAX + 1)]).await.unwrap_err();
    assert!(err.to_string().contains("applies formats up to"), "{err}");
    assert_eq!(load(db.db(), GROUP).unwrap(), FORMAT_MAX);
}

/// A snapshot carries the group's format to the node that installs it.
#[tokio::test]
async fn a_snapshot_carries_the_format() {
    let a = tempfile::tempdir().unwrap();
    let (db_a, mut sm_a) = open(a.path());
    sm_a.apply(vec![set_format(1, FORMAT_MAX)]).await.unwrap();
    let snap = sm_a.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let b = tempfile::tempdir().unwrap();
    let (db_b, mut sm_b) = open(b.path());
    assert_eq!(load(db_b.db(), GROUP).unwrap(), FORMAT_FIRST);
    sm_b.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
    assert_eq!(load(db_b.db(), GROUP).unwrap(), FORMAT_MAX);
    assert_eq!(digest_group(db_b.db(), GROUP).unwrap(), digest_group(db_a.db(), GROUP).unwrap());
    // And the installed projection goes on from it: a lower raise leaves it.
    sm_b.apply(vec![set_format(2, FORMAT_FIRST)]).await.unwrap();
    assert_eq!(load(db_b.db(), GROUP).unwrap(), FORMAT_MAX);
}

/// Every record of `cf` under table 1's shared scope (cold: heads, files, stubs).
fn scope_records(db: &rocksdb::DB, cf: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let sp = kalamdb_projections::keys::table_scope_prefix(GROUP, 1, "");
    let handle = db.cf_handle(cf).unwrap();
    db.prefix_iterator_cf(handle, &sp)
        .map(|item| item.unwrap())
        .take_while(|(k, _)| k.starts_with(&sp))
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

/// From format 2 the flush of a bulk load settles its rows itself: one stub record per
/// statement, no row left in `rows`, nothing for `Settle` to do. And it ends in the records a
/// format-1 replica reaches once its `Settle` ops are done.
#[tokio::test]
async fn a_flush_settles_a_bulk_load_itself_from_format_2() {
    use kalamdb_projections::format::FORMAT_SETTLE_IN_FLUSH;
    let table = id_text_table(1, "t", TableType::Shared);
    const STATEMENTS: i64 = 5;
    const PER: i64 = 1_000;
    let log = |format: u32| {
        let mut log = vec![set_format(1, format)];
        for s in 0..STATEMENTS {
            let rows = (s * PER..(s + 1) * PER).map(|k| id_text_row(k, "v", None)).collect();
            log.push(entry(
                2 + s as u64,
                vec![Op::Insert { table_id: 1, scope: String::new(), rows, schema_version: 1 }],
            ));
        }
        log.push(entry(10, vec![Op::Flush { table: table.clone(), scope: None }]));
        log
    };
    let settles =
        |from: u64| (from..from + 8).map(|i| entry(i, vec![Op::Settle { table_id: 1, scope: String::new() }]));
    let mut ends = Vec::new();
    for format in [FORMAT_FIRST, FORMAT_SETTLE_IN_FLUSH] {
        let dir = tempfile::tempdir().unwrap();
        let (db, mut sm) = open(dir.path());
        let flushed = sm.apply(log(format)).await.unwrap();
        assert_eq!(flushed.last().unwrap().results, vec![OpResult::Done { affected: (STATEMENTS * PER) as u64 }]);
        let hot = scope_records(db.db(), "rows").len();
        let sp = kalamdb_projections::keys::table_scope_prefix(GROUP, 1, "");
        let head = kalamdb_projections::cold::stored_head(db.db(), &sp).unwrap().unwrap();
        if format == FORMAT_SETTLE_IN_FLUSH {
            assert_eq!(hot, 0, "rows left in RocksDB by a flush that settles them");
            assert_eq!(head.settle_from, None);
            assert_eq!(stub_records(db.db()), STATEMENTS as usize, "one run per statement");
        } else {
            assert_eq!(hot, (STATEMENTS * PER) as usize);
            assert!(head.settle_from.is_some(), "left to Settle ops");
        }
        let settled = sm.apply(settles(20).collect::<Vec<_>>()).await.unwrap();
        let rows: u64 = settled
            .iter()
            .map(|r| match &r.results[..] {
                [OpResult::Settled { rows, .. }] => *rows,
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(rows, if format == FORMAT_SETTLE_IN_FLUSH { 0 } else { (STATEMENTS * PER) as u64 });
        assert_eq!(scope_records(db.db(), "rows").len(), 0);
        ends.push(scope_records(db.db(), "cold"));
    }
    assert_eq!(ends[0], ends[1], "settled in the flush, the scope's records are those Settle ops leave");
}

/// From format 2 a flush whose rows would make more stub records than one `Settle` op writes
/// leaves them to `Settle` ops, as before.
#[tokio::test]
async fn a_flush_leaves_many_stub_records_to_settle_ops() {
    let table = id_text_table(1, "t", TableType::Shared);
    let rows = kalamdb_projections::cold::SETTLE_INLINE_STUBS_MAX as i64 + 1;
    // Every second key: no two rows continue each other, so each is a stub record of its own.
    let insert = Op::Insert {
        table_id: 1,
        scope: String::new(),
        rows: (0..rows).map(|k| id_text_row(2 * k, "v", None)).collect(),
        schema_version: 1,
    };
    let dir = tempfile::tempdir().unwrap();
    let log = vec![
        set_format(1, kalamdb_projections::format::FORMAT_SETTLE_IN_FLUSH),
        entry(2, vec![insert]),
        entry(3, vec![Op::Flush { table, scope: None }]),
    ];
    let (results, _, reader) = common::apply_log(dir.path(), GROUP, log, 3).await;
    assert_eq!(results[2], vec![OpResult::Done { affected: rows as u64 }]);
    assert_eq!(scope_records(reader.db(), "rows").len(), rows as usize);
    let sp = kalamdb_projections::keys::table_scope_prefix(GROUP, 1, "");
    let head = kalamdb_projections::cold::stored_head(reader.db(), &sp).unwrap().unwrap();
    assert!(head.settle_from.is_some(), "left to Settle ops");
}

/// The live Parquet files of table 1's shared scope: each one's rows (all its batches) and
/// row group count.
fn live_files(db: &rocksdb::DB, storage: &std::path::Path) -> Vec<(arrow::array::RecordBatch, usize)> {
    let sp = kalamdb_projections::keys::table_scope_prefix(GROUP, 1, "");
    let files = kalamdb_projections::cold::scope_files(db, &sp).unwrap();
    files
        .iter()
        .filter(|f| f.retired_at.is_none())
        .map(|f| {
            let path = storage.join(&f.path);
            let batches = kalamdb_projections::cold::read_parquet(&path).unwrap();
            let rows = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
            assert_eq!(rows.num_rows() as u64, f.rows, "{}", f.path);
            let reader = parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
            (rows, parquet::file::reader::FileReader::metadata(&reader).num_row_groups())
        })
        .collect()
}

/// From format 3 a compaction of a bulk load's flushed files (disjoint, ascending keys)
/// copies their row groups into the new file instead of merging them: the same rows in the
/// same order, one row group per flushed file. A later flush's rows, which replace some of
/// the joined ones, are merged as before.
#[tokio::test]
async fn a_compaction_joins_disjoint_files_by_copying_from_format_3() {
    use kalamdb_projections::format::{FORMAT_COPY_COMPACTION, FORMAT_SETTLE_IN_FLUSH};
    let table = id_text_table(1, "t", TableType::Shared);
    const FLUSHES: i64 = 4;
    const PER: i64 = 1_000;
    let compact = |i: u64| entry(i, vec![Op::Compact { table: table.clone(), scope: None }]);
    let log = |format: u32| {
        let mut log = vec![set_format(1, format)];
        let mut index = 2;
        for f in 0..FLUSHES {
            // Even keys, ascending in each flush, flushes in descending order: disjoint files.
            let keys = (FLUSHES - 1 - f) * PER..(FLUSHES - f) * PER;
            let rows = keys.map(|k| id_text_row(2 * k, &format!("v{k}"), None)).collect();
            log.push(entry(index, vec![Op::Insert { table_id: 1, scope: String::new(), rows, schema_version: 1 }]));
            log.push(entry(index + 1, vec![Op::Flush { table: table.clone(), scope: None }]));
            index += 2;
        }
        log.push(compact(index));
        log
    };
    let mut ends = Vec::new();
    for format in [FORMAT_SETTLE_IN_FLUSH, FORMAT_COPY_COMPACTION] {
        let dir = tempfile::tempdir().unwrap();
        let (db, mut sm) = open(dir.path());
        let done = sm.apply(log(format)).await.unwrap();
        assert_eq!(done.last().unwrap().results, vec![OpResult::Done { affected: (FLUSHES * PER) as u64 }]);
        let files = live_files(db.db(), &dir.path().join("storage"));
        assert_eq!(files.len(), 1, "format {format}");
        let groups = if format == FORMAT_COPY_COMPACTION { FLUSHES as usize } else { 1 };
        assert_eq!(files[0].1, groups, "row groups at format {format}");
        ends.push(files.into_iter().map(|(rows, _)| rows).collect::<Vec<_>>());

        // Odd keys among the joined ones, flushed: their file overlaps the joined one, so the
        // next compaction merges them.
        let rows = (0..10).map(|k| id_text_row(2 * k + 1, "odd", None)).collect();
        let more = vec![
            entry(20, vec![Op::Insert { table_id: 1, scope: String::new(), rows, schema_version: 1 }]),
            entry(21, vec![Op::Flush { table: table.clone(), scope: None }]),
            compact(22),
        ];
        let done = sm.apply(more).await.unwrap();
        assert!(done.iter().all(|r| r.results.iter().all(|r| matches!(r, OpResult::Done { .. }))), "{done:?}");
        let files = live_files(db.db(), &dir.path().join("storage"));
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0.num_rows() as i64, FLUSHES * PER + 10);
        assert_eq!(files[0].1, 1, "merged at format {format}");
        ends.push(files.into_iter().map(|(rows, _)| rows).collect::<Vec<_>>());
    }
    assert_eq!(ends[0], ends[2], "joined, the rows are those a merge writes");
    assert_eq!(ends[1], ends[3], "merged after a join, as after a merge");
}
