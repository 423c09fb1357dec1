//! A flush in two steps: `collect` reads a table's hot rows written before a log index and
//! writes their Parquet files under temporary names; `ScopeFlush::commit` names the files and
//! stages the manifest, the scope's head and its settling in the entry's batch. A flush entry
//! does both inside apply, unless a preparation (`prepared`) did the first step off apply, from
//! a read view taken at that index.
//!
//! The files hold what the rows are, not where or when they were read: the same rows give the
//! same bytes in both ways, and `commit` reads everything else it writes (file numbers, the
//! head) from the state it commits into.

use super::files::TempFile;
use super::*;

/// Where `collect` reads: the live state, or a read view of it.
#[derive(Clone, Copy)]
pub(super) struct Read<'a> {
    pub(super) db: &'a DB,
    pub(super) snapshot: Option<&'a rocksdb::Snapshot<'a>>,
}

impl Read<'_> {
    fn options(&self) -> ReadOptions {
        let mut opts = ReadOptions::default();
        if let Some(s) = self.snapshot {
            opts.set_snapshot(s);
        }
        opts
    }

    fn head(&self, scope_prefix: &[u8]) -> Result<ScopeHead> {
        let cold = cf(self.db, CF_COLD)?;
        let key = cold_key(scope_prefix, KIND_HEAD, &[]);
        Ok(self.db.get_pinned_cf_opt(cold, key, &self.options())?.map(|b| unjson(&b)).transpose()?.unwrap_or_default())
    }
}

/// A flush's rows, read and written to temporary files, per scope in key order.
pub struct Collected {
    pub(super) scopes: Vec<ScopeFlush>,
    /// The row key (`group | table | scope | pk`) of the last row flushed, tombstones
    /// included: rows written later at keys after it cannot be among the flushed ones.
    pub(super) last_row_key: Option<Vec<u8>>,
}

impl Collected {
    pub fn last_row_key(&self) -> Option<&[u8]> {
        self.last_row_key.as_deref()
    }

    /// Whether every file written is still under its temporary name.
    pub(super) fn files_exist(&self) -> bool {
        self.scopes.iter().all(|s| s.files.iter().all(|(f, _, _)| f.exists()))
    }
}

/// Read the hot rows of the table (all scopes, or one) written before log index `upto` and
/// not flushed yet, from `start` on (see `starts`), and write their files under temporary
/// names. `format` is the group's apply format; `keep_keys`: keep the rows' keys too (a
/// preparation, checked against the keys written since, see [`Collected::fit`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn collect(
    read: Read<'_>,
    group: GroupId,
    def: &TableDef,
    scope: Option<&str>,
    upto: u64,
    start: FlushStart,
    format: u32,
    files: &FileStore,
    keep_keys: bool,
) -> Result<Collected> {
    let rows_cf = cf(read.db, CF_ROWS)?;
    let prefix = match scope {
        Some(s) => table_scope_prefix(group, def.table_id, s),
        None => table_prefix(group, def.table_id),
    };
    let schema = storage_schema(def);
    let mut scopes = Vec::new();
    let mut current: Option<ScopeFlush> = None;
    // The scope under the iterator and its head: its rows at or before the head's last
    // flush are in its files already (waiting for `Settle`) and are passed over.
    let mut seen: Option<(String, ScopeHead)> = None;
    // A raw iterator: keys and values are read in place, not copied into boxes per row.
    let mut opts = read.options();
    opts.set_iterate_upper_bound(prefix_end(&prefix));
    let mut rows = read.db.raw_iterator_cf_opt(rows_cf, opts);
    // Every hot row before the start is in a file already (see `starts`).
    match start {
        FlushStart::First => rows.seek(&prefix),
        FlushStart::Nothing => rows.seek(prefix_end(&prefix)),
        FlushStart::At(key) => rows.seek(key.max(prefix)),
    }
    while let (Some(key), Some(value)) = (rows.key(), rows.value()) {
        let (row_scope, _) = split_scope(key).ok_or_else(|| Error::Corrupt("bad row key".into()))?;
        if seen.as_ref().is_none_or(|(s, _)| s != row_scope) {
            if let Some(done) = current.take() {
                scopes.push(done.written(files, def, &schema)?);
            }
            let sp = table_scope_prefix(group, def.table_id, row_scope);
            seen = Some((row_scope.to_string(), read.head(&sp)?));
        }
        let (row_scope, head) = seen.as_ref().expect("set above");
        // Read in place: the values go straight into Arrow builders.
        let row = StoredRow::access(value)?;
        let seq = row.seq.to_native();
        if crate::stored::seq_log_index(seq) >= upto {
            // Written after the flush's point: stays hot. Between two flushed rows it must
            // not be settled with them (see `ScopeFlush::ranges`).
            if let Some(flush) = current.as_mut() {
                flush.newer_since_last = true;
            }
            rows.next();
            continue;
        }
        // Rows of an earlier flush can be left only while its settling is under way.
        if head.settle_from.is_some() && head.flushed(seq) {
            rows.next();
            continue;
        }
        let flush = current.get_or_insert_with(|| ScopeFlush::start(group, def, row_scope, format, keep_keys));
        flush.push(def, &schema, key, row, files)?;
        rows.next();
    }
    rows.status()?;
    if let Some(done) = current.take() {
        scopes.push(done.written(files, def, &schema)?);
    }
    let last_row_key = scopes.last().map(|s| [s.scope_prefix.as_slice(), s.last_key.as_slice()].concat());
    Ok(Collected { scopes, last_row_key })
}

