//! Key stubs of flushed rows: one record per row, or one per *run* of rows whose keys and
//! versions both count up by one (a bulk load's ids, written by one statement), and the
//! reads and writes that keep runs exact.
//!
//! A stub key is `scope prefix | K | pk`. Its value is either
//! - 8 bytes, `seq u64 BE`: a single stub, the key's newest flushed version; or
//! - 16 bytes, `seq u64 BE | count u64 BE` with `count >= 2`: a run. Only scopes whose primary
//!   key is fixed-width ([`ScopeHead::runs`]: integers, times and floats, all encoded in 8
//!   bytes) have runs. Read as a big-endian integer `p`, the run holds the keys `p ..= p +
//!   count - 1`, key `p + i` at version `seq + i`.
//!
//! Two rules make this exact and the same on every node:
//! - stubs never overlap, so a key's stub is the greatest stub key at or below it;
//! - runs are maximal: two neighbours whose keys and versions both continue are one run. The
//!   records are then a function of the flushed key → version map alone, whether settling
//!   took the rows in one op or in many.
//!
//! Per-row stubs cost a bulk load a RocksDB record per row in the WAL, a memtable, and every
//! compaction of the `cold` column family after it; a run costs one per statement.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::*;

/// Primary-key bytes of a scope whose stubs may be runs.
pub const RUN_PK_BYTES: usize = 8;

/// One stub record: the version of its first key and how many keys it holds (1: a single).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stub {
    pub seq: u64,
    pub count: u64,
}

impl Stub {
    pub fn decode(b: &[u8]) -> Result<Stub> {
        let word = |r: std::ops::Range<usize>| -> u64 { u64::from_be_bytes(b[r].try_into().expect("eight bytes")) };
        match b.len() {
            8 => Ok(Stub { seq: word(0..8), count: 1 }),
            16 => {
                let stub = Stub { seq: word(0..8), count: word(8..16) };
                if stub.count < 2 || stub.seq.checked_add(stub.count - 1).is_none() {
                    return Err(Error::Corrupt(format!("bad run stub {stub:?}")));
                }
                Ok(stub)
            }
            n => Err(Error::Corrupt(format!("bad stub of {n} bytes"))),
        }
    }

    pub fn encode(self) -> Vec<u8> {
        assert!(self.count >= 1, "a stub holds at least one key");
        let mut out = self.seq.to_be_bytes().to_vec();
        if self.count > 1 {
            out.extend_from_slice(&self.count.to_be_bytes());
        }
        out
    }

    /// The version of `pk` that this stub, stored under `start`, holds; `None` when it does
    /// not cover `pk`.
    pub fn seq_of(self, start: &[u8], pk: &[u8]) -> Option<u64> {
        if start == pk {
            return Some(self.seq);
        }
        if self.count < 2 {
            return None;
        }
        let offset = pk_int(pk)?.checked_sub(pk_int(start)?)?;
        (offset < self.count).then(|| self.seq + offset)
    }
}

/// A fixed-width primary key as the integer runs count with.
pub(super) fn pk_int(pk: &[u8]) -> Option<u64> {
    <[u8; RUN_PK_BYTES]>::try_from(pk).ok().map(u64::from_be_bytes)
}

/// Whether a table's primary keys all encode to [`RUN_PK_BYTES`] (`crate::keys::encode_pk`),
/// so its scopes may hold runs.
pub fn pk_fixed_width(def: &TableDef) -> bool {
    use kalamdb_log::DataType as D;
    matches!(
        def.columns[def.pk_index()].data_type,
        D::SmallInt | D::Int | D::BigInt | D::Float | D::Double | D::Timestamp | D::Date
    )
}

