//! Row writes without the catalog read barrier. A standalone INSERT of literal VALUES is
//! planned on this node's catalog replica as it is, which may lag a DDL statement that has
//! already answered. That is safe because every DDL statement first raises the table's schema
//! floor in each data group holding it (`Op::SchemaFloor`): a write planned on an older
//! version is refused by apply (`StaleSchema`), changing nothing, and planned again here
//! after the barrier. Writes that read tables (UPDATE, DELETE, INSERT ... SELECT, expressions)
//! take the barrier first: what they read must be current too, not only what they write.
//! This file decides when a write is planned again, and finishes a fenced
//! change that never committed (its proposer died between the floors and the catalog) with a
//! `TableChange::Bump`, so a table's writes are never fenced for good.

use std::time::{Duration, Instant};

use datafusion::sql::sqlparser::ast::{self, Expr, FromTable, SetExpr, TableObject, UnaryOperator};
use kalamdb_log::{Op, TableChange, TableDef};

use super::{Engine, ExecContext, QueryResult, catalog_group, now_micros, object_table_name, single_table};
use crate::error::{Error, Result};
use crate::parse::{Statement, TableName, ValuesInsert};
use crate::ports::Proposer;

/// Pause between attempts of a write refused by a floor its catalog replica has not caught
/// up with: a schema change between its two steps (floors raised, catalog not yet changed).
pub const SCHEMA_RETRY_PAUSE_MS: u64 = 5;
/// How long writes wait for a fenced schema change to commit before bumping the table's
/// schema version past the floor. The two steps normally take milliseconds. A statement
/// deadline (`limits.query_timeout_ms`) under four times this shortens the wait to a quarter
/// of it, so a write still bumps (twice at most) before its deadline.
pub const SCHEMA_CHANGE_WAIT_MS: u64 = 2_000;
/// Bumps one write may propose before it gives up with `SCHEMA_CHANGED`.
pub const SCHEMA_BUMPS_MAX: usize = 2;

/// For a row write outside a batch, whether it runs without the catalog barrier (an INSERT
/// of literal VALUES, which reads no table); `None` for every other statement. Batches keep
/// the barrier per statement, and their commit runs them all again when refused.
pub(super) fn row_write(statement: &Statement, ctx: &ExecContext) -> Option<bool> {
    if ctx.batch.is_some() {
        return None;
    }
    let s = match statement {
        Statement::InsertValues(_) => return Some(true),
        Statement::Sql(s) => s,
        _ => return None,
    };
    match s.as_ref() {
        ast::Statement::Insert(insert) => Some(insert.source.as_ref().is_some_and(|q| {
            q.with.is_none()
                && matches!(q.body.as_ref(), SetExpr::Values(v) if v.rows.iter().all(|r| r.content.iter().all(plain_value)))
        })),
        ast::Statement::Update(_) | ast::Statement::Delete(_) => Some(false),
        _ => None,
    }
}

/// A literal or a parameter (possibly negated or in parentheses): nothing to read.
fn plain_value(expr: &Expr) -> bool {
    match expr {
        Expr::Value(_) => true,
        Expr::UnaryOp { op: UnaryOperator::Minus, expr } | Expr::Nested(expr) => plain_value(expr),
        _ => false,
    }
}

/// Errors a lagging catalog replica can cause that leave nothing written: planning errors,
/// and apply's deterministic refusals. Others (timeouts, unknown outcomes) are final.
fn replannable(e: &Error) -> bool {
    matches!(
        e,
        Error::InvalidSql(_)
            | Error::NamespaceNotFound(_)
            | Error::TableNotFound(_)
            | Error::AlreadyExists(_)
            | Error::ConstraintViolation(_)
            | Error::Execution(_)
            | Error::PermissionDenied(_)
            | Error::SchemaChanged(_)
    )
}

/// A row write as parsed: by sqlparser, or a VALUES insert read straight from the text.
pub(super) enum Write {
    Sql(ast::Statement),
    Values(ValuesInsert),
}

/// The table a row write targets.
fn write_target(write: &Write) -> Result<TableName> {
    let stmt = match write {
        Write::Values(insert) => return Ok(insert.table.clone()),
        Write::Sql(stmt) => stmt,
    };
    match stmt {
        ast::Statement::Insert(insert) => match &insert.table {
            TableObject::TableName(name) => object_table_name(name),
            other => Err(Error::InvalidSql(format!("unsupported INSERT target {other}"))),
        },
        ast::Statement::Update(update) => single_table(std::slice::from_ref(&update.table)),
        ast::Statement::Delete(delete) => match &delete.from {
            FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => single_table(t),
        },
        _ => Err(Error::Internal("not a row write".into())),
    }
}

