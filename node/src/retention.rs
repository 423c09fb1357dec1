//! Background retention: snapshotting and purging each group's Raft log by its size on disk,
//! trimming this node's change records to `tail.retention_entries` and `tail.retention_bytes`
//! per group (and giving the trimmed space back), and expiring STREAM table rows by TTL. An
//! expiry is a log entry (`Op::Evict`) proposed by the group's leader with the TTL already
//! turned into a log position, so every node removes the same rows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kalamdb_log::storage::{approximate_log_bytes, compact_purged};
use kalamdb_log::{GroupId, Op, OpResult};
use kalamdb_projections::changes;
use kalamdb_projections::stored::make_seq;

use crate::groups::Groups;

/// How often change records are trimmed.
pub const CHANGE_TRIM_TICK_MS: u64 = 2_000;
/// Trimmed change records below the floor worth a compaction of their range.
pub const CHANGE_DEAD_BYTES_MIN: u64 = 8 << 20;
/// How often each group's log size is checked.
pub const LOG_RETENTION_TICK_MS: u64 = 5_000;
/// Purged log entries still on disk worth a compaction of their range.
pub const LOG_DEAD_BYTES_MIN: u64 = 8 << 20;
/// A purge that would free less than this is not worth openraft's bookkeeping.
pub const LOG_PURGE_BYTES_MIN: u64 = 1 << 20;
/// A group whose state grew to at least this size since its last snapshot, and then shrank to
/// half of that (a flush moved its rows to Parquet files), gets a new snapshot, so the log
/// that wrote those rows can go.
pub const STATE_SHRINK_BYTES_MIN: u64 = 32 << 20;
/// A snapshot copies the group's whole state, so the log since the last one must also have
/// reached this many times the state's bytes before its size asks for another: building
/// snapshots then costs about what writing the log did, however large the state grows. With
/// a fixed 128 MiB, a bulk load re-exported its growing table every 128 MiB of log, on every
/// node: a tenth of the machine's CPU (benches/RESULTS.md, session 22).
pub const SNAPSHOT_LOG_PER_STATE_BYTES: u64 = 1;
/// How often STREAM tables are checked for expired rows.
pub const STREAM_TTL_TICK_MS: u64 = 1_000;