/// The newest flushed version of a key, if any (the caller checks `rows` first: a hot row is
/// newer).
pub fn stub_seq(db: &DB, row_key: &[u8], snapshot: Option<&rocksdb::Snapshot<'_>>) -> Result<Option<u64>> {
    let cold = cf(db, CF_COLD)?;
    let key = stub_key_of(row_key)?;
    let options = || {
        let mut opts = ReadOptions::default();
        if let Some(s) = snapshot {
            opts.set_snapshot(s);
        }
        opts
    };
    let (_, pk) = split_scope(row_key).ok_or_else(|| Error::Corrupt("bad row key".into()))?;
    if pk.len() != RUN_PK_BYTES {
        // No runs in this scope: the key's own stub or none.
        return match db.get_pinned_cf_opt(cold, &key, &options())? {
            Some(b) => Ok(Some(Stub::decode(&b)?.seq)),
            None => Ok(None),
        };
    }
    // Stubs never overlap, so the greatest stub at or below the key is its own or the run
    // that covers it, if any: one backward seek, bounded to the scope's stubs, answers both.
    // A point read first missed for every key a run holds (a bulk load's), and then paid
    // for the seek anyway.
    let prefix = &key[..key.len() - pk.len()];
    let mut opts = options();
    opts.set_iterate_lower_bound(prefix.to_vec());
    let mut it = db.raw_iterator_cf_opt(cold, opts);
    it.seek_for_prev(&key);
    match (it.key(), it.value()) {
        (Some(k), Some(v)) if k.starts_with(prefix) => Ok(Stub::decode(v)?.seq_of(&k[prefix.len()..], pk)),
        _ => {
            it.status()?;
            Ok(None)
        }
    }
}

/// Stubs [`RunReader::versions`] walks over before it seeks instead.
pub const WALK_STEPS_MAX: usize = 16;

/// Finds the runs that cover keys with no stub of their own: one iterator for many lookups.
pub struct RunReader<'a> {
    it: rocksdb::DBRawIteratorWithThreadMode<'a, DB>,
}

impl<'a> RunReader<'a> {
    pub fn new(db: &'a DB, opts: ReadOptions) -> Result<RunReader<'a>> {
        Ok(RunReader { it: db.raw_iterator_cf_opt(cf(db, CF_COLD)?, opts) })
    }

    /// The flushed versions of many stub keys of one scope (`stub_prefix`), given in key
    /// order: what their own stubs or the runs covering them hold. One seek, then a walk that
    /// seeks again only past [`WALK_STEPS_MAX`] stubs: an insert of a thousand new keys
    /// between two stubs costs a seek, not a thousand.
    pub fn versions(&mut self, stub_prefix: &[u8], keys: &[&[u8]]) -> Result<Vec<Option<u64>>> {
        let mut out = Vec::with_capacity(keys.len());
        // The greatest stub at or below the last key looked at, and the iterator on the one
        // after it (`next`).
        let mut cur: Option<(Vec<u8>, Stub)> = None;
        let mut next: Option<Vec<u8>> = None;
        let mut positioned = false;
        for &key in keys {
            assert!(key.starts_with(stub_prefix), "a key outside the scope looked up");
            let mut steps = 0;
            while positioned && next.as_deref().is_some_and(|n| n <= key) {
                if steps == WALK_STEPS_MAX {
                    positioned = false;
                    break;
                }
                let value = self.it.value().ok_or_else(|| Error::Corrupt("stub iterator lost".into()))?;
                cur = Some((next.take().expect("checked above"), Stub::decode(value)?));
                self.it.next();
                next = self.key_in(stub_prefix)?;
                steps += 1;
            }
            if !positioned {
                self.it.seek_for_prev(key);
                match (self.key_in(stub_prefix)?, self.it.value()) {
                    (Some(k), Some(v)) => {
                        cur = Some((k, Stub::decode(v)?));
                        self.it.next();
                    }
                    _ => {
                        cur = None;
                        self.it.seek(key);
                    }
                }
                next = self.key_in(stub_prefix)?;
                positioned = true;
            }
            out.push(
                cur.as_ref().and_then(|(k, stub)| stub.seq_of(&k[stub_prefix.len()..], &key[stub_prefix.len()..])),
            );
        }
        Ok(out)
    }

    /// The iterator's key, if it is one of the scope's stubs.
    fn key_in(&self, stub_prefix: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.it.key() {
            Some(k) if k.starts_with(stub_prefix) => Ok(Some(k.to_vec())),
            Some(_) => Ok(None),
            None => {
                self.it.status()?;
                Ok(None)
            }
        }
    }
}

/// A stretch of consecutive keys at consecutive versions: `start ..= start + count - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seg {
    start: u64,
    seq: u64,
    count: u64,
}

