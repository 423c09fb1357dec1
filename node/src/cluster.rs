//! The cluster as one node sees it: statuses gathered from every reachable member, merged
//! per group from the report of the group's leader. Serves `GET /v1/api/cluster/health`,
//! `system.cluster` and `system.cluster_groups`, and the read barrier behind linearizable
//! reads.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kalamdb_log::GroupId;
use kalamdb_log::types::NodeId;
use kalamdb_query::{ClusterGroup, ClusterNode, ClusterView, ReadBarrier};
use kalamdb_transport::wire::{GroupStatus, StatusResponse};
use serde_json::json;

use crate::groups::Groups;

/// Time each peer has to answer a status request for health and system tables.
pub const STATUS_TIMEOUT_MS: u64 = 500;

/// Statuses of all reachable nodes (this one first) and the set of nodes that answered.
/// With `peers` false, only this node's own view (no network round trips).
pub async fn gather(groups: &Groups, peers: bool) -> (Vec<StatusResponse>, HashSet<NodeId>) {
    let mut out = vec![groups.local_status()];
    let mut reachable = HashSet::from([groups.node_id]);
    if let Some(t) = groups.transport.as_ref().filter(|_| peers) {
        let peers: Vec<NodeId> = groups.members().keys().copied().filter(|id| *id != groups.node_id).collect();
        let calls = peers.iter().map(|p| t.status(*p, Duration::from_millis(STATUS_TIMEOUT_MS)));
        for (peer, r) in peers.iter().zip(futures::future::join_all(calls).await) {
            if let Ok(s) = r {
                reachable.insert(*peer);
                out.push(s);
            }
        }
    }
    (out, reachable)
}

/// Per group: the leader's own report when a reachable node claims leadership (highest term
/// wins), else this node's view.
fn merge(statuses: &[StatusResponse]) -> BTreeMap<u32, GroupStatus> {
    let mut best: BTreeMap<u32, (bool, GroupStatus)> = BTreeMap::new();
    for s in statuses {
        for g in &s.groups {
            let is_leader_report = g.leader == Some(s.node_id);
            // Prefer a leader's own report, then the highest term.
            let better = best.get(&g.group).is_none_or(|(lead, cur)| (is_leader_report, g.term) > (*lead, cur.term));
            if better {
                best.insert(g.group, (is_leader_report, g.clone()));
            }
        }
    }
    best.into_iter().map(|(k, (_, g))| (k, g)).collect()
}

fn group_name(id: u32) -> String {
    GroupId::from_u32(id).map_or_else(|| id.to_string(), |g| g.to_string())
}

