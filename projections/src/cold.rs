//! Cold storage: a table's rows flushed out of RocksDB into Parquet files, the manifest that
//! lists those files, the key index that keeps primary-key checks exact without reading a
//! file, and compaction. Everything here runs inside `apply` (a `Flush` or `Compact` op), so
//! file names and contents are a function of the log: every node writes the same bytes.
//!
//! Keys of the `cold` column family, after `group | table_id | scope_len | scope`:
//! - `K | pk` → `seq u64 BE`: the key's newest flushed version, which is live (flush drops
//!   tombstones). A hot row in `rows` with the same key is newer and wins.
//! - `F | file_no u64 BE` → [`FileMeta`] JSON: the manifest, one record per file.
//! - `X | seq u64 BE` → `index u64 BE`: a flushed version that a newer version superseded at
//!   that log index. Queries skip it, compaction drops it, time travel reads the index.
//! - `H` → [`ScopeHead`] JSON: next file number and the last flush's log index.
//!
//! The manifest lives in RocksDB, in the same write batch as the stubs, the removal of the hot
//! rows and the applied log id, so a reader (who reads under one RocksDB snapshot) sees a flush
//! entirely or not at all. Files are written first (temp name, fsync, rename, fsync dir), so a
//! crash anywhere before the batch commits leaves the entry unapplied and re-applying it writes
//! the same file again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use kalamdb_log::{GroupId, OpResult, TableDef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::columnar::{ColumnStats, StatsBuilder, rows_to_batch, seq_deleted, table_schema};
use crate::error::{Error, Result};
use crate::keys::{prefix_end, split_scope, table_prefix, table_scope_prefix};
use crate::rows::StoredRow;
use crate::{CF_COLD, CF_ROWS};

/// Rows in one Parquet file; a larger flush writes several files.
pub const FILE_ROWS_MAX: usize = 1 << 20;
/// Rows in one Parquet row group: the unit of statistics-based pruning and of parallel reads.
pub const ROW_GROUP_ROWS_MAX: usize = 128 * 1024;
/// Rows in one Parquet data page. Files are sorted by primary key, so a point lookup uses the
/// page index to decode one page per column instead of the whole row group: with the
/// writer's default (20,000 rows or 1 MiB per page) a lookup among 100,000 flushed rows
/// decoded all of them (443 lookups/s in benches/RESULTS.md).
pub const PAGE_ROWS_MAX: usize = 4096;
/// Bytes of one column's dictionary page in a row group; past it the column is written
/// plainly. A point lookup reads the dictionary of every column it returns, so a large one
/// (the writer's default is 1 MiB) costs more than the page itself.
pub const DICTIONARY_PAGE_BYTES_MAX: usize = 64 * 1024;
/// Rows converted to Arrow at a time while flushing.
const CONVERT_ROWS_MAX: usize = 8192;
// Compaction cuts files from whole merge batches.
const _: () = assert!(FILE_ROWS_MAX.is_multiple_of(CONVERT_ROWS_MAX));
/// Flush and compaction jobs remembered for `system.jobs`, per node.
pub const JOBS_RETAINED_MAX: usize = 1024;
/// Recorded as the Parquet `created_by`: fixed, so file bytes do not depend on the build.
const PARQUET_CREATED_BY: &str = "kalamdb";

pub(crate) const KIND_STUB: u8 = b'K';
pub(crate) const KIND_FILE: u8 = b'F';
pub(crate) const KIND_SUPERSEDED: u8 = b'X';
pub(crate) const KIND_HEAD: u8 = b'H';

/// One Parquet file of a table scope, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileMeta {
    pub file_no: u64,
    /// Relative to the storage root, `/`-separated.
    pub path: String,
    /// The log range whose writes the file holds (first and last index, inclusive).
    pub log_start: u64,
    pub log_end: u64,
    /// Log index of the flush or compaction that wrote the file.
    pub created_at: u64,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
    /// `flush` or `compact`.
    pub written_by: String,
    /// Log index of the compaction that replaced this file; the file stays on disk until the
    /// next compaction of the scope, so queries already reading it can finish.
    pub retired_at: Option<u64>,
    pub columns: Vec<ColumnStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScopeHead {
    pub next_file_no: u64,
    pub last_flush_index: u64,
    /// Log index of the last compaction that rewrote files (0: none). Time travel reaches no
    /// further back: compaction drops the superseded versions older positions need.
    pub last_compact_index: u64,
}

/// What a scan needs from cold storage for one table scope, read under one RocksDB snapshot
/// together with the hot rows.
#[derive(Debug, Clone, Default)]
pub struct TableView {
    /// Live hot rows (newest versions still in RocksDB), in primary-key order.
    pub hot: Vec<StoredRow>,
    /// Live files: absolute path and size in bytes.
    pub files: Vec<(PathBuf, u64)>,
    /// `_seq`s of file rows that a newer version superseded.
    pub superseded: Vec<u64>,
}