/// The flush of one scope: rows are converted in chunks and written in files of at most
/// [`FILE_ROWS_MAX`] rows, under temporary names until `commit`.
pub(super) struct ScopeFlush {
    scope: String,
    scope_prefix: Vec<u8>,
    /// Rows not converted yet (at most [`CONVERT_ROWS_MAX`]).
    pending: Option<RowBatchBuilder>,
    file_batches: Vec<RecordBatch>,
    file_rows: usize,
    files: Vec<(TempFile, u64, Vec<ColumnStats>)>,
    rows: u64,
    /// The rows as the flush would settle them itself (see `inline`), should the scope have
    /// nothing left to settle when the flush commits. `None` once there are too many.
    inline: Option<Inline>,
    /// A row written after the flush's point was passed over since the last row pushed.
    newer_since_last: bool,
    /// Key ranges (first and last primary key, inclusive) that hold pushed rows only, before
    /// the current one: a row that stays hot between two pushed ones ends a range, so that
    /// settling them (one range deletion each) leaves it. One range unless the flush's point is
    /// before its entry (`FlushUpto`) and rows written since lie among the flushed ones.
    ranges: Vec<(Vec<u8>, Vec<u8>)>,
    /// Primary-key bytes of the first row of the current range.
    range_first: Option<Vec<u8>>,
    /// Every row's primary key, in order, when kept (`keep_keys`); `None` past
    /// [`PREPARED_KEY_BYTES_MAX`].
    keys: Option<KeyList>,
    /// Primary-key bytes of the first row pushed: where settling must start again, if before
    /// an earlier settling's cursor (only this flush's rows can lie behind it).
    first_key: Option<Vec<u8>>,
    /// Primary-key bytes of the last row pushed: where settling may stop (reused, so a row
    /// costs no allocation).
    last_key: Vec<u8>,
}

impl ScopeFlush {
    /// Start the flush of `scope` in a group at apply `format`.
    fn start(group: GroupId, def: &TableDef, scope: &str, format: u32, keep_keys: bool) -> ScopeFlush {
        ScopeFlush {
            scope: scope.to_string(),
            scope_prefix: table_scope_prefix(group, def.table_id, scope),
            pending: None,
            file_batches: Vec::new(),
            file_rows: 0,
            files: Vec::new(),
            rows: 0,
            inline: Some(Inline::new(format, pk_fixed_width(def))),
            newer_since_last: false,
            ranges: Vec::new(),
            range_first: None,
            keys: keep_keys.then(KeyList::default),
            first_key: None,
            last_key: Vec::new(),
        }
    }

