//! Apply is deterministic: the same log applied to two fresh projections yields byte-identical
//! state (equal digests), and a snapshot installed elsewhere reproduces it exactly; keyed
//! reads of flushed rows through a warm cache agree with a cold one as files come and go.

use std::collections::BTreeMap;

use kalamdb_log::command::ApplyErrorCode;
use kalamdb_log::types::{Entry, NodeAddr};
use kalamdb_log::{
    ColumnDef, DataType, DefaultExpr, EncodedCommand, GroupId, LogCommand, LogDb, MetaGroup, Op, OpResult, RowWrite,
    TableDef, TableType, Value,
};
use std::path::Path;
use std::sync::Arc;

use kalamdb_projections::cold::FileStore;
use kalamdb_projections::{Catalog, PROJECTION_CFS, Projection, RowReader, StorageEnv, digest_group};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, LogId, Membership};

fn entry(index: u64, ops: Vec<Op>) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(EncodedCommand::encode(&LogCommand { ops, committed_at_micros: 0 }).unwrap()),
    }
}

fn env(dir: &Path) -> Arc<StorageEnv> {
    StorageEnv::new(dir.join("snap"), dir.join("storage"))
}

fn table_def() -> TableDef {
    TableDef {
        table_id: 0,
        namespace: "ns".into(),
        name: "t".into(),
        table_type: TableType::Shared,
        columns: vec![
            ColumnDef {
                name: "id".into(),
                data_type: DataType::BigInt,
                nullable: false,
                primary_key: true,
                default: Some(DefaultExpr::SnowflakeId),
                stored_as: String::new(),
                backfill: None,
                dropped: false,
            },
            ColumnDef {
                name: "v".into(),
                data_type: DataType::Text,
                nullable: true,
                primary_key: false,
                default: None,
                stored_as: String::new(),
                backfill: None,
                dropped: false,
            },
        ],
        options: vec![],
        created_at_micros: 42,
        versions: Vec::new(),
    }
}

fn row(k: i64, v: &str, seq: Option<u64>) -> RowWrite {
    RowWrite { pk: Value::BigInt(k), values: vec![Value::BigInt(k), Value::Text(v.into())], expected_seq: seq }
}

/// A catalog log and a data log with inserts, a conflicting update, deletes and a purge.
fn logs() -> (Vec<Entry>, Vec<Entry>) {
    let membership = Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
        payload: EntryPayload::Membership(Membership::new(
            vec![[1u64].into()],
            BTreeMap::from([(1u64, NodeAddr::default())]),
        )),
    };
    let catalog = vec![
        membership.clone(),
        entry(2, vec![Op::CreateNamespace { name: "ns".into(), if_not_exists: false, created_at_micros: 7 }]),
        entry(
            3,
            vec![
                Op::CreateTable { table: table_def(), if_not_exists: false },
                Op::CreateNamespace { name: "ns".into(), if_not_exists: false, created_at_micros: 8 },
            ],
        ),
    ];
    let mut data = vec![membership];
    let mut index = 2;
    for batch in 0..20 {
        let rows = (0..50).map(|i| row(batch * 50 + i, &format!("v{i}"), None)).collect();
        data.push(entry(index, vec![Op::Insert { schema_version: 1, table_id: 1, scope: String::new(), rows }]));
        index += 1;
    }
    // Row 0 was written at index 2, ordinal 0: its _seq is (2 << 20).
    data.push(entry(
        index,
        vec![
            Op::Update {
                schema_version: 1,
                table_id: 1,
                scope: String::new(),
                rows: vec![row(0, "new", Some(2 << 20))],
            },
            Op::Update {
                schema_version: 1,
                table_id: 1,
                scope: String::new(),
                rows: vec![row(1, "stale", Some(12345))],
            },
            Op::Delete {
                schema_version: 1,
                table_id: 1,
                scope: String::new(),
                rows: vec![row(5, "", Some((2 << 20) | 5))],
            },
            Op::Insert { schema_version: 1, table_id: 2, scope: "alice".into(), rows: vec![row(1, "x", None)] },
        ],
    ));
    index += 1;
    data.push(entry(index, vec![Op::PurgeTable { table_id: 2 }]));
    (catalog, data)
}

async fn apply_all(dir: &std::path::Path) -> (String, String, Vec<Vec<OpResult>>, Projection) {
    let db = LogDb::open(&dir.join("rocksdb"), &PROJECTION_CFS).unwrap();
    let catalog = Catalog::new();
    let cat_group = GroupId::Meta(MetaGroup::Catalog);
    let data_group = GroupId::SharedShard(0);
    let mut cat_sm = Projection::open(db.clone(), cat_group, catalog.clone(), env(dir)).unwrap();
    let mut data_sm = Projection::open(db.clone(), data_group, catalog, env(dir)).unwrap();
    let (cat_log, data_log) = logs();
    let mut results: Vec<Vec<OpResult>> = cat_sm.apply(cat_log).await.unwrap().into_iter().map(|r| r.results).collect();
    // Apply the data log in uneven chunks: chunking must not change the outcome.
    let mut rest = data_log;
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(3));
        results.extend(data_sm.apply(rest).await.unwrap().into_iter().map(|r| r.results));
        rest = tail;
    }
    let d1 = digest_group(db.db(), cat_group).unwrap();
    let d2 = digest_group(db.db(), data_group).unwrap();
    (d1, d2, results, data_sm)
}

