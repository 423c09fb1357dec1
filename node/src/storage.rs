//! Automatic flush and compaction: a per-node task that proposes `Flush` (or, from apply
//! format 4, `PrepareFlush` and `FlushUpto`) for tables whose flush policy is due (in the
//! groups this node leads), `Settle` for the rows a flush left
//! in RocksDB, and `Compact` for table scopes that have gathered many files. The ops go
//! through the log like a user's `STORAGE FLUSH`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kalamdb_log::{GroupId, MetaGroup, Op, OpResult, TableDef};
use kalamdb_projections::format::FORMAT_PREPARED_FLUSH;
use kalamdb_query::FlushPolicy;

use crate::groups::Groups;

/// How often the policy is checked.
pub const AUTO_FLUSH_TICK_MS: u64 = 1000;
/// While the bucket is unreachable every due flush fails its check: warn once this often.
pub const STORAGE_DOWN_WARN_SECS: u64 = 60;
/// `Settle` ops proposed per table and tick at most (each settles up to
/// `SETTLE_ROWS_MAX` rows); the rest waits for the next tick, so one large flush does not
/// keep the other tables' policies from being checked.
pub const SETTLE_OPS_PER_TICK_MAX: usize = 512;
/// Ticks between looks at every table for rows left to settle: flushes mark their tables as
/// they apply, but that mark is lost with a restart.
pub const SETTLE_SWEEP_TICKS: u64 = 30;
/// After each automatic `Settle` the leader waits this share of the time the op took (in
/// percent) before it proposes the next. Back to back, a flush's ~100 settles kept apply busy
/// for half a second with entries of ~1,024 row deletes each, and every write committed
/// meanwhile waited behind one: that is most of the tail's p99 (benches/RESULTS.md, session
/// 18). Paced, writes get the apply thread between settles; settling takes longer, which costs
/// only the disk space of the flushed rows a little longer (reads take them from the files).
pub const SETTLE_PAUSE_PCT: u32 = 100;
/// Upper bound of one pause, whatever a slow `Settle` took.
pub const SETTLE_PAUSE_MS_MAX: u64 = 50;
/// Rows a table's flushes may leave unsettled before settling stops yielding to writes. The
/// pacing above settles one op per round trip and pauses as long again: under a sustained
/// bulk load (130k rows/s, commits ~20 ms) that took ~12k rows/s, so the flushed rows piled
/// up in RocksDB without bound, each one a second copy of a row already in a file, and every
/// RocksDB compaction of `rows` rewrote them all (benches/RESULTS.md, session 26). Past this
/// many, settling runs [`SETTLE_CATCH_UP_OPS`] ops at once with no pause and no tick budget
/// until the backlog is back under it; writes then share apply with it.
pub const SETTLE_BACKLOG_ROWS_MAX: u64 = 1 << 20;
/// `Settle` ops proposed together while a table catches up: they apply one after another,
/// each where the last stopped, and their round trips overlap.
pub const SETTLE_CATCH_UP_OPS: usize = 8;
/// Wall time one tick spends settling at most, over all tables; the rest waits for the next
/// tick. Settling runs before the tick's flush checks, and paced settles take twice their own
/// time, so without a bound a large backlog (up to [`SETTLE_OPS_PER_TICK_MAX`] ops a table)
/// would hold a due flush back by tens of seconds.
pub const SETTLE_TICK_BUDGET_MS: u64 = 500;

/// How long an automatic flush waits for this node's preparation of it before proposing
/// the flush anyway: a member whose preparation is not done waits for it inside apply.
pub const PREPARED_FLUSH_WAIT_MS_MAX: u64 = 30_000;
/// How often that wait looks.
pub const PREPARED_FLUSH_POLL_MS: u64 = 2;
/// After its own preparation, the leader waits this share of the time it took (in percent)
/// before proposing the flush: the followers' preparations ran 1.5-1.8× as long as the
/// leader's under the tail benchmark's load, and a follower whose preparation is not done
/// holds its apply until it is (22-90 ms, benches/RESULTS.md, session 34).
pub const PREPARED_FLUSH_MARGIN_PCT: u32 = 100;

