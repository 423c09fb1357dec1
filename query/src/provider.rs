//! DataFusion's view of our data: a catalog whose schemas are namespaces (plus `system` and
//! `information_schema`), table providers over the RocksDB row projections, and the
//! `system.*` tables.

use std::sync::Arc;

use crate::access;
use crate::engine::{Batch, Pending};
use crate::ports::{ClusterGroup, ClusterNode, ClusterView, JobSource, NodeView, ReadBarrier};
use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, BooleanBuilder, Int64Builder, RecordBatch, StringArray, StringBuilder, UInt64Array,
    UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType as ArrowType, Field, Schema, SchemaRef};
use datafusion::catalog::memory::MemorySourceConfig;
use datafusion::catalog::{CatalogProvider, SchemaProvider, Session, TableProvider};
use datafusion::datasource::TableType as DfTableType;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::col;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::UnionExec;
use kalamdb_log::{GroupId, GroupLayout, Role, TableDef};
use kalamdb_projections::columnar::rows_to_batch;
pub use kalamdb_projections::columnar::{DELETED_COLUMN, SEQ_COLUMN, storage_schema, table_schema};
use kalamdb_projections::{Catalog, JobLog, RowReader, StoredRow, TableView};

mod cold;
mod selectivity;

pub const SYSTEM_NAMESPACE: &str = "system";
/// Namespaces no table can be created in: they are the server's views of itself.
pub const RESERVED_NAMESPACES: [&str; 2] = [SYSTEM_NAMESPACE, crate::introspection::INFORMATION_SCHEMA];
/// Rows per Arrow batch produced by a table scan.
pub const SCAN_BATCH_ROWS_MAX: usize = 8192;

/// Turn stored rows into Arrow batches of the table schema.
pub fn rows_to_batches(
    def: &TableDef,
    schema: &SchemaRef,
    rows: &[StoredRow],
) -> Result<Vec<RecordBatch>, DataFusionError> {
    rows.chunks(SCAN_BATCH_ROWS_MAX)
        .map(|chunk| rows_to_batch(def, schema, chunk).map_err(|e| DataFusionError::External(Box::new(e))))
        .collect()
}

/// A user table as DataFusion sees it, bound to one caller's scope.
#[derive(Debug)]
pub struct KalamTable {
    def: Arc<TableDef>,
    /// What queries see: columns by their names.
    schema: SchemaRef,
    /// What storage holds: every column (dropped ones too) named as in Parquet files (a renamed
    /// column keeps its storage name). Scans run on it and rename at the top.
    storage: SchemaRef,
    /// For each field of `schema`, the index of the same field in `storage`.
    to_storage: Vec<usize>,
    rows: RowReader,
    group: GroupId,
    scope: String,
    barrier: Option<Arc<dyn ReadBarrier>>,
    /// Read the table as it was right after this log index of its group (time travel).
    pub as_of: Option<u64>,
    /// Where the memory of rows this table's scans materialize stays accounted until the
    /// query ends (the request's session holds it).
    pub held: HeldMemory,
    /// The pending writes of the batch the reading statement runs in, laid over the stored rows.
    pub batch: Option<Arc<Batch>>,
}

/// Reservations in the query memory pool for rows a scan materialized (hot rows, `AS OF`
/// states): they are freed when the request that read them ends, not when planning does.
#[derive(Debug, Default, Clone)]
pub struct HeldMemory(Arc<std::sync::Mutex<Vec<MemoryReservation>>>);

impl HeldMemory {
    /// Account `bytes` more for `what`, or fail with DataFusion's resources-exhausted error.
    fn hold(&self, pool: &Arc<dyn MemoryPool>, what: String, bytes: usize) -> Result<(), DataFusionError> {
        let reservation = MemoryConsumer::new(what).register(pool);
        reservation.try_grow(bytes)?;
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(reservation);
        Ok(())
    }
}

impl KalamTable {
    pub fn new(
        def: Arc<TableDef>,
        rows: RowReader,
        layout: &GroupLayout,
        user_id: &str,
        barrier: Option<Arc<dyn ReadBarrier>>,
    ) -> KalamTable {
        let (group, scope) = layout.table_location(&def, user_id);
        let schema = table_schema(&def);
        let storage = storage_schema(&def);
        let mut to_storage: Vec<usize> = def.visible_columns().map(|(i, _)| i).collect();
        to_storage.extend([def.columns.len(), def.columns.len() + 1]);
        KalamTable {
            def,
            schema,
            storage,
            to_storage,
            rows,
            group,
            scope,
            barrier,
            as_of: None,
            held: HeldMemory::default(),
            batch: None,
        }
    }
}