#[tokio::test]
async fn same_log_same_bytes() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (ca, da, ra, mut sm_a) = apply_all(a.path()).await;
    let (cb, db_, rb, _) = apply_all(b.path()).await;
    assert_eq!(ca, cb, "catalog projections differ");
    assert_eq!(da, db_, "row projections differ");
    assert_eq!(ra, rb);
    // The ops' outcomes are the deterministic ones expected.
    assert_eq!(ra[2][0], OpResult::TableCreated { table_id: 1 });
    assert!(matches!(ra[2][1], OpResult::Failed { .. }), "duplicate namespace must fail");
    let mixed = &ra[ra.len() - 2];
    assert_eq!(mixed[0], OpResult::Done { affected: 1 });
    assert!(matches!(mixed[1], OpResult::Failed { code: kalamdb_log::command::ApplyErrorCode::Conflict, .. }));
    assert_eq!(mixed[2], OpResult::Done { affected: 1 });

    // A snapshot of A installed into a fresh C reproduces A's bytes.
    let snap = sm_a.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let c = tempfile::tempdir().unwrap();
    let db = LogDb::open(&c.path().join("rocksdb"), &PROJECTION_CFS).unwrap();
    let mut sm_c = Projection::open(db.clone(), GroupId::SharedShard(0), Catalog::new(), env(c.path())).unwrap();
    sm_c.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
    assert_eq!(digest_group(db.db(), GroupId::SharedShard(0)).unwrap(), da);
    let (applied, _) = sm_c.applied_state().await.unwrap();
    assert_eq!(applied, snap.meta.last_log_id);
    // And it survives reopening (the snapshot file is the current snapshot).
    let current = sm_c.get_current_snapshot().await.unwrap().expect("snapshot file");
    assert_eq!(current.meta.last_log_id, snap.meta.last_log_id);
}

fn seq(index: u64, ordinal: u64) -> u64 {
    (index << 20) | ordinal
}

/// Inserts, a flush, an update, a delete and a refused insert of flushed rows, a second
/// flush, a compaction, and an insert reusing a deleted key. A flush this small settles its
/// rows itself (`SETTLE_INLINE_ROWS_MAX`); `settling_in_pieces_ends_where_settling_at_once_does`
/// covers writes over rows not settled yet.
fn cold_log() -> Vec<Entry> {
    let mut def = table_def();
    def.table_id = 1;
    let shared = String::new();
    vec![
        entry(
            20,
            vec![Op::Insert {
                schema_version: 1,
                table_id: 1,
                scope: shared.clone(),
                rows: (0..10).map(|k| row(k, "v", None)).collect(),
            }],
        ),
        entry(30, vec![Op::Flush { table: def.clone(), scope: None }]),
        entry(
            40,
            vec![
                Op::Update {
                    schema_version: 1,
                    table_id: 1,
                    scope: shared.clone(),
                    rows: vec![row(0, "new", Some(seq(20, 0)))],
                },
                Op::Delete {
                    schema_version: 1,
                    table_id: 1,
                    scope: shared.clone(),
                    rows: vec![row(1, "", Some(seq(20, 1)))],
                },
                Op::Insert { schema_version: 1, table_id: 1, scope: shared.clone(), rows: vec![row(3, "dup", None)] },
                Op::Update {
                    schema_version: 1,
                    table_id: 1,
                    scope: shared.clone(),
                    rows: vec![row(2, "stale", Some(seq(10, 0)))],
                },
            ],
        ),
        entry(50, vec![Op::Flush { table: def.clone(), scope: None }]),
        entry(
            60,
            vec![Op::Insert {
                schema_version: 1,
                table_id: 1,
                scope: shared.clone(),
                rows: (10..15).map(|k| row(k, "w", None)).collect(),
            }],
        ),
        entry(70, vec![Op::Compact { table: def.clone(), scope: None }]),
        entry(
            80,
            vec![Op::Insert { schema_version: 1, table_id: 1, scope: shared, rows: vec![row(1, "again", None)] }],
        ),
    ]
}

async fn apply_cold(dir: &Path) -> (String, Vec<Vec<OpResult>>, Projection, Arc<LogDb>) {
    let db = LogDb::open(&dir.join("rocksdb"), &PROJECTION_CFS).unwrap();
    let mut sm = Projection::open(db.clone(), GroupId::SharedShard(0), Catalog::new(), env(dir)).unwrap();
    let mut results = Vec::new();
    // One entry per apply call, then all at once on the other replica (see the caller).
    for e in cold_log() {
        results.extend(sm.apply(vec![e]).await.unwrap().into_iter().map(|r| r.results));
    }
    (digest_group(db.db(), GroupId::SharedShard(0)).unwrap(), results, sm, db)
}

