//! A table's past, rebuilt from the log: its state at an earlier log position (time travel,
//! `AS OF`) and the re-derivation of its projection (`REBUILD PROJECTION`).
//!
//! Both start from a *base*: the table scope as the last flush or compaction at or before the
//! wanted position left it (the files live then, minus versions superseded by then, which the
//! superseded markers record with their log index), and replay the retained log after it with
//! the same rules apply uses. Positions before the scope's last compaction are gone (it drops
//! superseded versions), and so are positions whose log tail was purged.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use kalamdb_log::{GroupId, LogDb, LogStore, Op, OpResult, RowWrite, TableDef, Value, WriteKind};
use openraft::EntryPayload;
use rocksdb::{DB, WriteBatch};

use crate::cold::{
    ColdGroup, FileMeta, FileStore, KIND_SUPERSEDED, cf, cold_key, iter_prefix, marker_seq, read_parquet, scope_files,
    scope_head,
};
use crate::columnar::{seq_deleted, value_at};
use crate::error::{Error, Result};
use crate::keys::{encode_pk, prefix_end, split_scope, table_prefix, table_scope_prefix};
use crate::stored::{StoredRow, make_seq};
use crate::{CF_COLD, CF_ROWS};

/// Log entries read from the log store at a time while replaying.
const REPLAY_ENTRIES_CHUNK: u64 = 1024;

/// One scope's state during a replay: the newest version of every key (tombstones included),
/// which keys still hold their base (cold) version, and what the replay changed.
#[derive(Debug, Default)]
pub struct ScopeReplay {
    pub base_index: u64,
    pub rows: BTreeMap<Vec<u8>, StoredRow>,
    /// Stub seqs of the base: the keys whose newest version was in a file at the base.
    pub base_stubs: BTreeMap<Vec<u8>, u64>,
    from_base: HashSet<Vec<u8>>,
    /// Keys written by replayed ops (their newest version is hot).
    pub written: BTreeSet<Vec<u8>>,
    /// (superseded flushed seq, log index) recorded by replayed ops.
    pub markers: Vec<(u64, u64)>,
}

fn pk_bytes(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_pk(v, &mut out);
    out
}

impl ScopeReplay {
    fn insert(&mut self, rows: &[RowWrite], index: u64, first: u64) {
        let mut seen = HashSet::with_capacity(rows.len());
        for r in rows {
            let k = pk_bytes(&r.pk);
            if self.rows.get(&k).is_some_and(|row| !row.deleted) || !seen.insert(k) {
                return;
            }
        }
        for (i, r) in rows.iter().enumerate() {
            let k = pk_bytes(&r.pk);
            let row = StoredRow { seq: make_seq(index, first + i as u64), deleted: false, values: r.values.clone() };
            self.rows.insert(k.clone(), row);
            self.written.insert(k);
        }
    }

    fn rewrite(&mut self, rows: &[RowWrite], delete: bool, index: u64, first: u64) {
        for r in rows {
            let current = self.rows.get(&pk_bytes(&r.pk));
            let ok = matches!((current, r.expected_seq), (Some(row), Some(e)) if !row.deleted && row.seq == e);
            if !ok {
                return;
            }
        }
        for (i, r) in rows.iter().enumerate() {
            let k = pk_bytes(&r.pk);
            if self.from_base.remove(&k)
                && let Some(old) = self.rows.get(&k)
            {
                self.markers.push((old.seq, index));
            }
            let values = if delete { Vec::new() } else { r.values.clone() };
            self.rows.insert(k.clone(), StoredRow { seq: make_seq(index, first + i as u64), deleted: delete, values });
            self.written.insert(k);
        }
    }

    /// A flush that wrote no file (only tombstones were hot): the tombstones and the stubs of
    /// the versions they deleted go.
    fn flush_tombstones(&mut self) {
        let gone: Vec<Vec<u8>> =
            self.written.iter().filter(|k| self.rows.get(*k).is_some_and(|r| r.deleted)).cloned().collect();
        for k in gone {
            self.written.remove(&k);
            self.rows.remove(&k);
            self.base_stubs.remove(&k);
        }
    }