impl Seg {
    fn end(self) -> u64 {
        self.start + (self.count - 1)
    }

    fn stub(self) -> Stub {
        Stub { seq: self.seq, count: self.count }
    }

    /// The part of `self` from key `from` on (`from` within it).
    fn from(self, from: u64) -> Seg {
        let skip = from - self.start;
        Seg { start: from, seq: self.seq + skip, count: self.count - skip }
    }

    /// Whether `next` continues `self`, keys and versions both.
    fn continued_by(self, next: Seg) -> bool {
        self.end().checked_add(1) == Some(next.start) && self.seq.checked_add(self.count) == Some(next.seq)
    }
}

/// Writes stubs into one batch, seeing what it staged before (reads of RocksDB alone would
/// miss it: the batch is committed at the end of the apply call). Outside runs scopes, a
/// write is one put or delete, as stubs always were.
pub struct StubWriter<'a> {
    db: &'a DB,
    staged: BTreeMap<Vec<u8>, Option<Stub>>,
    /// Stub key ranges `[low, high)` deleted in the batch: committed stubs inside are gone
    /// unless `staged` holds them again.
    cleared: Vec<(Vec<u8>, Vec<u8>)>,
    it: Option<rocksdb::DBRawIteratorWithThreadMode<'a, DB>>,
}

