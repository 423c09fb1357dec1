//! Schema floors (`Op::SchemaFloor`): a data group refuses row ops planned on a schema version
//! below the table's floor, in the entry that raised it and after, in transactions too, and
//! still after the table was purged; floors never go down; history replay skips the refused
//! ops; two replicas applying the same log in different chunks end byte-identical.

mod common;

use common::{entry, membership_entry};

use std::path::Path;

use kalamdb_log::command::ApplyErrorCode;
use kalamdb_log::types::Entry;
use kalamdb_log::{GroupId, Op, OpResult, RowWrite, TableDef, TableType, TxWrite, Value, WriteKind};
use kalamdb_projections::RowReader;

const GROUP: GroupId = GroupId::SharedShard(0);

fn table() -> TableDef {
    common::id_text_table(1, "t", TableType::Shared)
}

fn row(k: i64, expected_seq: Option<u64>) -> RowWrite {
    common::id_text_row(k, &format!("v{k}"), expected_seq)
}

fn insert(k: i64, schema_version: u32) -> Op {
    Op::Insert { table_id: 1, scope: String::new(), rows: vec![row(k, None)], schema_version }
}

fn log() -> Vec<Entry> {
    let membership = membership_entry();
    let seq0 = 2u64 << 20;
    vec![
        membership,
        entry(2, vec![insert(0, 1), insert(1, 1)]),
        // The floor counts for the ops after it in its own entry.
        entry(3, vec![Op::SchemaFloor { table_id: 1, version: 2 }, insert(2, 1)]),
        entry(
            4,
            vec![
                insert(3, 1),
                Op::Update { table_id: 1, scope: String::new(), rows: vec![row(0, Some(seq0))], schema_version: 1 },
                Op::Transaction {
                    writes: vec![TxWrite {
                        kind: WriteKind::Delete,
                        table_id: 1,
                        scope: String::new(),
                        rows: vec![row(1, Some(seq0 + 1))],
                        schema_version: 1,
                    }],
                },
                insert(4, 2),
            ],
        ),
        // A lower floor changes nothing.
        entry(5, vec![Op::SchemaFloor { table_id: 1, version: 1 }, insert(5, 2), insert(6, 1)]),
        // A drop raises the floor past the version, and the purge keeps it.
        entry(6, vec![Op::SchemaFloor { table_id: 1, version: 3 }, Op::PurgeTable { table_id: 1 }]),
        entry(7, vec![insert(7, 2)]),
    ]
}

async fn apply(dir: &Path, chunk: usize) -> (Vec<Vec<OpResult>>, String, RowReader) {
    common::apply_log(dir, GROUP, log(), chunk).await
}

fn stale(r: &OpResult) -> bool {
    matches!(r, OpResult::Failed { code: ApplyErrorCode::StaleSchema, .. })
}

#[tokio::test]
async fn writes_planned_below_the_floor_are_refused_and_replay_skips_them() {
    let a = tempfile::tempdir().unwrap();
    let (results, digest, reader) = apply(a.path(), 1).await;
    let done = |n| OpResult::Done { affected: n };
    assert_eq!(results[1], vec![done(1), done(1)]);
    assert_eq!(results[2][0], done(1), "the floor was raised");
    assert!(stale(&results[2][1]), "an insert after the floor in the same entry: {:?}", results[2][1]);
    assert!(results[3][..3].iter().all(stale), "insert, update and transaction on version 1: {:?}", results[3]);
    assert_eq!(results[3][3], done(1), "an insert planned on version 2 passes");
    assert_eq!(results[4][..2], [done(0), done(1)], "a lower floor changes nothing");
    assert!(stale(&results[4][2]));
    assert!(stale(&results[6][0]), "the floor outlives the purge of a dropped table: {:?}", results[6]);

    let keys = |rows: Vec<kalamdb_projections::StoredRow>| -> Vec<Value> {
        rows.into_iter().filter(|r| !r.deleted).map(|r| r.values[0].clone()).collect()
    };
    let expected: Vec<Value> = [0, 1, 4, 5].into_iter().map(Value::BigInt).collect();
    assert_eq!(keys(reader.as_of(GROUP, &table(), "", 5).unwrap()), expected, "replay skips the refused ops");
    let view = reader.table_view(GROUP, 1, "", &Default::default()).unwrap();
    assert!(keys(view.hot).is_empty(), "purged, and the late insert refused");

    let other = tempfile::tempdir().unwrap();
    let (results_b, digest_b, _) = apply(other.path(), 10).await;
    assert_eq!(results, results_b);
    assert_eq!(digest, digest_b);
}