#[tokio::test]
async fn flush_and_compaction_are_deterministic_and_exact() {
    let a = tempfile::tempdir().unwrap();
    let (digest_a, results, mut sm_a, db_a) = apply_cold(a.path()).await;
    // Replica B applies the whole log in one call: storage jobs commit on their own anyway.
    let b = tempfile::tempdir().unwrap();
    let db_b = LogDb::open(&b.path().join("rocksdb"), &PROJECTION_CFS).unwrap();
    let mut sm_b = Projection::open(db_b.clone(), GroupId::SharedShard(0), Catalog::new(), env(b.path())).unwrap();
    let results_b: Vec<Vec<OpResult>> = sm_b.apply(cold_log()).await.unwrap().into_iter().map(|r| r.results).collect();
    assert_eq!(results, results_b);
    assert_eq!(
        digest_group(db_b.db(), GroupId::SharedShard(0)).unwrap(),
        digest_a,
        "replicas differ (manifest holds file checksums)"
    );

    assert_eq!(results[1], vec![OpResult::Done { affected: 10 }], "first flush writes 10 rows");
    let mixed = &results[2];
    assert_eq!(mixed[0], OpResult::Done { affected: 1 }, "update of a flushed row");
    assert_eq!(mixed[1], OpResult::Done { affected: 1 }, "delete of a flushed row");
    assert!(
        matches!(mixed[2], OpResult::Failed { code: ApplyErrorCode::ConstraintViolation, .. }),
        "flushed key is live"
    );
    assert!(matches!(mixed[3], OpResult::Failed { code: ApplyErrorCode::Conflict, .. }), "stale _seq of a flushed row");
    assert_eq!(results[3], vec![OpResult::Done { affected: 1 }], "second flush: the update (the tombstone is dropped)");
    assert_eq!(results[5], vec![OpResult::Done { affected: 9 }], "compaction keeps 0 (new), 2..9");
    assert_eq!(results[6], vec![OpResult::Done { affected: 1 }], "a deleted flushed key can be inserted again");

    // What a query sees: hot 1 and 10..14, one live file with 0 and 2..9, nothing superseded.
    let reader = RowReader::new(db_a.clone(), Arc::new(FileStore::folder(a.path().join("storage"))));
    let view = reader.table_view(GroupId::SharedShard(0), 1, "", &Default::default()).unwrap();
    let hot: Vec<i64> = view
        .hot
        .iter()
        .map(|r| match r.values[0] {
            Value::BigInt(k) => k,
            _ => -1,
        })
        .collect();
    assert_eq!(hot, vec![1, 10, 11, 12, 13, 14]);
    // A primary-key range reads only that part of the hot tier.
    let range = kalamdb_projections::cold::PkRange {
        low: Some(Value::BigInt(11)),
        high: Some(Value::BigInt(13)),
        column: None,
    };
    let part = reader.table_view(GroupId::SharedShard(0), 1, "", &range).unwrap();
    let keys: Vec<&Value> = part.hot.iter().map(|r| &r.values[0]).collect();
    assert_eq!(keys, vec![&Value::BigInt(11), &Value::BigInt(12), &Value::BigInt(13)]);
    assert!(view.superseded.is_empty());
    assert_eq!(view.files.len(), 1);
    let batches = kalamdb_projections::cold::read_parquet(&view.files[0].0).unwrap();
    let mut cold: Vec<(i64, String)> = Vec::new();
    for b in &batches {
        let ids = b.column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
        let vs = b.column(1).as_any().downcast_ref::<arrow::array::StringViewArray>().unwrap();
        for i in 0..b.num_rows() {
            cold.push((ids.value(i), vs.value(i).to_string()));
        }
    }
    let mut expected = vec![(0, "new".to_string())];
    expected.extend((2..10).map(|k| (k, "v".to_string())));
    assert_eq!(cold, expected);

    // A snapshot carries the files: a node with its own storage directory gets the same ones.
    let snap = sm_a.get_snapshot_builder().await.build_snapshot().await.unwrap();
    // The node that built it holds the file by a hard link beside the records, not a copy.
    let link_dirs: Vec<std::path::PathBuf> = std::fs::read_dir(a.path().join("snap"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.to_string_lossy().ends_with(".snap.files"))
        .collect();
    assert_eq!(link_dirs.len(), 1, "{link_dirs:?}");
    {
        use std::os::unix::fs::MetadataExt;
        let link = std::fs::metadata(link_dirs[0].join("0")).unwrap();
        let file = std::fs::metadata(&view.files[0].0).unwrap();
        assert_eq!((link.dev(), link.ino()), (file.dev(), file.ino()), "a hard link to the live file");
        assert!(link_dirs[0].join("1").symlink_metadata().is_err(), "one live file, one link");
    }
    let c = tempfile::tempdir().unwrap();
    let db_c = LogDb::open(&c.path().join("rocksdb"), &PROJECTION_CFS).unwrap();
    let mut sm_c = Projection::open(db_c.clone(), GroupId::SharedShard(0), Catalog::new(), env(c.path())).unwrap();
    sm_c.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
    assert_eq!(digest_group(db_c.db(), GroupId::SharedShard(0)).unwrap(), digest_a);
    let reader_c = RowReader::new(db_c.clone(), Arc::new(FileStore::folder(c.path().join("storage"))));
    let view_c = reader_c.table_view(GroupId::SharedShard(0), 1, "", &Default::default()).unwrap();
    assert_eq!(view_c.files.len(), 1);
    assert_eq!(std::fs::read(&view_c.files[0].0).unwrap(), std::fs::read(&view.files[0].0).unwrap());
}

/// A reader whose lookup cache saw every earlier state answers keyed reads of flushed rows
/// exactly as a reader with an empty cache, after each entry of a log with two flushes and a
/// compaction: the cached file lists follow the manifest. And it never needs the scan
/// fallback (`cold_row` answering `None`) for a version the stub names.
#[tokio::test]
async fn keyed_reads_through_a_warm_cache_follow_flushes_and_compactions() {
    use kalamdb_projections::rows::Lookup;
    let dir = tempfile::tempdir().unwrap();
    let db = LogDb::open(&dir.path().join("rocksdb"), &PROJECTION_CFS).unwrap();
    let group = GroupId::SharedShard(0);
    let mut sm = Projection::open(db.clone(), group, Catalog::new(), env(dir.path())).unwrap();
    let files = || Arc::new(FileStore::folder(dir.path().join("storage")));
    let warm = RowReader::new(db.clone(), files());
    let mut def = table_def();
    def.table_id = 1;
    let mut cold_reads = 0;
    for e in cold_log() {
        sm.apply(vec![e]).await.unwrap();
        let fresh = RowReader::new(db.clone(), files());
        for k in 0..15 {
            let key = Value::BigInt(k);
            let found = warm.lookup(group, 1, "", &key).unwrap();
            assert_eq!(found, fresh.lookup(group, 1, "", &key).unwrap());
            let Lookup::Cold(seq) = found else { continue };
            let row = warm.cold_row(group, &def, "", &key, seq).unwrap();
            assert_eq!(row, fresh.cold_row(group, &def, "", &key, seq).unwrap(), "key {k}");
            let row = row.unwrap_or_else(|| panic!("key {k}: version {seq} is in no live file"));
            assert_eq!((row.values[0].clone(), row.seq), (key, seq));
            cold_reads += 1;
        }
    }
    // 10 after the first flush, then 9 per state until the compaction, 9 after it.
    assert!(cold_reads >= 40, "{cold_reads} keyed reads of flushed rows");
}

/// Apply `log` to every replica; their results and digests must agree. Returns the results.
async fn apply_to_all(
    replicas: &mut [(tempfile::TempDir, Arc<LogDb>, Projection)],
    group: GroupId,
    log: &[Entry],
) -> Vec<Vec<OpResult>> {
    let mut outs = Vec::new();
    for (_, db, sm) in replicas.iter_mut() {
        let results: Vec<Vec<OpResult>> =
            sm.apply(log.to_vec()).await.unwrap().into_iter().map(|r| r.results).collect();
        outs.push((results, digest_group(db.db(), group).unwrap()));
    }
    assert!(outs.windows(2).all(|w| w[0] == w[1]), "replicas differ");
    outs.swap_remove(0).0
}

/// Each key is flushed and its flushed version holds `v` = the given text: found by its stub,
/// or still hot (not settled) and then in a live file too.
fn assert_cold_values(reader: &RowReader, group: GroupId, def: &TableDef, want: &[(i64, &str)]) {
    use kalamdb_projections::rows::Lookup;
    for (k, v) in want {
        let key = Value::BigInt(*k);
        let at = match reader.lookup(group, 1, "", &key).unwrap() {
            Lookup::Cold(at) => at,
            Lookup::Hot(row) if !row.deleted => row.seq,
            other => panic!("key {k}: {other:?}"),
        };
        let found = reader.cold_row(group, def, "", &key, at).unwrap().unwrap_or_else(|| panic!("key {k}"));
        assert_eq!(found.values[1], Value::Text((*v).into()), "key {k}");
    }
}

/// A compaction merges only the files written after the scope's newest sealed file (one of at
/// least `COMPACT_SEALED_ROWS_MIN` rows): the sealed file and the markers of its superseded
/// versions stay, the small files merge without their superseded versions, and every key
/// still reads its newest value. Once a quarter of the sealed file's rows are superseded, a
/// compaction rewrites it on its own. Two replicas agree byte for byte throughout.
#[tokio::test]
async fn compaction_leaves_sealed_files_alone_until_they_hold_many_dead_rows() {
    use kalamdb_projections::cold::{COMPACT_SEALED_DEAD_SHARE_DEN, COMPACT_SEALED_ROWS_MIN};
    use kalamdb_projections::rows::Lookup;
    let sealed_rows = COMPACT_SEALED_ROWS_MIN as i64;
    let deleted = sealed_rows / COMPACT_SEALED_DEAD_SHARE_DEN as i64;
    let mut def = table_def();
    def.table_id = 1;
    let shared = String::new();
    let flush = || Op::Flush { table: def.clone(), scope: None };
    let compact = || Op::Compact { table: def.clone(), scope: None };
    let update = |k: i64, v: &str, at: u64| Op::Update {
        schema_version: 1,
        table_id: 1,
        scope: String::new(),
        rows: vec![row(k, v, Some(at))],
    };
    let first = vec![
        entry(
            2,
            vec![Op::Insert {
                schema_version: 1,
                table_id: 1,
                scope: shared.clone(),
                rows: (0..sealed_rows).map(|k| row(k, "v", None)).collect(),
            }],
        ),
        entry(3, vec![flush()]),
        entry(4, vec![update(0, "a", seq(2, 0))]),
        entry(
            5,
            vec![Op::Insert {
                schema_version: 1,
                table_id: 1,
                scope: shared.clone(),
                rows: (-10..0).map(|k| row(k, "w", None)).collect(),
            }],
        ),
        entry(6, vec![flush()]),
        entry(7, vec![update(0, "b", seq(4, 0)), update(1, "c", seq(2, 1)), update(-1, "d", seq(5, 9))]),
        entry(8, vec![flush()]),
        entry(9, vec![compact()]),
        entry(10, vec![compact()]),
    ];
    // Then delete keys 2.. of the sealed file until, with 0 and 1 updated, a quarter is dead.
    let second = vec![
        entry(
            11,
            vec![Op::Delete {
                schema_version: 1,
                table_id: 1,
                scope: shared.clone(),
                rows: (2..deleted).map(|k| row(k, "", Some(seq(2, k as u64)))).collect(),
            }],
        ),
        entry(12, vec![flush()]),
        entry(13, vec![compact()]),
    ];
    let group = GroupId::SharedShard(0);
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let db = LogDb::open(&dir.path().join("rocksdb"), &PROJECTION_CFS).unwrap();
        let sm = Projection::open(db.clone(), group, Catalog::new(), env(dir.path())).unwrap();
        replicas.push((dir, db, sm));
    }
    let results = apply_to_all(&mut replicas, group, &first).await;
    assert_eq!(results[1], vec![OpResult::Done { affected: sealed_rows as u64 }], "the sealed file");
    assert_eq!(results[4], vec![OpResult::Done { affected: 11 }], "second flush: 0 (a) and -10..-1");
    assert_eq!(results[6], vec![OpResult::Done { affected: 3 }], "third flush: 0 (b), 1 (c), -1 (d)");
    // Merged: the second and third flush files, less 0 (a) and -1 (w) which they supersede.
    assert_eq!(results[7], vec![OpResult::Done { affected: 12 }], "compaction merges the small files only");
    assert_eq!(results[8], vec![OpResult::Done { affected: 0 }], "one small file and no marker: nothing to do");

    let (dir, db, _) = &replicas[0];
    let reader = RowReader::new(db.clone(), Arc::new(FileStore::folder(dir.path().join("storage"))));
    let view = reader.table_view(group, 1, "", &Default::default()).unwrap();
    assert_eq!(view.files.len(), 2, "the sealed file and the compaction's output");
    // The sealed file's versions of 0 and 1 stay superseded; the merged files' markers are gone.
    let mut superseded = view.superseded.clone();
    superseded.sort_unstable();
    assert_eq!(superseded, vec![seq(2, 0), seq(2, 1)]);
    assert_cold_values(
        &reader,
        group,
        &def,
        &[(0, "b"), (1, "c"), (2, "v"), (-1, "d"), (-2, "w"), (sealed_rows - 1, "v")],
    );

    let later = apply_to_all(&mut replicas, group, &second).await;
    let alive = (sealed_rows - deleted) as u64;
    assert_eq!(later[2], vec![OpResult::Done { affected: alive }], "the sealed file rewritten without its dead rows");
    let (dir, db, _) = &replicas[0];
    let reader = RowReader::new(db.clone(), Arc::new(FileStore::folder(dir.path().join("storage"))));
    let view = reader.table_view(group, 1, "", &Default::default()).unwrap();
    assert_eq!(view.files.len(), 2, "the rewritten range and the earlier compaction's output");
    assert!(view.superseded.is_empty(), "every marker went with its version");
    let gone = reader.lookup(group, 1, "", &Value::BigInt(2)).unwrap();
    assert!(
        matches!(&gone, Lookup::Absent | Lookup::Hot(kalamdb_projections::StoredRow { deleted: true, .. })),
        "deleted: {gone:?}"
    );
    assert_cold_values(&reader, group, &def, &[(0, "b"), (1, "c"), (deleted, "v"), (-1, "d")]);
}

