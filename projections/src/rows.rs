//! The row projection: table rows of the data groups in the `rows` column family, keyed by
//! [`crate::keys::row_key`], one [`StoredRow`] (the newest version) per key.

use std::collections::HashMap;
use std::sync::Arc;

use kalamdb_log::command::ApplyErrorCode;
use kalamdb_log::{GroupId, OpResult, RowWrite, Value};
use rkyv::{Archive, Deserialize as RDeserialize, Serialize as RSerialize};
use rocksdb::{DB, ReadOptions, WriteBatch};

use crate::CF_ROWS;
use crate::error::{Error, Result};
use crate::keys::{prefix_end, row_key, split_scope, table_prefix, table_scope_prefix};

/// Rows one log entry may write: `_seq` packs the entry's log index with the row's ordinal.
pub const ENTRY_ROWS_MAX: u64 = 1 << SEQ_ORDINAL_BITS;
const SEQ_ORDINAL_BITS: u32 = 20;

/// `_seq` of the `ordinal`-th row written by the entry at `log_index`: monotonic in log order.
pub fn make_seq(log_index: u64, ordinal: u64) -> u64 {
    assert!(ordinal < ENTRY_ROWS_MAX, "entry writes more than ENTRY_ROWS_MAX rows");
    assert!(log_index < (1 << (63 - SEQ_ORDINAL_BITS)), "log index overflows _seq");
    (log_index << SEQ_ORDINAL_BITS) | ordinal
}

/// The newest version of a row.
#[derive(Archive, RSerialize, RDeserialize, Debug, Clone, PartialEq)]
pub struct StoredRow {
    pub seq: u64,
    pub deleted: bool,
    /// Column values in table order; empty for a tombstone.
    pub values: Vec<Value>,
}

impl StoredRow {
    pub fn encode(&self) -> Vec<u8> {
        rkyv::to_bytes::<rkyv::rancor::Error>(self).map(|v| v.into_vec()).expect("row encoding cannot fail")
    }

    pub fn decode(bytes: &[u8]) -> Result<StoredRow> {
        rkyv::from_bytes::<StoredRow, rkyv::rancor::Error>(bytes).map_err(|e| Error::Corrupt(e.to_string()))
    }
}

/// Read access to row projections for the query layer. Never writes.
#[derive(Clone)]
pub struct RowReader {
    db: Arc<DB>,
}

impl std::fmt::Debug for RowReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowReader")
    }
}

impl RowReader {
    pub fn new(db: Arc<DB>) -> RowReader {
        RowReader { db }
    }

    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    fn cf(&self) -> Result<&rocksdb::ColumnFamily> {
        self.db.cf_handle(CF_ROWS).ok_or_else(|| Error::Corrupt("no rows cf".into()))
    }

    /// The newest version of one row, tombstones included.
    pub fn get(&self, group: GroupId, table_id: u64, scope: &str, pk: &Value) -> Result<Option<StoredRow>> {
        let cf = self.cf()?;
        match self.db.get_pinned_cf(cf, row_key(group, table_id, scope, pk))? {
            None => Ok(None),
            Some(bytes) => StoredRow::decode(&bytes).map(Some),
        }
    }

    /// Visit every row version of a table in one group, in key order. `scope` limits the scan
    /// to one user's rows; `None` visits all scopes. `f` returns false to stop early.
    pub fn scan(
        &self,
        group: GroupId,
        table_id: u64,
        scope: Option<&str>,
        mut f: impl FnMut(&str, StoredRow) -> bool,
    ) -> Result<()> {
        let cf = self.cf()?;
        let prefix = match scope {
            Some(s) => table_scope_prefix(group, table_id, s),
            None => table_prefix(group, table_id),
        };
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(prefix_end(&prefix));
        let iter = self.db.iterator_cf_opt(cf, opts, rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward));
        for item in iter {
            let (k, v) = item?;
            let (scope, _) = split_scope(&k).ok_or_else(|| Error::Corrupt("bad row key".into()))?;
            if !f(scope, StoredRow::decode(&v)?) {
                break;
            }
        }
        Ok(())
    }
}

