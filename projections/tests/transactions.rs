//! `Op::Transaction` applies all or nothing, deterministically, and history replay (`AS OF`,
//! `REBUILD PROJECTION`) agrees with apply about which transactions applied, even when the
//! precondition that failed concerns another table than the one replayed.

mod common;

use common::{entry, membership_entry};

use std::path::Path;

use kalamdb_log::command::ApplyErrorCode;
use kalamdb_log::types::Entry;
use kalamdb_log::{GroupId, Op, OpResult, RowWrite, TableDef, TableType, TxWrite, Value, WriteKind};
use kalamdb_projections::RowReader;

const GROUP: GroupId = GroupId::SharedShard(0);

fn def(table_id: u64) -> TableDef {
    common::id_text_table(table_id, &format!("t{table_id}"), TableType::Shared)
}

fn row(k: i64, v: &str, expected_seq: Option<u64>) -> RowWrite {
    common::id_text_row(k, v, expected_seq)
}

fn seq(index: u64, ordinal: u64) -> u64 {
    (index << 20) | ordinal
}

fn write(kind: WriteKind, table_id: u64, rows: Vec<RowWrite>) -> TxWrite {
    TxWrite { kind, table_id, scope: String::new(), rows, schema_version: 1 }
}

/// Rows of tables 1 and 2, then: a transfer whose insert into table 2 collides (nothing of it
/// applies, table 1's update included), one that applies, one that writes a key twice, and a
/// plain insert after them whose `_seq` must not depend on the outcomes before it.
fn log() -> Vec<Entry> {
    let membership = membership_entry();
    vec![
        membership,
        entry(
            2,
            vec![
                Op::Insert {
                    schema_version: 1,
                    table_id: 1,
                    scope: String::new(),
                    rows: (0..3).map(|k| row(k, "a", None)).collect(),
                },
                Op::Insert { schema_version: 1, table_id: 2, scope: String::new(), rows: vec![row(0, "b", None)] },
            ],
        ),
        entry(
            3,
            vec![Op::Transaction {
                writes: vec![
                    write(WriteKind::Update, 1, vec![row(0, "aborted", Some(seq(2, 0)))]),
                    write(WriteKind::Insert, 2, vec![row(0, "dup", None)]),
                ],
            }],
        ),
        entry(
            4,
            vec![Op::Transaction {
                writes: vec![
                    write(WriteKind::Update, 1, vec![row(1, "ok", Some(seq(2, 1)))]),
                    write(WriteKind::Delete, 1, vec![row(2, "", Some(seq(2, 2)))]),
                    write(WriteKind::Insert, 2, vec![row(1, "new", None)]),
                ],
            }],
        ),
        entry(
            5,
            vec![
                Op::Transaction {
                    writes: vec![
                        write(WriteKind::Insert, 1, vec![row(5, "x", None)]),
                        write(WriteKind::Update, 1, vec![row(5, "y", Some(1))]),
                    ],
                },
                Op::Insert { schema_version: 1, table_id: 1, scope: String::new(), rows: vec![row(6, "after", None)] },
            ],
        ),
    ]
}

async fn apply(dir: &Path, chunk: usize) -> (Vec<Vec<OpResult>>, String, RowReader) {
    common::apply_log(dir, GROUP, log(), chunk).await
}

fn live(rows: &[kalamdb_projections::StoredRow]) -> Vec<(Value, Value, u64)> {
    rows.iter().filter(|r| !r.deleted).map(|r| (r.values[0].clone(), r.values[1].clone(), r.seq)).collect()
}

#[tokio::test]
async fn transactions_apply_whole_or_not_at_all_and_replay_agrees() {
    let a = tempfile::tempdir().unwrap();
    let (results, digest, reader) = apply(a.path(), 1).await;
    assert!(
        matches!(&results[2][0], OpResult::Failed { code: ApplyErrorCode::ConstraintViolation, .. }),
        "{:?}",
        results[2]
    );
    assert_eq!(results[3], vec![OpResult::Done { affected: 3 }]);
    match &results[4][0] {
        OpResult::Failed { code: ApplyErrorCode::ConstraintViolation, message } => {
            assert!(message.contains("twice"), "{message}")
        }
        other => panic!("a key written twice must fail the transaction: {other:?}"),
    }
    assert_eq!(results[4][1], OpResult::Done { affected: 1 });

    let t = |s: &str| Value::Text(s.into());
    let b = |k: i64| Value::BigInt(k);
    let now1 = reader.as_of(GROUP, &def(1), "", 5).unwrap();
    let expected1 = vec![(b(0), t("a"), seq(2, 0)), (b(1), t("ok"), seq(4, 0)), (b(6), t("after"), seq(5, 2))];
    assert_eq!(live(&now1), expected1, "the aborted update of row 0 is not replayed; row 6 keeps ordinal 2");
    let view = reader.table_view(GROUP, 1, "", &Default::default()).unwrap();
    assert_eq!(live(&view.hot), expected1, "apply and replay agree");
    let before = reader.as_of(GROUP, &def(1), "", 3).unwrap();
    assert_eq!(live(&before), vec![(b(0), t("a"), seq(2, 0)), (b(1), t("a"), seq(2, 1)), (b(2), t("a"), seq(2, 2))]);
    let now2 = reader.as_of(GROUP, &def(2), "", 5).unwrap();
    assert_eq!(live(&now2), vec![(b(0), t("b"), seq(2, 3)), (b(1), t("new"), seq(4, 2))]);

    // Another replica applying the whole log in one call ends byte-identical.
    let other = tempfile::tempdir().unwrap();
    let (results_b, digest_b, _) = apply(other.path(), 10).await;
    assert_eq!(results, results_b);
    assert_eq!(digest, digest_b);
}
