//! Flush, compaction and purge of cold storage, run inside apply: file names and contents are
//! a function of the log.

use super::*;

/// Rows converted to Arrow at a time while flushing.
pub(super) const CONVERT_ROWS_MAX: usize = 8192;

const _: () = assert!(FILE_ROWS_MAX.is_multiple_of(CONVERT_ROWS_MAX));

/// Cold-storage work of one apply call on one group.
pub struct ColdApplier<'a> {
    pub(super) db: &'a DB,
    pub(super) group: GroupId,
    pub(super) env: &'a StorageEnv,
}

/// Result of flushing or compacting one scope.
pub(super) struct ScopeOutcome {
    scope: String,
    log_start: u64,
    files: u64,
    rows: u64,
    bytes: u64,
}

/// Scopes of a table in a group that have cold files, in key order.
pub(super) fn scopes_with_files(db: &DB, group: GroupId, table_id: u64) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for (k, _) in table_records(db, group, table_id, false)? {
        let (scope, rest) = split_scope(&k).ok_or_else(|| Error::Corrupt("bad cold key".into()))?;
        if rest.first() == Some(&KIND_HEAD) && out.last().is_none_or(|s| s != scope) {
            out.push(scope.to_string());
        }
    }
    Ok(out)
}

impl<'a> ColdApplier<'a> {
    pub fn new(db: &'a DB, group: GroupId, env: &'a StorageEnv) -> ColdApplier<'a> {
        ColdApplier { db, group, env }
    }

    /// Flush the table's hot rows (all scopes, or one) into Parquet and stage the manifest.
    /// The rows stay in RocksDB, flushed: `Settle` ops replace them by their stubs later, so
    /// this entry costs reading and encoding the rows, not a RocksDB write per row (a flush
    /// holds apply, and every write and subscriber of the group, while it runs).
    pub fn flush(&self, batch: &mut WriteBatch, def: &TableDef, scope: Option<&str>, index: u64) -> Result<OpResult> {
        let started = Instant::now();
        let started_at = crate::now_micros();
        let rows_cf = cf(self.db, CF_ROWS)?;
        let prefix = match scope {
            Some(s) => table_scope_prefix(self.group, def.table_id, s),
            None => table_prefix(self.group, def.table_id),
        };
        let schema = storage_schema(def);
        let format = crate::format::load(self.db, self.group)?;
        let mut outcomes = Vec::new();
        let mut current: Option<ScopeFlush> = None;
        // The scope under the iterator and its head: its rows at or before the head's last
        // flush are in its files already (waiting for `Settle`) and are passed over.
        let mut seen: Option<(String, ScopeHead)> = None;
        // A raw iterator: keys and values are read in place, not copied into boxes per row.
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(prefix_end(&prefix));
        let mut rows = self.db.raw_iterator_cf_opt(rows_cf, opts);
        // Every hot row before the start is in a file already (see `starts`).
        match self.env.flush_starts.start(self.group, def.table_id) {
            FlushStart::First => rows.seek(&prefix),
            FlushStart::Nothing => rows.seek(prefix_end(&prefix)),
            FlushStart::At(key) => rows.seek(key.max(prefix)),
        }
        while let (Some(key), Some(value)) = (rows.key(), rows.value()) {
            let (row_scope, _) = split_scope(key).ok_or_else(|| Error::Corrupt("bad row key".into()))?;
            if seen.as_ref().is_none_or(|(s, _)| s != row_scope) {
                if let Some(done) = current.take() {
                    outcomes.push(done.finish(self, batch, def, &schema, index)?);
                }
                let sp = table_scope_prefix(self.group, def.table_id, row_scope);
                seen = Some((row_scope.to_string(), scope_head(self.db, &sp)?));
            }
            let (row_scope, head) = seen.as_ref().expect("set above");
            // Read in place: the values go straight into Arrow builders.
            let row = StoredRow::access(value)?;
            // Rows of an earlier flush can be left only while its settling is under way.
            if head.settle_from.is_some() && head.flushed(row.seq.to_native()) {
                rows.next();
                continue;
            }
            if current.is_none() {
                current = Some(ScopeFlush::start(self, def, row_scope, head.clone(), format));
            }
            let flush = current.as_mut().expect("scope flush started above");
            flush.push(self, def, &schema, key, row, index)?;
            rows.next();
        }
        rows.status()?;
        if let Some(done) = current.take() {
            outcomes.push(done.finish(self, batch, def, &schema, index)?);
        }
        self.env.hot.reset(self.group, def.table_id);
        let rows: u64 = outcomes.iter().map(|o| o.rows).sum();
        self.report("flush", def, &outcomes, index, started, started_at);
        Ok(OpResult::Done { affected: rows })
    }

    fn report(
        &self,
        job_type: &'static str,
        def: &TableDef,
        outcomes: &[ScopeOutcome],
        index: u64,
        started: Instant,
        started_at_micros: i64,
    ) {
        let duration_ms = started.elapsed().as_millis() as u64;
        metrics::histogram!("kalamdb_storage_job_seconds", "job" => job_type).record(started.elapsed().as_secs_f64());
        for o in outcomes {
            metrics::counter!("kalamdb_storage_jobs_total", "job" => job_type).increment(1);
            metrics::counter!("kalamdb_storage_job_rows_total", "job" => job_type).increment(o.rows);
            metrics::counter!("kalamdb_storage_job_bytes_total", "job" => job_type).increment(o.bytes);
            metrics::counter!("kalamdb_storage_job_files_total", "job" => job_type).increment(o.files);
            self.env.jobs.push(JobRecord {
                job_id: format!("{job_type}-{}-{index}-{}", self.group, o.scope),
                job_type,
                namespace: def.namespace.clone(),
                table_name: def.name.clone(),
                group: self.group.to_string(),
                scope: o.scope.clone(),
                log_start: o.log_start,
                log_end: index,
                files: o.files,
                rows: o.rows,
                bytes: o.bytes,
                state: "completed",
                started_at_micros,
                duration_ms,
                message: String::new(),
            });
            tracing::info!(target: "kalamdb_storage", group = %self.group, table = %format!("{}.{}", def.namespace, def.name),
                scope = %o.scope, job_type, rows = o.rows, files = o.files, bytes = o.bytes, duration_ms, "storage job done");
        }
    }

    /// Merge each scope's live files written after its newest sealed file into as few as
    /// possible, without superseded versions, and rewrite sealed ranges with many (see `plan`).
    pub fn compact(&self, batch: &mut WriteBatch, def: &TableDef, scope: Option<&str>, index: u64) -> Result<OpResult> {
        let started = Instant::now();
        let started_at = crate::now_micros();
        let cold = cf(self.db, CF_COLD)?;
        let schema = storage_schema(def);
        let scopes = match scope {
            Some(s) => vec![s.to_string()],
            None => scopes_with_files(self.db, self.group, def.table_id)?,
        };
        let mut outcomes = Vec::new();
        for scope in scopes {
            let sp = table_scope_prefix(self.group, def.table_id, &scope);
            let files = scope_files(self.db, &sp)?;
            // Files retired by earlier compactions stay until `Op::DeleteRetired` (see `retire`).
            let live: Vec<&FileMeta> = files.iter().filter(|f| f.retired_at.is_none()).collect();
            let markers = cold_key(&sp, KIND_SUPERSEDED, &[]);
            // In key order, which is `_seq` order (big-endian).
            let mut superseded: Vec<u64> = Vec::new();
            for item in iter_prefix(self.db, cold, &markers) {
                let (k, _) = item?;
                superseded.push(marker_seq(&k)?);
            }
            let units = compaction_plan(&live, &superseded);
            if units.is_empty() {
                continue;
            }
            let mut head = scope_head(self.db, &sp)?;
            let format = crate::format::load(self.db, self.group)?;
            let log_start = units.iter().flat_map(|u| u.inputs.iter().map(|f| f.log_start)).min().unwrap_or(index);
            let mut outcome = ScopeOutcome { scope: scope.clone(), log_start, files: 0, rows: 0, bytes: 0 };
            for unit in &units {
                let first = superseded.partition_point(|m| *m < unit.first_seq);
                let end = superseded.partition_point(|m| *m < unit.end_seq);
                let dropped: HashSet<i64> = superseded[first..end].iter().map(|m| *m as i64).collect();
                let join = format >= crate::format::FORMAT_COPY_COMPACTION && dropped.is_empty();
                if !(join && self.join_unit(batch, def, &scope, &schema, &mut head, unit, index, &mut outcome)?) {
                    self.merge_unit(batch, def, &scope, &schema, &mut head, unit, &dropped, index, &mut outcome)?;
                }
                let from = cold_key(&sp, KIND_SUPERSEDED, &unit.first_seq.to_be_bytes());
                let to = match unit.end_seq {
                    u64::MAX => prefix_end(&markers),
                    end_seq => cold_key(&sp, KIND_SUPERSEDED, &end_seq.to_be_bytes()),
                };
                batch.delete_range_cf(cold, from, to);
            }
            head.last_compact_index = index;
            batch.put_cf(cold, cold_key(&sp, KIND_HEAD, &[]), json(&head)?);
            outcomes.push(outcome);
        }
        let rows: u64 = outcomes.iter().map(|o| o.rows).sum();
        self.report("compact", def, &outcomes, index, started, started_at);
        Ok(OpResult::Done { affected: rows })
    }

    /// Merge one unit's files into new ones (their log range: the inputs' union), dropping the
    /// versions in `dropped`, and retire the inputs.
    fn merge_unit(
        &self,
        batch: &mut WriteBatch,
        def: &TableDef,
        scope: &str,
        schema: &SchemaRef,
        head: &mut ScopeHead,
        unit: &CompactionUnit<'_>,
        dropped: &HashSet<i64>,
        index: u64,
        outcome: &mut ScopeOutcome,
    ) -> Result<()> {
        let cold = cf(self.db, CF_COLD)?;
        let sp = table_scope_prefix(self.group, def.table_id, scope);
        // Streamed: one batch per input file and one output file in memory at a time.
        let paths: Vec<PathBuf> =
            unit.inputs.iter().map(|f| self.env.files.local(&f.path, f.bytes, &f.sha256)).collect::<Result<_>>()?;
        let mut merge =
            super::merge::Merge::open(&paths, schema.clone(), def.pk_index(), dropped, Some(def), CONVERT_ROWS_MAX)?;
        let log_start = unit.inputs.iter().map(|f| f.log_start).min().unwrap_or(index);
        let log_end = unit.inputs.iter().map(|f| f.log_end).max().unwrap_or(index);
        let mut chunks: Vec<RecordBatch> = Vec::new();
        let mut chunk_rows = 0;
        loop {
            let next = merge.next_batch()?;
            let done = next.is_none();
            if let Some(b) = next {
                chunk_rows += b.num_rows();
                chunks.push(b);
            }
            // Files of FILE_ROWS_MAX rows (a multiple of the batch size), the last one shorter.
            if chunk_rows >= FILE_ROWS_MAX || (done && chunk_rows > 0) {
                let meta =
                    self.write_file(def, scope, schema, &chunks, head, index, "compact", (log_start, log_end))?;
                batch.put_cf(cold, cold_key(&sp, KIND_FILE, &meta.file_no.to_be_bytes()), json(&meta)?);
                outcome.files += 1;
                outcome.rows += meta.rows;
                outcome.bytes += meta.bytes;
                chunks.clear();
                chunk_rows = 0;
            }
            if done {
                break;
            }
        }
        self.retire_inputs(batch, &sp, unit, index)
    }

    /// Join one unit's files into new ones by copying their column chunks (`concat`), when
    /// they qualify; `false`, with nothing written, when they must be merged instead. The new
    /// files hold whole pieces in key order, at most [`FILE_ROWS_MAX`] rows each unless one
    /// piece alone has more.
    fn join_unit(
        &self,
        batch: &mut WriteBatch,
        def: &TableDef,
        scope: &str,
        schema: &SchemaRef,
        head: &mut ScopeHead,
        unit: &CompactionUnit<'_>,
        index: u64,
        outcome: &mut ScopeOutcome,
    ) -> Result<bool> {
        let paths: Vec<PathBuf> =
            unit.inputs.iter().map(|f| self.env.files.local(&f.path, f.bytes, &f.sha256)).collect::<Result<_>>()?;
        let Some(pieces) = super::concat::pieces(&unit.inputs, &paths, def, schema)? else {
            return Ok(false);
        };
        let mut outputs: Vec<std::ops::Range<usize>> = Vec::new();
        let (mut start, mut rows) = (0, 0u64);
        for (i, piece) in pieces.iter().enumerate() {
            if i > start && rows + piece.rows > FILE_ROWS_MAX as u64 {
                outputs.push(start..i);
                (start, rows) = (i, 0);
            }
            rows += piece.rows;
        }
        outputs.push(start..pieces.len());
        let stats_of = |r: &std::ops::Range<usize>| {
            let parts: Vec<(&[ColumnStats], u64)> = pieces[r.clone()].iter().map(|p| (&p.stats[..], p.rows)).collect();
            super::concat::joined_stats(def, &parts)
        };
        let Some(stats) = outputs.iter().map(stats_of).collect::<Option<Vec<_>>>() else {
            return Ok(false);
        };
        let cold = cf(self.db, CF_COLD)?;
        let sp = table_scope_prefix(self.group, def.table_id, scope);
        let log_start = unit.inputs.iter().map(|f| f.log_start).min().unwrap_or(index);
        let log_end = unit.inputs.iter().map(|f| f.log_end).max().unwrap_or(index);
        for (range, columns) in outputs.into_iter().zip(stats) {
            let joined = &pieces[range];
            let file_no = head.next_file_no;
            head.next_file_no += 1;
            let path = file_rel(def, scope, "compact", index, file_no);
            let (bytes, sha256) =
                write_parquet_with(&self.env.files, &path, |out| super::concat::write_joined(out, joined))?;
            let meta = FileMeta {
                file_no,
                path,
                log_start,
                log_end,
                created_at: index,
                rows: joined.iter().map(|p| p.rows).sum(),
                bytes,
                sha256,
                written_by: "compact".to_string(),
                retired_at: None,
                columns,
            };
            batch.put_cf(cold, cold_key(&sp, KIND_FILE, &file_no.to_be_bytes()), json(&meta)?);
            outcome.files += 1;
            outcome.rows += meta.rows;
            outcome.bytes += meta.bytes;
        }
        self.retire_inputs(batch, &sp, unit, index)?;
        Ok(true)
    }

    /// Retire a compaction unit's input files at `index` (deleted by a later
    /// `Op::DeleteRetired`).
    fn retire_inputs(&self, batch: &mut WriteBatch, sp: &[u8], unit: &CompactionUnit<'_>, index: u64) -> Result<()> {
        let cold = cf(self.db, CF_COLD)?;
        for f in &unit.inputs {
            let mut retired = (*f).clone();
            retired.retired_at = Some(index);
            let record = cold_key(sp, KIND_FILE, &f.file_no.to_be_bytes());
            batch.put_cf(cold, &record, json(&retired)?);
            super::retire::stage_retired(self.db, batch, self.group, index, &record, &f.path)?;
        }
        Ok(())
    }

    /// Write one file of a scope and return its manifest record.
    fn write_file(
        &self,
        def: &TableDef,
        scope: &str,
        schema: &SchemaRef,
        batches: &[RecordBatch],
        head: &mut ScopeHead,
        index: u64,
        written_by: &str,
        log_range: (u64, u64),
    ) -> Result<FileMeta> {
        let file_no = head.next_file_no;
        head.next_file_no += 1;
        let path = file_rel(def, scope, written_by, index, file_no);
        let mut stats = StatsBuilder::new(def);
        for b in batches {
            stats.add(b)?;
        }
        let pk_column = def.columns[def.pk_index()].storage_name();
        let (bytes, sha256) = write_parquet(&self.env.files, &path, schema, batches, pk_column)?;
        Ok(FileMeta {
            file_no,
            path,
            log_start: log_range.0,
            log_end: log_range.1,
            created_at: index,
            rows: batches.iter().map(|b| b.num_rows() as u64).sum(),
            bytes,
            sha256,
            written_by: written_by.to_string(),
            retired_at: None,
            columns: stats.finish(),
        })
    }

    /// Remove every cold record of a dropped table in this group; its files not retired yet
    /// are retired at `index` (deleted by a later `Op::DeleteRetired`, as a member behind may
    /// still apply a compaction of the table that reads them).
    pub fn purge(&self, batch: &mut WriteBatch, table_id: u64, index: u64) -> Result<()> {
        let cold = cf(self.db, CF_COLD)?;
        let prefix = table_prefix(self.group, table_id);
        for (k, v) in table_records(self.db, self.group, table_id, false)? {
            let (_, rest) = split_scope(&k).ok_or_else(|| Error::Corrupt("bad cold key".into()))?;
            if rest.first() == Some(&KIND_FILE) {
                let meta: FileMeta = unjson(&v)?;
                if meta.retired_at.is_none() {
                    super::retire::stage_retired(self.db, batch, self.group, index, &k, &meta.path)?;
                }
            }
        }
        batch.delete_range_cf(cold, prefix.clone(), prefix_end(&prefix));
        Ok(())
    }
}

