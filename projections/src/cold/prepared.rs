//! Flushes prepared off apply. A flush inside apply holds the group (every write and every
//! subscriber) while it reads and encodes its rows: ~40-80 ms for 100,000 rows, the whole
//! three-node tail p99 (benches/RESULTS.md, session 33). So the group's leader proposes
//! `PrepareFlush` first: at that entry each member takes a RocksDB snapshot and a thread of its
//! own writes the files of the rows before it (`flush::collect`), under temporary names. The
//! `FlushUpto` entry that follows flushes exactly the rows written before the preparation's
//! index, less any written over since; where the member's preparation holds exactly those rows
//! (no row key written since, on this member's watch, see `starts`, is one of the prepared
//! rows), apply only names its files, splitting their settling ranges at the keys written
//! since among them as its own read would (`Collected::fit`). Otherwise (a restart, an install, a key written
//! among the prepared ones, too many preparations at once) apply reads and writes them itself:
//! the same bytes, since the files hold what the rows are. A preparation changes no state,
//! so it changes no digest.

use std::thread::JoinHandle;
use std::time::Duration;

use super::flush::{Read, collect};
use super::*;

/// Preparations running or waiting for their `FlushUpto` on one node at once; past it a
/// `PrepareFlush` prepares nothing.
pub const PREPARED_FLUSHES_MAX: usize = 8;

/// Nice value of a preparation's thread (Linux: per thread), as the query runtime's: the
/// kernel weighs a runnable apply, Raft or HTTP thread about ten times it. Three replicas
/// preparing at once on two cores otherwise held everything else back for as long as the
/// flush did inside apply (benches/RESULTS.md, session 34).
pub const PREPARE_THREAD_NICE: i32 = 10;

/// A preparation older than this is not used, and makes room for others: its `FlushUpto`
/// normally follows within the node's `PREPARED_FLUSH_WAIT_MS_MAX` and as long again, so one this
/// old lost its leader. Well under [`ORPHAN_MARKER_AGE`], after which a node sharing the folder
/// may sweep the preparation's temp files.
pub const PREPARED_FLUSH_AGE_MAX: Duration = Duration::from_secs(300);

type TableKey = (u32, u64);

/// One table's preparation: its log index, the definition and apply format it was read
/// with, and the thread writing it.
struct Preparation {
    started: Instant,
    upto: u64,
    def: TableDef,
    format: u32,
    job: JoinHandle<Result<Collected>>,
}

/// The preparations of this node, by (group, table).
#[derive(Default)]
pub struct PreparedFlushes {
    jobs: Mutex<HashMap<TableKey, Preparation>>,
    used: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for PreparedFlushes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PreparedFlushes({} jobs)", self.lock().len())
    }
}

