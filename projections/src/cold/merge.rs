//! Compaction's merge: a scope's live Parquet files read batch by batch and merged by
//! primary key, so memory holds one batch per input file and the output in progress, never
//! the whole table.
//!
//! The output is what sorting all surviving rows by key would give (keys are unique once
//! superseded versions are dropped), cut into batches of exactly `batch_rows` rows but the
//! last, so every node writes the same bytes.

use std::collections::HashSet;
use std::path::Path;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, Rows, SortField};
use parquet::arrow::arrow_reader::ParquetRecordBatchReader;

use crate::columnar::seq_deleted;
use crate::error::{Error, Result};
use kalamdb_log::TableDef;

fn arrow_err(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

/// One input file: its reader and the current batch (superseded rows removed), with the
/// batch's keys in arrow's comparable row format.
struct Cursor {
    reader: ParquetRecordBatchReader,
    batch: RecordBatch,
    keys: Rows,
    at: usize,
}

/// The merge of several files, each sorted by the key column `pk`.
pub(crate) struct Merge<'a> {
    cursors: Vec<Option<Cursor>>,
    converter: RowConverter,
    pk: usize,
    superseded: &'a HashSet<i64>,
    schema: SchemaRef,
    /// The table, when files may predate a schema change: their batches are conformed to
    /// `schema` as they are read (see `columnar::conform`).
    def: Option<&'a TableDef>,
    batch_rows: usize,
    /// Rows picked from the cursors' current batches, not yet copied out: (cursor, row).
    picked: Vec<(usize, usize)>,
    /// Copied-out rows waiting to fill a batch of `batch_rows`.
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    /// Stands in for finished cursors when copying out (no pick points to them).
    empty: RecordBatch,
}