/// The table's policy: its `FLUSH_POLICY` option, else the node default.
fn policy_of(def: &TableDef, default: FlushPolicy) -> FlushPolicy {
    def.options
        .iter()
        .find(|(k, _)| k == "FLUSH_POLICY")
        .and_then(|(_, v)| FlushPolicy::parse(v).ok())
        .unwrap_or(default)
}

fn due(policy: FlushPolicy, rows: u64, since: Duration) -> bool {
    rows > 0 && (policy.rows.is_some_and(|n| rows >= n) || policy.interval_secs.is_some_and(|s| since.as_secs() >= s))
}

/// Run until the process ends. Failures are logged and retried at the next tick.
pub async fn run_auto_flush(groups: Arc<Groups>, default: FlushPolicy, compact_files_min: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(AUTO_FLUSH_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut storage_down_warned: Option<std::time::Instant> = None;
    let mut unsettled: HashSet<(GroupId, u64)> = HashSet::new();
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        if ticks.is_multiple_of(SETTLE_SWEEP_TICKS) {
            let tables: Vec<u64> = groups.catalog.read().by_id.keys().copied().collect();
            for group in
                groups.layout.all().into_iter().filter(|g| matches!(g, GroupId::UserShard(_) | GroupId::SharedShard(_)))
            {
                unsettled.extend(tables.iter().map(|t| (group, *t)));
            }
        }
        ticks += 1;
        unsettled.extend(groups.storage.settles.take());
        unsettled = settle_due(&groups, std::mem::take(&mut unsettled)).await;
        // The definition a flush or compaction carries decides the columns its files hold, so
        // it must not lag this node's catalog replica behind an `ADD COLUMN` whose values are
        // already in the rows: read the catalog at its leader's commit index first (once per
        // tick, and only when something is due).
        let mut catalog_read = false;
        for (group, table_id, rows, since) in groups.storage.hot.list() {
            if !groups.leads(group) {
                continue;
            }
            let Some(def) = groups.catalog.table_by_id(table_id) else { continue };
            // STREAM tables expire by TTL instead (see `retention`); they never flush.
            if def.table_type == kalamdb_log::TableType::Stream {
                continue;
            }
            if !due(policy_of(&def, default), rows, since) {
                continue;
            }
            if !catalog_read {
                if let Err(e) = groups.read_barrier(GroupId::Meta(MetaGroup::Catalog)).await {
                    tracing::warn!(target: "kalamdb_storage", error = %e, "automatic flushes wait for the catalog");
                    break;
                }
                catalog_read = true;
            }
            let Some(def) = groups.catalog.table_by_id(table_id) else { continue };
            let table = (*def).clone();
            match propose_whole_flush(&groups, group, &table).await {
                Ok(OpResult::Done { affected }) => {
                    tracing::info!(target: "kalamdb_storage", group = %group, table = %format!("{}.{}", def.namespace, def.name), rows = affected, "automatic flush");
                }
                Ok(other) => {
                    tracing::warn!(target: "kalamdb_storage", group = %group, result = ?other, "automatic flush refused")
                }
                Err(crate::groups::GroupError::StorageUnavailable(e)) => {
                    // Rows stay hot; the next tick tries again.
                    if storage_down_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(STORAGE_DOWN_WARN_SECS)) {
                        tracing::warn!(target: "kalamdb_storage", error = %e, "automatic flushes wait for the bucket");
                        storage_down_warned = Some(std::time::Instant::now());
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(target: "kalamdb_storage", group = %group, error = %e, "automatic flush failed")
                }
            }
            compact_if_needed(&groups, group, table, compact_files_min).await;
        }
    }
}

