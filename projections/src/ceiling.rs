//! The largest key a scope may hold, hot or flushed, so that an insert of keys above it (ids
//! and times that grow: a snowflake id, the default key) skips looking each one up. A
//! 1,000-row insert otherwise reads RocksDB twice per row (the hot row, then the flushed
//! row's stub) to learn that none exists.
//!
//! Found by two reverse seeks from the scope's end, each allowed to pass over a bounded number
//! of tombstones and old versions (settling leaves a scope's end all tombstones until they are
//! compacted away); past that the answer is "unknown" and the insert looks its keys up. The
//! answer only spares lookups whose result it already knows, so apply stays deterministic.
//!
//! The flushed rows' top is found first, and the hot rows are looked for only above it: any hot
//! row at or below it is under the ceiling anyway. That matters after a flush that settled its
//! rows itself (`cold::inline`): they leave `rows` with one range deletion, and a reverse seek
//! that meets the keys such a deletion covers in the memtable steps over them one by one,
//! below any lower bound and without counting them against the skip bound (the first insert
//! after each flush took 50-170 ms, 9% of a bulk load's CPU: benches/RESULTS.md, session 29).
//! So a forward seek from just above the flushed top first asks whether any hot row is there
//! (a covered key is never above it); only then does the reverse seek run, and it starts on a
//! key above every covered one.

use rocksdb::{DB, ReadOptions};

use crate::cold::{Stub, stub_range};
use crate::error::{Error, Result};
use crate::keys::prefix_end;
use crate::{CF_COLD, CF_ROWS};

/// Internal keys (tombstones, older versions) one reverse seek may pass over before the
/// ceiling is given up as unknown: an insert then costs its lookups, not a walk over a
/// settled scope's whole history.
pub const CEILING_SKIP_MAX: u64 = 256;

/// Keys an insert must have to look for the scope's ceiling: two seeks cost about what a few
/// point lookups do, so a single-row insert does not try.
pub const CEILING_KEYS_MIN: usize = 16;

/// What is known of the keys a scope holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ceiling {
    /// Not known within [`CEILING_SKIP_MAX`]: every key must be looked up.
    Unknown,
    /// No hot row and no flushed row's stub: nothing exists.
    Empty,
    /// Every existing row key (`scope prefix | pk`) is at most this one.
    At(Vec<u8>),
}

impl Ceiling {
    /// Whether the row key `key` of the scope is known to hold no row, hot or flushed.
    pub fn above(&self, key: &[u8]) -> bool {
        match self {
            Ceiling::Unknown => false,
            Ceiling::Empty => true,
            Ceiling::At(top) => key > top.as_slice(),
        }
    }
}

/// The ceiling of the scope whose row keys start with `sp`, as committed in `db`.
pub fn scope_ceiling(db: &DB, sp: &[u8]) -> Result<Ceiling> {
    let rows = db.cf_handle(CF_ROWS).ok_or_else(|| Error::Corrupt("no rows cf".into()))?;
    let cold = db.cf_handle(CF_COLD).ok_or_else(|| Error::Corrupt("no cold cf".into()))?;
    let stubs = stub_range(sp);
    let Some(flushed) = last_entry(db, cold, &stubs, &stubs)? else { return Ok(Ceiling::Unknown) };
    // A stub key is the scope prefix, a kind byte, then the primary key: as a row key, the
    // same without the kind byte. A run's last key is its first plus its count less one.
    let flushed = match flushed {
        Some((k, v)) => {
            let (pk, stub) = (&k[stubs.len()..], Stub::decode(&v)?);
            let top = match <[u8; 8]>::try_from(pk) {
                Ok(first) if stub.count > 1 => u64::from_be_bytes(first)
                    .checked_add(stub.count - 1)
                    .ok_or_else(|| Error::Corrupt(format!("run stub {stub:?} past the last key")))?
                    .to_be_bytes()
                    .to_vec(),
                _ => pk.to_vec(),
            };
            Some([sp, &top].concat())
        }
        None => None,
    };
    let from = match &flushed {
        Some(top) => [top.as_slice(), &[0]].concat(),
        None => sp.to_vec(),
    };
    let hot = match any_entry(db, rows, &from, sp)? {
        None => return Ok(Ceiling::Unknown),
        Some(false) => None,
        Some(true) => match last_entry(db, rows, &from, sp)? {
            None => return Ok(Ceiling::Unknown),
            Some(last) => last.map(|(k, _)| k),
        },
    };
    Ok(match hot.into_iter().chain(flushed).max() {
        Some(top) => Ceiling::At(top),
        None => Ceiling::Empty,
    })
}

