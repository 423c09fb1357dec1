//! Change records: what each applied entry changed, one record per normal log entry, for the
//! tail endpoint (and for turning a STREAM table's TTL into a log position).
//!
//! Apply writes the record of entry `i` in the same batch as the rows it describes, under key
//! `group u32 BE | i u64 BE` in the `changes` column family, so a record exists exactly when
//! its entry is applied, and every node holds the same records. Records are a derived index,
//! not projection state: they are not in snapshots or digests. Each node trims its own below
//! a *floor* (retention, or a snapshot install that skipped entries); positions under the
//! floor are gone.

use kalamdb_log::storage::approximate_range_bytes;
use kalamdb_log::{GroupId, Value};
use rkyv::{Archive, Deserialize as RDeserialize, Serialize as RSerialize};
use rocksdb::{DB, IteratorMode, ReadOptions, WriteBatch};

use crate::error::{Error, Result};
use crate::sm::sm_key;
use crate::{CF_CHANGES, CF_SM};

/// `sm` key suffix of a group's change floor (first index whose record may exist).
const KEY_FLOOR: u8 = b'c';
/// `sm` key suffix of the format of a group's records (absent: the first format, one
/// [`Change`] per row).
const KEY_FORMAT: u8 = b'f';
/// Format of the records this build writes: runs of row changes ([`StoredChange::Rows`]).
const FORMAT: u8 = 2;

#[derive(Archive, RSerialize, RDeserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
    /// Namespace or table created or dropped (catalog group), or a dropped table's rows purged
    /// (data groups).
    Ddl,
    /// A flush or compaction moved the table's rows between hot and cold storage.
    Flush,
}

impl ChangeKind {
    pub fn name(self) -> &'static str {
        match self {
            ChangeKind::Insert => "insert",
            ChangeKind::Update => "update",
            ChangeKind::Delete => "delete",
            ChangeKind::Ddl => "ddl",
            ChangeKind::Flush => "flush",
        }
    }
}

/// One change of one entry.
#[derive(Archive, RSerialize, RDeserialize, Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: ChangeKind,
    /// 0 for namespace DDL.
    pub table_id: u64,
    /// The row's scope (user id) in USER and STREAM tables; empty otherwise.
    pub scope: String,
    /// Namespace of a DDL change; data groups do not know names and leave it empty.
    pub namespace: String,
    /// `_seq` of the version this change wrote (the expired version for an eviction).
    pub seq: u64,
    /// New column values (insert, update); empty otherwise.
    pub row: Vec<Value>,
    /// Values of the replaced version (update, delete) when it was hot; `None` when it lived
    /// in a Parquet file (its `_seq` is in `old_seq`) or there is none.
    pub old_row: Option<Vec<Value>>,
    pub old_seq: Option<u64>,
    /// A delete by the table's TTL.
    pub expired: bool,
    /// DDL statement or storage job summary.
    pub detail: String,
}

impl Change {
    pub fn ddl(table_id: u64, namespace: &str, detail: String) -> Change {
        Change {
            kind: ChangeKind::Ddl,
            table_id,
            scope: String::new(),
            namespace: namespace.to_string(),
            seq: 0,
            row: Vec::new(),
            old_row: None,
            old_seq: None,
            expired: false,
            detail,
        }
    }
}

/// The record of one applied entry.
#[derive(Archive, RSerialize, RDeserialize, Debug, Clone, PartialEq, Default)]
pub struct ChangeEntry {
    /// The proposing leader's clock ([`kalamdb_log::LogCommand::committed_at_micros`]).
    pub committed_at_micros: i64,
    pub changes: Vec<Change>,
}

/// How a record is stored: the row changes of one entry that share their kind, table and
/// scope, carry consecutive `_seq`s and nothing but the new values (an INSERT's rows, as a
/// rule) are one run, so a 1,000-row INSERT stores its values and one header, not 1,000
/// copies of every field of [`Change`]. That cut the bytes a bulk load writes to this
/// column family (and so to the WAL and its flushes), ~96 to ~35 bytes a row.
#[derive(Archive, RSerialize, RDeserialize, Debug, Clone, PartialEq)]
struct StoredEntry {
    committed_at_micros: i64,
    changes: Vec<StoredChange>,
}