impl<'a> StubWriter<'a> {
    pub fn new(db: &'a DB) -> StubWriter<'a> {
        StubWriter { db, staged: BTreeMap::new(), cleared: Vec::new(), it: None }
    }

    /// Give the `count` keys from `pk` on of the scope `sp` the versions from `seq` on (`None`:
    /// no flushed version). `runs` is the scope's [`ScopeHead::runs`]; without it `count` is 1.
    pub fn assign(
        &mut self,
        batch: &mut WriteBatch,
        (sp, runs): (&[u8], bool),
        pk: &[u8],
        count: u64,
        seq: Option<u64>,
    ) -> Result<()> {
        let cold = cf(self.db, CF_COLD)?;
        let Some(a) = pk_int(pk).filter(|_| runs) else {
            assert!(count == 1, "a run in a scope without runs");
            let key = cold_key(sp, KIND_STUB, pk);
            match seq {
                Some(seq) => batch.put_cf(cold, key, seq.to_be_bytes()),
                None => batch.delete_cf(cold, key),
            }
            return Ok(());
        };
        assert!(count >= 1, "an empty stub assignment");
        let b = a.checked_add(count - 1).expect("a run past the last key");
        let prefix = cold_key(sp, KIND_STUB, &[]);
        let key_of = |x: u64| cold_key(sp, KIND_STUB, &x.to_be_bytes());
        // The stub before `a`: kept whole, cut at `a`, or (when it reaches past `b`) also
        // continued after `b`.
        let mut left = match a.checked_sub(1) {
            Some(below) => self.prev(&prefix, &key_of(below))?,
            None => None,
        };
        let mut left_changed = false;
        let mut right: Option<Seg> = None;
        if let Some(l) = left.filter(|l| l.end() >= a) {
            if l.end() > b {
                right = Some(l.from(b + 1));
            }
            left = Some(Seg { count: a - l.start, ..l });
            left_changed = true;
        }
        // Stubs starting within `a ..= b` go; the last may reach past `b`.
        if let Some(m) = self.prev(&prefix, &key_of(b))?.filter(|m| m.start >= a) {
            if m.end() > b {
                right = Some(m.from(b + 1));
            }
            if a == b {
                self.delete(batch, cold, key_of(a));
            } else {
                let high = b.checked_add(1).map_or_else(|| prefix_end(&prefix), key_of);
                self.delete_range(batch, cold, key_of(a), high);
            }
        }
        // Whatever stub starts right after `b` (when nothing cut above reaches there).
        let mut right_stored = false;
        if right.is_none()
            && let Some(next) = b.checked_add(1)
            && let Some(stub) = self.exact(&key_of(next))?
        {
            right = Some(Seg { start: next, seq: stub.seq, count: stub.count });
            right_stored = true;
        }
        let mut mid = seq.map(|seq| Seg { start: a, seq, count });
        if let Some(m) = &mut mid
            && let Some(r) = right.filter(|r| m.continued_by(*r))
        {
            m.count += r.count;
            if right_stored {
                self.delete(batch, cold, key_of(r.start));
            }
            right = None;
        } else if right_stored {
            right = None;
        }
        if let (Some(l), Some(m)) = (&mut left, mid)
            && l.continued_by(m)
        {
            l.count += m.count;
            left_changed = true;
            mid = None;
        }
        if let Some(l) = left.filter(|_| left_changed) {
            self.put(batch, cold, key_of(l.start), l.stub());
        }
        if let Some(m) = mid {
            self.put(batch, cold, key_of(m.start), m.stub());
        }
        if let Some(r) = right {
            self.put(batch, cold, key_of(r.start), r.stub());
        }
        Ok(())
    }

    /// The stub with the greatest key at or below `key` among the scope's (`prefix`), as the
    /// batch leaves them; `None` when there is none or it is not fixed-width.
    fn prev(&mut self, prefix: &[u8], key: &[u8]) -> Result<Option<Seg>> {
        let staged = self
            .staged
            .range::<[u8], _>((Bound::Included(prefix), Bound::Included(key)))
            .rev()
            .find_map(|(k, v)| v.map(|s| (k.clone(), s)));
        let committed = self.committed_prev(prefix, key)?;
        let best = match (staged, committed) {
            (Some(s), Some(c)) => Some(if s.0 > c.0 { s } else { c }),
            (s, c) => s.or(c),
        };
        let Some((k, stub)) = best else { return Ok(None) };
        let Some(start) = pk_int(&k[prefix.len()..]) else { return Ok(None) };
        if start.checked_add(stub.count - 1).is_none() {
            return Err(Error::Corrupt(format!("run stub {stub:?} past the last key")));
        }
        Ok(Some(Seg { start, seq: stub.seq, count: stub.count }))
    }

    /// As [`Self::prev`], among committed stubs the batch has not replaced or deleted.
    fn committed_prev(&mut self, prefix: &[u8], key: &[u8]) -> Result<Option<(Vec<u8>, Stub)>> {
        let (db, cold) = (self.db, cf(self.db, CF_COLD)?);
        let it = self.it.get_or_insert_with(|| db.raw_iterator_cf(cold));
        it.seek_for_prev(key);
        loop {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                it.status()?;
                return Ok(None);
            };
            if !k.starts_with(prefix) {
                return Ok(None);
            }
            if self.staged.contains_key(k) {
                it.prev();
                continue;
            }
            if let Some((low, _)) = self.cleared.iter().find(|(low, high)| k >= low.as_slice() && k < high.as_slice()) {
                let low = low.clone();
                it.seek_for_prev(&low);
                if it.key() == Some(low.as_slice()) {
                    it.prev();
                }
                continue;
            }
            return Ok(Some((k.to_vec(), Stub::decode(v)?)));
        }
    }