/// The JSON of `GET /v1/api/cluster/health`, and whether every group has a leader.
pub async fn health(groups: &Groups, peers: bool) -> (serde_json::Value, bool) {
    let (statuses, reachable) = gather(groups, peers).await;
    let merged = merge(&statuses);
    let local: BTreeMap<u32, GroupStatus> = statuses[0].groups.iter().map(|g| (g.group, g.clone())).collect();
    let mut all_led = true;
    let mut led: BTreeMap<NodeId, u64> = BTreeMap::new();
    let members = groups.members();
    let group_rows: Vec<serde_json::Value> = merged
        .values()
        .map(|g| {
            if let Some(l) = g.leader {
                *led.entry(l).or_default() += 1;
            } else {
                all_led = false;
            }
            let voters = GroupId::from_u32(g.group).map(|id| groups.voters_of(id)).unwrap_or_default();
            let in_group = GroupId::from_u32(g.group).map(|id| groups.members_of(id)).unwrap_or_default();
            let members: Vec<serde_json::Value> = in_group
                .iter()
                .map(|id| {
                    let matched = g.matched.iter().find(|(n, _)| n == id).map(|(_, i)| *i);
                    json!({
                        "node_id": id,
                        "membership": if voters.contains(id) { "voter" } else { "learner" },
                        "matched_index": matched,
                        "lag": matched.map(|m| g.last_log_index.saturating_sub(m)),
                    })
                })
                .collect();
            json!({
                "group": group_name(g.group),
                "leader": g.leader,
                "term": g.term,
                "commit_index": g.commit_index,
                "last_log_index": g.last_log_index,
                "applied_index": local.get(&g.group).map_or(0, |l| l.applied_index),
                "leader_applied_index": g.applied_index,
                // As this node applied it: the same on every member once applied this far.
                "apply_format": GroupId::from_u32(g.group).and_then(|id| groups.apply_format(id).ok()),
                "members": members,
            })
        })
        .collect();
    // KalamDB's fields describe the node by the meta (catalog) group: its leader is "the"
    // leader, its term the current term.
    let catalog = merged.get(&GroupId::Meta(kalamdb_log::MetaGroup::Catalog).to_u32());
    let meta_leader = catalog.and_then(|g| g.leader);
    let progress = catch_up(groups, &merged);
    let nodes: Vec<serde_json::Value> = members
        .iter()
        .map(|(id, addr)| {
            let (membership, catchup_pct) = progress.get(id).cloned().unwrap_or(("voter", None));
            let reachable_now = if peers || *id == groups.node_id { Some(reachable.contains(id)) } else { None };
            let lag = catalog.and_then(|g| {
                g.matched.iter().find(|(n, _)| n == id).map(|(_, m)| g.last_log_index.saturating_sub(*m))
            });
            json!({
                "node_id": id,
                "raft_addr": addr.raft_addr,
                "http_addr": addr.http_addr,
                "reachable": reachable_now,
                "is_self": *id == groups.node_id,
                "groups_led": led.get(id).copied().unwrap_or(0),
                "role": if meta_leader == Some(*id) { "leader" } else { "follower" },
                "status": match reachable_now { Some(true) => "active", Some(false) => "offline", None => "unknown" },
                "api_addr": format!("http://{}", addr.http_addr),
                "is_leader": meta_leader == Some(*id),
                "replication_lag": lag,
                "membership": membership,
                "catchup_progress_pct": catchup_pct,
                "hostname": null,
                "memory_usage_mb": null,
                "cpu_usage_percent": null,
                "uptime_seconds": null,
                "uptime_human": null,
            })
        })
        .collect();
    let status = if !all_led {
        "unavailable"
    } else if peers && reachable.len() < members.len() {
        "degraded"
    } else {
        "healthy"
    };
    let body = json!({
        "status": status,
        // KalamDB's clients decode a string: "standalone" for a single node, as KalamDB says.
        "cluster_id": groups.cluster_id.as_deref().unwrap_or("standalone"),
        "node_id": groups.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "is_cluster_mode": groups.is_cluster(),
        "apply_format_max": groups.apply_format_max,
        "is_leader": meta_leader == Some(groups.node_id),
        "total_groups": merged.len(),
        "groups_leading": led.get(&groups.node_id).copied().unwrap_or(0),
        "current_term": catalog.map_or(0, |g| g.term),
        "last_applied": local.get(&GroupId::Meta(kalamdb_log::MetaGroup::Catalog).to_u32()).map(|g| g.applied_index),
        "millis_since_quorum_ack": null,
        "nodes": nodes,
        "groups": group_rows,
    });
    (body, all_led)
}

/// Per node: "voter" when it votes in every group, else "learner"; and while it is not a
/// voter everywhere, how far it got: the least, over the groups, of its matched index as a
/// percentage of the leader's last index (from the leaders' reports).
pub fn catch_up(groups: &Groups, merged: &BTreeMap<u32, GroupStatus>) -> BTreeMap<NodeId, (&'static str, Option<u64>)> {
    let mut out = BTreeMap::new();
    for id in groups.members().keys() {
        let everywhere = groups.layout.all().into_iter().all(|g| groups.voters_of(g).contains(id));
        if everywhere {
            out.insert(*id, ("voter", None));
            continue;
        }
        let pct = merged
            .values()
            .map(|g| {
                let matched = g.matched.iter().find(|(n, _)| n == id).map_or(0, |(_, m)| *m);
                (matched.min(g.last_log_index) * 100).checked_div(g.last_log_index).unwrap_or(100)
            })
            .min();
        out.insert(*id, ("learner", pct));
    }
    out
}

