//! The keyed read of one flushed row: only the live file whose log range holds the stub's
//! `_seq`, only the row group and page whose key statistics can hold the key, footers cached.

use super::*;

/// Version `seq` of the row whose primary key is `key`, read from the live Parquet file whose
/// log range holds `seq`'s entry. Only the row groups and data pages whose key statistics can
/// hold `key` are decoded (files are sorted by key), so this costs one small read, not a scan.
/// `None` when no live file holds that version (a compaction retired it after the caller's
/// lookup); the caller then falls back to a scan.
pub fn cold_row(
    at: ColdGroup<'_>,
    metadata: &MetadataCache,
    def: &TableDef,
    scope: &str,
    key: &kalamdb_log::Value,
    seq: u64,
) -> Result<Option<StoredRow>> {
    let sp = table_scope_prefix(at.group, def.table_id, scope);
    let log_index = seq >> crate::stored::SEQ_ORDINAL_BITS;
    for meta in scope_files(at.db, &sp)? {
        if meta.retired_at.is_some() || log_index < meta.log_start || log_index > meta.log_end {
            continue;
        }
        let path = at.files.local(&meta.path, meta.bytes, &meta.sha256)?;
        if let Some(row) = find_in_file(&path, meta.bytes, metadata, def, key, seq)? {
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
    fn get_or_load(&self, path: &Path, file: &PreadFile) -> Result<parquet::arrow::arrow_reader::ArrowReaderMetadata> {
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

/// A Parquet file read with positioned reads: one `pread` per page, where the reader's
/// implementation for `File` duplicates the descriptor, seeks and reads for each.
struct PreadFile {
    file: Arc<std::fs::File>,
    bytes: u64,
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

pub(super) fn find_in_file(
    path: &Path,
    bytes: u64,
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
    let file = PreadFile { file: Arc::new(file), bytes };
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
    let stats = StatisticsConverter::try_new(
        def.columns[pk].storage_name(),
        &arrow_schema,
        meta.file_metadata().schema_descr(),
    )
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
    let storage = crate::columnar::storage_schema(def);
    for batch in builder.build().map_err(parquet_err)? {
        let batch = crate::columnar::conform(def, &storage, batch.map_err(parquet_err)?)?;
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
    got.map(|b| stub_value(&b)).transpose()
}

/// The `_seq` a key stub holds (its flushed version).
pub fn stub_value(bytes: &[u8]) -> Result<u64> {
    let b: [u8; 8] = bytes.try_into().map_err(|_| Error::Corrupt("bad stub".into()))?;
    Ok(u64::from_be_bytes(b))
}
