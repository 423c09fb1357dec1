//! Durable Raft log storage in RocksDB: every group of a node shares one RocksDB instance,
//! keyed by a 4-byte group prefix.
//!
//! Durability: `append` writes entries to the memtable and WAL without syncing, so they are
//! readable at once, then hands openraft's flush callback to a single syncer thread. The syncer
//! drains every pending callback, fsyncs the WAL once (`FlushWAL(sync)`), and only then calls
//! the callbacks: group commit across all groups and all clients, and no callback fires before
//! its entries are on disk. Votes, truncation and purge are synced inline.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, StorageIOError};
use rocksdb::{
    ColumnFamilyDescriptor, DB, DBCompressionType, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};
use tokio::sync::mpsc;

use crate::codec::{decode_entry, decode_log_id, encode_entry};
use crate::error::{Error, Result};
use crate::group::GroupId;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

pub const CF_LOG: &str = "log";
pub const CF_RAFT: &str = "raft";
/// Scratch column family of [`LogDb::prefill_wal`]: holds at most one key, briefly.
const CF_WAL_PREFILL: &str = "wal_prefill";

/// Bytes of the memtables of every column family together: past it RocksDB flushes the largest
/// one. Without a shared bound each of the 7 column families could hold two 64 MiB memtables,
/// and a node that ingests or installs 10M rows grew past 800 MiB (benches/RESULTS.md).
pub const MEMTABLES_BYTES_MAX: usize = 128 << 20;
/// WAL files kept at most, in bytes. A WAL file goes only when every column family with data
/// in it wrote out its memtable; a column family written rarely (`raft`, `sm`) could otherwise
/// pin hundreds of MB of WAL (419 MB after a 10M-row load and flush: benches/RESULTS.md,
/// 2026-12-04). Past this, RocksDB writes out the memtables that pin the oldest file.
pub const WAL_BYTES_MAX: u64 = 256 << 20;

/// The block cache all column families share (data, index and filter blocks). One bounded
/// cache: without it each column family's table factory makes its own.
pub const BLOCK_CACHE_BYTES: usize = 64 << 20;
/// Bloom filter bits per key of every table file: a point read of a key that is not there
/// (every insert checks its key, a lookup of a flushed row misses the hot rows) skips a file
/// on ~1% false positives instead of reading its index and a data block.
pub const BLOOM_BITS_PER_KEY: f64 = 10.0;
/// Share of a memtable given to its bloom filter over whole keys: the same saving for keys
/// still in memory (an insert of a new key probes every memtable).
pub const MEMTABLE_BLOOM_RATIO: f64 = 0.05;

/// WAL files RocksDB keeps for reuse instead of deleting them. A reused file's blocks are
/// already written, so the fdatasync after an append to it writes the data alone; an append
/// to a new file also grows it, and ext4 commits each size change to its journal inside the
/// sync (on this machine ~70 µs against ~100-150 µs at p50, 0.2-0.7 against 2.5-2.9 ms at
/// p99: benches/RESULTS.md, session 20). One spare is enough: RocksDB starts a new WAL file
/// when it switches memtables, and the file that switch made obsolete becomes the next spare.
pub const WAL_RECYCLE_FILES: usize = 1;
/// Flushes and compactions write their table files with direct I/O (`O_DIRECT`). Nothing
/// reads a table file through the page cache that its own block cache would not serve, and
/// the kernel's copy of every written byte into the page cache was 2.6% of all CPU in a bulk
/// load profile (each row reaches table files of `log`, `rows` and `changes`): 3 of 3 A/B
/// runs faster, +6% rows/s (benches/RESULTS.md, session 28).
pub const DIRECT_IO_FOR_TABLE_FILES: bool = true;
/// Age in seconds before a table file at the bottom of its column family may be rewritten
/// only to zero its sequence numbers and drop deletes (RocksDB's "BottommostFiles"
/// compaction). Without a delay, every reader's released snapshot marked each freshly flushed
/// file of an append-only family (log entries, change records, new rows: nothing sorts below
/// them) and RocksDB rewrote it whole at once: 114 MB in and 114 MB out of `log` and 23 MB of
/// `changes` per node in a 12 s bulk load, 0.8 s of CPU per node (benches/RESULTS.md, session
/// 36). Those files are deleted whole by purges and trims (`compact_purged`,
/// `compact_trimmed`), which compact on their own; the others get the rewrite an hour late.
pub const BOTTOMMOST_COMPACTION_DELAY_SECS: u32 = 3600;
/// Largest [`LogDb::prefill_wal`] accepted (a config key sets it): half the memtables'
/// budget, so the prefill fits one memtable and one WAL file (past 7/8 of the budget RocksDB
/// switches memtables, and WAL files, by itself).
pub const WAL_PREFILL_BYTES_MAX: u64 = (MEMTABLES_BYTES_MAX / 2) as u64;
/// Value size of the prefill writes.
const WAL_PREFILL_CHUNK_BYTES: usize = 1 << 20;