/// The flush of one scope in progress: rows are converted in chunks and written in files of
/// at most [`FILE_ROWS_MAX`] rows.
pub(super) struct ScopeFlush {
    scope: String,
    scope_prefix: Vec<u8>,
    head: ScopeHead,
    log_start: u64,
    /// Rows not converted yet (at most [`CONVERT_ROWS_MAX`]).
    pending: Option<RowBatchBuilder>,
    file_batches: Vec<RecordBatch>,
    file_rows: usize,
    metas: Vec<FileMeta>,
    rows: u64,
    /// The rows of a flush that settles them itself (see `inline`). `None` once there are
    /// too many, or when rows of an earlier flush still wait to be settled.
    inline: Option<Inline>,
    /// Primary-key bytes of the first row pushed: where settling must start again, if before
    /// an earlier settling's cursor (only this flush's rows can lie behind it).
    first_key: Option<Vec<u8>>,
    /// Primary-key bytes of the last row pushed: where settling may stop (reused, so a row
    /// costs no allocation).
    last_key: Vec<u8>,
}

impl ScopeFlush {
    /// Start the flush of `scope` in a group at apply `format`.
    fn start(c: &ColdApplier<'_>, def: &TableDef, scope: &str, mut head: ScopeHead, format: u32) -> ScopeFlush {
        let head_settled = head.settle_from.is_none();
        head.runs = pk_fixed_width(def);
        let inline = head_settled.then(|| Inline::new(format, head.runs));
        ScopeFlush {
            scope: scope.to_string(),
            log_start: head.last_flush_index + 1,
            scope_prefix: table_scope_prefix(c.group, def.table_id, scope),
            head,
            pending: None,
            file_batches: Vec::new(),
            file_rows: 0,
            metas: Vec::new(),
            rows: 0,
            inline,
            first_key: None,
            last_key: Vec::new(),
        }
    }