/// Row writes of one `apply` call: a write-through overlay so that later ops in the same call
/// see earlier ops' rows before the batch is committed.
pub struct RowApplier<'a> {
    db: &'a DB,
    group: GroupId,
    overlay: HashMap<Vec<u8>, StoredRow>,
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
    pub fn new(db: &'a DB, group: GroupId) -> RowApplier<'a> {
        RowApplier { db, group, overlay: HashMap::new() }
    }

    fn current(&self, key: &[u8]) -> Result<Option<StoredRow>> {
        if let Some(row) = self.overlay.get(key) {
            return Ok(Some(row.clone()));
        }
        let cf = self.db.cf_handle(CF_ROWS).ok_or_else(|| Error::Corrupt("no rows cf".into()))?;
        match self.db.get_pinned_cf(cf, key)? {
            None => Ok(None),
            Some(bytes) => StoredRow::decode(&bytes).map(Some),
        }
    }

    fn commit(&mut self, batch: &mut WriteBatch, staged: Vec<(Vec<u8>, StoredRow)>) -> Result<()> {
        let cf = self.db.cf_handle(CF_ROWS).ok_or_else(|| Error::Corrupt("no rows cf".into()))?;
        for (key, row) in staged {
            batch.put_cf(cf, &key, row.encode());
            self.overlay.insert(key, row);
        }
        Ok(())
    }

    /// Insert rows; the whole op fails if any key holds a live row (or repeats within the op).
    pub fn insert(
        &mut self,
        batch: &mut WriteBatch,
        table_id: u64,
        scope: &str,
        rows: &[RowWrite],
        log_index: u64,
        ordinal: &mut u64,
    ) -> Result<OpResult> {
        let mut staged: Vec<(Vec<u8>, StoredRow)> = Vec::with_capacity(rows.len());
        let mut seen = std::collections::HashSet::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            let key = row_key(self.group, table_id, scope, &r.pk);
            let live = self.current(&key)?.is_some_and(|row| !row.deleted);
            if live || !seen.insert(key.clone()) {
                return Ok(failed(
                    ApplyErrorCode::ConstraintViolation,
                    format!(
                        "Primary key violation: a row with key {} already exists (row {})",
                        pk_display(&r.pk),
                        i + 1
                    ),
                ));
            }
            let seq = make_seq(log_index, *ordinal + i as u64);
            staged.push((key, StoredRow { seq, deleted: false, values: r.values.clone() }));
        }
        *ordinal += rows.len() as u64;
        let affected = staged.len() as u64;
        self.commit(batch, staged)?;
        Ok(OpResult::Done { affected })
    }

    /// Replace (update) or tombstone (delete) rows that must still be at their expected `_seq`.
    pub fn rewrite(
        &mut self,
        batch: &mut WriteBatch,
        table_id: u64,
        scope: &str,
        rows: &[RowWrite],
        delete: bool,
        log_index: u64,
        ordinal: &mut u64,
    ) -> Result<OpResult> {
        let mut staged: Vec<(Vec<u8>, StoredRow)> = Vec::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            let key = row_key(self.group, table_id, scope, &r.pk);
            let current = self.current(&key)?;
            let at_expected = match (&current, r.expected_seq) {
                (Some(row), Some(expected)) => !row.deleted && row.seq == expected,
                _ => false,
            };
            if !at_expected {
                return Ok(failed(
                    ApplyErrorCode::Conflict,
                    format!("row {} changed since it was read", pk_display(&r.pk)),
                ));
            }
            let seq = make_seq(log_index, *ordinal + i as u64);
            let values = if delete { Vec::new() } else { r.values.clone() };
            staged.push((key, StoredRow { seq, deleted: delete, values }));
        }
        *ordinal += rows.len() as u64;
        let affected = staged.len() as u64;
        self.commit(batch, staged)?;
        Ok(OpResult::Done { affected })
    }

    /// Remove every row of a table in this group (after the table was dropped).
    pub fn purge_table(&mut self, batch: &mut WriteBatch, table_id: u64) -> Result<OpResult> {
        let cf = self.db.cf_handle(CF_ROWS).ok_or_else(|| Error::Corrupt("no rows cf".into()))?;
        let prefix = table_prefix(self.group, table_id);
        batch.delete_range_cf(cf, prefix.clone(), prefix_end(&prefix));
        self.overlay.retain(|k, _| !k.starts_with(&prefix));
        Ok(OpResult::Done { affected: 0 })
    }
}
