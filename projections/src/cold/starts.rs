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

/// Per (group, table) the node has seen flushed whole: `None` while no row was written since,
/// else the smallest row key written since (`group | table | scope | pk`).
#[derive(Debug, Default)]
pub struct FlushStarts {
    known: Mutex<HashMap<(u32, u64), Option<Vec<u8>>>>,
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

impl FlushStarts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u32, u64), Option<Vec<u8>>>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Row keys of the table were staged (an apply call's smallest one): a known table's start
    /// moves down to it. Called before any flush that follows them in the log runs.
    pub fn wrote(&self, group: GroupId, table_id: u64, smallest_key: &[u8]) {
        if let Some(start) = self.lock().get_mut(&(group.to_u32(), table_id)) {
            match start {
                Some(k) if k.as_slice() <= smallest_key => {}
                _ => *start = Some(smallest_key.to_vec()),
            }
        }
    }

    /// A flush of the whole table was applied (its batch commits next; if that fails, `apply`
    /// forgets the group): every hot row left is covered by it.
    pub fn flushed(&self, group: GroupId, table_id: u64) {
        self.lock().insert((group.to_u32(), table_id), None);
    }

    /// The table's hot rows were rewritten other than by row ops: read it whole next time.
    pub fn forget_table(&self, group: GroupId, table_id: u64) {
        self.lock().remove(&(group.to_u32(), table_id));
    }

    /// The group's state was replaced (an install): read its tables whole next time.
    pub fn forget_group(&self, group: GroupId) {
        let g = group.to_u32();
        self.lock().retain(|(kg, _), _| *kg != g);
    }

    pub fn start(&self, group: GroupId, table_id: u64) -> FlushStart {
        match self.lock().get(&(group.to_u32(), table_id)) {
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
}
