//! The keyed read of one flushed row: only the live file whose log range holds the stub's
//! `_seq`, only the data page whose key statistics can hold the key; each file's footer and
//! page key ranges, and each decoded page, cached between reads.

use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, ArrayRef};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, RowSelection, RowSelector};

use super::*;

/// Version `seq` of the row whose primary key is `key`, read from the live Parquet file whose
/// log range holds `seq`'s entry. Only the data page whose key statistics can hold `key` is
/// decoded (files are sorted by key), so this costs one small read, not a scan, and nothing
/// at all when that page is still cached. `None` when no live file holds that version (a
/// compaction retired it after the caller's lookup); the caller then falls back to a scan.
pub fn cold_row(
    at: ColdGroup<'_>,
    cache: &LookupCache,
    def: &TableDef,
    scope: &str,
    key: &kalamdb_log::Value,
    seq: u64,
) -> Result<Option<StoredRow>> {
    let sp = table_scope_prefix(at.group, def.table_id, scope);
    let log_index = seq >> crate::stored::SEQ_ORDINAL_BITS;
    let manifest = cache.manifest(at.db, &sp)?;
    for meta in &manifest.live {
        if log_index < meta.log_start || log_index > meta.log_end {
            continue;
        }
        if let Some(row) = find_in_file(at.files, meta, cache, def, key, seq)? {
            return Ok(Some(row));
        }
    }
    Ok(None)
}

/// Files whose footer and page key ranges [`LookupCache`] keeps.
pub const LOOKUP_CACHE_FILES_MAX: usize = 1024;
/// Decoded pages [`LookupCache`] keeps, in bytes of their Arrow arrays: 64 MiB holds about
/// 1,300 pages of 1,024 rows of a five-column table, i.e. 1.3M rows.
pub const LOOKUP_CACHE_PAGE_BYTES_MAX: u64 = 64 << 20;

/// File records [`LookupCache`] keeps, over all the scopes it holds the live files of.
pub const LOOKUP_CACHE_MANIFEST_FILES_MAX: u64 = 16_384;

/// What keyed reads of flushed rows keep between calls, bounded in entries and bytes (quick_cache,
/// scan resistant): per scope, its live file records; per file, its parsed footer and the key
/// range of each data page; per data page, its decoded columns. A file's bytes never change
/// under its path (a rewrite of the same path writes the same bytes) and a page is named by its
/// file's entry, so nothing here goes stale; entries of retired files age out. A scope's file
/// records are checked against its head on every read (see [`ScopeManifest`]).
pub struct LookupCache {
    manifests: quick_cache::sync::Cache<Vec<u8>, Arc<ScopeManifest>, ManifestWeight>,
    files: quick_cache::sync::Cache<PathBuf, Arc<FileIndex>>,
    pages: quick_cache::sync::Cache<(u64, usize), RecordBatch, PageWeight>,
    /// Names a file's entry; a file loaded again after eviction gets a new one.
    next_file: AtomicU64,
}

impl Default for LookupCache {
    fn default() -> Self {
        LookupCache {
            manifests: quick_cache::sync::Cache::with_weighter(1024, LOOKUP_CACHE_MANIFEST_FILES_MAX, ManifestWeight),
            files: quick_cache::sync::Cache::new(LOOKUP_CACHE_FILES_MAX),
            pages: quick_cache::sync::Cache::with_weighter(2048, LOOKUP_CACHE_PAGE_BYTES_MAX, PageWeight),
            next_file: AtomicU64::new(0),
        }
    }
}

#[derive(Clone)]
struct PageWeight;

impl quick_cache::Weighter<(u64, usize), RecordBatch> for PageWeight {
    fn weight(&self, _key: &(u64, usize), page: &RecordBatch) -> u64 {
        // Never zero: a zero-weight entry would never be evicted.
        (page.get_array_memory_size() as u64).max(1)
    }
}

/// The live file records of one scope, as of its head `head`. Every change to a scope's live
/// files writes its head in the same batch, and changes it: a flush or compaction that writes
/// files advances `next_file_no`, each sets its own index (`last_flush_index`,
/// `last_compact_index`), and a dropped table's head is deleted with its records. So records
/// read with a head whose file fields equal the stored one's ([`ScopeHead::same_files`]; a
/// `Settle` moves only its cursor) are the stored records; a snapshot install brings
/// heads and records of the same log position together. Records read after the head are
/// newer, never older, than the head they are kept under, which only costs a reread.
pub(super) struct ScopeManifest {
    head: ScopeHead,
    live: Vec<FileMeta>,
}

#[derive(Clone)]
struct ManifestWeight;