/// Flush callbacks waiting for the syncer. Bounded: a full queue makes `append` wait.
pub const SYNC_QUEUE_LEN_MAX: usize = 8192;

const KEY_VOTE: u8 = b'v';
const KEY_COMMITTED: u8 = b'c';
const KEY_PURGED: u8 = b'p';

/// The node's RocksDB instance plus the WAL syncer. Shared by every group's log store and by
/// the projections (which add their own column families).
pub struct LogDb {
    db: Arc<DB>,
    sync_tx: mpsc::Sender<(LogFlushed<TypeConfig>, Instant)>,
    syncer: Option<thread::JoinHandle<()>>,
    direct_io: bool,
}

impl Drop for LogDb {
    /// Stop the syncer and wait for it, so the database closes here and now: a syncer still
    /// holding it while the process exits would close RocksDB during static destruction.
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.sync_tx, closed));
        if let Some(h) = self.syncer.take() {
            let _ = h.join();
        }
    }
}

impl LogDb {
    /// Open (or create) the database at `path` with the log's column families plus `extra_cfs`.
    ///
    /// Table files are written with direct I/O when the file system takes it (see
    /// [`DIRECT_IO_FOR_TABLE_FILES`]); one probe flush at open tells. Where the open or the
    /// probe fails with it (the open itself writes table files when it recovers WAL data), the
    /// database is opened again without it: an error that has nothing to do with direct I/O
    /// comes back from that second open.
    pub fn open(path: &Path, extra_cfs: &[&str]) -> Result<Arc<LogDb>> {
        let direct = if DIRECT_IO_FOR_TABLE_FILES {
            match open_db(path, extra_cfs, true).and_then(|db| probe_table_write(&db).map(|()| db)) {
                Ok(db) => Some(db),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "opening with direct I/O for table files failed; trying buffered writes");
                    None
                }
            }
        } else {
            None
        };
        let direct_io = direct.is_some();
        let db = match direct {
            Some(db) => db,
            None => open_db(path, extra_cfs, false)?,
        };
        let db = Arc::new(db);
        let (sync_tx, sync_rx) = mpsc::channel(SYNC_QUEUE_LEN_MAX);
        let syncer_db = db.clone();
        let syncer = thread::Builder::new()
            .name("kalamdb-wal-sync".into())
            .spawn(move || run_syncer(syncer_db, sync_rx))
            .map_err(|e| Error::Corrupt(format!("cannot spawn WAL syncer: {e}")))?;
        Ok(Arc::new(LogDb { db, sync_tx, syncer: Some(syncer), direct_io }))
    }

    /// Whether this database writes its table files with direct I/O.
    pub fn direct_io(&self) -> bool {
        self.direct_io
    }

    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    /// The last purged log id of `group`: the log holds nothing at or below it.
    pub fn last_purged(&self, group: GroupId) -> Result<Option<LogId>> {
        let cf =
            self.db.cf_handle(CF_RAFT).ok_or_else(|| Error::Corrupt(format!("missing column family {CF_RAFT}")))?;
        match self.db.get_pinned_cf(cf, raft_key(group, KEY_PURGED))? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt(e.to_string())),
        }
    }

    /// Make the WAL file this process writes a reused one of at least `bytes`: RocksDB opens
    /// on a new, empty WAL file, and only files made obsolete while it runs are reused (see
    /// [`WAL_RECYCLE_FILES`]). Writes `bytes` of scratch values through the WAL and flushes
    /// them (RocksDB moves to a new WAL file and keeps the filled one as the spare), then
    /// flushes once more, which moves onto the spare. Costs `bytes` of disk writes and one
    /// fsync at startup. Returns whether the current WAL file is a reused one of `bytes` or
    /// more (a flush still running in the background can delay the spare; then the process
    /// starts on a new file, as without this).
    pub fn prefill_wal(&self, bytes: u64) -> Result<bool> {
        assert!(bytes <= WAL_PREFILL_BYTES_MAX, "wal prefill of {bytes} bytes over the maximum");
        if bytes == 0 {
            return Ok(false);
        }
        let cf = self
            .db
            .cf_handle(CF_WAL_PREFILL)
            .ok_or_else(|| Error::Corrupt(format!("missing column family {CF_WAL_PREFILL}")))?;
        let chunk = vec![0u8; WAL_PREFILL_CHUNK_BYTES];
        let mut written = 0u64;
        while written < bytes {
            // One key written over and over: the flush keeps one version of it.
            self.db.put_cf(cf, b"x", &chunk)?;
            written += WAL_PREFILL_CHUNK_BYTES as u64;
        }
        // Moves to a new WAL file; the filled one becomes the spare once the flush is done.
        self.db.flush_cf(cf)?;
        // Each further flush (of one deletion) moves onto the spare; the file just left
        // becomes the next spare. Twice at most: a spare still being made by a background
        // purge is there for the second.
        for _ in 0..2 {
            self.db.delete_cf(cf, b"x")?;
            self.db.flush_cf(cf)?;
            if current_wal_bytes(self.db.path())? >= bytes {
                break;
            }
        }
        // The scratch key's table files go at once.
        self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        Ok(current_wal_bytes(self.db.path())? >= bytes)
    }

    /// Fsync the WAL now (used before acknowledging anything that bypasses `append`).
    pub fn sync_wal(&self) -> Result<()> {
        self.db.flush_wal(true)?;
        Ok(())
    }
}