/// Keep the newest `keep_entries` change records of every group, and no more than
/// `keep_bytes` of them on disk (local, not replicated).
pub async fn run_change_retention(groups: Arc<Groups>, keep_entries: u64, keep_bytes: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(CHANGE_TRIM_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let g2 = groups.clone();
        let done = tokio::task::spawn_blocking(move || {
            for id in g2.layout.all() {
                let Some(g) = g2.groups.get(&id) else { continue };
                let applied = *g.applied.borrow();
                match changes::retain(g2.rows.db(), id, applied, keep_entries, keep_bytes, CHANGE_DEAD_BYTES_MIN) {
                    Ok(r) if r.trimmed || r.compacted => {
                        tracing::debug!(target: "kalamdb_tail", group = %id, floor = r.floor, compacted = r.compacted, "change records trimmed")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(target: "kalamdb_tail", group = %id, error = %e, "cannot trim change records"),
                }
            }
        })
        .await;
        if done.is_err() {
            tracing::warn!(target: "kalamdb_tail", "change retention task panicked");
        }
    }
}

/// openraft's snapshot policy counts entries; this adds bytes: every group whose entries since
/// its last snapshot take `since_last_bytes` on disk gets a snapshot, and the log behind a
/// snapshot is purged down to `keep_bytes` (openraft purges by `raft.logs_to_keep` entries on
/// its own; whichever keeps less wins). Each node does this for its own copy, like openraft's
/// policy; a follower that falls behind a purge catches up by snapshot.
pub async fn run_log_retention(groups: Arc<Groups>, since_last_bytes: u64, keep_bytes: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(LOG_RETENTION_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Per group: the snapshot index last seen and the largest size of its state since.
    let mut at_snapshot: HashMap<GroupId, (u64, u64)> = HashMap::new();
    loop {
        tick.tick().await;
        for id in groups.layout.all() {
            let Some(g) = groups.groups.get(&id) else { continue };
            let m = g.raft.metrics().borrow().clone();
            let index = |l: Option<kalamdb_log::types::LogId>| l.map_or(0, |l| l.index);
            let (last, snapshot, purged) = (m.last_log_index.unwrap_or(0), index(m.snapshot), index(m.purged));
            let db = groups.rows.db().clone();
            let sized = tokio::task::spawn_blocking(move || {
                // What an earlier purge left on disk goes first.
                if compact_purged(&db, id, purged, LOG_DEAD_BYTES_MIN).map_err(|e| e.to_string())? {
                    tracing::debug!(target: "kalamdb_raft", group = %id, purged, "purged log entries compacted");
                }
                let state = kalamdb_projections::approximate_state_bytes(&db, id).map_err(|e| e.to_string())?;
                let bytes = |from, to| approximate_log_bytes(&db, id, from, to);
                let at = LogPositions { last, snapshot, purged };
                let since_last = snapshot_log_bytes(since_last_bytes, state);
                let plan = log_plan(at, since_last, keep_bytes, bytes).map_err(|e| e.to_string())?;
                Ok::<_, String>((state, plan))
            })
            .await;
            let (state, plan) = match sized {
                Ok(Ok(sized)) => sized,
                Ok(Err(e)) => {
                    tracing::warn!(target: "kalamdb_raft", group = %id, error = %e, "cannot size the log or the state");
                    continue;
                }
                Err(_) => continue,
            };
            let baseline = at_snapshot.entry(id).or_insert((snapshot, state));
            if baseline.0 == snapshot {
                baseline.1 = baseline.1.max(state);
            } else {
                *baseline = (snapshot, state);
            }
            let shrank = last > snapshot && baseline.1 >= STATE_SHRINK_BYTES_MIN && state < baseline.1 / 2;
            let plan = LogPlan { snapshot: plan.snapshot || shrank, ..plan };
            if plan.snapshot {
                tracing::debug!(target: "kalamdb_raft", group = %id, snapshot, last, shrank, "snapshot by size");
                let _ = g.raft.trigger().snapshot().await;
            }
            if let Some(upto) = plan.purge_upto {
                tracing::debug!(target: "kalamdb_raft", group = %id, upto, "purging the log by size");
                let _ = g.raft.trigger().purge_log(upto).await;
            }
        }
    }
}

/// Bytes of log since the last snapshot that ask for a new one: the configured amount, or the
/// state's size times [`SNAPSHOT_LOG_PER_STATE_BYTES`] when larger.
fn snapshot_log_bytes(since_last_bytes: u64, state_bytes: u64) -> u64 {
    since_last_bytes.max(state_bytes.saturating_mul(SNAPSHOT_LOG_PER_STATE_BYTES))
}

/// Where a group's log stands, by index.
#[derive(Debug, Clone, Copy)]
struct LogPositions {
    last: u64,
    snapshot: u64,
    purged: u64,
}

/// What the log retention does to one group.
#[derive(Debug, PartialEq, Eq)]
struct LogPlan {
    snapshot: bool,
    purge_upto: Option<u64>,
}

/// The plan for one group at `at`, `bytes(from, to)` being the on-disk size of entries
/// `from..=to`.
fn log_plan(
    at: LogPositions,
    since_last_bytes: u64,
    keep_bytes: u64,
    bytes: impl Fn(u64, u64) -> kalamdb_log::error::Result<u64>,
) -> kalamdb_log::error::Result<LogPlan> {
    let snapshot = at.last > at.snapshot && bytes(at.snapshot + 1, at.last)? >= since_last_bytes;
    // The lowest `upto` (at most the snapshot's index) that leaves `keep_bytes` or less behind.
    let mut purge_upto = None;
    if at.snapshot > at.purged && bytes(at.purged + 1, at.last)? > keep_bytes {
        let (mut lo, mut hi) = (at.purged, at.snapshot);
        if bytes(hi + 1, at.last)? <= keep_bytes {
            // Invariant: purging to `lo` keeps too much, purging to `hi` does not.
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if bytes(mid + 1, at.last)? <= keep_bytes {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
        }
        if bytes(at.purged + 1, hi)? >= LOG_PURGE_BYTES_MIN {
            purge_upto = Some(hi);
        }
    }
    Ok(LogPlan { snapshot, purge_upto })
}

/// Propose `Evict` for STREAM tables with a TTL, in the user shards this node leads, when
/// rows older than the TTL may exist.
pub async fn run_stream_ttl(groups: Arc<Groups>) {
    let mut tick = tokio::time::interval(Duration::from_millis(STREAM_TTL_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // (group, table) → the log index below which rows were last expired. Absent after a
    // start: the first check proposes unconditionally (rows from before the change floor
    // cannot be seen in the records).
    let mut expired_below: HashMap<(GroupId, u64), u64> = HashMap::new();
    loop {
        tick.tick().await;
        let tables: Vec<(u64, u64)> = {
            let st = groups.catalog.read();
            st.tables.values().filter_map(|t| kalamdb_query::ttl_secs(t).map(|ttl| (t.table_id, ttl))).collect()
        };
        if tables.is_empty() {
            continue;
        }
        let now = kalamdb_log::command::now_micros();
        for id in groups.layout.all() {
            if !matches!(id, GroupId::UserShard(_)) || !groups.leads(id) {
                continue;
            }
            let Some(g) = groups.groups.get(&id) else { continue };
            let applied = *g.applied.borrow();
            for (table_id, ttl) in &tables {
                let cutoff = now - (*ttl as i64) * 1_000_000;
                let db = groups.rows.db();
                let Ok(Some(last_old)) = changes::index_before(db, id, cutoff, applied) else { continue };
                let below = last_old + 1;
                let key = (id, *table_id);
                let due = match expired_below.get(&key) {
                    None => true,
                    Some(prev) if *prev >= below => false,
                    Some(prev) => changes::writes_table(db, id, *table_id, *prev, last_old).unwrap_or(true),
                };
                if !due {
                    continue;
                }
                let op = Op::Evict { table_id: *table_id, before_seq: make_seq(below, 0) };
                match groups.propose(id, op).await {
                    Ok(OpResult::Done { affected }) => {
                        metrics::counter!("kalamdb_stream_evictions_total").increment(1);
                        if affected > 0 {
                            tracing::debug!(target: "kalamdb_storage", group = %id, table_id, rows = affected, below, "stream rows expired");
                        }
                        expired_below.insert(key, below);
                    }
                    Ok(other) => {
                        tracing::warn!(target: "kalamdb_storage", group = %id, result = ?other, "stream expiry refused")
                    }
                    Err(e) => {
                        tracing::warn!(target: "kalamdb_storage", group = %id, error = %e, "stream expiry failed")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// A log whose entries take 1 MiB each.
    fn one_mib_each(from: u64, to: u64) -> kalamdb_log::error::Result<u64> {
        Ok(if from > to { 0 } else { (to - from + 1) * MIB })
    }

    fn plan(last: u64, snapshot: u64, purged: u64) -> LogPlan {
        log_plan(LogPositions { last, snapshot, purged }, 128 * MIB, 32 * MIB, one_mib_each).unwrap()
    }

    #[test]
    fn a_large_state_waits_for_as_much_log_before_its_next_snapshot() {
        assert_eq!(snapshot_log_bytes(128 * MIB, 0), 128 * MIB);
        assert_eq!(snapshot_log_bytes(128 * MIB, 100 * MIB), 128 * MIB);
        assert_eq!(snapshot_log_bytes(128 * MIB, 900 * MIB), 900 * MIB * SNAPSHOT_LOG_PER_STATE_BYTES);
        assert_eq!(snapshot_log_bytes(128 * MIB, u64::MAX), u64::MAX);
        // 600 MiB of log since the snapshot: enough for a 500 MiB state, not for a 1 GiB one.
        let at = LogPositions { last: 600, snapshot: 0, purged: 0 };
        let plan = |state| log_plan(at, snapshot_log_bytes(128 * MIB, state), 32 * MIB, one_mib_each).unwrap();
        assert!(plan(500 * MIB).snapshot);
        assert!(!plan(1024 * MIB).snapshot);
    }

    #[test]
    fn the_log_is_snapshotted_and_purged_by_its_size() {
        // Small log: nothing to do.
        assert_eq!(plan(100, 0, 0), LogPlan { snapshot: false, purge_upto: None });
        // 128 MiB since the last snapshot: build one; nothing in a snapshot yet to purge.
        assert_eq!(plan(128, 0, 0), LogPlan { snapshot: true, purge_upto: None });
        // A snapshot at 200 of 210: keep the last 32 MiB (entries 179..=210), purge to 178.
        assert_eq!(plan(210, 200, 0), LogPlan { snapshot: false, purge_upto: Some(178) });
        // Already purged there: nothing more.
        assert_eq!(plan(210, 200, 178), LogPlan { snapshot: false, purge_upto: None });
        // More than 32 MiB after the snapshot: purge no further than the snapshot.
        assert_eq!(plan(300, 200, 100), LogPlan { snapshot: false, purge_upto: Some(200) });
        // And 160 MiB since the snapshot also asks for a new one.
        assert_eq!(plan(360, 200, 100), LogPlan { snapshot: true, purge_upto: Some(200) });
        // 32.5 MiB behind, but the purge would free 500 KiB (< LOG_PURGE_BYTES_MIN): it waits.
        let tiny = |from: u64, to: u64| Ok(if from > to { 0 } else { (to - from + 1) * 1024 });
        let p = log_plan(LogPositions { last: 40_000, snapshot: 39_000, purged: 6_732 }, 128 * MIB, 32 * MIB, tiny);
        assert_eq!(p.unwrap(), LogPlan { snapshot: false, purge_upto: None });
    }
}