/// Every live row a scan sees (hot rows, then file rows less the superseded versions) as
/// key → (`_seq`, v); a key seen twice is a bug (a flushed row read both hot and from its
/// file).
fn scan(reader: &RowReader, group: GroupId) -> BTreeMap<i64, (u64, String)> {
    use arrow::array::{Array, Int64Array, StringViewArray, UInt64Array};
    let view = reader.table_view(group, 1, "", &Default::default()).unwrap();
    let mut out = BTreeMap::new();
    for r in &view.hot {
        let (Value::BigInt(k), Value::Text(v)) = (&r.values[0], &r.values[1]) else { panic!("{r:?}") };
        assert!(out.insert(*k, (r.seq, v.clone())).is_none(), "key {k} twice");
    }
    for (path, _) in &view.files {
        for b in kalamdb_projections::cold::read_parquet(path).unwrap() {
            let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            let vs = b.column(1).as_any().downcast_ref::<StringViewArray>().unwrap();
            let seqs = b.column_by_name("_seq").unwrap();
            let seqs: Vec<u64> = match seqs.as_any().downcast_ref::<UInt64Array>() {
                Some(a) => a.values().to_vec(),
                None => seqs
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("_seq is a 64-bit integer")
                    .values()
                    .iter()
                    .map(|s| *s as u64)
                    .collect(),
            };
            for (i, seq) in seqs.into_iter().enumerate() {
                if view.superseded.contains(&seq) {
                    continue;
                }
                let k = ids.value(i);
                assert!(out.insert(k, (seq, vs.value(i).to_string())).is_none(), "key {k} twice");
            }
        }
    }
    out
}

