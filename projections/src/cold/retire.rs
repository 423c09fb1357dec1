//! Retired files: what a compaction replaced or a dropped table left behind stays on disk
//! until no member of the group can need it, then an `Op::DeleteRetired` entry removes it.
//!
//! A member still needs a retired file while it has not applied the entry that retired it: a
//! node that was down or behind replays the compaction, which reads its input files, and with
//! one storage folder shared by every node another node's delete would pull them away. So
//! retiring only records the file in an index (`catalog` column family under the data group's
//! prefix, ordered by the retiring log index, carried by snapshots); the group's leader
//! proposes the delete once every member reports an applied index past it.

use super::*;
use crate::CF_CATALOG;

/// Key tag of a retired-file index entry (after the group prefix).
const KEY_RETIRED: u8 = b'r';

/// One retired file: its path under the storage root and the key of its manifest record
/// (gone already when a dropped table's records were purged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RetiredFile {
    path: String,
    record: Vec<u8>,
}

fn retired_prefix(group: GroupId) -> Vec<u8> {
    let mut k = group.prefix().to_vec();
    k.push(KEY_RETIRED);
    k
}

/// Index key: group, tag, retiring log index, then the record key (unique per file).
fn retired_key(group: GroupId, retired_at: u64, record: &[u8]) -> Vec<u8> {
    let mut k = retired_prefix(group);
    k.extend_from_slice(&retired_at.to_be_bytes());
    k.extend_from_slice(record);
    k
}

/// Stage the retirement of a file at log index `retired_at`.
pub(super) fn stage_retired(
    db: &DB,
    batch: &mut WriteBatch,
    group: GroupId,
    retired_at: u64,
    record: &[u8],
    path: &str,
) -> Result<()> {
    let value = json(&RetiredFile { path: path.to_string(), record: record.to_vec() })?;
    batch.put_cf(cf(db, CF_CATALOG)?, retired_key(group, retired_at, record), value);
    Ok(())
}

/// The log index that retired the group's oldest file still on disk; `None` when none is.
pub fn oldest_retired(db: &DB, group: GroupId) -> Result<Option<u64>> {
    let prefix = retired_prefix(group);
    match iter_prefix(db, cf(db, CF_CATALOG)?, &prefix).next() {
        None => Ok(None),
        Some(item) => {
            let (k, _) = item?;
            let at: [u8; 8] = k
                .get(prefix.len()..prefix.len() + 8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| Error::Corrupt("bad retired-file key".into()))?;
            Ok(Some(u64::from_be_bytes(at)))
        }
    }
}

impl ColdApplier<'_> {
    /// Apply `Op::DeleteRetired`: remove every file retired at or before `upto`, its index
    /// entry and its manifest record. Deterministic in what it stages; unlinking is idempotent
    /// (a file already gone, by another node sharing the folder or by a replay after a crash,
    /// is fine).
    pub fn delete_retired(&self, batch: &mut WriteBatch, upto: u64) -> Result<OpResult> {
        let catalog = cf(self.db, CF_CATALOG)?;
        let cold = cf(self.db, CF_COLD)?;
        let mut doomed: Vec<(Vec<u8>, RetiredFile)> = Vec::new();
        let end = retired_key(self.group, upto.saturating_add(1), &[]);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(end);
        let start = retired_prefix(self.group);
        for item in self.db.iterator_cf_opt(catalog, opts, IteratorMode::From(&start, Direction::Forward)) {
            let (k, v) = item?;
            doomed.push((k.to_vec(), unjson(&v)?));
        }
        if doomed.is_empty() {
            return Ok(OpResult::Done { affected: 0 });
        }
        // The batches that retired these files must be durable before their bytes go, so a
        // crash can never leave a live manifest record naming a missing file.
        self.db.flush_wal(true)?;
        for (key, file) in &doomed {
            self.env.files.remove(&file.path)?;
            batch.delete_cf(catalog, key);
            batch.delete_cf(cold, &file.record);
        }
        crate::failpoint::hit("delete-retired-after-unlink");
        tracing::info!(target: "kalamdb_storage", group = %self.group, files = doomed.len(), upto, "retired files deleted");
        Ok(OpResult::Done { affected: doomed.len() as u64 })
    }
}
