//! Background retention: trimming this node's change records to `tail.retention_entries` per
//! group, and expiring STREAM table rows by TTL. An expiry is a log entry (`Op::Evict`)
//! proposed by the group's leader with the TTL already turned into a log position, so every
//! node removes the same rows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kalamdb_log::{GroupId, Op, OpResult};
use kalamdb_projections::changes;
use kalamdb_projections::stored::make_seq;

use crate::groups::Groups;

/// How often change records are trimmed.
pub const CHANGE_TRIM_TICK_MS: u64 = 2_000;
/// How often STREAM tables are checked for expired rows.
pub const STREAM_TTL_TICK_MS: u64 = 1_000;

/// Keep the newest `keep_entries` change records of every group (local, not replicated).
pub async fn run_change_retention(groups: Arc<Groups>, keep_entries: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(CHANGE_TRIM_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let g2 = groups.clone();
        let done = tokio::task::spawn_blocking(move || {
            for id in g2.layout.all() {
                let Some(g) = g2.groups.get(&id) else { continue };
                let applied = *g.applied.borrow();
                if applied <= keep_entries {
                    continue;
                }
                let new_floor = applied - keep_entries + 1;
                match changes::trim(g2.rows.db(), id, new_floor) {
                    Ok(true) => tracing::debug!(target: "kalamdb_tail", group = %id, floor = new_floor, "change records trimmed"),
                    Ok(false) => {}
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
        let now = kalamdb_log::LogCommand::now(Vec::new()).committed_at_micros;
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