/// Every key's newest version as keyed reads see it: a hot row, or the flushed version its
/// stub names, read from its file.
fn keyed(reader: &RowReader, group: GroupId, def: &TableDef, keys: std::ops::Range<i64>) -> Vec<Option<(u64, Value)>> {
    use kalamdb_projections::rows::Lookup;
    keys.map(|k| {
        let key = Value::BigInt(k);
        match reader.lookup(group, 1, "", &key).unwrap() {
            Lookup::Hot(r) if r.deleted => None,
            Lookup::Hot(r) => Some((r.seq, r.values[1].clone())),
            Lookup::Cold(at) => {
                let r = reader.cold_row(group, def, "", &key, at).unwrap().expect("the stub's version is in a file");
                Some((r.seq, r.values[1].clone()))
            }
            Lookup::Absent => None,
        }
    })
    .collect()
}

/// Table 1, whose shared scope the settling tests flush and settle.
fn table_1() -> TableDef {
    TableDef { table_id: 1, ..table_def() }
}

fn settle_at(index: u64) -> Entry {
    entry(index, vec![Op::Settle { table_id: 1, scope: String::new() }])
}

fn flush_at(index: u64) -> Entry {
    entry(index, vec![Op::Flush { table: table_1(), scope: None }])
}

/// Rows the settling tests insert: two `Settle`s' worth and a hundred, so a flush of them is
/// settled in three ops (and not inside the flush).
fn settling_rows() -> i64 {
    kalamdb_projections::cold::SETTLE_ROWS_MAX as i64 * 2 + 100
}