    /// A STREAM table's TTL eviction: versions below `before_seq` go, tombstones too.
    fn evict(&mut self, before_seq: u64) {
        let gone: Vec<Vec<u8>> = self.rows.iter().filter(|(_, r)| r.seq < before_seq).map(|(k, _)| k.clone()).collect();
        for k in gone {
            self.rows.remove(&k);
            self.written.remove(&k);
        }
    }

    /// Live rows in primary-key order.
    pub fn live(&self) -> impl Iterator<Item = &StoredRow> {
        self.rows.values().filter(|r| !r.deleted)
    }
}

/// Why a position cannot be rebuilt, with the oldest one that can.
fn unavailable(what: String) -> Error {
    Error::History(what)
}

/// The base for `at`: the newest flush point ≤ `at` of the scope that is still fully on disk
/// (none older than the last compaction), the last compaction if it is a base (see
/// [`compaction_is_base`]), or the empty table at index 0 when the scope never compacted.
fn load_base(
    log_db: &std::sync::Arc<LogDb>,
    group: GroupId,
    db: &DB,
    store: &FileStore,
    def: &TableDef,
    scope: &str,
    sp: &[u8],
    at: u64,
) -> Result<ScopeReplay> {
    let head = scope_head(db, sp)?;
    let files = scope_files(db, sp)?;
    let compacted = head.last_compact_index;
    // A flush leaves no hot row of the scope: its files are the whole scope then.
    let mut points: Vec<u64> =
        files.iter().filter(|f| f.written_by == "flush").map(|f| f.created_at).filter(|c| *c >= compacted).collect();
    if compacted == 0 {
        points.push(0);
    } else if compaction_is_base(log_db, group, def.table_id, scope, &files, compacted)? {
        points.push(compacted);
    }
    let Some(base) = points.iter().copied().filter(|p| *p <= at).max() else {
        return Err(unavailable(match points.iter().min() {
            Some(oldest) => format!(
                "position {at} of {}.{} is no longer available: the oldest is {oldest} (compacted at {compacted})",
                def.namespace, def.name
            ),
            None => format!(
                "position {at} of {}.{} is not available: it compacted at {compacted} with rows written since its last flush; positions from the next flush on are",
                def.namespace, def.name
            ),
        }));
    };
    let cold = cf(db, CF_COLD)?;
    let mut superseded = HashSet::new();
    for item in iter_prefix(db, cold, &cold_key(sp, KIND_SUPERSEDED, &[])) {
        let (k, v) = item?;
        let at: [u8; 8] = v.as_ref().try_into().map_err(|_| Error::Corrupt("bad marker".into()))?;
        if u64::from_be_bytes(at) <= base {
            superseded.insert(marker_seq(&k)? as i64);
        }
    }
    let live_then = |f: &&FileMeta| f.created_at <= base && f.retired_at.is_none_or(|r| r > base);
    let pk = def.pk_index();
    let mut state = ScopeReplay { base_index: base, ..ScopeReplay::default() };
    let storage = crate::columnar::storage_schema(def);
    for f in files.iter().filter(live_then) {
        for b in read_parquet(&store.local(&f.path, f.bytes, &f.sha256)?)? {
            let b = crate::columnar::conform(def, &storage, b)?;
            let (seq, _) = seq_deleted(&b)?;
            for row in 0..b.num_rows() {
                let s = seq.value(row);
                if superseded.contains(&s) {
                    continue;
                }
                let values = def
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| value_at(b.column(i), row, c.data_type))
                    .collect::<Result<Vec<Value>>>()?;
                let k = pk_bytes(&values[pk]);
                state.base_stubs.insert(k.clone(), s as u64);
                state.from_base.insert(k.clone());
                state.rows.insert(k, StoredRow { seq: s as u64, deleted: false, values });
            }
        }
    }
    Ok(state)
}

