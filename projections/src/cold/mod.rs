//! Cold storage: a table's rows flushed out of RocksDB into Parquet files, the manifest that
//! lists those files, the key index that keeps primary-key checks exact without reading a
//! file, and compaction. Everything here runs inside `apply` (a `Flush` or `Compact` op), so
//! file names and contents are a function of the log: every node writes the same bytes.
//!
//! Keys of the `cold` column family, after `group | table_id | scope_len | scope`:
//! - `K | pk` → `seq u64 BE`: the key's newest flushed version, which is live (flush drops
//!   tombstones). A hot row in `rows` with the same key is newer and wins. In a scope with a
//!   fixed-width key, one record may stand for a run of keys (`stubs`).
//!
//! A flush writes the files and the manifest only: the flushed rows stay in `rows` until
//! `Settle` ops (bounded, one scope at a time, `settle`) replace each by its stub and drop
//! flushed tombstones with theirs. A hot row whose version is before the scope's last
//! flush ([`ScopeHead::flushed`]) is in a file: readers take it from the file (scans) or
//! from the row itself (keyed reads, same bytes), and a write that replaces it settles it
//! first, so every state reads as the fully settled one would.
//! - `F | file_no u64 BE` → [`FileMeta`] JSON: the manifest, one record per file.
//! - `X | seq u64 BE` → `index u64 BE`: a flushed version that a newer version superseded at
//!   that log index. Queries skip it, compaction drops it, time travel reads the index.
//! - `H` → [`ScopeHead`] JSON: next file number and the last flush's log index.
//!
//! The manifest lives in RocksDB, in the same write batch as the stubs, the removal of the hot
//! rows and the applied log id, so a reader (who reads under one RocksDB snapshot) sees a flush
//! entirely or not at all. Files are written first (temp name, fsync, rename, fsync dir), so a
//! crash anywhere before the batch commits leaves the entry unapplied and re-applying it writes
//! the same file again.
//!
//! The code is split by concern: `files` (writing and reading files, fsynced), `apply` (flush,
//! compaction and purge inside apply), `flush` (a flush's two steps: reading rows into files,
//! committing them), `prepared` (the first step run off apply, from a snapshot), `concat` (compaction of disjoint files by copying),
//! `lookup` (the keyed read of one flushed row, with its footer and page cache), `view` (what a reader sees: live files, superseded versions, key ranges);
//! this file holds the manifest records and their keys.