#[async_trait]
impl TableProvider for KalamTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> DfTableType {
        DfTableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>, DataFusionError> {
        // Each side of the scan applies them itself, below its final projection (see `cold`),
        // and they also prune Parquet row groups and pages.
        Ok(vec![TableProviderFilterPushDown::Exact; filters.len()])
    }

    /// Hot rows (RocksDB) united with the table's live Parquet files minus superseded
    /// versions. Every key has exactly one newest version, hot or cold, so the union holds
    /// no duplicates and needs no merge.
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        if let Some(b) = &self.barrier {
            b.wait(self.group).await.map_err(|e| DataFusionError::External(Box::new(e)))?;
        }
        let shown: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..self.schema.fields().len()).collect());
        // The same fields as indexes into the storage schema, which the scan reads.
        let proj: Vec<usize> = shown.iter().map(|&i| self.to_storage[i]).collect();
        let range = if self.as_of.is_some() { Default::default() } else { pk_range(&self.def, filters) };
        // The batch's own writes, unless the table is read as of the past.
        let pending = match (&self.batch, self.as_of) {
            (Some(b), None) => b.overlay(self.def.table_id, &self.scope),
            _ => Vec::new(),
        };
        // Filters are applied after the hot rows are read, so a limit is only safe without them.
        let limit = limit.filter(|_| filters.is_empty() && pending.is_empty());
        // Reading RocksDB and replaying the log block: they run on a blocking thread, not on
        // a thread of the query runtime, and what they materialize is charged to the pool.
        let (def, schema, rows, group, scope, as_of) =
            (self.def.clone(), self.storage.clone(), self.rows.clone(), self.group, self.scope.clone(), self.as_of);
        let (batches, view) = tokio::task::spawn_blocking(move || {
            let external =
                |e: kalamdb_projections::Error| DataFusionError::External(Box::new(crate::error::Error::from(e)));
            let mut view = match as_of {
                Some(at) => {
                    TableView { hot: rows.as_of(group, &def, &scope, at).map_err(external)?, ..Default::default() }
                }
                None => rows.table_view(group, def.table_id, &scope, &range).map_err(external)?,
            };
            overlay(&mut view, pending);
            if let Some(l) = limit {
                view.hot.truncate(l);
            }
            let batches = rows_to_batches(&def, &schema, &std::mem::take(&mut view.hot))?;
            Ok::<_, DataFusionError>((batches, view))
        })
        .await
        .map_err(|e| DataFusionError::Execution(format!("table scan task failed: {e}")))??;
        let bytes = batches.iter().map(RecordBatch::get_array_memory_size).sum();
        let what = format!("scan {}.{}", self.def.namespace, self.def.name);
        self.held.hold(&state.runtime_env().memory_pool, what, bytes)?;
        let filters = self.storage_filters(filters)?;
        let need = self.needed_columns(&proj, &filters);
        let (cold, filters) = match view.files.is_empty() {
            true => (None, filters),
            false => {
                let (cold, ordered) = self.cold_plan(state, &proj, &need, &filters, &view).await?;
                (Some(cold), ordered)
            }
        };
        let hot = MemorySourceConfig::try_new_exec(&[batches], self.storage.clone(), Some(need.clone()))?;
        let hot = self.filter_and_project(state, hot, &filters, &proj)?;
        let plan = match cold {
            None => hot,
            Some(cold) => UnionExec::try_new(vec![hot, cold])?,
        };
        self.named(plan, &shown)
    }
}

