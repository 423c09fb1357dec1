//! Where a table's next flush starts reading hot rows: the smallest row key this node wrote for
//! the table since its last whole-table flush. Without it every flush walked the table's hot
//! rows from the first key, over the rows earlier flushes wrote that wait to be settled and the
//! tombstones settling leaves until they are compacted away: with keys that grow (ids, times)
//! that is all the table's recent history, for each 100,000 new rows (benches/RESULTS.md,
//! session 21: the automatic flush took a fifth of the CPU of a bulk load).
//!
//! Kept in memory and learnt, never guessed: a table is known only from its first whole-table
//! flush on this node onwards, and forgotten when anything but row ops rewrites its hot rows
//! (an install, a rebuild, a purge). An unknown table is read from its first key, as before,
//! so the hint changes how much a flush reads, never which rows it writes: every node's files
//! stay the same bytes whatever each one remembers.

use std::collections::HashMap;
use std::sync::Mutex;

use kalamdb_log::GroupId;

type TableKey = (u32, u64);

/// Per (group, table) the node has seen flushed whole: `None` while no row was written since,
/// else the smallest row key written since (`group | table | scope | pk`). Beside it, per table
/// being prepared for a flush (`prepared`): the log index prepared and the smallest row key
/// written since that entry, which tells whether the preparation still holds the flush's rows.
#[derive(Debug, Default)]
pub struct FlushStarts {
    known: Mutex<Known>,
}

#[derive(Debug, Default)]
struct Known {
    starts: HashMap<TableKey, Option<Vec<u8>>>,
    since_prepare: HashMap<TableKey, (u64, Option<Vec<u8>>)>,
}

/// Where a flush of a table starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlushStart {
    /// Not known here: from the table's (or the scope's) first key.
    First,
    /// No hot row of the table was written since its last flush: nothing to read.
    Nothing,
    /// Every hot row before this key was covered by its scope's last flush.
    At(Vec<u8>),
}

fn lower_to(slot: &mut Option<Vec<u8>>, key: &[u8]) {
    match slot {
        Some(k) if k.as_slice() <= key => {}
        _ => *slot = Some(key.to_vec()),
    }
}