    /// The stub stored under exactly `key`, as the batch leaves it.
    fn exact(&self, key: &[u8]) -> Result<Option<Stub>> {
        if let Some(staged) = self.staged.get(key) {
            return Ok(*staged);
        }
        if self.cleared.iter().any(|(low, high)| key >= low.as_slice() && key < high.as_slice()) {
            return Ok(None);
        }
        self.db.get_pinned_cf(cf(self.db, CF_COLD)?, key)?.map(|b| Stub::decode(&b)).transpose()
    }

    fn put(&mut self, batch: &mut WriteBatch, cold: &rocksdb::ColumnFamily, key: Vec<u8>, stub: Stub) {
        batch.put_cf(cold, &key, stub.encode());
        self.staged.insert(key, Some(stub));
    }

    fn delete(&mut self, batch: &mut WriteBatch, cold: &rocksdb::ColumnFamily, key: Vec<u8>) {
        batch.delete_cf(cold, &key);
        self.staged.insert(key, None);
    }

    fn delete_range(&mut self, batch: &mut WriteBatch, cold: &rocksdb::ColumnFamily, low: Vec<u8>, high: Vec<u8>) {
        batch.delete_range_cf(cold, &low, &high);
        for (_, v) in
            self.staged.range_mut::<[u8], _>((Bound::Included(low.as_slice()), Bound::Excluded(high.as_slice())))
        {
            *v = None;
        }
        self.cleared.push((low, high));
    }
}

/// Settles the flushed rows of one scope, given in key order: their stubs are written as runs
/// where keys and versions continue (in a runs scope), tombstones drop theirs.
pub struct RunSettler<'a> {
    writer: StubWriter<'a>,
    sp: Vec<u8>,
    runs: bool,
    /// The run being gathered: first key, its version, keys so far.
    pending: Option<(u64, u64, u64)>,
}

