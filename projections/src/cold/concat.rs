//! Compaction by copying: files whose primary-key ranges do not overlap, written in the
//! table's current schema and holding no superseded version, are joined by copying their
//! encoded column chunks into the new file, row group by row group, without decoding and
//! encoding the rows again. From apply format 3 ([`crate::format::FORMAT_COPY_COMPACTION`]).
//!
//! Why: a bulk load's flushes write files of ascending, disjoint keys, and merging eight of
//! them decoded, compared and re-encoded ~1.7M rows for ~620 ms on every node (benches/
//! RESULTS.md, session 31), holding apply, and so every write and subscriber of the group,
//! all that time. For such files the merge's output rows are the inputs' rows with the files
//! taken in key order, which is what copying writes; only the row group and page boundaries
//! differ, so the bytes are those of a new format.
//!
//! Files that do overlap (with several clients, statements commit out of key order around a
//! flush, so neighbouring flushes share a few keys) are merged among themselves into a piece
//! encoded in memory, whose row groups are then copied like a file's: only they are decoded.
//!
//! Whether a unit qualifies, and how it splits, is read from the files themselves (schema, key
//! statistics), which are the same on every node, so every replica takes the same path.
//! Anything it cannot tell from exact statistics (a key type other than an integer, a missing
//! page index, a float column whose minimum did not survive into the manifest), a unit whose
//! files all overlap, or one with an overlapping run of more than a file's rows (a run is
//! merged in memory), goes to the merge.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::fs::File;

use bytes::Bytes;
use kalamdb_log::DataType;
use parquet::arrow::parquet_to_arrow_schema;
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::statistics::Statistics;
use parquet::file::writer::SerializedFileWriter;

use super::*;

/// Where a piece's encoded column chunks are read from.
enum Source {
    File(File),
    Memory(Bytes),
}

/// A run of the output in key order: one input file, copied, or several overlapping ones
/// merged into a Parquet file in memory.
pub(super) struct Piece {
    source: Source,
    parquet: ParquetMetaData,
    /// The manifest statistics of the piece's rows.
    pub(super) stats: Vec<ColumnStats>,
    pub(super) rows: u64,
}

/// One input file, read as far as its footer and page index.
struct Input<'f> {
    meta: &'f FileMeta,
    path: &'f PathBuf,
    file: File,
    parquet: ParquetMetaData,
    /// The smallest and largest primary key in the file.
    first_key: i64,
    last_key: i64,
}

