//! `CLUSTER` statements carried out on this node (`kalamdb_query::ClusterControl`): leadership
//! transfers to a named node, stepping down, an immediate rebalancing pass, and adding or
//! removing a node. The moves themselves are `groups::leadership` and `groups::membership`.

use std::sync::Arc;

use async_trait::async_trait;
use kalamdb_log::GroupId;
use kalamdb_log::types::NodeAddr;
use kalamdb_query::{ClusterCommand, ClusterControl, LeadershipChange, MembershipChange};

use crate::groups::Groups;

#[derive(Clone)]
pub struct NodeControl(pub Arc<Groups>);

impl std::fmt::Debug for NodeControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeControl").field("node_id", &self.0.node_id).finish()
    }
}

impl NodeControl {
    async fn transfer(&self, group: GroupId, to: u64) -> LeadershipChange {
        let from = self.0.leader(group);
        let outcome = self.0.transfer_leader(group, to).await;
        let (to, error) = match outcome {
            Ok(l) => (Some(l), None),
            Err(e) => (self.0.leader(group), Some(e.to_string())),
        };
        LeadershipChange { group: group.to_string(), group_id: group.to_u32(), from, to, error }
    }
}

#[async_trait]
impl ClusterControl for NodeControl {
    async fn run(&self, command: ClusterCommand) -> kalamdb_query::error::Result<Vec<LeadershipChange>> {
        let groups = &self.0;
        if !groups.is_cluster() {
            return Err(kalamdb_query::Error::ClusterRefused(
                "this node runs alone: it leads every group and there is no other voter to move leadership to".into(),
            ));
        }
        let mut changes = Vec::new();
        match command {
            ClusterCommand::TransferLeader { group, to } => {
                let targets = match group {
                    Some(g) if !groups.layout.all().contains(&g) => {
                        let names: Vec<String> = groups.layout.all().iter().map(|g| g.to_string()).collect();
                        return Err(kalamdb_query::Error::InvalidSql(format!(
                            "this cluster has no group {g}; its groups: {}",
                            names.join(", ")
                        )));
                    }
                    Some(g) => vec![g],
                    None => groups.layout.all(),
                };
                if targets.iter().all(|g| !groups.voters_of(*g).contains(&to)) {
                    return Err(kalamdb_query::Error::ClusterRefused(format!(
                        "node {to} is not a voter of {}",
                        if group.is_some() { "that group" } else { "any group" }
                    )));
                }
                // Groups are independent: move them all at once.
                let moves = targets.into_iter().map(|g| self.transfer(g, to));
                changes = futures::future::join_all(moves).await;
            }
            ClusterCommand::StepDown => {
                for g in groups.layout.all() {
                    if !groups.leads(g) {
                        continue;
                    }
                    match groups.successor(g) {
                        Some(to) => changes.push(self.transfer(g, to).await),
                        None => changes.push(LeadershipChange {
                            group: g.to_string(),
                            group_id: g.to_u32(),
                            from: Some(groups.node_id),
                            to: Some(groups.node_id),
                            error: Some("no connected, caught-up voter to hand it to".into()),
                        }),
                    }
                }
            }
            ClusterCommand::Rebalance => {
                for m in groups.balance_plan() {
                    changes.push(self.transfer(m.group, m.to).await);
                }
            }
            ClusterCommand::Join { .. } | ClusterCommand::RemoveNode { .. } => {
                return Err(kalamdb_query::Error::Internal("a membership command is not a leadership move".into()));
            }
        }
        Ok(changes)
    }

    async fn change_membership(&self, command: ClusterCommand) -> kalamdb_query::error::Result<Vec<MembershipChange>> {
        let groups = &self.0;
        if !groups.is_cluster() {
            return Err(kalamdb_query::Error::ClusterRefused(
                "this node runs alone: start it with a [cluster] section to add or remove members".into(),
            ));
        }
        let outcome = match command {
            ClusterCommand::Join { node, raft_addr, http_addr } => {
                groups.add_node(node, NodeAddr { raft_addr, http_addr }).await
            }
            ClusterCommand::RemoveNode { node } => {
                groups.remove_node(node).await.map_err(kalamdb_query::Error::from)?
            }
            other => return Err(kalamdb_query::Error::Internal(format!("not a membership command: {other:?}"))),
        };
        Ok(outcome
            .into_iter()
            .map(|c| {
                let (voters, error) = match c.outcome {
                    Ok(v) => (v, None),
                    Err(e) => (Vec::new(), Some(e.to_string())),
                };
                MembershipChange { group: c.group.to_string(), group_id: c.group.to_u32(), voters, error }
            })
            .collect())
    }
}