#[derive(Archive, RSerialize, RDeserialize, Debug, Clone, PartialEq)]
enum StoredChange {
    /// Changes `first_seq`, `first_seq + 1`, ... with these rows; every other field of
    /// [`Change`] is empty.
    Rows {
        kind: ChangeKind,
        table_id: u64,
        scope: String,
        first_seq: u64,
        rows: Vec<Vec<Value>>,
    },
    One(Change),
}

impl StoredEntry {
    fn from_entry(entry: ChangeEntry) -> StoredEntry {
        let mut changes: Vec<StoredChange> = Vec::new();
        for c in entry.changes {
            let plain = c.namespace.is_empty()
                && c.old_row.is_none()
                && c.old_seq.is_none()
                && !c.expired
                && c.detail.is_empty();
            if !plain {
                changes.push(StoredChange::One(c));
                continue;
            }
            if let Some(StoredChange::Rows { kind, table_id, scope, first_seq, rows }) = changes.last_mut()
                && *kind == c.kind
                && *table_id == c.table_id
                && *scope == c.scope
                && first_seq.checked_add(rows.len() as u64) == Some(c.seq)
            {
                rows.push(c.row);
                continue;
            }
            changes.push(StoredChange::Rows {
                kind: c.kind,
                table_id: c.table_id,
                scope: c.scope,
                first_seq: c.seq,
                rows: vec![c.row],
            });
        }
        StoredEntry { committed_at_micros: entry.committed_at_micros, changes }
    }

    fn into_entry(self) -> Result<ChangeEntry> {
        let mut changes = Vec::with_capacity(self.changes.len());
        for stored in self.changes {
            match stored {
                StoredChange::One(c) => changes.push(c),
                StoredChange::Rows { kind, table_id, scope, first_seq, rows } => {
                    changes.reserve(rows.len());
                    for (i, row) in rows.into_iter().enumerate() {
                        let seq = first_seq
                            .checked_add(i as u64)
                            .ok_or_else(|| Error::Corrupt("change run past the last _seq".into()))?;
                        changes.push(Change {
                            kind,
                            table_id,
                            scope: scope.clone(),
                            namespace: String::new(),
                            seq,
                            row,
                            old_row: None,
                            old_seq: None,
                            expired: false,
                            detail: String::new(),
                        });
                    }
                }
            }
        }
        Ok(ChangeEntry { committed_at_micros: self.committed_at_micros, changes })
    }
}

impl ChangeEntry {
    /// The stored bytes: runs of row changes ([`StoredEntry`]), serialized straight into a
    /// `Vec` (with rkyv's `unaligned` format the bytes are what `to_bytes` gives).
    pub fn encode(self) -> Vec<u8> {
        rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(&StoredEntry::from_entry(self), Vec::new())
            .expect("change encoding cannot fail")
    }

    pub fn decode(bytes: &[u8]) -> Result<ChangeEntry> {
        rkyv::from_bytes::<StoredEntry, rkyv::rancor::Error>(bytes)
            .map_err(|e| Error::Corrupt(e.to_string()))?
            .into_entry()
    }
}

fn key(group: GroupId, index: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&group.prefix());
    k[4..].copy_from_slice(&index.to_be_bytes());
    k
}

fn floor_key(group: GroupId) -> [u8; 5] {
    sm_key(group, KEY_FLOOR)
}

fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily> {
    db.cf_handle(name).ok_or_else(|| Error::Corrupt(format!("no {name} cf")))
}

/// Stage the record of entry `index` into the entry's apply batch.
pub fn stage(db: &DB, batch: &mut WriteBatch, group: GroupId, index: u64, entry: ChangeEntry) -> Result<()> {
    batch.put_cf(cf(db, CF_CHANGES)?, key(group, index), entry.encode());
    Ok(())
}

/// Drop a group's records written in an earlier format (readers decode this build's only)
/// and note the current one; the floor rises past `applied`, as after a snapshot install.
/// Run when the group's projection opens, before anything reads or writes records.
pub fn upgrade_format(db: &DB, group: GroupId, applied: u64) -> Result<()> {
    let format_key = sm_key(group, KEY_FORMAT);
    if db.get_pinned_cf(cf(db, CF_SM)?, format_key)?.is_some_and(|f| f.as_ref() == [FORMAT]) {
        return Ok(());
    }
    let mut batch = WriteBatch::default();
    let new_floor = applied.saturating_add(1);
    if new_floor > floor(db, group)? {
        stage_trim(db, &mut batch, group, new_floor)?;
    }
    batch.put_cf(cf(db, CF_SM)?, format_key, [FORMAT]);
    db.write(batch)?;
    Ok(())
}