/// The pieces the unit's files make, in key order, when they can be joined by copying:
/// files that overlap no other are pieces of their own, files that overlap are merged into
/// one. `None` when the unit must be merged as a whole: every file overlaps another, or
/// something is not known exactly.
pub(super) fn pieces(
    inputs: &[&FileMeta],
    paths: &[PathBuf],
    def: &TableDef,
    schema: &SchemaRef,
) -> Result<Option<Vec<Piece>>> {
    let pk = def.pk_index();
    let mut files = Vec::with_capacity(inputs.len());
    for (meta, path) in inputs.iter().zip(paths) {
        let file = File::open(path)?;
        let Some(parquet) = footer(&file, schema) else { return Ok(None) };
        let Some((first_key, last_key)) = key_range(&parquet, pk) else { return Ok(None) };
        files.push(Input { meta, path, file, parquet, first_key, last_key });
    }
    files.sort_by_key(|i| i.first_key);
    // Runs of files whose key ranges chain into each other.
    let mut runs: Vec<Vec<Input<'_>>> = Vec::new();
    for input in files {
        match runs.last_mut() {
            Some(run) if run.iter().map(|i| i.last_key).max().is_some_and(|end| input.first_key <= end) => {
                run.push(input)
            }
            _ => runs.push(vec![input]),
        }
    }
    if runs.len() < 2 {
        return Ok(None);
    }
    // A run is merged in memory: one as large as a file is left to the streaming merge.
    if runs.iter().any(|r| r.len() > 1 && r.iter().map(|i| i.meta.rows).sum::<u64>() > FILE_ROWS_MAX as u64) {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(runs.len());
    for mut run in runs {
        let piece = if run.len() == 1 {
            let input = run.pop().expect("one file");
            Piece {
                source: Source::File(input.file),
                parquet: input.parquet,
                stats: input.meta.columns.clone(),
                rows: input.meta.rows,
            }
        } else {
            merged(&run, def, schema)?
        };
        out.push(piece);
    }
    let same_footer = out.windows(2).all(|w| {
        let (a, b) = (w[0].parquet.file_metadata(), w[1].parquet.file_metadata());
        a.schema_descr().root_schema() == b.schema_descr().root_schema()
            && a.key_value_metadata() == b.key_value_metadata()
    });
    Ok(same_footer.then_some(out))
}

/// A file's footer with its page index, when the file is in the current schema (so no row
/// needs conforming: what a flush writes today) and holds rows.
fn footer<R: parquet::file::reader::ChunkReader>(reader: &R, schema: &SchemaRef) -> Option<ParquetMetaData> {
    let parquet =
        ParquetMetaDataReader::new().with_page_index_policy(PageIndexPolicy::Required).parse_and_finish(reader).ok()?;
    let fm = parquet.file_metadata();
    let arrow = parquet_to_arrow_schema(fm.schema_descr(), fm.key_value_metadata()).ok()?;
    (arrow.fields() == schema.fields() && parquet.num_row_groups() > 0).then_some(parquet)
}

/// Overlapping files merged by key into one Parquet file in memory, encoded as a flush
/// encodes its files (their keys are unique: a unit without superseded versions holds each
/// key once).
fn merged(run: &[Input<'_>], def: &TableDef, schema: &SchemaRef) -> Result<Piece> {
    let paths: Vec<&PathBuf> = run.iter().map(|i| i.path).collect();
    let none = HashSet::new();
    let mut merge =
        super::merge::Merge::open(&paths, schema.clone(), def.pk_index(), &none, Some(def), CONVERT_ROWS_MAX)?;
    let props = table_file_props(def.columns[def.pk_index()].storage_name());
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props)).map_err(parquet_err)?;
    let mut stats = StatsBuilder::new(def);
    let mut rows = 0u64;
    while let Some(batch) = merge.next_batch()? {
        stats.add(&batch)?;
        rows += batch.num_rows() as u64;
        writer.write(&batch).map_err(parquet_err)?;
    }
    let bytes = Bytes::from(writer.into_inner().map_err(parquet_err)?);
    let parquet = footer(&bytes, schema).ok_or_else(|| Error::Storage("a merged piece without its footer".into()))?;
    Ok(Piece { source: Source::Memory(bytes), parquet, stats: stats.finish(), rows })
}