/// A flush leaves its rows in RocksDB until `Settle` ops replace them by stubs, a bounded
/// number per op. Writes that replace flushed rows before they are settled (an update, a
/// delete, an insert over a flushed tombstone, a refused duplicate) must do what they do once
/// settled: a replica whose log settles in pieces around those writes ends byte-identical to
/// one that settled each flush at once, scans and keyed reads agree between the two along the
/// way, and no flushed row is left in RocksDB at the end.
#[tokio::test]
async fn settling_in_pieces_ends_where_settling_at_once_does() {
    use kalamdb_projections::cold::SETTLE_ROWS_MAX;
    let n = settling_rows();
    let def = table_1();
    let scope = String::new();
    let group = GroupId::SharedShard(0);
    let (settle, flush) = (settle_at, flush_at);
    let ins = |k: i64, v: &str| Op::Insert {
        schema_version: 1,
        table_id: 1,
        scope: scope.clone(),
        rows: vec![row(k, v, None)],
    };
    let start = vec![
        entry(
            10,
            vec![Op::Insert {
                schema_version: 1,
                table_id: 1,
                scope: scope.clone(),
                rows: (0..n).map(|k| row(k, "v", None)).collect(),
            }],
        ),
        entry(
            11,
            vec![Op::Delete {
                schema_version: 1,
                table_id: 1,
                scope: scope.clone(),
                rows: vec![row(n - 3, "", Some(seq(10, (n - 3) as u64)))],
            }],
        ),
        flush(20),
    ];
    // Keys 1 (settled in both), n-1 and n-2 (flushed, not yet settled in the lazy log), n-3
    // (a flushed tombstone, inserted again), n (new), 2 (a refused duplicate).
    let writes = entry(
        100,
        vec![
            Op::Update {
                schema_version: 1,
                table_id: 1,
                scope: scope.clone(),
                rows: vec![row(1, "u1", Some(seq(10, 1)))],
            },
            Op::Update {
                schema_version: 1,
                table_id: 1,
                scope: scope.clone(),
                rows: vec![row(n - 1, "u", Some(seq(10, (n - 1) as u64)))],
            },
            Op::Delete {
                schema_version: 1,
                table_id: 1,
                scope: scope.clone(),
                rows: vec![row(n - 2, "", Some(seq(10, (n - 2) as u64)))],
            },
            ins(n - 3, "again"),
            ins(n, "new"),
            ins(2, "dup"),
        ],
    );
    // The two logs phase by phase: they differ only in their `Settle` ops.
    let phases: Vec<(Vec<Entry>, Vec<Entry>)> = vec![
        (start.clone(), start.clone()),
        ((21..25).map(settle).collect(), vec![settle(21)]),
        (vec![writes.clone()], vec![writes.clone()]),
        (vec![settle(150)], (150..154).map(settle).collect()),
        (
            [flush(200)].into_iter().chain((201..205).map(settle)).collect(),
            [flush(200)].into_iter().chain((201..205).map(settle)).collect(),
        ),
    ];
    let open = || {
        let dir = tempfile::tempdir().unwrap();
        let db = LogDb::open(&dir.path().join("rocksdb"), &PROJECTION_CFS).unwrap();
        let sm = Projection::open(db.clone(), group, Catalog::new(), env(dir.path())).unwrap();
        let reader = RowReader::new(db.clone(), Arc::new(FileStore::folder(dir.path().join("storage"))));
        (dir, db, sm, reader)
    };
    let (_de, db_e, mut sm_e, reader_e) = open();
    let (_dl, db_l, mut sm_l, reader_l) = open();
    let mut results: (Vec<Vec<OpResult>>, Vec<Vec<OpResult>>) = (Vec::new(), Vec::new());
    for (i, (eager, lazy)) in phases.iter().enumerate() {
        for e in eager {
            results.0.push(sm_e.apply(vec![e.clone()]).await.unwrap().remove(0).results);
        }
        for e in lazy {
            results.1.push(sm_l.apply(vec![e.clone()]).await.unwrap().remove(0).results);
        }
        assert_eq!(scan(&reader_e, group), scan(&reader_l, group), "scans differ after phase {i}");
        assert_eq!(keyed(&reader_e, group, &def, 0..n + 1), keyed(&reader_l, group, &def, 0..n + 1), "phase {i}");
        // Right after the writes, the keys they replaced carry the stubs settling would have
        // left (the flushed version each write superseded), or none for a tombstone.
        if i == 2 {
            for k in [1, n - 1, n - 2, n - 3, n] {
                let key = kalamdb_projections::keys::row_key(group, 1, "", &Value::BigInt(k));
                let stub = |db: &Arc<LogDb>| kalamdb_projections::cold::stub_seq(db.db(), &key, None).unwrap();
                assert_eq!(stub(&db_e), stub(&db_l), "key {k}");
            }
        }
    }
    // Start is 3 entries: the lazy log's first settle is its 4th, one op's worth of rows.
    assert_eq!(results.1[3], vec![OpResult::Settled { rows: SETTLE_ROWS_MAX as u64, more: true }]);
    let writes_result = |r: &Vec<Vec<OpResult>>| r.iter().find(|x| x.len() == 6).cloned().unwrap();
    let w = writes_result(&results.0);
    assert_eq!(w, writes_result(&results.1));
    assert_eq!(&w[..5], &vec![OpResult::Done { affected: 1 }; 5][..]);
    assert!(matches!(w[5], OpResult::Failed { code: ApplyErrorCode::ConstraintViolation, .. }), "2 is live");
    let final_scan = scan(&reader_l, group);
    assert_eq!(final_scan.len() as i64, n, "n - 1 live keys of the first insert, plus n");
    assert_eq!(final_scan[&(n - 3)].1, "again");
    assert_eq!(final_scan[&(n - 1)].1, "u");
    assert!(!final_scan.contains_key(&(n - 2)));
    assert_eq!(
        digest_group(db_e.db(), group).unwrap(),
        digest_group(db_l.db(), group).unwrap(),
        "settling in pieces ends elsewhere"
    );
    let rows_cf = db_l.db().cf_handle("rows").unwrap();
    assert_eq!(db_l.db().iterator_cf(rows_cf, rocksdb::IteratorMode::Start).count(), 0, "a flushed row is still hot");
    // The first insert's keys count up with its versions, so their stubs are runs: 0, then 1
    // (updated), 2 ..= n - 4 (n - 3 was deleted before the flush), and one each for n - 3,
    // n - 1 and n (written again by one entry, versions not in key order); n - 2 is deleted.
    let sp = kalamdb_projections::keys::table_scope_prefix(group, 1, "");
    let stubs = kalamdb_projections::cold::stub_range(&sp);
    let cold_cf = db_l.db().cf_handle("cold").unwrap();
    let stored = db_l
        .db()
        .prefix_iterator_cf(cold_cf, &stubs)
        .map(|item| item.unwrap())
        .take_while(|(k, _)| k.starts_with(&stubs))
        .count();
    assert_eq!(stored, 6, "stub records of {n} flushed keys");

    // The lazy log applied in one call ends in the same bytes.
    let (_d1, db_1, mut sm_1, _) = open();
    sm_1.apply(phases.iter().flat_map(|(_, lazy)| lazy.clone()).collect::<Vec<_>>()).await.unwrap();
    assert_eq!(digest_group(db_1.db(), group).unwrap(), digest_group(db_l.db(), group).unwrap());
}

