//! The statement engine, a dispatcher over statement families (`ddl`, `dml`, `select`,
//! `users`, `admin`): reads are answered from the local projections (DataFusion, or a
//! direct primary-key lookup), writes are turned into [`Op`]s and handed to a [`Proposer`]
//! (the node), which puts them in the log. This crate never writes a projection itself.

mod admin;
mod alter;
mod batch;
mod cluster;
mod ddl;
mod dml;
#[cfg(test)]
mod future_sizes;
mod select;
mod unfenced;
mod users;

use unfenced::Write;
pub use unfenced::{SCHEMA_BUMPS_MAX, SCHEMA_CHANGE_WAIT_MS, SCHEMA_RETRY_PAUSE_MS};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::RecordBatch;
use datafusion::execution::context::SessionState;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::sql::sqlparser::ast::{self, Expr, ObjectName, TableFactor, UnaryOperator};
use kalamdb_log::command::ApplyErrorCode;
use kalamdb_log::{GroupId, GroupLayout, MetaGroup, Op, OpResult, Role, TableDef};
use kalamdb_projections::{Catalog, RowReader};
use serde::Serialize;

pub use batch::{Batch, Pending, TRANSACTION_ROWS_MAX};
pub use ddl::{TTL_OPTION, TTL_SECONDS_MAX, ttl_secs};
pub use select::SeqWindow;

use crate::error::{Error, Result};
use crate::limits::{Executor, QueryLimits};
use crate::parse::{Parsed, Statement, TableName, parse, scan_values_insert, split_request};
use crate::ports::{BackupRunner, ClusterControl, ClusterView, JobSource, NodeView, Proposer, ReadBarrier};
use crate::values::{Literal, api_type_name, cell_to_json};

/// Rows one INSERT, UPDATE or DELETE statement may write (well under the log's per-entry cap).
pub const STATEMENT_ROWS_MAX: usize = 100_000;
/// Columns one table may have.
pub const TABLE_COLUMNS_MAX: usize = 1024;
/// Times an UPDATE/DELETE is re-planned after a write conflict before giving up.
pub const CONFLICT_RETRIES_MAX: usize = 8;
/// Default namespace for unqualified table names.
pub const DEFAULT_NAMESPACE: &str = "default";
pub(crate) const CATALOG_NAME: &str = "kalam";

/// The built-in superuser; its identity is `root` with the system role on every node.
pub const ROOT_USERNAME: &str = "root";
/// User names that are built in and cannot be created, altered or dropped with SQL.
pub const RESERVED_USERNAMES: [&str; 2] = [ROOT_USERNAME, "anonymous"];

/// Who runs a statement, and with what parameters.
#[derive(Debug, Clone)]
pub struct ExecContext {
    /// The caller's user id: the scope of its rows in USER and STREAM tables.
    pub user_id: String,
    /// What the caller may do (see [`crate::access`]).
    pub role: Role,
    pub namespace: Option<String>,
    pub params: Vec<serde_json::Value>,
    /// Set for linearizable reads (the default); `None` reads the local projection as is.
    pub barrier: Option<Arc<dyn ReadBarrier>>,
    /// The id of the user who sent the statement, when it runs `EXECUTE AS` another user:
    /// rights that belong to a user over itself (changing its own password) are not lent.
    pub impersonated_by: Option<String>,
    /// Set by the engine for the statements between `BEGIN` and `COMMIT`: their writes are
    /// gathered here instead of proposed, and their reads see them. Callers pass `None`.
    pub batch: Option<Arc<batch::Batch>>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ColumnInfo {
    pub name: String,
    pub data_type: String,
    pub index: usize,
}

/// One statement's result, in the HTTP API's shape.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QueryResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<Vec<ColumnInfo>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<Vec<serde_json::Value>>>,
    pub row_count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The user the statement ran as (KalamDB's `as_user`); the node fills it in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_user: Option<String>,
    /// The statement's kind (`statement_kind`), for metrics; not part of the answer.
    #[serde(skip)]
    pub kind: &'static str,
    /// A `SUBSCRIBE`'s answer as data; the node turns it into the tail endpoint's URL (the
    /// result's rows) before the answer leaves.
    #[serde(skip)]
    pub subscription: Option<Subscription>,
}

/// What `SUBSCRIBE TO` asks for, checked against the table and the caller's rights.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    /// `namespace.table`.
    pub table: String,
    /// The filter as written (it parsed and refers to the table's columns).
    pub filter: Option<String>,
    pub last_rows: Option<u64>,
    /// Where the stream starts (a tail cursor or `earliest`/`latest`), as given.
    pub from: Option<String>,
}

