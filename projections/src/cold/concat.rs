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
//! Whether a unit qualifies is read from the files themselves (schema, key statistics), which
//! are the same on every node, so every replica takes the same path. Anything it cannot tell
//! from exact statistics (a key type other than an integer, a missing page index, a float
//! column whose minimum did not survive into the manifest) goes to the merge.

use std::cmp::Ordering;
use std::fs::File;

use kalamdb_log::DataType;
use parquet::arrow::parquet_to_arrow_schema;
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::statistics::Statistics;
use parquet::file::writer::SerializedFileWriter;

use super::*;

/// One input file, read as far as its footer and page index.
pub(super) struct Input<'f> {
    pub(super) meta: &'f FileMeta,
    file: File,
    parquet: ParquetMetaData,
    /// The smallest and largest primary key in the file.
    first_key: i64,
    last_key: i64,
}

/// The unit's files in key order when they can be joined by copying; `None` when they must
/// be merged (their key ranges overlap, or something is not known exactly).
pub(super) fn joinable<'f>(
    inputs: &[&'f FileMeta],
    paths: &[PathBuf],
    schema: &SchemaRef,
    pk: usize,
) -> Result<Option<Vec<Input<'f>>>> {
    let mut out = Vec::with_capacity(inputs.len());
    for (meta, path) in inputs.iter().zip(paths) {
        let file = File::open(path)?;
        let Ok(parquet) =
            ParquetMetaDataReader::new().with_page_index_policy(PageIndexPolicy::Required).parse_and_finish(&file)
        else {
            return Ok(None);
        };
        let fm = parquet.file_metadata();
        // Written in the current schema, so no row needs conforming: what a flush writes today.
        let Ok(arrow) = parquet_to_arrow_schema(fm.schema_descr(), fm.key_value_metadata()) else { return Ok(None) };
        if arrow.fields() != schema.fields() || parquet.num_row_groups() == 0 {
            return Ok(None);
        }
        let Some((first_key, last_key)) = key_range(&parquet, pk) else { return Ok(None) };
        out.push(Input { meta, file, parquet, first_key, last_key });
    }
    out.sort_by_key(|i| i.first_key);
    let disjoint = out.windows(2).all(|w| w[0].last_key < w[1].first_key);
    let same_footer = out.windows(2).all(|w| {
        let (a, b) = (w[0].parquet.file_metadata(), w[1].parquet.file_metadata());
        a.schema_descr().root_schema() == b.schema_descr().root_schema()
            && a.key_value_metadata() == b.key_value_metadata()
    });
    Ok((disjoint && same_footer).then_some(out))
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