impl FlushStarts {
    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Row keys of the table were staged (an apply call's smallest one): a known table's start
    /// moves down to it. Called before any flush that follows them in the log runs.
    pub fn wrote(&self, group: GroupId, table_id: u64, smallest_key: &[u8]) {
        let key = (group.to_u32(), table_id);
        let mut known = self.lock();
        if let Some(start) = known.starts.get_mut(&key) {
            lower_to(start, smallest_key);
        }
        if let Some((_, since)) = known.since_prepare.get_mut(&key) {
            lower_to(since, smallest_key);
        }
    }

    /// A flush of the whole table was applied (its batch commits next; if that fails, `apply`
    /// forgets the group): every hot row left is covered by it.
    pub fn flushed(&self, group: GroupId, table_id: u64) {
        let key = (group.to_u32(), table_id);
        let mut known = self.lock();
        known.starts.insert(key, None);
        known.since_prepare.remove(&key);
    }

    /// A whole-table flush was prepared at log index `upto`: row keys written from here on
    /// are watched.
    pub fn prepared(&self, group: GroupId, table_id: u64, upto: u64) {
        self.lock().since_prepare.insert((group.to_u32(), table_id), (upto, None));
    }

    /// The smallest row key written to the table since its preparation at `upto` (`Some(None)`:
    /// none), or `None` when this node did not watch the table since then.
    pub fn written_since(&self, group: GroupId, table_id: u64, upto: u64) -> Option<Option<Vec<u8>>> {
        match self.lock().since_prepare.get(&(group.to_u32(), table_id)) {
            Some((at, since)) if *at == upto => Some(since.clone()),
            _ => None,
        }
    }

    /// A whole-table flush of the rows written before a preparation was applied: the rows
    /// left hot are those written since, from `since` (see [`FlushStarts::written_since`]) on.
    pub fn flushed_upto(&self, group: GroupId, table_id: u64, since: Option<Option<Vec<u8>>>) {
        let key = (group.to_u32(), table_id);
        let mut known = self.lock();
        known.since_prepare.remove(&key);
        match since {
            Some(start) => known.starts.insert(key, start),
            None => known.starts.remove(&key),
        };
    }

    /// Rows a preparation of the table may hold were flushed: it holds them no longer.
    pub fn unwatch(&self, group: GroupId, table_id: u64) {
        self.lock().since_prepare.remove(&(group.to_u32(), table_id));
    }

    /// The table's hot rows were rewritten other than by row ops: read it whole next time.
    pub fn forget_table(&self, group: GroupId, table_id: u64) {
        let key = (group.to_u32(), table_id);
        let mut known = self.lock();
        known.starts.remove(&key);
        known.since_prepare.remove(&key);
    }

    /// The group's state was replaced (an install): read its tables whole next time.
    pub fn forget_group(&self, group: GroupId) {
        let g = group.to_u32();
        let mut known = self.lock();
        known.starts.retain(|(kg, _), _| *kg != g);
        known.since_prepare.retain(|(kg, _), _| *kg != g);
    }

    pub fn start(&self, group: GroupId, table_id: u64) -> FlushStart {
        match self.lock().starts.get(&(group.to_u32(), table_id)) {
            None => FlushStart::First,
            Some(None) => FlushStart::Nothing,
            Some(Some(k)) => FlushStart::At(k.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_known_from_its_flush_and_only_moves_down() {
        let starts = FlushStarts::default();
        let g = GroupId::SharedShard(0);
        starts.wrote(g, 1, b"m");
        assert_eq!(starts.start(g, 1), FlushStart::First, "unknown until flushed here");
        starts.flushed(g, 1);
        assert_eq!(starts.start(g, 1), FlushStart::Nothing);
        starts.wrote(g, 1, b"m");
        starts.wrote(g, 1, b"x");
        assert_eq!(starts.start(g, 1), FlushStart::At(b"m".to_vec()));
        starts.wrote(g, 1, b"c");
        assert_eq!(starts.start(g, 1), FlushStart::At(b"c".to_vec()));
        starts.flushed(g, 2);
        starts.forget_group(g);
        assert_eq!(starts.start(g, 1), FlushStart::First);
        assert_eq!(starts.start(g, 2), FlushStart::First);
        starts.flushed(g, 1);
        starts.forget_table(g, 1);
        assert_eq!(starts.start(g, 1), FlushStart::First);
    }

    #[test]
    fn a_preparation_watches_the_keys_written_after_it() {
        let starts = FlushStarts::default();
        let g = GroupId::SharedShard(0);
        assert_eq!(starts.written_since(g, 1, 10), None, "not watched");
        starts.prepared(g, 1, 10);
        assert_eq!(starts.written_since(g, 1, 10), Some(None));
        assert_eq!(starts.written_since(g, 1, 11), None, "another preparation");
        starts.wrote(g, 1, b"m");
        starts.wrote(g, 1, b"x");
        starts.wrote(g, 2, b"a");
        assert_eq!(starts.written_since(g, 1, 10), Some(Some(b"m".to_vec())));
        // The flush of the prepared rows leaves those written since as the next start.
        starts.flushed_upto(g, 1, starts.written_since(g, 1, 10));
        assert_eq!(starts.start(g, 1), FlushStart::At(b"m".to_vec()));
        assert_eq!(starts.written_since(g, 1, 10), None, "done");
        // Not watched: the next flush reads the table whole.
        starts.flushed_upto(g, 1, None);
        assert_eq!(starts.start(g, 1), FlushStart::First);
        starts.prepared(g, 1, 20);
        starts.forget_group(g);
        assert_eq!(starts.written_since(g, 1, 20), None);
        starts.prepared(g, 1, 30);
        starts.flushed(g, 1);
        assert_eq!(starts.written_since(g, 1, 30), None, "a plain flush ends the watch");
    }
}