/// Whether the scope's last compaction, at `compacted`, is a base: its files hold only what
/// the flushes before it wrote, so it is one only if no entry between the newest of those
/// flushes and the compaction touched the scope's hot rows (checked in the log; a range the
/// log no longer holds counts as touched). Rows written there were hot at the compaction,
/// in no file: a base there would lose them (and `REBUILD PROJECTION` would delete them).
fn compaction_is_base(
    log_db: &std::sync::Arc<LogDb>,
    group: GroupId,
    table_id: u64,
    scope: &str,
    files: &[FileMeta],
    compacted: u64,
) -> Result<bool> {
    let flushed_to = files
        .iter()
        .filter(|f| f.created_at <= compacted && f.retired_at.is_none_or(|r| r > compacted))
        .map(|f| f.log_end)
        .max()
        .unwrap_or(0);
    if flushed_to + 1 >= compacted {
        return Ok(true);
    }
    let store = LogStore::new(log_db.clone(), group)?;
    let table = |t: u64| t == table_id;
    let row_op = |t: u64, s: &str| t == table_id && s == scope;
    let mut next = flushed_to + 1;
    while next < compacted {
        let end = (next + REPLAY_ENTRIES_CHUNK).min(compacted);
        let entries = store.read_range(next, end)?;
        if entries.first().is_none_or(|e| e.log_id.index != next) {
            return Ok(false);
        }
        for entry in &entries {
            let EntryPayload::Normal(encoded) = &entry.payload else { continue };
            for op in &encoded.decode()?.ops {
                let touches = match op {
                    Op::Insert { table_id, scope, .. }
                    | Op::Update { table_id, scope, .. }
                    | Op::Delete { table_id, scope, .. } => row_op(*table_id, scope),
                    Op::Transaction { writes } => writes.iter().any(|w| row_op(w.table_id, &w.scope)),
                    Op::Flush { table: def, scope: s } => {
                        table(def.table_id) && s.as_deref().is_none_or(|s| s == scope)
                    }
                    Op::Rebuild { table: def } => table(def.table_id),
                    Op::PurgeTable { table_id } | Op::Evict { table_id, .. } => table(*table_id),
                    _ => false,
                };
                if touches {
                    return Ok(false);
                }
            }
        }
        next = entries.last().map_or(end, |e| e.log_id.index + 1);
    }
    Ok(true)
}

