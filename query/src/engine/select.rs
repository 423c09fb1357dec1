//! Reads: the point-select fast path, DataFusion sessions bound to the caller's scope,
//! queries (also `AS OF` a past log index), and the tail's typed `last_rows` read.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::catalog::MemoryCatalogProviderList;
use datafusion::common::ScalarValue;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::{SessionConfig, SessionContext, SessionState};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{self, Expr, ObjectName, SetExpr, TableFactor};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use kalamdb_log::{DataType, TableDef, Value};
use kalamdb_projections::rows::Lookup;

use super::{CATALOG_NAME, DEFAULT_NAMESPACE, Engine, ExecContext, QueryResult, batches_to_result};
use crate::access;
use crate::error::{Error, Result};
use crate::limits::collect_bounded;
use crate::parse::{PointKey, PointSelect};
use crate::provider::{DELETED_COLUMN, KalamCatalog, SEQ_COLUMN, ScanScope};
use crate::values::{Literal, coerce, value_to_json};

/// `SELECT <projection> [FROM <from>] [WHERE <selection>]` as a syntax tree, from typed parts.
/// The tree's shape comes from parsing a fixed text once; no caller text is parsed here.
pub(super) fn select_statement(
    projection: Vec<ast::SelectItem>,
    from: Option<ObjectName>,
    selection: Option<Expr>,
) -> Result<ast::Statement> {
    let template = if from.is_some() { "SELECT 1 FROM t" } else { "SELECT 1" };
    let mut stmts = datafusion::sql::sqlparser::parser::Parser::parse_sql(&GenericDialect {}, template)
        .map_err(|e| Error::Internal(format!("select template: {e}")))?;
    let mut stmt = stmts.pop().ok_or_else(|| Error::Internal("select template is empty".into()))?;
    let ast::Statement::Query(query) = &mut stmt else {
        return Err(Error::Internal("select template is not a query".into()));
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Err(Error::Internal("select template is not a SELECT".into()));
    };
    select.projection = projection;
    select.selection = selection;
    if let Some(name) = from {
        match select.from.first_mut().map(|t| &mut t.relation) {
            Some(TableFactor::Table { name: table, .. }) => *table = name,
            _ => return Err(Error::Internal("select template has no table".into())),
        }
    }
    Ok(stmt)
}

fn param_scalar(v: &serde_json::Value) -> ScalarValue {
    match v {
        serde_json::Value::Null => ScalarValue::Null,
        serde_json::Value::Bool(b) => ScalarValue::Boolean(Some(*b)),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => ScalarValue::Int64(Some(i)),
            None => ScalarValue::Float64(n.as_f64()),
        },
        serde_json::Value::String(s) => ScalarValue::Utf8(Some(s.clone())),
        other => ScalarValue::Utf8(Some(other.to_string())),
    }
}

/// The session every statement's session is built from: our settings and DataFusion's
/// runtime (memory pool, spill folder).
pub(super) fn session_template(env: Arc<RuntimeEnv>) -> SessionState {
    let config = SessionConfig::new()
        .with_create_default_catalog_and_schema(false)
        .with_information_schema(false)
        .with_target_partitions(2);
    SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(env)
        .with_default_features()
        .with_physical_optimizer_rule(Arc::new(crate::limits::YieldAfterJoins))
        .build()
}

