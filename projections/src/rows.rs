//! The row projection: table rows of the data groups in the `rows` column family, keyed by
//! [`crate::keys::row_key`], one [`StoredRow`] (the newest version) per key.

use std::collections::HashMap;
use std::sync::Arc;

use kalamdb_log::command::ApplyErrorCode;
use kalamdb_log::{GroupId, OpResult, RowWrite, TableDef, TxWrite, Value, WriteKind};
use rocksdb::{DB, ReadOptions, WriteBatch};

use crate::changes::{Change, ChangeKind};
use crate::cold::{
    ColdGroup, FlushStarts, PkRange, RunReader, Stub, StubWriter, TableView, stub_key_of, stub_seq, superseded_key_of,
    table_view,
};
use crate::error::{Error, Result};
use crate::fences::{self, Fence};
use crate::keys::{prefix_end, row_key, split_scope, table_prefix};
pub use crate::stored::StoredRow;
use crate::stored::make_seq;
use crate::{CF_COLD, CF_ROWS};

/// Where a row's newest version is.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// In RocksDB (possibly a tombstone).
    Hot(StoredRow),
    /// In a Parquet file, with this `_seq`.
    Cold(u64),
    Absent,
}

/// Read access to row projections for the query layer. Never writes.
#[derive(Clone)]
pub struct RowReader {
    log_db: Arc<kalamdb_log::LogDb>,
    files: Arc<crate::cold::FileStore>,
    /// Footers, page key ranges and decoded pages of Parquet files, for point lookups.
    cold_cache: Arc<crate::cold::LookupCache>,
}

impl std::fmt::Debug for RowReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowReader")
    }
}

impl RowReader {
    pub fn new(log_db: Arc<kalamdb_log::LogDb>, files: Arc<crate::cold::FileStore>) -> RowReader {
        RowReader { log_db, files, cold_cache: Arc::default() }
    }

    /// The live rows of a table scope right after log index `at` was applied (time travel).
    pub fn as_of(&self, group: GroupId, def: &kalamdb_log::TableDef, scope: &str, at: u64) -> Result<Vec<StoredRow>> {
        let applied = crate::sm::applied_index(self.db(), group)?;
        crate::history::scope_as_of(&self.log_db, self.cold(group), def, scope, at, applied)
    }

    /// The table's definition when log index `at` of `group` committed (what `AS OF` reads
    /// the past through).
    pub fn schema_as_of(&self, group: GroupId, def: &kalamdb_log::TableDef, at: u64) -> Result<kalamdb_log::TableDef> {
        crate::history::schema_as_of(&self.log_db, group, def, at)
    }

    /// Hot rows, live Parquet files and superseded versions of one table scope, all read
    /// under one RocksDB snapshot (so a concurrent flush is seen entirely or not at all).
    pub fn table_view(&self, group: GroupId, table_id: u64, scope: &str, range: &PkRange) -> Result<TableView> {
        table_view(self.cold(group), table_id, scope, range)
    }