impl quick_cache::Weighter<Vec<u8>, Arc<ScopeManifest>> for ManifestWeight {
    fn weight(&self, _key: &Vec<u8>, manifest: &Arc<ScopeManifest>) -> u64 {
        manifest.live.len() as u64 + 1
    }
}

/// One file as keyed reads see it: its footer and the spans of rows a read decodes (data
/// pages of the key column when the file has a page index, row groups otherwise), with each
/// span's key range.
struct FileIndex {
    id: u64,
    metadata: ArrowReaderMetadata,
    spans: Vec<Span>,
    /// Smallest and largest key of each span (null where a statistic is missing).
    mins: ArrayRef,
    maxes: ArrayRef,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Span {
    row_group: usize,
    /// First row of the span within its row group.
    first_row: usize,
    rows: usize,
}

impl LookupCache {
    /// The live file records of scope `sp`: from the cache when its head is unchanged, else
    /// read (and cached when the scope has a head, i.e. has ever been flushed).
    fn manifest(&self, db: &DB, sp: &[u8]) -> Result<Arc<ScopeManifest>> {
        let head = stored_head(db, sp)?;
        if let Some(head) = &head
            && let Some(cached) = self.manifests.get(sp)
            && cached.head.same_files(head)
        {
            metrics::counter!("kalamdb_cold_lookup_manifests_total", "outcome" => "hit").increment(1);
            return Ok(cached);
        }
        metrics::counter!("kalamdb_cold_lookup_manifests_total", "outcome" => "read").increment(1);
        let live = scope_files(db, sp)?.into_iter().filter(|m| m.retired_at.is_none()).collect();
        let Some(head) = head else {
            return Ok(Arc::new(ScopeManifest { head: ScopeHead::default(), live }));
        };
        let manifest = Arc::new(ScopeManifest { head, live });
        self.manifests.insert(sp.to_vec(), manifest.clone());
        Ok(manifest)
    }

    fn index(&self, files: &FileStore, meta: &FileMeta, path: &Path, key_column: &str) -> Result<Arc<FileIndex>> {
        if let Some(index) = self.files.get(path) {
            return Ok(index);
        }
        let local = files.local(&meta.path, meta.bytes, &meta.sha256)?;
        let file = PreadFile::open(&local, meta.bytes)?;
        let id = self.next_file.fetch_add(1, Ordering::Relaxed);
        let index = Arc::new(FileIndex::load(&file, id, key_column)?);
        self.files.insert(path.to_path_buf(), index.clone());
        Ok(index)
    }

    /// Span `at` of a file, decoded: from the cache, or read and cached.
    fn page(&self, files: &FileStore, meta: &FileMeta, index: &FileIndex, at: usize) -> Result<RecordBatch> {
        if let Some(page) = self.pages.get(&(index.id, at)) {
            metrics::counter!("kalamdb_cold_lookup_pages_total", "outcome" => "hit").increment(1);
            return Ok(page);
        }
        metrics::counter!("kalamdb_cold_lookup_pages_total", "outcome" => "read").increment(1);
        let span = index.spans[at];
        let group_rows = index.metadata.metadata().row_group(span.row_group).num_rows() as usize;
        assert!(span.first_row + span.rows <= group_rows, "span {span:?} past its row group of {group_rows}");
        let local = files.local(&meta.path, meta.bytes, &meta.sha256)?;
        let file = PreadFile::open(&local, meta.bytes)?;
        let selectors: Vec<RowSelector> = [
            RowSelector::skip(span.first_row),
            RowSelector::select(span.rows),
            RowSelector::skip(group_rows - span.first_row - span.rows),
        ]
        .into_iter()
        .filter(|s| s.row_count > 0)
        .collect();
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, index.metadata.clone())
            .with_row_groups(vec![span.row_group])
            .with_row_selection(RowSelection::from(selectors))
            .with_batch_size(CONVERT_ROWS_MAX)
            .build()
            .map_err(parquet_err)?;
        let schema = arrow::array::RecordBatchReader::schema(&reader);
        let batches = reader.collect::<std::result::Result<Vec<_>, _>>().map_err(parquet_err)?;
        let page = arrow::compute::concat_batches(&schema, &batches).map_err(parquet_err)?;
        if page.num_rows() != span.rows {
            return Err(Error::Corrupt(format!(
                "cold file {}: page of {} rows decoded to {}",
                meta.path,
                span.rows,
                page.num_rows()
            )));
        }
        self.pages.insert((index.id, at), page.clone());
        Ok(page)
    }
}