impl PreparedFlushes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TableKey, Preparation>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Prepare the whole flush of `def` at log index `upto` from the state `db` holds now for
    /// the group (called inside apply, before any later entry of the group applies): reads
    /// from `start` on (see `starts`) at apply `format`. Returns whether a preparation
    /// started; it replaces any earlier one of the table.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &self,
        db: Arc<DB>,
        group: GroupId,
        def: &TableDef,
        upto: u64,
        start: FlushStart,
        format: u32,
        files: Arc<FileStore>,
    ) -> bool {
        let key = (group.to_u32(), def.table_id);
        let mut jobs = self.lock();
        jobs.remove(&key);
        jobs.retain(|_, p| p.started.elapsed() < PREPARED_FLUSH_AGE_MAX);
        if jobs.len() >= PREPARED_FLUSHES_MAX {
            // Finished ones whose flush never came (a leader change) make room first.
            jobs.retain(|_, p| !p.job.is_finished());
            if jobs.len() >= PREPARED_FLUSHES_MAX {
                return false;
            }
        }
        // The thread takes its snapshot before this returns: apply goes on only after it, so
        // the snapshot holds exactly the state before the entries that follow.
        let (taken_tx, taken_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let job_def = def.clone();
        let spawned = std::thread::Builder::new().name("kalamdb-prepare".into()).spawn(move || {
            let snapshot = db.snapshot();
            let _ = taken_tx.send(());
            // Writes, Raft and subscribers first: the flush waits for its files anyway.
            if let Err(e) = rustix::process::setpriority_process(None, PREPARE_THREAD_NICE) {
                tracing::debug!(target: "kalamdb_storage", error = %e, "a preparation keeps normal priority");
            }
            let read = Read { db: &db, snapshot: Some(&snapshot) };
            let started = Instant::now();
            let collected = collect(read, group, &job_def, None, upto, start, format, &files, true);
            metrics::histogram!("kalamdb_storage_prepare_seconds").record(started.elapsed().as_secs_f64());
            collected
        });
        let Ok(job) = spawned else { return false };
        if taken_rx.recv().is_err() {
            // The thread ended before its snapshot: nothing was prepared.
            return false;
        }
        jobs.insert(key, Preparation { started: Instant::now(), upto, def: def.clone(), format, job });
        true
    }

    /// The log index of the table's preparation, and whether its files are written.
    pub fn status(&self, group: GroupId, table_id: u64) -> Option<(u64, bool)> {
        self.lock().get(&(group.to_u32(), table_id)).map(|p| (p.upto, p.job.is_finished()))
    }

    /// The table's preparation of `upto` for a flush of `def` at `format`, waited for, made
    /// what the flush reads at its own entry given `since`, the row keys written to the table
    /// since `upto` on this node's watch (`FlushStarts::take_written`; see
    /// [`Collected::fit`]). `None` when there is none, it was read with another definition
    /// or format, it failed, nothing watched the keys written since, or one of them replaced
    /// a prepared row.
    pub fn take(
        &self,
        group: GroupId,
        def: &TableDef,
        upto: u64,
        format: u32,
        since: Option<&Written>,
    ) -> Option<Collected> {
        let prep = self.lock().remove(&(group.to_u32(), def.table_id))?;
        let expired = prep.started.elapsed() >= PREPARED_FLUSH_AGE_MAX;
        let collected = if prep.upto != upto || prep.def != *def || prep.format != format || expired {
            None
        } else {
            // A member behind the leader's preparation waits for its own here, holding apply.
            let waiting = (!prep.job.is_finished()).then(Instant::now);
            let joined = prep.job.join();
            if let Some(since) = waiting {
                metrics::histogram!("kalamdb_storage_prepare_wait_seconds").record(since.elapsed().as_secs_f64());
            }
            match joined {
                Ok(Ok(collected)) if collected.files_exist() => Some(collected),
                Ok(Ok(_)) => {
                    tracing::warn!(target: "kalamdb_storage", group = %group, table_id = def.table_id,
                        "a prepared flush's temp files are gone; the flush reads its rows itself");
                    None
                }
                Ok(Err(e)) => {
                    tracing::warn!(target: "kalamdb_storage", group = %group, table_id = def.table_id, error = %e,
                        "a prepared flush failed; the flush reads its rows itself");
                    None
                }
                Err(_) => {
                    tracing::warn!(target: "kalamdb_storage", group = %group, table_id = def.table_id,
                        "a prepared flush panicked; the flush reads its rows itself");
                    None
                }
            }
        };
        let usable = collected.and_then(|mut c| {
            let fits = match since {
                Some(Written { keys: Some(keys), .. }) => {
                    let mut keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
                    keys.sort_unstable();
                    keys.dedup();
                    c.fit(&keys)
                }
                // Too many keys to place: only keys after every prepared row leave it whole.
                Some(Written { keys: None, smallest }) => {
                    smallest.as_deref().is_none_or(|s| c.last_row_key().is_none_or(|last| s > last))
                }
                None => false,
            };
            fits.then_some(c)
        });
        let counter = if usable.is_some() { &self.used } else { &self.refused };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        usable
    }

    /// Preparations a flush used, and those it found and could not use.
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.used.load(Relaxed), self.refused.load(Relaxed))
    }

    /// The group's state was replaced: its preparations no longer hold its rows. Their
    /// threads finish on their own and remove their files.
    pub fn forget_group(&self, group: GroupId) {
        let g = group.to_u32();
        self.lock().retain(|(kg, _), _| *kg != g);
    }
}