impl KalamTable {
    /// The scan's output under the names queries use: a projection that renames the columns
    /// whose storage name differs (none, unless a column was renamed).
    fn named(&self, plan: Arc<dyn ExecutionPlan>, shown: &[usize]) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        let stored = |i: usize| self.storage.field(self.to_storage[i]).name();
        let renamed = shown.iter().any(|&i| self.schema.field(i).name() != stored(i));
        if !renamed {
            return Ok(plan);
        }
        let input = plan.schema();
        let exprs = shown
            .iter()
            .map(|&i| Ok((col(stored(i), &input)?, self.schema.field(i).name().clone())))
            .collect::<Result<Vec<(Arc<dyn PhysicalExpr>, String)>, DataFusionError>>()?;
        Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
    }

    /// Filters as the Parquet scan sees them: column names replaced by storage names.
    fn storage_filters(&self, filters: &[Expr]) -> Result<Vec<Expr>, DataFusionError> {
        use datafusion::common::tree_node::{Transformed, TreeNode};
        let names: std::collections::HashMap<&str, &str> = self
            .def
            .visible_columns()
            .map(|(_, c)| c)
            .filter(|c| c.name != c.storage_name())
            .map(|c| (c.name.as_str(), c.storage_name()))
            .collect();
        if names.is_empty() {
            return Ok(filters.to_vec());
        }
        filters
            .iter()
            .map(|f| {
                f.clone()
                    .transform(|e| match &e {
                        Expr::Column(c) => match names.get(c.name.as_str()) {
                            Some(stored) => {
                                Ok(Transformed::yes(Expr::Column(datafusion::common::Column::from_name(*stored))))
                            }
                            None => Ok(Transformed::no(e)),
                        },
                        _ => Ok(Transformed::no(e)),
                    })
                    .map(|t| t.data)
            })
            .collect()
    }
}

/// Lay a batch's pending rows over a table view: the stored version of each pending row
/// disappears (hot rows by `_seq`, file rows as superseded) and what the batch left of it, if
/// anything, joins the hot rows.
fn overlay(view: &mut TableView, pending: Vec<Pending>) {
    if pending.is_empty() {
        return;
    }
    let hidden: std::collections::HashSet<u64> = pending.iter().filter_map(|p| p.base_seq).collect();
    view.hot.retain(|r| !hidden.contains(&r.seq));
    view.superseded.extend(hidden);
    for p in pending {
        if let Some(values) = p.row {
            view.hot.push(StoredRow { seq: p.base_seq.unwrap_or(0), deleted: false, values });
        }
    }
}

/// Primary-key bounds implied by `pk <op> literal` filters (`=`, `<`, `<=`, `>`, `>=`, either
/// side), for a RocksDB range scan of the hot tier. Loose on purpose: strict bounds are taken
/// as inclusive and DataFusion applies every filter again.
fn pk_range(def: &TableDef, filters: &[Expr]) -> kalamdb_projections::cold::PkRange {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    let pk = &def.columns[def.pk_index()];
    // File statistics are keyed by storage name; filters name the column as queries do.
    let mut range =
        kalamdb_projections::cold::PkRange { column: Some(pk.storage_name().to_string()), ..Default::default() };
    for f in filters {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = f else { continue };
        let (op, literal) = match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), Expr::Literal(v, _)) if c.name == pk.name => (*op, v),
            (Expr::Literal(v, _), Expr::Column(c)) if c.name == pk.name => match op.swap() {
                Some(swapped) => (swapped, v),
                None => continue,
            },
            _ => continue,
        };
        let lit = match literal {
            v if v.is_null() => continue,
            datafusion::common::ScalarValue::Utf8(Some(s))
            | datafusion::common::ScalarValue::Utf8View(Some(s))
            | datafusion::common::ScalarValue::LargeUtf8(Some(s)) => crate::values::Literal::String(s.clone()),
            datafusion::common::ScalarValue::Boolean(Some(b)) => crate::values::Literal::Bool(*b),
            v if v.data_type().is_numeric() => crate::values::Literal::Number(v.to_string()),
            _ => continue,
        };
        let Ok(value) = crate::values::coerce(&lit, pk.data_type) else { continue };
        match op {
            Operator::Eq => {
                range.low = Some(value.clone());
                range.high = Some(value);
            }
            Operator::Gt | Operator::GtEq => range.low = Some(value),
            Operator::Lt | Operator::LtEq => range.high = Some(value),
            _ => {}
        }
    }
    range
}

/// Who reads a system table: `system.users` shows dba and system callers every user, and
/// anyone else only their own row.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub user_id: String,
    pub role: Role,
}

/// The `system` schema's tables, materialized from the catalog on every scan.
#[derive(Debug)]
pub struct SystemTable {
    name: &'static str,
    schema: SchemaRef,
    catalog: Arc<Catalog>,
    cluster: Option<Arc<dyn ClusterView>>,
    jobs: Option<Arc<dyn JobSource>>,
    node: Option<Arc<dyn NodeView>>,
    viewer: Viewer,
}