/// One flush or compaction as `system.jobs` shows it. Kept in memory per node: durations and
/// wall-clock times are not part of the replicated state.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub job_id: String,
    pub job_type: &'static str,
    pub namespace: String,
    pub table_name: String,
    pub group: String,
    pub scope: String,
    pub log_start: u64,
    pub log_end: u64,
    pub files: u64,
    pub rows: u64,
    pub bytes: u64,
    pub state: &'static str,
    pub started_at_micros: i64,
    pub duration_ms: u64,
    pub message: String,
}

/// The node's recent storage jobs, newest last, bounded by [`JOBS_RETAINED_MAX`].
#[derive(Debug, Default)]
pub struct JobLog {
    records: Mutex<VecDeque<JobRecord>>,
}

impl JobLog {
    pub fn push(&self, record: JobRecord) {
        let mut r = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() == JOBS_RETAINED_MAX {
            r.pop_front();
        }
        r.push_back(record);
    }

    pub fn list(&self) -> Vec<JobRecord> {
        self.records.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

/// Rows written per (group, table) since its last flush on this node: what the automatic
/// flush policy looks at. Approximate by design (counts writes, resets on restart).
#[derive(Debug, Default)]
pub struct HotStats {
    map: Mutex<HashMap<(u32, u64), (u64, Instant)>>,
}

impl HotStats {
    pub fn record(&self, group: GroupId, table_id: u64, rows: u64) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.entry((group.to_u32(), table_id)).or_insert((0, Instant::now())).0 += rows;
    }

    pub fn reset(&self, group: GroupId, table_id: u64) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.insert((group.to_u32(), table_id), (0, Instant::now()));
    }

    /// (group, table_id, rows written since the last flush, time since the last flush).
    pub fn list(&self) -> Vec<(GroupId, u64, u64, std::time::Duration)> {
        let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.iter()
            .filter_map(|((g, t), (rows, since))| GroupId::from_u32(*g).map(|g| (g, *t, *rows, since.elapsed())))
            .collect()
    }
}

/// Where a node keeps files, and the per-node registries storage jobs report to.
#[derive(Debug)]
pub struct StorageEnv {
    pub snapshot_dir: PathBuf,
    /// Root of the Parquet files; may be one volume shared by every node.
    pub storage_dir: PathBuf,
    pub jobs: JobLog,
    pub hot: HotStats,
}

impl StorageEnv {
    pub fn new(snapshot_dir: PathBuf, storage_dir: PathBuf) -> Arc<StorageEnv> {
        Arc::new(StorageEnv { snapshot_dir, storage_dir, jobs: JobLog::default(), hot: HotStats::default() })
    }
}

pub(crate) fn cold_key(scope_prefix: &[u8], kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(scope_prefix.len() + 1 + rest.len());
    k.extend_from_slice(scope_prefix);
    k.push(kind);
    k.extend_from_slice(rest);
    k
}

/// The stub key of a row key (`group | table | scope | pk` → same with `K` before the pk).
pub fn stub_key_of(row_key: &[u8]) -> Result<Vec<u8>> {
    let (scope, pk) = split_scope(row_key).ok_or_else(|| Error::Corrupt("bad row key".into()))?;
    let prefix_len = row_key.len() - pk.len();
    debug_assert!(prefix_len == 12 + 2 + scope.len());
    Ok(cold_key(&row_key[..prefix_len], KIND_STUB, pk))
}

/// The marker key recording that the flushed version `seq` of a row key is superseded.
pub fn superseded_key_of(row_key: &[u8], seq: u64) -> Result<Vec<u8>> {
    let (_, pk) = split_scope(row_key).ok_or_else(|| Error::Corrupt("bad row key".into()))?;
    Ok(cold_key(&row_key[..row_key.len() - pk.len()], KIND_SUPERSEDED, &seq.to_be_bytes()))
}

/// A path component made only of `[A-Za-z0-9_-]`; anything else is hex-encoded, so no name can
/// climb out of the storage root or collide with another.
fn path_component(name: &str) -> String {
    let plain = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain { name.to_string() } else { format!("x{}", hex::encode(name.as_bytes())) }
}

/// `ns/table-t<id>/<scope>`: the directory of one table scope under the storage root.
pub fn scope_dir(def: &TableDef, scope: &str) -> String {
    let scope_part = if scope.is_empty() { "shared".to_string() } else { format!("u_{}", path_component(scope)) };
    format!("{}/{}-t{}/{}", path_component(&def.namespace), path_component(&def.name), def.table_id, scope_part)
}

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily> {
    db.cf_handle(name).ok_or_else(|| Error::Corrupt(format!("no {name} cf")))
}

