//! NOT NULL fences: the columns a data group refuses NULL in, whatever the catalog said when
//! a write was checked. `ALTER COLUMN ... SET NOT NULL` fences the column in every group that
//! holds the table (each fence first checks the group's live rows, hot and cold) before the
//! catalog marks it NOT NULL, so a write checked against the old schema and committed after
//! the check cannot slip a NULL in: the group's log orders the check and every write.
//!
//! Schema floors: the lowest schema version of a table a row op may be planned on in this
//! group (`Op::SchemaFloor`). A DDL statement raises them before the catalog commits the
//! change, so a write planned on a catalog replica that lags the change is refused
//! (`StaleSchema`) and planned again, and writes skip the catalog read barrier. A floor stays
//! after its table is dropped and purged: a write to the dropped table stays refused.
//!
//! A table's fences are one record in the `catalog` column family under the data group's
//! prefix, its floor another, so snapshots and digests carry them with the rows they guard.

use kalamdb_log::{GroupId, RowWrite, TableDef, Value};
use rocksdb::{DB, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::CF_CATALOG;
use crate::CF_ROWS;
use crate::cold::{ColdGroup, ScopeHead, iter_prefix, open_parquet, table_files};
use crate::columnar::{conform, seq_deleted, storage_schema, value_at};
use crate::error::{Error, Result};
use crate::keys::{row_key, split_scope, table_prefix};
use crate::stored::StoredRow;

/// Key tag of a table's fence record (after the group prefix).
const KEY_FENCES: u8 = b'f';
/// Key tag of a table's schema floor (after the group prefix): `u32 BE`.
const KEY_FLOOR: u8 = b'v';
/// Rows read from a Parquet file at a time while checking it.
const CHECK_BATCH_ROWS: usize = 8192;

/// One fenced column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fence {
    /// The column's position in stored rows.
    pub slot: u32,
    /// Its name when fenced (for messages).
    pub column: String,
    /// Whether a row shorter than the slot (written before the column was added) reads NULL.
    pub backfill_null: bool,
}

impl Fence {
    /// Whether a row with these values breaks the fence.
    pub fn refuses(&self, values: &[Value]) -> bool {
        match values.get(self.slot as usize) {
            Some(v) => v.is_null(),
            None => self.backfill_null,
        }
    }
}

fn fence_key(group: GroupId, table_id: u64) -> Vec<u8> {
    let mut k = group.prefix().to_vec();
    k.push(KEY_FENCES);
    k.extend_from_slice(&table_id.to_be_bytes());
    k
}

fn floor_key(group: GroupId, table_id: u64) -> Vec<u8> {
    let mut k = group.prefix().to_vec();
    k.push(KEY_FLOOR);
    k.extend_from_slice(&table_id.to_be_bytes());
    k
}

/// The table's schema floor in the group as committed; 0 when none was set.
pub fn load_floor(db: &DB, group: GroupId, table_id: u64) -> Result<u32> {
    let cf = db.cf_handle(CF_CATALOG).ok_or_else(|| Error::Corrupt("no catalog cf".into()))?;
    match db.get_pinned_cf(cf, floor_key(group, table_id))? {
        Some(b) => {
            let bytes: [u8; 4] = b.as_ref().try_into().map_err(|_| Error::Corrupt("schema floor record".into()))?;
            Ok(u32::from_be_bytes(bytes))
        }
        None => Ok(0),
    }
}

/// Stage the table's schema floor.
pub fn stage_floor(db: &DB, batch: &mut WriteBatch, group: GroupId, table_id: u64, version: u32) -> Result<()> {
    let cf = db.cf_handle(CF_CATALOG).ok_or_else(|| Error::Corrupt("no catalog cf".into()))?;
    batch.put_cf(cf, floor_key(group, table_id), version.to_be_bytes());
    Ok(())
}

/// The table's fences in the group as committed.
pub fn load(db: &DB, group: GroupId, table_id: u64) -> Result<Vec<Fence>> {
    let cf = db.cf_handle(CF_CATALOG).ok_or_else(|| Error::Corrupt("no catalog cf".into()))?;
    match db.get_pinned_cf(cf, fence_key(group, table_id))? {
        Some(b) => serde_json::from_slice(&b).map_err(|e| Error::Corrupt(format!("fence record: {e}"))),
        None => Ok(Vec::new()),
    }
}

