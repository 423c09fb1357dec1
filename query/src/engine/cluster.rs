//! `CLUSTER` statements: leadership transfers, step-down, rebalancing, joining and removing
//! nodes, for dba and system.
//! The node carries them out (`ports::ClusterControl`); this file checks the caller and shapes
//! the answer, one row per group concerned.

use kalamdb_log::Role;
use serde_json::Value as Json;

use super::{Engine, ExecContext, QueryResult};
use crate::access;
use crate::error::{Error, Result};
use crate::parse::ClusterCommand;
use crate::ports::MembershipChange;

impl Engine {
    pub(super) async fn cluster_statement(&self, command: ClusterCommand, ctx: &ExecContext) -> Result<QueryResult> {
        let what = match command {
            ClusterCommand::TransferLeader { .. } => "CLUSTER TRANSFER LEADER",
            ClusterCommand::StepDown => "CLUSTER STEPDOWN",
            ClusterCommand::Rebalance => "CLUSTER REBALANCE",
            ClusterCommand::Join { .. } => "CLUSTER JOIN",
            ClusterCommand::RemoveNode { .. } => "CLUSTER REMOVE NODE",
        };
        access::require(ctx.role, Role::Dba, what)?;
        let control =
            self.cluster_control.as_ref().ok_or_else(|| Error::Unsupported(format!("{what} needs a server node")))?;
        if matches!(command, ClusterCommand::Join { .. } | ClusterCommand::RemoveNode { .. }) {
            let changes = control.change_membership(command).await?;
            return Ok(membership_answer(what, changes));
        }
        let changes = control.run(command).await?;
        let moved = changes.iter().filter(|c| c.error.is_none() && c.from != c.to).count();
        let failed = changes.iter().filter(|c| c.error.is_some()).count();
        let node = |n: Option<u64>| n.map_or(Json::Null, Json::from);
        let rows =
            changes.into_iter().map(|c| (c.group, c.group_id, vec![node(c.from), node(c.to)], c.error)).collect();
        let message = match failed {
            0 => format!("{what}: {moved} group(s) changed leader"),
            n => format!("{what}: {moved} group(s) changed leader, {n} could not (see the error column)"),
        };
        Ok(per_group_answer(&[("previous_leader", "Int"), ("leader", "Int")], rows, message))
    }
}

/// One row per group: its voters afterwards, or why it did not change.
fn membership_answer(what: &str, changes: Vec<MembershipChange>) -> QueryResult {
    let failed = changes.iter().filter(|c| c.error.is_some()).count();
    let total = changes.len();
    let rows = changes
        .into_iter()
        .map(|c| {
            let voters: Vec<String> = c.voters.iter().map(u64::to_string).collect();
            let voters = if voters.is_empty() { Json::Null } else { Json::String(voters.join(",")) };
            (c.group, c.group_id, vec![voters], c.error)
        })
        .collect();
    let message = match failed {
        0 => format!("{what}: done in {total} group(s)"),
        n => format!("{what}: done in {} group(s), {n} failed (see the error column)", total - n),
    };
    per_group_answer(&[("voters", "Text")], rows, message)
}

/// A CLUSTER statement's answer: per group its name and number, the statement's own columns,
/// and the error that kept it from changing (NULL when it did).
fn per_group_answer(
    columns: &[(&str, &str)],
    rows: Vec<(String, u32, Vec<Json>, Option<String>)>,
    message: String,
) -> QueryResult {
    let mut schema = vec![("group_name".to_string(), "Text".to_string()), ("group_id".into(), "Int".into())];
    schema.extend(columns.iter().map(|(n, t)| (n.to_string(), t.to_string())));
    schema.push(("error".into(), "Text".into()));
    let rows = rows
        .into_iter()
        .map(|(group, id, cells, error)| {
            let mut row = vec![Json::String(group), Json::from(id)];
            row.extend(cells);
            row.push(error.map_or(Json::Null, Json::String));
            row
        })
        .collect();
    let mut result = QueryResult::rows(schema, rows);
    result.message = Some(message);
    result
}