/// Replay the group's log in `(from, to]` for one table into per-scope states (created with
/// `new_scope` when a scope first appears); a scope ignores entries at or before its own base.
/// Fails if the log no longer holds the range.
fn replay(
    log_db: &std::sync::Arc<LogDb>,
    group: GroupId,
    def: &TableDef,
    only_scope: Option<&str>,
    from: u64,
    to: u64,
    states: &mut HashMap<String, ScopeReplay>,
    mut new_scope: impl FnMut(&str) -> Result<ScopeReplay>,
) -> Result<()> {
    let store = LogStore::new(log_db.clone(), group)?;
    let mut next = from + 1;
    while next <= to {
        let end = (next + REPLAY_ENTRIES_CHUNK).min(to + 1);
        let entries = store.read_range(next, end)?;
        match entries.first() {
            Some(e) if e.log_id.index == next => {}
            first => {
                return Err(unavailable(format!(
                    "the log of group {group} no longer holds index {next} (first retained: {})",
                    first.map_or("none".to_string(), |e| e.log_id.index.to_string())
                )));
            }
        }
        for entry in &entries {
            let index = entry.log_id.index;
            let EntryPayload::Normal(encoded) = &entry.payload else { continue };
            let cmd = encoded.decode()?;
            let mut ordinal = 0u64;
            for op in &cmd.ops {
                // Row ops as (kind, table, scope, rows, first ordinal); everything else is
                // handled (or skipped) here.
                let mut row_ops: Vec<(WriteKind, u64, &str, &[RowWrite], u64)> = Vec::new();
                match op {
                    Op::Insert { table_id, scope, rows, .. } => {
                        row_ops.push((WriteKind::Insert, *table_id, scope, rows, 0))
                    }
                    Op::Update { table_id, scope, rows, .. } => {
                        row_ops.push((WriteKind::Update, *table_id, scope, rows, 0))
                    }
                    Op::Delete { table_id, scope, rows, .. } => {
                        row_ops.push((WriteKind::Delete, *table_id, scope, rows, 0))
                    }
                    Op::Transaction { writes } => {
                        row_ops.extend(
                            writes.iter().map(|w| (w.kind, w.table_id, w.scope.as_str(), w.rows.as_slice(), 0)),
                        );
                    }
                    Op::Flush { table, scope } if table.table_id == def.table_id => {
                        for (name, state) in states.iter_mut() {
                            if scope.as_deref().is_none_or(|s| s == name) && index > state.base_index {
                                state.flush_tombstones();
                            }
                        }
                        continue;
                    }
                    Op::Evict { table_id, before_seq } if *table_id == def.table_id => {
                        for state in states.values_mut() {
                            if index > state.base_index {
                                state.evict(*before_seq);
                            }
                        }
                        continue;
                    }
                    _ => continue,
                }
                let start = ordinal;
                for row_op in &mut row_ops {
                    row_op.4 = ordinal;
                    ordinal += row_op.3.len() as u64;
                }
                // A transaction whose preconditions failed, or a row op a NOT NULL fence or a
                // schema floor refused, applied none of its writes; apply left a marker, as
                // the reasons may concern other tables or scopes.
                if row_ops.iter().any(|r| r.1 == def.table_id)
                    && crate::refused::was_refused(log_db.db(), group, index, start)?
                {
                    continue;
                }
                for (kind, table_id, scope, rows, first) in row_ops {
                    if table_id != def.table_id || only_scope.is_some_and(|s| s != scope) {
                        continue;
                    }
                    if !states.contains_key(scope) {
                        states.insert(scope.to_string(), new_scope(scope)?);
                    }
                    let state = states.get_mut(scope).expect("inserted above");
                    if index <= state.base_index {
                        continue;
                    }
                    match kind {
                        WriteKind::Insert => state.insert(rows, index, first),
                        WriteKind::Update => state.rewrite(rows, false, index, first),
                        WriteKind::Delete => state.rewrite(rows, true, index, first),
                    }
                }
            }
        }
        next = entries.last().map_or(end, |e| e.log_id.index + 1);
    }
    Ok(())
}

/// Normal entries looked at, back from a position, for the commit time that dates it.
const SCHEMA_DATING_ENTRIES_MAX: u64 = 64;

/// The table's definition as it stood when log index `at` of its group committed: the schema
/// version made at or before that entry's commit time (the catalog lives in another group, so
/// commit times are what relates the two logs). A position that is a blank or membership
/// entry is dated by the nearest normal entry before it; one the log no longer holds (or that
/// has none near it) reads through today's schema.
pub fn schema_as_of(log_db: &std::sync::Arc<LogDb>, group: GroupId, def: &TableDef, at: u64) -> Result<TableDef> {
    let store = LogStore::new(log_db.clone(), group)?;
    let from = at.saturating_sub(SCHEMA_DATING_ENTRIES_MAX - 1).max(1);
    let entries = store.read_range(from, at.saturating_add(1))?;
    for entry in entries.iter().rev() {
        if let EntryPayload::Normal(encoded) = &entry.payload {
            let micros = encoded.decode()?.committed_at_micros;
            return Ok(def.at_version(def.version_at(micros)));
        }
    }
    Ok(def.clone())
}

