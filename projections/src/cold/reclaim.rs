//! Disk space given back after a flush. Settling deletes the flushed hot rows, but their bytes
//! stay in SST files (and the deletes in the WAL) until RocksDB happens to compact that key
//! range: after 10M flushed rows that was 339 MB of dead rows plus 419 MB of WAL (see
//! benches/RESULTS.md, 2026-12-04). A background thread compacts the table's range of `rows`
//! and writes out the memtables, off the apply path. It changes no logical state, so each node
//! does it on its own schedule and the projections stay byte-identical.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};

use kalamdb_log::GroupId;
use rocksdb::DB;

use crate::keys::{prefix_end, table_prefix};
use crate::{CF_CATALOG, CF_CHANGES, CF_COLD, CF_ROWS, CF_SM};

/// Settled tables waiting for their range to be compacted. A table that finds the queue full
/// leaves its range to RocksDB's own compactions (nothing is lost, only space later).
pub const RECLAIM_QUEUE_LEN_MAX: usize = 64;

/// Least time between two reclaims of one table. Under a sustained load a table flushes and
/// settles every second or two, and each reclaim compacted the table's whole range of `rows`
/// and wrote out every family's memtable: six of them in a 12 s bulk load took 1.0 s of CPU
/// per node, the largest compaction cost left (benches/RESULTS.md, session 36). A reclaim
/// queued sooner waits out the rest of the interval and covers every settle queued meanwhile;
/// other tables' reclaims queued behind it wait too (one thread), which costs only space later.
pub const RECLAIM_INTERVAL_MS_MIN: u64 = 10_000;
/// How often a waiting reclaim looks whether the node is stopping.
const RECLAIM_WAIT_STEP_MS: u64 = 100;

/// One key range of `rows` to compact; `None` on the channel tells the thread to end.
struct Job {
    db: Arc<DB>,
    start: Vec<u8>,
    end: Vec<u8>,
}

