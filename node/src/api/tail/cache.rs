//! The change records all subscribers of this node share: each entry is read from RocksDB and
//! decoded once, its frames rendered once per format, and for unfiltered table subscribers
//! the frames of a whole entry are joined once into a block every subscriber sends as it is.

use std::sync::Arc;

use bytes::Bytes;
use kalamdb_log::GroupId;
use kalamdb_projections::changes::{self, ChangeEntry};

use super::guard;

/// Decoded change records kept for all subscribers of this node.
pub const RECORD_CACHE_ENTRIES_MAX: usize = 8192;
/// Bytes (estimated: values and rendered frames) the record cache may hold.
pub const RECORD_CACHE_BYTES_MAX: usize = 64 << 20;

/// Subscribers of this node (for the `subscribers_max` limit and the gauge), and the records
/// they share: a hundred subscribers of one table decode and render each entry once.
#[derive(Debug, Default)]
pub struct TailState {
    pub(crate) slots: guard::Slots,
    cache: std::sync::Mutex<RecordCache>,
}

/// One entry as the subscribers see it: its record (`None`: the entry has none, e.g. a blank
/// entry) and, per format, the frame of each change once a single-group subscriber rendered it
/// (the frame of a single-group subscription does not depend on the subscriber).
#[derive(Debug)]
pub(crate) struct CachedEntry {
    pub(crate) record: Option<ChangeEntry>,
    /// What this entry counts against [`RECORD_CACHE_BYTES_MAX`].
    cost_bytes: usize,
    pub(crate) frames: [Vec<std::sync::OnceLock<Bytes>>; 2],
    /// Per format, the joined frames of the entry's changes one table scope sees (see
    /// [`CachedEntry::block`]); an entry rarely touches more than one.
    blocks: [std::sync::Mutex<Vec<Arc<Block>>>; 2],
}

#[derive(Debug, Default)]
struct RecordCache {
    map: std::collections::HashMap<(GroupId, u64), Arc<CachedEntry>>,
    order: std::collections::VecDeque<(GroupId, u64)>,
    bytes: usize,
}

impl RecordCache {
    fn insert(&mut self, key: (GroupId, u64), record: Option<ChangeEntry>) -> Arc<CachedEntry> {
        let n = record.as_ref().map_or(0, |r| r.changes.len());
        let frames = [
            (0..n).map(|_| std::sync::OnceLock::new()).collect(),
            (0..n).map(|_| std::sync::OnceLock::new()).collect(),
        ];
        let cost_bytes = guard::entry_cost_bytes(record.as_ref());
        let e = Arc::new(CachedEntry { record, cost_bytes, frames, blocks: Default::default() });
        self.bytes += cost_bytes;
        match self.map.insert(key, e.clone()) {
            None => self.order.push_back(key),
            Some(replaced) => self.bytes -= replaced.cost_bytes,
        }
        // Oldest first, by count and by bytes; the entry just added stays (its subscriber
        // holds it anyway).
        while self.order.len() > RECORD_CACHE_ENTRIES_MAX
            || (self.bytes > RECORD_CACHE_BYTES_MAX && self.order.len() > 1)
        {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(gone) = self.map.remove(&old) {
                self.bytes -= gone.cost_bytes;
            }
        }
        e
    }
}

impl TailState {
    /// Entries `from..=to` of a group (at most `entries_max`), from the cache where present,
    /// else from RocksDB (then cached). Entries without a record come back with `None`.
    pub(crate) fn entries(
        &self,
        rows: &kalamdb_projections::RowReader,
        group: GroupId,
        from: u64,
        to: u64,
        entries_max: usize,
    ) -> kalamdb_projections::error::Result<Vec<(u64, Arc<CachedEntry>)>> {
        let mut out = Vec::new();
        let mut index = from;
        while index <= to && out.len() < entries_max {
            let hit = self.cache.lock().unwrap_or_else(|p| p.into_inner()).map.get(&(group, index)).cloned();
            if let Some(e) = hit {
                out.push((index, e));
                index += 1;
                continue;
            }
            let want = entries_max - out.len();
            let records = changes::read_range(rows.db(), group, index, to, want)?;
            let full = records.len() == want;
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            for (i, record) in records {
                // Indices skipped by the range read have no record. They count against
                // `entries_max` too: the caller takes a shorter answer for "up to `to`", so
                // returning more than asked would make it skip to `to` past entries never
                // returned (seen: a cold cache and blank entries from elections lost events).
                while index < i && out.len() < entries_max {
                    out.push((index, cache.insert((group, index), None)));
                    index += 1;
                }
                if out.len() >= entries_max {
                    break;
                }
                out.push((i, cache.insert((group, i), Some(record))));
                index = i + 1;
            }
            if !full {
                while index <= to && out.len() < entries_max {
                    out.push((index, cache.insert((group, index), None)));
                    index += 1;
                }
            }
        }
        Ok(out)
    }
}

