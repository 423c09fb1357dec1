//! A flush starts reading hot rows at the smallest key written since the table's last whole
//! flush, as far as this node knows (`cold::FlushStarts`). What it remembers must change how
//! much a flush reads, never what it writes: replicas that remember, that forget before every
//! apply call (a restart each time) and that apply in larger calls end byte-identical, over
//! random logs of inserts below and above earlier keys, updates, deletes, flushes of one scope
//! and of the whole table, and settling in pieces.

mod common;
#[path = "common/replica.rs"]
mod replica;

use std::collections::BTreeMap;

use common::{entry, membership_entry};
use kalamdb_log::command::ApplyErrorCode;
use kalamdb_log::types::Entry;
use kalamdb_log::{Op, OpResult, RowWrite};
use kalamdb_projections::cold::FlushStart;
use replica::{GROUP, SCOPES, def, replica, rewrite, row};

/// A random log over table 1, which of its entries flush the whole table, and which are
/// inserts to be refused (a key exists); the live rows are tracked so updates and deletes
/// name the `_seq` they expect and apply.
fn random_log(seed: u64, steps: usize) -> (Vec<Entry>, Vec<bool>, Vec<usize>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut live: BTreeMap<(usize, i64), u64> = BTreeMap::new();
    // Inserts take keys above everything so far or below it: both sides of a flush's start.
    let (mut low, mut high) = (0i64, 0i64);
    let mut log = vec![membership_entry()];
    let mut whole_flushes = vec![false];
    let mut refused = Vec::new();
    for index in 2..steps as u64 + 2 {
        let seq = |ordinal: usize| (index << 20) | ordinal as u64;
        let s = rng.usize(0..SCOPES.len());
        let scope = SCOPES[s].to_string();
        let ops = match rng.u8(0..10) {
            0..=4 => {
                let n = rng.i64(1..=400);
                let first = if rng.bool() {
                    high += n;
                    high - n
                } else {
                    low -= n;
                    low
                };
                let keys: Vec<i64> = (first..first + n).collect();
                for (i, k) in keys.iter().enumerate() {
                    live.insert((s, *k), seq(i));
                }
                let rows = keys.iter().map(|k| row(*k, &format!("v{index}"), None)).collect();
                vec![Op::Insert { schema_version: 1, table_id: 1, scope, rows }]
            }
            op @ (5 | 6) => {
                let delete = op == 6;
                let keys = live.range((s, i64::MIN)..=(s, i64::MAX)).map(|((_, k), seq)| (*k, *seq)).collect();
                let (op, written) = rewrite(&mut rng, keys, 50, (index, &scope, delete));
                for (i, k) in written.into_iter().enumerate() {
                    if delete {
                        live.remove(&(s, k));
                    } else {
                        live.insert((s, k), seq(i));
                    }
                }
                vec![op]
            }
            7 => vec![Op::Flush { table: def(), scope: None }],
            8 => vec![Op::Flush { table: def(), scope: Some(scope) }],
            _ => match live.range((s, i64::MIN)..=(s, i64::MAX)).next_back() {
                // New keys above all, then the scope's largest live one: the insert is
                // refused whether that row is hot, flushed or both (an insert must not trust
                // a key's being above the others without knowing the largest one).
                Some(((_, top), _)) if rng.u8(0..3) == 0 => {
                    let top = *top;
                    high += 20;
                    let mut rows: Vec<RowWrite> = (high - 20..high).map(|k| row(k, "dup", None)).collect();
                    // Or a new key given twice in a row: refused too, though nothing holds it.
                    rows.push(row(if rng.bool() { top } else { high - 1 }, "dup", None));
                    refused.push(index as usize);
                    vec![Op::Insert { schema_version: 1, table_id: 1, scope, rows }]
                }
                _ => vec![Op::Settle { table_id: 1, scope }],
            },
        };
        whole_flushes.push(matches!(ops[0], Op::Flush { scope: None, .. }));
        log.push(entry(index, ops));
    }
    (log, whole_flushes, refused)
}

#[tokio::test]
async fn what_a_node_remembers_of_flush_starts_changes_no_byte() {
    for seed in [1u64, 2, 3] {
        let (log, whole_flushes, refused) = random_log(seed, 160);
        let (mut remembers, mut forgets) = (replica(GROUP), replica(GROUP));
        let mut results = Vec::new();
        let mut flushes_from_a_start = 0;
        for (i, e) in log.iter().enumerate() {
            let known = remembers.env.flush_starts.start(GROUP, 1) != FlushStart::First;
            let r = remembers.apply(std::slice::from_ref(e)).await;
            forgets.env.flush_starts.forget_group(GROUP);
            assert_eq!(forgets.apply(std::slice::from_ref(e)).await, r, "seed {seed}, entry {i}");
            if whole_flushes[i] && known {
                flushes_from_a_start += 1;
            }
            results.extend(r);
            if i % 16 == 15 {
                assert_eq!(remembers.digest(), forgets.digest(), "seed {seed}: replicas differ after entry {i}");
            }
        }
        // Entry i of the log is at index i + 1.
        for (i, r) in results.iter().enumerate() {
            let want_refused = refused.contains(&(i + 1));
            let got_refused = r.iter().any(|r| matches!(r, OpResult::Failed { .. }));
            assert_eq!(got_refused, want_refused, "seed {seed}, index {}: {r:?}", i + 1);
            if want_refused {
                assert!(matches!(r[0], OpResult::Failed { code: ApplyErrorCode::ConstraintViolation, .. }), "{r:?}");
            }
        }
        assert!(refused.len() >= 3, "seed {seed}: only {} refused inserts", refused.len());
        let dir = tempfile::tempdir().unwrap();
        let (batched_results, batched_digest, _) = common::apply_log(dir.path(), GROUP, log.clone(), 7).await;
        assert_eq!(batched_results, results, "seed {seed}");
        assert_eq!(remembers.digest(), forgets.digest(), "seed {seed}");
        assert_eq!(remembers.digest(), batched_digest, "seed {seed}");
        // The starts were used: most whole flushes read from one.
        assert!(flushes_from_a_start >= 5, "seed {seed}: only {flushes_from_a_start} flushes from a known start");
    }
}