impl<'a> RunSettler<'a> {
    pub fn new(db: &'a DB, sp: &[u8], runs: bool) -> RunSettler<'a> {
        RunSettler { writer: StubWriter::new(db), sp: sp.to_vec(), runs, pending: None }
    }

    /// The next flushed row (primary-key bytes, version, tombstone) of the scope.
    pub fn row(&mut self, batch: &mut WriteBatch, pk: &[u8], seq: u64, deleted: bool) -> Result<()> {
        let key = pk_int(pk).filter(|_| self.runs && !deleted);
        if let (Some(k), Some((start, first, count))) = (key, &mut self.pending)
            && start.checked_add(*count) == Some(k)
            && first.checked_add(*count) == Some(seq)
        {
            *count += 1;
            return Ok(());
        }
        self.finish(batch)?;
        match key {
            Some(k) => self.pending = Some((k, seq, 1)),
            None => self.writer.assign(batch, (&self.sp, self.runs), pk, 1, (!deleted).then_some(seq))?,
        }
        Ok(())
    }

    /// `count` flushed rows from `pk` on at versions from `seq` on, as [`RunSettler::row`]
    /// takes them one by one: a run of them when `count > 1`, which only a runs scope has.
    pub fn rows(&mut self, batch: &mut WriteBatch, pk: &[u8], seq: u64, count: u64, deleted: bool) -> Result<()> {
        if count == 1 {
            return self.row(batch, pk, seq, deleted);
        }
        let Some(k) = pk_int(pk).filter(|_| self.runs && !deleted) else {
            panic!("a run of {count} rows in a scope without runs, or of tombstones");
        };
        assert!(k.checked_add(count - 1).is_some() && seq.checked_add(count - 1).is_some(), "a run past the last key");
        if let Some((start, first, n)) = &mut self.pending
            && start.checked_add(*n) == Some(k)
            && first.checked_add(*n) == Some(seq)
        {
            *n += count;
            return Ok(());
        }
        self.finish(batch)?;
        self.pending = Some((k, seq, count));
        Ok(())
    }

    /// Delete every stub of the scope first (a rebuild writes them all again).
    pub fn clear(&mut self, batch: &mut WriteBatch) -> Result<()> {
        assert!(self.pending.is_none(), "a scope cleared while a run is being gathered");
        let cold = cf(self.writer.db, CF_COLD)?;
        let prefix = cold_key(&self.sp, KIND_STUB, &[]);
        let high = prefix_end(&prefix);
        self.writer.delete_range(batch, cold, prefix, high);
        Ok(())
    }

    /// Write the run being gathered, if any (call once the rows end).
    pub fn finish(&mut self, batch: &mut WriteBatch) -> Result<()> {
        if let Some((start, seq, count)) = self.pending.take() {
            self.writer.assign(batch, (&self.sp, self.runs), &start.to_be_bytes(), count, Some(seq))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::keys::table_scope_prefix;

    /// One assignment: `count` keys from `start` get versions from `base + start` on (so two
    /// assignments with the same base continue each other), or lose their stubs.
    #[derive(Debug, Clone)]
    struct Op {
        start: u64,
        count: u64,
        base: Option<u64>,
        commit: bool,
    }

    fn op() -> impl Strategy<Value = Op> {
        (0u64..40, 1u64..9, prop_oneof![Just(None), (1u64..4).prop_map(|b| Some(b * 1000))], any::<bool>())
            .prop_map(|(start, count, base, commit)| Op { start, count, base, commit })
    }

    /// The stub records a key → version map must be stored as: its maximal runs.
    fn canonical(model: &BTreeMap<u64, u64>) -> Vec<(u64, Stub)> {
        let mut out: Vec<(u64, Stub)> = Vec::new();
        for (&k, &seq) in model {
            if let Some((start, stub)) = out.last_mut()
                && *start + stub.count == k
                && stub.seq + stub.count == seq
            {
                stub.count += 1;
                continue;
            }
            out.push((k, Stub { seq, count: 1 }));
        }
        out
    }

    fn stored(db: &DB, sp: &[u8]) -> Vec<(u64, Stub)> {
        let prefix = cold_key(sp, KIND_STUB, &[]);
        iter_prefix(db, cf(db, CF_COLD).unwrap(), &prefix)
            .map(|item| {
                let (k, v) = item.unwrap();
                (pk_int(&k[prefix.len()..]).unwrap(), Stub::decode(&v).unwrap())
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any sequence of assignments, committed in any grouping, leaves exactly the maximal
        /// runs of the resulting map, and every key reads back its version.
        #[test]
        fn runs_stay_exact_and_maximal(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let log_db = kalamdb_log::LogDb::open(dir.path(), &crate::PROJECTION_CFS).unwrap();
            let db = log_db.db();
            let sp = table_scope_prefix(GroupId::SharedShard(0), 9, "");
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            let mut batch = WriteBatch::default();
            let mut writer = StubWriter::new(db);
            for op in &ops {
                writer.assign(&mut batch, (&sp, true), &op.start.to_be_bytes(), op.count, op.base.map(|b| b + op.start)).unwrap();
                for k in op.start..op.start + op.count {
                    match op.base {
                        Some(b) => model.insert(k, b + k),
                        None => model.remove(&k),
                    };
                }
                if op.commit {
                    db.write(std::mem::take(&mut batch)).unwrap();
                    writer = StubWriter::new(db);
                    prop_assert_eq!(stored(db, &sp), canonical(&model));
                }
            }
            db.write(batch).unwrap();
            prop_assert_eq!(stored(db, &sp), canonical(&model));
            for k in 0u64..56 {
                let row_key = [sp.as_slice(), &k.to_be_bytes()].concat();
                prop_assert_eq!(stub_seq(db, &row_key, None).unwrap(), model.get(&k).copied(), "key {}", k);
            }
            // Many keys at once, walking (every key, past the walk's bound) or seeking (a few).
            let prefix = cold_key(&sp, KIND_STUB, &[]);
            for step in [1u64, 7] {
                let ks: Vec<u64> = (0u64..56).step_by(step as usize).collect();
                let stub_keys: Vec<Vec<u8>> = ks.iter().map(|k| cold_key(&sp, KIND_STUB, &k.to_be_bytes())).collect();
                let refs: Vec<&[u8]> = stub_keys.iter().map(Vec::as_slice).collect();
                let got = RunReader::new(db, ReadOptions::default()).unwrap().versions(&prefix, &refs).unwrap();
                let want: Vec<Option<u64>> = ks.iter().map(|k| model.get(k).copied()).collect();
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn settling_in_pieces_writes_what_settling_at_once_does() {
        let dir = tempfile::tempdir().unwrap();
        let log_db = kalamdb_log::LogDb::open(dir.path(), &crate::PROJECTION_CFS).unwrap();
        let db = log_db.db();
        let (one, many) =
            (table_scope_prefix(GroupId::SharedShard(0), 1, ""), table_scope_prefix(GroupId::SharedShard(0), 2, ""));
        // Two statements' rows (versions continue within each), a tombstone, a lone key.
        let rows: Vec<(u64, u64, bool)> = (10..30)
            .map(|k| (k, 5_000 + k, false))
            .chain((30..50).map(|k| (k, 9_000 + k, false)))
            .chain([(50, 1, true), (60, 7, false)])
            .collect();
        let mut batch = WriteBatch::default();
        let mut settler = RunSettler::new(db, &one, true);
        for &(k, seq, deleted) in &rows {
            settler.row(&mut batch, &k.to_be_bytes(), seq, deleted).unwrap();
        }
        settler.finish(&mut batch).unwrap();
        db.write(batch).unwrap();
        for piece in rows.chunks(7) {
            let mut batch = WriteBatch::default();
            let mut settler = RunSettler::new(db, &many, true);
            for &(k, seq, deleted) in piece {
                settler.row(&mut batch, &k.to_be_bytes(), seq, deleted).unwrap();
            }
            settler.finish(&mut batch).unwrap();
            db.write(batch).unwrap();
        }
        let expected = vec![
            (10, Stub { seq: 5_010, count: 20 }),
            (30, Stub { seq: 9_030, count: 20 }),
            (60, Stub { seq: 7, count: 1 }),
        ];
        assert_eq!(stored(db, &one), expected);
        assert_eq!(stored(db, &many), expected);
    }

    #[test]
    fn a_scope_without_runs_gets_one_stub_a_row() {
        let dir = tempfile::tempdir().unwrap();
        let log_db = kalamdb_log::LogDb::open(dir.path(), &crate::PROJECTION_CFS).unwrap();
        let db = log_db.db();
        let sp = table_scope_prefix(GroupId::SharedShard(0), 1, "");
        let mut batch = WriteBatch::default();
        let mut settler = RunSettler::new(db, &sp, false);
        for k in 0u64..4 {
            settler.row(&mut batch, &k.to_be_bytes(), 100 + k, false).unwrap();
        }
        settler.finish(&mut batch).unwrap();
        db.write(batch).unwrap();
        assert_eq!(stored(db, &sp), (0u64..4).map(|k| (k, Stub { seq: 100 + k, count: 1 })).collect::<Vec<_>>());
    }

    #[test]
    fn bad_stub_values_are_refused() {
        assert!(Stub::decode(&[0; 7]).is_err());
        assert!(Stub::decode(&[[0u8; 8], 1u64.to_be_bytes()].concat()).is_err());
        assert!(Stub::decode(&[u64::MAX.to_be_bytes(), 2u64.to_be_bytes()].concat()).is_err());
        let run = Stub { seq: 40, count: 3 };
        assert_eq!(Stub::decode(&run.encode()).unwrap(), run);
        assert_eq!(run.seq_of(&7u64.to_be_bytes(), &9u64.to_be_bytes()), Some(42));
        assert_eq!(run.seq_of(&7u64.to_be_bytes(), &10u64.to_be_bytes()), None);
        assert_eq!(run.seq_of(&7u64.to_be_bytes(), &6u64.to_be_bytes()), None);
    }
}
