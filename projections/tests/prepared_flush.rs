//! A whole flush prepared off apply (`PrepareFlush`, then `FlushUpto`, `cold::prepared`)
//! must write what the flush written inside apply writes: replicas that prepare, that forget
//! every preparation before each apply call (a restart each time, so every `FlushUpto` reads
//! its rows itself) and that apply in larger calls (a `FlushUpto` waiting on a preparation
//! still running) end byte-identical, over random logs of inserts above and below earlier
//! keys, updates and deletes between the two entries, flushes of one scope, settling, and
//! preparations never followed by their flush.

mod common;
#[path = "common/replica.rs"]
mod replica;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::{entry, membership_entry};
use kalamdb_log::Value;
use kalamdb_log::types::Entry;
use kalamdb_log::{LogDb, Op, OpResult};
use kalamdb_projections::RowReader;
use kalamdb_projections::cold::FileStore;
use replica::{GROUP, Replica, SCOPES, def, replica, rewrite, row};

/// A random log over table 1 with `PrepareFlush` entries, each followed a few entries later
/// (or never) by the `FlushUpto` of its index. Mostly appends above every key, the case a
/// preparation serves; the live rows are tracked so updates and deletes name the `_seq`
/// they expect.
/// Returns the log and the live rows it leaves: (scope, key) → value.
fn random_log(seed: u64, steps: usize) -> (Vec<Entry>, BTreeMap<(usize, i64), String>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut live: BTreeMap<(usize, i64), (u64, String)> = BTreeMap::new();
    let (mut low, mut high) = (0i64, 0i64);
    let mut log = vec![membership_entry()];
    // The preparation waiting for its flush, and when that comes.
    let mut prepared: Option<(u64, u64)> = None;
    for index in 2..steps as u64 + 2 {
        let seq = |ordinal: usize| (index << 20) | ordinal as u64;
        let s = rng.usize(0..SCOPES.len());
        let scope = SCOPES[s].to_string();
        if let Some((upto, at)) = prepared
            && at == index
        {
            prepared = None;
            log.push(entry(index, vec![Op::FlushUpto { table: def(), upto }]));
            continue;
        }
        let ops = match rng.u8(0..20) {
            0..=11 => {
                let n = rng.i64(1..=300);
                // Below every key now and then: a key among the prepared ones.
                let first = if rng.u8(0..6) == 0 {
                    low -= n;
                    low
                } else {
                    high += n;
                    high - n
                };
                let keys: Vec<i64> = (first..first + n).collect();
                for (i, k) in keys.iter().enumerate() {
                    live.insert((s, *k), (seq(i), format!("v{index}")));
                }
                let rows = keys.iter().map(|k| row(*k, &format!("v{index}"), None)).collect();
                vec![Op::Insert { schema_version: 1, table_id: 1, scope, rows }]
            }
            op @ (12 | 13) => {
                let delete = op == 13;
                let keys = live.range((s, i64::MIN)..=(s, i64::MAX)).map(|((_, k), (seq, _))| (*k, *seq)).collect();
                let (op, written) = rewrite(&mut rng, keys, 20, (index, &scope, delete));
                for (i, k) in written.into_iter().enumerate() {
                    if delete {
                        live.remove(&(s, k));
                    } else {
                        live.insert((s, k), (seq(i), format!("u{index}")));
                    }
                }
                vec![op]
            }
            14..=16 if prepared.is_none() => {
                // Its flush comes 1-6 entries later, or (1 in 8) never.
                if rng.u8(0..8) != 0 {
                    let after = if rng.bool() { 1 } else { rng.u64(2..=6) };
                    prepared = Some((index, index + after));
                }
                vec![Op::PrepareFlush { table: def() }]
            }
            17 => vec![Op::Flush { table: def(), scope: Some(scope) }],
            18 => vec![Op::Flush { table: def(), scope: None }],
            _ => vec![Op::Settle { table_id: 1, scope }],
        };
        log.push(entry(index, ops));
    }
    (log, live.into_iter().map(|(k, (_, v))| (k, v)).collect())
}