    /// The newest version of a row when it is hot; `Cold` when it lives in a Parquet file.
    pub fn lookup(&self, group: GroupId, table_id: u64, scope: &str, pk: &Value) -> Result<Lookup> {
        let db = self.db();
        let snap = db.snapshot();
        let key = row_key(group, table_id, scope, pk);
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&snap);
        if let Some(bytes) = db.get_pinned_cf_opt(self.cf()?, &key, &opts)? {
            return Ok(Lookup::Hot(StoredRow::decode(&bytes)?));
        }
        Ok(match stub_seq(db, &key, Some(&snap))? {
            Some(seq) => Lookup::Cold(seq),
            None => Lookup::Absent,
        })
    }

    /// The cold version `seq` of a row (what [`RowReader::lookup`] answered `Cold` with), read
    /// from its Parquet file; `None` when a concurrent compaction moved it.
    pub fn cold_row(
        &self,
        group: GroupId,
        def: &kalamdb_log::TableDef,
        scope: &str,
        pk: &Value,
        seq: u64,
    ) -> Result<Option<StoredRow>> {
        crate::cold::cold_row(self.cold(group), &self.cold_cache, def, scope, pk, seq)
    }

    pub fn db(&self) -> &Arc<DB> {
        self.log_db.db()
    }

    /// Whether cold files may have to come over the network (a bucket behind a cache): reads
    /// of them then belong on a blocking thread.
    pub fn cold_files_remote(&self) -> bool {
        self.files.remote().is_some()
    }

    fn cold(&self, group: GroupId) -> crate::cold::ColdGroup<'_> {
        crate::cold::ColdGroup { db: self.db(), files: &self.files, group }
    }

    fn cf(&self) -> Result<&rocksdb::ColumnFamily> {
        self.db().cf_handle(CF_ROWS).ok_or_else(|| Error::Corrupt("no rows cf".into()))
    }
}

/// Newest versions staged by one apply call, by row key, encoded as [`StoredRow::encode`]
/// writes them; `None` for a key removed outright. Encoded rather than decoded: every staged
/// row is kept here, and only an op that touches the same key again in the same call (or a
/// NOT NULL check) reads one back, so the bytes already made for the batch are kept (one
/// allocation a row) instead of a second copy of every value (one a value, and the row's
/// values can move on into its change).
pub type Staged = HashMap<Vec<u8>, Option<Vec<u8>>>;

/// Row writes of one `apply` call: a write-through overlay so that later ops in the same call
/// see earlier ops' rows before the batch is committed.
pub struct RowApplier<'a> {
    db: &'a DB,
    group: GroupId,
    /// Staged newest versions, encoded as in the batch; `None` for a key removed outright (an
    /// expired STREAM row).
    overlay: Staged,
    /// What the ops applied so far changed, for the entry's change record; the caller takes it
    /// after each entry.
    pub changes: Vec<Change>,
    /// NOT NULL fences of the tables written so far, as committed or staged by this applier.
    fences: HashMap<u64, Vec<Fence>>,
    /// Schema floors of the tables written so far, as committed or staged by this applier.
    floors: HashMap<u64, u32>,
    /// Last flush index per scope prefix and whether its stubs may be runs, read once per
    /// apply call (a flush commits the call's batch and starts a new applier, so neither can
    /// change under this one).
    heads: HashMap<Vec<u8>, (u64, bool)>,
    /// The stubs this call's writes settle (see `Prior::Unsettled`).
    stubs: StubWriter<'a>,
    /// Told the smallest key each op writes, so the table's next flush starts no later.
    flush_starts: &'a FlushStarts,
}

/// What a key's newest version is, as far as replacing it goes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Prior {
    /// Hot and written since the scope's last flush (or staged in this apply call), or none.
    Hot,
    /// Flushed, known by its stub: replacing it marks that version superseded.
    Cold(u64),
    /// A flushed hot row (live or tombstone) not settled yet: replacing it settles it first
    /// (its stub written, or dropped with a tombstone), then as for `Cold` when live.
    Unsettled { seq: u64, deleted: bool },
}

fn failed(code: ApplyErrorCode, message: String) -> OpResult {
    OpResult::Failed { code, message }
}

fn pk_display(v: &Value) -> String {
    match v {
        Value::Text(s) => format!("'{s}'"),
        other => format!("{other:?}"),
    }
}