impl JobSource for kalamdb_projections::StorageEnv {
    fn job_log(&self) -> &JobLog {
        &self.jobs
    }
}

pub const SYSTEM_TABLES: [&str; 9] =
    ["namespaces", "tables", "columns", "cluster", "cluster_groups", "jobs", "users", "stats", "sessions"];

/// The columns of `system.<name>`.
pub(crate) fn system_schema(name: &str) -> Option<SchemaRef> {
    let ts = ArrowType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into()));
    let fields = match name {
        "namespaces" => vec![
            Field::new("namespace_id", ArrowType::Utf8, false),
            Field::new("name", ArrowType::Utf8, false),
            Field::new("created_at", ts, false),
            Field::new("table_count", ArrowType::Int64, false),
        ],
        "tables" => vec![
            Field::new("table_id", ArrowType::UInt64, false),
            Field::new("namespace_id", ArrowType::Utf8, false),
            Field::new("table_name", ArrowType::Utf8, false),
            Field::new("table_type", ArrowType::Utf8, false),
            Field::new("created_at", ts, false),
            Field::new("options", ArrowType::Utf8, true),
        ],
        "columns" => vec![
            Field::new("namespace_id", ArrowType::Utf8, false),
            Field::new("table_name", ArrowType::Utf8, false),
            Field::new("column_name", ArrowType::Utf8, false),
            Field::new("ordinal_position", ArrowType::Int64, false),
            Field::new("data_type", ArrowType::Utf8, false),
            Field::new("is_nullable", ArrowType::Boolean, false),
            Field::new("is_primary_key", ArrowType::Boolean, false),
            Field::new("column_default", ArrowType::Utf8, true),
        ],
        // Ours first, then the columns KalamDB's CLI (`\cluster list`) reads under its names;
        // what this server does not measure (host, memory, CPU, uptime) is NULL.
        "cluster" => {
            let mut f = vec![
                Field::new("node_id", ArrowType::UInt64, false),
                Field::new("raft_addr", ArrowType::Utf8, false),
                Field::new("http_addr", ArrowType::Utf8, false),
                Field::new("role", ArrowType::Utf8, false),
                Field::new("groups_led", ArrowType::UInt64, false),
                Field::new("reachable", ArrowType::Boolean, false),
                Field::new("is_self", ArrowType::Boolean, false),
                Field::new("membership", ArrowType::Utf8, false),
                Field::new("cluster_id", ArrowType::Utf8, false),
                Field::new("status", ArrowType::Utf8, false),
                Field::new("rpc_addr", ArrowType::Utf8, false),
                Field::new("api_addr", ArrowType::Utf8, false),
                Field::new("is_leader", ArrowType::Boolean, false),
                Field::new("groups_leading", ArrowType::UInt64, false),
                Field::new("total_groups", ArrowType::UInt64, false),
                Field::new("current_term", ArrowType::UInt64, true),
                Field::new("last_applied_log", ArrowType::UInt64, true),
                Field::new("leader_last_log_index", ArrowType::UInt64, true),
            ];
            for name in [
                "snapshot_index",
                "catchup_progress_pct",
                "replication_lag",
                "memory_mb",
                "memory_usage_mb",
                "uptime_seconds",
            ] {
                f.push(Field::new(name, ArrowType::UInt64, true));
            }
            f.push(Field::new("cpu_usage_percent", ArrowType::Float32, true));
            for name in ["hostname", "version", "uptime_human", "os", "arch"] {
                f.push(Field::new(name, ArrowType::Utf8, true));
            }
            f
        }
        "jobs" => vec![
            Field::new("job_id", ArrowType::Utf8, false),
            Field::new("job_type", ArrowType::Utf8, false),
            Field::new("status", ArrowType::Utf8, false),
            Field::new("namespace_id", ArrowType::Utf8, false),
            Field::new("table_name", ArrowType::Utf8, false),
            Field::new("group_id", ArrowType::Utf8, false),
            Field::new("scope", ArrowType::Utf8, false),
            Field::new("log_start", ArrowType::UInt64, false),
            Field::new("log_end", ArrowType::UInt64, false),
            Field::new("files", ArrowType::UInt64, false),
            Field::new("rows", ArrowType::UInt64, false),
            Field::new("bytes", ArrowType::UInt64, false),
            Field::new("started_at", ts.clone(), false),
            Field::new("duration_ms", ArrowType::UInt64, false),
            Field::new("message", ArrowType::Utf8, false),
        ],
        // Never the password hash.
        "users" => vec![
            Field::new("user_id", ArrowType::Utf8, false),
            Field::new("username", ArrowType::Utf8, false),
            Field::new("role", ArrowType::Utf8, false),
            Field::new("email", ArrowType::Utf8, true),
            Field::new("created_at", ts.clone(), false),
            Field::new("updated_at", ts.clone(), false),
        ],
        // Ours first, then KalamDB's names for the CLI's `\cluster list groups` (its
        // `group_id` is a number; ours is the name, as in tail positions and cluster health).
        "cluster_groups" => vec![
            Field::new("group_name", ArrowType::Utf8, false),
            Field::new("leader", ArrowType::UInt64, true),
            Field::new("term", ArrowType::UInt64, false),
            Field::new("commit_index", ArrowType::UInt64, false),
            Field::new("applied_index", ArrowType::UInt64, false),
            Field::new("last_log_index", ArrowType::UInt64, false),
            Field::new("node_id", ArrowType::UInt64, false),
            Field::new("group_id", ArrowType::UInt64, false),
            Field::new("group_type", ArrowType::Utf8, false),
            Field::new("current_term", ArrowType::UInt64, false),
            Field::new("last_applied", ArrowType::UInt64, false),
            Field::new("snapshot", ArrowType::UInt64, true),
            Field::new("state", ArrowType::Utf8, false),
            Field::new("current_leader", ArrowType::UInt64, true),
        ],
        "stats" | "sessions" => return Some(crate::introspection::node_table_schema(name)),
        _ => return None,
    };
    Some(Arc::new(Schema::new(fields)))
}