/// Every live row of the table as scans see it (hot rows, then file rows less the superseded
/// versions): (scope, key) → value. A key seen twice is a bug (a flushed row read both hot and
/// from its file).
fn scan(db: &Arc<LogDb>, storage: &Path) -> BTreeMap<(usize, i64), String> {
    use arrow::array::{Array, Int64Array, StringViewArray};
    let reader = RowReader::new(db.clone(), Arc::new(FileStore::folder(storage.to_path_buf())));
    let mut out = BTreeMap::new();
    for (s, scope) in SCOPES.iter().enumerate() {
        let view = reader.table_view(GROUP, 1, scope, &Default::default()).unwrap();
        for r in &view.hot {
            let (Value::BigInt(k), Value::Text(v)) = (&r.values[0], &r.values[1]) else { panic!("{r:?}") };
            assert!(out.insert((s, *k), v.clone()).is_none(), "key {k} twice");
        }
        for (path, _) in &view.files {
            for b in kalamdb_projections::cold::read_parquet(path).unwrap() {
                let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                let vs = b.column(1).as_any().downcast_ref::<StringViewArray>().unwrap();
                let seqs = b.column_by_name("_seq").unwrap();
                let seqs = seqs.as_any().downcast_ref::<Int64Array>().expect("_seq is an Int64");
                for i in 0..b.num_rows() {
                    if view.superseded.contains(&(seqs.value(i) as u64)) {
                        continue;
                    }
                    let k = ids.value(i);
                    assert!(out.insert((s, k), vs.value(i).to_string()).is_none(), "key {k} twice");
                }
            }
        }
    }
    out
}