/// The queue to the reclaiming thread, started at the first table settled.
#[derive(Debug, Default)]
pub struct Reclaimer {
    tx: OnceLock<Option<SyncSender<Option<Job>>>>,
    /// Tables queued and not started yet: a table whose scopes finish settling one after
    /// another (a user table) is compacted once, not once per scope.
    queued: Arc<Mutex<HashSet<Vec<u8>>>>,
    /// Set when the reclaimer stops: the thread starts no further job.
    stopping: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Reclaimer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Reclaimer {
    /// Stop the thread and wait for the compaction it is running (queued ones are dropped):
    /// a thread left inside RocksDB while the process exits aborts it, RocksDB's static state
    /// being torn down under it. The server calls this as it stops, since tasks may still
    /// hold the [`super::StorageEnv`]; dropping the reclaimer does it too. Later `queue` calls
    /// are ignored.
    pub fn stop(&self) {
        // Under the thread's lock, so a `queue` starting the thread now either is seen here or
        // sees `stopping` and starts none.
        let thread = {
            let mut slot = self.thread.lock().unwrap_or_else(|p| p.into_inner());
            self.stopping.store(true, Ordering::SeqCst);
            slot.take()
        };
        let Some(thread) = thread else { return };
        // A thread exists only once `spawn` ran inside `tx`'s initialisation, so the sender is
        // there or about to be: wait for it rather than miss it (`get` returns nothing while a
        // racing `queue` is still storing it, and the thread would then never be told to end).
        if let Some(tx) = self.tx.wait() {
            // Blocks at most until the running compaction ends: the thread skips the rest.
            let _ = tx.send(None);
        }
        let _ = thread.join();
    }

    /// Queue the reclaiming of a table's removed rows in `group` (its flushed rows, once
    /// settled).
    pub fn queue(&self, db: &Arc<DB>, group: GroupId, table_id: u64) {
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let start = table_prefix(group, table_id);
        let end = prefix_end(&start);
        let Some(tx) = self.tx.get_or_init(|| self.spawn()) else { return };
        if !self.queued.lock().unwrap_or_else(|p| p.into_inner()).insert(start.clone()) {
            return;
        }
        match tx.try_send(Some(Job { db: db.clone(), start: start.clone(), end })) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.queued.lock().unwrap_or_else(|p| p.into_inner()).remove(&start);
                metrics::counter!("kalamdb_storage_reclaims_skipped_total").increment(1);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl Reclaimer {
    fn spawn(&self) -> Option<SyncSender<Option<Job>>> {
        let (tx, rx) = sync_channel(RECLAIM_QUEUE_LEN_MAX);
        let (queued, stopping) = (self.queued.clone(), self.stopping.clone());
        let mut slot = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        if self.stopping.load(Ordering::SeqCst) {
            return None;
        }
        match std::thread::Builder::new().name("kalamdb-reclaim".into()).spawn(move || run(rx, queued, stopping)) {
            Ok(thread) => {
                *slot = Some(thread);
                Some(tx)
            }
            Err(e) => {
                tracing::warn!(target: "kalamdb_storage", error = %e, "cannot start the reclaiming thread; flushed rows are left to RocksDB's compactions");
                None
            }
        }
    }
}

fn run(rx: Receiver<Option<Job>>, queued: Arc<Mutex<HashSet<Vec<u8>>>>, stopping: Arc<AtomicBool>) {
    // When each table's range was last reclaimed, kept for the interval only.
    let interval = std::time::Duration::from_millis(RECLAIM_INTERVAL_MS_MIN);
    let mut last: HashMap<Vec<u8>, std::time::Instant> = HashMap::new();
    for job in rx {
        let Some(job) = job else { return };
        if let Some(at) = last.get(&job.start) {
            let ready = *at + interval;
            while std::time::Instant::now() < ready && !stopping.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(RECLAIM_WAIT_STEP_MS));
            }
        }
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        last.retain(|_, at| at.elapsed() < interval);
        last.insert(job.start.clone(), std::time::Instant::now());
        // Rows removed from here on are after this compaction starts: queue it again.
        queued.lock().unwrap_or_else(|p| p.into_inner()).remove(&job.start);
        let started = std::time::Instant::now();
        reclaim(&job.db, &job.start, &job.end);
        metrics::histogram!("kalamdb_storage_reclaim_seconds").record(started.elapsed().as_secs_f64());
    }
}

/// Compact `rows` over `start..end` (RocksDB first writes out the memtable holding the
/// deletes, then drops the deleted versions), and write out every other column family's
/// memtable: a WAL file goes only when no memtable holds data from it, and the flush's batch
/// (deletes, stubs, change records, applied position) filled one of hundreds of MB.
pub fn reclaim(db: &DB, start: &[u8], end: &[u8]) {
    if let Some(rows) = db.cf_handle(CF_ROWS) {
        db.compact_range_cf(rows, Some(start), Some(end));
    }
    let others = [CF_COLD, CF_CHANGES, CF_SM, CF_CATALOG, kalamdb_log::storage::CF_LOG, kalamdb_log::storage::CF_RAFT];
    for name in others {
        if let Some(cf) = db.cf_handle(name)
            && let Err(e) = db.flush_cf(cf)
        {
            tracing::warn!(target: "kalamdb_storage", cf = name, error = %e, "memtable flush after a table flush failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sst_bytes(db: &DB) -> u64 {
        let rows = db.cf_handle(CF_ROWS).unwrap();
        db.property_int_value_cf(rows, "rocksdb.total-sst-files-size").unwrap().unwrap()
    }

    #[test]
    fn reclaiming_a_deleted_range_gives_its_bytes_back() {
        let dir = tempfile::tempdir().unwrap();
        let log_db = kalamdb_log::LogDb::open(dir.path(), &crate::PROJECTION_CFS).unwrap();
        let db = log_db.db();
        let rows = db.cf_handle(CF_ROWS).unwrap();
        let group = GroupId::SharedShard(0);
        let prefix = table_prefix(group, 7);
        // 20,000 rows of 200 incompressible-ish bytes: a few MB of SST.
        let key = |i: u32| [prefix.as_slice(), &i.to_be_bytes()].concat();
        for i in 0..20_000u32 {
            let value: Vec<u8> =
                (0..200u32).map(|b| (i.wrapping_mul(2_654_435_761) ^ b.wrapping_mul(40_503)) as u8).collect();
            db.put_cf(rows, key(i), value).unwrap();
        }
        db.flush_cf(rows).unwrap();
        let before = sst_bytes(db);
        assert!(before > 2_000_000, "{before}");
        // What a flush does in apply: delete every hot row of the table.
        let mut batch = rocksdb::WriteBatch::default();
        for i in 0..20_000u32 {
            batch.delete_cf(rows, key(i));
        }
        db.write(batch).unwrap();
        reclaim(db, &prefix, &prefix_end(&prefix));
        let after = sst_bytes(db);
        assert!(after < before / 20, "rows CF still holds {after} bytes of SST (was {before})");
        assert!(db.iterator_cf(rows, rocksdb::IteratorMode::Start).next().is_none());
    }

    fn has_thread(r: &Reclaimer) -> bool {
        r.thread.lock().unwrap().is_some()
    }

    #[test]
    fn a_table_reclaimed_again_within_the_interval_waits_and_a_stop_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let log_db = kalamdb_log::LogDb::open(dir.path(), &crate::PROJECTION_CFS).unwrap();
        let reclaimer = Reclaimer::default();
        let pending = |r: &Reclaimer| r.queued.lock().unwrap().len();
        reclaimer.queue(log_db.db(), GroupId::SharedShard(0), 1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pending(&reclaimer) > 0 {
            assert!(std::time::Instant::now() < deadline, "the first reclaim never started");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // The same table again at once: it waits for the interval, and settles queued
        // meanwhile join it rather than queue another job.
        reclaimer.queue(log_db.db(), GroupId::SharedShard(0), 1);
        reclaimer.queue(log_db.db(), GroupId::SharedShard(0), 1);
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert_eq!(pending(&reclaimer), 1, "the second reclaim did not wait");
        let started = std::time::Instant::now();
        reclaimer.stop();
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "a stop waited out the interval");
    }

    #[test]
    fn a_stopped_reclaimer_waits_for_its_thread_and_starts_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let log_db = kalamdb_log::LogDb::open(dir.path(), &crate::PROJECTION_CFS).unwrap();
        let reclaimer = Reclaimer::default();
        for table in 0..3 {
            reclaimer.queue(log_db.db(), GroupId::SharedShard(0), table);
        }
        assert!(has_thread(&reclaimer));
        reclaimer.stop();
        assert!(!has_thread(&reclaimer));
        reclaimer.queue(log_db.db(), GroupId::SharedShard(0), 9);
        assert!(!has_thread(&reclaimer));
        // A reclaimer stopped before its first table never starts a thread.
        let idle = Reclaimer::default();
        idle.stop();
        idle.queue(log_db.db(), GroupId::SharedShard(0), 1);
        assert!(!has_thread(&idle));
        // Stopping twice (the server's stop, then the drop) is harmless.
        reclaimer.stop();
    }
}