    fn push(
        &mut self,
        def: &TableDef,
        schema: &SchemaRef,
        row_key: &[u8],
        row: &ArchivedStoredRow,
        files: &FileStore,
    ) -> Result<()> {
        let (seq, deleted) = (row.seq.to_native(), row.deleted);
        assert!(row_key.starts_with(&self.scope_prefix), "a row outside the scope being flushed");
        let pk = &row_key[self.scope_prefix.len()..];
        if self.first_key.is_none() {
            self.first_key = Some(pk.to_vec());
        }
        if std::mem::take(&mut self.newer_since_last)
            && let Some(first) = self.range_first.take()
        {
            self.ranges.push((first, self.last_key.clone()));
        }
        if let Some(keys) = &mut self.keys
            && !keys.push(pk)
        {
            self.keys = None;
        }
        if self.range_first.is_none() {
            self.range_first = Some(pk.to_vec());
        }
        self.last_key.clear();
        self.last_key.extend_from_slice(pk);
        if let Some(inline) = &mut self.inline
            && !inline.push(pk, seq, deleted)
        {
            self.inline = None;
        }
        if deleted {
            // A tombstone shadows nothing once flushed: the version it deleted was marked
            // superseded when the delete was applied. Its settling drops it and that
            // version's stub.
            return Ok(());
        }
        let pending = self.pending.get_or_insert_with(|| RowBatchBuilder::new(def, schema, CONVERT_ROWS_MAX));
        pending.push_archived(row);
        self.rows += 1;
        if pending.len() == CONVERT_ROWS_MAX {
            self.convert()?;
        }
        if self.file_rows + self.pending.as_ref().map_or(0, RowBatchBuilder::len) >= FILE_ROWS_MAX {
            self.convert()?;
            self.write(files, def, schema)?;
        }
        Ok(())
    }

    fn convert(&mut self) -> Result<()> {
        let Some(pending) = self.pending.take().filter(|p| !p.is_empty()) else { return Ok(()) };
        self.file_rows += pending.len();
        self.file_batches.push(pending.finish()?);
        Ok(())
    }

    fn write(&mut self, files: &FileStore, def: &TableDef, schema: &SchemaRef) -> Result<()> {
        if self.file_batches.is_empty() {
            return Ok(());
        }
        let batches = std::mem::take(&mut self.file_batches);
        self.file_rows = 0;
        let mut stats = StatsBuilder::new(def);
        for b in &batches {
            stats.add(b)?;
        }
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        let pk_column = def.columns[def.pk_index()].storage_name();
        let file = TempFile::write(files, &scope_dir(def, &self.scope), schema, &batches, pk_column)?;
        self.files.push((file, rows, stats.finish()));
        Ok(())
    }

    /// Every row pushed is in a file.
    fn written(mut self, files: &FileStore, def: &TableDef, schema: &SchemaRef) -> Result<ScopeFlush> {
        self.convert()?;
        self.write(files, def, schema)?;
        Ok(self)
    }

    /// Name the files and stage the manifest, the head and the settling of the flush at log
    /// `index` of the rows before `upto`, in the state the batch commits into.
    pub(super) fn commit(
        self,
        c: &ColdApplier<'_>,
        batch: &mut WriteBatch,
        def: &TableDef,
        index: u64,
        upto: u64,
    ) -> Result<ScopeOutcome> {
        let cold = cf(c.db, CF_COLD)?;
        let mut head = scope_head(c.db, &self.scope_prefix)?;
        // The flush settles its rows itself only if nothing was left to settle before it, and
        // with fewer range deletions than a `Settle` writes stubs.
        let inline = self.inline.filter(|_| head.settle_from.is_none() && self.ranges.len() < SETTLE_INLINE_STUBS_MAX);
        head.runs = pk_fixed_width(def);
        let log_start = head.last_flush_index + 1;
        let mut metas = Vec::with_capacity(self.files.len());
        let mut bytes = 0;
        for (file, rows, columns) in self.files {
            let file_no = head.next_file_no;
            head.next_file_no += 1;
            let path = super::apply::file_rel(def, &self.scope, "flush", index, file_no);
            let (file_bytes, sha256) = (file.bytes, file.sha256.clone());
            file.publish(&c.env.files, &path)?;
            bytes += file_bytes;
            let meta = FileMeta {
                file_no,
                path,
                log_start,
                log_end: upto,
                created_at: index,
                rows,
                bytes: file_bytes,
                sha256,
                written_by: "flush".to_string(),
                retired_at: None,
                columns,
            };
            batch.put_cf(cold, cold_key(&self.scope_prefix, KIND_FILE, &meta.file_no.to_be_bytes()), json(&meta)?);
            metas.push(meta);
        }
        head.last_flush_index = upto;
        match inline {
            Some(inline) => {
                let mut ranges = self.ranges;
                ranges.extend(self.range_first.map(|first| (first, self.last_key.clone())));
                inline.settle(c.db, batch, (&self.scope_prefix, head.runs), &ranges)?
            }
            // Settling goes on from its cursor, or from this flush's first row if that sorts
            // before it: the rows behind the cursor were settled, all but this flush's.
            // It ends at this flush's last row, or at an earlier flush's if that sorts after
            // it; a head without an end (written before ends existed) keeps none.
            None => {
                let first = self.first_key.unwrap_or_default();
                let last = self.last_key;
                head.settle_to = match (head.settle_from.is_some(), head.settle_to.take()) {
                    (false, _) => Some(last),
                    (true, Some(end)) => Some(end.max(last)),
                    (true, None) => None,
                };
                head.settle_from = Some(match head.settle_from.take() {
                    Some(cursor) => cursor.min(first),
                    None => first,
                });
            }
        }
        batch.put_cf(cold, cold_key(&self.scope_prefix, KIND_HEAD, &[]), json(&head)?);
        // The manifest as a file beside the data, for tools that read the Parquet files
        // directly. Named by log index, so it is never rewritten with other content.
        let mut manifest = scope_files(c.db, &self.scope_prefix)?;
        manifest.retain(|f| f.retired_at.is_none());
        let files = metas.len() as u64;
        manifest.extend(metas);
        let manifest_rel = format!("{}/manifest-{index:020}.json", scope_dir(def, &self.scope));
        c.env.files.will_write(&manifest_rel)?;
        write_small_file(&c.env.files.path(&manifest_rel), &json(&manifest)?)?;
        Ok(ScopeOutcome { scope: self.scope, log_start, files, rows: self.rows, bytes })
    }
}