impl QueryResult {
    fn message(row_count: usize, message: String) -> QueryResult {
        QueryResult {
            schema: None,
            rows: None,
            row_count,
            message: Some(message),
            as_user: None,
            kind: "other",
            subscription: None,
        }
    }

    /// A result with these `(name, type)` columns and rows.
    pub fn rows(columns: Vec<(String, String)>, rows: Vec<Vec<serde_json::Value>>) -> QueryResult {
        let schema = columns
            .into_iter()
            .enumerate()
            .map(|(index, (name, data_type))| ColumnInfo { name, data_type, index })
            .collect();
        QueryResult {
            schema: Some(schema),
            row_count: rows.len(),
            rows: Some(rows),
            message: None,
            as_user: None,
            kind: "other",
            subscription: None,
        }
    }
}

/// A storage statement's op kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageJob {
    Flush,
    Compact,
    Rebuild,
}

/// Snowflake ids: 41 bits of milliseconds since 2024-01-01, 10 bits of node id, 12 bits of
/// sequence. Generated by the proposing node, so apply never needs a clock.
#[derive(Debug)]
pub struct SnowflakeGen {
    node_bits: u64,
    /// (ms since epoch << 12) | sequence of the last id handed out.
    last: AtomicU64,
}

const SNOWFLAKE_EPOCH_MS: u64 = 1_704_067_200_000;

impl SnowflakeGen {
    pub fn new(node_id: u64) -> SnowflakeGen {
        SnowflakeGen { node_bits: (node_id & 0x3ff) << 12, last: AtomicU64::new(0) }
    }

    pub fn next_id(&self) -> i64 {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let now = now_ms.saturating_sub(SNOWFLAKE_EPOCH_MS) << 12;
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            // Never go backwards (clock steps) and never repeat: take max(now, prev + 1).
            let next = if now > prev { now } else { prev + 1 };
            match self.last.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    let ms = next >> 12;
                    let seq = next & 0xfff;
                    return ((ms << 22) | self.node_bits | seq) as i64;
                }
                Err(p) => prev = p,
            }
        }
    }
}

pub fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// Executes statements against the node's projections.
pub struct Engine {
    catalog: Arc<Catalog>,
    rows: RowReader,
    layout: GroupLayout,
    ids: SnowflakeGen,
    template: SessionState,
    cluster: Option<Arc<dyn ClusterView>>,
    cluster_control: Option<Arc<dyn ClusterControl>>,
    node: Option<Arc<dyn NodeView>>,
    jobs: Option<Arc<dyn JobSource>>,
    backups: Option<Arc<dyn BackupRunner>>,
    limits: QueryLimits,
    executor: Arc<Executor>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("layout", &self.layout).finish()
    }
}

fn catalog_group() -> GroupId {
    GroupId::Meta(MetaGroup::Catalog)
}

fn users_group() -> GroupId {
    GroupId::Meta(MetaGroup::Users)
}