pub(crate) fn default_text(d: &kalamdb_log::DefaultExpr) -> String {
    match d {
        kalamdb_log::DefaultExpr::SnowflakeId => "SNOWFLAKE_ID()".into(),
        kalamdb_log::DefaultExpr::Now => "NOW()".into(),
        kalamdb_log::DefaultExpr::Literal(v) => crate::values::value_display_json(v).to_string(),
    }
}

impl SystemTable {
    pub fn new(name: &str, scope: &ScanScope) -> Option<SystemTable> {
        let name = SYSTEM_TABLES.into_iter().find(|n| *n == name)?;
        Some(SystemTable {
            name,
            schema: system_schema(name)?,
            catalog: scope.catalog.clone(),
            cluster: scope.cluster.clone(),
            jobs: scope.jobs.clone(),
            node: scope.node.clone(),
            viewer: Viewer { user_id: scope.user_id.clone(), role: scope.role },
        })
    }

    fn users_batch(&self) -> Result<RecordBatch, DataFusionError> {
        let everyone = self.viewer.role >= Role::Dba;
        let users: Vec<_> =
            self.catalog.users.all().into_iter().filter(|u| everyone || u.user_id == self.viewer.user_id).collect();
        let ts_builder = || datafusion::arrow::array::TimestampMicrosecondBuilder::new().with_timezone("UTC");
        let (mut id, mut name, mut role, mut email, mut created, mut updated) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            ts_builder(),
            ts_builder(),
        );
        for u in &users {
            id.append_value(&u.user_id);
            name.append_value(&u.username);
            role.append_value(u.role.name());
            email.append_option(u.email.as_deref());
            created.append_value(u.created_at_micros);
            updated.append_value(u.updated_at_micros);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(id.finish()),
            Arc::new(name.finish()),
            Arc::new(role.finish()),
            Arc::new(email.finish()),
            Arc::new(created.finish()),
            Arc::new(updated.finish()),
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }

