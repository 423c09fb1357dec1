//! Settling flushed rows: a flush writes files and leaves its rows in RocksDB; `Settle` ops
//! replace them by their key stubs (and drop flushed tombstones with their stubs) a bounded
//! number at a time, so neither the flush nor any one entry after it holds apply for a time
//! that grows with the table. Until then a flushed hot row stands for its own stub (see
//! [`ScopeHead::flushed`]). A flush whose rows make few stub records settles them itself
//! (`super::inline`).

use std::collections::BTreeSet;

use super::*;
use crate::keys::SCOPE_BYTES_MAX;

/// Hot rows one `Settle` op looks at. Each flushed one costs two RocksDB records in the op's
/// batch (its stub and the removal of the row); at 4,096 an op held apply for ~5 ms, most of
/// it inserting 8,192 records into the memtable, which showed as the slowest tail events of a
/// run after its flush (benches/RESULTS.md, session 16). At 1,024 an op costs about what a
/// 1,000-row INSERT does; a 100k-row flush settles in 98 ops.
pub const SETTLE_ROWS_MAX: usize = 1024;

impl ColdApplier<'_> {
    /// Settle up to [`SETTLE_ROWS_MAX`] hot rows of one scope from where its last settling
    /// stopped; the scope's head records where the next one starts (or that none is left).
    pub fn settle(&self, batch: &mut WriteBatch, table_id: u64, scope: &str) -> Result<OpResult> {
        if scope.len() > SCOPE_BYTES_MAX {
            // No row can be stored under such a scope, so none waits to be settled.
            return Ok(OpResult::Settled { rows: 0, more: false });
        }
        let sp = table_scope_prefix(self.group, table_id, scope);
        let done = OpResult::Settled { rows: 0, more: false };
        let Some(mut head) = stored_head(self.db, &sp)? else { return Ok(done) };
        let Some(from) = head.settle_from.take() else { return Ok(done) };
        let end = head.settle_to.take();
        let rows_cf = cf(self.db, CF_ROWS)?;
        let cold = cf(self.db, CF_COLD)?;
        let mut stubs = RunSettler::new(self.db, &sp, head.runs);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(prefix_end(&sp));
        let mut rows = self.db.raw_iterator_cf_opt(rows_cf, opts);
        let mut start = sp.clone();
        start.extend_from_slice(&from);
        rows.seek(&start);
        let (mut looked, mut settled) = (0usize, 0u64);
        // The rows leave `rows` as runs: each run of consecutive settled rows (no row between
        // them is left) goes with one range deletion from its first key up to the key after
        // it, which covers those rows and nothing else. Point deletions cost a WAL record, a
        // memtable entry and a tombstone for RocksDB to carry down its levels per row.
        let mut run: Option<Vec<u8>> = None;
        let close_run = |batch: &mut WriteBatch, run: &mut Option<Vec<u8>>, to: &[u8]| {
            if let Some(from) = run.take() {
                batch.delete_range_cf(rows_cf, from.as_slice(), to);
            }
        };
        while let (Some(key), Some(value)) = (rows.key(), rows.value()) {
            let pk = &key[sp.len()..];
            // Past the last flushed row: nothing after it is flushed, the scope is settled.
            if end.as_deref().is_some_and(|end| pk > end) {
                close_run(batch, &mut run, key);
                break;
            }
            if looked == SETTLE_ROWS_MAX {
                close_run(batch, &mut run, key);
                head.settle_from = Some(pk.to_vec());
                head.settle_to = end;
                break;
            }
            looked += 1;
            let (seq, deleted) = StoredRow::version(value)?;
            if head.flushed(seq) {
                stubs.row(batch, pk, seq, deleted)?;
                if run.is_none() {
                    run = Some(key.to_vec());
                }
                settled += 1;
            } else {
                close_run(batch, &mut run, key);
            }
            rows.next();
        }
        rows.status()?;
        stubs.finish(batch)?;
        // The scope's rows ran out: the run ends with the scope (no key after it exists).
        close_run(batch, &mut run, &prefix_end(&sp));
        batch.put_cf(cold, cold_key(&sp, KIND_HEAD, &[]), json(&head)?);
        metrics::counter!("kalamdb_storage_settled_rows_total").increment(settled);
        Ok(OpResult::Settled { rows: settled, more: head.settle_from.is_some() })
    }
}

/// Scopes of a table in a group with flushed hot rows left to settle, in key order.
pub fn unsettled_scopes(db: &DB, group: GroupId, table_id: u64) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (k, v) in table_records(db, group, table_id, false)? {
        let (scope, rest) = split_scope(&k).ok_or_else(|| Error::Corrupt("bad cold key".into()))?;
        if rest.first() == Some(&KIND_HEAD) && unjson::<ScopeHead>(&v)?.settle_from.is_some() {
            out.push(scope.to_string());
        }
    }
    Ok(out)
}

/// Tables (per group) that a flush left rows to settle in, noted on every node as the flush
/// applies; the storage task of the group's leader takes them and proposes the `Settle` ops.
/// One entry per (group, table), so the catalog bounds it. Beside it, each table's *backlog*:
/// rows its flushes left and its settles have not taken yet, as this node applied them
/// (approximate: it starts at 0 with the process, and a user table's scopes share one count).
/// The leader paces settling by it (`node/src/storage.rs`).
#[derive(Debug, Default)]
pub struct SettleQueue {
    due: Mutex<BTreeSet<(u32, u64)>>,
    backlog: Mutex<HashMap<(u32, u64), u64>>,
}

impl SettleQueue {
    pub fn mark(&self, group: GroupId, table_id: u64) {
        self.due.lock().unwrap_or_else(|p| p.into_inner()).insert((group.to_u32(), table_id));
    }

    /// A flush of the table left `rows` to settle.
    pub fn flushed(&self, group: GroupId, table_id: u64, rows: u64) {
        let mut b = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
        let n = b.entry((group.to_u32(), table_id)).or_insert(0);
        *n = n.saturating_add(rows);
    }

    /// A `Settle` of the table took `rows`.
    pub fn settled(&self, group: GroupId, table_id: u64, rows: u64) {
        let mut b = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = b.get_mut(&(group.to_u32(), table_id)) {
            *n = n.saturating_sub(rows);
        }
    }

    /// Every scope of the table is settled: nothing is left, whatever the count says.
    pub fn cleared(&self, group: GroupId, table_id: u64) {
        self.backlog.lock().unwrap_or_else(|p| p.into_inner()).remove(&(group.to_u32(), table_id));
    }

    /// Rows the table's flushes left that no settle has taken yet, as far as this node knows.
    pub fn backlog(&self, group: GroupId, table_id: u64) -> u64 {
        self.backlog.lock().unwrap_or_else(|p| p.into_inner()).get(&(group.to_u32(), table_id)).copied().unwrap_or(0)
    }

    /// Every table marked since the last call.
    pub fn take(&self) -> Vec<(GroupId, u64)> {
        let due = std::mem::take(&mut *self.due.lock().unwrap_or_else(|p| p.into_inner()));
        due.into_iter().filter_map(|(g, t)| GroupId::from_u32(g).map(|g| (g, t))).collect()
    }
}