/// Size of the WAL file RocksDB writes now: the highest-numbered `*.log` file in `path`.
fn current_wal_bytes(path: &Path) -> Result<u64> {
    let mut newest: Option<(u64, u64)> = None;
    for entry in std::fs::read_dir(path)?.flatten() {
        let name = entry.file_name();
        let Some(number) = name.to_str().and_then(|n| n.strip_suffix(".log")).and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
        if newest.is_none_or(|(n, _)| number > n) {
            newest = Some((number, len));
        }
    }
    Ok(newest.map_or(0, |(_, len)| len))
}

/// Open the database; `direct` makes flushes and compactions write (and compactions read)
/// their table files with direct I/O.
fn open_db(path: &Path, extra_cfs: &[&str], direct: bool) -> Result<DB> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_compression_type(DBCompressionType::Lz4);
    // Background work shares two cores with the server; keep it modest but concurrent.
    opts.increase_parallelism(2);
    opts.set_db_write_buffer_size(MEMTABLES_BYTES_MAX);
    opts.set_max_total_wal_size(WAL_BYTES_MAX);
    opts.set_recycle_log_file_num(WAL_RECYCLE_FILES);
    opts.set_use_direct_io_for_flush_and_compaction(direct);
    let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    // Log entries are purged once a snapshot covers them: compressing the few that reach
    // a table file is CPU for nothing. Everything else is kept, and compressed.
    let cfs: Vec<ColumnFamilyDescriptor> = [CF_LOG, CF_RAFT, CF_WAL_PREFILL]
        .iter()
        .chain(extra_cfs)
        .map(|name| {
            let compression = if *name == CF_LOG { DBCompressionType::None } else { DBCompressionType::Lz4 };
            let mut options = cf_options(&cache, compression);
            if *name == CF_WAL_PREFILL {
                // The whole prefill in one memtable: a switch halfway would start a new
                // WAL file and leave the prefilled one short.
                options.set_write_buffer_size(2 * WAL_PREFILL_BYTES_MAX as usize);
            }
            ColumnFamilyDescriptor::new(*name, options)
        })
        .collect();
    let db = DB::open_cf_descriptors(&opts, path, cfs)?;
    // Not in the C API's options: set through RocksDB's dynamic options, before any writes.
    let delay = BOTTOMMOST_COMPACTION_DELAY_SECS.to_string();
    for name in [CF_LOG, CF_RAFT, CF_WAL_PREFILL].iter().chain(extra_cfs) {
        let cf = db.cf_handle(name).ok_or_else(|| Error::Corrupt(format!("missing column family {name}")))?;
        db.set_options_cf(&cf, &[("bottommost_file_compaction_delay", delay.as_str())])?;
    }
    Ok(db)
}