/// The frames of an entry's changes that an unfiltered subscriber of one table scope sees,
/// joined: one cheap clone per subscriber instead of a check and a copy per change.
#[derive(Debug)]
pub(crate) struct Block {
    table_id: u64,
    scope: String,
    pub(crate) bytes: Bytes,
    pub(crate) events: u64,
    /// The change offset of the block's last event.
    pub(crate) last_offset: u32,
}

impl CachedEntry {
    /// The block of changes of `table_id` visible in `scope` in format `fmt` (0: SSE, 1:
    /// NDJSON), rendered by `render` (the offset of each change `visible` keeps, then the
    /// change) the first time a subscriber asks.
    pub(crate) fn block(
        &self,
        fmt: usize,
        table_id: u64,
        scope: &str,
        visible: impl Fn(&changes::Change) -> bool,
        render: impl Fn(u32, &changes::Change) -> Bytes,
    ) -> Arc<Block> {
        let mut blocks = self.blocks[fmt].lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = blocks.iter().find(|b| b.table_id == table_id && b.scope == scope) {
            return b.clone();
        }
        let mut bytes = bytes::BytesMut::new();
        let (mut events, mut last_offset) = (0, 0);
        for (k, c) in self.record.iter().flat_map(|r| r.changes.iter()).enumerate() {
            if visible(c) {
                bytes.extend_from_slice(&render(k as u32, c));
                events += 1;
                last_offset = k as u32;
            }
        }
        let block = Arc::new(Block { table_id, scope: scope.to_string(), bytes: bytes.freeze(), events, last_offset });
        blocks.push(block.clone());
        block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cold cache and entries without a record (blank entries of elections) between the
    /// records: the answer never exceeds what was asked, and asking again from where it ended
    /// walks every entry (once it returned more, and the subscriber skipped the rest).
    #[test]
    fn entries_with_gaps_never_exceed_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let log_db = kalamdb_log::LogDb::open(dir.path(), &kalamdb_projections::PROJECTION_CFS).unwrap();
        let files = Arc::new(kalamdb_projections::cold::FileStore::folder(dir.path().join("files")));
        let rows = kalamdb_projections::RowReader::new(log_db.clone(), files);
        let g = GroupId::SharedShard(0);
        let change = || changes::Change::ddl(7, "ns", String::new());
        // Records at every third index from 1 to 300.
        let mut batch = rocksdb::WriteBatch::default();
        let with_record: Vec<u64> = (1..=300).filter(|i| i % 3 == 1).collect();
        for i in &with_record {
            let e = changes::ChangeEntry { committed_at_micros: 0, changes: vec![change()] };
            changes::stage(rows.db(), &mut batch, g, *i, e).unwrap();
        }
        rows.db().write(batch).unwrap();
        let state = TailState::default();
        let (mut from, mut seen) = (0, Vec::new());
        loop {
            let got = state.entries(&rows, g, from, 300, 16).unwrap();
            assert!(got.len() <= 16, "asked for 16, got {}", got.len());
            for (k, (i, _)) in got.iter().enumerate() {
                assert_eq!(*i, from + k as u64, "entries are contiguous from `from`");
            }
            seen.extend(got.iter().filter(|(_, e)| e.record.is_some()).map(|(i, _)| *i));
            if got.len() < 16 {
                assert_eq!(got.last().map(|(i, _)| *i), Some(300), "a short answer reaches `to`");
                break;
            }
            from = got.last().unwrap().0 + 1;
        }
        assert_eq!(seen, with_record);
    }
}