/// A flush while an earlier one's settling is under way: its rows that sort before the
/// settling's cursor are settled too (the cursor moves back to the first of them, not to the
/// scope's start), and the scope ends where a replica that settled in between ends.
#[tokio::test]
async fn a_flush_during_settling_moves_the_cursor_back_to_its_rows() {
    use kalamdb_projections::cold::stored_head;
    let n = settling_rows();
    let scope = String::new();
    let group = GroupId::SharedShard(0);
    let (settle, flush) = (settle_at, flush_at);
    let insert = |index: u64, keys: Vec<i64>| {
        entry(
            index,
            vec![Op::Insert {
                schema_version: 1,
                table_id: 1,
                scope: scope.clone(),
                rows: keys.into_iter().map(|k| row(k, "v", None)).collect(),
            }],
        )
    };
    // Keys -5 and n + 5: before the cursor after one settle, and after it.
    let mut lazy = vec![insert(10, (0..n).collect()), flush(20), settle(21), insert(30, vec![-5, n + 5]), flush(40)];
    lazy.extend((41..51).map(settle));
    let mut eager = vec![insert(10, (0..n).collect()), flush(20)];
    eager.extend((21..25).map(settle));
    eager.extend([insert(30, vec![-5, n + 5]), flush(40)]);
    eager.extend((41..51).map(settle));
    let mut digests = Vec::new();
    for log in [lazy, eager] {
        let dir = tempfile::tempdir().unwrap();
        let db = LogDb::open(&dir.path().join("rocksdb"), &PROJECTION_CFS).unwrap();
        let mut sm = Projection::open(db.clone(), group, Catalog::new(), env(dir.path())).unwrap();
        let mut cursors = Vec::new();
        let sp = kalamdb_projections::keys::table_scope_prefix(group, 1, "");
        for e in log {
            let index = e.log_id.index;
            sm.apply(vec![e]).await.unwrap();
            if index == 40 {
                cursors.push(stored_head(db.db(), &sp).unwrap().unwrap().settle_from);
            }
        }
        let rows_cf = db.db().cf_handle("rows").unwrap();
        assert_eq!(db.db().iterator_cf(rows_cf, rocksdb::IteratorMode::Start).count(), 0, "a flushed row is still hot");
        assert_eq!(stored_head(db.db(), &sp).unwrap().unwrap().settle_from, None);
        let reader = RowReader::new(db.clone(), Arc::new(FileStore::folder(dir.path().join("storage"))));
        let all = scan(&reader, group);
        assert_eq!(all.len() as i64, n + 2);
        assert!(matches!(
            reader.lookup(group, 1, "", &Value::BigInt(-5)).unwrap(),
            kalamdb_projections::rows::Lookup::Cold(_)
        ));
        digests.push((digest_group(db.db(), group).unwrap(), cursors));
        drop(dir);
    }
    // The lazy replica's cursor went back to key -5 (encoded), not to the scope's start.
    let mut minus_five = Vec::new();
    kalamdb_projections::keys::encode_pk(&Value::BigInt(-5), &mut minus_five);
    assert_eq!(digests[0].1, vec![Some(minus_five)]);
    assert_eq!(digests[1].1, vec![None], "the settled replica's small flush settles itself");
    assert_eq!(digests[0].0, digests[1].0);
}