/// Write one table file the way flushes do: one key through the scratch column family,
/// flushed, then removed. Fails where the file system refuses the database's write mode.
fn probe_table_write(db: &DB) -> Result<()> {
    let cf = db
        .cf_handle(CF_WAL_PREFILL)
        .ok_or_else(|| Error::Corrupt(format!("missing column family {CF_WAL_PREFILL}")))?;
    db.put_cf(cf, b"probe", b"")?;
    db.flush_cf(cf)?;
    db.delete_cf(cf, b"probe")?;
    db.flush_cf(cf)?;
    db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
    Ok(())
}

/// Options of every column family. A column family does not inherit the database's options:
/// with `Options::default()` each one had no bloom filter, a block cache of its own and no
/// compression (RocksDB's default is Snappy, which this build does not include).
fn cf_options(cache: &rocksdb::Cache, compression: DBCompressionType) -> Options {
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(BLOOM_BITS_PER_KEY, false);
    table.set_whole_key_filtering(true);
    // Index and filter blocks live in the bounded cache too; those of level 0, read by every
    // point lookup, stay pinned there.
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    let mut o = Options::default();
    o.set_block_based_table_factory(&table);
    o.set_compression_type(compression);
    o.set_memtable_whole_key_filtering(true);
    o.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
    o
}

fn run_syncer(db: Arc<DB>, mut rx: mpsc::Receiver<(LogFlushed<TypeConfig>, Instant)>) {
    let mut pending = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        pending.push(first);
        while pending.len() < SYNC_QUEUE_LEN_MAX {
            match rx.try_recv() {
                Ok(cb) => pending.push(cb),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let result = db.flush_wal(true);
        let synced = Instant::now();
        metrics::histogram!("kalamdb_log_fsync_seconds").record(synced.duration_since(started).as_secs_f64());
        metrics::histogram!("kalamdb_log_fsync_batch_appends").record(pending.len() as f64);
        for (cb, appended) in pending.drain(..) {
            metrics::histogram!("kalamdb_log_append_seconds").record(synced.duration_since(appended).as_secs_f64());
            match &result {
                Ok(()) => cb.log_io_completed(Ok(())),
                Err(e) => cb.log_io_completed(Err(std::io::Error::other(e.to_string()))),
            }
        }
    }
}

/// On-disk bytes of `group`'s entries with `from <= index <= to` in the node's database `db`, as
/// RocksDB estimates them from its SST index blocks (compressed; entries still in memtables not
/// counted): no data is read, so a retention policy may ask often.
pub fn approximate_log_bytes(db: &DB, group: GroupId, from: u64, to: u64) -> Result<u64> {
    if from > to {
        return Ok(0);
    }
    approximate_range_bytes(db, CF_LOG, &log_key(group, from), &log_key(group, to.saturating_add(1)))
}

/// On-disk bytes of the keys `start..end` of column family `cf`, as RocksDB estimates them
/// from its SST index blocks (compressed; memtables not counted): no data is read.
pub fn approximate_range_bytes(db: &DB, cf: &str, start: &[u8], end: &[u8]) -> Result<u64> {
    let handle = db.cf_handle(cf).ok_or_else(|| Error::Corrupt(format!("missing column family {cf}")))?;
    Ok(db.get_approximate_sizes_cf(handle, &[rocksdb::Range::new(start, end)]).first().copied().unwrap_or(0))
}

/// Give back the disk space of `group`'s entries purged up to `purged`: drop the SST files
/// holding only purged entries, then compact what is left of that range (a purge is a range
/// delete, whose space otherwise waits for a compaction an idle group may never get). Only
/// when `dead_bytes_min` or more of it is still on disk; returns whether it compacted.
pub fn compact_purged(db: &DB, group: GroupId, purged: u64, dead_bytes_min: u64) -> Result<bool> {
    if purged == 0 || approximate_log_bytes(db, group, 0, purged)? < dead_bytes_min {
        return Ok(false);
    }
    let cf = db.cf_handle(CF_LOG).ok_or_else(|| Error::Corrupt(format!("missing column family {CF_LOG}")))?;
    let (start, end) = (log_key(group, 0), log_key(group, purged.saturating_add(1)));
    db.delete_file_in_range_cf(cf, start, end)?;
    db.compact_range_cf(cf, Some(start), Some(end));
    Ok(true)
}

fn log_key(group: GroupId, index: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&group.prefix());
    k[4..].copy_from_slice(&index.to_be_bytes());
    k
}

