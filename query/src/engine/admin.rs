//! Storage and stream statements: FLUSH, STORAGE COMPACT, REBUILD PROJECTION (one op per
//! group that may hold the table's rows), SUBSCRIBE (answered with typed data; the node
//! turns it into the tail URL) and BACKUP DATABASE (handed to the node's backup runner).

use std::sync::Arc;

use kalamdb_log::{GroupId, Op, OpResult, Role, TableDef, TableType};

use super::{Engine, ExecContext, QueryResult, StorageJob, Subscription};
use crate::access;
use crate::error::{Error, Result};
use crate::parse::{Statement, StorageTarget};
use crate::ports::Proposer;

/// `Settle` ops one `FLUSH` statement proposes per scope at most: 2^20 ops of
/// `SETTLE_ROWS_MAX` rows cover a billion rows; past that (rows written faster than they
/// settle) the node's storage task finishes the scope.
pub const SETTLE_OPS_PER_FLUSH_MAX: usize = 1 << 20;
/// `Settle` ops of one scope a `FLUSH` statement has in flight at once.
pub const SETTLE_OPS_IN_FLIGHT: usize = 8;

impl Engine {
    /// FLUSH, STORAGE COMPACT, REBUILD PROJECTION, SUBSCRIBE or BACKUP DATABASE.
    pub(super) async fn admin_statement(
        &self,
        statement: Statement,
        ctx: &ExecContext,
        proposer: &dyn Proposer,
    ) -> Result<QueryResult> {
        match &statement {
            Statement::Storage { compact: false, .. } => access::require(ctx.role, Role::Dba, "FLUSH")?,
            Statement::Storage { compact: true, .. } => access::require(ctx.role, Role::Dba, "STORAGE COMPACT")?,
            Statement::Rebuild { .. } => access::require(ctx.role, Role::Dba, "REBUILD PROJECTION")?,
            Statement::Backup { .. } => access::require(ctx.role, Role::Dba, "BACKUP DATABASE")?,
            _ => {}
        }
        match statement {
            Statement::Storage { compact, target } => {
                let tables: Vec<Arc<TableDef>> = match target {
                    StorageTarget::Table(t) => {
                        let def = self.resolve_table(&t, ctx)?;
                        if def.table_type == TableType::Stream {
                            return Err(Error::InvalidSql(format!(
                                "{}.{} is a STREAM table: its rows expire by TTL and are never flushed to Parquet",
                                def.namespace, def.name
                            )));
                        }
                        vec![def]
                    }
                    StorageTarget::All { namespace } => {
                        let st = self.catalog.read();
                        if let Some(ns) = &namespace
                            && !st.namespaces.contains_key(ns)
                        {
                            return Err(Error::NamespaceNotFound(format!("Namespace '{ns}' does not exist")));
                        }
                        st.tables
                            .values()
                            .filter(|t| namespace.as_ref().is_none_or(|ns| &t.namespace == ns))
                            .filter(|t| t.table_type != TableType::Stream)
                            .cloned()
                            .collect()
                    }
                };
                let job = if compact { StorageJob::Compact } else { StorageJob::Flush };
                let mut rows = 0;
                for def in &tables {
                    rows += self.storage_job(def, job, proposer, ctx).await?;
                }
                let (verb, what) = if compact { ("Compacted", "kept") } else { ("Flushed", "written") };
                let names: Vec<String> = tables.iter().map(|t| format!("{}.{}", t.namespace, t.name)).collect();
                Ok(QueryResult::message(
                    tables.len(),
                    format!("{verb} {} table(s) [{}]: {rows} row(s) {what} to Parquet", tables.len(), names.join(", ")),
                ))
            }
            Statement::Rebuild { table } => {
                let def = self.resolve_table(&table, ctx)?;
                let rows = self.storage_job(&def, StorageJob::Rebuild, proposer, ctx).await?;
                Ok(QueryResult::message(
                    1,
                    format!(
                        "Rebuilt projection of {}.{}: {rows} hot row version(s) re-derived from the log",
                        def.namespace, def.name
                    ),
                ))
            }
            Statement::Subscribe { table, filter, last_rows, from } => {
                let def = self.resolve_table(&table, ctx)?;
                access::check_read(ctx.role, &def)?;
                let filter = filter.map(|f| crate::filter::RowFilter::parse(&f, &def)).transpose()?;
                let subscription = Subscription {
                    table: format!("{}.{}", def.namespace, def.name),
                    filter: filter.map(|f| f.text().to_string()),
                    last_rows,
                    from,
                };
                Ok(QueryResult {
                    schema: None,
                    rows: None,
                    row_count: 1,
                    message: None,
                    as_user: None,
                    kind: "other",
                    subscription: Some(subscription),
                })
            }
            Statement::Backup { destination } => {
                let runner = self
                    .backups
                    .as_ref()
                    .ok_or_else(|| Error::Unsupported("BACKUP DATABASE needs a server node".into()))?;
                let job_id = runner.start_backup(&destination).await?;
                let mut result = QueryResult::rows(
                    vec![("job_id".into(), "Text".into()), ("destination".into(), "Text".into())],
                    vec![vec![serde_json::Value::String(job_id.clone()), serde_json::Value::String(destination)]],
                );
                result.message = Some(format!("Backup job {job_id} started; its progress is in system.jobs"));
                Ok(result)
            }
            other => Err(Error::Internal(format!("not a storage statement: {other:?}"))),
        }
    }