impl Engine {
    /// The flushed version `seq` of a row, read from its file: in place when files are local,
    /// on a blocking thread when the file may have to be fetched from a bucket first.
    async fn cold_row(
        &self,
        group: kalamdb_log::GroupId,
        def: &Arc<TableDef>,
        scope: &str,
        key: &Value,
        seq: u64,
    ) -> std::result::Result<Option<kalamdb_projections::StoredRow>, String> {
        if !self.rows.cold_files_remote() {
            return self.rows.cold_row(group, def, scope, key, seq).map_err(|e| e.to_string());
        }
        let (rows, def, scope, key) = (self.rows.clone(), def.clone(), scope.to_string(), key.clone());
        tokio::task::spawn_blocking(move || rows.cold_row(group, &def, &scope, &key, seq))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    pub(super) async fn try_point_select(&self, ps: &PointSelect, ctx: &ExecContext) -> Result<Option<QueryResult>> {
        let ns = self.namespace_of(&ps.table, ctx);
        let Some(def) = self.catalog.table(&ns, &ps.table.name) else {
            return Ok(None);
        };
        access::check_read(ctx.role, &def)?;
        let pk = def.pk_index();
        if def.columns[pk].name != ps.key_column {
            return Ok(None);
        }
        // Resolve the output columns; anything unknown goes the general path for its error.
        let mut out: Vec<(String, String, Option<usize>)> = Vec::new();
        match &ps.columns {
            None => {
                for (i, c) in def.visible_columns() {
                    out.push((c.name.clone(), c.data_type.api_name().to_string(), Some(i)));
                }
                out.push((SEQ_COLUMN.into(), "BigInt".into(), None));
                out.push((DELETED_COLUMN.into(), "Boolean".into(), None));
            }
            Some(cols) => {
                for name in cols {
                    if name == SEQ_COLUMN {
                        out.push((name.clone(), "BigInt".into(), None));
                    } else if name == DELETED_COLUMN {
                        out.push((name.clone(), "Boolean".into(), None));
                    } else {
                        let Some(i) = def.column_index(name) else { return Ok(None) };
                        out.push((name.clone(), def.columns[i].data_type.api_name().to_string(), Some(i)));
                    }
                }
            }
        }
        let key = match &ps.key {
            PointKey::Literal(literal) => literal.clone(),
            PointKey::Param(n) => match ctx.params.get(n - 1) {
                Some(v) => Literal::from_json(v),
                None => return Ok(None),
            },
        };
        let Ok(key) = coerce(&key, def.columns[pk].data_type) else { return Ok(None) };
        let (group, scope) = self.layout.table_location(&def, &ctx.user_id);
        self.barrier(ctx, group).await?;
        let row = match self.rows.lookup(group, def.table_id, &scope, &key)? {
            Lookup::Hot(row) => Some(row),
            // The newest version is in a Parquet file: read the pages that can hold it. If a
            // compaction just moved it, or the keyed read fails, the general path scans for it:
            // this read is only a faster way to the same answer.
            Lookup::Cold(seq) => match self.cold_row(group, &def, &scope, &key, seq).await {
                Ok(Some(row)) => Some(row),
                Ok(None) => return Ok(None),
                Err(e) => {
                    tracing::warn!(target: "kalamdb_sql", table_id = def.table_id, error = %e, "keyed read of a flushed row failed; scanning");
                    return Ok(None);
                }
            },
            Lookup::Absent => None,
        };
        let mut rows = Vec::new();
        if let Some(row) = row.filter(|r| !r.deleted) {
            let cells = out
                .iter()
                .map(|(name, _, idx)| match idx {
                    // A row written before the column was added reads its backfill.
                    Some(i) => {
                        value_to_json(row.values.get(*i).or(def.columns[*i].backfill.as_ref()).unwrap_or(&Value::Null))
                    }
                    None if name == SEQ_COLUMN => serde_json::Value::String(row.seq.to_string()),
                    None => serde_json::Value::Bool(row.deleted),
                })
                .collect();
            rows.push(cells);
        }
        Ok(Some(QueryResult::rows(out.into_iter().map(|(n, t, _)| (n, t)).collect(), rows)))
    }

    fn session(&self, ctx: &ExecContext, as_of: Arc<Vec<(String, String, u64)>>) -> SessionContext {
        let ns = ctx.namespace.clone().unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        let config = SessionConfig::new()
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(false)
            .with_target_partitions(2)
            .with_default_catalog_and_schema(CATALOG_NAME, ns);
        // A fresh catalog list per request: catalogs are bound to the caller's scope.
        let state = SessionStateBuilder::new_from_existing(self.template.clone())
            .with_config(config)
            .with_catalog_list(Arc::new(MemoryCatalogProviderList::new()))
            .build();
        let session = SessionContext::new_with_state(state);
        let scope = ScanScope {
            catalog: self.catalog.clone(),
            rows: self.rows.clone(),
            layout: self.layout,
            user_id: ctx.user_id.clone(),
            role: ctx.role,
            barrier: ctx.barrier.clone(),
            cluster: self.cluster.clone(),
            node: self.node.clone(),
            jobs: self.jobs.clone(),
            as_of,
            held: Default::default(),
            batch: ctx.batch.clone(),
        };
        session.register_catalog(CATALOG_NAME, Arc::new(KalamCatalog { scope }));
        session
    }

    /// DataFusion reports `table 'kalam.ns.t' not found`; say which part is missing, in our words.
    fn refine_not_found(&self, e: Error) -> Error {
        let Error::TableNotFound(m) = &e else { return e };
        let Some(name) = m.split('\'').nth(1) else { return e };
        let parts: Vec<&str> = name.split('.').collect();
        let (ns, table) = match parts.as_slice() {
            [_, ns, t] | [ns, t] => (*ns, *t),
            _ => return e,
        };
        if !crate::provider::RESERVED_NAMESPACES.contains(&ns) && !self.catalog.namespace_exists(ns) {
            Error::NamespaceNotFound(format!("Namespace '{ns}' does not exist"))
        } else {
            Error::TableNotFound(format!("Table '{ns}.{table}' does not exist"))
        }
    }

    /// Run a query through DataFusion and collect its batches.
    pub(super) async fn run_query(&self, stmt: ast::Statement, ctx: &ExecContext) -> Result<Vec<RecordBatch>> {
        self.run_query_as_of(stmt, ctx, Arc::new(Vec::new())).await
    }

    /// Run a query with some tables read as of a past log position (time travel).
    pub(super) async fn run_query_as_of(
        &self,
        stmt: ast::Statement,
        ctx: &ExecContext,
        as_of: Arc<Vec<(String, String, u64)>>,
    ) -> Result<Vec<RecordBatch>> {
        let session = self.session(ctx, as_of);
        let params: Vec<ScalarValue> = ctx.params.iter().map(param_scalar).collect();
        let (rows_max, bytes_max) = (self.limits.result_rows_max, self.limits.result_bytes_max);
        // Planning runs on the query runtime too: table scans read the projections there.
        // Boxed here, where it is made: DataFusion's planning and execution state is ~19 KiB,
        // and held inline it would make every caller's future (an INSERT's included) that
        // large, copied whole each time one is boxed or moved.
        let work = Box::pin(async move {
            let mut plan = session.state().statement_to_plan(DfStatement::Statement(Box::new(stmt))).await?;
            if !params.is_empty() {
                plan = plan.with_param_values(params)?;
            }
            let df = session.execute_logical_plan(plan).await?;
            collect_bounded(df.execute_stream().await?, rows_max, bytes_max).await
        });
        self.executor.run(work).await.map_err(|e| self.refine_not_found(e))
    }

    /// The newest `n` rows of a table in the caller's scope (matching `filter`), newest
    /// first, each with its `_seq` last: a typed plan, no SQL text. Reads the table as a
    /// query does (access check, memory pool, admission, deadline).
    pub async fn last_rows(
        &self,
        def: &TableDef,
        filter: Option<&crate::filter::RowFilter>,
        n: u64,
        ctx: &ExecContext,
    ) -> Result<QueryResult> {
        let batches =
            self.seq_batches(def, filter, SeqWindow { after: None, upto: None, newest: true }, n, ctx).await?;
        Ok(batches_to_result(&batches))
    }

    /// At most `n` rows of a table in the caller's scope (matching `filter`) whose `_seq` lies
    /// in `window`, by `_seq` (descending when `window.newest`): each row's values in table
    /// column order (dropped columns NULL) and its `_seq`. The initial data of a live query,
    /// batch by batch.
    pub async fn seq_rows(
        &self,
        def: &TableDef,
        filter: Option<&crate::filter::RowFilter>,
        window: SeqWindow,
        n: u64,
        ctx: &ExecContext,
    ) -> Result<Vec<(Vec<Value>, u64)>> {
        let batches = self.seq_batches(def, filter, window, n, ctx).await?;
        let visible: Vec<usize> = def.visible_columns().map(|(i, _)| i).collect();
        let mut out = Vec::new();
        for b in &batches {
            for r in 0..b.num_rows() {
                let mut values = vec![Value::Null; def.columns.len()];
                for (k, &i) in visible.iter().enumerate() {
                    values[i] = crate::values::cell_to_value(b.column(k), r, def.columns[i].data_type)?;
                }
                let Value::BigInt(seq) = crate::values::cell_to_value(b.column(visible.len()), r, DataType::BigInt)?
                else {
                    return Err(Error::Internal("a row without _seq".into()));
                };
                out.push((values, u64::try_from(seq).map_err(|_| Error::Internal("a negative _seq".into()))?));
            }
        }
        Ok(out)
    }

    /// The record batches of [`Engine::seq_rows`]: visible columns, then `_seq`.
    async fn seq_batches(
        &self,
        def: &TableDef,
        filter: Option<&crate::filter::RowFilter>,
        window: SeqWindow,
        n: u64,
        ctx: &ExecContext,
    ) -> Result<Vec<RecordBatch>> {
        use datafusion::prelude::{ident, lit};
        let n = usize::try_from(n).map_err(|_| Error::InvalidSql(format!("{n} rows is too many")))?;
        let bound = |s: u64| i64::try_from(s).map_err(|_| Error::InvalidSql(format!("_seq {s} is out of range")));
        let (after, upto) = (window.after.map(bound).transpose()?, window.upto.map(bound).transpose()?);
        self.barrier(ctx, super::catalog_group()).await?;
        let session = self.session(ctx, Arc::new(Vec::new()));
        let reference = datafusion::common::TableReference::full(CATALOG_NAME, def.namespace.clone(), def.name.clone());
        let mut columns: Vec<datafusion::logical_expr::Expr> =
            def.visible_columns().map(|(_, c)| ident(c.name.clone())).collect();
        columns.push(ident(crate::provider::SEQ_COLUMN));
        let mut predicates: Vec<datafusion::logical_expr::Expr> = filter.map(|f| f.to_expr(def)).into_iter().collect();
        if let Some(a) = after {
            predicates.push(ident(crate::provider::SEQ_COLUMN).gt(lit(a)));
        }
        if let Some(u) = upto {
            predicates.push(ident(crate::provider::SEQ_COLUMN).lt_eq(lit(u)));
        }
        let (rows_max, bytes_max) = (self.limits.result_rows_max, self.limits.result_bytes_max);
        let work = async move {
            let mut df = session.table(reference).await?;
            for p in predicates {
                df = df.filter(p)?;
            }
            let df = df
                .sort(vec![ident(crate::provider::SEQ_COLUMN).sort(!window.newest, true)])?
                .limit(0, Some(n))?
                .select(columns)?;
            collect_bounded(df.execute_stream().await?, rows_max, bytes_max).await
        };
        let batches = self
            .with_deadline("reading the newest rows", self.executor.run(work))
            .await
            .map_err(|e| self.refine_not_found(e))?;
        Ok(batches)
    }
}

/// Which row versions [`Engine::seq_rows`] reads: `_seq` after `after` and at most `upto`,
/// oldest first, or newest first when `newest`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeqWindow {
    pub after: Option<u64>,
    pub upto: Option<u64>,
    pub newest: bool,
}