fn apply_failure(code: ApplyErrorCode, message: String) -> Error {
    match code {
        ApplyErrorCode::AlreadyExists => Error::AlreadyExists(message),
        ApplyErrorCode::NamespaceNotFound => Error::NamespaceNotFound(message),
        ApplyErrorCode::NamespaceNotEmpty => Error::NamespaceNotEmpty(message),
        ApplyErrorCode::TableNotFound => Error::TableNotFound(message),
        ApplyErrorCode::ConstraintViolation => Error::ConstraintViolation(message),
        ApplyErrorCode::Conflict => Error::Conflict(message),
        ApplyErrorCode::HistoryUnavailable => Error::HistoryUnavailable(message),
        ApplyErrorCode::UserNotFound => Error::UserNotFound(message),
        ApplyErrorCode::QuotaExceeded => Error::Busy(message),
        ApplyErrorCode::StaleSchema => Error::SchemaChanged(message),
    }
}

fn ident_name(ident: &ast::Ident) -> String {
    if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_lowercase() }
}

pub(crate) fn object_table_name(name: &ObjectName) -> Result<TableName> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| {
            p.as_ident().map(ident_name).ok_or_else(|| Error::InvalidSql(format!("unsupported table name {name}")))
        })
        .collect::<Result<_>>()?;
    match parts.as_slice() {
        [t] => Ok(TableName { namespace: None, name: t.clone() }),
        [ns, t] => Ok(TableName { namespace: Some(ns.clone()), name: t.clone() }),
        _ => Err(Error::InvalidSql(format!("table name {name} must be namespace.table"))),
    }
}

fn single_table(twj: &[ast::TableWithJoins]) -> Result<TableName> {
    match twj {
        [t] if t.joins.is_empty() => match &t.relation {
            TableFactor::Table { name, .. } => object_table_name(name),
            other => Err(Error::InvalidSql(format!("unsupported table reference {other}"))),
        },
        _ => Err(Error::InvalidSql("UPDATE and DELETE take exactly one table, without joins".into())),
    }
}

pub(crate) fn column_name(name: &ObjectName) -> Result<String> {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(ident_name)
        .ok_or_else(|| Error::InvalidSql(format!("unsupported column name {name}")))
}

/// A literal (or `$n` parameter) in an expression, if it is one.
pub(crate) fn literal_of(expr: &Expr, params: &[serde_json::Value]) -> Result<Option<Literal>> {
    use ast::Value as V;
    Ok(match expr {
        Expr::Value(v) => match &v.value {
            V::Number(n, _) => Some(Literal::Number(n.clone())),
            V::SingleQuotedString(s) | V::DoubleQuotedString(s) | V::EscapedStringLiteral(s) => {
                Some(Literal::String(s.clone()))
            }
            V::Boolean(b) => Some(Literal::Bool(*b)),
            V::Null => Some(Literal::Null),
            V::Placeholder(p) => {
                let idx: usize = p
                    .trim_start_matches('$')
                    .parse()
                    .map_err(|_| Error::InvalidSql(format!("unsupported placeholder {p}; use $1, $2, ...")))?;
                let v = idx
                    .checked_sub(1)
                    .and_then(|i| params.get(i))
                    .ok_or_else(|| Error::InvalidSql(format!("placeholder {p} has no parameter")))?;
                Some(Literal::from_json(v))
            }
            _ => None,
        },
        Expr::UnaryOp { op: UnaryOperator::Minus, expr } => match literal_of(expr, params)? {
            Some(Literal::Number(n)) => Some(Literal::Number(format!("-{n}"))),
            _ => None,
        },
        Expr::Nested(e) => literal_of(e, params)?,
        _ => None,
    })
}

impl Engine {
    /// An engine with default limits, no spilling, running queries on the caller's runtime
    /// (tests and tools); the node uses [`Engine::with_limits`].
    pub fn new(catalog: Arc<Catalog>, rows: RowReader, layout: GroupLayout, node_id: u64) -> Engine {
        let limits = QueryLimits::default();
        let env = limits.runtime_env().unwrap_or_else(|_| Arc::new(RuntimeEnv::default()));
        Engine {
            catalog,
            rows,
            layout,
            ids: SnowflakeGen::new(node_id),
            template: select::session_template(env),
            cluster: None,
            cluster_control: None,
            node: None,
            jobs: None,
            backups: None,
            executor: Arc::new(Executor::new(&limits, None)),
            limits,
        }
    }

