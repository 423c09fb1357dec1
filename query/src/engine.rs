//! The statement engine: reads are answered from the local projections (DataFusion, or a
//! direct primary-key lookup), writes are turned into [`Op`]s and handed to a [`Proposer`]
//! (the node), which puts them in the log. This crate never writes a projection itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::catalog::MemoryCatalogProviderList;
use datafusion::common::ScalarValue;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::{SessionConfig, SessionContext, SessionState};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    self, AssignmentTarget, Expr, FromTable, ObjectName, SetExpr, TableFactor, TableObject, UnaryOperator,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use kalamdb_log::command::ApplyErrorCode;
use kalamdb_log::{
    ColumnDef, DataType, DefaultExpr, GroupId, GroupLayout, MetaGroup, Op, OpResult, Role, RowWrite, TableDef,
    TableType, UserDef, Value,
};
use kalamdb_projections::rows::Lookup;
use kalamdb_projections::{Catalog, RowReader};
use serde::Serialize;

use crate::access::{self, ACCESS_LEVEL_OPTION, AccessLevel};
use crate::error::{Error, Result};
use crate::limits::{Executor, QueryLimits, collect_bounded};
use crate::parse::{
    ParsedCreateTable, Statement, StorageTarget, TableName, UserChange, first_keyword, parse_statement,
    split_statements,
};
use crate::provider::{
    ClusterView, DELETED_COLUMN, JobSource, KalamCatalog, ReadBarrier, SEQ_COLUMN, SYSTEM_NAMESPACE, ScanScope,
};
use crate::values::{Literal, api_type_name, cell_to_json, cell_to_value, coerce, value_to_json};

/// Rows one INSERT, UPDATE or DELETE statement may write (well under the log's per-entry cap).
pub const STATEMENT_ROWS_MAX: usize = 100_000;
/// Columns one table may have.
pub const TABLE_COLUMNS_MAX: usize = 1024;
/// Times an UPDATE/DELETE is re-planned after a write conflict before giving up.
pub const CONFLICT_RETRIES_MAX: usize = 8;
/// Default namespace for unqualified table names.
pub const DEFAULT_NAMESPACE: &str = "default";
const CATALOG_NAME: &str = "kalam";

/// User names that are built in and cannot be created, altered or dropped with SQL.
pub const RESERVED_USERNAMES: [&str; 2] = ["root", "anonymous"];

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
    /// The statement's kind (`statement_kind`), for metrics; not part of the answer.
    #[serde(skip)]
    pub kind: &'static str,
}

impl QueryResult {
    fn message(row_count: usize, message: String) -> QueryResult {
        QueryResult { schema: None, rows: None, row_count, message: Some(message), kind: "other" }
    }

    fn rows(columns: Vec<(String, String)>, rows: Vec<Vec<serde_json::Value>>) -> QueryResult {
        let schema = columns
            .into_iter()
            .enumerate()
            .map(|(index, (name, data_type))| ColumnInfo { name, data_type, index })
            .collect();
        QueryResult { schema: Some(schema), row_count: rows.len(), rows: Some(rows), message: None, kind: "other" }
    }
}

/// A storage statement's op kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageJob {
    Flush,
    Compact,
    Rebuild,
}

/// The node side of a write: put an op in the given group's log and return its apply result.
#[async_trait]
pub trait Proposer: Send + Sync {
    async fn propose(&self, group: GroupId, op: Op) -> Result<OpResult>;
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
    jobs: Option<Arc<dyn JobSource>>,
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

fn reserved_user(username: &str) -> Result<()> {
    if RESERVED_USERNAMES.contains(&username) {
        return Err(Error::InvalidSql(format!(
            "user '{username}' is built in and cannot be changed with SQL (root's password comes from auth.root_password or KALAMDB_ROOT_PASSWORD)"
        )));
    }
    Ok(())
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
    }
}

fn ident_name(ident: &ast::Ident) -> String {
    if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_lowercase() }
}