/// The smallest and largest key of a file from its row groups' exact statistics, for an
/// integer key column; `None` otherwise.
fn key_range(parquet: &ParquetMetaData, pk: usize) -> Option<(i64, i64)> {
    let mut range: Option<(i64, i64)> = None;
    for rg in parquet.row_groups() {
        let (lo, hi) = match rg.column(pk).statistics()? {
            Statistics::Int32(s) => (i64::from(*s.min_opt()?), i64::from(*s.max_opt()?)),
            Statistics::Int64(s) => (*s.min_opt()?, *s.max_opt()?),
            _ => return None,
        };
        range = Some(range.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
    }
    range
}

/// The manifest statistics of pieces joined: null counts add up, minima and maxima are the
/// pieces' extremes (what [`crate::columnar::StatsBuilder`] gives for all their rows). `None`
/// when a piece lacks a minimum or maximum for a column it holds values of (a float column
/// whose extreme is NaN is recorded without one).
pub(super) fn joined_stats(def: &TableDef, pieces: &[(&[ColumnStats], u64)]) -> Option<Vec<ColumnStats>> {
    let mut out = Vec::with_capacity(def.columns.len());
    for (i, c) in def.columns.iter().enumerate() {
        let mut joined = ColumnStats { name: c.storage_name().to_string(), min: None, max: None, nulls: 0 };
        for (columns, rows) in pieces {
            let s = columns.get(i).filter(|s| s.name == joined.name)?;
            joined.nulls += s.nulls;
            if matches!(c.data_type, DataType::Bytes | DataType::Json) {
                continue;
            }
            if s.nulls < *rows && (s.min.is_none() || s.max.is_none()) {
                return None;
            }
            for (slot, v, want) in
                [(&mut joined.min, &s.min, Ordering::Less), (&mut joined.max, &s.max, Ordering::Greater)]
            {
                let Some(v) = v else { continue };
                if slot.as_ref().is_none_or(|cur| json_order(c.data_type, v, cur) == Some(want)) {
                    *slot = Some(v.clone());
                }
            }
        }
        out.push(joined);
    }
    Some(out)
}

/// Order of two manifest values of a column type, as `columnar::value_order` orders the
/// values they were written from.
fn json_order(dt: DataType, a: &serde_json::Value, b: &serde_json::Value) -> Option<Ordering> {
    match dt {
        DataType::Boolean => Some(a.as_bool()?.cmp(&b.as_bool()?)),
        DataType::SmallInt | DataType::Int | DataType::BigInt | DataType::Timestamp | DataType::Date => {
            Some(a.as_i64()?.cmp(&b.as_i64()?))
        }
        DataType::Float | DataType::Double => Some(a.as_f64()?.total_cmp(&b.as_f64()?)),
        DataType::Text => Some(a.as_str()?.cmp(b.as_str()?)),
        DataType::Bytes | DataType::Json => None,
    }
}

/// Write `pieces` (in key order) into one Parquet file through `out`: each piece's row groups
/// become row groups of the output, their column chunks copied as encoded, with their
/// statistics and page index. Then fsync; returns (bytes, sha256).
pub(super) fn write_joined(out: HashingWriter<File>, pieces: &[Piece]) -> Result<(u64, String)> {
    let first = pieces.first().ok_or_else(|| Error::Storage("a join of nothing".into()))?.parquet.file_metadata();
    let props = WriterProperties::builder()
        .set_created_by(PARQUET_CREATED_BY.into())
        .set_key_value_metadata(first.key_value_metadata().cloned())
        .build();
    let mut writer =
        SerializedFileWriter::new(out, first.schema_descr().root_schema_ptr(), Arc::new(props)).map_err(parquet_err)?;
    for piece in pieces {
        let (column_index, offset_index) = match (piece.parquet.column_index(), piece.parquet.offset_index()) {
            (Some(c), Some(o)) => (c, o),
            _ => return Err(Error::Storage("a joined piece without its page index".into())),
        };
        for (r, rg) in piece.parquet.row_groups().iter().enumerate() {
            let mut rg_writer = writer.next_row_group().map_err(parquet_err)?;
            for (c, chunk) in rg.columns().iter().enumerate() {
                let close = ColumnCloseResult {
                    bytes_written: chunk.compressed_size() as u64,
                    rows_written: rg.num_rows() as u64,
                    metadata: chunk.clone(),
                    bloom_filter: None,
                    column_index: column_index.get(r).and_then(|cols| cols.get(c)).cloned(),
                    offset_index: offset_index.get(r).and_then(|cols| cols.get(c)).cloned(),
                };
                match &piece.source {
                    Source::File(file) => rg_writer.append_column(file, close),
                    Source::Memory(bytes) => rg_writer.append_column(bytes, close),
                }
                .map_err(parquet_err)?;
            }
            rg_writer.close().map_err(parquet_err)?;
        }
    }
    let mut out = writer.into_inner().map_err(parquet_err)?;
    out.flush()?;
    let (file, bytes, sha) = out.finish();
    file.sync_all()?;
    Ok((bytes, sha))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use kalamdb_log::{ColumnDef, Value};

    use super::*;
    use crate::columnar::test_defs::{column, table};
    use crate::columnar::{RowBatchBuilder, StatsBuilder, storage_schema};
    use crate::stored::StoredRow;

    fn def() -> TableDef {
        let (id, v, x) = (
            column("id", DataType::BigInt, None),
            column("v", DataType::Text, None),
            column("x", DataType::Double, None),
        );
        table(vec![id, v, x])
    }

    /// A file of the rows with keys `keys` (ascending), as a flush writes it, and its manifest
    /// record.
    fn file(store: &FileStore, def: &TableDef, name: &str, keys: &[i64]) -> FileMeta {
        let schema = storage_schema(def);
        let mut rows = RowBatchBuilder::new(def, &schema, keys.len());
        let mut stats = StatsBuilder::new(def);
        for k in keys {
            let v = if k % 5 == 0 { Value::Null } else { Value::Text(format!("v{k}")) };
            let mut values = vec![Value::BigInt(*k), v, Value::Double(*k as f64 / 3.0)];
            values.resize(def.columns.len(), Value::Null);
            rows.push(&StoredRow { seq: (*k as u64) << 20, deleted: false, values });
        }
        let batch = rows.finish().unwrap();
        stats.add(&batch).unwrap();
        let rel = format!("t/{name}.parquet");
        let (bytes, sha256) = write_parquet(store, &rel, &schema, &[batch], "id").unwrap();
        FileMeta {
            file_no: 0,
            path: rel,
            log_start: 1,
            log_end: 1,
            created_at: 1,
            rows: keys.len() as u64,
            bytes,
            sha256,
            written_by: "flush".into(),
            retired_at: None,
            columns: stats.finish(),
        }
    }

    /// Every row of `paths` merged by key, as a compaction's merge writes them.
    fn merge_all(def: &TableDef, paths: &[PathBuf]) -> RecordBatch {
        let schema = storage_schema(def);
        let none = HashSet::new();
        let mut merge = super::super::merge::Merge::open(paths, schema.clone(), 0, &none, Some(def), 1024).unwrap();
        let mut merged = Vec::new();
        while let Some(b) = merge.next_batch().unwrap() {
            merged.push(b);
        }
        arrow::compute::concat_batches(&schema, &merged).unwrap()
    }

    /// Join `metas` (expected to qualify) into `name` and read it back: its rows, its row group
    /// count, and the pieces' row counts.
    fn join(
        store: &FileStore,
        def: &TableDef,
        metas: &[&FileMeta],
        name: &str,
    ) -> (RecordBatch, ParquetMetaData, Vec<u64>) {
        let schema = storage_schema(def);
        let paths: Vec<PathBuf> = metas.iter().map(|m| store.path(&m.path)).collect();
        let pieces = pieces(metas, &paths, def, &schema).unwrap().expect("the files join");
        let rel = format!("t/{name}.parquet");
        let (bytes, _) = write_parquet_with(store, &rel, |out| write_joined(out, &pieces)).unwrap();
        let out = store.path(&rel);
        assert_eq!(std::fs::metadata(&out).unwrap().len(), bytes);
        let rows = arrow::compute::concat_batches(&schema, &read_parquet(&out).unwrap()).unwrap();
        let parquet = ParquetMetaDataReader::new()
            .with_page_index_policy(PageIndexPolicy::Required)
            .parse_and_finish(&File::open(&out).unwrap())
            .unwrap();
        let groups: usize = pieces.iter().map(|p| p.parquet.num_row_groups()).sum();
        assert_eq!(parquet.num_row_groups(), groups, "one row group per piece row group");
        let parts: Vec<(&[ColumnStats], u64)> = pieces.iter().map(|p| (&p.stats[..], p.rows)).collect();
        let mut all = StatsBuilder::new(def);
        all.add(&rows).unwrap();
        assert_eq!(joined_stats(def, &parts), Some(all.finish()), "statistics of all the rows");
        (rows, parquet, pieces.iter().map(|p| p.rows).collect())
    }

    /// Disjoint files given out of key order are joined in key order: the joined file reads as
    /// the merge of the same files, holds their row groups with a page index, and its manifest
    /// statistics are those of all its rows.
    #[test]
    fn disjoint_files_join_into_what_a_merge_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::folder(dir.path().to_path_buf());
        let def = def();
        let metas = [
            file(&store, &def, "b", &(3_000..5_500).collect::<Vec<_>>()),
            file(&store, &def, "a", &(-200..2_999).step_by(3).collect::<Vec<_>>()),
            file(&store, &def, "c", &[9_000]),
        ];
        let inputs: Vec<&FileMeta> = metas.iter().collect();
        let (rows, parquet, pieces) = join(&store, &def, &inputs, "joined");
        assert_eq!(pieces, [1_067, 2_500, 1], "one piece per file, in key order");
        let paths: Vec<PathBuf> = metas.iter().map(|m| store.path(&m.path)).collect();
        assert_eq!(rows, merge_all(&def, &paths));
        assert_eq!(key_range(&parquet, 0), Some((-200, 9_000)));
    }

    /// Files that overlap are merged into one piece among themselves, the others copied; a
    /// unit whose files all overlap, or a file in another schema, is left to the merge.
    #[test]
    fn overlapping_files_merge_among_themselves_and_the_rest_is_copied() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::folder(dir.path().to_path_buf());
        let def = def();
        let schema = storage_schema(&def);
        let a = file(&store, &def, "a", &[1, 5, 9]);
        let b = file(&store, &def, "b", &[7, 12]);
        let c = file(&store, &def, "c", &[20, 30]);
        let d = file(&store, &def, "d", &[10, 11]);
        let paths = |ms: &[&FileMeta]| ms.iter().map(|m| store.path(&m.path)).collect::<Vec<_>>();
        assert!(pieces(&[&a, &b], &paths(&[&a, &b]), &def, &schema).unwrap().is_none(), "all overlap");

        // a and b chain into d (10..11 inside b's 7..12): one merged piece, then c copied.
        let all = [&c, &d, &b, &a];
        let (rows, _, pieces) = join(&store, &def, &all, "joined");
        assert_eq!(pieces, [7, 2]);
        assert_eq!(rows, merge_all(&def, &paths(&all)));

        let mut wider = def.clone();
        wider.columns.push(ColumnDef { name: "y".into(), ..def.columns[2].clone() });
        let e = file(&store, &wider, "e", &[40]);
        assert!(super::pieces(&[&c, &e], &paths(&[&c, &e]), &def, &schema).unwrap().is_none());
    }

    /// A float column whose extreme was not recorded (NaN) cannot be summed up from the pieces.
    #[test]
    fn missing_float_extremes_leave_the_statistics_unknown() {
        let def = def();
        let stats = |x: Option<f64>| {
            vec![
                ColumnStats { name: "id".into(), min: Some(1.into()), max: Some(2.into()), nulls: 0 },
                ColumnStats { name: "v".into(), min: None, max: None, nulls: 2 },
                ColumnStats { name: "x".into(), min: x.map(Into::into), max: x.map(Into::into), nulls: 0 },
            ]
        };
        let (known, nan) = (stats(Some(0.5)), stats(None));
        assert!(joined_stats(&def, &[(&known[..], 2), (&nan[..], 2)]).is_none());
        let joined = joined_stats(&def, &[(&known[..], 2), (&known[..], 2)]).unwrap();
        assert_eq!((joined[1].nulls, joined[2].min.clone()), (4, Some(0.5.into())));
    }
}