fn raft_key(group: GroupId, what: u8) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[..4].copy_from_slice(&group.prefix());
    k[4] = what;
    k
}

fn sync_opts() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(subject, verb, openraft::AnyError::new(&e)).into()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

/// One group's view of the node's log database.
#[derive(Clone)]
pub struct LogStore {
    log_db: Arc<LogDb>,
    group: GroupId,
    /// Index of the last entry present (or last purged), kept to assert contiguity on append.
    last_index: Option<u64>,
    /// The commit index this store last wrote (see [`COMMITTED_SAVE_INTERVAL_ENTRIES`]).
    committed_saved: Option<u64>,
}

/// The commit index is written at most once per this many entries. openraft reads it only at
/// startup, to re-apply entries committed before a restart without waiting for a leader (it
/// takes the applied index when that is higher), and an older one only leaves the rest to
/// the leader. Written on every commit, it was one more RocksDB write per entry on every node,
/// a third of a one-row write's RocksDB writes.
pub const COMMITTED_SAVE_INTERVAL_ENTRIES: u64 = 1024;

impl LogStore {
    pub fn new(log_db: Arc<LogDb>, group: GroupId) -> Result<LogStore> {
        let mut store = LogStore { log_db, group, last_index: None, committed_saved: None };
        let (purged, last) = store.read_log_state()?;
        store.last_index = last.or(purged).map(|l| l.index);
        Ok(store)
    }

    pub fn group(&self) -> GroupId {
        self.group
    }