pub(crate) fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Corrupt(e.to_string()))
}

fn unjson<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| Error::Corrupt(e.to_string()))
}

fn parquet_err(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

/// A `Write` that hashes and counts what goes to the file, so the manifest's checksum costs
/// no second read.
struct HashingWriter {
    file: std::fs::File,
    hasher: Sha256,
    bytes: u64,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Write `batches` as the Parquet file `root/rel`: temp name (unique per writer, so nodes
/// sharing a volume never write into each other's temp file), fsync, rename, fsync the
/// directory. Same batches → same bytes; an existing file of that name is replaced by an
/// identical one. Returns (bytes, sha256).
fn write_parquet(
    root: &Path,
    rel: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    pk_column: &str,
) -> Result<(u64, String)> {
    let path = root.join(rel);
    let dir = path.parent().ok_or_else(|| Error::Storage(format!("bad file path {rel}")))?;
    std::fs::create_dir_all(dir)?;
    crate::failpoint::hit("flush-before-write");
    let tmp = path.with_extension(format!("parquet.tmp-{:016x}", fastrand::u64(..)));
    let props = WriterProperties::builder()
        .set_created_by(PARQUET_CREATED_BY.into())
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS_MAX))
        .set_data_page_row_count_limit(PAGE_ROWS_MAX)
        .set_dictionary_page_size_limit(DICTIONARY_PAGE_BYTES_MAX)
        // Unique in every file: a dictionary saves nothing, and reading any page of a
        // dictionary-encoded column means reading and decoding the whole dictionary first.
        .set_column_dictionary_enabled(ColumnPath::from(pk_column), false)
        .set_column_dictionary_enabled(ColumnPath::from(crate::columnar::SEQ_COLUMN), false)
        .build();
    let out = HashingWriter { file: std::fs::File::create(&tmp)?, hasher: Sha256::new(), bytes: 0 };
    let (bytes, sha) = match encode_parquet(out, schema, props, batches) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    crate::failpoint::hit("flush-after-temp");
    std::fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    crate::failpoint::hit("flush-after-rename");
    Ok((bytes, sha))
}

/// Encode `batches` into `out` and fsync it; returns (bytes, sha256).
fn encode_parquet(
    out: HashingWriter,
    schema: &SchemaRef,
    props: WriterProperties,
    batches: &[RecordBatch],
) -> Result<(u64, String)> {
    let mut writer = ArrowWriter::try_new(out, schema.clone(), Some(props)).map_err(parquet_err)?;
    for b in batches {
        writer.write(b).map_err(parquet_err)?;
    }
    let mut out = writer.into_inner().map_err(parquet_err)?;
    out.flush()?;
    out.file.sync_all()?;
    Ok((out.bytes, hex::encode(out.hasher.finalize())))
}

/// Read a whole Parquet file of the table schema.
pub fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>> {
    open_parquet(path, CONVERT_ROWS_MAX)?.map(|b| b.map_err(parquet_err)).collect()
}

/// A reader of a Parquet file's batches, `batch_rows` rows at a time.
pub(crate) fn open_parquet(
    path: &Path,
    batch_rows: usize,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::Storage(format!("cannot open cold file {}: {e}", path.display())))?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet_err)?
        .with_batch_size(batch_rows)
        .build()
        .map_err(parquet_err)
}

/// Version `seq` of the row whose primary key is `key`, read from the live Parquet file whose
/// log range holds `seq`'s entry. Only the row groups and data pages whose key statistics can
/// hold `key` are decoded (files are sorted by key), so this costs one small read, not a scan.
/// `None` when no live file holds that version (a compaction retired it after the caller's
/// lookup); the caller then falls back to a scan.
#[allow(clippy::too_many_arguments)]
pub fn cold_row(
    db: &DB,
    storage_dir: &Path,
    metadata: &MetadataCache,
    group: GroupId,
    def: &TableDef,
    scope: &str,
    key: &kalamdb_log::Value,
    seq: u64,
) -> Result<Option<StoredRow>> {
    let sp = table_scope_prefix(group, def.table_id, scope);
    let log_index = seq >> crate::rows::SEQ_ORDINAL_BITS;
    for meta in scope_files(db, &sp)? {
        if meta.retired_at.is_some() || log_index < meta.log_start || log_index > meta.log_end {
            continue;
        }
        if let Some(row) = find_in_file(&storage_dir.join(&meta.path), metadata, def, key, seq)? {
            return Ok(Some(row));
        }
    }
    Ok(None)
}

/// Files whose parsed metadata [`MetadataCache`] keeps; past it the cache starts over.
pub const METADATA_CACHE_FILES_MAX: usize = 1024;