/// `system.cluster` / `system.cluster_groups` for the query engine.
pub struct NodeCluster(pub Arc<Groups>);

impl std::fmt::Debug for NodeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCluster").field("node_id", &self.0.node_id).finish()
    }
}

#[async_trait]
impl ClusterView for NodeCluster {
    async fn nodes(&self) -> Vec<ClusterNode> {
        let (statuses, reachable) = gather(&self.0, true).await;
        let merged = merge(&statuses);
        let catalog_group = GroupId::Meta(kalamdb_log::MetaGroup::Catalog).to_u32();
        let progress = catch_up(&self.0, &merged);
        let catalog = merged.get(&catalog_group).cloned();
        self.0
            .members()
            .iter()
            .map(|(id, addr)| {
                let (membership, catchup_progress_pct) = progress.get(id).cloned().unwrap_or(("voter", None));
                let replication_lag = catalog.as_ref().and_then(|g| {
                    g.matched.iter().find(|(n, _)| n == id).map(|(_, m)| g.last_log_index.saturating_sub(*m))
                });
                let groups_led = merged.values().filter(|g| g.leader == Some(*id)).count() as u64;
                let leads_catalog = merged.get(&catalog_group).is_some_and(|g| g.leader == Some(*id));
                ClusterNode {
                    cluster_id: self.0.cluster_id.clone().unwrap_or_else(|| "standalone".into()),
                    node_id: *id,
                    raft_addr: addr.raft_addr.clone(),
                    http_addr: addr.http_addr.clone(),
                    role: if leads_catalog { "leader".into() } else { "follower".into() },
                    groups_led,
                    reachable: reachable.contains(id),
                    is_self: *id == self.0.node_id,
                    membership: membership.to_string(),
                    catchup_progress_pct,
                    replication_lag,
                }
            })
            .collect()
    }

    async fn groups(&self) -> Vec<ClusterGroup> {
        let (statuses, _) = gather(&self.0, true).await;
        let local: BTreeMap<u32, u64> = statuses[0].groups.iter().map(|g| (g.group, g.applied_index)).collect();
        merge(&statuses)
            .values()
            .map(|g| ClusterGroup {
                group: group_name(g.group),
                id: g.group,
                node_id: self.0.node_id,
                leader: g.leader,
                term: g.term,
                commit_index: g.commit_index,
                applied_index: local.get(&g.group).copied().unwrap_or(0),
                last_log_index: g.last_log_index,
            })
            .collect()
    }
}

/// The read barrier of one request: each group is synced at most once per request.
pub struct RequestBarrier {
    groups: Arc<Groups>,
    done: Mutex<HashSet<GroupId>>,
}

impl RequestBarrier {
    pub fn new(groups: Arc<Groups>) -> RequestBarrier {
        RequestBarrier { groups, done: Mutex::new(HashSet::new()) }
    }
}

impl std::fmt::Debug for RequestBarrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestBarrier")
    }
}

#[async_trait]
impl ReadBarrier for RequestBarrier {
    async fn wait(&self, group: GroupId) -> kalamdb_query::error::Result<()> {
        if self.done.lock().unwrap_or_else(|p| p.into_inner()).contains(&group) {
            return Ok(());
        }
        self.groups.read_barrier(group).await?;
        self.done.lock().unwrap_or_else(|p| p.into_inner()).insert(group);
        Ok(())
    }
}

/// The barrier of a `consistency: local` request and of a single node: no round trip, but a
/// group whose projection a snapshot install is replacing right now is refused rather than
/// read half replaced.
pub struct LocalBarrier(pub Arc<Groups>);

impl std::fmt::Debug for LocalBarrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalBarrier")
    }
}

#[async_trait]
impl ReadBarrier for LocalBarrier {
    async fn wait(&self, group: GroupId) -> kalamdb_query::error::Result<()> {
        if self.0.storage.installing.contains(group) {
            return Err(kalamdb_query::Error::Unavailable(format!(
                "group {group} is installing a snapshot on this node; retry, or read with linearizable consistency"
            )));
        }
        Ok(())
    }
}