/// Bytes a preparation spends per scope on keeping its rows' primary keys, to place the keys
/// written since among them (12 bytes a row for integer keys: 1.4 million rows; a flush is
/// 100,000 by default); past it the scope's rows are kept without their keys, and any key
/// written since among them refuses the preparation.
pub const PREPARED_KEY_BYTES_MAX: usize = 16 << 20;

/// Primary keys in order, in one buffer.
#[derive(Debug, Default)]
pub(super) struct KeyList {
    bytes: Vec<u8>,
    /// Where each key ends in `bytes` (below [`PREPARED_KEY_BYTES_MAX`], so 32 bits).
    ends: Vec<u32>,
}

const _: () = assert!(PREPARED_KEY_BYTES_MAX <= u32::MAX as usize);

impl KeyList {
    /// Add a key (after every key so far); `false` past [`PREPARED_KEY_BYTES_MAX`].
    fn push(&mut self, pk: &[u8]) -> bool {
        let spent = self.bytes.len() + pk.len() + (self.ends.len() + 1) * std::mem::size_of::<u32>();
        if spent > PREPARED_KEY_BYTES_MAX {
            return false;
        }
        self.bytes.extend_from_slice(pk);
        self.ends.push(self.bytes.len() as u32);
        true
    }

    fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.bytes[start..self.ends[i] as usize]
    }

    /// Where `pk` is: `Ok(i)` at key i, `Err(i)` before key i.
    fn find(&self, pk: &[u8]) -> std::result::Result<usize, usize> {
        let (mut low, mut high) = (0, self.ends.len());
        while low < high {
            let mid = low + (high - low) / 2;
            match self.get(mid).cmp(pk) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(low)
    }
}

impl Collected {
    /// Make rows read at a preparation's index what the flush reads at its own entry, given
    /// the row keys `written` since (sorted): `false` if a written key is one of the rows (its
    /// version is newer than the prepared one: those files are not the flush's) or cannot be
    /// placed among them (their keys were not kept). A written key between two of a scope's
    /// rows ends a settling range there, as the flush's own read would.
    pub(super) fn fit(&mut self, written: &[&[u8]]) -> bool {
        for flush in &mut self.scopes {
            let sp = flush.scope_prefix.as_slice();
            let (Some(first), last) = (flush.first_key.as_deref(), flush.last_key.as_slice()) else { continue };
            // Keys written in this scope from its first row to its last.
            let from = written.partition_point(|w| *w <= sp);
            let inside: Vec<&[u8]> = written[from..]
                .iter()
                .take_while(|w| w.starts_with(sp))
                .map(|w| &w[sp.len()..])
                .filter(|pk| *pk >= first && *pk <= last)
                .collect();
            if inside.is_empty() {
                continue;
            }
            let Some(keys) = &flush.keys else { return false };
            let mut splits: Vec<usize> = Vec::new();
            for pk in inside {
                match keys.find(pk) {
                    Ok(_) => return false,
                    Err(i) if splits.last() != Some(&i) => splits.push(i),
                    Err(_) => {}
                }
            }
            let mut start = 0;
            let mut ranges = Vec::with_capacity(splits.len());
            for i in splits {
                ranges.push((keys.get(start).to_vec(), keys.get(i - 1).to_vec()));
                start = i;
            }
            flush.ranges = ranges;
            flush.range_first = Some(keys.get(start).to_vec());
        }
        true
    }
}
