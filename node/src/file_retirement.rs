//! Deleting retired Parquet files once no member can need them: for each data group this node
//! leads, when the group's oldest retired file was retired at or before the applied index of
//! every member (this node's own, the others' from their status answers), and has been for the
//! grace period, propose `Op::DeleteRetired` up to the lowest applied index. A member that does
//! not answer holds every delete back: it may come back and replay the entries that read the
//! files (see `kalamdb_projections::cold::retire`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kalamdb_log::{GroupId, Op};

use crate::groups::Groups;

/// How often retired files are looked at.
pub const FILE_RETIREMENT_TICK_MS: u64 = 2000;

/// The lowest applied index of `group` over its members, from the gathered statuses, lowered
/// to any index whose files a member still copies (`files_needed_from`); `None` when a member
/// did not answer.
fn lowest_applied(
    groups: &Groups,
    group: GroupId,
    statuses: &[kalamdb_transport::wire::StatusResponse],
) -> Option<u64> {
    let mut lowest = u64::MAX;
    for member in groups.members_of(group) {
        let status = statuses.iter().find(|s| s.node_id == member)?;
        let g = status.groups.iter().find(|g| g.group == group.to_u32())?;
        lowest = lowest.min(g.applied_index).min(g.files_needed_from);
    }
    (lowest != u64::MAX).then_some(lowest)
}

/// Run until the process ends. Failures are logged and retried at the next tick.
pub async fn run(groups: Arc<Groups>, grace: Duration) {
    let mut tick = tokio::time::interval(Duration::from_millis(FILE_RETIREMENT_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Per group: the oldest retired file's index and when every member was first seen past it.
    let mut eligible_since: HashMap<GroupId, (u64, Instant)> = HashMap::new();
    loop {
        tick.tick().await;
        let mut pending: Vec<(GroupId, u64)> = Vec::new();
        for group in groups.layout.all() {
            if matches!(group, GroupId::Meta(_)) || !groups.leads(group) {
                eligible_since.remove(&group);
                continue;
            }
            match kalamdb_projections::cold::oldest_retired(groups.rows.db(), group) {
                Ok(Some(oldest)) => pending.push((group, oldest)),
                Ok(None) => {
                    eligible_since.remove(&group);
                }
                Err(e) => {
                    tracing::warn!(target: "kalamdb_storage", group = %group, error = %e, "cannot read retired files")
                }
            }
        }
        if pending.is_empty() {
            continue;
        }
        let (statuses, _) = crate::cluster::gather(&groups, true).await;
        for (group, oldest) in pending {
            let Some(upto) = lowest_applied(&groups, group, &statuses).filter(|a| *a >= oldest) else {
                eligible_since.remove(&group);
                continue;
            };
            let since = eligible_since.entry(group).or_insert((oldest, Instant::now()));
            if since.0 != oldest {
                *since = (oldest, Instant::now());
            }
            if since.1.elapsed() < grace {
                continue;
            }
            match groups.propose(group, Op::DeleteRetired { upto }).await {
                Ok(_) => {
                    eligible_since.remove(&group);
                }
                Err(e) => {
                    tracing::warn!(target: "kalamdb_storage", group = %group, error = %e, "deleting retired files failed")
                }
            }
        }
    }
}