/// Stage the table's fences (none: the record goes).
pub fn stage(db: &DB, batch: &mut WriteBatch, group: GroupId, table_id: u64, fences: &[Fence]) -> Result<()> {
    let cf = db.cf_handle(CF_CATALOG).ok_or_else(|| Error::Corrupt("no catalog cf".into()))?;
    if fences.is_empty() {
        batch.delete_cf(cf, fence_key(group, table_id));
    } else {
        let bytes = serde_json::to_vec(fences).map_err(|e| Error::Corrupt(e.to_string()))?;
        batch.put_cf(cf, fence_key(group, table_id), bytes);
    }
    Ok(())
}

/// The first row of `rows` some fence refuses: (row number from 1, column).
pub fn refused<'f>(fences: &'f [Fence], rows: &[RowWrite]) -> Option<(usize, &'f str)> {
    rows.iter()
        .enumerate()
        .find_map(|(i, r)| fences.iter().find(|f| f.refuses(&r.values)).map(|f| (i + 1, f.column.as_str())))
}

/// Live rows of the table in the group whose column at `slot` reads NULL: the newest hot
/// versions (those `staged` in this apply call first) and the live rows of its files.
pub fn count_nulls(at: ColdGroup<'_>, def: &TableDef, slot: usize, staged: &crate::rows::Staged) -> Result<u64> {
    let ColdGroup { db, files: store, group } = at;
    let fence = Fence { slot: slot as u32, column: String::new(), backfill_null: def.columns[slot].backfill.is_none() };
    let prefix = table_prefix(group, def.table_id);
    let mut nulls = 0u64;
    let rows_cf = db.cf_handle(CF_ROWS).ok_or_else(|| Error::Corrupt("no rows cf".into()))?;
    // Hot rows a flush holds (not settled yet) are counted with their files below.
    let mut scope_head: Option<(Vec<u8>, ScopeHead)> = None;
    for item in iter_prefix(db, rows_cf, &prefix) {
        let (k, v) = item?;
        if staged.contains_key(k.as_ref()) {
            continue;
        }
        let (_, pk) = split_scope(&k).ok_or_else(|| Error::Corrupt("bad row key".into()))?;
        let sp = &k[..k.len() - pk.len()];
        if scope_head.as_ref().is_none_or(|(p, _)| p.as_slice() != sp) {
            scope_head = Some((sp.to_vec(), crate::cold::scope_head(db, sp)?));
        }
        let row = StoredRow::decode(&v)?;
        let flushed = scope_head.as_ref().is_some_and(|(_, h)| h.flushed(row.seq));
        nulls += u64::from(!row.deleted && !flushed && fence.refuses(&row.values));
    }
    for (k, row) in staged {
        let Some(bytes) = row.as_deref().filter(|_| k.starts_with(&prefix)) else { continue };
        let row = StoredRow::decode(bytes)?;
        nulls += u64::from(!row.deleted && fence.refuses(&row.values));
    }
    let (files, superseded) = table_files(db, group, def.table_id)?;
    let storage = storage_schema(def);
    let name = def.columns[slot].storage_name();
    let pk = def.pk_index();
    for (scope, meta) in files {
        // Statistics answer for most files: the column is there and holds no NULL, or the
        // file predates it and its rows read a non-NULL backfill.
        match meta.columns.iter().find(|c| c.name == name) {
            Some(stats) if stats.nulls == 0 => continue,
            None if !fence.backfill_null => continue,
            _ => {}
        }
        for batch in open_parquet(&store.local(&meta.path, meta.bytes, &meta.sha256)?, CHECK_BATCH_ROWS)? {
            let batch = batch.map_err(|e| Error::Storage(format!("reading {}: {e}", meta.path)))?;
            let batch = conform(def, &storage, batch)?;
            let (seq, deleted) = seq_deleted(&batch)?;
            let column = batch.column(slot);
            for row in 0..batch.num_rows() {
                if !column.is_null(row) || deleted.value(row) || superseded.contains(&(seq.value(row) as u64)) {
                    continue;
                }
                // A newer version staged in this apply call supersedes the file's.
                let key =
                    row_key(group, def.table_id, &scope, &value_at(batch.column(pk), row, def.columns[pk].data_type)?);
                nulls += u64::from(!staged.contains_key(&key));
            }
        }
    }
    Ok(nulls)
}