/// The live rows of one table scope as they were right after log index `at` was applied.
/// `applied` is the group's applied index now (`at` must not pass it).
pub fn scope_as_of(
    log_db: &std::sync::Arc<LogDb>,
    cold: ColdGroup<'_>,
    def: &TableDef,
    scope: &str,
    at: u64,
    applied: u64,
) -> Result<Vec<StoredRow>> {
    if at > applied {
        return Err(unavailable(format!("position {at} is not applied yet here (applied: {applied})")));
    }
    let ColdGroup { db, files, group } = cold;
    let sp = table_scope_prefix(group, def.table_id, scope);
    let mut states = HashMap::from([(scope.to_string(), load_base(log_db, group, db, files, def, scope, &sp, at)?)]);
    let base = states[scope].base_index;
    replay(log_db, group, def, Some(scope), base, at, &mut states, |_| Ok(ScopeReplay::default()))?;
    Ok(states.remove(scope).map(|s| s.live().cloned().collect()).unwrap_or_default())
}

/// Re-derive the table's projection in this group (hot rows, key stubs, superseded markers)
/// from each scope's newest base and the log up to `index - 1`, staging the result into
/// `batch`. On a correct projection this changes nothing (a test compares digests).
pub fn rebuild_table(
    log_db: &std::sync::Arc<LogDb>,
    cold: ColdGroup<'_>,
    batch: &mut WriteBatch,
    def: &TableDef,
    index: u64,
) -> Result<OpResult> {
    let ColdGroup { db, files, group } = cold;
    let at = index - 1;
    // Every scope the group holds for the table, hot or cold.
    let mut scopes: BTreeSet<String> = BTreeSet::new();
    for name in [CF_ROWS, CF_COLD] {
        for item in iter_prefix(db, cf(db, name)?, &table_prefix(group, def.table_id)) {
            let (k, _) = item?;
            let (scope, _) = split_scope(&k).ok_or_else(|| Error::Corrupt("bad key".into()))?;
            scopes.insert(scope.to_string());
        }
    }
    let mut states = HashMap::new();
    let mut base_min = at;
    for scope in &scopes {
        let sp = table_scope_prefix(group, def.table_id, scope);
        let state = load_base(log_db, group, db, files, def, scope, &sp, at)?;
        base_min = base_min.min(state.base_index);
        states.insert(scope.clone(), state);
    }
    // One pass over the log from the oldest base; each scope skips the entries its own base
    // already holds.
    replay(log_db, group, def, None, base_min, at, &mut states, |_| Ok(ScopeReplay::default()))?;
    let rows_cf = cf(db, CF_ROWS)?;
    let cold = cf(db, CF_COLD)?;
    let mut rebuilt = 0u64;
    let mut ordered: Vec<(&String, &ScopeReplay)> = states.iter().collect();
    ordered.sort_by(|a, b| a.0.cmp(b.0));
    for (scope, state) in ordered {
        let sp = table_scope_prefix(group, def.table_id, scope);
        batch.delete_range_cf(rows_cf, sp.clone(), prefix_end(&sp));
        for k in &state.written {
            let mut key = sp.clone();
            key.extend_from_slice(k);
            batch.put_cf(rows_cf, key, state.rows[k].encode());
            rebuilt += 1;
        }
        // The base's stubs as settling writes them: runs where the scope has them.
        let runs = crate::cold::stored_head(db, &sp)?.is_some_and(|h| h.runs);
        let mut stubs = crate::cold::RunSettler::new(db, &sp, runs);
        stubs.clear(batch)?;
        for (k, seq) in &state.base_stubs {
            stubs.row(batch, k, *seq, false)?;
        }
        stubs.finish(batch)?;
        for item in iter_prefix(db, cold, &cold_key(&sp, KIND_SUPERSEDED, &[])) {
            let (k, v) = item?;
            let marked: [u8; 8] = v.as_ref().try_into().map_err(|_| Error::Corrupt("bad marker".into()))?;
            if u64::from_be_bytes(marked) > state.base_index {
                batch.delete_cf(cold, k);
            }
        }
        for (seq, marked) in &state.markers {
            batch.put_cf(cold, cold_key(&sp, KIND_SUPERSEDED, &seq.to_be_bytes()), marked.to_be_bytes());
        }
    }
    Ok(OpResult::Done { affected: rebuilt })
}
