//! The state machine's own keys in the `sm` column family of each group: its applied
//! position and its membership. Not in snapshots: they describe this node's copy.

use kalamdb_log::GroupId;
use kalamdb_log::types::{LogId, StoredMembership};
use rocksdb::{DB, Snapshot, WriteBatch};

use crate::CF_SM;
use crate::error::{Error, Result};

pub(crate) const KEY_APPLIED: u8 = b'a';
pub(crate) const KEY_MEMBERSHIP: u8 = b'm';
/// Present only while a state install is half done: the position it installs.
pub(crate) const KEY_INSTALLING: u8 = b'i';
pub(crate) fn sm_key(group: GroupId, what: u8) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[..4].copy_from_slice(&group.prefix());
    k[4] = what;
    k
}

/// The `sm` column family.
pub(crate) fn sm_cf(db: &DB) -> Result<&rocksdb::ColumnFamily> {
    db.cf_handle(CF_SM).ok_or_else(|| Error::Corrupt("no sm cf".into()))
}

/// Decode a stored JSON value; absent is the default.
fn decode<T: serde::de::DeserializeOwned + Default>(bytes: Option<impl AsRef<[u8]>>) -> Result<T> {
    match bytes {
        Some(b) => serde_json::from_slice(b.as_ref()).map_err(|e| Error::Corrupt(e.to_string())),
        None => Ok(T::default()),
    }
}

/// The applied log id and membership of a group: as last committed to RocksDB, or as the
/// RocksDB snapshot `snap` holds them (the position of the records read under the same
/// snapshot: every apply batch carries both).
pub fn position_at(db: &DB, snap: Option<&Snapshot<'_>>, group: GroupId) -> Result<(Option<LogId>, StoredMembership)> {
    let cf = sm_cf(db)?;
    let get = |what: u8| match snap {
        Some(s) => s.get_pinned_cf(cf, sm_key(group, what)),
        None => db.get_pinned_cf(cf, sm_key(group, what)),
    };
    Ok((decode(get(KEY_APPLIED)?)?, decode(get(KEY_MEMBERSHIP)?)?))
}

/// The applied log index of a group as last committed to RocksDB.
pub fn applied_index(db: &DB, group: GroupId) -> Result<u64> {
    Ok(position_at(db, None, group)?.0.map_or(0, |l| l.index))
}

/// Stage the group's applied position and membership into `batch`.
pub(crate) fn stage_position(
    db: &DB,
    group: GroupId,
    applied: &Option<LogId>,
    membership: &StoredMembership,
    batch: &mut WriteBatch,
) -> Result<()> {
    let cf = sm_cf(db)?;
    let applied = serde_json::to_vec(applied).map_err(|e| Error::Corrupt(e.to_string()))?;
    let membership = serde_json::to_vec(membership).map_err(|e| Error::Corrupt(e.to_string()))?;
    batch.put_cf(cf, sm_key(group, KEY_APPLIED), applied);
    batch.put_cf(cf, sm_key(group, KEY_MEMBERSHIP), membership);
    Ok(())
}