/// Parsed Parquet footers and page indexes by path. A file's bytes never change under its
/// path (a rewrite of the same path writes the same bytes), so an entry never goes stale.
#[derive(Default)]
pub struct MetadataCache {
    files: Mutex<HashMap<PathBuf, parquet::arrow::arrow_reader::ArrowReaderMetadata>>,
}

impl MetadataCache {
    fn get_or_load(
        &self,
        path: &Path,
        file: &std::fs::File,
    ) -> Result<parquet::arrow::arrow_reader::ArrowReaderMetadata> {
        use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
        if let Some(m) = self.files.lock().unwrap_or_else(|p| p.into_inner()).get(path) {
            return Ok(m.clone());
        }
        let options =
            ArrowReaderOptions::new().with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Optional);
        let loaded = ArrowReaderMetadata::load(file, options).map_err(parquet_err)?;
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if files.len() >= METADATA_CACHE_FILES_MAX {
            files.clear();
        }
        files.insert(path.to_path_buf(), loaded.clone());
        Ok(loaded)
    }
}

fn find_in_file(
    path: &Path,
    cache: &MetadataCache,
    def: &TableDef,
    key: &kalamdb_log::Value,
    seq: u64,
) -> Result<Option<StoredRow>> {
    use arrow::array::{Array, Datum};
    use arrow::compute::kernels::cmp::{eq, gt_eq, lt_eq};
    use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
    use parquet::arrow::arrow_reader::{RowSelection, RowSelector};

    let file = std::fs::File::open(path)
        .map_err(|e| Error::Storage(format!("cannot open cold file {}: {e}", path.display())))?;
    let metadata = cache.get_or_load(path, &file)?;
    let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata);
    let pk = def.pk_index();
    let key_array = crate::columnar::build_array(def.columns[pk].data_type, std::iter::once(key), 1);
    let key_scalar = arrow::array::Scalar::new(key_array);
    // Whether each [min, max] can hold the key; a missing statistic (null) keeps its part.
    let may_hold = |mins: &dyn Datum, maxes: &dyn Datum| -> Result<Vec<bool>> {
        let low = lt_eq(mins, &key_scalar).map_err(parquet_err)?;
        let high = gt_eq(maxes, &key_scalar).map_err(parquet_err)?;
        Ok(low.iter().zip(high.iter()).map(|(l, h)| l.unwrap_or(true) && h.unwrap_or(true)).collect())
    };
    let meta = builder.metadata().clone();
    let arrow_schema = builder.schema().clone();
    let stats = StatisticsConverter::try_new(&def.columns[pk].name, &arrow_schema, meta.file_metadata().schema_descr())
        .map_err(parquet_err)?;
    let row_group_mins = stats.row_group_mins(meta.row_groups().iter()).map_err(parquet_err)?;
    let row_group_maxes = stats.row_group_maxes(meta.row_groups().iter()).map_err(parquet_err)?;
    let groups: Vec<usize> = may_hold(&row_group_mins, &row_group_maxes)?
        .into_iter()
        .enumerate()
        .filter_map(|(i, keep)| keep.then_some(i))
        .collect();
    if groups.is_empty() {
        return Ok(None);
    }
    let mut builder = builder.with_row_groups(groups.clone()).with_batch_size(CONVERT_ROWS_MAX);
    if let (Some(column_index), Some(offset_index)) = (meta.column_index(), meta.offset_index())
        && let Some(counts) =
            stats.data_page_row_counts(offset_index, meta.row_groups(), groups.iter()).map_err(parquet_err)?
    {
        let page_mins = stats.data_page_mins(column_index, offset_index, groups.iter()).map_err(parquet_err)?;
        let page_maxes = stats.data_page_maxes(column_index, offset_index, groups.iter()).map_err(parquet_err)?;
        let keep = may_hold(&page_mins, &page_maxes)?;
        // Rows past the counted pages (none when every page was counted) are read, not lost.
        let selectors: Vec<RowSelector> = counts
            .iter()
            .zip(keep)
            .map(|(rows, keep)| {
                let rows = rows.unwrap_or_default() as usize;
                if keep { RowSelector::select(rows) } else { RowSelector::skip(rows) }
            })
            .collect();
        let counted: usize = selectors.iter().map(|s| s.row_count).sum();
        let total: usize = groups.iter().map(|g| meta.row_group(*g).num_rows() as usize).sum();
        if counted == total {
            builder = builder.with_row_selection(RowSelection::from(selectors));
        }
    }
    for batch in builder.build().map_err(parquet_err)? {
        let batch = batch.map_err(parquet_err)?;
        let (seqs, deleted) = seq_deleted(&batch)?;
        let same_key = eq(batch.column(pk), &key_scalar).map_err(parquet_err)?;
        for row in 0..batch.num_rows() {
            if same_key.value(row) && !same_key.is_null(row) && seqs.value(row) as u64 == seq {
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

/// Cold-storage work of one apply call on one group.
pub struct ColdApplier<'a> {
    db: &'a DB,
    group: GroupId,
    env: &'a StorageEnv,
}

/// Result of flushing or compacting one scope.
struct ScopeOutcome {
    scope: String,
    log_start: u64,
    files: u64,
    rows: u64,
    bytes: u64,
}

pub(crate) fn iter_prefix<'a>(
    db: &'a DB,
    cf: &rocksdb::ColumnFamily,
    prefix: &[u8],
) -> impl Iterator<Item = std::result::Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>> + 'a {
    let mut opts = ReadOptions::default();
    opts.set_iterate_upper_bound(prefix_end(prefix));
    db.iterator_cf_opt(cf, opts, IteratorMode::From(prefix, Direction::Forward))
}

