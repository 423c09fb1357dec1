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

/// Row keys a preparation's watch keeps (see `prepared`); past it only the smallest is kept,
/// and the preparation is used only if every key written since sorts after its rows.
pub const WATCHED_KEYS_MAX: usize = 1 << 17;

/// Per (group, table) the node has seen flushed whole: `None` while no row was written since,
/// else the smallest row key written since (`group | table | scope | pk`). Beside it, per table
/// being prepared for a flush (`prepared`): the row keys written since that entry, which tell
/// whether the preparation still holds the flush's rows.
#[derive(Debug, Default)]
pub struct FlushStarts {
    known: Mutex<Known>,
}

#[derive(Debug, Default)]
struct Known {
    starts: HashMap<TableKey, Option<Vec<u8>>>,
    watches: HashMap<TableKey, Watch>,
}

/// The row keys written to a table since its preparation at log index `upto`.
#[derive(Debug)]
struct Watch {
    upto: u64,
    written: Written,
}

/// Row keys written to a table since a log index, as a watch saw them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// The smallest.
    pub smallest: Option<Vec<u8>>,
    /// All of them, in the order written (repeats kept); `None` past [`WATCHED_KEYS_MAX`].
    pub keys: Option<Vec<Vec<u8>>>,
}

impl Written {
    fn add(&mut self, key: &[u8]) {
        lower_to(&mut self.smallest, key);
        if let Some(keys) = &mut self.keys {
            if keys.len() == WATCHED_KEYS_MAX {
                self.keys = None;
            } else {
                keys.push(key.to_vec());
            }
        }
    }
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