impl<'a> Merge<'a> {
    pub(crate) fn open(
        paths: &[impl AsRef<Path>],
        schema: SchemaRef,
        pk: usize,
        superseded: &'a HashSet<i64>,
        def: Option<&'a TableDef>,
        batch_rows: usize,
    ) -> Result<Merge<'a>> {
        assert!(batch_rows > 0, "merge batches need at least one row");
        let converter =
            RowConverter::new(vec![SortField::new(schema.field(pk).data_type().clone())]).map_err(arrow_err)?;
        let mut merge = Merge {
            cursors: Vec::with_capacity(paths.len()),
            converter,
            pk,
            superseded,
            schema: schema.clone(),
            def,
            batch_rows,
            picked: Vec::new(),
            pending: Vec::new(),
            pending_rows: 0,
            empty: RecordBatch::new_empty(schema.clone()),
        };
        for path in paths {
            let reader = super::files::open_parquet(path.as_ref(), batch_rows)?;
            let cursor = merge.advance(reader)?;
            merge.cursors.push(cursor);
        }
        Ok(merge)
    }

    /// The reader's next batch with rows left after dropping superseded versions, or `None`
    /// when the file is done.
    fn advance(&self, mut reader: ParquetRecordBatchReader) -> Result<Option<Cursor>> {
        for batch in reader.by_ref() {
            let batch = batch.map_err(arrow_err)?;
            let batch = match self.def {
                Some(def) => crate::columnar::conform(def, &self.schema, batch)?,
                None => batch,
            };
            let (seq, _) = seq_deleted(&batch)?;
            let mask: BooleanArray =
                seq.iter().map(|s| Some(!s.is_some_and(|s| self.superseded.contains(&s)))).collect();
            let batch = arrow::compute::filter_record_batch(&batch, &mask).map_err(arrow_err)?;
            if batch.num_rows() == 0 {
                continue;
            }
            let keys = self.converter.convert_columns(&[batch.column(self.pk).clone()]).map_err(arrow_err)?;
            return Ok(Some(Cursor { reader, batch, keys, at: 0 }));
        }
        Ok(None)
    }

    /// The next output batch: `batch_rows` rows, fewer only for the last one.
    pub(crate) fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        while self.pending_rows < self.batch_rows {
            // The smallest key among the cursors. Files are few (compaction runs once a
            // scope has a handful), so a linear pick is cheaper than keeping a heap.
            let mut best: Option<usize> = None;
            for (i, c) in self.cursors.iter().enumerate() {
                let Some(c) = c else { continue };
                let better = match best {
                    None => true,
                    Some(b) => {
                        let cb = self.cursors[b].as_ref().expect("best is a live cursor");
                        c.keys.row(c.at) < cb.keys.row(cb.at)
                    }
                };
                if better {
                    best = Some(i);
                }
            }
            let Some(i) = best else { break };
            let cursor = self.cursors[i].as_mut().expect("picked a live cursor");
            self.picked.push((i, cursor.at));
            cursor.at += 1;
            if self.picked.len() + self.pending_rows >= self.batch_rows {
                self.copy_out()?;
            }
            let cursor = self.cursors[i].as_ref().expect("picked a live cursor");
            if cursor.at == cursor.batch.num_rows() {
                // The batch the picks point into is about to be replaced: copy them out first.
                self.copy_out()?;
                let done = self.cursors[i].take().expect("picked a live cursor");
                self.cursors[i] = self.advance(done.reader)?;
            }
        }
        self.copy_out()?;
        if self.pending_rows == 0 {
            return Ok(None);
        }
        let all = arrow::compute::concat_batches(&self.schema, &self.pending).map_err(arrow_err)?;
        self.pending.clear();
        let take = self.batch_rows.min(all.num_rows());
        let rest = all.num_rows() - take;
        if rest > 0 {
            self.pending.push(all.slice(take, rest));
        }
        self.pending_rows = rest;
        Ok(Some(all.slice(0, take)))
    }

    /// Copy the picked rows out of the cursors' current batches.
    fn copy_out(&mut self) -> Result<()> {
        if self.picked.is_empty() {
            return Ok(());
        }
        // Indices into `sources` are cursor positions; finished cursors never have picks left.
        let sources: Vec<&RecordBatch> =
            self.cursors.iter().map(|c| c.as_ref().map_or(&self.empty, |c| &c.batch)).collect();
        let out = arrow::compute::interleave_record_batch(&sources, &self.picked).map_err(arrow_err)?;
        self.pending_rows += out.num_rows();
        self.pending.push(out);
        self.picked.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use proptest::prelude::*;

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("_seq", DataType::Int64, false),
            Field::new("_deleted", DataType::Boolean, false),
        ]))
    }

    fn batch(keys: &[i64], seq_base: i64) -> RecordBatch {
        let seqs: Vec<i64> = (0..keys.len() as i64).map(|i| seq_base + i).collect();
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(keys.to_vec())),
                Arc::new(StringArray::from_iter(keys.iter().map(|k| (k % 3 != 0).then(|| format!("n{k}"))))),
                Arc::new(Int64Array::from(seqs)),
                Arc::new(BooleanArray::from(keys.iter().map(|k| k % 5 == 0).collect::<Vec<_>>())),
            ],
        )
        .unwrap()
    }

    fn write(path: &Path, b: &RecordBatch, rows_per_write: usize) {
        let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema(), None).unwrap();
        let mut at = 0;
        while at < b.num_rows() {
            let n = rows_per_write.min(b.num_rows() - at);
            w.write(&b.slice(at, n)).unwrap();
            at += n;
        }
        w.close().unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// The streamed merge equals sorting every surviving row, in batches of exactly
        /// `batch_rows` but the last.
        #[test]
        fn equals_sorting_everything(
            files in proptest::collection::vec(proptest::collection::btree_set(-500i64..500, 0..120), 1..6),
            superseded_every in 2i64..9,
            batch_rows in 1usize..40,
        ) {
            let dir = tempfile::tempdir().unwrap();
            // Each key in one file only (as live versions are), with distinct `_seq`s.
            let mut seen = HashSet::new();
            let mut paths = Vec::new();
            let mut all = Vec::new();
            for (i, keys) in files.iter().enumerate() {
                let keys: Vec<i64> = keys.iter().copied().filter(|k| seen.insert(*k)).collect();
                let b = batch(&keys, i as i64 * 1000);
                let path = dir.path().join(format!("{i}.parquet"));
                write(&path, &b, 7);
                paths.push(path);
                all.push(b);
            }
            let superseded: HashSet<i64> =
                all.iter().flat_map(|b| seq_deleted(b).unwrap().0.values().to_vec()).filter(|s| s % superseded_every == 0).collect();
            let mut merge = Merge::open(&paths, schema(), 0, &superseded, None, batch_rows).unwrap();
            let mut got = Vec::new();
            while let Some(b) = merge.next_batch().unwrap() {
                got.push(b);
            }
            for b in got.iter().rev().skip(1) {
                prop_assert_eq!(b.num_rows(), batch_rows);
            }
            let expected = {
                let all = arrow::compute::concat_batches(&schema(), &all).unwrap();
                let (seq, _) = seq_deleted(&all).unwrap();
                let mask: BooleanArray = seq.iter().map(|s| Some(!superseded.contains(&s.unwrap()))).collect();
                let kept = arrow::compute::filter_record_batch(&all, &mask).unwrap();
                let order = arrow::compute::sort_to_indices(kept.column(0), None, None).unwrap();
                arrow::compute::take_record_batch(&kept, &order).unwrap()
            };
            let got = arrow::compute::concat_batches(&schema(), &got).unwrap();
            prop_assert_eq!(got, expected);
        }
    }
}