/// The first index whose record this node may still have (1 when nothing was trimmed).
pub fn floor(db: &DB, group: GroupId) -> Result<u64> {
    match db.get_pinned_cf(cf(db, CF_SM)?, floor_key(group))? {
        Some(b) if b.len() == 8 => Ok(u64::from_be_bytes(b.as_ref().try_into().unwrap_or([0; 8])).max(1)),
        Some(_) => Err(Error::Corrupt("bad change floor".into())),
        None => Ok(1),
    }
}

/// Records with `from <= index <= to`, at most `entries_max` of them, in index order.
/// Entries without a record (blank and membership entries) are simply absent.
pub fn read_range(db: &DB, group: GroupId, from: u64, to: u64, entries_max: usize) -> Result<Vec<(u64, ChangeEntry)>> {
    let mut out = Vec::new();
    if from > to {
        return Ok(out);
    }
    let mut opts = ReadOptions::default();
    opts.set_iterate_upper_bound(key(group, to.saturating_add(1)).to_vec());
    let start = key(group, from);
    let iter = db.iterator_cf_opt(cf(db, CF_CHANGES)?, opts, IteratorMode::From(&start, rocksdb::Direction::Forward));
    for item in iter {
        let (k, v) = item?;
        if out.len() >= entries_max {
            break;
        }
        let index = index_of(&k)?;
        out.push((index, ChangeEntry::decode(&v)?));
    }
    Ok(out)
}

fn index_of(k: &[u8]) -> Result<u64> {
    let b: [u8; 8] =
        k.get(4..12).and_then(|s| s.try_into().ok()).ok_or_else(|| Error::Corrupt("bad change key".into()))?;
    Ok(u64::from_be_bytes(b))
}

/// Drop records below `new_floor` and raise the floor to it (never lowers it). Local to this
/// node: retention is not replicated state.
pub fn trim(db: &DB, group: GroupId, new_floor: u64) -> Result<bool> {
    let old = floor(db, group)?;
    if new_floor <= old {
        return Ok(false);
    }
    let mut batch = WriteBatch::default();
    stage_trim(db, &mut batch, group, new_floor)?;
    db.write(batch)?;
    Ok(true)
}

/// Stage the removal of every record below `new_floor` and the new floor.
pub fn stage_trim(db: &DB, batch: &mut WriteBatch, group: GroupId, new_floor: u64) -> Result<()> {
    batch.delete_range_cf(cf(db, CF_CHANGES)?, key(group, 0), key(group, new_floor));
    batch.put_cf(cf(db, CF_SM)?, floor_key(group), new_floor.to_be_bytes());
    Ok(())
}

/// On-disk bytes (SST files, compressed; memtables not counted) of the group's records with
/// `from <= index <= to`, as RocksDB estimates them from its index blocks: cheap, no data read.
pub fn approximate_bytes(db: &DB, group: GroupId, from: u64, to: u64) -> Result<u64> {
    if from > to {
        return Ok(0);
    }
    Ok(approximate_range_bytes(db, CF_CHANGES, &key(group, from), &key(group, to.saturating_add(1)))?)
}

/// The lowest floor at or above the current one that leaves at most `bytes_max` of records
/// in `floor..=applied` (by [`approximate_bytes`]): a binary search of a few dozen estimates.
pub fn floor_for_bytes(db: &DB, group: GroupId, applied: u64, bytes_max: u64) -> Result<u64> {
    let (mut lo, mut hi) = (floor(db, group)?, applied.saturating_add(1));
    if approximate_bytes(db, group, lo, applied)? <= bytes_max {
        return Ok(lo);
    }
    // Invariant: keeping from `lo` is too much, keeping from `hi` (nothing) is not.
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if approximate_bytes(db, group, mid, applied)? <= bytes_max {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi)
}

