//! The state machine's own keys in the `sm` column family of each group: its applied
//! position and its membership. Not in snapshots: they describe this node's copy.

use kalamdb_log::GroupId;
use kalamdb_log::types::LogId;
use rocksdb::DB;

use crate::CF_SM;
use crate::error::{Error, Result};

pub(crate) const KEY_APPLIED: u8 = b'a';
pub(crate) const KEY_MEMBERSHIP: u8 = b'm';
pub(crate) fn sm_key(group: GroupId, what: u8) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[..4].copy_from_slice(&group.prefix());
    k[4] = what;
    k
}

/// The applied log index of a group as last committed to RocksDB.
pub fn applied_index(db: &DB, group: GroupId) -> Result<u64> {
    let cf = db.cf_handle(CF_SM).ok_or_else(|| Error::Corrupt("no sm cf".into()))?;
    let applied: Option<LogId> = match db.get_pinned_cf(cf, sm_key(group, KEY_APPLIED))? {
        Some(b) => serde_json::from_slice(&b).map_err(|e| Error::Corrupt(e.to_string()))?,
        None => None,
    };
    Ok(applied.map_or(0, |l| l.index))
}