impl<'a> RowApplier<'a> {
    pub fn new(db: &'a DB, group: GroupId, flush_starts: &'a FlushStarts) -> RowApplier<'a> {
        RowApplier {
            db,
            group,
            overlay: HashMap::new(),
            changes: Vec::new(),
            fences: HashMap::new(),
            floors: HashMap::new(),
            heads: HashMap::new(),
            stubs: StubWriter::new(db),
            flush_starts,
        }
    }

    /// The newest version of a key: hot (overlay or RocksDB) first, else its flushed version
    /// (values not read). Flushed versions known by a stub are always live.
    fn newest(&mut self, key: &[u8]) -> Result<Option<(StoredRow, Prior)>> {
        if let Some(row) = self.overlay.get(key) {
            if let Some(bytes) = row {
                return Ok(Some((StoredRow::decode(bytes)?, Prior::Hot)));
            }
        } else {
            let cf = self.db.cf_handle(CF_ROWS).ok_or_else(|| Error::Corrupt("no rows cf".into()))?;
            if let Some(bytes) = self.db.get_pinned_cf(cf, key)? {
                let row = StoredRow::decode(&bytes)?;
                let prior = self.prior_of_stored(key, &row)?;
                return Ok(Some((row, prior)));
            }
        }
        Ok(stub_seq(self.db, key, None)?.map(flushed))
    }

    /// How a row read from RocksDB (not the overlay) is replaced: settled first when its
    /// scope's last flush holds it.
    fn prior_of_stored(&mut self, key: &[u8], row: &StoredRow) -> Result<Prior> {
        let (_, pk) = split_scope(key).ok_or_else(|| Error::Corrupt("bad row key".into()))?;
        let (last_flush, _) = self.head_of(&key[..key.len() - pk.len()])?;
        // As `ScopeHead::flushed`: written before the flush's entry.
        Ok(if crate::stored::seq_log_index(row.seq) < last_flush {
            Prior::Unsettled { seq: row.seq, deleted: row.deleted }
        } else {
            Prior::Hot
        })
    }

    /// The last flush index of the scope whose prefix is `sp`, and whether its stubs may be
    /// runs.
    fn head_of(&mut self, sp: &[u8]) -> Result<(u64, bool)> {
        if let Some(head) = self.heads.get(sp) {
            return Ok(*head);
        }
        let head = crate::cold::stored_head(self.db, sp)?.map_or((0, false), |h| (h.last_flush_index, h.runs));
        self.heads.insert(sp.to_vec(), head);
        Ok(head)
    }

    /// [`Self::newest`] of many keys at once: the keys not in the overlay are read with one
    /// batched lookup per column family (RocksDB's MultiGet sorts them and probes each
    /// memtable and file once per batch), which a 1,000-row insert does for every key.
    /// All `keys` are of the scope whose prefix is `sp`.
    fn newest_many(&mut self, sp: &[u8], keys: &[Vec<u8>]) -> Result<Vec<Option<(StoredRow, Prior)>>> {
        let mut out: Vec<Option<(StoredRow, Prior)>> = vec![None; keys.len()];
        // Keys with no hot version in the overlay: read RocksDB (a key the overlay holds as
        // removed has no hot version, but may still have a flushed one).
        let mut unseen: Vec<usize> = Vec::new();
        let mut no_hot: Vec<usize> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            assert!(key.starts_with(sp), "a key outside the scope looked up");
            match self.overlay.get(key) {
                Some(Some(bytes)) => out[i] = Some((StoredRow::decode(bytes)?, Prior::Hot)),
                Some(None) => no_hot.push(i),
                None => unseen.push(i),
            }
        }
        // Keys above everything the scope holds in RocksDB need no lookup (what this call
        // staged is all in the overlay, checked above).
        if unseen.len() >= crate::ceiling::CEILING_KEYS_MIN {
            let ceiling = crate::ceiling::scope_ceiling(self.db, sp)?;
            unseen.retain(|&i| !ceiling.above(&keys[i]));
        }
        let rows_cf = self.db.cf_handle(CF_ROWS).ok_or_else(|| Error::Corrupt("no rows cf".into()))?;
        let got = self.db.batched_multi_get_cf(rows_cf, unseen.iter().map(|&i| &keys[i]), false);
        let mut stored: Vec<(usize, StoredRow)> = Vec::new();
        for (&i, value) in unseen.iter().zip(got) {
            match value? {
                Some(bytes) => stored.push((i, StoredRow::decode(&bytes)?)),
                None => no_hot.push(i),
            }
        }
        for (i, row) in stored {
            let prior = self.prior_of_stored(&keys[i], &row)?;
            out[i] = Some((row, prior));
        }
        let mut stubs = no_hot.iter().map(|&i| Ok((i, stub_key_of(&keys[i])?))).collect::<Result<Vec<_>>>()?;
        if !stubs.is_empty() && self.head_of(sp)?.1 {
            // A key with no stub of its own may be inside a run: the scope's stubs are walked
            // in key order instead.
            stubs.sort_by(|a, b| a.1.cmp(&b.1));
            let sorted: Vec<&[u8]> = stubs.iter().map(|(_, k)| k.as_slice()).collect();
            let got =
                RunReader::new(self.db, ReadOptions::default())?.versions(&crate::cold::stub_range(sp), &sorted)?;
            for ((i, _), seq) in stubs.iter().zip(got) {
                out[*i] = seq.map(flushed);
            }
            return Ok(out);
        }
        let cold_cf = self.db.cf_handle(CF_COLD).ok_or_else(|| Error::Corrupt("no cold cf".into()))?;
        let got = self.db.batched_multi_get_cf(cold_cf, stubs.iter().map(|(_, k)| k), false);
        for ((i, _), value) in stubs.iter().zip(got) {
            if let Some(b) = value? {
                out[*i] = Some(flushed(Stub::decode(&b)?.seq));
            }
        }
        Ok(out)
    }

    /// Stage the new versions; a version that replaces a flushed one marks that one
    /// superseded, so queries and compaction skip it (a flushed hot row not settled yet is
    /// settled first, so the result is what it would be had it been). Gives the versions back,
    /// in order, for their changes.
    fn commit(
        &mut self,
        batch: &mut WriteBatch,
        table_id: u64,
        staged: Vec<(Vec<u8>, StoredRow, Prior)>,
        log_index: u64,
    ) -> Result<Vec<StoredRow>> {
        if !staged.is_empty() {
            self.flush_starts.wrote(self.group, table_id, staged.iter().map(|(key, _, _)| key.as_slice()));
        }
        let cf = self.db.cf_handle(CF_ROWS).ok_or_else(|| Error::Corrupt("no rows cf".into()))?;
        let cold = self.db.cf_handle(CF_COLD).ok_or_else(|| Error::Corrupt("no cold cf".into()))?;
        self.overlay.reserve(staged.len());
        let mut rows = Vec::with_capacity(staged.len());
        let mut encoded = Vec::new();
        for (key, row, prior) in staged {
            match prior {
                Prior::Hot => {}
                Prior::Cold(seq) => batch.put_cf(cold, superseded_key_of(&key, seq)?, log_index.to_be_bytes()),
                Prior::Unsettled { seq, deleted } => {
                    let (_, pk) = split_scope(&key).ok_or_else(|| Error::Corrupt("bad row key".into()))?;
                    let sp = &key[..key.len() - pk.len()];
                    let (_, runs) = self.head_of(sp)?;
                    self.stubs.assign(batch, (sp, runs), pk, 1, (!deleted).then_some(seq))?;
                    if !deleted {
                        batch.put_cf(cold, superseded_key_of(&key, seq)?, log_index.to_be_bytes());
                    }
                }
            }
            // Encoded into one reused buffer (rkyv grows its output as it writes), then copied
            // out at its exact size.
            row.encode_into(&mut encoded);
            batch.put_cf(cf, &key, &encoded);
            self.overlay.insert(key, Some(encoded.clone()));
            rows.push(row);
        }
        Ok(rows)
    }

    /// Insert rows; the whole op fails if any key holds a live row (or repeats within the op).
    pub fn insert(
        &mut self,
        batch: &mut WriteBatch,
        table_id: u64,
        scope: &str,
        rows: Vec<RowWrite>,
        schema_version: u32,
        log_index: u64,
        first_ordinal: u64,
    ) -> Result<OpResult> {
        if let Some(refusal) = self.floor_refusal(batch, table_id, schema_version, log_index, first_ordinal)? {
            return Ok(refusal);
        }
        if let Some(refusal) = self.fence_refusal(batch, table_id, &rows, log_index, first_ordinal)? {
            return Ok(refusal);
        }
        let mut staged: Vec<(Vec<u8>, StoredRow, Prior)> = Vec::with_capacity(rows.len());
        let sp = crate::keys::table_scope_prefix(self.group, table_id, scope);
        let keys: Vec<Vec<u8>> = rows.iter().map(|r| row_key(self.group, table_id, scope, &r.pk)).collect();
        // Keys in ascending order (a bulk load's ids) cannot repeat: no set of them is needed.
        let ascending = keys.windows(2).all(|w| w[0] < w[1]);
        let mut seen = std::collections::HashSet::with_capacity(if ascending { 0 } else { rows.len() });
        let newest = self.newest_many(&sp, &keys)?;
        for (i, ((r, key), newest)) in rows.into_iter().zip(keys).zip(newest).enumerate() {
            let live = newest.as_ref().is_some_and(|(row, _)| !row.deleted);
            // Only a tombstone (or nothing) can be replaced here; a flushed one is settled.
            let prior = newest.map_or(Prior::Hot, |(_, prior)| prior);
            if live || (!ascending && !seen.insert(key.clone())) {
                return Ok(failed(
                    ApplyErrorCode::ConstraintViolation,
                    format!(
                        "Primary key violation: a row with key {} already exists (row {})",
                        pk_display(&r.pk),
                        i + 1
                    ),
                ));
            }
            let seq = make_seq(log_index, first_ordinal + i as u64);
            staged.push((key, StoredRow { seq, deleted: false, values: r.values }, prior));
        }
        let affected = staged.len() as u64;
        let written = self.commit(batch, table_id, staged, log_index)?;
        self.changes.reserve(written.len());
        for row in written {
            self.changes.push(row_change(ChangeKind::Insert, table_id, scope, row, None));
        }
        Ok(OpResult::Done { affected })
    }

    /// Replace (update) or tombstone (delete) rows that must still be at their expected `_seq`.
    pub fn rewrite(
        &mut self,
        batch: &mut WriteBatch,
        table_id: u64,
        scope: &str,
        rows: Vec<RowWrite>,
        delete: bool,
        schema_version: u32,
        log_index: u64,
        first_ordinal: u64,
    ) -> Result<OpResult> {
        if let Some(refusal) = self.floor_refusal(batch, table_id, schema_version, log_index, first_ordinal)? {
            return Ok(refusal);
        }
        if !delete && let Some(refusal) = self.fence_refusal(batch, table_id, &rows, log_index, first_ordinal)? {
            return Ok(refusal);
        }
        let mut staged: Vec<(Vec<u8>, StoredRow, Prior)> = Vec::with_capacity(rows.len());
        let mut old = Vec::with_capacity(rows.len());
        // A delete's values are the old row its statement read (see below); an update's are
        // the new version's.
        let mut read = Vec::with_capacity(if delete { rows.len() } else { 0 });
        for (i, r) in rows.into_iter().enumerate() {
            let key = row_key(self.group, table_id, scope, &r.pk);
            let current = self.newest(&key)?;
            let at_expected = match (&current, r.expected_seq) {
                (Some((row, _)), Some(expected)) => !row.deleted && row.seq == expected,
                _ => false,
            };
            let prior = current.as_ref().map_or(Prior::Hot, |(_, prior)| *prior);
            if !at_expected {
                return Ok(failed(
                    ApplyErrorCode::Conflict,
                    format!("row {} changed since it was read", pk_display(&r.pk)),
                ));
            }
            let seq = make_seq(log_index, first_ordinal + i as u64);
            let values = if delete {
                read.push(r.values);
                Vec::new()
            } else {
                r.values
            };
            old.push(current);
            staged.push((key, StoredRow { seq, deleted: delete, values }, prior));
        }
        let kind = if delete { ChangeKind::Delete } else { ChangeKind::Update };
        let affected = staged.len() as u64;
        let written = self.commit(batch, table_id, staged, log_index)?;
        let mut read = read.into_iter();
        self.changes.reserve(written.len());
        for (row, previous) in written.into_iter().zip(old) {
            let mut change = row_change(kind, table_id, scope, row, previous);
            // A deleted version that lived in a Parquet file: the statement read it (at the
            // `_seq` apply just checked) and carries it, so subscribers learn which row went.
            let values = read.next().unwrap_or_default();
            if delete && change.old_row.is_none() && change.old_seq.is_some() && !values.is_empty() {
                change.old_row = Some(values);
            }
            self.changes.push(change);
        }
        Ok(OpResult::Done { affected })
    }

    /// The first precondition of a transaction that does not hold, as the op's failure;
    /// `None` when every write would apply. It tests exactly what [`RowApplier::insert`] and
    /// [`RowApplier::rewrite`] test, on keys that must all be distinct, so a transaction that
    /// passes applies whole and one that fails stages nothing.
    pub fn check_transaction(&mut self, writes: &[TxWrite]) -> Result<Option<OpResult>> {
        let mut seen = std::collections::HashSet::new();
        for w in writes {
            if w.schema_version < self.floor_of(w.table_id)? {
                return Ok(Some(stale_schema(w.table_id, w.schema_version)));
            }
            if w.kind != WriteKind::Delete
                && let Some((row, column)) = fences::refused(self.fences_of(w.table_id)?, &w.rows)
            {
                return Ok(Some(null_refused(column, row)));
            }
            for r in &w.rows {
                let key = row_key(self.group, w.table_id, &w.scope, &r.pk);
                let newest = self.newest(&key)?;
                if !seen.insert(key) {
                    return Ok(Some(failed(
                        ApplyErrorCode::ConstraintViolation,
                        format!("a transaction writes row {} twice", pk_display(&r.pk)),
                    )));
                }
                let holds = match w.kind {
                    WriteKind::Insert => newest.as_ref().is_none_or(|(row, _)| row.deleted),
                    WriteKind::Update | WriteKind::Delete => matches!(
                        (&newest, r.expected_seq),
                        (Some((row, _)), Some(expected)) if !row.deleted && row.seq == expected
                    ),
                };
                if !holds {
                    return Ok(Some(match w.kind {
                        WriteKind::Insert => failed(
                            ApplyErrorCode::ConstraintViolation,
                            format!("Primary key violation: a row with key {} already exists", pk_display(&r.pk)),
                        ),
                        _ => failed(
                            ApplyErrorCode::Conflict,
                            format!("row {} changed since it was read", pk_display(&r.pk)),
                        ),
                    }));
                }
            }
        }
        Ok(None)
    }

    /// The table's fences as committed or staged by this applier.
    fn fences_of(&mut self, table_id: u64) -> Result<&Vec<Fence>> {
        if !self.fences.contains_key(&table_id) {
            self.fences.insert(table_id, fences::load(self.db, self.group, table_id)?);
        }
        Ok(&self.fences[&table_id])
    }

    /// The table's schema floor as committed or staged by this applier.
    fn floor_of(&mut self, table_id: u64) -> Result<u32> {
        if let Some(floor) = self.floors.get(&table_id) {
            return Ok(*floor);
        }
        let floor = fences::load_floor(self.db, self.group, table_id)?;
        self.floors.insert(table_id, floor);
        Ok(floor)
    }

    /// The failure of a row op planned on a schema version below the table's floor (`None`
    /// if it is not). Marked refused like a fence refusal: replaying one table's history
    /// cannot re-derive the floors.
    fn floor_refusal(
        &mut self,
        batch: &mut WriteBatch,
        table_id: u64,
        schema_version: u32,
        log_index: u64,
        first_ordinal: u64,
    ) -> Result<Option<OpResult>> {
        if schema_version >= self.floor_of(table_id)? {
            return Ok(None);
        }
        crate::refused::mark(self.db, batch, self.group, log_index, first_ordinal)?;
        Ok(Some(stale_schema(table_id, schema_version)))
    }

    /// Apply `Op::SchemaFloor`: raise the table's floor to `version` (a lower one changes
    /// nothing: floors never go down).
    pub fn raise_floor(&mut self, batch: &mut WriteBatch, table_id: u64, version: u32) -> Result<OpResult> {
        if version <= self.floor_of(table_id)? {
            return Ok(OpResult::Done { affected: 0 });
        }
        fences::stage_floor(self.db, batch, self.group, table_id, version)?;
        self.floors.insert(table_id, version);
        Ok(OpResult::Done { affected: 1 })
    }

    /// The failure of a row op that would store NULL in a fenced column (`None` if none
    /// would). A refused op leaves the marker history replay skips it by: replaying one table
    /// alone cannot re-derive the fences, which depend on all of the table's rows.
    fn fence_refusal(
        &mut self,
        batch: &mut WriteBatch,
        table_id: u64,
        rows: &[RowWrite],
        log_index: u64,
        first_ordinal: u64,
    ) -> Result<Option<OpResult>> {
        let Some((row, column)) = fences::refused(self.fences_of(table_id)?, rows) else { return Ok(None) };
        let refusal = null_refused(column, row);
        crate::refused::mark(self.db, batch, self.group, log_index, first_ordinal)?;
        Ok(Some(refusal))
    }

    /// Fence the column at `slot` of `def` against NULL in this group, after checking that no
    /// live row holds NULL there (`required`); or lift the fence. See [`crate::fences`].
    pub fn require_not_null(
        &mut self,
        batch: &mut WriteBatch,
        files: &crate::cold::FileStore,
        def: &TableDef,
        slot: u32,
        required: bool,
    ) -> Result<OpResult> {
        let table = format!("{}.{}", def.namespace, def.name);
        let Some(column) = def.columns.get(slot as usize).filter(|c| !c.dropped && !c.primary_key) else {
            return Ok(failed(ApplyErrorCode::ConstraintViolation, format!("no such nullable column in {table}")));
        };
        let mut fences: Vec<Fence> = self.fences_of(def.table_id)?.iter().filter(|f| f.slot != slot).cloned().collect();
        if required {
            let nulls = fences::count_nulls(
                ColdGroup { db: self.db, files, group: self.group },
                def,
                slot as usize,
                &self.overlay,
            )?;
            if nulls > 0 {
                return Ok(failed(
                    ApplyErrorCode::ConstraintViolation,
                    format!("column '{}' of {table} holds NULL in {nulls} row(s) of group {}", column.name, self.group),
                ));
            }
            fences.push(Fence { slot, column: column.name.clone(), backfill_null: column.backfill.is_none() });
        }
        fences::stage(self.db, batch, self.group, def.table_id, &fences)?;
        self.fences.insert(def.table_id, fences);
        Ok(OpResult::Done { affected: 0 })
    }

    /// Expire a STREAM table's rows in this group: remove every version (tombstones too) whose
    /// `_seq` is below `before_seq`. STREAM tables are never flushed, so no key has a stub that
    /// a removed tombstone would uncover. Sees the rows staged earlier in this apply call, so
    /// the outcome does not depend on how entries were grouped into calls.
    pub fn evict(&mut self, batch: &mut WriteBatch, table_id: u64, before_seq: u64) -> Result<OpResult> {
        let cf = self.db.cf_handle(CF_ROWS).ok_or_else(|| Error::Corrupt("no rows cf".into()))?;
        let prefix = table_prefix(self.group, table_id);
        let mut current: std::collections::BTreeMap<Vec<u8>, Option<StoredRow>> = std::collections::BTreeMap::new();
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(prefix_end(&prefix));
        let iter = self.db.iterator_cf_opt(cf, opts, rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward));
        for item in iter {
            let (k, v) = item?;
            current.insert(k.to_vec(), Some(StoredRow::decode(&v)?));
        }
        for (k, row) in &self.overlay {
            if k.starts_with(&prefix) {
                current.insert(k.clone(), row.as_deref().map(StoredRow::decode).transpose()?);
            }
        }
        let mut affected = 0u64;
        for (key, row) in current {
            let Some(row) = row.filter(|r| r.seq < before_seq) else { continue };
            if !row.deleted {
                let scope = split_scope(&key).map(|(s, _)| s.to_string()).unwrap_or_default();
                self.changes.push(Change {
                    kind: ChangeKind::Delete,
                    table_id,
                    scope,
                    namespace: String::new(),
                    seq: row.seq,
                    row: Vec::new(),
                    old_seq: Some(row.seq),
                    old_row: Some(row.values),
                    expired: true,
                    detail: String::new(),
                });
                affected += 1;
            }
            batch.delete_cf(cf, &key);
            self.overlay.insert(key, None);
        }
        Ok(OpResult::Done { affected })
    }

    /// Remove every row of a table in this group (after the table was dropped).
    pub fn purge_table(&mut self, batch: &mut WriteBatch, table_id: u64) -> Result<OpResult> {
        let cf = self.db.cf_handle(CF_ROWS).ok_or_else(|| Error::Corrupt("no rows cf".into()))?;
        let prefix = table_prefix(self.group, table_id);
        batch.delete_range_cf(cf, prefix.clone(), prefix_end(&prefix));
        self.overlay.retain(|k, _| !k.starts_with(&prefix));
        fences::stage(self.db, batch, self.group, table_id, &[])?;
        self.fences.remove(&table_id);
        Ok(OpResult::Done { affected: 0 })
    }
}