/// Propose the flush of a whole table: from apply format 4, a `PrepareFlush` first, and the
/// `FlushUpto` of its rows once this node's preparation has written them (see
/// `kalamdb_projections::cold::prepared`), so no member's apply holds the group while the
/// files are written; a plain `Flush` before that format, or when this node prepared nothing.
/// `FLUSH TABLE` takes this path too, from whichever node received the statement.
pub(crate) async fn propose_whole_flush(
    groups: &Groups,
    group: GroupId,
    table: &TableDef,
) -> std::result::Result<OpResult, crate::groups::GroupError> {
    let plain = || groups.propose(group, Op::Flush { table: table.clone(), scope: None });
    if groups.apply_format(group).map_or(true, |f| f < FORMAT_PREPARED_FLUSH) {
        return plain().await;
    }
    match groups.propose(group, Op::PrepareFlush { table: table.clone() }).await? {
        OpResult::Done { .. } => {}
        other => return Ok(other),
    }
    // The preparation this node waits for is the one its own apply of `PrepareFlush`
    // started: off the leader (a statement received by a follower), apply that far first.
    if !groups.leads(group) {
        groups.read_barrier(group).await?;
    }
    let Some((upto, _)) = groups.storage.prepared.status(group, table.table_id) else {
        return plain().await;
    };
    let started = Instant::now();
    let deadline = started + Duration::from_millis(PREPARED_FLUSH_WAIT_MS_MAX);
    while Instant::now() < deadline
        && groups.storage.prepared.status(group, table.table_id).is_some_and(|(at, done)| at == upto && !done)
    {
        tokio::time::sleep(Duration::from_millis(PREPARED_FLUSH_POLL_MS)).await;
    }
    // The followers' preparations are behind this one: give them as long again. A group
    // with one voter has nobody to wait for.
    let margin = if groups.voters_of(group).len() <= 1 {
        Duration::ZERO
    } else {
        started.elapsed() * PREPARED_FLUSH_MARGIN_PCT / 100
    };
    tokio::time::sleep(margin.min(deadline.saturating_duration_since(Instant::now()))).await;
    groups.propose(group, Op::FlushUpto { table: table.clone(), upto }).await
}

/// Propose `Settle` ops for the tables in `due` (in the groups this node leads) until their
/// flushed rows are settled or the tick's share is spent; returns the tables left to settle.
async fn settle_due(groups: &Groups, due: HashSet<(GroupId, u64)>) -> HashSet<(GroupId, u64)> {
    // A follower's mark is dropped: the leader's own apply of the flush marked it there.
    let led: Vec<(GroupId, u64)> = due.into_iter().filter(|(group, _)| groups.leads(*group)).collect();
    if led.is_empty() {
        return HashSet::new();
    }
    // Listing reads every (group, table)'s cold records: the sweep's share is the whole
    // catalog, so it runs off the runtime's threads.
    let db = groups.rows.db().clone();
    let listed = tokio::task::spawn_blocking(move || {
        led.into_iter()
            .map(|(group, table_id)| {
                (group, table_id, kalamdb_projections::cold::unsettled_scopes(&db, group, table_id))
            })
            .collect::<Vec<_>>()
    })
    .await;
    let listed = match listed {
        Ok(listed) => listed,
        Err(e) => {
            tracing::warn!(target: "kalamdb_storage", error = %e, "cannot list scopes to settle");
            return HashSet::new();
        }
    };
    let mut left = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(SETTLE_TICK_BUDGET_MS);
    for (group, table_id, scopes) in listed {
        let scopes = match scopes {
            Ok(scopes) => scopes,
            Err(e) => {
                tracing::warn!(target: "kalamdb_storage", group = %group, table_id, error = %e, "cannot list scopes to settle");
                continue;
            }
        };
        if settle_scopes(groups, group, table_id, scopes, deadline).await {
            groups.storage.settles.cleared(group, table_id);
        } else {
            left.insert((group, table_id));
        }
    }
    left
}