    fn db(&self) -> &DB {
        &self.log_db.db
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily> {
        self.db().cf_handle(name).ok_or_else(|| Error::Corrupt(format!("missing column family {name}")))
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, what: u8) -> Result<Option<T>> {
        let cf = self.cf(CF_RAFT)?;
        match self.db().get_pinned_cf(cf, raft_key(self.group, what))? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::Corrupt(e.to_string())),
        }
    }

    fn put_json<T: serde::Serialize>(&self, what: u8, value: &T, sync: bool) -> Result<()> {
        let cf = self.cf(CF_RAFT)?;
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Codec(e.to_string()))?;
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db().put_cf_opt(cf, raft_key(self.group, what), bytes, &opts)?;
        Ok(())
    }

    /// Start an empty group's log after `last`, the position of a state restored from a backup:
    /// the log counts as purged up to it, and `vote` (this node, in `last`'s term, not
    /// committed) makes the first election run in a later term, so new entries never carry a
    /// lower term than the restored position. Synced. Refuses a group that has a vote or
    /// entries: restore never merges into a live log.
    pub fn seed_restored(&mut self, last: LogId, vote: &Vote) -> Result<()> {
        let (purged, present) = self.read_log_state()?;
        if purged.is_some() || present.is_some() || self.get_json::<Vote>(KEY_VOTE)?.is_some() {
            return Err(Error::NotEmpty(self.group.to_string()));
        }
        self.put_json(KEY_VOTE, vote, true)?;
        self.put_json(KEY_PURGED, &last, true)?;
        self.last_index = Some(last.index);
        Ok(())
    }

    /// (last purged, last present) log ids of this group.
    fn read_log_state(&self) -> Result<(Option<LogId>, Option<LogId>)> {
        let purged: Option<LogId> = self.get_json(KEY_PURGED)?;
        let cf = self.cf(CF_LOG)?;
        let upper = log_key(self.group, u64::MAX);
        let mut iter = self.db().iterator_cf(cf, IteratorMode::From(&upper, Direction::Reverse));
        let last = match iter.next() {
            Some(item) => {
                let (k, v) = item?;
                if k.starts_with(&self.group.prefix()) { Some(decode_log_id(&v)?) } else { None }
            }
            None => None,
        };
        Ok((purged, last))
    }

    /// Read the present entries in `[start, end)`.
    pub fn read_range(&self, start: u64, end: u64) -> Result<Vec<Entry>> {
        let cf = self.cf(CF_LOG)?;
        let mut out = Vec::new();
        if start >= end {
            return Ok(out);
        }
        let from = log_key(self.group, start);
        let iter = self.db().iterator_cf(cf, IteratorMode::From(&from, Direction::Forward));
        // Entries below the first present one may be purged; from there on they are contiguous.
        let mut expected: Option<u64> = None;
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(&self.group.prefix()) {
                break;
            }
            let entry = decode_entry(&v)?;
            let index = entry.log_id.index;
            if index >= end {
                break;
            }
            if let Some(e) = expected {
                assert_eq!(index, e, "hole in the log of group {}", self.group);
            }
            expected = Some(index + 1);
            out.push(entry);
        }
        Ok(out)
    }
}

