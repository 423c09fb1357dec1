//! Apply is deterministic: the same log applied to two fresh projections yields byte-identical
//! state (equal digests), and a snapshot installed elsewhere reproduces it exactly.

use std::collections::BTreeMap;

use kalamdb_log::types::{Entry, NodeAddr};
use kalamdb_log::{
    ColumnDef, DataType, DefaultExpr, EncodedCommand, GroupId, LogCommand, LogDb, MetaGroup, Op, OpResult, RowWrite,
    TableDef, TableType, Value,
};
use kalamdb_projections::{Catalog, PROJECTION_CFS, Projection, digest_group};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, LogId, Membership};

fn entry(index: u64, ops: Vec<Op>) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(EncodedCommand::encode(&LogCommand { ops }).unwrap()),
    }
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
            },
            ColumnDef {
                name: "v".into(),
                data_type: DataType::Text,
                nullable: true,
                primary_key: false,
                default: None,
            },
        ],
        options: vec![],
        created_at_micros: 42,
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
        data.push(entry(index, vec![Op::Insert { table_id: 1, scope: String::new(), rows }]));
        index += 1;
    }
    // Row 0 was written at index 2, ordinal 0: its _seq is (2 << 20).
    data.push(entry(
        index,
        vec![
            Op::Update { table_id: 1, scope: String::new(), rows: vec![row(0, "new", Some(2 << 20))] },
            Op::Update { table_id: 1, scope: String::new(), rows: vec![row(1, "stale", Some(12345))] },
            Op::Delete { table_id: 1, scope: String::new(), rows: vec![row(5, "", Some((2 << 20) | 5))] },
            Op::Insert { table_id: 2, scope: "alice".into(), rows: vec![row(1, "x", None)] },
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
    let mut cat_sm = Projection::open(db.clone(), cat_group, catalog.clone(), &dir.join("snap")).unwrap();
    let mut data_sm = Projection::open(db.clone(), data_group, catalog, &dir.join("snap")).unwrap();
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
    let mut sm_c =
        Projection::open(db.clone(), GroupId::SharedShard(0), Catalog::new(), &c.path().join("snap")).unwrap();
    sm_c.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
    assert_eq!(digest_group(db.db(), GroupId::SharedShard(0)).unwrap(), da);
    let (applied, _) = sm_c.applied_state().await.unwrap();
    assert_eq!(applied, snap.meta.last_log_id);
    // And it survives reopening (the snapshot file is the current snapshot).
    let current = sm_c.get_current_snapshot().await.unwrap().expect("snapshot file");
    assert_eq!(current.meta.last_log_id, snap.meta.last_log_id);
}