mod apply;
mod concat;
mod files;
mod flush;
mod inline;
mod lookup;
mod merge;
mod plan;
mod prepared;
mod reclaim;
mod retire;
mod settle;
mod starts;
mod store;
mod stubs;
mod view;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use kalamdb_log::{GroupId, OpResult, TableDef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::columnar::{ColumnStats, RowBatchBuilder, StatsBuilder, seq_deleted, storage_schema};
use crate::error::{Error, Result};
use crate::keys::{prefix_end, split_scope, table_prefix, table_scope_prefix};
use crate::stored::{ArchivedStoredRow, StoredRow};
use crate::{CF_COLD, CF_ROWS};

pub use apply::*;
pub use files::*;
pub use flush::Collected;
use inline::Inline;
pub use inline::{SETTLE_INLINE_ROWS_MAX, SETTLE_INLINE_STUBS_MAX};
pub use lookup::*;
pub use plan::{COMPACT_SEALED_DEAD_SHARE_DEN, COMPACT_SEALED_ROWS_MIN, CompactionUnit, compaction_plan};
pub use prepared::{PREPARED_FLUSH_AGE_MAX, PREPARED_FLUSHES_MAX, PreparedFlushes};
pub use reclaim::{RECLAIM_INTERVAL_MS_MIN, RECLAIM_QUEUE_LEN_MAX, Reclaimer};
pub use retire::oldest_retired;
pub use settle::{SETTLE_ROWS_MAX, SettleQueue, unsettled_scopes};
pub use starts::{FlushStart, FlushStarts, WATCHED_KEYS_MAX, Written};
pub use store::*;
pub use stubs::{RUN_PK_BYTES, RunReader, RunSettler, Stub, StubWriter, pk_fixed_width, stub_seq};
pub use view::*;

/// Rows in one Parquet file; a larger flush writes several files.
pub const FILE_ROWS_MAX: usize = 1 << 20;
/// Rows in one Parquet row group: the unit of statistics-based pruning and of parallel reads.
pub const ROW_GROUP_ROWS_MAX: usize = 128 * 1024;
/// Rows in one Parquet data page. Files are sorted by primary key, so a point lookup uses the
/// page index to decode one page per column instead of the whole row group: with the
/// writer's default (20,000 rows or 1 MiB per page) a lookup among 100,000 flushed rows
/// decoded all of them (443 lookups/s in benches/RESULTS.md); at 4,096 rows decompressing
/// the pages was still 30% of a lookup's time (5,241/s); 1,024 rows with the dictionary bound
/// below gave 9,472/s, while 512 gave no more and GROUP BY scans did not slow down.
pub const PAGE_ROWS_MAX: usize = 1024;
/// Bytes of one column's dictionary page in a row group; past it the column is written
/// plainly. A point lookup decodes the dictionary page of every column it returns, even when
/// its page is plain, so a high-cardinality column that filled a large dictionary before
/// falling back (the writer's default is 1 MiB; 64 KiB was measured at 5,381 lookups/s) costs
/// more than the page itself. 8 KiB still holds the dictionary of a low-cardinality column (a
/// category, a status) whole.
pub const DICTIONARY_PAGE_BYTES_MAX: usize = 8 * 1024;
// Compaction cuts files from whole merge batches.
/// Flush and compaction jobs remembered for `system.jobs`, per node.
pub const JOBS_RETAINED_MAX: usize = 1024;

pub(crate) const KIND_STUB: u8 = b'K';
pub(crate) const KIND_FILE: u8 = b'F';
pub(crate) const KIND_SUPERSEDED: u8 = b'X';
pub(crate) const KIND_HEAD: u8 = b'H';

/// One Parquet file of a table scope, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileMeta {
    pub file_no: u64,
    /// Relative to the storage root, `/`-separated.
    pub path: String,
    /// The log range whose writes the file holds (first and last index, inclusive).
    pub log_start: u64,
    pub log_end: u64,
    /// Log index of the flush or compaction that wrote the file.
    pub created_at: u64,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
    /// `flush` or `compact`.
    pub written_by: String,
    /// Log index of the compaction that replaced this file; the file stays on disk until the
    /// next compaction of the scope, so queries already reading it can finish.
    pub retired_at: Option<u64>,
    pub columns: Vec<ColumnStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScopeHead {
    pub next_file_no: u64,
    /// Log index of the scope's last flush: every hot row written before it is in a file
    /// (flushed), whether or not a `Settle` has replaced it by its stub yet.
    pub last_flush_index: u64,
    /// Log index of the last compaction that rewrote files (0: none). Time travel reaches no
    /// further back: compaction drops the superseded versions older positions need.
    pub last_compact_index: u64,
    /// Where the next `Settle` of the scope starts (the primary-key bytes of the first row it
    /// looks at); `None` when no flushed hot row is left. Absent from heads written before
    /// settling existed, which never left a flushed row hot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle_from: Option<Vec<u8>>,
    /// Where settling ends: the primary-key bytes of the last row the scope's unsettled
    /// flushes wrote. A flush reads every hot row of the scope in key order, so a row after
    /// its last one was written after it and is not flushed: settling stops there instead of
    /// walking the rows a bulk load keeps appending behind the flush, 1,024 an op, settling
    /// none. `None` while `settle_from` is set: to the scope's end (heads written before this
    /// bound existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle_to: Option<Vec<u8>>,
    /// Whether the scope's primary key is fixed-width, so its stubs may be runs (`stubs`).
    /// Every flush sets it from the table's definition; heads written before runs existed
    /// lack it, and their scopes hold single stubs until their next flush.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub runs: bool,
}

impl ScopeHead {
    /// Whether the hot version `seq` of a row of this scope is flushed: a file holds it, and
    /// the row stands for its own stub until it is settled. Strictly before the flush's
    /// entry: a row op in that entry (a log written before storage jobs had entries of their
    /// own) was applied after the flush read the rows, so no file holds it.
    pub fn flushed(&self, seq: u64) -> bool {
        crate::stored::seq_log_index(seq) < self.last_flush_index
    }