    fn jobs_batch(&self) -> Result<RecordBatch, DataFusionError> {
        let mut jobs = self.jobs.as_ref().map(|j| j.job_log().list()).unwrap_or_default();
        // A job names its table: shown only to callers who may read that table.
        jobs.retain(|j| {
            self.viewer.role >= Role::Dba
                || self
                    .catalog
                    .table(&j.namespace, &j.table_name)
                    .is_some_and(|t| access::can_read(self.viewer.role, &t))
        });
        let text = |f: &dyn Fn(&kalamdb_projections::JobRecord) -> String| {
            let mut b = StringBuilder::new();
            for j in &jobs {
                b.append_value(f(j));
            }
            Arc::new(b.finish()) as ArrayRef
        };
        let num = |f: &dyn Fn(&kalamdb_projections::JobRecord) -> u64| {
            let mut b = UInt64Builder::new();
            for j in &jobs {
                b.append_value(f(j));
            }
            Arc::new(b.finish()) as ArrayRef
        };
        let mut started = datafusion::arrow::array::TimestampMicrosecondBuilder::new().with_timezone("UTC");
        for j in &jobs {
            started.append_value(j.started_at_micros);
        }
        let cols: Vec<ArrayRef> = vec![
            text(&|j| j.job_id.clone()),
            text(&|j| j.job_type.to_string()),
            text(&|j| j.state.to_string()),
            text(&|j| j.namespace.clone()),
            text(&|j| j.table_name.clone()),
            text(&|j| j.group.clone()),
            text(&|j| j.scope.clone()),
            num(&|j| j.log_start),
            num(&|j| j.log_end),
            num(&|j| j.files),
            num(&|j| j.rows),
            num(&|j| j.bytes),
            Arc::new(started.finish()),
            num(&|j| j.duration_ms),
            text(&|j| j.message.clone()),
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }

    async fn cluster_batch(&self) -> Result<RecordBatch, DataFusionError> {
        use datafusion::arrow::array::new_null_array;
        let cols: Vec<ArrayRef> = if self.name == "cluster" {
            let (nodes, groups) = match &self.cluster {
                Some(c) => (c.nodes().await, c.groups().await),
                None => (Vec::new(), Vec::new()),
            };
            let catalog = groups.iter().find(|g| g.group == "meta:catalog");
            let n = nodes.len();
            let text = |f: &dyn Fn(&ClusterNode) -> String| -> ArrayRef {
                Arc::new(nodes.iter().map(|x| Some(f(x))).collect::<StringArray>())
            };
            let num = |f: &dyn Fn(&ClusterNode) -> Option<u64>| -> ArrayRef {
                Arc::new(nodes.iter().map(f).collect::<UInt64Array>())
            };
            let flag = |f: &dyn Fn(&ClusterNode) -> bool| -> ArrayRef {
                Arc::new(nodes.iter().map(|x| Some(f(x))).collect::<BooleanArray>())
            };
            let total = groups.len() as u64;
            let mut cols = vec![
                num(&|x| Some(x.node_id)),
                text(&|x| x.raft_addr.clone()),
                text(&|x| x.http_addr.clone()),
                text(&|x| x.role.clone()),
                num(&|x| Some(x.groups_led)),
                flag(&|x| x.reachable),
                flag(&|x| x.is_self),
                text(&|x| x.membership.clone()),
                text(&|x| x.cluster_id.clone()),
                text(&|x| if x.reachable { "active".into() } else { "offline".into() }),
                text(&|x| x.raft_addr.clone()),
                text(&|x| format!("http://{}", x.http_addr)),
                flag(&|x| x.role == "leader"),
                num(&|x| Some(x.groups_led)),
                num(&|_| Some(total)),
                num(&|_| catalog.map(|g| g.term)),
                num(&|x| catalog.filter(|_| x.is_self).map(|g| g.applied_index)),
                num(&|_| catalog.map(|g| g.last_log_index)),
                num(&|_| None),
                num(&|x| x.catchup_progress_pct),
                num(&|x| x.replication_lag),
            ];
            for i in cols.len()..self.schema.fields().len() {
                cols.push(new_null_array(self.schema.field(i).data_type(), n));
            }
            cols
        } else {
            let groups = match &self.cluster {
                Some(c) => c.groups().await,
                None => Vec::new(),
            };
            let text = |f: &dyn Fn(&ClusterGroup) -> String| -> ArrayRef {
                Arc::new(groups.iter().map(|x| Some(f(x))).collect::<StringArray>())
            };
            let num = |f: &dyn Fn(&ClusterGroup) -> Option<u64>| -> ArrayRef {
                Arc::new(groups.iter().map(f).collect::<UInt64Array>())
            };
            vec![
                text(&|g| g.group.clone()),
                num(&|g| g.leader),
                num(&|g| Some(g.term)),
                num(&|g| Some(g.commit_index)),
                num(&|g| Some(g.applied_index)),
                num(&|g| Some(g.last_log_index)),
                num(&|g| Some(g.node_id)),
                num(&|g| Some(u64::from(g.id))),
                text(&|g| {
                    let kind = g.group.split(':').next().unwrap_or("");
                    match kind {
                        "user" => "user_data".into(),
                        "shared" => "shared_data".into(),
                        other => other.to_string(),
                    }
                }),
                num(&|g| Some(g.term)),
                num(&|g| Some(g.applied_index)),
                num(&|_| None),
                text(&|g| if g.leader == Some(g.node_id) { "Leader".into() } else { "Follower".into() }),
                num(&|g| g.leader),
            ]
        };
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }

    fn batch(&self) -> Result<RecordBatch, DataFusionError> {
        let st = self.catalog.read();
        let ts_builder = || datafusion::arrow::array::TimestampMicrosecondBuilder::new().with_timezone("UTC");
        let cols: Vec<ArrayRef> = match self.name {
            "namespaces" => {
                let (mut id, mut name, mut created, mut count) =
                    (StringBuilder::new(), StringBuilder::new(), ts_builder(), Int64Builder::new());
                for ns in st.namespaces.values() {
                    id.append_value(&ns.name);
                    name.append_value(&ns.name);
                    created.append_value(ns.created_at_micros);
                    count.append_value(st.tables.keys().filter(|(n, _)| n == &ns.name).count() as i64);
                }
                vec![
                    Arc::new(id.finish()),
                    Arc::new(name.finish()),
                    Arc::new(created.finish()),
                    Arc::new(count.finish()),
                ]
            }
            "tables" => {
                let (mut id, mut ns, mut name, mut ty, mut created, mut opts) = (
                    UInt64Builder::new(),
                    StringBuilder::new(),
                    StringBuilder::new(),
                    StringBuilder::new(),
                    ts_builder(),
                    StringBuilder::new(),
                );
                // Only what the caller may read: the list of tables is itself information.
                for t in st.tables.values().filter(|t| access::can_read(self.viewer.role, t)) {
                    id.append_value(t.table_id);
                    ns.append_value(&t.namespace);
                    name.append_value(&t.name);
                    ty.append_value(t.table_type.api_name());
                    created.append_value(t.created_at_micros);
                    let o: serde_json::Map<String, serde_json::Value> =
                        t.options.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
                    opts.append_value(serde_json::Value::Object(o).to_string());
                }
                vec![
                    Arc::new(id.finish()),
                    Arc::new(ns.finish()),
                    Arc::new(name.finish()),
                    Arc::new(ty.finish()),
                    Arc::new(created.finish()),
                    Arc::new(opts.finish()),
                ]
            }
            _ => {
                let (mut ns, mut tn, mut cn, mut pos, mut dt, mut nullable, mut pk, mut def) = (
                    StringBuilder::new(),
                    StringBuilder::new(),
                    StringBuilder::new(),
                    Int64Builder::new(),
                    StringBuilder::new(),
                    BooleanBuilder::new(),
                    BooleanBuilder::new(),
                    StringBuilder::new(),
                );
                for t in st.tables.values().filter(|t| access::can_read(self.viewer.role, t)) {
                    for (i, (_, c)) in t.visible_columns().enumerate() {
                        ns.append_value(&t.namespace);
                        tn.append_value(&t.name);
                        cn.append_value(&c.name);
                        pos.append_value(i as i64 + 1);
                        dt.append_value(c.data_type.api_name());
                        nullable.append_value(c.nullable && !c.primary_key);
                        pk.append_value(c.primary_key);
                        def.append_option(c.default.as_ref().map(default_text));
                    }
                }
                vec![
                    Arc::new(ns.finish()),
                    Arc::new(tn.finish()),
                    Arc::new(cn.finish()),
                    Arc::new(pos.finish()),
                    Arc::new(dt.finish()),
                    Arc::new(nullable.finish()),
                    Arc::new(pk.finish()),
                    Arc::new(def.finish()),
                ]
            }
        };
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }
}

#[async_trait]
impl TableProvider for SystemTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> DfTableType {
        DfTableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        let batch = if self.name.starts_with("cluster") {
            self.cluster_batch().await?
        } else if self.name == "jobs" {
            self.jobs_batch()?
        } else if self.name == "users" {
            self.users_batch()?
        } else if self.name == "stats" || self.name == "sessions" {
            crate::introspection::node_table_batch(self.name, self.node.as_deref(), &self.viewer)?
        } else {
            self.batch()?
        };
        Ok(MemorySourceConfig::try_new_exec(&[vec![batch]], self.schema.clone(), projection.cloned())?)
    }
}