/// The manifest statistics of the files joined: null counts add up, minima and maxima are
/// the inputs' extremes (what [`crate::columnar::StatsBuilder`] gives for all their rows).
/// `None` when an input lacks a minimum or maximum for a column it holds values of (a float
/// column whose extreme is NaN is recorded without one).
pub(super) fn joined_stats(def: &TableDef, inputs: &[&FileMeta]) -> Option<Vec<ColumnStats>> {
    let mut out = Vec::with_capacity(def.columns.len());
    for (i, c) in def.columns.iter().enumerate() {
        let mut joined = ColumnStats { name: c.storage_name().to_string(), min: None, max: None, nulls: 0 };
        for f in inputs {
            let s = f.columns.get(i).filter(|s| s.name == joined.name)?;
            joined.nulls += s.nulls;
            if matches!(c.data_type, DataType::Bytes | DataType::Json) {
                continue;
            }
            if s.nulls < f.rows && (s.min.is_none() || s.max.is_none()) {
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

/// Write `inputs` (in key order) into one Parquet file through `out`: each input row group
/// becomes a row group of the output, its column chunks copied as encoded, with their
/// statistics and page index. Then fsync; returns (bytes, sha256).
pub(super) fn write_joined(out: HashingWriter<File>, inputs: &[Input<'_>]) -> Result<(u64, String)> {
    let first = inputs.first().ok_or_else(|| Error::Storage("a join of no files".into()))?.parquet.file_metadata();
    let props = WriterProperties::builder()
        .set_created_by(PARQUET_CREATED_BY.into())
        .set_key_value_metadata(first.key_value_metadata().cloned())
        .build();
    let mut writer =
        SerializedFileWriter::new(out, first.schema_descr().root_schema_ptr(), Arc::new(props)).map_err(parquet_err)?;
    for input in inputs {
        let (column_index, offset_index) = match (input.parquet.column_index(), input.parquet.offset_index()) {
            (Some(c), Some(o)) => (c, o),
            _ => return Err(Error::Storage(format!("{}: no page index", input.meta.path))),
        };
        for (r, rg) in input.parquet.row_groups().iter().enumerate() {
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
                rg_writer.append_column(&input.file, close).map_err(parquet_err)?;
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

    use kalamdb_log::{ColumnDef, TableType, Value};

    use super::*;
    use crate::columnar::{RowBatchBuilder, StatsBuilder, storage_schema};
    use crate::stored::StoredRow;

    fn def() -> TableDef {
        let column = |name: &str, data_type| ColumnDef {
            name: name.into(),
            data_type,
            nullable: name != "id",
            primary_key: name == "id",
            default: None,
            stored_as: String::new(),
            backfill: None,
            dropped: false,
        };
        TableDef {
            table_id: 1,
            namespace: "n".into(),
            name: "t".into(),
            table_type: TableType::Shared,
            columns: vec![column("id", DataType::BigInt), column("v", DataType::Text), column("x", DataType::Double)],
            options: vec![],
            created_at_micros: 0,
            versions: vec![],
        }
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

    fn read(path: &std::path::Path) -> Vec<RecordBatch> {
        read_parquet(path).unwrap()
    }

    /// Disjoint files given out of key order are joined in key order: the joined file reads as
    /// the merge of the same files, holds one row group per input row group with its page
    /// index, and its manifest statistics are those of all its rows.
    #[test]
    fn disjoint_files_join_into_what_a_merge_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::folder(dir.path().to_path_buf());
        let def = def();
        let schema = storage_schema(&def);
        let metas = [
            file(&store, &def, "b", &(3_000..5_500).collect::<Vec<_>>()),
            file(&store, &def, "a", &(-200..2_999).step_by(3).collect::<Vec<_>>()),
            file(&store, &def, "c", &[9_000]),
        ];
        let inputs: Vec<&FileMeta> = metas.iter().collect();
        let paths: Vec<PathBuf> = metas.iter().map(|m| store.path(&m.path)).collect();
        let joined = joinable(&inputs, &paths, &schema, 0).unwrap().expect("disjoint files join");
        assert_eq!(
            joined.iter().map(|i| i.meta.path.as_str()).collect::<Vec<_>>(),
            ["t/a.parquet", "t/b.parquet", "t/c.parquet"]
        );
        let (bytes, _) = write_parquet_with(&store, "t/joined.parquet", |out| write_joined(out, &joined)).unwrap();
        let out = store.path("t/joined.parquet");
        assert_eq!(std::fs::metadata(&out).unwrap().len(), bytes);

        let none = HashSet::new();
        let mut merge = super::super::merge::Merge::open(&paths, schema.clone(), 0, &none, Some(&def), 1024).unwrap();
        let mut merged = Vec::new();
        while let Some(b) = merge.next_batch().unwrap() {
            merged.push(b);
        }
        let concat = |b: &[RecordBatch]| arrow::compute::concat_batches(&schema, b).unwrap();
        assert_eq!(concat(&read(&out)), concat(&merged));

        let file = File::open(&out).unwrap();
        let parquet = ParquetMetaDataReader::new()
            .with_page_index_policy(PageIndexPolicy::Required)
            .parse_and_finish(&file)
            .unwrap();
        let input_groups: usize = joined.iter().map(|i| i.parquet.num_row_groups()).sum();
        assert_eq!(parquet.num_row_groups(), input_groups);
        assert_eq!(key_range(&parquet, 0), Some((-200, 9_000)));

        let mut all = StatsBuilder::new(&def);
        all.add(&concat(&merged)).unwrap();
        assert_eq!(joined_stats(&def, &inputs), Some(all.finish()));
    }

    /// Files whose key ranges overlap, or one written in another schema, are merged instead.
    #[test]
    fn overlapping_or_other_schema_files_are_left_to_the_merge() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::folder(dir.path().to_path_buf());
        let def = def();
        let schema = storage_schema(&def);
        let a = file(&store, &def, "a", &[1, 5, 9]);
        let b = file(&store, &def, "b", &[9, 12]);
        let c = file(&store, &def, "c", &[20, 30]);
        let paths = |ms: &[&FileMeta]| ms.iter().map(|m| store.path(&m.path)).collect::<Vec<_>>();
        assert!(joinable(&[&a, &b], &paths(&[&a, &b]), &schema, 0).unwrap().is_none());
        assert!(joinable(&[&a, &c], &paths(&[&a, &c]), &schema, 0).unwrap().is_some());

        let mut wider = def.clone();
        wider.columns.push(ColumnDef { name: "y".into(), ..def.columns[2].clone() });
        let d = file(&store, &wider, "d", &[40]);
        assert!(joinable(&[&c, &d], &paths(&[&c, &d]), &schema, 0).unwrap().is_none());
    }

    /// A float column whose extreme was not recorded (NaN) cannot be summed up from the inputs.
    #[test]
    fn missing_float_extremes_leave_the_statistics_unknown() {
        let def = def();
        let stats = |x: Option<f64>| FileMeta {
            file_no: 0,
            path: String::new(),
            log_start: 1,
            log_end: 1,
            created_at: 1,
            rows: 2,
            bytes: 0,
            sha256: String::new(),
            written_by: "flush".into(),
            retired_at: None,
            columns: vec![
                ColumnStats { name: "id".into(), min: Some(1.into()), max: Some(2.into()), nulls: 0 },
                ColumnStats { name: "v".into(), min: None, max: None, nulls: 2 },
                ColumnStats { name: "x".into(), min: x.map(Into::into), max: x.map(Into::into), nulls: 0 },
            ],
        };
        let (known, nan) = (stats(Some(0.5)), stats(None));
        assert!(joined_stats(&def, &[&known, &nan]).is_none());
        let joined = joined_stats(&def, &[&known, &known]).unwrap();
        assert_eq!((joined[1].nulls, joined[2].min.clone()), (4, Some(0.5.into())));
    }
}