/// Give the disk space of trimmed records back: drop the SST files that hold only trimmed
/// records, then compact what is left of the trimmed range (the deletes of [`stage_trim`]
/// otherwise wait for a compaction that an idle group may never get). Returns whether there
/// was anything to give back (`dead_bytes_min` or more below the floor).
pub fn compact_trimmed(db: &DB, group: GroupId, dead_bytes_min: u64) -> Result<bool> {
    let below = floor(db, group)?;
    if below <= 1 {
        return Ok(false);
    }
    let (start, end) = (key(group, 0), key(group, below));
    if approximate_range_bytes(db, CF_CHANGES, &start, &end)? < dead_bytes_min {
        return Ok(false);
    }
    let cf = cf(db, CF_CHANGES)?;
    db.delete_file_in_range_cf(cf, start, end)?;
    db.compact_range_cf(cf, Some(start), Some(end));
    Ok(true)
}

/// What one [`retain`] pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retained {
    pub floor: u64,
    pub trimmed: bool,
    pub compacted: bool,
}

/// Keep at most the newest `keep_entries` records of the group and at most `keep_bytes` of
/// them on disk (the higher of the two floors), then give the trimmed space back once
/// `dead_bytes_min` of it has gathered.
pub fn retain(
    db: &DB,
    group: GroupId,
    applied: u64,
    keep_entries: u64,
    keep_bytes: u64,
    dead_bytes_min: u64,
) -> Result<Retained> {
    let by_entries = (applied + 1).saturating_sub(keep_entries).max(1);
    let by_bytes = floor_for_bytes(db, group, applied, keep_bytes)?;
    let floor = by_entries.max(by_bytes);
    let trimmed = trim(db, group, floor)?;
    let compacted = compact_trimmed(db, group, dead_bytes_min)?;
    Ok(Retained { floor, trimmed, compacted })
}

/// The highest index whose entry was committed before `cutoff_micros`, by binary search over
/// the retained records (commit times are the proposers' clocks: close to, not strictly,
/// monotonic, which is all a TTL needs). `None` when no retained entry is that old.
pub fn index_before(db: &DB, group: GroupId, cutoff_micros: i64, applied: u64) -> Result<Option<u64>> {
    let (mut lo, mut hi) = (floor(db, group)?, applied);
    let mut found = None;
    while lo <= hi {
        let mid = lo + (hi - lo) / 2;
        // The first record at or after `mid` (records may be missing for blank entries).
        match read_range(db, group, mid, hi, 1)?.pop() {
            Some((index, entry)) if entry.committed_at_micros < cutoff_micros => {
                found = Some(index);
                lo = index + 1;
            }
            Some(_) => {
                if mid == 0 {
                    break;
                }
                hi = mid - 1;
            }
            None => {
                if mid == 0 {
                    break;
                }
                hi = mid - 1;
            }
        }
    }
    Ok(found)
}