/// What a catalog needs to build table providers for one request.
#[derive(Clone)]
pub struct ScanScope {
    pub catalog: Arc<Catalog>,
    pub rows: RowReader,
    pub layout: GroupLayout,
    pub user_id: String,
    pub role: Role,
    pub barrier: Option<Arc<dyn ReadBarrier>>,
    pub cluster: Option<Arc<dyn ClusterView>>,
    pub node: Option<Arc<dyn NodeView>>,
    pub jobs: Option<Arc<dyn JobSource>>,
    /// (namespace, table, log index) of tables read as of a past position.
    pub as_of: Arc<Vec<(String, String, u64)>>,
    /// Memory the request's scans hold in the query pool.
    pub held: HeldMemory,
    /// The writes of the `BEGIN ... COMMIT` batch the statement runs in, which its scans see.
    pub batch: Option<Arc<Batch>>,
}

impl std::fmt::Debug for ScanScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanScope").field("user_id", &self.user_id).finish()
    }
}

/// The DataFusion catalog: one schema per namespace plus `system`, resolved on demand so DDL
/// needs no re-registration.
#[derive(Debug)]
pub struct KalamCatalog {
    pub scope: ScanScope,
}

impl CatalogProvider for KalamCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.scope.catalog.read().namespaces.keys().cloned().collect();
        names.extend(RESERVED_NAMESPACES.iter().map(|n| n.to_string()));
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == crate::introspection::INFORMATION_SCHEMA {
            return Some(Arc::new(crate::introspection::InformationSchema { scope: self.scope.clone() }));
        }
        if name == SYSTEM_NAMESPACE || self.scope.catalog.namespace_exists(name) {
            Some(Arc::new(NamespaceSchema { namespace: name.to_string(), scope: self.scope.clone() }))
        } else {
            None
        }
    }
}