    /// Whether two heads of a scope stand for the same live files: every change to them
    /// moves one of these fields (a `Settle` moves only `settle_from`).
    pub fn same_files(&self, other: &ScopeHead) -> bool {
        (self.next_file_no, self.last_flush_index, self.last_compact_index)
            == (other.next_file_no, other.last_flush_index, other.last_compact_index)
    }
}

/// What a scan needs from cold storage for one table scope, read under one RocksDB snapshot
/// together with the hot rows.
#[derive(Debug, Clone, Default)]
pub struct TableView {
    /// Live hot rows (newest versions still in RocksDB), in primary-key order.
    pub hot: Vec<StoredRow>,
    /// Live files: absolute path and size in bytes.
    pub files: Vec<(PathBuf, u64)>,
    /// Per live file (same order), the storage names of the columns it holds: a file written
    /// before a column was added lacks it.
    pub file_columns: Vec<Vec<String>>,
    /// `_seq`s of file rows that a newer version superseded.
    pub superseded: Vec<u64>,
}

/// One flush or compaction as `system.jobs` shows it. Kept in memory per node: durations and
/// wall-clock times are not part of the replicated state.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub job_id: String,
    pub job_type: &'static str,
    pub namespace: String,
    pub table_name: String,
    pub group: String,
    pub scope: String,
    pub log_start: u64,
    pub log_end: u64,
    pub files: u64,
    pub rows: u64,
    pub bytes: u64,
    pub state: &'static str,
    pub started_at_micros: i64,
    pub duration_ms: u64,
    pub message: String,
}

/// The node's recent storage jobs, newest last, bounded by [`JOBS_RETAINED_MAX`].
#[derive(Debug, Default)]
pub struct JobLog {
    records: Mutex<VecDeque<JobRecord>>,
}

impl JobLog {
    pub fn push(&self, record: JobRecord) {
        let mut r = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() == JOBS_RETAINED_MAX {
            r.pop_front();
        }
        r.push_back(record);
    }

    pub fn list(&self) -> Vec<JobRecord> {
        self.records.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// Change the record of a running job (a no-op once it has aged out of the log).
    pub fn update(&self, job_id: &str, change: impl FnOnce(&mut JobRecord)) {
        let mut r = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(job) = r.iter_mut().rev().find(|j| j.job_id == job_id) {
            change(job);
        }
    }
}

/// Rows written per (group, table) since its last flush on this node: what the automatic
/// flush policy looks at. Approximate by design (counts writes, resets on restart).
#[derive(Debug, Default)]
pub struct HotStats {
    map: Mutex<HashMap<(u32, u64), (u64, Instant)>>,
}

impl HotStats {
    pub fn record(&self, group: GroupId, table_id: u64, rows: u64) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.entry((group.to_u32(), table_id)).or_insert((0, Instant::now())).0 += rows;
    }

    pub fn reset(&self, group: GroupId, table_id: u64) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.insert((group.to_u32(), table_id), (0, Instant::now()));
    }

    /// (group, table_id, rows written since the last flush, time since the last flush).
    pub fn list(&self) -> Vec<(GroupId, u64, u64, std::time::Duration)> {
        let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.iter()
            .filter_map(|((g, t), (rows, since))| GroupId::from_u32(*g).map(|g| (g, *t, *rows, since.elapsed())))
            .collect()
    }
}

/// Readers on this node that copy a group's files as of some applied index (a snapshot being
/// built, a backup): while one holds a pin, this node reports that index as the lowest whose
/// files it needs, and the group's leader deletes no file retired after it
/// (`node/src/file_retirement.rs`). Apply goes on meanwhile.
#[derive(Debug, Default)]
pub struct FilePins {
    pins: Mutex<HashMap<u64, (GroupId, u64)>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// Holds a pin until dropped.
#[derive(Debug)]
pub struct FilePin<'a> {
    pins: &'a FilePins,
    id: u64,
}

impl Drop for FilePin<'_> {
    fn drop(&mut self) {
        self.pins.pins.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

impl FilePins {
    /// Pin the files of `group` live at `applied` (the group's applied index, read before the
    /// reader takes its RocksDB snapshot, so the snapshot is at or after it).
    pub fn pin(&self, group: GroupId, applied: u64) -> FilePin<'_> {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.pins.lock().unwrap_or_else(|p| p.into_inner()).insert(id, (group, applied));
        FilePin { pins: self, id }
    }

    /// The lowest pinned index of `group`, if any reader holds one.
    pub fn lowest(&self, group: GroupId) -> Option<u64> {
        let pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        pins.values().filter(|(g, _)| *g == group).map(|(_, i)| *i).min()
    }
}

/// The groups whose projection a state install is replacing right now: local reads of them
/// are refused meanwhile (see `crate::install`).
#[derive(Debug, Default)]
pub struct Installing {
    groups: Mutex<HashSet<u32>>,
}

impl Installing {
    pub fn set(&self, group: GroupId, installing: bool) {
        let mut g = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if installing {
            g.insert(group.to_u32());
        } else {
            g.remove(&group.to_u32());
        }
    }

    pub fn contains(&self, group: GroupId) -> bool {
        self.groups.lock().unwrap_or_else(|p| p.into_inner()).contains(&group.to_u32())
    }
}