fn object_table_name(name: &ObjectName) -> Result<TableName> {
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

fn column_name(name: &ObjectName) -> Result<String> {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(ident_name)
        .ok_or_else(|| Error::InvalidSql(format!("unsupported column name {name}")))
}

/// `SELECT <projection> [FROM <from>] [WHERE <selection>]` as a syntax tree, from typed parts.
/// The tree's shape comes from parsing a fixed text once; no caller text is parsed here.
fn select_statement(
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

/// How a result is shaped from stored rows: the selected column indexes of a table.
struct PointSelect {
    table: TableName,
    columns: Option<Vec<String>>,
    key_column: String,
    key: Literal,
}

/// Recognize `SELECT * | a, b FROM [ns.]t WHERE col = literal` from tokens: the hot read path
/// that skips DataFusion planning. Anything else returns None and takes the general path.
fn point_select(sql: &str, params: &[serde_json::Value]) -> Option<PointSelect> {
    let dialect = GenericDialect {};
    let tokens: Vec<Token> = Tokenizer::new(&dialect, sql)
        .tokenize()
        .ok()?
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let kw =
        |t: &Token, k: &str| matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(k));
    let ident = |t: &Token| match t {
        Token::Word(w) if w.quote_style.is_some() => Some(w.value.clone()),
        Token::Word(w) if w.keyword == datafusion::sql::sqlparser::keywords::Keyword::NoKeyword => {
            Some(w.value.to_lowercase())
        }
        Token::Word(w)
            if !["FROM", "WHERE", "SELECT", "AND", "OR", "AS"].iter().any(|k| w.value.eq_ignore_ascii_case(k)) =>
        {
            Some(w.value.to_lowercase())
        }
        _ => None,
    };
    let mut i = 0;
    if !kw(tokens.first()?, "SELECT") {
        return None;
    }
    i += 1;
    let columns = if tokens.get(i)? == &Token::Mul {
        i += 1;
        None
    } else {
        let mut cols = Vec::new();
        loop {
            cols.push(ident(tokens.get(i)?)?);
            i += 1;
            if tokens.get(i)? == &Token::Comma {
                i += 1;
            } else {
                break;
            }
        }
        Some(cols)
    };
    if !kw(tokens.get(i)?, "FROM") {
        return None;
    }
    i += 1;
    let first = ident(tokens.get(i)?)?;
    i += 1;
    let table = if tokens.get(i) == Some(&Token::Period) {
        let name = ident(tokens.get(i + 1)?)?;
        i += 2;
        TableName { namespace: Some(first), name }
    } else {
        TableName { namespace: None, name: first }
    };
    if !kw(tokens.get(i)?, "WHERE") {
        return None;
    }
    let key_column = ident(tokens.get(i + 1)?)?;
    if tokens.get(i + 2)? != &Token::Eq {
        return None;
    }
    let key = match tokens.get(i + 3)? {
        Token::Number(n, _) => Literal::Number(n.clone()),
        Token::SingleQuotedString(s) => Literal::String(s.clone()),
        Token::Placeholder(p) => {
            let idx: usize = p.trim_start_matches('$').parse().ok()?;
            Literal::from_json(params.get(idx.checked_sub(1)?)?)
        }
        _ => return None,
    };
    match tokens.get(i + 4) {
        None | Some(Token::SemiColon) => {}
        _ => return None,
    }
    Some(PointSelect { table, columns, key_column, key })
}

/// The session every statement's session is built from: our settings and DataFusion's
/// runtime (memory pool, spill folder).
fn session_template(env: Arc<RuntimeEnv>) -> SessionState {
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
            template: session_template(env),
            cluster: None,
            jobs: None,
            executor: Arc::new(Executor::new(&limits, None)),
            limits,
        }
    }

    /// Bound what statements may cost, and run DataFusion work on `runtime` (the node's query
    /// runtime, apart from the one serving Raft, the log and HTTP).
    pub fn with_limits(mut self, limits: QueryLimits, runtime: Option<tokio::runtime::Handle>) -> Result<Engine> {
        limits.validate().map_err(Error::Internal)?;
        self.template = session_template(limits.runtime_env()?);
        self.executor = Arc::new(Executor::new(&limits, runtime));
        self.limits = limits;
        Ok(self)
    }

    /// Serve `system.jobs` from `jobs` (the node's storage job log).
    pub fn with_jobs(mut self, jobs: Arc<dyn JobSource>) -> Engine {
        self.jobs = Some(jobs);
        self
    }

    /// Flush, compact or rebuild one table in every group that may hold its rows; returns the
    /// rows written. Each group's op is one log entry.
    pub async fn storage_job(&self, def: &TableDef, job: StorageJob, proposer: &dyn Proposer) -> Result<u64> {
        let groups: Vec<GroupId> = match def.table_type {
            TableType::Shared => vec![self.layout.shared_shard(def.table_id)],
            TableType::User | TableType::Stream => {
                self.layout.all().into_iter().filter(|g| matches!(g, GroupId::UserShard(_))).collect()
            }
        };
        let op = || {
            let table = def.clone();
            match job {
                StorageJob::Flush => Op::Flush { table, scope: None },
                StorageJob::Compact => Op::Compact { table, scope: None },
                StorageJob::Rebuild => Op::Rebuild { table },
            }
        };
        let futures = groups.iter().map(|g| self.propose_ok(proposer, *g, op()));
        let mut rows = 0;
        for r in futures::future::join_all(futures).await {
            if let OpResult::Done { affected } = r? {
                rows += affected;
            }
        }
        Ok(rows)
    }

    /// Serve `system.cluster` and `system.cluster_groups` from `view`.
    pub fn with_cluster(mut self, view: Arc<dyn ClusterView>) -> Engine {
        self.cluster = Some(view);
        self
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn layout(&self) -> GroupLayout {
        self.layout
    }

    /// Run every statement of `sql` in order. Stops at the first error, reporting which
    /// statement failed; earlier statements keep their effects.
    pub async fn execute(&self, sql: &str, ctx: &ExecContext, proposer: &dyn Proposer) -> Result<Vec<QueryResult>> {
        if ctx.params.len() > self.limits.params_max {
            return Err(Error::RequestTooLarge(format!(
                "{} parameters given; at most {} are accepted (limits.params_max)",
                ctx.params.len(),
                self.limits.params_max
            )));
        }
        let statements = split_statements(sql)?;
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
        let mut results = Vec::with_capacity(statements.len());
        for (i, text) in statements.iter().enumerate() {
            // Dropping the statement at its deadline aborts its query task (see `limits`). A
            // write already proposed may still commit, as after any lost answer.
            let outcome = match tokio::time::timeout(self.limits.timeout(), self.execute_one(text, ctx, proposer)).await
            {
                Ok(outcome) => outcome,
                Err(_) => Err(Error::QueryTimeout(format!(
                    "the statement ran longer than {} ms (limits.query_timeout_ms) and was cancelled",
                    self.limits.timeout_ms
                ))),
            };
            match outcome {
                Ok(mut r) => {
                    r.kind = crate::parse::statement_kind(text);
                    results.push(r);
                }
                Err(e) if many => return Err(prefix_error(e, i + 1)),
                Err(e) => return Err(e),
            }
        }
        Ok(results)
    }

    async fn barrier(&self, ctx: &ExecContext, group: GroupId) -> Result<()> {
        match &ctx.barrier {
            Some(b) => b.wait(group).await,
            None => Ok(()),
        }
    }

    async fn execute_one(&self, sql: &str, ctx: &ExecContext, proposer: &dyn Proposer) -> Result<QueryResult> {
        let keyword = first_keyword(sql);
        // Every statement sees every catalog change committed before it started: reads, and
        // writes too (a write resolved against a stale catalog could target a dropped table).
        // Table scans add their own group's barrier.
        self.barrier(ctx, catalog_group()).await?;
        if keyword == "EXECUTE" {
            return self.execute_as(sql, ctx, proposer).await;
        }
        if let Some((rewritten, positions)) = crate::parse::extract_as_of(sql)? {
            if keyword != "SELECT" {
                return Err(Error::InvalidSql("AS OF is only allowed in SELECT".into()));
            }
            let as_of =
                positions.into_iter().map(|(t, at)| (self.namespace_of(&t, ctx), t.name, at)).collect::<Vec<_>>();
            let dialect = GenericDialect {};
            let mut stmts = datafusion::sql::sqlparser::parser::Parser::parse_sql(&dialect, &rewritten)
                .map_err(|e| Error::InvalidSql(e.to_string()))?;
            if stmts.len() != 1 {
                return Err(Error::InvalidSql("expected one statement".into()));
            }
            let batches = self.run_query_as_of(stmts.remove(0), ctx, Arc::new(as_of)).await?;
            return Ok(batches_to_result(&batches));
        }
        if keyword == "SELECT"
            && let Some(ps) = point_select(sql, &ctx.params)
            && let Some(result) = self.try_point_select(&ps, ctx).await?
        {
            return Ok(result);
        }
        self.execute_statement(sql, ctx, proposer).await
    }

    /// `EXECUTE AS USER 'name' (<statement>)`: the statement runs with that user's id and role
    /// (its rows, its rights). Only service, dba and system callers may impersonate.
    async fn execute_as(&self, sql: &str, ctx: &ExecContext, proposer: &dyn Proposer) -> Result<QueryResult> {
        let Statement::ExecuteAs { username, statement } = parse_statement(sql)? else {
            return Err(Error::InvalidSql("expected EXECUTE AS USER 'name' (<statement>)".into()));
        };
        access::require(ctx.role, Role::Service, "EXECUTE AS USER")?;
        if first_keyword(&statement) == "EXECUTE" {
            return Err(Error::InvalidSql("EXECUTE AS USER cannot be nested".into()));
        }
        self.barrier(ctx, users_group()).await?;
        let target = self
            .catalog
            .users
            .get(&username)
            .ok_or_else(|| Error::UserNotFound(format!("User '{username}' does not exist")))?;
        if target.role > ctx.role {
            return Err(Error::PermissionDenied(format!(
                "role '{}' may not execute as user '{username}' of role '{}'",
                ctx.role.name(),
                target.role.name()
            )));
        }
        let as_user = ExecContext {
            user_id: target.user_id.clone(),
            role: target.role,
            impersonated_by: Some(ctx.user_id.clone()),
            ..ctx.clone()
        };
        Box::pin(self.execute_one(&statement, &as_user, proposer)).await
    }

    /// The user `username` as this node knows it once every users-group change committed
    /// before now is applied here.
    async fn existing_user(&self, ctx: &ExecContext, username: &str) -> Result<Arc<UserDef>> {
        self.barrier(ctx, users_group()).await?;
        self.catalog.users.get(username).ok_or_else(|| Error::UserNotFound(format!("User '{username}' does not exist")))
    }

    async fn user_statement(&self, stmt: Statement, ctx: &ExecContext, proposer: &dyn Proposer) -> Result<QueryResult> {
        match stmt {
            Statement::CreateUser { username, password, role, email, if_not_exists } => {
                access::require(ctx.role, Role::Dba, "CREATE USER")?;
                reserved_user(&username)?;
                let role = role.unwrap_or(Role::User);
                if role == Role::System {
                    access::require(ctx.role, Role::System, "creating a system user")?;
                }
                if let Some(e) = &email
                    && (!e.contains('@') || e.len() > 254)
                {
                    return Err(Error::InvalidSql("EMAIL must be an address like 'name@example.com'".into()));
                }
                crate::password::check_policy(&password)?;
                let password_hash = crate::password::hash_blocking(password).await?;
                let now = now_micros();
                let user = UserDef {
                    user_id: format!("u_{}", self.ids.next_id()),
                    username: username.clone(),
                    password_hash,
                    role,
                    email,
                    created_at_micros: now,
                    updated_at_micros: now,
                };
                match self.propose_ok(proposer, users_group(), Op::CreateUser { user, if_not_exists }).await? {
                    OpResult::Skipped => Ok(QueryResult::message(0, format!("User '{username}' already exists"))),
                    _ => Ok(QueryResult::message(1, format!("User '{username}' created"))),
                }
            }
            Statement::AlterUser { username, change } => {
                reserved_user(&username)?;
                let target = self.existing_user(ctx, &username).await?;
                // Under EXECUTE AS the caller is not the target: it may not change the
                // target's password by borrowing the target's identity.
                let is_self = target.user_id == ctx.user_id && ctx.impersonated_by.is_none();
                let (password_hash, role) = match change {
                    UserChange::Password(p) => {
                        if !is_self {
                            access::require(ctx.role, Role::Dba, "changing another user's password")?;
                        }
                        crate::password::check_policy(&p)?;
                        (Some(crate::password::hash_blocking(p).await?), None)
                    }
                    UserChange::Role(r) => {
                        access::require(ctx.role, Role::Dba, "ALTER USER ... SET ROLE")?;
                        if r == Role::System {
                            access::require(ctx.role, Role::System, "granting the system role")?;
                        }
                        (None, Some(r))
                    }
                };
                if target.role == Role::System && !is_self {
                    access::require(ctx.role, Role::System, "changing a system user")?;
                }
                let op =
                    Op::AlterUser { username: username.clone(), password_hash, role, updated_at_micros: now_micros() };
                self.propose_ok(proposer, users_group(), op).await?;
                Ok(QueryResult::message(1, format!("User '{username}' altered")))
            }
            Statement::DropUser { username, if_exists } => {
                access::require(ctx.role, Role::Dba, "DROP USER")?;
                reserved_user(&username)?;
                self.barrier(ctx, users_group()).await?;
                if let Some(target) = self.catalog.users.get(&username)
                    && target.role == Role::System
                {
                    access::require(ctx.role, Role::System, "dropping a system user")?;
                }
                match self
                    .propose_ok(proposer, users_group(), Op::DropUser { username: username.clone(), if_exists })
                    .await?
                {
                    OpResult::Skipped => Ok(QueryResult::message(0, format!("User '{username}' does not exist"))),
                    _ => Ok(QueryResult::message(1, format!("User '{username}' dropped"))),
                }
            }
            _ => Err(Error::Internal("not a user statement".into())),
        }
    }

    async fn execute_statement(&self, sql: &str, ctx: &ExecContext, proposer: &dyn Proposer) -> Result<QueryResult> {
        let stmt = parse_statement(sql)?;
        match &stmt {
            Statement::CreateUser { .. } | Statement::AlterUser { .. } | Statement::DropUser { .. } => {
                return self.user_statement(stmt, ctx, proposer).await;
            }
            Statement::ExecuteAs { .. } => return self.execute_as(sql, ctx, proposer).await,
            Statement::CreateNamespace { .. }
            | Statement::DropNamespace { .. }
            | Statement::CreateTable(_)
            | Statement::DropTable { .. } => access::require(ctx.role, Role::Dba, "DDL")?,
            Statement::Storage { compact: false, .. } => access::require(ctx.role, Role::Dba, "FLUSH")?,
            Statement::Storage { compact: true, .. } => access::require(ctx.role, Role::Dba, "STORAGE COMPACT")?,
            Statement::Rebuild { .. } => access::require(ctx.role, Role::Dba, "REBUILD PROJECTION")?,
            _ => {}
        }
        match stmt {
            Statement::CreateUser { .. }
            | Statement::AlterUser { .. }
            | Statement::DropUser { .. }
            | Statement::ExecuteAs { .. } => Err(Error::Internal("user statement not dispatched".into())),
            Statement::CreateNamespace { name, if_not_exists } => {
                if name == SYSTEM_NAMESPACE {
                    return Err(Error::InvalidSql("namespace 'system' is reserved".into()));
                }
                let op = Op::CreateNamespace { name: name.clone(), if_not_exists, created_at_micros: now_micros() };
                match self.propose_ok(proposer, catalog_group(), op).await? {
                    OpResult::Skipped => Ok(QueryResult::message(0, format!("Namespace '{name}' already exists"))),
                    _ => Ok(QueryResult::message(1, format!("Namespace '{name}' created"))),
                }
            }
            Statement::DropNamespace { name, if_exists, cascade } => {
                let op = Op::DropNamespace { name: name.clone(), if_exists, cascade };
                match self.propose_ok(proposer, catalog_group(), op).await? {
                    OpResult::Dropped { table_ids } => {
                        self.purge_tables(proposer, &table_ids).await;
                        Ok(QueryResult::message(1, format!("Namespace '{name}' dropped")))
                    }
                    _ => Ok(QueryResult::message(0, format!("Namespace '{name}' does not exist"))),
                }
            }
            Statement::ShowNamespaces => {
                let st = self.catalog.read();
                let rows = st.namespaces.values().map(|n| vec![serde_json::Value::String(n.name.clone())]).collect();
                Ok(QueryResult::rows(vec![("namespace_id".into(), "Text".into())], rows))
            }
            Statement::CreateTable(ct) => self.create_table(ct, ctx, proposer).await,
            Statement::DropTable { table, if_exists } => {
                let ns = self.namespace_of(&table, ctx);
                let op = Op::DropTable { namespace: ns.clone(), name: table.name.clone(), if_exists };
                match self.propose_ok(proposer, catalog_group(), op).await? {
                    OpResult::Dropped { table_ids } => {
                        self.purge_tables(proposer, &table_ids).await;
                        Ok(QueryResult::message(1, format!("Table '{ns}.{}' dropped", table.name)))
                    }
                    _ => Ok(QueryResult::message(0, format!("Table '{ns}.{}' does not exist", table.name))),
                }
            }
            Statement::ShowTables { namespace } => {
                let st = self.catalog.read();
                if let Some(ns) = &namespace
                    && !st.namespaces.contains_key(ns)
                {
                    return Err(Error::NamespaceNotFound(format!("Namespace '{ns}' does not exist")));
                }
                let rows = st
                    .tables
                    .values()
                    .filter(|t| namespace.as_ref().is_none_or(|ns| &t.namespace == ns))
                    .filter(|t| access::can_read(ctx.role, t))
                    .map(|t| {
                        vec![
                            serde_json::Value::String(t.namespace.clone()),
                            serde_json::Value::String(t.name.clone()),
                            serde_json::Value::String(t.table_type.api_name().into()),
                        ]
                    })
                    .collect();
                let cols = vec![
                    ("namespace_id".into(), "Text".into()),
                    ("table_name".into(), "Text".into()),
                    ("table_type".into(), "Text".into()),
                ];
                Ok(QueryResult::rows(cols, rows))
            }
            Statement::DescribeTable { table } => {
                let def = self.resolve_table(&table, ctx)?;
                access::check_read(ctx.role, &def)?;
                let rows = def
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        vec![
                            serde_json::Value::String(c.name.clone()),
                            serde_json::Value::String(c.data_type.api_name().into()),
                            serde_json::Value::Bool(c.nullable && !c.primary_key),
                            serde_json::Value::Bool(c.primary_key),
                            serde_json::Value::from(i as i64 + 1),
                        ]
                    })
                    .collect();
                let cols = vec![
                    ("column_name".into(), "Text".into()),
                    ("data_type".into(), "Text".into()),
                    ("is_nullable".into(), "Boolean".into()),
                    ("is_primary_key".into(), "Boolean".into()),
                    ("ordinal_position".into(), "BigInt".into()),
                ];
                Ok(QueryResult::rows(cols, rows))
            }
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
                    rows += self.storage_job(def, job, proposer).await?;
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
                let rows = self.storage_job(&def, StorageJob::Rebuild, proposer).await?;
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
                let mut url =
                    format!("/v1/api/tail?table={}", url_component(&format!("{}.{}", def.namespace, def.name)));
                if let Some(f) = &filter {
                    url.push_str(&format!("&where={}", url_component(f.text())));
                }
                if let Some(n) = last_rows {
                    url.push_str(&format!("&last_rows={n}"));
                }
                if let Some(f) = &from {
                    url.push_str(&format!("&from={}", url_component(f)));
                }
                let cols = vec![
                    ("stream_url".into(), "Text".into()),
                    ("table".into(), "Text".into()),
                    ("filter".into(), "Text".into()),
                ];
                let row = vec![
                    serde_json::Value::String(url),
                    serde_json::Value::String(format!("{}.{}", def.namespace, def.name)),
                    filter.map_or(serde_json::Value::Null, |f| serde_json::Value::String(f.text().to_string())),
                ];
                Ok(QueryResult::rows(cols, vec![row]))
            }
            Statement::Sql(stmt) => self.execute_sql(*stmt, ctx, proposer).await,
        }
    }

    async fn propose_ok(&self, proposer: &dyn Proposer, group: GroupId, op: Op) -> Result<OpResult> {
        match proposer.propose(group, op).await? {
            OpResult::Failed { code, message } => Err(apply_failure(code, message)),
            ok => Ok(ok),
        }
    }

    /// Remove dropped tables' rows from every data group. Best effort: rows of a dropped table
    /// are unreachable anyway (table ids are never reused), so a failure only wastes space.
    async fn purge_tables(&self, proposer: &dyn Proposer, table_ids: &[u64]) {
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

    fn namespace_of(&self, table: &TableName, ctx: &ExecContext) -> String {
        table.namespace.clone().or_else(|| ctx.namespace.clone()).unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
    }

    fn resolve_table(&self, table: &TableName, ctx: &ExecContext) -> Result<Arc<TableDef>> {
        let ns = self.namespace_of(table, ctx);
        if let Some(def) = self.catalog.table(&ns, &table.name) {
            return Ok(def);
        }
        if !self.catalog.namespace_exists(&ns) {
            return Err(Error::NamespaceNotFound(format!("Namespace '{ns}' does not exist")));
        }
        Err(Error::TableNotFound(format!("Table '{ns}.{}' does not exist", table.name)))
    }

    async fn create_table(
        &self,
        ct: ParsedCreateTable,
        ctx: &ExecContext,
        proposer: &dyn Proposer,
    ) -> Result<QueryResult> {
        let ns = self.namespace_of(&ct.table, ctx);
        if ns == SYSTEM_NAMESPACE {
            return Err(Error::InvalidSql("tables cannot be created in namespace 'system'".into()));
        }
        let mut table_type = ct.table_type;
        let mut options = Vec::new();
        for (k, v) in ct.options {
            if k == "TYPE" {
                let t = match v.to_ascii_uppercase().as_str() {
                    "SHARED" => TableType::Shared,
                    "USER" => TableType::User,
                    "STREAM" => TableType::Stream,
                    other => return Err(Error::InvalidSql(format!("unknown table TYPE '{other}'"))),
                };
                if table_type.is_some_and(|declared| declared != t) {
                    return Err(Error::InvalidSql("table type given twice with different values".into()));
                }
                table_type = Some(t);
            } else {
                if k == "FLUSH_POLICY" {
                    crate::parse::FlushPolicy::parse(&v)?;
                }
                if k == ACCESS_LEVEL_OPTION {
                    options.push((k, AccessLevel::parse(&v)?.name().to_string()));
                    continue;
                }
                options.push((k, v));
            }
        }
        if ct.columns.is_empty() || ct.columns.len() > TABLE_COLUMNS_MAX {
            return Err(Error::InvalidSql(format!("a table has 1 to {TABLE_COLUMNS_MAX} columns")));
        }
        let mut columns: Vec<ColumnDef> = Vec::with_capacity(ct.columns.len() + 1);
        for c in &ct.columns {
            if c.name.starts_with('_') {
                return Err(Error::InvalidSql(format!(
                    "column name '{}' is reserved: names starting with '_' are system columns",
                    c.name
                )));
            }
            if columns.iter().any(|x| x.name == c.name) {
                return Err(Error::InvalidSql(format!("duplicate column '{}'", c.name)));
            }
            if let Some(DefaultExpr::Literal(v)) = &c.default {
                // Validate the default against the column type now, not at the first insert.
                coerce(&default_literal(v), c.data_type)?;
            }
            columns.push(ColumnDef {
                name: c.name.clone(),
                data_type: c.data_type,
                nullable: !c.not_null && !c.primary_key,
                primary_key: c.primary_key,
                default: c.default.clone(),
            });
        }
        match columns.iter().filter(|c| c.primary_key).count() {
            0 => {
                // No declared key: a generated BIGINT id, so plain INSERTs work.
                let name = if columns.iter().any(|c| c.name == "id") { "_id" } else { "id" };
                columns.insert(
                    0,
                    ColumnDef {
                        name: name.into(),
                        data_type: DataType::BigInt,
                        nullable: false,
                        primary_key: true,
                        default: Some(DefaultExpr::SnowflakeId),
                    },
                );
            }
            1 => {}
            _ => return Err(Error::InvalidSql("a table has exactly one PRIMARY KEY column".into())),
        }
        let table_type = table_type.unwrap_or(TableType::Shared);
        check_stream_options(table_type, &options)?;
        if table_type != TableType::Shared && options.iter().any(|(k, _)| k == ACCESS_LEVEL_OPTION) {
            return Err(Error::InvalidSql(
                "ACCESS_LEVEL applies to SHARED tables; USER and STREAM tables are private to each user".into(),
            ));
        }
        let def = TableDef {
            table_id: 0,
            namespace: ns.clone(),
            name: ct.table.name.clone(),
            table_type,
            columns,
            options,
            created_at_micros: now_micros(),
        };
        let op = Op::CreateTable { table: def, if_not_exists: ct.if_not_exists };
        match self.propose_ok(proposer, catalog_group(), op).await? {
            OpResult::Skipped => Ok(QueryResult::message(0, format!("Table '{ns}.{}' already exists", ct.table.name))),
            _ => Ok(QueryResult::message(1, format!("Table '{ns}.{}' created", ct.table.name))),
        }
    }

    async fn try_point_select(&self, ps: &PointSelect, ctx: &ExecContext) -> Result<Option<QueryResult>> {
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
                for (i, c) in def.columns.iter().enumerate() {
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
        let Ok(key) = coerce(&ps.key, def.columns[pk].data_type) else { return Ok(None) };
        let (group, scope) = self.layout.table_location(&def, &ctx.user_id);
        self.barrier(ctx, group).await?;
        let row = match self.rows.lookup(group, def.table_id, &scope, &key)? {
            Lookup::Hot(row) => Some(row),
            // The newest version is in a Parquet file: read the pages that can hold it. If a
            // compaction just moved it, or the keyed read fails, the general path scans for it:
            // this read is only a faster way to the same answer.
            Lookup::Cold(seq) => match self.rows.cold_row(group, &def, &scope, &key, seq) {
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
                    Some(i) => value_to_json(row.values.get(*i).unwrap_or(&Value::Null)),
                    None if name == SEQ_COLUMN => serde_json::Value::from(row.seq as i64),
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
            jobs: self.jobs.clone(),
            as_of,
            held: Default::default(),
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
        if ns != SYSTEM_NAMESPACE && !self.catalog.namespace_exists(ns) {
            Error::NamespaceNotFound(format!("Namespace '{ns}' does not exist"))
        } else {
            Error::TableNotFound(format!("Table '{ns}.{table}' does not exist"))
        }
    }

    /// Run a query through DataFusion and collect its batches.
    async fn run_query(&self, stmt: ast::Statement, ctx: &ExecContext) -> Result<Vec<RecordBatch>> {
        self.run_query_as_of(stmt, ctx, Arc::new(Vec::new())).await
    }

    /// Run a query with some tables read as of a past log position (time travel).
    async fn run_query_as_of(
        &self,
        stmt: ast::Statement,
        ctx: &ExecContext,
        as_of: Arc<Vec<(String, String, u64)>>,
    ) -> Result<Vec<RecordBatch>> {
        let session = self.session(ctx, as_of);
        let params: Vec<ScalarValue> = ctx.params.iter().map(param_scalar).collect();
        let (rows_max, bytes_max) = (self.limits.result_rows_max, self.limits.result_bytes_max);
        // Planning runs on the query runtime too: table scans read the projections there.
        let work = async move {
            let mut plan = session.state().statement_to_plan(DfStatement::Statement(Box::new(stmt))).await?;
            if !params.is_empty() {
                plan = plan.with_param_values(params)?;
            }
            let df = session.execute_logical_plan(plan).await?;
            collect_bounded(df.execute_stream().await?, rows_max, bytes_max).await
        };
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
        use datafusion::prelude::ident;
        let n = usize::try_from(n).map_err(|_| Error::InvalidSql(format!("{n} rows is too many")))?;
        self.barrier(ctx, GroupId::Meta(MetaGroup::Catalog)).await?;
        let session = self.session(ctx, Arc::new(Vec::new()));
        let reference = datafusion::common::TableReference::full(CATALOG_NAME, def.namespace.clone(), def.name.clone());
        let mut columns: Vec<datafusion::logical_expr::Expr> =
            def.columns.iter().map(|c| ident(c.name.clone())).collect();
        columns.push(ident(crate::provider::SEQ_COLUMN));
        let predicate = filter.map(|f| f.to_expr(def));
        let (rows_max, bytes_max) = (self.limits.result_rows_max, self.limits.result_bytes_max);
        let work = async move {
            let mut df = session.table(reference).await?;
            if let Some(p) = predicate {
                df = df.filter(p)?;
            }
            let df = df
                .sort(vec![ident(crate::provider::SEQ_COLUMN).sort(false, true)])?
                .limit(0, Some(n))?
                .select(columns)?;
            collect_bounded(df.execute_stream().await?, rows_max, bytes_max).await
        };
        let batches = match tokio::time::timeout(self.limits.timeout(), self.executor.run(work)).await {
            Ok(result) => result.map_err(|e| self.refine_not_found(e))?,
            Err(_) => {
                return Err(Error::QueryTimeout(format!(
                    "reading the newest rows took longer than {} ms (limits.query_timeout_ms)",
                    self.limits.timeout_ms
                )));
            }
        };
        Ok(batches_to_result(&batches))
    }

    async fn execute_sql(
        &self,
        stmt: ast::Statement,
        ctx: &ExecContext,
        proposer: &dyn Proposer,
    ) -> Result<QueryResult> {
        match stmt {
            ast::Statement::Query(_) | ast::Statement::Explain { .. } => {
                let batches = self.run_query(stmt, ctx).await?;
                Ok(batches_to_result(&batches))
            }
            ast::Statement::Insert(insert) => self.insert(insert, ctx, proposer).await,
            ast::Statement::Update(update) => {
                let table = single_table(std::slice::from_ref(&update.table))?;
                if update.from.is_some() {
                    return Err(Error::InvalidSql("UPDATE ... FROM is not supported".into()));
                }
                let mut sets = Vec::with_capacity(update.assignments.len());
                for a in &update.assignments {
                    match &a.target {
                        AssignmentTarget::ColumnName(name) => sets.push((column_name(name)?, a.value.clone())),
                        AssignmentTarget::Tuple(_) => {
                            return Err(Error::InvalidSql("tuple assignments are not supported".into()));
                        }
                    }
                }
                self.rewrite_rows(&table, Some(sets), update.selection.as_ref(), ctx, proposer).await
            }
            ast::Statement::Delete(delete) => {
                let from = match &delete.from {
                    FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
                };
                if delete.using.is_some() || delete.limit.is_some() {
                    return Err(Error::InvalidSql("DELETE ... USING / LIMIT is not supported".into()));
                }
                let table = single_table(from)?;
                self.rewrite_rows(&table, None, delete.selection.as_ref(), ctx, proposer).await
            }
            other => Err(Error::InvalidSql(format!("unsupported statement: {}", first_words(&other.to_string())))),
        }
    }

    async fn insert(&self, insert: ast::Insert, ctx: &ExecContext, proposer: &dyn Proposer) -> Result<QueryResult> {
        let table = match &insert.table {
            TableObject::TableName(name) => object_table_name(name)?,
            other => return Err(Error::InvalidSql(format!("unsupported INSERT target {other}"))),
        };
        let def = self.resolve_table(&table, ctx)?;
        access::check_write(ctx.role, &def)?;
        let source = insert.source.as_ref().ok_or_else(|| Error::InvalidSql("INSERT needs VALUES or SELECT".into()))?;
        // Target column positions, in the order values are given.
        let explicit: Vec<usize> = insert
            .columns
            .iter()
            .map(|c| {
                let name = column_name(c)?;
                def.column_index(&name).ok_or_else(|| {
                    Error::InvalidSql(format!("column '{name}' does not exist in {}.{}", def.namespace, def.name))
                })
            })
            .collect::<Result<_>>()?;
        let mut seen = std::collections::HashSet::new();
        if explicit.iter().any(|i| !seen.insert(*i)) {
            return Err(Error::InvalidSql("a column is listed twice in INSERT".into()));
        }
        let given_rows: Vec<Vec<Option<Value>>> = match source.body.as_ref() {
            SetExpr::Values(values) => {
                if values.rows.len() > STATEMENT_ROWS_MAX {
                    return Err(Error::InvalidSql(format!("INSERT writes at most {STATEMENT_ROWS_MAX} rows")));
                }
                let width = values.rows.first().map_or(0, |r| r.content.len());
                let targets = self.insert_targets(&def, &explicit, width)?;
                let mut rows = Vec::with_capacity(values.rows.len());
                for row in &values.rows {
                    if row.content.len() != targets.len() {
                        return Err(Error::InvalidSql(format!(
                            "INSERT has {} target columns but a row has {} values",
                            targets.len(),
                            row.content.len()
                        )));
                    }
                    let mut out: Vec<Option<Value>> = vec![None; def.columns.len()];
                    for (expr, &col) in row.content.iter().zip(&targets) {
                        let dt = def.columns[col].data_type;
                        let v = match literal_of(expr, &ctx.params)? {
                            Some(lit) => coerce(&lit, dt)?,
                            None => self.eval_expr(expr, dt, ctx).await?,
                        };
                        out[col] = Some(v);
                    }
                    rows.push(out);
                }
                rows
            }
            _ => {
                let batches = self.run_query(ast::Statement::Query(source.clone()), ctx).await?;
                let width = batches.first().map_or(0, |b| b.num_columns());
                let targets = self.insert_targets(&def, &explicit, width)?;
                let mut rows = Vec::new();
                for b in &batches {
                    if b.num_columns() != targets.len() {
                        return Err(Error::InvalidSql("INSERT ... SELECT column count does not match".into()));
                    }
                    for r in 0..b.num_rows() {
                        let mut out: Vec<Option<Value>> = vec![None; def.columns.len()];
                        for (c, &col) in targets.iter().enumerate() {
                            out[col] = Some(cell_to_value(b.column(c), r, def.columns[col].data_type)?);
                        }
                        rows.push(out);
                        if rows.len() > STATEMENT_ROWS_MAX {
                            return Err(Error::InvalidSql(format!("INSERT writes at most {STATEMENT_ROWS_MAX} rows")));
                        }
                    }
                }
                rows
            }
        };
        let pk = def.pk_index();
        let mut writes = Vec::with_capacity(given_rows.len());
        for given in given_rows {
            let values = self.complete_row(&def, given)?;
            writes.push(RowWrite { pk: values[pk].clone(), values, expected_seq: None });
        }
        if writes.is_empty() {
            return Ok(QueryResult::message(0, "Inserted 0 row(s)".into()));
        }
        let (group, scope) = self.layout.table_location(&def, &ctx.user_id);
        let op = Op::Insert { table_id: def.table_id, scope, rows: writes };
        match self.propose_ok(proposer, group, op).await? {
            OpResult::Done { affected } => {
                Ok(QueryResult::message(affected as usize, format!("Inserted {affected} row(s)")))
            }
            other => Err(Error::Internal(format!("unexpected insert result {other:?}"))),
        }
    }

    /// Which table columns receive the given values: the explicit list, or all columns, or
    /// all but a generated primary key when the values leave it out.
    fn insert_targets(&self, def: &TableDef, explicit: &[usize], width: usize) -> Result<Vec<usize>> {
        if !explicit.is_empty() {
            return Ok(explicit.to_vec());
        }
        let all: Vec<usize> = (0..def.columns.len()).collect();
        if width == all.len() {
            return Ok(all);
        }
        let pk = def.pk_index();
        if def.columns[pk].default == Some(DefaultExpr::SnowflakeId) && width + 1 == all.len() {
            return Ok(all.into_iter().filter(|i| *i != pk).collect());
        }
        Err(Error::InvalidSql(format!(
            "INSERT gives {width} values but {}.{} has {} columns",
            def.namespace,
            def.name,
            all.len()
        )))
    }

    /// Fill defaults and check NOT NULL: the row as it will enter the log.
    fn complete_row(&self, def: &TableDef, given: Vec<Option<Value>>) -> Result<Vec<Value>> {
        let mut values = Vec::with_capacity(def.columns.len());
        for (c, v) in def.columns.iter().zip(given) {
            let v = match v {
                Some(v) => v,
                None => match &c.default {
                    Some(DefaultExpr::SnowflakeId) => {
                        coerce(&Literal::Number(self.ids.next_id().to_string()), c.data_type)?
                    }
                    Some(DefaultExpr::Now) => match c.data_type {
                        DataType::Timestamp => Value::Timestamp(now_micros()),
                        DataType::BigInt => Value::BigInt(now_micros() / 1000),
                        other => {
                            return Err(Error::InvalidSql(format!("NOW() default on a {} column", other.api_name())));
                        }
                    },
                    Some(DefaultExpr::Literal(lit)) => coerce(&default_literal(lit), c.data_type)?,
                    None => Value::Null,
                },
            };
            if v.is_null() && (c.primary_key || !c.nullable) {
                let what = if c.primary_key { "primary key" } else { "NOT NULL" };
                return Err(Error::ConstraintViolation(format!("column '{}' is {what} and needs a value", c.name)));
            }
            values.push(v);
        }
        Ok(values)
    }

    /// Evaluate a non-literal expression (e.g. `NOW()`, `1 + 2`) through DataFusion.
    async fn eval_expr(&self, expr: &Expr, dt: DataType, ctx: &ExecContext) -> Result<Value> {
        let select = select_statement(vec![ast::SelectItem::UnnamedExpr(expr.clone())], None, None)?;
        let batches = self.run_query(select, ctx).await?;
        let b = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .ok_or_else(|| Error::InvalidSql(format!("expression {expr} has no value")))?;
        cell_to_value(b.column(0), 0, dt)
    }

    /// UPDATE (with `sets`) or DELETE (without): read the matching rows and their `_seq`s,
    /// propose the new versions with those `_seq`s as preconditions, re-plan on conflict.
    async fn rewrite_rows(
        &self,
        table: &TableName,
        sets: Option<Vec<(String, Expr)>>,
        selection: Option<&Expr>,
        ctx: &ExecContext,
        proposer: &dyn Proposer,
    ) -> Result<QueryResult> {
        let def = self.resolve_table(table, ctx)?;
        access::check_write(ctx.role, &def)?;
        let pk = def.pk_index();
        let mut set_cols = Vec::new();
        for (name, expr) in sets.iter().flatten() {
            let idx = def.column_index(name).ok_or_else(|| {
                Error::InvalidSql(format!("column '{name}' does not exist in {}.{}", def.namespace, def.name))
            })?;
            if idx == pk {
                return Err(Error::InvalidSql(format!("primary key column '{name}' cannot be updated")));
            }
            set_cols.push((idx, expr.clone()));
        }
        // The read is built as a syntax tree from the statement's own parsed pieces; nothing is
        // printed to SQL and parsed again.
        let quoted = |name: &str| ast::Ident::with_quote('"', name);
        let mut projection: Vec<ast::SelectItem> =
            def.columns.iter().map(|c| ast::SelectItem::UnnamedExpr(Expr::Identifier(quoted(&c.name)))).collect();
        projection.push(ast::SelectItem::UnnamedExpr(Expr::Identifier(ast::Ident::new(SEQ_COLUMN))));
        for (i, (_, expr)) in set_cols.iter().enumerate() {
            projection.push(ast::SelectItem::ExprWithAlias {
                expr: Expr::Nested(Box::new(expr.clone())),
                alias: ast::Ident::new(format!("__kalam_set_{i}")),
            });
        }
        let from = ObjectName::from(vec![quoted(&def.namespace), quoted(&def.name)]);
        let select = select_statement(projection, Some(from), selection.cloned())?;
        let is_delete = sets.is_none();
        let verb = if is_delete { "Deleted" } else { "Updated" };
        let (group, scope) = self.layout.table_location(&def, &ctx.user_id);
        for _attempt in 0..CONFLICT_RETRIES_MAX {
            let batches = self.run_query(select.clone(), ctx).await?;
            let mut writes = Vec::new();
            for b in &batches {
                for r in 0..b.num_rows() {
                    let mut values = Vec::with_capacity(def.columns.len());
                    for (i, c) in def.columns.iter().enumerate() {
                        values.push(cell_to_value(b.column(i), r, c.data_type)?);
                    }
                    let seq = cell_to_value(b.column(def.columns.len()), r, DataType::BigInt)?;
                    let Value::BigInt(seq) = seq else { return Err(Error::Internal("row without _seq".into())) };
                    for (k, (idx, _)) in set_cols.iter().enumerate() {
                        let c = &def.columns[*idx];
                        let v = cell_to_value(b.column(def.columns.len() + 1 + k), r, c.data_type)?;
                        if v.is_null() && !c.nullable {
                            return Err(Error::ConstraintViolation(format!("column '{}' is NOT NULL", c.name)));
                        }
                        values[*idx] = v;
                    }
                    writes.push(RowWrite { pk: values[pk].clone(), values, expected_seq: Some(seq as u64) });
                    if writes.len() > STATEMENT_ROWS_MAX {
                        return Err(Error::InvalidSql(format!(
                            "{verb} would touch more than {STATEMENT_ROWS_MAX} rows"
                        )));
                    }
                }
            }
            if writes.is_empty() {
                return Ok(QueryResult::message(0, format!("{verb} 0 row(s)")));
            }
            let op = if is_delete {
                Op::Delete { table_id: def.table_id, scope: scope.clone(), rows: writes }
            } else {
                Op::Update { table_id: def.table_id, scope: scope.clone(), rows: writes }
            };
            match proposer.propose(group, op).await? {
                OpResult::Done { affected } => {
                    return Ok(QueryResult::message(affected as usize, format!("{verb} {affected} row(s)")));
                }
                OpResult::Failed { code: ApplyErrorCode::Conflict, .. } => continue,
                OpResult::Failed { code, message } => return Err(apply_failure(code, message)),
                other => return Err(Error::Internal(format!("unexpected result {other:?}"))),
            }
        }
        Err(Error::Conflict(format!(
            "{} kept conflicting with concurrent writes after {CONFLICT_RETRIES_MAX} attempts",
            if is_delete { "DELETE" } else { "UPDATE" }
        )))
    }
}

/// A DEFAULT literal (parsed as BIGINT, DOUBLE, TEXT or BOOLEAN) back as written, so it
/// meets the column type through the same coercion as an inserted value.
fn default_literal(v: &Value) -> Literal {
    match v {
        Value::BigInt(i) => Literal::Number(i.to_string()),
        Value::Double(f) => Literal::Number(f.to_string()),
        Value::Text(s) => Literal::String(s.clone()),
        Value::Boolean(b) => Literal::Bool(*b),
        _ => Literal::Null,
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
            rows.push(b.columns().iter().zip(schema.fields()).map(|(a, f)| cell_to_json(a, r, f)).collect());
        }
    }
    QueryResult::rows(cols, rows)
}

/// The `TTL_SECONDS` option of STREAM tables.
pub const TTL_OPTION: &str = "TTL_SECONDS";
/// Longest TTL accepted (one year).
pub const TTL_SECONDS_MAX: u64 = 365 * 24 * 3600;

/// A STREAM table's TTL; `None` for other tables and streams without one (rows never expire).
pub fn ttl_secs(def: &TableDef) -> Option<u64> {
    if def.table_type != TableType::Stream {
        return None;
    }
    def.options.iter().find(|(k, _)| k == TTL_OPTION).and_then(|(_, v)| v.trim().parse().ok())
}

/// STREAM tables take `TTL_SECONDS` and never flush; other tables take no TTL.
fn check_stream_options(table_type: TableType, options: &[(String, String)]) -> Result<()> {
    for (k, v) in options {
        match (table_type, k.as_str()) {
            (TableType::Stream, TTL_OPTION) => match v.trim().parse::<u64>() {
                Ok(n) if (1..=TTL_SECONDS_MAX).contains(&n) => {}
                _ => {
                    return Err(Error::InvalidSql(format!(
                        "TTL_SECONDS must be a whole number of seconds, 1..={TTL_SECONDS_MAX}, got '{v}'"
                    )));
                }
            },
            (TableType::Stream, "FLUSH_POLICY") => {
                return Err(Error::InvalidSql("STREAM tables are never flushed: FLUSH_POLICY does not apply".into()));
            }
            (_, TTL_OPTION) => {
                return Err(Error::InvalidSql(
                    "TTL_SECONDS applies to STREAM tables (CREATE STREAM TABLE ... WITH (TTL_SECONDS = n))".into(),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Percent-encode a URL query component (everything but RFC 3986 unreserved characters).
pub fn url_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