#[derive(Debug)]
pub struct NamespaceSchema {
    namespace: String,
    scope: ScanScope,
}

#[async_trait]
impl SchemaProvider for NamespaceSchema {
    fn table_names(&self) -> Vec<String> {
        if self.namespace == SYSTEM_NAMESPACE {
            return SYSTEM_TABLES.iter().map(|s| s.to_string()).collect();
        }
        let st = self.scope.catalog.read();
        st.tables.keys().filter(|(ns, _)| *ns == self.namespace).map(|(_, t)| t.clone()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        if self.namespace == SYSTEM_NAMESPACE {
            return Ok(SystemTable::new(name, &self.scope).map(|t| Arc::new(t) as Arc<dyn TableProvider>));
        }
        let s = &self.scope;
        let as_of = s.as_of.iter().find(|(ns, t, _)| *ns == self.namespace && t == name).map(|(_, _, at)| *at);
        let Some(def) = s.catalog.table(&self.namespace, name) else { return Ok(None) };
        // Every read of a table (joins, subqueries, INSERT ... SELECT, time travel) resolves
        // it here, so this one check covers them all.
        crate::access::check_read(s.role, &def).map_err(|e| DataFusionError::External(Box::new(e)))?;
        // The past reads through the schema of its time: the columns that existed then,
        // under the names they had.
        let def = match as_of {
            Some(at) => {
                let (group, _) = s.layout.table_location(&def, &s.user_id);
                let then = s.rows.schema_as_of(group, &def, at);
                Arc::new(then.map_err(|e| DataFusionError::External(Box::new(crate::error::Error::from(e))))?)
            }
            None => def,
        };
        let mut table = KalamTable::new(def, s.rows.clone(), &s.layout, &s.user_id, s.barrier.clone());
        table.as_of = as_of;
        table.batch = s.batch.clone();
        table.held = s.held.clone();
        Ok(Some(Arc::new(table) as Arc<dyn TableProvider>))
    }

    fn table_exist(&self, name: &str) -> bool {
        if self.namespace == SYSTEM_NAMESPACE {
            return SYSTEM_TABLES.contains(&name);
        }
        self.scope.catalog.table(&self.namespace, name).is_some()
    }
}
