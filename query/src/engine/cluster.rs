//! `CLUSTER` statements: leadership transfers, step-down and rebalancing, for dba and system.
//! The node carries them out (`ports::ClusterControl`); this file checks the caller and shapes
//! the answer, one row per group concerned.

use kalamdb_log::Role;
use serde_json::Value as Json;

use super::{Engine, ExecContext, QueryResult};
use crate::access;
use crate::error::{Error, Result};
use crate::parse::ClusterCommand;

impl Engine {
    pub(super) async fn cluster_statement(&self, command: ClusterCommand, ctx: &ExecContext) -> Result<QueryResult> {
        let what = match command {
            ClusterCommand::TransferLeader { .. } => "CLUSTER TRANSFER LEADER",
            ClusterCommand::StepDown => "CLUSTER STEPDOWN",
            ClusterCommand::Rebalance => "CLUSTER REBALANCE",
        };
        access::require(ctx.role, Role::Dba, what)?;
        let control =
            self.cluster_control.as_ref().ok_or_else(|| Error::Unsupported(format!("{what} needs a server node")))?;
        let changes = control.run(command).await?;
        let moved = changes.iter().filter(|c| c.error.is_none() && c.from != c.to).count();
        let failed = changes.iter().filter(|c| c.error.is_some()).count();
        let node = |n: Option<u64>| n.map_or(Json::Null, Json::from);
        let rows = changes
            .into_iter()
            .map(|c| {
                vec![
                    Json::String(c.group),
                    Json::from(c.group_id),
                    node(c.from),
                    node(c.to),
                    c.error.map_or(Json::Null, Json::String),
                ]
            })
            .collect();
        let mut result = QueryResult::rows(
            vec![
                ("group_name".into(), "Text".into()),
                ("group_id".into(), "Int".into()),
                ("previous_leader".into(), "Int".into()),
                ("leader".into(), "Int".into()),
                ("error".into(), "Text".into()),
            ],
            rows,
        );
        result.message = Some(match failed {
            0 => format!("{what}: {moved} group(s) changed leader"),
            n => format!("{what}: {moved} group(s) changed leader, {n} could not (see the error column)"),
        });
        Ok(result)
    }
}