    fn push(
        &mut self,
        c: &ColdApplier<'_>,
        def: &TableDef,
        schema: &SchemaRef,
        row_key: &[u8],
        row: &ArchivedStoredRow,
        index: u64,
    ) -> Result<()> {
        let (seq, deleted) = (row.seq.to_native(), row.deleted);
        assert!(row_key.starts_with(&self.scope_prefix), "a row outside the scope being flushed");
        let pk = &row_key[self.scope_prefix.len()..];
        if self.first_key.is_none() {
            self.first_key = Some(pk.to_vec());
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
            self.write(c, def, schema, index)?;
        }
        Ok(())
    }

    fn convert(&mut self) -> Result<()> {
        let Some(pending) = self.pending.take().filter(|p| !p.is_empty()) else { return Ok(()) };
        self.file_rows += pending.len();
        self.file_batches.push(pending.finish()?);
        Ok(())
    }

    fn write(&mut self, c: &ColdApplier<'_>, def: &TableDef, schema: &SchemaRef, index: u64) -> Result<()> {
        if self.file_batches.is_empty() {
            return Ok(());
        }
        let batches = std::mem::take(&mut self.file_batches);
        self.file_rows = 0;
        let meta =
            c.write_file(def, &self.scope, schema, &batches, &mut self.head, index, "flush", (self.log_start, index))?;
        self.metas.push(meta);
        Ok(())
    }