fn range_to_half_open<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = range_to_half_open(&range);
        self.read_range(start, end).map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let (purged, last) = self.read_log_state().map_err(read_err)?;
        Ok(LogState { last_purged_log_id: purged, last_log_id: last.or(purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        // A vote must be on disk before it is returned: sync inline.
        self.put_json(KEY_VOTE, vote, true).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_json(KEY_VOTE).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let index = committed.map(|c| c.index);
        if let (Some(saved), Some(index)) = (self.committed_saved, index)
            && index >= saved
            && index - saved < COMMITTED_SAVE_INTERVAL_ENTRIES
        {
            return Ok(());
        }
        // Not synced: losing it only means re-learning the commit index from the leader.
        self.put_json(KEY_COMMITTED, &committed, false).map_err(write_err)?;
        self.committed_saved = index;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_json::<Option<LogId>>(KEY_COMMITTED).map_err(read_err)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let cf = self.cf(CF_LOG).map_err(write_err)?;
        let appended = Instant::now();
        let mut batch = WriteBatch::default();
        let mut prev = self.last_index;
        let mut last = self.last_index;
        let (mut count, mut bytes) = (0u64, 0u64);
        for entry in entries {
            let index = entry.log_id.index;
            // No holes: an entry follows the previous one, or overwrites an index that exists.
            if let Some(p) = prev {
                assert!(index <= p + 1, "append of index {index} after {p} would leave a hole in group {}", self.group);
            }
            prev = Some(index);
            last = last.max(Some(index));
            let encoded = encode_entry(&entry).map_err(write_err)?;
            count += 1;
            bytes += encoded.len() as u64;
            batch.put_cf(cf, log_key(self.group, index), encoded);
        }
        self.db().write(batch).map_err(write_err)?;
        metrics::counter!("kalamdb_log_appended_entries_total").increment(count);
        metrics::counter!("kalamdb_log_appended_bytes_total").increment(bytes);
        self.last_index = last;
        // The entries are readable now; the callback fires only after the WAL fsync.
        self.log_db.sync_tx.send((callback, appended)).await.map_err(|_| write_err(Error::WriterStopped))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let cf = self.cf(CF_LOG).map_err(write_err)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, log_key(self.group, log_id.index), log_key(self.group, u64::MAX));
        self.db().write_opt(batch, &sync_opts()).map_err(write_err)?;
        let (purged, last) = self.read_log_state().map_err(read_err)?;
        self.last_index = last.or(purged).map(|l| l.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let cf_log = self.cf(CF_LOG).map_err(write_err)?;
        let cf_raft = self.cf(CF_RAFT).map_err(write_err)?;
        let mut batch = WriteBatch::default();
        let purged = serde_json::to_vec(&log_id).map_err(write_err)?;
        batch.put_cf(cf_raft, raft_key(self.group, KEY_PURGED), purged);
        batch.delete_range_cf(cf_log, log_key(self.group, 0), log_key(self.group, log_id.index + 1));
        // Synced: the WAL is shared, so this also makes every earlier projection write durable
        // before the log entries that could rebuild it are gone.
        self.db().write_opt(batch, &sync_opts()).map_err(write_err)?;
        if self.last_index.is_none_or(|l| l < log_id.index) {
            self.last_index = Some(log_id.index);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A freshly flushed file at the bottom of its family is not rewritten when a snapshot is
    /// released (see [`BOTTOMMOST_COMPACTION_DELAY_SECS`]): the same file stays live.
    #[test]
    fn a_released_snapshot_does_not_rewrite_fresh_bottom_files() {
        let dir = tempfile::tempdir().unwrap();
        let db = LogDb::open(dir.path(), &["data"]).unwrap();
        let cf = db.db().cf_handle("data").unwrap();
        let files = || {
            let mut names: Vec<String> = db
                .db()
                .live_files()
                .unwrap()
                .into_iter()
                .filter(|f| f.column_family_name == "data")
                .map(|f| f.name)
                .collect();
            names.sort();
            names
        };
        let snapshot = db.db().snapshot();
        for i in 0..1_000u32 {
            db.db().put_cf(cf, i.to_be_bytes(), [7u8; 64]).unwrap();
        }
        db.db().delete_cf(cf, 5u32.to_be_bytes()).unwrap();
        db.db().flush_cf(cf).unwrap();
        let flushed = files();
        assert_eq!(flushed.len(), 1, "{flushed:?}");
        // Releasing the snapshot older than the file, with writes after it, is what marked it
        // for a rewrite.
        db.db().put(b"later", b"").unwrap();
        drop(snapshot);
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert_eq!(files(), flushed, "the file was rewritten");
    }

    /// The process writes a reused WAL file after `prefill_wal`, without growing it, and a
    /// reopen recovers exactly what was written to it: nothing of the file's older contents.
    #[test]
    fn a_prefilled_wal_is_reused_and_recovers_only_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = 4u64 << 20;
        let key = |i: u32| i.to_be_bytes();
        {
            let db = LogDb::open(dir.path(), &["data"]).unwrap();
            assert!(db.prefill_wal(bytes).unwrap(), "the WAL file is not a reused one");
            let wal_before = current_wal_bytes(dir.path()).unwrap();
            let cf = db.db().cf_handle("data").unwrap();
            for i in 0..2_000u32 {
                db.db().put_cf(cf, key(i), format!("v{i}")).unwrap();
            }
            db.db().delete_cf(cf, key(7)).unwrap();
            db.sync_wal().unwrap();
            assert_eq!(current_wal_bytes(dir.path()).unwrap(), wal_before, "the reused WAL file grew");
        }
        // Closed without a memtable flush: the rows come back from the reused WAL file.
        let db = LogDb::open(dir.path(), &["data"]).unwrap();
        let cf = db.db().cf_handle("data").unwrap();
        for i in 0..2_000u32 {
            let got = db.db().get_cf(cf, key(i)).unwrap();
            let want = (i != 7).then(|| format!("v{i}").into_bytes());
            assert_eq!(got, want, "key {i}");
        }
        assert_eq!(db.db().iterator_cf(cf, IteratorMode::Start).count(), 1_999);
        let scratch = db.db().cf_handle(CF_WAL_PREFILL).unwrap();
        assert_eq!(db.db().get_cf(scratch, b"x").unwrap(), None, "the prefill's scratch key stayed");
        // A second prefill after the reopen works the same way.
        assert!(db.prefill_wal(bytes).unwrap());
        assert!(!db.prefill_wal(0).unwrap());
    }

    /// Table files written with direct I/O (where the file system takes it) read back like
    /// any others: flushed, compacted and reopened, every key is there.
    #[test]
    fn table_files_written_with_direct_io_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let key = |i: u32| i.to_be_bytes();
        {
            let db = LogDb::open(dir.path(), &["data"]).unwrap();
            let cf = db.db().cf_handle("data").unwrap();
            for round in 0..3u32 {
                for i in 0..5_000u32 {
                    db.db().put_cf(cf, key(i), format!("v{i}-{round}")).unwrap();
                }
                db.db().flush_cf(cf).unwrap();
            }
            db.db().compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
            let scratch = db.db().cf_handle(CF_WAL_PREFILL).unwrap();
            assert_eq!(db.db().get_cf(scratch, b"probe").unwrap(), None, "the probe's key stayed");
        }
        let db = LogDb::open(dir.path(), &["data"]).unwrap();
        let cf = db.db().cf_handle("data").unwrap();
        for i in 0..5_000u32 {
            assert_eq!(db.db().get_cf(cf, key(i)).unwrap(), Some(format!("v{i}-2").into_bytes()), "key {i}");
        }
        // Where this test runs (ext4 here, tmpfs on Linux 6.6 and later) direct I/O is taken.
        assert_eq!(db.direct_io(), DIRECT_IO_FOR_TABLE_FILES);
    }

    /// The commit index is written once per `COMMITTED_SAVE_INTERVAL_ENTRIES`, and a reopen
    /// reads the last one written: never one that was not committed, never above the newest.
    #[test]
    fn the_commit_index_is_saved_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let id = |index: u64| Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let db = LogDb::open(dir.path(), &[]).unwrap();
            let group = GroupId::Meta(crate::MetaGroup::Catalog);
            let mut store = LogStore::new(db.clone(), group).unwrap();
            assert_eq!(store.read_committed().await.unwrap(), None);
            store.save_committed(id(5)).await.unwrap();
            assert_eq!(store.read_committed().await.unwrap(), id(5), "the first commit index is written");
            for index in 6..5 + COMMITTED_SAVE_INTERVAL_ENTRIES {
                store.save_committed(id(index)).await.unwrap();
            }
            assert_eq!(store.read_committed().await.unwrap(), id(5), "an older, committed index stays");
            store.save_committed(id(5 + COMMITTED_SAVE_INTERVAL_ENTRIES)).await.unwrap();
            let newest = id(5 + COMMITTED_SAVE_INTERVAL_ENTRIES);
            assert_eq!(store.read_committed().await.unwrap(), newest, "one interval later it is written");
            drop(store);
            let mut reopened = LogStore::new(db, group).unwrap();
            assert_eq!(reopened.read_committed().await.unwrap(), newest);
            // A fresh store writes its first commit index at once.
            reopened.save_committed(id(6 + COMMITTED_SAVE_INTERVAL_ENTRIES)).await.unwrap();
            assert_eq!(reopened.read_committed().await.unwrap(), id(6 + COMMITTED_SAVE_INTERVAL_ENTRIES));
        });
    }

    /// An open that fails for a reason other than direct I/O (here: the database is open in
    /// this process already) fails the same way after the buffered retry, with its own error.
    #[test]
    fn an_open_that_fails_otherwise_still_fails_after_the_retry() {
        let dir = tempfile::tempdir().unwrap();
        let first = LogDb::open(dir.path(), &["data"]).unwrap();
        let err = LogDb::open(dir.path(), &["data"]).err().expect("a second open of a locked database");
        assert!(err.to_string().to_lowercase().contains("lock"), "{err}");
        drop(first);
        assert!(LogDb::open(dir.path(), &["data"]).is_ok(), "the database opens once it is free");
    }
}