/// Settle `scopes` of one table in order, each op resuming where the last stopped, at most
/// [`SETTLE_OPS_PER_TICK_MAX`] ops and none started after `deadline` (unless the table is
/// past [`SETTLE_BACKLOG_ROWS_MAX`]); false when some are left for the next tick.
async fn settle_scopes(
    groups: &Groups,
    group: GroupId,
    table_id: u64,
    scopes: Vec<String>,
    deadline: tokio::time::Instant,
) -> bool {
    let mut ops = 0;
    for scope in scopes {
        loop {
            let behind = groups.storage.settles.backlog(group, table_id) > SETTLE_BACKLOG_ROWS_MAX;
            if ops >= SETTLE_OPS_PER_TICK_MAX || (!behind && tokio::time::Instant::now() >= deadline) {
                return false;
            }
            if behind {
                ops += SETTLE_CATCH_UP_OPS;
                match catch_up(groups, group, table_id, &scope).await {
                    Some(true) => continue,
                    Some(false) => break,
                    None => return false,
                }
            }
            ops += 1;
            let op = Op::Settle { table_id, scope: scope.clone() };
            let started = tokio::time::Instant::now();
            match groups.propose(group, op).await {
                Ok(OpResult::Settled { more: false, .. }) => break,
                Ok(OpResult::Settled { more: true, .. }) => tokio::time::sleep(settle_pause(started.elapsed())).await,
                other => {
                    tracing::warn!(target: "kalamdb_storage", group = %group, table_id, result = ?other, "settle failed");
                    return false;
                }
            }
        }
    }
    true
}

/// [`SETTLE_CATCH_UP_OPS`] settles of one scope proposed at once: `Some(true)` while rows
/// are left, `Some(false)` once the scope is settled, `None` if one failed.
async fn catch_up(groups: &Groups, group: GroupId, table_id: u64, scope: &str) -> Option<bool> {
    let settles = (0..SETTLE_CATCH_UP_OPS).map(|_| groups.propose(group, Op::Settle { table_id, scope: scope.into() }));
    let mut more = true;
    for result in futures::future::join_all(settles).await {
        match result {
            Ok(OpResult::Settled { more: m, .. }) => more &= m,
            other => {
                tracing::warn!(target: "kalamdb_storage", group = %group, table_id, result = ?other, "settle failed");
                return None;
            }
        }
    }
    Some(more)
}

/// The pause after an automatic `Settle` that took `took` (see [`SETTLE_PAUSE_PCT`]).
fn settle_pause(took: Duration) -> Duration {
    (took * SETTLE_PAUSE_PCT / 100).min(Duration::from_millis(SETTLE_PAUSE_MS_MAX))
}

async fn compact_if_needed(groups: &Groups, group: GroupId, table: TableDef, compact_files_min: u64) {
    let due = match kalamdb_projections::cold::compaction_due(groups.rows.db(), group, table.table_id) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(target: "kalamdb_storage", group = %group, error = %e, "cannot count cold files");
            return;
        }
    };
    // Enough new files to merge, or a sealed range with many superseded versions to rewrite.
    if due.iter().all(|d| d.tail_files < compact_files_min && d.sealed_rewrites == 0) {
        return;
    }
    if let Err(e) = groups.propose(group, Op::Compact { table, scope: None }).await {
        tracing::warn!(target: "kalamdb_storage", group = %group, error = %e, "automatic compaction failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_is_due_by_rows_or_interval() {
        let p = FlushPolicy { rows: Some(10), interval_secs: Some(60) };
        assert!(!due(p, 0, Duration::from_secs(600)), "nothing written, nothing to flush");
        assert!(!due(p, 9, Duration::from_secs(59)));
        assert!(due(p, 10, Duration::from_secs(0)));
        assert!(due(p, 1, Duration::from_secs(60)));
        assert!(!due(FlushPolicy { rows: Some(10), interval_secs: None }, 5, Duration::from_secs(9999)));
    }

    #[test]
    fn settle_pauses_follow_the_op_and_are_bounded() {
        assert_eq!(settle_pause(Duration::from_millis(4)), Duration::from_millis(4) * SETTLE_PAUSE_PCT / 100);
        assert_eq!(settle_pause(Duration::ZERO), Duration::ZERO);
        assert_eq!(settle_pause(Duration::from_secs(10)), Duration::from_millis(SETTLE_PAUSE_MS_MAX));
    }
}