/// Does any record in `from..=to` write a row of `table_id`?
pub fn writes_table(db: &DB, group: GroupId, table_id: u64, from: u64, to: u64) -> Result<bool> {
    const CHUNK: usize = 1024;
    let mut next = from;
    while next <= to {
        let records = read_range(db, group, next, to, CHUNK)?;
        let Some(last) = records.last().map(|(i, _)| *i) else { return Ok(false) };
        if records.iter().any(|(_, e)| {
            e.changes
                .iter()
                .any(|c| c.table_id == table_id && matches!(c.kind, ChangeKind::Insert | ChangeKind::Update))
        }) {
            return Ok(true);
        }
        next = last + 1;
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ts: i64) -> ChangeEntry {
        ChangeEntry { committed_at_micros: ts, changes: vec![Change::ddl(1, "ns", "CREATE TABLE ns.t".into())] }
    }

    /// A database with the projection's column families, in a folder dropped with it.
    fn open_db() -> (tempfile::TempDir, std::sync::Arc<kalamdb_log::LogDb>) {
        let dir = tempfile::tempdir().unwrap();
        let log = kalamdb_log::LogDb::open(dir.path(), &crate::PROJECTION_CFS).unwrap();
        (dir, log)
    }

    fn insert(table_id: u64, scope: &str, seq: u64, v: i64) -> Change {
        let mut c = Change::ddl(table_id, "", String::new());
        c.kind = ChangeKind::Insert;
        c.scope = scope.into();
        c.seq = seq;
        c.row = vec![Value::BigInt(v), Value::Text(format!("v{v}")), Value::Null];
        c
    }

    /// Records are the same bytes on every node: `encode` writes what rkyv's `to_bytes` does
    /// with the stored form.
    #[test]
    fn encoding_gives_rkyv_s_bytes() {
        let mut e = entry(42);
        let mut update = insert(7, "", 9, 1);
        update.kind = ChangeKind::Update;
        update.old_row = Some(vec![Value::Double(1.5)]);
        update.old_seq = Some(8);
        e.changes.push(update);
        e.changes.push(insert(7, "", 10, 2));
        let expected = rkyv::to_bytes::<rkyv::rancor::Error>(&StoredEntry::from_entry(e.clone())).unwrap().into_vec();
        assert_eq!(e.clone().encode(), expected);
        assert_eq!(ChangeEntry::decode(&expected).unwrap(), e);
    }

    /// Row changes with consecutive `_seq`s of one kind, table and scope are one run; anything
    /// else breaks it, and every record reads back exactly as it was staged.
    #[test]
    fn runs_hold_consecutive_plain_row_changes_and_read_back_exactly() {
        let mut e = ChangeEntry { committed_at_micros: 7, changes: Vec::new() };
        e.changes.extend((0..1000).map(|i| insert(3, "u1", 100 + i, i as i64)));
        // Each of these starts a new run or stands alone.
        e.changes.push(insert(3, "u1", 1101, 1)); // a gap in `_seq`
        e.changes.push(insert(3, "u2", 1102, 2)); // another scope
        e.changes.push(insert(4, "u2", 1103, 3)); // another table
        let mut delete = insert(4, "u2", 1104, 4);
        delete.kind = ChangeKind::Delete;
        e.changes.push(delete); // another kind
        let mut expired = insert(4, "u2", 1105, 5);
        expired.expired = true;
        e.changes.push(expired); // not plain
        let mut cold_update = insert(4, "u2", 1106, 6);
        cold_update.kind = ChangeKind::Update;
        cold_update.old_seq = Some(3); // not plain
        e.changes.push(cold_update);
        e.changes.push(Change::ddl(4, "ns", "FLUSH: 3 rows".into()));
        e.changes.push(insert(4, "u2", 1107, 7));
        let stored = StoredEntry::from_entry(e.clone());
        let shapes: Vec<usize> = stored
            .changes
            .iter()
            .map(|c| match c {
                StoredChange::Rows { rows, .. } => rows.len(),
                StoredChange::One(_) => 0,
            })
            .collect();
        assert_eq!(shapes, vec![1000, 1, 1, 1, 1, 0, 0, 0, 1]);
        let bytes = e.clone().encode();
        assert_eq!(ChangeEntry::decode(&bytes).unwrap(), e);
        // The run stores values and one header: well under the per-row form.
        let per_row = rkyv::to_bytes::<rkyv::rancor::Error>(&e).unwrap().len();
        assert!(bytes.len() * 2 < per_row, "{} bytes stored against {per_row} per row", bytes.len());
    }

    /// A database whose records were written in an earlier format drops them when it opens:
    /// the floor rises past the applied index and the format is noted once.
    #[test]
    fn an_earlier_format_is_trimmed_on_open() {
        let (_dir, log) = open_db();
        let db = log.db();
        let g = GroupId::SharedShard(0);
        let mut batch = WriteBatch::default();
        for i in 1..=5 {
            batch.put_cf(cf(db, CF_CHANGES).unwrap(), key(g, i), b"written by an earlier build");
        }
        db.write(batch).unwrap();
        upgrade_format(db, g, 5).unwrap();
        assert_eq!(floor(db, g).unwrap(), 6);
        assert!(read_range(db, g, 1, 10, 100).unwrap().is_empty());
        // Records of this format survive a reopen.
        let mut batch = WriteBatch::default();
        stage(db, &mut batch, g, 6, entry(1)).unwrap();
        db.write(batch).unwrap();
        upgrade_format(db, g, 6).unwrap();
        assert_eq!(floor(db, g).unwrap(), 6);
        assert_eq!(read_range(db, g, 1, 10, 100).unwrap(), vec![(6, entry(1))]);
    }

    #[test]
    fn records_range_trim_and_time_search() {
        let (_dir, log) = open_db();
        let db = log.db();
        let g = GroupId::SharedShard(0);
        let mut batch = WriteBatch::default();
        // Index 3 has no record (a blank entry).
        for i in [1u64, 2, 4, 5, 6] {
            stage(db, &mut batch, g, i, entry(i as i64 * 100)).unwrap();
        }
        stage(db, &mut batch, GroupId::SharedShard(1), 7, entry(1)).unwrap();
        db.write(batch).unwrap();
        let got: Vec<u64> = read_range(db, g, 2, 5, 10).unwrap().into_iter().map(|(i, _)| i).collect();
        assert_eq!(got, vec![2, 4, 5]);
        assert_eq!(read_range(db, g, 1, 100, 2).unwrap().len(), 2);
        assert_eq!(index_before(db, g, 450, 6).unwrap(), Some(4));
        assert_eq!(index_before(db, g, 50, 6).unwrap(), None);
        assert_eq!(index_before(db, g, 10_000, 6).unwrap(), Some(6));
        assert!(!writes_table(db, g, 1, 1, 6).unwrap(), "DDL records write no rows");
        assert_eq!(floor(db, g).unwrap(), 1);
        assert!(trim(db, g, 5).unwrap());
        assert!(!trim(db, g, 4).unwrap(), "the floor never goes down");
        assert_eq!(floor(db, g).unwrap(), 5);
        let left: Vec<u64> = read_range(db, g, 0, 100, 10).unwrap().into_iter().map(|(i, _)| i).collect();
        assert_eq!(left, vec![5, 6]);
        assert_eq!(read_range(db, GroupId::SharedShard(1), 0, 100, 10).unwrap().len(), 1, "other groups untouched");
    }

    #[test]
    fn byte_retention_keeps_the_newest_records_within_the_bound() {
        let (_dir, log) = open_db();
        let db = log.db();
        let g = GroupId::SharedShard(0);
        // 2,000 records of ~4 KiB that do not compress (a row of distinct values each).
        let fat = |i: u64| {
            let detail: String = (0..4096u64)
                .map(|b| {
                    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b;
                    x = (x ^ (x >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
                    char::from(b'a' + ((x ^ (x >> 33)) % 26) as u8)
                })
                .collect();
            ChangeEntry { committed_at_micros: i as i64, changes: vec![Change::ddl(1, "ns", detail)] }
        };
        for chunk in (1..=2_000u64).collect::<Vec<_>>().chunks(100) {
            let mut batch = WriteBatch::default();
            for i in chunk {
                stage(db, &mut batch, g, *i, fat(*i)).unwrap();
            }
            db.write(batch).unwrap();
        }
        db.flush_cf(cf(db, CF_CHANGES).unwrap()).unwrap();
        let all = approximate_bytes(db, g, 1, 2_000).unwrap();
        assert!(all > 6 << 20, "2,000 records of 4 KiB on disk: {all}");
        assert_eq!(floor_for_bytes(db, g, 2_000, all * 2).unwrap(), 1, "everything fits");

        let bound = 2 << 20;
        let new_floor = floor_for_bytes(db, g, 2_000, bound).unwrap();
        let kept = approximate_bytes(db, g, new_floor, 2_000).unwrap();
        assert!(kept <= bound, "kept {kept} bytes from {new_floor}");
        // The estimate is per data block (4 KiB here): the floor is within a few records.
        assert!(approximate_bytes(db, g, new_floor - 5, 2_000).unwrap() > bound, "floor {new_floor} too high");
        assert!((1_400..=1_700).contains(&new_floor), "~512 records of 4 KiB in 2 MiB: floor {new_floor}");

        assert!(trim(db, g, new_floor).unwrap());
        assert!(compact_trimmed(db, g, 1 << 20).unwrap());
        assert!(approximate_bytes(db, g, 1, new_floor - 1).unwrap() < 64 << 10, "trimmed space given back");
        assert!(!compact_trimmed(db, g, 1 << 20).unwrap(), "nothing left to give back");
        let left: Vec<u64> = read_range(db, g, 0, 3_000, 5_000).unwrap().into_iter().map(|(i, _)| i).collect();
        assert_eq!(left, (new_floor..=2_000).collect::<Vec<_>>());
    }
}