    /// Row keys of the table were staged (an apply call's): a known table's start moves down to
    /// the smallest, and a watched table's watch keeps them all. Called before any flush that
    /// follows them in the log runs.
    pub fn wrote<'k>(&self, group: GroupId, table_id: u64, keys: impl Iterator<Item = &'k [u8]>) {
        let key = (group.to_u32(), table_id);
        let mut known = self.lock();
        let Known { starts, watches } = &mut *known;
        let (mut start, mut watch) = (starts.get_mut(&key), watches.get_mut(&key));
        if start.is_none() && watch.is_none() {
            return;
        }
        for k in keys {
            if let Some(start) = start.as_deref_mut() {
                lower_to(start, k);
            }
            if let Some(w) = watch.as_deref_mut() {
                w.written.add(k);
            }
        }
    }

    /// A flush of the whole table was applied (its batch commits next; if that fails, `apply`
    /// forgets the group): every hot row left is covered by it.
    pub fn flushed(&self, group: GroupId, table_id: u64) {
        let key = (group.to_u32(), table_id);
        let mut known = self.lock();
        known.starts.insert(key, None);
        known.watches.remove(&key);
    }

    /// A whole-table flush was prepared at log index `upto`: row keys written from here on
    /// are watched.
    pub fn prepared(&self, group: GroupId, table_id: u64, upto: u64) {
        let written = Written { smallest: None, keys: Some(Vec::new()) };
        self.lock().watches.insert((group.to_u32(), table_id), Watch { upto, written });
    }

    /// The row keys written to the table since its preparation at `upto`, or `None` when this
    /// node did not watch the table since then.
    pub fn written_since(&self, group: GroupId, table_id: u64, upto: u64) -> Option<Written> {
        match self.lock().watches.get(&(group.to_u32(), table_id)) {
            Some(w) if w.upto == upto => Some(w.written.clone()),
            _ => None,
        }
    }

    /// As [`FlushStarts::written_since`], ending the watch (the flush of the prepared rows
    /// applies now), so its keys are handed over, not copied.
    pub fn take_written(&self, group: GroupId, table_id: u64, upto: u64) -> Option<Written> {
        let watch = self.lock().watches.remove(&(group.to_u32(), table_id))?;
        (watch.upto == upto).then_some(watch.written)
    }

    /// A whole-table flush of the rows written before a preparation was applied: the rows
    /// left hot are those written since, from the smallest of `since` (see
    /// [`FlushStarts::written_since`]) on.
    pub fn flushed_upto(&self, group: GroupId, table_id: u64, since: Option<&Written>) {
        let key = (group.to_u32(), table_id);
        let mut known = self.lock();
        known.watches.remove(&key);
        match since {
            Some(w) => known.starts.insert(key, w.smallest.clone()),
            None => known.starts.remove(&key),
        };
    }

    /// Rows a preparation of the table may hold were flushed: it holds them no longer.
    pub fn unwatch(&self, group: GroupId, table_id: u64) {
        self.lock().watches.remove(&(group.to_u32(), table_id));
    }

    /// The table's hot rows were rewritten other than by row ops: read it whole next time.
    pub fn forget_table(&self, group: GroupId, table_id: u64) {
        let key = (group.to_u32(), table_id);
        let mut known = self.lock();
        known.starts.remove(&key);
        known.watches.remove(&key);
    }

    /// The group's state was replaced (an install): read its tables whole next time.
    pub fn forget_group(&self, group: GroupId) {
        let g = group.to_u32();
        let mut known = self.lock();
        known.starts.retain(|(kg, _), _| *kg != g);
        known.watches.retain(|(kg, _), _| *kg != g);
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
        starts.wrote(g, 1, [b"m".as_slice()].into_iter());
        assert_eq!(starts.start(g, 1), FlushStart::First, "unknown until flushed here");
        starts.flushed(g, 1);
        assert_eq!(starts.start(g, 1), FlushStart::Nothing);
        starts.wrote(g, 1, [b"m".as_slice()].into_iter());
        starts.wrote(g, 1, [b"x".as_slice()].into_iter());
        assert_eq!(starts.start(g, 1), FlushStart::At(b"m".to_vec()));
        starts.wrote(g, 1, [b"c".as_slice()].into_iter());
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
        let wrote = |t: u64, keys: &[&[u8]]| starts.wrote(g, t, keys.iter().copied());
        assert_eq!(starts.written_since(g, 1, 10), None, "not watched");
        starts.prepared(g, 1, 10);
        assert_eq!(starts.written_since(g, 1, 10), Some(Written { smallest: None, keys: Some(vec![]) }));
        assert_eq!(starts.written_since(g, 1, 11), None, "another preparation");
        wrote(1, &[b"x", b"m"]);
        wrote(2, &[b"a"]);
        let since = starts.written_since(g, 1, 10).unwrap();
        assert_eq!(since.smallest.as_deref(), Some(b"m".as_slice()));
        assert_eq!(since.keys, Some(vec![b"x".to_vec(), b"m".to_vec()]));
        // The flush of the prepared rows takes them and leaves those written since as the
        // next start.
        assert_eq!(starts.take_written(g, 1, 11), None, "another preparation's flush");
        starts.prepared(g, 1, 10);
        wrote(1, &[b"x", b"m"]);
        assert_eq!(starts.take_written(g, 1, 10), Some(since.clone()));
        assert_eq!(starts.take_written(g, 1, 10), None, "taken");
        starts.flushed_upto(g, 1, Some(&since));
        assert_eq!(starts.start(g, 1), FlushStart::At(b"m".to_vec()));
        assert_eq!(starts.written_since(g, 1, 10), None, "done");
        // Not watched: the next flush reads the table whole.
        starts.flushed_upto(g, 1, None);
        assert_eq!(starts.start(g, 1), FlushStart::First);
        // Past the bound only the smallest key is kept.
        starts.prepared(g, 1, 20);
        let many: Vec<Vec<u8>> = (0..=WATCHED_KEYS_MAX as u32).rev().map(|i| i.to_be_bytes().to_vec()).collect();
        starts.wrote(g, 1, many.iter().map(|k| k.as_slice()));
        let since = starts.written_since(g, 1, 20).unwrap();
        assert_eq!((since.smallest, since.keys), (Some(0u32.to_be_bytes().to_vec()), None));
        starts.forget_group(g);
        assert_eq!(starts.written_since(g, 1, 20), None);
        starts.prepared(g, 1, 30);
        starts.flushed(g, 1);
        assert_eq!(starts.written_since(g, 1, 30), None, "a plain flush ends the watch");
    }
}