impl FileIndex {
    fn load(file: &PreadFile, id: u64, key_column: &str) -> Result<FileIndex> {
        use parquet::arrow::arrow_reader::ArrowReaderOptions;
        use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
        let options =
            ArrowReaderOptions::new().with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Optional);
        let metadata = ArrowReaderMetadata::load(file, options).map_err(parquet_err)?;
        let meta = metadata.metadata().clone();
        let stats = StatisticsConverter::try_new(key_column, metadata.schema(), meta.file_metadata().schema_descr())
            .map_err(parquet_err)?;
        if let Some((spans, mins, maxes)) = page_spans(&stats, &meta)? {
            return Ok(FileIndex { id, metadata, spans, mins, maxes });
        }
        let spans = meta
            .row_groups()
            .iter()
            .enumerate()
            .map(|(row_group, g)| Span { row_group, first_row: 0, rows: g.num_rows() as usize })
            .collect();
        let mins = stats.row_group_mins(meta.row_groups().iter()).map_err(parquet_err)?;
        let maxes = stats.row_group_maxes(meta.row_groups().iter()).map_err(parquet_err)?;
        Ok(FileIndex { id, metadata, spans, mins, maxes })
    }
}

/// The data pages of the key column as spans, when the page index counts every row of the
/// file; `None` sends the caller to row-group spans.
fn page_spans(
    stats: &parquet::arrow::arrow_reader::statistics::StatisticsConverter<'_>,
    meta: &parquet::file::metadata::ParquetMetaData,
) -> Result<Option<(Vec<Span>, ArrayRef, ArrayRef)>> {
    let (Some(column_index), Some(offset_index)) = (meta.column_index(), meta.offset_index()) else {
        return Ok(None);
    };
    let groups: Vec<usize> = (0..meta.num_row_groups()).collect();
    let Some(counts) =
        stats.data_page_row_counts(offset_index, meta.row_groups(), groups.iter()).map_err(parquet_err)?
    else {
        return Ok(None);
    };
    let mins = stats.data_page_mins(column_index, offset_index, groups.iter()).map_err(parquet_err)?;
    let maxes = stats.data_page_maxes(column_index, offset_index, groups.iter()).map_err(parquet_err)?;
    // A writer without page statistics may still write an offset index: its pages have no
    // key range, so they would all be read.
    if mins.len() != counts.len() || maxes.len() != counts.len() || mins.null_count() + maxes.null_count() > 0 {
        return Ok(None);
    }
    let group_rows: Vec<usize> = meta.row_groups().iter().map(|g| g.num_rows() as usize).collect();
    let mut spans = Vec::with_capacity(counts.len());
    let (mut group, mut first_row) = (0, 0);
    for rows in counts.iter() {
        let Some(rows) = rows else { return Ok(None) };
        // Pages fill their row group, then the next one starts (empty groups have no pages).
        while group < group_rows.len() && first_row == group_rows[group] {
            group += 1;
            first_row = 0;
        }
        let rows = rows as usize;
        if group == group_rows.len() || first_row + rows > group_rows[group] {
            return Ok(None);
        }
        spans.push(Span { row_group: group, first_row, rows });
        first_row += rows;
    }
    let counted: usize = spans.iter().map(|s| s.rows).sum();
    if counted != group_rows.iter().sum::<usize>() {
        return Ok(None);
    }
    Ok(Some((spans, mins, maxes)))
}

/// A Parquet file read with positioned reads: one `pread` per page, where the reader's
/// implementation for `File` duplicates the descriptor, seeks and reads for each.
struct PreadFile {
    file: Arc<std::fs::File>,
    bytes: u64,
}

impl PreadFile {
    fn open(path: &Path, bytes: u64) -> Result<PreadFile> {
        let file = std::fs::File::open(path)
            .map_err(|e| Error::Storage(format!("cannot open cold file {}: {e}", path.display())))?;
        Ok(PreadFile { file: Arc::new(file), bytes })
    }
}

/// A sequential reader from an offset of a [`PreadFile`].
struct PreadReader {
    file: Arc<std::fs::File>,
    at: u64,
}

impl std::io::Read for PreadReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl parquet::file::reader::Length for PreadFile {
    fn len(&self) -> u64 {
        self.bytes
    }
}

impl parquet::file::reader::ChunkReader for PreadFile {
    type T = std::io::BufReader<PreadReader>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(std::io::BufReader::new(PreadReader { file: self.file.clone(), at: start }))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; length];
        self.file.read_exact_at(&mut buf, start)?;
        Ok(buf.into())
    }
}