impl Engine {
    /// Run a row write outside a batch: `unfenced` (see [`row_write`]) planned on this node's
    /// catalog replica as it is, otherwise after the catalog barrier; see the module comment.
    pub(super) async fn run_row_write(
        &self,
        stmt: Write,
        unfenced: bool,
        ctx: &ExecContext,
        proposer: &dyn Proposer,
    ) -> Result<QueryResult> {
        if !unfenced {
            self.barrier(ctx, catalog_group()).await?;
        }
        // `None` for a statement whose target is not one table: the first attempt's error says
        // why, and the waits below fall back to any catalog change.
        let target = write_target(&stmt).ok();
        let mut seen = self.catalog.changes();
        let mut planned = self.version_of(target.as_ref(), ctx);
        let first = Box::pin(self.execute_write(&stmt, ctx, proposer)).await;
        match &first {
            Err(Error::SchemaChanged(_)) => {}
            Err(e) if unfenced && replannable(e) => {
                self.barrier(ctx, catalog_group()).await?;
                if self.catalog.changes() == seen {
                    // The replica was current: the error stands, as if the statement ran
                    // after the barrier.
                    return first;
                }
                tracing::debug!(target: "kalamdb_sql", "row write planned again: the catalog replica was behind");
                (seen, planned) = (self.catalog.changes(), self.version_of(target.as_ref(), ctx));
                if let Some(done) = self.run_unless_refused(&stmt, ctx, proposer).await {
                    return done;
                }
            }
            _ => return first,
        }
        // Refused by a schema floor: the change that raised it commits in the catalog within
        // milliseconds. Wait until this replica holds another version of the table (the
        // change, a bump, or the table gone) before planning again: a refused attempt is a
        // log entry, so changes to other tables do not start one. Bump past a floor whose
        // change never comes.
        let mut bumps = 0;
        loop {
            let changed = || match &target {
                Some(t) => self.version_of(Some(t), ctx) != planned,
                None => self.catalog.changes() != seen,
            };
            if !self.catalog_changed(ctx, changed).await? {
                if bumps == SCHEMA_BUMPS_MAX {
                    return Err(Error::SchemaChanged(format!(
                        "the table's schema kept changing under this write (waited {} ms \
                         {SCHEMA_BUMPS_MAX} times); nothing was written",
                        self.schema_change_wait().as_millis()
                    )));
                }
                self.bump_schema(&stmt, ctx, proposer).await?;
                bumps += 1;
            }
            tracing::debug!(target: "kalamdb_sql", "row write planned again after a schema change");
            (seen, planned) = (self.catalog.changes(), self.version_of(target.as_ref(), ctx));
            if let Some(done) = self.run_unless_refused(&stmt, ctx, proposer).await {
                return done;
            }
        }
    }

    /// Plan and run `stmt` once more; `None` if a schema floor refused it (nothing written).
    async fn run_unless_refused(
        &self,
        stmt: &Write,
        ctx: &ExecContext,
        proposer: &dyn Proposer,
    ) -> Option<Result<QueryResult>> {
        match Box::pin(self.execute_write(stmt, ctx, proposer)).await {
            Err(Error::SchemaChanged(_)) => None,
            other => Some(other),
        }
    }

    /// The id and schema version of the table `name` resolves to on this node's replica now.
    fn version_of(&self, name: Option<&TableName>, ctx: &ExecContext) -> Option<(u64, u32)> {
        self.resolve_table(name?, ctx).ok().map(|d| (d.table_id, d.schema_version()))
    }

    /// A batch's commit was refused by a schema floor: wait, as a single write does, until
    /// this node's catalog changed since `seen`, and bump the batch's tables past a floor
    /// whose change has not committed within [`SCHEMA_CHANGE_WAIT_MS`].
    pub(super) async fn await_schema_change(
        &self,
        seen: u64,
        table_ids: &[u64],
        ctx: &ExecContext,
        proposer: &dyn Proposer,
    ) -> Result<()> {
        if self.catalog_changed(ctx, || self.catalog.changes() != seen).await? {
            return Ok(());
        }
        for id in table_ids {
            if let Some(def) = self.catalog.table_by_id(*id) {
                self.bump_version(&def, proposer).await?;
            }
        }
        Ok(())
    }

    /// How long a write refused by a floor waits for the change before bumping: see
    /// [`SCHEMA_CHANGE_WAIT_MS`].
    fn schema_change_wait(&self) -> Duration {
        Duration::from_millis(SCHEMA_CHANGE_WAIT_MS.min(self.limits.timeout_ms / 4))
    }

    /// Whether this node's catalog reaches a state where `changed` holds within
    /// [`Self::schema_change_wait`] (each check after the catalog's read barrier).
    async fn catalog_changed(&self, ctx: &ExecContext, changed: impl Fn() -> bool) -> Result<bool> {
        let started = Instant::now();
        loop {
            self.barrier(ctx, catalog_group()).await?;
            if changed() {
                return Ok(true);
            }
            if started.elapsed() >= self.schema_change_wait() {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(SCHEMA_RETRY_PAUSE_MS)).await;
        }
    }

    /// A schema floor above the table's version stayed for [`SCHEMA_CHANGE_WAIT_MS`]: the
    /// change that raised it did not commit. Give the table the next version unchanged, so
    /// writes planned on it pass the floor; the unfinished change, if it still comes, is
    /// refused (its expected version is gone) and its statement fails.
    async fn bump_schema(&self, stmt: &Write, ctx: &ExecContext, proposer: &dyn Proposer) -> Result<()> {
        let def: std::sync::Arc<TableDef> = self.resolve_table(&write_target(stmt)?, ctx)?;
        self.bump_version(&def, proposer).await
    }

    /// Give `def`'s table the next schema version, unchanged, unless its version moved on.
    pub(super) async fn bump_version(&self, def: &TableDef, proposer: &dyn Proposer) -> Result<()> {
        tracing::warn!(target: "kalamdb_sql", table = %format!("{}.{}", def.namespace, def.name), version = def.schema_version(), "a schema change fenced writes and did not commit; bumping the schema version");
        let op = Op::AlterTable {
            namespace: def.namespace.clone(),
            name: def.name.clone(),
            change: TableChange::Bump,
            description: "schema version bumped: a change fenced writes and did not commit".into(),
            altered_at_micros: now_micros(),
            expected_version: def.schema_version(),
        };
        match self.propose_ok(proposer, catalog_group(), op).await {
            // A conflict: the change (or another writer's bump) committed meanwhile.
            Ok(_) | Err(Error::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