/// Where a node keeps files, and the per-node registries storage jobs report to.
#[derive(Debug)]
pub struct StorageEnv {
    pub snapshot_dir: PathBuf,
    /// The Parquet files: a folder (may be one volume shared by every node) or a bucket's
    /// local cache.
    pub files: Arc<FileStore>,
    pub jobs: JobLog,
    pub hot: HotStats,
    pub pins: FilePins,
    pub installing: Installing,
    /// Gives back the space of flushed hot rows (see `reclaim`).
    pub reclaim: Reclaimer,
    /// Tables whose flushed hot rows wait for `Settle` ops (see `settle`).
    pub settles: SettleQueue,
    /// Where each table's next flush starts reading (see `starts`).
    pub flush_starts: FlushStarts,
    /// Whole flushes being written off apply (see `prepared`).
    pub prepared: PreparedFlushes,
}

impl StorageEnv {
    /// Files kept in the folder `storage_dir`.
    pub fn new(snapshot_dir: PathBuf, storage_dir: PathBuf) -> Arc<StorageEnv> {
        StorageEnv::with_files(snapshot_dir, Arc::new(FileStore::folder(storage_dir)))
    }

    pub fn with_files(snapshot_dir: PathBuf, files: Arc<FileStore>) -> Arc<StorageEnv> {
        Arc::new(StorageEnv {
            snapshot_dir,
            files,
            jobs: JobLog::default(),
            hot: HotStats::default(),
            pins: FilePins::default(),
            installing: Installing::default(),
            reclaim: Reclaimer::default(),
            settles: SettleQueue::default(),
            flush_starts: FlushStarts::default(),
            prepared: PreparedFlushes::default(),
        })
    }
}

/// One group's cold storage as readers and apply address it: the projection database that
/// holds its manifests, the store its files live in, and the group.
#[derive(Clone, Copy)]
pub struct ColdGroup<'a> {
    pub db: &'a DB,
    pub files: &'a FileStore,
    pub group: GroupId,
}

pub(crate) fn cold_key(scope_prefix: &[u8], kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(scope_prefix.len() + 1 + rest.len());
    k.extend_from_slice(scope_prefix);
    k.push(kind);
    k.extend_from_slice(rest);
    k
}

/// The stub key of a row key (`group | table | scope | pk` → same with `K` before the pk).
pub fn stub_key_of(row_key: &[u8]) -> Result<Vec<u8>> {
    let (scope, pk) = split_scope(row_key).ok_or_else(|| Error::Corrupt("bad row key".into()))?;
    let prefix_len = row_key.len() - pk.len();
    debug_assert!(prefix_len == 12 + 2 + scope.len());
    Ok(cold_key(&row_key[..prefix_len], KIND_STUB, pk))
}

/// The prefix of every stub key of the scope whose row keys start with `sp`.
pub fn stub_range(sp: &[u8]) -> Vec<u8> {
    cold_key(sp, KIND_STUB, &[])
}

/// The marker key recording that the flushed version `seq` of a row key is superseded.
pub fn superseded_key_of(row_key: &[u8], seq: u64) -> Result<Vec<u8>> {
    let (_, pk) = split_scope(row_key).ok_or_else(|| Error::Corrupt("bad row key".into()))?;
    Ok(cold_key(&row_key[..row_key.len() - pk.len()], KIND_SUPERSEDED, &seq.to_be_bytes()))
}

/// The `_seq` a superseded marker key names (its last 8 bytes, big-endian).
pub(crate) fn marker_seq(key: &[u8]) -> Result<u64> {
    let b: [u8; 8] = key
        .get(key.len().saturating_sub(8)..)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::Corrupt("bad marker".into()))?;
    Ok(u64::from_be_bytes(b))
}

/// A path component made only of `[A-Za-z0-9_-]`; anything else is hex-encoded, so no name can
/// climb out of the storage root or collide with another.
fn path_component(name: &str) -> String {
    let plain = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain { name.to_string() } else { format!("x{}", hex::encode(name.as_bytes())) }
}

/// `ns/table-t<id>/<scope>`: the directory of one table scope under the storage root.
pub fn scope_dir(def: &TableDef, scope: &str) -> String {
    let scope_part = if scope.is_empty() { "shared".to_string() } else { format!("u_{}", path_component(scope)) };
    format!("{}/{}-t{}/{}", path_component(&def.namespace), path_component(&def.name), def.table_id, scope_part)
}

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily> {
    db.cf_handle(name).ok_or_else(|| Error::Corrupt(format!("no {name} cf")))
}

pub(crate) fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Corrupt(e.to_string()))
}

fn unjson<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| Error::Corrupt(e.to_string()))
}