/// The manifest of one scope: every file record, in file-number order.
pub fn scope_files(db: &DB, scope_prefix: &[u8]) -> Result<Vec<FileMeta>> {
    let cold = cf(db, CF_COLD)?;
    let prefix = cold_key(scope_prefix, KIND_FILE, &[]);
    iter_prefix(db, cold, &prefix).map(|item| unjson::<FileMeta>(&item?.1)).collect()
}

pub fn scope_head(db: &DB, scope_prefix: &[u8]) -> Result<ScopeHead> {
    let cold = cf(db, CF_COLD)?;
    match db.get_pinned_cf(cold, cold_key(scope_prefix, KIND_HEAD, &[]))? {
        Some(b) => unjson(&b),
        None => Ok(ScopeHead::default()),
    }
}

/// Scopes of a table in a group that have cold files, in key order.
fn scopes_with_files(db: &DB, group: GroupId, table_id: u64) -> Result<Vec<String>> {
    let cold = cf(db, CF_COLD)?;
    let mut out: Vec<String> = Vec::new();
    for item in iter_prefix(db, cold, &table_prefix(group, table_id)) {
        let (k, _) = item?;
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

    /// Flush the table's hot rows (all scopes, or one) into Parquet, stage the manifest, the
    /// key stubs and the removal of the flushed hot rows into `batch`.
    pub fn flush(&self, batch: &mut WriteBatch, def: &TableDef, scope: Option<&str>, index: u64) -> Result<OpResult> {
        let started = Instant::now();
        let started_at = crate::now_micros();
        let rows_cf = cf(self.db, CF_ROWS)?;
        let prefix = match scope {
            Some(s) => table_scope_prefix(self.group, def.table_id, s),
            None => table_prefix(self.group, def.table_id),
        };
        let schema = table_schema(def);
        let mut outcomes = Vec::new();
        let mut current: Option<ScopeFlush> = None;
        for item in iter_prefix(self.db, rows_cf, &prefix) {
            let (key, value) = item?;
            let (row_scope, _) = split_scope(&key).ok_or_else(|| Error::Corrupt("bad row key".into()))?;
            if current.as_ref().is_none_or(|c| c.scope != row_scope) {
                if let Some(done) = current.take() {
                    outcomes.push(done.finish(self, batch, def, &schema, index)?);
                }
                current = Some(ScopeFlush::start(self, def, row_scope)?);
            }
            let flush = current.as_mut().expect("scope flush started above");
            flush.push(self, batch, def, &schema, &key, StoredRow::decode(&value)?, index)?;
        }
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

    /// Merge each scope's live files into as few as possible, without superseded versions.
    pub fn compact(&self, batch: &mut WriteBatch, def: &TableDef, scope: Option<&str>, index: u64) -> Result<OpResult> {
        let started = Instant::now();
        let started_at = crate::now_micros();
        let cold = cf(self.db, CF_COLD)?;
        let schema = table_schema(def);
        let scopes = match scope {
            Some(s) => vec![s.to_string()],
            None => scopes_with_files(self.db, self.group, def.table_id)?,
        };
        let pk = def.pk_index();
        let mut outcomes = Vec::new();
        for scope in scopes {
            let sp = table_scope_prefix(self.group, def.table_id, &scope);
            let files = scope_files(self.db, &sp)?;
            let superseded: HashSet<i64> = iter_prefix(self.db, cold, &cold_key(&sp, KIND_SUPERSEDED, &[]))
                .map(|item| {
                    let (k, _) = item?;
                    let b: [u8; 8] = k[k.len() - 8..].try_into().map_err(|_| Error::Corrupt("bad marker".into()))?;
                    Ok(u64::from_be_bytes(b) as i64)
                })
                .collect::<Result<_>>()?;
            let live: Vec<&FileMeta> = files.iter().filter(|f| f.retired_at.is_none()).collect();
            // Files retired by an earlier compaction have been out of every manifest since;
            // they go now.
            for f in files.iter().filter(|f| f.retired_at.is_some()) {
                match std::fs::remove_file(self.env.storage_dir.join(&f.path)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
                batch.delete_cf(cold, cold_key(&sp, KIND_FILE, &f.file_no.to_be_bytes()));
            }
            if live.len() <= 1 && superseded.is_empty() {
                continue;
            }
            // Streamed: one batch per input file and one output file in memory at a time.
            let paths: Vec<PathBuf> = live.iter().map(|f| self.env.storage_dir.join(&f.path)).collect();
            let mut merge = crate::merge::Merge::open(&paths, schema.clone(), pk, &superseded, CONVERT_ROWS_MAX)?;
            let mut head = scope_head(self.db, &sp)?;
            let log_start = live.iter().map(|f| f.log_start).min().unwrap_or(index);
            let log_end = live.iter().map(|f| f.log_end).max().unwrap_or(index);
            let mut outcome = ScopeOutcome { scope: scope.clone(), log_start, files: 0, rows: 0, bytes: 0 };
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
                    let meta = self.write_file(
                        def,
                        &scope,
                        &schema,
                        &chunks,
                        &mut head,
                        index,
                        "compact",
                        (log_start, log_end),
                    )?;
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
            for f in &live {
                let mut retired = (*f).clone();
                retired.retired_at = Some(index);
                batch.put_cf(cold, cold_key(&sp, KIND_FILE, &f.file_no.to_be_bytes()), json(&retired)?);
            }
            let markers = cold_key(&sp, KIND_SUPERSEDED, &[]);
            batch.delete_range_cf(cold, markers.clone(), prefix_end(&markers));
            head.last_compact_index = index;
            batch.put_cf(cold, cold_key(&sp, KIND_HEAD, &[]), json(&head)?);
            outcomes.push(outcome);
        }
        let rows: u64 = outcomes.iter().map(|o| o.rows).sum();
        self.report("compact", def, &outcomes, index, started, started_at);
        Ok(OpResult::Done { affected: rows })
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
        let path = format!("{}/{}-{:020}-{:06}.parquet", scope_dir(def, scope), written_by, index, file_no);
        let mut stats = StatsBuilder::new(def);
        for b in batches {
            stats.add(b)?;
        }
        let pk_column = &def.columns[def.pk_index()].name;
        let (bytes, sha256) = write_parquet(&self.env.storage_dir, &path, schema, batches, pk_column)?;
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

    /// Remove every cold record and file of a dropped table in this group.
    pub fn purge(&self, batch: &mut WriteBatch, table_id: u64) -> Result<()> {
        let cold = cf(self.db, CF_COLD)?;
        let prefix = table_prefix(self.group, table_id);
        for item in iter_prefix(self.db, cold, &prefix) {
            let (k, v) = item?;
            let (_, rest) = split_scope(&k).ok_or_else(|| Error::Corrupt("bad cold key".into()))?;
            if rest.first() == Some(&KIND_FILE) {
                let meta: FileMeta = unjson(&v)?;
                match std::fs::remove_file(self.env.storage_dir.join(&meta.path)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        batch.delete_range_cf(cold, prefix.clone(), prefix_end(&prefix));
        Ok(())
    }
}

/// The flush of one scope in progress: rows are converted in chunks and written in files of
/// at most [`FILE_ROWS_MAX`] rows.
struct ScopeFlush {
    scope: String,
    scope_prefix: Vec<u8>,
    head: ScopeHead,
    log_start: u64,
    pending: Vec<StoredRow>,
    file_batches: Vec<RecordBatch>,
    file_rows: usize,
    metas: Vec<FileMeta>,
    rows: u64,
}

impl ScopeFlush {
    fn start(c: &ColdApplier<'_>, def: &TableDef, scope: &str) -> Result<ScopeFlush> {
        let scope_prefix = table_scope_prefix(c.group, def.table_id, scope);
        let head = scope_head(c.db, &scope_prefix)?;
        Ok(ScopeFlush {
            scope: scope.to_string(),
            log_start: head.last_flush_index + 1,
            scope_prefix,
            head,
            pending: Vec::new(),
            file_batches: Vec::new(),
            file_rows: 0,
            metas: Vec::new(),
            rows: 0,
        })
    }

    fn push(
        &mut self,
        c: &ColdApplier<'_>,
        batch: &mut WriteBatch,
        def: &TableDef,
        schema: &SchemaRef,
        row_key: &[u8],
        row: StoredRow,
        index: u64,
    ) -> Result<()> {
        let cold = cf(c.db, CF_COLD)?;
        let stub = stub_key_of(row_key)?;
        if row.deleted {
            // A tombstone shadows nothing once flushed: the version it deleted was marked
            // superseded when the delete was applied. Only the stub of that version goes.
            batch.delete_cf(cold, stub);
            return Ok(());
        }
        batch.put_cf(cold, stub, row.seq.to_be_bytes());
        self.pending.push(row);
        self.rows += 1;
        if self.pending.len() == CONVERT_ROWS_MAX {
            self.convert(def, schema)?;
        }
        if self.file_rows + self.pending.len() >= FILE_ROWS_MAX {
            self.convert(def, schema)?;
            self.write(c, def, schema, index)?;
        }
        Ok(())
    }

    fn convert(&mut self, def: &TableDef, schema: &SchemaRef) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.file_rows += self.pending.len();
        self.file_batches.push(rows_to_batch(def, schema, &self.pending)?);
        self.pending.clear();
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
        self.convert(def, schema)?;
        self.write(c, def, schema, index)?;
        let cold = cf(c.db, CF_COLD)?;
        let rows_cf = cf(c.db, CF_ROWS)?;
        for meta in &self.metas {
            batch.put_cf(cold, cold_key(&self.scope_prefix, KIND_FILE, &meta.file_no.to_be_bytes()), json(meta)?);
        }
        self.head.last_flush_index = index;
        batch.put_cf(cold, cold_key(&self.scope_prefix, KIND_HEAD, &[]), json(&self.head)?);
        // Every hot row of the scope was flushed (or was a tombstone): the range goes at once.
        batch.delete_range_cf(rows_cf, self.scope_prefix.clone(), prefix_end(&self.scope_prefix));
        // The manifest as a file beside the data, for tools that read the Parquet files
        // directly. Named by log index, so it is never rewritten with other content.
        let mut manifest = scope_files(c.db, &self.scope_prefix)?;
        manifest.retain(|f| f.retired_at.is_none());
        manifest.extend(self.metas.iter().cloned());
        let manifest_rel = format!("{}/manifest-{index:020}.json", scope_dir(def, &self.scope));
        write_small_file(&c.env.storage_dir.join(manifest_rel), &json(&manifest)?)?;
        Ok(ScopeOutcome {
            scope: self.scope,
            log_start: self.log_start,
            files: self.metas.len() as u64,
            rows: self.rows,
            bytes: self.metas.iter().map(|m| m.bytes).sum(),
        })
    }
}

/// Temp name, fsync, rename, fsync dir.
fn write_small_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().ok_or_else(|| Error::Storage("bad path".into()))?;
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp-{:016x}", fastrand::u64(..)));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// The newest flushed version of a key, if any (the caller checks `rows` first: a hot row is
/// newer).
pub fn stub_seq(db: &DB, row_key: &[u8], snapshot: Option<&rocksdb::Snapshot<'_>>) -> Result<Option<u64>> {
    let cold = cf(db, CF_COLD)?;
    let key = stub_key_of(row_key)?;
    let got = match snapshot {
        Some(s) => {
            let mut opts = ReadOptions::default();
            opts.set_snapshot(s);
            db.get_pinned_cf_opt(cold, key, &opts)?
        }
        None => db.get_pinned_cf(cold, key)?,
    };
    match got {
        None => Ok(None),
        Some(b) => {
            let b: [u8; 8] = b.as_ref().try_into().map_err(|_| Error::Corrupt("bad stub".into()))?;
            Ok(Some(u64::from_be_bytes(b)))
        }
    }
}

/// Bounds on the primary key for a hot-tier scan: encoded keys, both inclusive. Callers may
/// pass looser bounds than their filter (the filter is applied again above the scan).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PkRange {
    pub low: Option<kalamdb_log::Value>,
    pub high: Option<kalamdb_log::Value>,
    /// The key column's name: with it, files whose recorded key range misses the bounds are
    /// left out of the view, so a lookup does not open every file of the scope.
    pub column: Option<String>,
}

impl PkRange {
    /// Whether `meta`'s recorded minimum and maximum of the key column can hold a key within
    /// the bounds. Conservative: missing statistics or values that do not compare keep the file.
    fn may_hold(&self, meta: &FileMeta) -> bool {
        let Some(name) = &self.column else { return true };
        let Some(stats) = meta.columns.iter().find(|c| &c.name == name) else { return true };
        let order = |bound: &kalamdb_log::Value, edge: &serde_json::Value| {
            json_order(&crate::columnar::value_json(bound), edge)
        };
        if let (Some(low), Some(max)) = (&self.low, &stats.max)
            && order(low, max) == Some(std::cmp::Ordering::Greater)
        {
            return false;
        }
        if let (Some(high), Some(min)) = (&self.high, &stats.min)
            && order(high, min) == Some(std::cmp::Ordering::Less)
        {
            return false;
        }
        true
    }
}

/// The order of two statistics values as the manifest records them (numbers, text, booleans,
/// hex bytes, whose text order is their byte order); `None` when they do not compare.
fn json_order(a: &serde_json::Value, b: &serde_json::Value) -> Option<std::cmp::Ordering> {
    use serde_json::Value as J;
    match (a, b) {
        (J::Number(x), J::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
        },
        (J::String(x), J::String(y)) => Some(x.cmp(y)),
        (J::Bool(x), J::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Hot rows, live files and superseded versions of one table scope under one snapshot; hot
/// rows only within `range` (a RocksDB range scan).
pub fn table_view(
    db: &DB,
    storage_dir: &Path,
    group: GroupId,
    table_id: u64,
    scope: &str,
    range: &PkRange,
) -> Result<TableView> {
    let snap = db.snapshot();
    let rows_cf = cf(db, CF_ROWS)?;
    let cold = cf(db, CF_COLD)?;
    let sp = table_scope_prefix(group, table_id, scope);
    let read = |cf: &rocksdb::ColumnFamily, prefix: &[u8]| {
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&snap);
        opts.set_iterate_upper_bound(prefix_end(prefix));
        db.iterator_cf_opt(cf, opts, IteratorMode::From(prefix, Direction::Forward))
    };
    let mut view = TableView::default();
    let mut start = sp.clone();
    if let Some(low) = &range.low {
        crate::keys::encode_pk(low, &mut start);
    }
    let end = match &range.high {
        Some(high) => {
            let mut k = sp.clone();
            crate::keys::encode_pk(high, &mut k);
            prefix_end(&k)
        }
        None => prefix_end(&sp),
    };
    let mut opts = ReadOptions::default();
    opts.set_snapshot(&snap);
    opts.set_iterate_upper_bound(end);
    for item in db.iterator_cf_opt(rows_cf, opts, IteratorMode::From(&start, Direction::Forward)) {
        let (_, v) = item?;
        let row = StoredRow::decode(&v)?;
        if !row.deleted {
            view.hot.push(row);
        }
    }
    for item in read(cold, &cold_key(&sp, KIND_FILE, &[])) {
        let (_, v) = item?;
        let meta: FileMeta = unjson(&v)?;
        if meta.retired_at.is_none() && range.may_hold(&meta) {
            view.files.push((storage_dir.join(&meta.path), meta.bytes));
        }
    }
    for item in read(cold, &cold_key(&sp, KIND_SUPERSEDED, &[])) {
        let (k, _) = item?;
        let b: [u8; 8] = k[k.len() - 8..].try_into().map_err(|_| Error::Corrupt("bad marker".into()))?;
        view.superseded.push(u64::from_be_bytes(b));
    }
    Ok(view)
}

/// Live file count per scope of a table in a group (for the automatic compaction policy).
pub fn live_file_counts(db: &DB, group: GroupId, table_id: u64) -> Result<Vec<(String, u64)>> {
    let cold = cf(db, CF_COLD)?;
    let mut out: Vec<(String, u64)> = Vec::new();
    for item in iter_prefix(db, cold, &table_prefix(group, table_id)) {
        let (k, v) = item?;
        let (scope, rest) = split_scope(&k).ok_or_else(|| Error::Corrupt("bad cold key".into()))?;
        if rest.first() != Some(&KIND_FILE) || unjson::<FileMeta>(&v)?.retired_at.is_some() {
            continue;
        }
        match out.last_mut() {
            Some((s, n)) if s == scope => *n += 1,
            _ => out.push((scope.to_string(), 1)),
        }
    }
    Ok(out)
}

/// Every file record of a group (live and retired), for snapshots.
pub fn group_files(db: &DB, group: GroupId) -> Result<Vec<FileMeta>> {
    let cold = cf(db, CF_COLD)?;
    let mut out = Vec::new();
    for item in iter_prefix(db, cold, &group.prefix()) {
        let (k, v) = item?;
        let (_, rest) = split_scope(&k).ok_or_else(|| Error::Corrupt("bad cold key".into()))?;
        if rest.first() == Some(&KIND_FILE) {
            out.push(unjson(&v)?);
        }
    }
    Ok(out)
}

/// Write a file received in a snapshot (same path and bytes as on the sender).
pub fn install_file(storage_dir: &Path, rel: &str, bytes: &[u8]) -> Result<()> {
    if rel.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(Error::Snapshot(format!("bad file path in snapshot: {rel}")));
    }
    write_small_file(&storage_dir.join(rel), bytes)
}