fn stale_schema(table_id: u64, version: u32) -> OpResult {
    failed(
        ApplyErrorCode::StaleSchema,
        format!("table {table_id} changed after this write was planned on its schema version {version}"),
    )
}

/// A key's flushed version as [`RowApplier::newest`] reports it: live, values not read.
fn flushed(seq: u64) -> (StoredRow, Prior) {
    (StoredRow { seq, deleted: false, values: Vec::new() }, Prior::Cold(seq))
}

fn null_refused(column: &str, row: usize) -> OpResult {
    failed(ApplyErrorCode::ConstraintViolation, format!("NULL in NOT NULL column '{column}' (row {row})"))
}

/// The change record of one row version written by an insert, update or delete.
fn row_change(
    kind: ChangeKind,
    table_id: u64,
    scope: &str,
    row: StoredRow,
    previous: Option<(StoredRow, Prior)>,
) -> Change {
    // A flushed version carries no old row, settled (known by its stub, values not read) or
    // not yet (read, but left out so that what subscribers get does not depend on when the
    // row was settled); a hot one does.
    let (old_row, old_seq) = match previous {
        Some((old, Prior::Cold(_) | Prior::Unsettled { .. })) => (None, Some(old.seq)),
        Some((old, Prior::Hot)) => (Some(old.values), Some(old.seq)),
        None => (None, None),
    };
    Change {
        kind,
        table_id,
        scope: scope.to_string(),
        namespace: String::new(),
        seq: row.seq,
        row: row.values,
        old_row,
        old_seq,
        expired: false,
        detail: String::new(),
    }
}