/// Rows written after a flush sort after its last row in a bulk load: settling stops at that
/// row instead of walking them (they are not flushed), so the flush's rows are settled in as
/// many ops as they fill and the rows behind stay hot.
#[tokio::test]
async fn settling_stops_at_the_last_flushed_row() {
    use kalamdb_projections::cold::{SETTLE_ROWS_MAX, stored_head};
    let n = settling_rows();
    let behind = 3 * SETTLE_ROWS_MAX as i64;
    let group = GroupId::SharedShard(0);
    let insert = |index: u64, keys: std::ops::Range<i64>| {
        entry(
            index,
            vec![Op::Insert {
                schema_version: 1,
                table_id: 1,
                scope: String::new(),
                rows: keys.map(|k| row(k, "v", None)).collect(),
            }],
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let db = LogDb::open(&dir.path().join("rocksdb"), &PROJECTION_CFS).unwrap();
    let mut sm = Projection::open(db.clone(), group, Catalog::new(), env(dir.path())).unwrap();
    sm.apply(vec![insert(10, 0..n), flush_at(20), insert(30, n..n + behind)]).await.unwrap();
    let mut results = Vec::new();
    for index in 31..34 {
        results.extend(sm.apply(vec![settle_at(index)]).await.unwrap().remove(0).results);
    }
    let op = SETTLE_ROWS_MAX as u64;
    assert_eq!(
        results,
        vec![
            OpResult::Settled { rows: op, more: true },
            OpResult::Settled { rows: op, more: true },
            OpResult::Settled { rows: n as u64 - 2 * op, more: false },
        ]
    );
    let sp = kalamdb_projections::keys::table_scope_prefix(group, 1, "");
    let head = stored_head(db.db(), &sp).unwrap().unwrap();
    assert_eq!((head.settle_from, head.settle_to), (None, None));
    let rows_cf = db.db().cf_handle("rows").unwrap();
    assert_eq!(db.db().iterator_cf(rows_cf, rocksdb::IteratorMode::Start).count() as i64, behind);
    let reader = RowReader::new(db.clone(), Arc::new(FileStore::folder(dir.path().join("storage"))));
    assert_eq!(scan(&reader, group).len() as i64, n + behind);
}