    /// Bound what statements may cost, and run DataFusion work on `runtime` (the node's query
    /// runtime, apart from the one serving Raft, the log and HTTP).
    pub fn with_limits(mut self, limits: QueryLimits, runtime: Option<tokio::runtime::Handle>) -> Result<Engine> {
        limits.validate().map_err(Error::Internal)?;
        self.template = select::session_template(limits.runtime_env()?);
        self.executor = Arc::new(Executor::new(&limits, runtime));
        self.limits = limits;
        Ok(self)
    }

    /// Serve `system.jobs` from `jobs` (the node's storage job log).
    pub fn with_jobs(mut self, jobs: Arc<dyn JobSource>) -> Engine {
        self.jobs = Some(jobs);
        self
    }

    /// Run `BACKUP DATABASE` through `runner` (the node's backup jobs).
    pub fn with_backups(mut self, runner: Arc<dyn BackupRunner>) -> Engine {
        self.backups = Some(runner);
        self
    }

    /// Carry out `CLUSTER` statements through `control`.
    pub fn with_cluster_control(mut self, control: Arc<dyn ClusterControl>) -> Engine {
        self.cluster_control = Some(control);
        self
    }

    /// Serve `system.cluster` and `system.cluster_groups` from `view`.
    pub fn with_cluster(mut self, view: Arc<dyn ClusterView>) -> Engine {
        self.cluster = Some(view);
        self
    }

