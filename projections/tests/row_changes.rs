//! The change records of row ops are the same whether each entry is applied alone or all in
//! one apply call, where later ops read the versions staged by earlier ones (the applier's
//! overlay) instead of RocksDB.

mod common;

use common::{entry, id_text_row, id_text_table, membership_entry};

use kalamdb_log::types::Entry;
use kalamdb_log::{GroupId, Op, OpResult, RowWrite, TableType, Value};
use kalamdb_projections::changes::{ChangeEntry, ChangeKind, read_range};

const GROUP: GroupId = GroupId::SharedShard(0);

fn seq(index: u64, ordinal: u64) -> u64 {
    (index << 20) | ordinal
}

fn op(kind: &str, rows: Vec<RowWrite>) -> Op {
    let (table_id, scope, schema_version) = (1, String::new(), 1);
    match kind {
        "insert" => Op::Insert { table_id, scope, rows, schema_version },
        "update" => Op::Update { table_id, scope, rows, schema_version },
        _ => Op::Delete { table_id, scope, rows, schema_version },
    }
}

/// Three rows, then row 0 updated twice (the second reads the first's version), row 1 deleted
/// (its statement carries the values it read), row 3 inserted and updated in one entry and row
/// 4 inserted after that update (its `_seq` counts the update's row).
fn log() -> Vec<Entry> {
    vec![
        membership_entry(),
        entry(2, vec![op("insert", (0..3).map(|k| id_text_row(k, "a", None)).collect())]),
        entry(3, vec![op("update", vec![id_text_row(0, "b", Some(seq(2, 0)))])]),
        entry(4, vec![op("delete", vec![id_text_row(1, "a", Some(seq(2, 1)))])]),
        entry(5, vec![op("update", vec![id_text_row(0, "c", Some(seq(3, 0)))])]),
        entry(
            6,
            vec![
                op("insert", vec![id_text_row(3, "x", None)]),
                op("update", vec![id_text_row(3, "y", Some(seq(6, 0)))]),
                op("insert", vec![id_text_row(4, "z", None)]),
            ],
        ),
    ]
}

/// Every entry's results, the change records, and the live rows `(key, value, _seq)`.
async fn records(chunk: usize) -> (Vec<Vec<OpResult>>, Vec<(u64, ChangeEntry)>, Vec<(Value, Value, u64)>) {
    let dir = tempfile::tempdir().unwrap();
    let (results, _, reader) = common::apply_log(dir.path(), GROUP, log(), chunk).await;
    let def = id_text_table(1, "t1", TableType::Shared);
    let live = reader.as_of(GROUP, &def, "", 6).unwrap();
    let live = live.iter().filter(|r| !r.deleted).map(|r| (r.values[0].clone(), r.values[1].clone(), r.seq)).collect();
    (results, read_range(reader.db(), GROUP, 1, 10, 100).unwrap(), live)
}

fn row(k: i64, v: &str) -> Vec<Value> {
    vec![Value::BigInt(k), Value::Text(v.into())]
}

#[tokio::test]
async fn row_changes_read_staged_versions_as_committed_ones() {
    let (results, alone, live) = records(1).await;
    let text = |s: &str| Value::Text(s.into());
    assert_eq!(
        live,
        vec![
            (Value::BigInt(0), text("c"), seq(5, 0)),
            (Value::BigInt(2), text("a"), seq(2, 2)),
            (Value::BigInt(3), text("y"), seq(6, 1)),
            (Value::BigInt(4), text("z"), seq(6, 2)),
        ]
    );
    for r in &results[1..] {
        assert!(r.iter().all(|r| matches!(r, OpResult::Done { affected } if *affected > 0)), "{results:?}");
    }
    let summary: Vec<(u64, ChangeKind, u64, Vec<Value>, Option<Vec<Value>>, Option<u64>)> = alone
        .iter()
        .flat_map(|(i, e)| {
            e.changes.iter().map(move |c| (*i, c.kind, c.seq, c.row.clone(), c.old_row.clone(), c.old_seq))
        })
        .collect();
    let expected = vec![
        (2, ChangeKind::Insert, seq(2, 0), row(0, "a"), None, None),
        (2, ChangeKind::Insert, seq(2, 1), row(1, "a"), None, None),
        (2, ChangeKind::Insert, seq(2, 2), row(2, "a"), None, None),
        (3, ChangeKind::Update, seq(3, 0), row(0, "b"), Some(row(0, "a")), Some(seq(2, 0))),
        (4, ChangeKind::Delete, seq(4, 0), vec![], Some(row(1, "a")), Some(seq(2, 1))),
        (5, ChangeKind::Update, seq(5, 0), row(0, "c"), Some(row(0, "b")), Some(seq(3, 0))),
        (6, ChangeKind::Insert, seq(6, 0), row(3, "x"), None, None),
        (6, ChangeKind::Update, seq(6, 1), row(3, "y"), Some(row(3, "x")), Some(seq(6, 0))),
        (6, ChangeKind::Insert, seq(6, 2), row(4, "z"), None, None),
    ];
    assert_eq!(summary, expected);

    // One apply call for the whole log: every later op reads what an earlier one staged.
    let (results_one_call, one_call, live_one_call) = records(10).await;
    assert_eq!(results, results_one_call);
    assert_eq!(alone, one_call);
    assert_eq!(live, live_one_call);
}
