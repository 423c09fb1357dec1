//! Criterion micro benchmarks of the hot paths under the HTTP numbers: the transport's frame
//! codec (an AppendEntries of 64 entries, encoded, then decoded and validated in place),
//! projection apply (rows per second through `RaftStateMachine::apply`), a log append made
//! durable with a WAL fsync, and reading a bulk load's 1,000-row INSERT (straight from its
//! text, and through tokens and sqlparser's tree). Run: `cargo bench --workspace --bench micro`.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kalamdb_log::types::Entry;
use kalamdb_log::{EncodedCommand, GroupId, LogCommand, LogDb, Op, RowWrite, Value};
use kalamdb_projections::{Catalog, PROJECTION_CFS, Projection, StorageEnv};
use kalamdb_transport::frame::{FrameKind, decode_frame, encode_frame};
use kalamdb_transport::wire::{AppendRequest, WLogId, WVote, read_append, to_bytes, wire_entry};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, LogId};

/// Entries per AppendEntries frame, rows per applied entry.
const FRAME_ENTRIES: usize = 64;
const APPLY_ROWS: usize = 100;
/// Rows of the INSERT the parse benchmark reads (a bulk load's statement).
const PARSE_ROWS: usize = 1000;

fn insert_entry(index: u64, first_key: i64, rows: usize) -> Entry {
    let writes = (0..rows as i64)
        .map(|i| {
            let k = first_key + i;
            RowWrite {
                pk: Value::BigInt(k),
                values: vec![Value::BigInt(k), Value::Text(format!("value-{k}"))],
                expected_seq: None,
            }
        })
        .collect();
    let op = Op::Insert { schema_version: 1, table_id: 1, scope: String::new(), rows: writes };
    let cmd = LogCommand { ops: vec![op], committed_at_micros: 0 };
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(EncodedCommand::encode(&cmd).expect("encode")),
    }
}

fn frames(c: &mut Criterion) {
    let entries: Vec<Entry> = (1..=FRAME_ENTRIES as u64).map(|i| insert_entry(i, i as i64, 1)).collect();
    let req = AppendRequest {
        vote: WVote { term: 1, node: 1, committed: true },
        prev: None,
        commit: Some(WLogId { term: 1, node: 1, index: 1 }),
        entries: entries.iter().map(|e| wire_entry(e).expect("wire entry")).collect(),
    };
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(FRAME_ENTRIES as u64));
    g.bench_function("encode_append_64_entries", |b| {
        b.iter(|| {
            let body = to_bytes(black_box(&req)).expect("body");
            encode_frame(FrameKind::AppendRequest, 0x0002_0000, 7, &body).expect("frame")
        })
    });
    let frame = Bytes::from(encode_frame(FrameKind::AppendRequest, 0x0002_0000, 7, &to_bytes(&req).unwrap()).unwrap());
    g.bench_function("decode_append_64_entries_in_place", |b| {
        b.iter(|| {
            let (_, body) = decode_frame(black_box(&frame)).expect("header");
            read_append(&frame, body).expect("append")
        })
    });
    g.finish();
}

fn apply(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let db = LogDb::open(&dir.path().join("rocksdb"), &PROJECTION_CFS).expect("open db");
    let env = StorageEnv::new(dir.path().join("snap"), dir.path().join("storage"));
    let mut sm = Projection::open(db, GroupId::SharedShard(0), Catalog::new(), env).expect("projection");
    let mut index = 0u64;
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(APPLY_ROWS as u64));
    g.bench_function("insert_entry_of_100_rows", |b| {
        b.iter_batched(
            || {
                index += 1;
                insert_entry(index, (index as i64) * APPLY_ROWS as i64, APPLY_ROWS)
            },
            |e| rt.block_on(sm.apply(vec![e])).expect("apply"),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn log_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db: Arc<LogDb> = LogDb::open(&dir.path().join("rocksdb"), &PROJECTION_CFS).expect("open db");
    let cf = db.db().cf_handle(kalamdb_log::storage::CF_LOG).expect("log cf");
    let entry = kalamdb_log::codec::encode_entry(&insert_entry(1, 1, 1)).expect("entry");
    let mut index = 0u64;
    let mut g = c.benchmark_group("log");
    g.throughput(Throughput::Elements(1));
    // What `append` plus the WAL syncer do for one entry when nothing else is pending.
    g.bench_function("append_one_entry_with_fsync", |b| {
        b.iter(|| {
            index += 1;
            let mut key = [0u8; 12];
            key[4..].copy_from_slice(&index.to_be_bytes());
            db.db().put_cf(cf, key, &entry).expect("put");
            db.sync_wal().expect("fsync");
        })
    });
    g.finish();
}

/// A bulk load's statement (`kalamdb-load --workload bulk`), read the two ways a request can
/// be: the scanner that reads literal rows from the text, and the token path every other
/// statement takes (tokens, the VALUES tree, each value's literal).
fn parse_insert(c: &mut Criterion) {
    use kalamdb_query::parse::{Statement, parse, scan_values_insert, split_request};
    let values: Vec<String> = (0..PARSE_ROWS as u64).map(|i| format!("({i},'v{i}')")).collect();
    let sql = format!("INSERT INTO bench.t1 (id, v) VALUES {}", values.join(","));
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(PARSE_ROWS as u64));
    g.bench_function("insert_of_1000_rows_from_text", |b| {
        b.iter(|| black_box(scan_values_insert(black_box(&sql)).expect("scanned")));
    });
    g.bench_function("insert_of_1000_rows_through_tokens", |b| {
        b.iter(|| {
            let src = split_request(black_box(&sql)).expect("tokens").remove(0);
            let parsed = parse(src).expect("parsed");
            assert!(matches!(parsed.statement, Statement::Sql(_)));
            black_box(parsed)
        });
    });
    g.finish();
}

criterion_group!(micro, frames, apply, log_append, parse_insert);
criterion_main!(micro);