    /// Serve `system.stats` and `system.sessions` from `view`.
    pub fn with_node(mut self, view: Arc<dyn NodeView>) -> Engine {
        self.node = Some(view);
        self
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn layout(&self) -> GroupLayout {
        self.layout
    }

    async fn barrier(&self, ctx: &ExecContext, group: GroupId) -> Result<()> {
        match &ctx.barrier {
            Some(b) => b.wait(group).await,
            None => Ok(()),
        }
    }

    async fn propose_ok(&self, proposer: &dyn Proposer, group: GroupId, op: Op) -> Result<OpResult> {
        ok_result(proposer.propose(group, op).await?)
    }

    fn namespace_of(&self, table: &TableName, ctx: &ExecContext) -> String {
        table.namespace.clone().or_else(|| ctx.namespace.clone()).unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
    }

    pub(crate) fn resolve_table(&self, table: &TableName, ctx: &ExecContext) -> Result<Arc<TableDef>> {
        let ns = self.namespace_of(table, ctx);
        if let Some(def) = self.catalog.table(&ns, &table.name) {
            return Ok(def);
        }
        if !self.catalog.namespace_exists(&ns) {
            return Err(Error::NamespaceNotFound(format!("Namespace '{ns}' does not exist")));
        }
        Err(Error::TableNotFound(format!("Table '{ns}.{}' does not exist", table.name)))
    }

    /// Run every statement of `sql` in order. Stops at the first error, reporting which
    /// statement failed; earlier statements keep their effects, except that the writes of a
    /// `BEGIN ... COMMIT` batch apply all or nothing (see `batch`).
    pub async fn execute(&self, sql: &str, ctx: &ExecContext, proposer: &dyn Proposer) -> Result<Vec<QueryResult>> {
        if ctx.params.len() > self.limits.params_max {
            return Err(Error::RequestTooLarge(format!(
                "{} parameters given; at most {} are accepted (limits.params_max)",
                ctx.params.len(),
                self.limits.params_max
            )));
        }
        // The bulk write path: one INSERT of literal rows, read without tokens.
        if let Some(insert) = scan_values_insert(sql) {
            let parsed = Parsed { kind: "insert", statement: Statement::InsertValues(Box::new(insert)) };
            return Ok(vec![self.run_statement(parsed, ctx, proposer).await?]);
        }
        let statements = split_request(sql)?;
        if statements.is_empty() {
            return Err(Error::InvalidSql("no SQL statement given".into()));
        }
        if statements.len() > self.limits.statements_per_request_max {
            return Err(Error::RequestTooLarge(format!(
                "{} statements in one request; at most {} are accepted (limits.statements_per_request_max)",
                statements.len(),
                self.limits.statements_per_request_max
            )));
        }
        let many = statements.len() > 1;
        let numbered = |e: Error, i: usize| if many { prefix_error(e, i + 1) } else { e };
        let mut results = Vec::with_capacity(statements.len());
        let mut statements = statements.into_iter().enumerate();
        while let Some((i, source)) = statements.next() {
            let parsed = parse(source).map_err(|e| numbered(e, i))?;
            match parsed.statement {
                Statement::Begin => {
                    // The batch's statements are parsed before any of them runs: a syntax error
                    // anywhere in it writes nothing.
                    let mut body = Vec::new();
                    let (end, commit) = loop {
                        let Some((j, source)) = statements.next() else {
                            return Err(numbered(
                                Error::InvalidSql(
                                    "BEGIN without COMMIT or ROLLBACK in the same request; nothing was written".into(),
                                ),
                                i,
                            ));
                        };
                        let p = parse(source).map_err(|e| numbered(e, j))?;
                        match p.statement {
                            Statement::Commit => break (j, true),
                            Statement::Rollback => break (j, false),
                            Statement::Begin => {
                                return Err(numbered(
                                    Error::InvalidSql("BEGIN inside a batch; batches do not nest".into()),
                                    j,
                                ));
                            }
                            _ => body.push((j, p)),
                        }
                    };
                    // Boxed like `run` below: a batch's state is ~9 KiB.
                    let batch = Box::pin(self.run_batch(body, end, commit, ctx, proposer))
                        .await
                        .map_err(|(j, e)| numbered(e, j))?;
                    results.extend(batch);
                }
                Statement::Commit | Statement::Rollback => {
                    return Err(numbered(Error::InvalidSql("COMMIT or ROLLBACK without BEGIN".into()), i));
                }
                _ => results.push(self.run_statement(parsed, ctx, proposer).await.map_err(|e| numbered(e, i))?),
            }
        }
        Ok(results)
    }

    /// One statement outside a batch, under the statement deadline, its result labelled with
    /// the statement's kind.
    async fn run_statement(&self, parsed: Parsed, ctx: &ExecContext, proposer: &dyn Proposer) -> Result<QueryResult> {
        let kind = parsed.kind;
        // A storage job (FLUSH, COMPACT, REBUILD) writes files inside apply and is bounded per
        // group by the proposer's storage-job timeout instead: under the query deadline a big
        // flush was reported cancelled while it went on and committed.
        let storage_job = matches!(parsed.statement, Statement::Storage { .. } | Statement::Rebuild { .. });
        // Boxed: a future held inline is copied whenever its parent moves (7% of a point
        // lookup's CPU was that memcpy:
        // benches/profiles/2026-12-05-flushed-point-lookups-page-cache.svg). So is each
        // statement family's future in `run`, and DataFusion's in `run_query_as_of`: boxing
        // copies a future once, so each box holds only its own level's state (an INSERT copied
        // ~110 KiB before, ~15 KiB now).
        let run = Box::pin(self.run(parsed, ctx, proposer));
        let mut r = if storage_job { run.await } else { self.with_deadline("the statement", run).await }?;
        r.kind = kind;
        Ok(r)
    }

    /// Run `work` under the statement deadline. Dropping it at the deadline aborts its query
    /// task (see `limits`); a write already proposed may still commit, as after any lost answer.
    async fn with_deadline<T>(&self, what: &str, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.limits.timeout(), work).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::QueryTimeout(format!(
                "{what} ran longer than {} ms (limits.query_timeout_ms) and was cancelled",
                self.limits.timeout_ms
            ))),
        }
    }

    /// One parsed statement, dispatched to its family.
    async fn run(&self, parsed: Parsed, ctx: &ExecContext, proposer: &dyn Proposer) -> Result<QueryResult> {
        // Every statement sees every catalog change committed before it started. Reads and
        // DDL wait for the catalog's read index here; a row write is planned on this node's
        // replica as it is, and the data group refuses it if a schema change fenced the
        // version it was planned on (see `unfenced`). Table scans add their own group's barrier.
        if let Some(unfenced) = unfenced::row_write(&parsed.statement, ctx) {
            let write = match parsed.statement {
                Statement::Sql(stmt) => Write::Sql(*stmt),
                Statement::InsertValues(insert) => Write::Values(*insert),
                _ => unreachable!("checked by row_write"),
            };
            return Box::pin(self.run_row_write(write, unfenced, ctx, proposer)).await;
        }
        self.barrier(ctx, catalog_group()).await?;
        match parsed.statement {
            Statement::ExecuteAs { username, statement } => {
                Box::pin(self.execute_as(username, *statement, ctx, proposer)).await
            }
            s @ (Statement::CreateUser { .. } | Statement::AlterUser { .. } | Statement::DropUser { .. }) => {
                self.user_statement(s, ctx, proposer).await
            }
            s @ (Statement::CreateNamespace { .. }
            | Statement::DropNamespace { .. }
            | Statement::ShowNamespaces
            | Statement::CreateTable(_)
            | Statement::DropTable { .. }
            | Statement::ShowTables { .. }
            | Statement::DescribeTable { .. }
            | Statement::AlterTable { .. }) => self.ddl_statement(s, ctx, proposer).await,
            s @ (Statement::Storage { .. }
            | Statement::Rebuild { .. }
            | Statement::Subscribe { .. }
            | Statement::Backup { .. }) => self.admin_statement(s, ctx, proposer).await,
            Statement::Cluster(command) => Box::pin(self.cluster_statement(command, ctx)).await,
            // Inside a batch the lookup would miss the batch's own writes: scan instead.
            Statement::PointSelect { rest, .. } if ctx.batch.is_some() => {
                Box::pin(self.execute_sql(rest.parse()?, ctx, proposer)).await
            }
            Statement::PointSelect { point, rest } => match Box::pin(self.try_point_select(&point, ctx)).await? {
                Some(result) => Ok(result),
                None => Box::pin(self.execute_sql(rest.parse()?, ctx, proposer)).await,
            },
            Statement::AsOf { query, positions } => {
                let as_of = positions.into_iter().map(|(t, at)| (self.namespace_of(&t, ctx), t.name, at)).collect();
                let batches = Box::pin(self.run_query_as_of(*query, ctx, Arc::new(as_of))).await?;
                Ok(batches_to_result(&batches))
            }
            Statement::Sql(stmt) => Box::pin(self.execute_sql(*stmt, ctx, proposer)).await,
            Statement::InsertValues(insert) => {
                Box::pin(self.execute_write(&Write::Values(*insert), ctx, proposer)).await
            }
            Statement::Begin | Statement::Commit | Statement::Rollback => {
                Err(Error::InvalidSql("BEGIN, COMMIT and ROLLBACK end or start a batch; they do not nest".into()))
            }
        }
    }
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn prefix_error(e: Error, n: usize) -> Error {
    e.map_message(|m| format!("statement {n}: {m}"))
}

/// Arrow batches to the API's schema + rows.
pub fn batches_to_result(batches: &[RecordBatch]) -> QueryResult {
    let Some(first) = batches.first() else {
        return QueryResult::rows(Vec::new(), Vec::new());
    };
    let schema = first.schema();
    let cols: Vec<(String, String)> = schema.fields().iter().map(|f| (f.name().clone(), api_type_name(f))).collect();
    let mut rows = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            rows.push(b.columns().iter().map(|a| cell_to_json(a, r)).collect());
        }
    }
    QueryResult::rows(cols, rows)
}

/// An apply result as the statement's outcome: a failed op becomes its error.
pub(crate) fn ok_result(result: OpResult) -> Result<OpResult> {
    match result {
        OpResult::Failed { code, message } => Err(apply_failure(code, message)),
        ok => Ok(ok),
    }
}