/// Files left in a replica's storage folder under a temporary name.
fn temp_files(r: &Replica) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if e.file_name().to_string_lossy().ends_with(".tmp") {
                out.push(p.display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(&r._dir.path().join("storage"), &mut out);
    out
}

/// Apply `e` to a replica that prepares and to one that forgets every preparation first; both
/// must answer the same, and every op succeed.
async fn apply_to_both(prepares: &mut Replica, forgets: &mut Replica, e: &Entry) {
    let r = prepares.apply(std::slice::from_ref(e)).await;
    forgets.env.prepared.forget_group(GROUP);
    assert_eq!(forgets.apply(std::slice::from_ref(e)).await, r, "entry {}", e.log_id.index);
    assert!(r.iter().flatten().all(|r| matches!(r, OpResult::Done { .. })), "{r:?}");
}

#[tokio::test]
async fn a_prepared_flush_writes_what_a_flush_in_apply_writes() {
    for seed in [11u64, 12, 13, 14] {
        let (log, live) = random_log(seed, 240);
        let (mut prepares, mut forgets) = (replica(GROUP), replica(GROUP));
        let mut results = Vec::new();
        for (i, e) in log.iter().enumerate() {
            let r = prepares.apply(std::slice::from_ref(e)).await;
            forgets.env.prepared.forget_group(GROUP);
            forgets.env.flush_starts.forget_group(GROUP);
            assert_eq!(forgets.apply(std::slice::from_ref(e)).await, r, "seed {seed}, entry {i}");
            results.extend(r);
            if i % 8 == 7 {
                assert_eq!(prepares.digest(), forgets.digest(), "seed {seed}: replicas differ after entry {i}");
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let (batched_results, batched_digest, _) = common::apply_log(dir.path(), GROUP, log.clone(), 7).await;
        assert_eq!(batched_results, results, "seed {seed}");
        assert_eq!(prepares.digest(), forgets.digest(), "seed {seed}");
        assert_eq!(prepares.digest(), batched_digest, "seed {seed}");
        assert_eq!(scan(&prepares.db, &prepares._dir.path().join("storage")), live, "seed {seed}");
        // Both ways were taken: preparations named as files, and flushes that read the rows
        // themselves because keys were written among the prepared ones.
        let (used, refused) = prepares.env.prepared.counts();
        assert!(used >= 3, "seed {seed}: only {used} prepared flushes used");
        assert!(refused >= 1, "seed {seed}: no preparation was refused");
        assert_eq!(forgets.env.prepared.counts().0, 0, "seed {seed}: a forgotten preparation was used");
        // A preparation whose flush never came removes its files once it is replaced or
        // forgotten; none that was used or refused leaves one.
        prepares.env.prepared.forget_group(GROUP);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !temp_files(&prepares).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(temp_files(&prepares), Vec::<String>::new(), "seed {seed}");
    }
}

/// A key written after the preparation between two prepared rows (here a settled key, so not
/// one of them) is placed among them: the preparation is used, and its rows are settled in two
/// ranges around the newer row, as the flush's own read does.
#[tokio::test]
async fn a_key_written_among_the_prepared_rows_splits_their_settling() {
    let seq = |index: u64, ordinal: u64| (index << 20) | ordinal;
    let insert = |keys: std::ops::Range<i64>, v: &str| {
        let rows = keys.map(|k| row(k, v, None)).collect();
        Op::Insert { schema_version: 1, table_id: 1, scope: "a".into(), rows }
    };
    let update = |k: i64, v: &str, at: u64| Op::Update {
        schema_version: 1,
        table_id: 1,
        scope: "a".into(),
        rows: vec![row(k, v, Some(at))],
    };
    let log = vec![
        membership_entry(),
        entry(2, vec![insert(0..100, "first")]),
        entry(3, vec![Op::Flush { table: def(), scope: None }]),
        entry(4, vec![insert(100..200, "second")]),
        entry(5, vec![update(10, "ten", seq(2, 10))]),
        entry(6, vec![update(50, "fifty", seq(2, 50))]),
        entry(7, vec![Op::PrepareFlush { table: def() }]),
        entry(8, vec![update(30, "thirty", seq(2, 30))]),
        entry(9, vec![insert(200..210, "third")]),
        entry(10, vec![Op::FlushUpto { table: def(), upto: 7 }]),
    ];
    let (mut prepares, mut forgets) = (replica(GROUP), replica(GROUP));
    for e in &log {
        apply_to_both(&mut prepares, &mut forgets, e).await;
    }
    assert_eq!(prepares.env.prepared.counts(), (1, 0), "the preparation was used");
    assert_eq!(prepares.digest(), forgets.digest());
    let mut want: BTreeMap<(usize, i64), String> = BTreeMap::new();
    for k in 0..100 {
        want.insert((0, k), "first".into());
    }
    for k in 100..200 {
        want.insert((0, k), "second".into());
    }
    for k in 200..210 {
        want.insert((0, k), "third".into());
    }
    for (k, v) in [(10, "ten"), (50, "fifty"), (30, "thirty")] {
        want.insert((0, k), v.into());
    }
    assert_eq!(scan(&prepares.db, &prepares._dir.path().join("storage")), want);
}

/// A preparation whose temp files are gone (a node sharing the folder swept them as orphans)
/// is refused, and the flush reads its rows itself: the same state as a replica that never
/// prepared.
#[tokio::test]
async fn a_preparation_whose_files_were_swept_is_not_used() {
    let insert = |keys: std::ops::Range<i64>| {
        let rows = keys.map(|k| row(k, "v", None)).collect();
        Op::Insert { schema_version: 1, table_id: 1, scope: "a".into(), rows }
    };
    let log = vec![
        membership_entry(),
        entry(2, vec![insert(0..100)]),
        entry(3, vec![Op::PrepareFlush { table: def() }]),
        entry(4, vec![insert(100..110)]),
        entry(5, vec![Op::FlushUpto { table: def(), upto: 3 }]),
    ];
    let (mut prepares, mut forgets) = (replica(GROUP), replica(GROUP));
    for e in &log {
        if e.log_id.index == 5 {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while prepares.env.prepared.status(GROUP, 1) != Some((3, true)) {
                assert!(std::time::Instant::now() < deadline, "the preparation did not finish");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let swept = temp_files(&prepares);
            assert_eq!(swept.len(), 1, "one scope, one file: {swept:?}");
            for f in swept {
                std::fs::remove_file(f).unwrap();
            }
        }
        apply_to_both(&mut prepares, &mut forgets, e).await;
    }
    assert_eq!(prepares.env.prepared.counts(), (0, 1), "the preparation was refused");
    assert_eq!(prepares.digest(), forgets.digest());
    let want: BTreeMap<(usize, i64), String> = (0..110).map(|k| ((0, k), "v".to_string())).collect();
    assert_eq!(scan(&prepares.db, &prepares._dir.path().join("storage")), want);
}
