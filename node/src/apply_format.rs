//! Moving every group to the highest apply format all its members allow (see
//! `kalamdb_projections::format`). For each group this node leads below the format it allows
//! itself (`storage.apply_format_max`), the node asks every member, learners included, what it
//! allows, and proposes `Op::SetFormat` with the lowest answer once that is above the group's
//! format. A member that does not answer holds its groups where they are; one that refuses the
//! question as a frame it cannot read is a build from before formats, which applies the first.
//!
//! So during a rolling upgrade nothing moves until the last node runs the new build, and an
//! operator who may still roll back holds the format with `storage.apply_format_max` on one
//! node. Membership checks the other side: a node that does not allow a group's format is not
//! added to it (`membership`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kalamdb_log::types::NodeId;
use kalamdb_log::{GroupId, Op};
use kalamdb_projections::format::FORMAT_FIRST;
use kalamdb_transport::wire::NodeInfo;

use crate::groups::Groups;

/// How often the groups this node leads are looked at.
pub const APPLY_FORMAT_TICK_MS: u64 = 5_000;
/// How long a member has to say which formats it allows.
pub const NODE_INFO_TIMEOUT_MS: u64 = 1_000;

impl Groups {
    /// What this node tells its peers it is.
    pub fn node_info(&self) -> NodeInfo {
        NodeInfo { node_id: self.node_id, apply_format_max: self.apply_format_max }
    }

    /// `group`'s apply format as this node has applied it.
    pub fn apply_format(&self, group: GroupId) -> std::result::Result<u32, String> {
        kalamdb_projections::format::load(self.rows.db(), group).map_err(|e| e.to_string())
    }

    /// The highest apply format `node` allows: this node's own setting, else what the node
    /// answers (the first format for a build from before formats); `Err` when it does not
    /// answer.
    pub async fn apply_format_max_of(&self, node: NodeId) -> std::result::Result<u32, String> {
        if node == self.node_id {
            return Ok(self.apply_format_max);
        }
        let Some(t) = &self.transport else {
            return Err(format!("node {node} is not reachable from a single node"));
        };
        match t.info(node, Duration::from_millis(NODE_INFO_TIMEOUT_MS)).await {
            Ok(Some(info)) => Ok(info.apply_format_max),
            Ok(None) => Ok(FORMAT_FIRST),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The format `group` may move to: the lowest any member allows (`answers` caches this tick's
/// answers); `None` while a member does not answer.
async fn allowed(groups: &Groups, group: GroupId, answers: &mut HashMap<NodeId, Option<u32>>) -> Option<u32> {
    let mut lowest = groups.apply_format_max;
    for member in groups.members_of(group) {
        let answer = match answers.get(&member) {
            Some(a) => *a,
            None => {
                let a = groups.apply_format_max_of(member).await;
                if let Err(e) = &a {
                    tracing::debug!(target: "kalamdb_raft", node = member, error = %e, "no answer about apply formats");
                }
                let a = a.ok();
                answers.insert(member, a);
                a
            }
        };
        lowest = lowest.min(answer?);
    }
    Some(lowest)
}

/// Look at every group once: publish this node's formats, and raise the ones it leads that
/// every member allows higher.
async fn tick(groups: &Groups) {
    // A member being added holds it: its group waits for the next tick.
    let Ok(_changing) = groups.format_change.try_lock() else {
        return;
    };
    let mut answers: HashMap<NodeId, Option<u32>> = HashMap::new();
    for group in groups.layout.all() {
        let current = match groups.apply_format(group) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(target: "kalamdb_raft", group = %group, error = %e, "cannot read the apply format");
                continue;
            }
        };
        metrics::gauge!("kalamdb_group_apply_format", "group" => group.to_string()).set(f64::from(current));
        if current >= groups.apply_format_max || !groups.leads(group) {
            continue;
        }
        let Some(target) = allowed(groups, group, &mut answers).await.filter(|t| *t > current) else {
            continue;
        };
        match groups.propose(group, Op::SetFormat { format: target }).await {
            Ok(_) => {
                tracing::info!(target: "kalamdb_raft", group = %group, from = current, to = target, "apply format raised")
            }
            Err(e) => {
                tracing::warn!(target: "kalamdb_raft", group = %group, error = %e, "raising the apply format failed")
            }
        }
    }
}

/// Run until the process ends.
pub async fn run(groups: Arc<Groups>) {
    let mut every = tokio::time::interval(Duration::from_millis(APPLY_FORMAT_TICK_MS));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        tick(&groups).await;
    }
}