/// An iterator over the keys starting with `prefix` and at or above `from`, giving up after
/// [`CEILING_SKIP_MAX`] internal keys.
fn bounded<'a>(db: &'a DB, cf: &rocksdb::ColumnFamily, from: &[u8], prefix: &[u8]) -> rocksdb::DBRawIterator<'a> {
    assert!(from.starts_with(prefix), "a ceiling seek outside its scope");
    let mut opts = ReadOptions::default();
    opts.set_iterate_lower_bound(from.to_vec());
    opts.set_iterate_upper_bound(prefix_end(prefix));
    opts.set_max_skippable_internal_keys(CEILING_SKIP_MAX);
    db.raw_iterator_cf_opt(cf, opts)
}

/// What an iterator that found no key says: `Some(missing)` when there is none, `None` when
/// it gave up after [`CEILING_SKIP_MAX`] internal keys.
fn none_found<T>(it: &rocksdb::DBRawIterator<'_>, missing: T) -> Result<Option<T>> {
    match it.status() {
        Ok(()) => Ok(Some(missing)),
        Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether a key starting with `prefix` is at or above `from` (a forward seek); `None` when the
/// seek gave up.
fn any_entry(db: &DB, cf: &rocksdb::ColumnFamily, from: &[u8], prefix: &[u8]) -> Result<Option<bool>> {
    let mut it = bounded(db, cf, from, prefix);
    it.seek(from);
    if it.valid() {
        return Ok(Some(true));
    }
    none_found(&it, false)
}

/// The last key starting with `prefix` and at or above `from`, with its value: `Some(None)`
/// when there is none, `None` when the seek gave up.
fn last_entry(
    db: &DB,
    cf: &rocksdb::ColumnFamily,
    from: &[u8],
    prefix: &[u8],
) -> Result<Option<Option<(Vec<u8>, Vec<u8>)>>> {
    let mut it = bounded(db, cf, from, prefix);
    it.seek_to_last();
    if let (Some(k), Some(v)) = (it.key(), it.value()) {
        return Ok(Some(Some((k.to_vec(), v.to_vec()))));
    }
    none_found(&it, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::table_scope_prefix;
    use kalamdb_log::GroupId;

    #[test]
    fn the_ceiling_covers_hot_rows_and_stubs_and_gives_up_over_many_tombstones() {
        let dir = tempfile::tempdir().unwrap();
        let log_db = kalamdb_log::LogDb::open(dir.path(), &crate::PROJECTION_CFS).unwrap();
        let db = log_db.db();
        let (rows, cold) = (db.cf_handle(CF_ROWS).unwrap(), db.cf_handle(CF_COLD).unwrap());
        let sp = table_scope_prefix(GroupId::UserShard(0), 3, "alice");
        let other = table_scope_prefix(GroupId::UserShard(0), 3, "bob");
        let key = |sp: &[u8], i: u32| [sp, &i.to_be_bytes()].concat();
        assert_eq!(scope_ceiling(db, &sp).unwrap(), Ceiling::Empty);
        // Another scope's keys, above this one's, are not this scope's.
        db.put_cf(rows, key(&other, 900), b"x").unwrap();
        assert_eq!(scope_ceiling(db, &sp).unwrap(), Ceiling::Empty);
        db.put_cf(rows, key(&sp, 10), b"x").unwrap();
        assert_eq!(scope_ceiling(db, &sp).unwrap(), Ceiling::At(key(&sp, 10)));
        // A flushed row's stub above every hot row raises the ceiling to its key.
        db.put_cf(cold, [stub_range(&sp), 20u32.to_be_bytes().to_vec()].concat(), 7u64.to_be_bytes()).unwrap();
        let ceiling = scope_ceiling(db, &sp).unwrap();
        assert_eq!(ceiling, Ceiling::At(key(&sp, 20)));
        assert!(ceiling.above(&key(&sp, 21)) && !ceiling.above(&key(&sp, 20)) && !ceiling.above(&key(&sp, 15)));
        // A run's ceiling is its last key, not its first.
        let ints = table_scope_prefix(GroupId::UserShard(0), 3, "carol");
        let key8 = |sp: &[u8], i: u64| [sp, &i.to_be_bytes()].concat();
        db.put_cf(rows, key8(&ints, 12), b"x").unwrap();
        let run = Stub { seq: 8, count: 5 };
        db.put_cf(cold, [stub_range(&ints), 30u64.to_be_bytes().to_vec()].concat(), run.encode()).unwrap();
        let ceiling = scope_ceiling(db, &ints).unwrap();
        assert_eq!(ceiling, Ceiling::At(key8(&ints, 34)));
        assert!(!ceiling.above(&key8(&ints, 33)) && ceiling.above(&key8(&ints, 35)));
        // A run said to reach past the last key is corrupt, not a panic.
        let bad = table_scope_prefix(GroupId::UserShard(0), 3, "dave");
        db.put_cf(rows, key8(&bad, 1), b"x").unwrap();
        db.put_cf(cold, [stub_range(&bad), (u64::MAX - 1).to_be_bytes().to_vec()].concat(), run.encode()).unwrap();
        assert!(matches!(scope_ceiling(db, &bad), Err(Error::Corrupt(_))));
        // Rows settled away leave tombstones at the scope's end: past the bound, unknown.
        for i in 100..100 + CEILING_SKIP_MAX as u32 * 2 {
            db.put_cf(rows, key(&sp, i), b"x").unwrap();
        }
        for i in 100..100 + CEILING_SKIP_MAX as u32 * 2 {
            db.delete_cf(rows, key(&sp, i)).unwrap();
        }
        assert_eq!(scope_ceiling(db, &sp).unwrap(), Ceiling::Unknown);
        assert!(!Ceiling::Unknown.above(&key(&sp, u32::MAX)));

        // Rows a flush settled itself (one range deletion, their run stub) under rows written
        // since: the ceiling is the newer rows' top, or the run's when they are below it.
        let bulk = table_scope_prefix(GroupId::UserShard(0), 3, "erin");
        for i in 0..1_000u64 {
            db.put_cf(rows, key8(&bulk, i), b"x").unwrap();
        }
        db.delete_range_cf(rows, key8(&bulk, 0), key8(&bulk, 1_000)).unwrap();
        db.put_cf(
            cold,
            [stub_range(&bulk), 0u64.to_be_bytes().to_vec()].concat(),
            Stub { seq: 1, count: 1_000 }.encode(),
        )
        .unwrap();
        assert_eq!(scope_ceiling(db, &bulk).unwrap(), Ceiling::At(key8(&bulk, 999)));
        db.put_cf(rows, key8(&bulk, 500), b"x").unwrap();
        assert_eq!(scope_ceiling(db, &bulk).unwrap(), Ceiling::At(key8(&bulk, 999)), "a hot row under the run");
        db.put_cf(rows, key8(&bulk, 1_200), b"x").unwrap();
        assert_eq!(scope_ceiling(db, &bulk).unwrap(), Ceiling::At(key8(&bulk, 1_200)));
    }
}
