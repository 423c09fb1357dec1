//! Flush, compaction and purge of cold storage, run inside apply: file names and contents are
//! a function of the log.

use super::flush::{Read, collect};
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
    pub(super) scope: String,
    pub(super) log_start: u64,
    pub(super) files: u64,
    pub(super) rows: u64,
    pub(super) bytes: u64,
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
        self.flush_upto(batch, def, scope, index, index, None)
    }

    /// Flush the hot rows written before log index `upto` (at most `index`, this entry's), as
    /// [`ColdApplier::flush`] does for all of them. `prepared`: what a preparation of `upto`
    /// wrote off apply (`prepared`), named here when it holds exactly the rows this would
    /// read; else they are read and written now, the same bytes.
    pub fn flush_upto(
        &self,
        batch: &mut WriteBatch,
        def: &TableDef,
        scope: Option<&str>,
        index: u64,
        upto: u64,
        prepared: Option<Collected>,
    ) -> Result<OpResult> {
        assert!(upto <= index, "a flush reaches past its own entry");
        let started = Instant::now();
        let started_at = crate::now_micros();
        let read = if prepared.is_some() { "prepared" } else { "in_apply" };
        let collected = match prepared {
            Some(c) => c,
            None => {
                let start = self.env.flush_starts.start(self.group, def.table_id);
                let format = crate::format::load(self.db, self.group)?;
                let view = Read { db: self.db, snapshot: None };
                collect(view, self.group, def, scope, upto, start, format, &self.env.files, false)?
            }
        };
        let mut outcomes = Vec::new();
        for flush in collected.scopes {
            outcomes.push(flush.commit(self, batch, def, index, upto)?);
        }
        self.env.hot.reset(self.group, def.table_id);
        let rows: u64 = outcomes.iter().map(|o| o.rows).sum();
        self.report("flush", def, &outcomes, index, started, started_at);
        if upto < index {
            tracing::info!(target: "kalamdb_storage", group = %self.group, table = %format!("{}.{}", def.namespace, def.name),
                upto, read, "flush of the rows before a preparation");
        }
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

/// Where a flush or compaction at log `index` writes file `file_no` of a scope (relative to
/// the storage root).
pub(super) fn file_rel(def: &TableDef, scope: &str, written_by: &str, index: u64, file_no: u64) -> String {
    format!("{}/{}-{:020}-{:06}.parquet", scope_dir(def, scope), written_by, index, file_no)
}