/// Version `seq` of `key` in one file: the spans whose key range can hold the key (one, but
/// for a key on a page boundary), searched for the key at that `_seq`.
fn find_in_file(
    files: &FileStore,
    meta: &FileMeta,
    cache: &LookupCache,
    def: &TableDef,
    key: &kalamdb_log::Value,
    seq: u64,
) -> Result<Option<StoredRow>> {
    use arrow::compute::kernels::cmp::{eq, gt_eq, lt_eq};

    let pk = def.pk_index();
    let path = files.path(&meta.path);
    let index = cache.index(files, meta, &path, def.columns[pk].storage_name())?;
    let key_array = crate::columnar::build_array(def.columns[pk].data_type, std::iter::once(key), 1);
    // Statistics come in the file's own Arrow type, which for text is plain UTF-8 in files
    // written before text columns were views.
    let stats_key = match index.mins.data_type() {
        t if t == key_array.data_type() => key_array.clone(),
        t => arrow::compute::cast(&key_array, t).map_err(parquet_err)?,
    };
    let stats_key = arrow::array::Scalar::new(stats_key);
    let key_scalar = arrow::array::Scalar::new(key_array);
    // Whether each [min, max] can hold the key; a missing statistic (null) keeps its span.
    let low = lt_eq(&index.mins, &stats_key).map_err(parquet_err)?;
    let high = gt_eq(&index.maxes, &stats_key).map_err(parquet_err)?;
    let may_hold = |i: usize| (low.is_null(i) || low.value(i)) && (high.is_null(i) || high.value(i));
    let storage = crate::columnar::storage_schema(def);
    for at in (0..index.spans.len()).filter(|i| may_hold(*i)) {
        let page = cache.page(files, meta, &index, at)?;
        let batch = crate::columnar::conform(def, &storage, page)?;
        let (seqs, deleted) = seq_deleted(&batch)?;
        let same_key = eq(batch.column(pk), &key_scalar).map_err(parquet_err)?;
        // Only the rows holding the key, not every row of the page; a null key compares as
        // null, and its value bit means nothing.
        let holding = match same_key.nulls() {
            Some(valid) => same_key.values() & valid.inner(),
            None => same_key.values().clone(),
        };
        for row in holding.set_indices() {
            if seqs.value(row) as u64 == seq {
                let values = def
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| crate::columnar::value_at(batch.column(i), row, c.data_type))
                    .collect::<Result<Vec<_>>>()?;
                return Ok(Some(StoredRow { seq, deleted: deleted.value(row), values }));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use arrow::array::{BooleanArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::file::properties::EnabledStatistics;

    use super::*;

    const ROWS: i64 = 7_000;

    /// Even keys 0, 2, 4, ... in row groups of 2,500 rows and pages of at most 300: page
    /// boundaries fall inside and at the ends of row groups.
    fn write_file(dir: &Path, statistics: EnabledStatistics) -> FileMeta {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("_seq", DataType::Int64, false),
            Field::new("_deleted", DataType::Boolean, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values((0..ROWS).map(|i| i * 2))),
                Arc::new(StringArray::from_iter_values((0..ROWS).map(|i| format!("n{i}")))),
                Arc::new(Int64Array::from_iter_values((0..ROWS).map(|i| 1_000 + i))),
                Arc::new(BooleanArray::from(vec![false; ROWS as usize])),
            ],
        )
        .unwrap();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(2_500))
            .set_data_page_row_count_limit(300)
            .set_write_batch_size(300)
            .set_statistics_enabled(statistics)
            .build();
        let rel = "t/f.parquet";
        std::fs::create_dir_all(dir.join("t")).unwrap();
        let mut w = ArrowWriter::try_new(std::fs::File::create(dir.join(rel)).unwrap(), schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let bytes = std::fs::metadata(dir.join(rel)).unwrap().len();
        FileMeta {
            file_no: 1,
            path: rel.into(),
            log_start: 1,
            log_end: 1,
            created_at: 1,
            rows: ROWS as u64,
            bytes,
            sha256: String::new(),
            written_by: "flush".into(),
            retired_at: None,
            columns: Vec::new(),
        }
    }

    /// Every span, read through the cache, holds exactly the keys its range says, spans tile
    /// the file in order, and a cached span is answered without the file.
    fn check_spans(statistics: EnabledStatistics, expect_pages: bool) {
        let dir = tempfile::tempdir().unwrap();
        let meta = write_file(dir.path(), statistics);
        let store = FileStore::folder(dir.path().to_path_buf());
        let cache = LookupCache::default();
        let path = store.path(&meta.path);
        let index = cache.index(&store, &meta, &path, "id").unwrap();
        assert_eq!(index.spans.len() > 3, expect_pages, "{:?}", index.spans);
        assert!(index.spans.iter().any(|s| s.row_group == 2), "three row groups: {:?}", index.spans);
        let mins = index.mins.as_any().downcast_ref::<Int64Array>().unwrap();
        let maxes = index.maxes.as_any().downcast_ref::<Int64Array>().unwrap();
        let mut next_key = 0;
        for (at, span) in index.spans.iter().enumerate() {
            let page = cache.page(&store, &meta, &index, at).unwrap();
            let ids = page.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            assert_eq!(ids.len(), span.rows);
            assert_eq!((ids.value(0), mins.value(at)), (next_key, next_key), "span {at}: {span:?}");
            assert_eq!(maxes.value(at), ids.value(ids.len() - 1));
            next_key = ids.value(ids.len() - 1) + 2;
        }
        assert_eq!(next_key, ROWS * 2, "the spans cover every row");
        // Gone from disk, still answered: the index and the pages come from memory.
        std::fs::remove_file(&path).unwrap();
        let again = cache.index(&store, &meta, &path, "id").unwrap();
        assert_eq!(again.id, index.id);
        let last = index.spans.len() - 1;
        let page = cache.page(&store, &meta, &again, last).unwrap();
        let ids = page.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ids.value(ids.len() - 1), (ROWS - 1) * 2);
        // What the cache answered came from memory: a cache that never read the file has nothing.
        let other = LookupCache::default();
        assert!(other.index(&store, &meta, &path, "id").is_err(), "no file, no index");
    }

    #[test]
    fn page_spans_tile_row_groups_and_cached_pages_need_no_file() {
        check_spans(EnabledStatistics::Page, true);
    }

    #[test]
    fn files_without_a_page_index_are_read_by_row_group() {
        check_spans(EnabledStatistics::Chunk, false);
    }

    /// A table keyed by text, one file with text as plain UTF-8 (how files were written before
    /// text columns became views) and one with views (now): both find their keys.
    #[test]
    fn text_keys_are_found_in_utf8_and_view_files() {
        use kalamdb_log::Value;
        let def: TableDef = serde_json::from_value(serde_json::json!({
            "table_id": 1, "namespace": "app", "name": "t", "table_type": "Shared",
            "options": [], "created_at_micros": 0,
            "columns": [
                {"name": "name", "data_type": "Text", "nullable": false, "primary_key": true},
                {"name": "n", "data_type": "BigInt", "nullable": true, "primary_key": false},
            ],
        }))
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::folder(dir.path().to_path_buf());
        let cache = LookupCache::default();
        for (file_no, text) in [(1, DataType::Utf8), (2, DataType::Utf8View)] {
            let schema = Arc::new(Schema::new(vec![
                Field::new("name", text.clone(), false),
                Field::new("n", DataType::Int64, true),
                Field::new("_seq", DataType::Int64, false),
                Field::new("_deleted", DataType::Boolean, false),
            ]));
            let names = StringArray::from_iter_values((0..1_000).map(|i| format!("key-{file_no}-{i:05}")));
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    arrow::compute::cast(&names, &text).unwrap(),
                    Arc::new(Int64Array::from_iter_values(0..1_000)),
                    Arc::new(Int64Array::from_iter_values((0..1_000).map(|i| file_no * 10_000 + i))),
                    Arc::new(BooleanArray::from(vec![false; 1_000])),
                ],
            )
            .unwrap();
            let props =
                WriterProperties::builder().set_data_page_row_count_limit(100).set_write_batch_size(100).build();
            let rel = format!("t/{file_no}.parquet");
            std::fs::create_dir_all(dir.path().join("t")).unwrap();
            let out = std::fs::File::create(dir.path().join(&rel)).unwrap();
            let mut w = ArrowWriter::try_new(out, schema, Some(props)).unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
            let meta = FileMeta {
                file_no: file_no as u64,
                path: rel.clone(),
                log_start: 1,
                log_end: 1,
                created_at: 1,
                rows: 1_000,
                bytes: std::fs::metadata(dir.path().join(&rel)).unwrap().len(),
                sha256: String::new(),
                written_by: "flush".into(),
                retired_at: None,
                columns: Vec::new(),
            };
            let key = Value::Text(format!("key-{file_no}-00777"));
            let row = find_in_file(&store, &meta, &cache, &def, &key, (file_no * 10_000 + 777) as u64).unwrap();
            let row = row.unwrap_or_else(|| panic!("{text}: key not found"));
            assert_eq!(row.values, vec![key.clone(), Value::BigInt(777)], "{text}");
            assert_eq!(find_in_file(&store, &meta, &cache, &def, &key, 1).unwrap(), None, "{text}: other version");
        }
    }
}