    /// Flush, compact or rebuild one table in every group that may hold its rows; returns the
    /// rows written. Each group's op is one log entry; a flush is followed by the `Settle` ops
    /// that take its rows out of RocksDB, so the statement ends with them gone, as it always has.
    pub async fn storage_job(
        &self,
        def: &TableDef,
        job: StorageJob,
        proposer: &dyn Proposer,
        ctx: &ExecContext,
    ) -> Result<u64> {
        let groups = self.layout.table_groups(def);
        let futures = groups.iter().map(|g| async move {
            let table = def.clone();
            let result = match job {
                StorageJob::Flush => super::ok_result(proposer.flush_table(*g, table).await?)?,
                StorageJob::Compact => self.propose_ok(proposer, *g, Op::Compact { table, scope: None }).await?,
                StorageJob::Rebuild => self.propose_ok(proposer, *g, Op::Rebuild { table }).await?,
            };
            if job == StorageJob::Flush {
                self.settle_flushed(ctx, proposer, def.table_id, *g).await?;
            }
            Ok::<OpResult, Error>(result)
        });
        let mut rows = 0;
        for r in futures::future::join_all(futures).await {
            if let OpResult::Done { affected } = r? {
                rows += affected;
            }
        }
        Ok(rows)
    }

    /// Settle what a flush left in `group`'s RocksDB (see `Op::Settle`): one short entry per
    /// [`kalamdb_projections::cold::SETTLE_ROWS_MAX`] rows, so writers wait for none of them
    /// the way they would for one long one. Ops past [`SETTLE_OPS_PER_FLUSH_MAX`] per scope
    /// are left to the node's storage task.
    async fn settle_flushed(
        &self,
        ctx: &ExecContext,
        proposer: &dyn Proposer,
        table_id: u64,
        group: GroupId,
    ) -> Result<()> {
        // The scopes are read from this node's projection, once it has applied the flush.
        self.barrier(ctx, group).await?;
        let scopes = kalamdb_projections::cold::unsettled_scopes(self.rows.db(), group, table_id)?;
        for scope in scopes {
            // One op first (most scopes need no more), then a few in flight: each continues
            // where the one before it in the log stopped, so they share fsyncs, and those past
            // the scope's end settle nothing.
            let first = self.propose_ok(proposer, group, Op::Settle { table_id, scope: scope.clone() }).await?;
            if !matches!(first, OpResult::Settled { more: true, .. }) {
                continue;
            }
            for _ in 0..SETTLE_OPS_PER_FLUSH_MAX.div_ceil(SETTLE_OPS_IN_FLIGHT) {
                let round = (0..SETTLE_OPS_IN_FLIGHT)
                    .map(|_| self.propose_ok(proposer, group, Op::Settle { table_id, scope: scope.clone() }));
                let mut more = true;
                for result in futures::future::join_all(round).await {
                    more &= matches!(result?, OpResult::Settled { more: true, .. });
                }
                if !more {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Remove dropped tables' rows from every data group. Best effort: rows of a dropped table
    /// are unreachable anyway (table ids are never reused), so a failure only wastes space.
    pub(super) async fn purge_tables(&self, proposer: &dyn Proposer, table_ids: &[u64]) {
        let groups: Vec<GroupId> = self.layout.all().into_iter().filter(|g| !matches!(g, GroupId::Meta(_))).collect();
        for table_id in table_ids {
            let futures = groups.iter().map(|g| proposer.propose(*g, Op::PurgeTable { table_id: *table_id }));
            for (g, r) in groups.iter().zip(futures::future::join_all(futures).await) {
                if let Err(e) = r {
                    tracing::warn!(target: "kalamdb_sql", table_id, group = %g, error = %e, "purge of dropped table failed");
                }
            }
        }
    }
}
