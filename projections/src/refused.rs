//! Markers of row ops apply refused whole (a transaction whose preconditions failed, a write a
//! NOT NULL fence refused). History replay (`AS OF`, `REBUILD PROJECTION`) rebuilds one table
//! and cannot re-derive why an op was refused (the reason may lie in other tables or scopes),
//! so it skips the ops these markers name. They live in the `catalog` column family under the
//! data group's prefix, so snapshots and digests carry them like the rows they explain.

use kalamdb_log::GroupId;
use rocksdb::{DB, WriteBatch};

use crate::CF_CATALOG;
use crate::error::{Error, Result};

/// Key tag of a refusal marker (after the group prefix).
const KEY_REFUSED: u8 = b'x';

/// The marker of the row op at (`log_index`, first row `ordinal`).
fn refused_key(group: GroupId, log_index: u64, ordinal: u64) -> [u8; 21] {
    let mut k = [0u8; 21];
    k[..4].copy_from_slice(&group.prefix());
    k[4] = KEY_REFUSED;
    k[5..13].copy_from_slice(&log_index.to_be_bytes());
    k[13..].copy_from_slice(&ordinal.to_be_bytes());
    k
}

/// Stage the marker of a refused row op.
pub fn mark(db: &DB, batch: &mut WriteBatch, group: GroupId, log_index: u64, ordinal: u64) -> Result<()> {
    let cf = db.cf_handle(CF_CATALOG).ok_or_else(|| Error::Corrupt("no catalog cf".into()))?;
    batch.put_cf(cf, refused_key(group, log_index, ordinal), []);
    Ok(())
}

/// Did apply refuse the row op at (`log_index`, first row `ordinal`)?
pub fn was_refused(db: &DB, group: GroupId, log_index: u64, ordinal: u64) -> Result<bool> {
    let cf = db.cf_handle(CF_CATALOG).ok_or_else(|| Error::Corrupt("no catalog cf".into()))?;
    Ok(db.get_pinned_cf(cf, refused_key(group, log_index, ordinal))?.is_some())
}