    fn finish(
        mut self,
        c: &ColdApplier<'_>,
        batch: &mut WriteBatch,
        def: &TableDef,
        schema: &SchemaRef,
        index: u64,
    ) -> Result<ScopeOutcome> {
        self.convert()?;
        self.write(c, def, schema, index)?;
        let cold = cf(c.db, CF_COLD)?;
        for meta in &self.metas {
            batch.put_cf(cold, cold_key(&self.scope_prefix, KIND_FILE, &meta.file_no.to_be_bytes()), json(meta)?);
        }
        self.head.last_flush_index = index;
        match self.inline.take() {
            Some(inline) => inline.settle(c.db, batch, (&self.scope_prefix, self.head.runs), &self.last_key)?,
            // Settling goes on from its cursor, or from this flush's first row if that sorts
            // before it: the rows behind the cursor were settled, all but this flush's.
            // It ends at this flush's last row, or at an earlier flush's if that sorts after
            // it; a head without an end (written before ends existed) keeps none.
            None => {
                let first = self.first_key.take().unwrap_or_default();
                let last = std::mem::take(&mut self.last_key);
                self.head.settle_to = match (self.head.settle_from.is_some(), self.head.settle_to.take()) {
                    (false, _) => Some(last),
                    (true, Some(end)) => Some(end.max(last)),
                    (true, None) => None,
                };
                self.head.settle_from = Some(match self.head.settle_from.take() {
                    Some(cursor) => cursor.min(first),
                    None => first,
                });
            }
        }
        batch.put_cf(cold, cold_key(&self.scope_prefix, KIND_HEAD, &[]), json(&self.head)?);
        // The manifest as a file beside the data, for tools that read the Parquet files
        // directly. Named by log index, so it is never rewritten with other content.
        let mut manifest = scope_files(c.db, &self.scope_prefix)?;
        manifest.retain(|f| f.retired_at.is_none());
        manifest.extend(self.metas.iter().cloned());
        let manifest_rel = format!("{}/manifest-{index:020}.json", scope_dir(def, &self.scope));
        c.env.files.will_write(&manifest_rel)?;
        write_small_file(&c.env.files.path(&manifest_rel), &json(&manifest)?)?;
        Ok(ScopeOutcome {
            scope: self.scope,
            log_start: self.log_start,
            files: self.metas.len() as u64,
            rows: self.rows,
            bytes: self.metas.iter().map(|m| m.bytes).sum(),
        })
    }
}

/// Where a flush or compaction at log `index` writes file `file_no` of a scope (relative to
/// the storage root).
fn file_rel(def: &TableDef, scope: &str, written_by: &str, index: u64, file_no: u64) -> String {
    format!("{}/{}-{:020}-{:06}.parquet", scope_dir(def, scope), written_by, index, file_no)
}
