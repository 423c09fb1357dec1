//! DataFusion's view of our data: a catalog whose schemas are namespaces (plus `system`),
//! table providers over the RocksDB row projections, and the `system.*` tables.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BooleanBuilder, Int64Builder, RecordBatch, StringBuilder, UInt64Builder};
use datafusion::arrow::datatypes::{DataType as ArrowType, Field, Schema, SchemaRef};
use datafusion::catalog::memory::MemorySourceConfig;
use datafusion::catalog::{CatalogProvider, SchemaProvider, Session, TableProvider};
use datafusion::datasource::TableType as DfTableType;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use kalamdb_log::{GroupId, GroupLayout, TableDef, TableType};
use kalamdb_projections::{Catalog, RowReader, StoredRow};

use crate::values::{arrow_field, build_array};

pub const SYSTEM_NAMESPACE: &str = "system";
pub const SEQ_COLUMN: &str = "_seq";
pub const DELETED_COLUMN: &str = "_deleted";
/// Rows per Arrow batch produced by a table scan.
pub const SCAN_BATCH_ROWS_MAX: usize = 8192;

/// Where a table's rows live for a given caller: one group and one scope.
pub fn table_location(def: &TableDef, layout: &GroupLayout, user_id: &str) -> (GroupId, String) {
    match def.table_type {
        TableType::Shared => (layout.shared_shard(def.table_id), String::new()),
        TableType::User | TableType::Stream => (layout.user_shard(user_id), user_id.to_string()),
    }
}

/// The schema DataFusion sees for a table: its columns, then `_seq` and `_deleted`.
pub fn table_schema(def: &TableDef) -> SchemaRef {
    let mut fields: Vec<Field> =
        def.columns.iter().map(|c| arrow_field(&c.name, c.data_type, c.nullable && !c.primary_key)).collect();
    fields.push(Field::new(SEQ_COLUMN, ArrowType::Int64, false));
    fields.push(Field::new(DELETED_COLUMN, ArrowType::Boolean, false));
    Arc::new(Schema::new(fields))
}

/// Turn stored rows into Arrow batches of the table schema.
pub fn rows_to_batches(
    def: &TableDef,
    schema: &SchemaRef,
    rows: &[StoredRow],
) -> Result<Vec<RecordBatch>, DataFusionError> {
    let mut batches = Vec::new();
    for chunk in rows.chunks(SCAN_BATCH_ROWS_MAX) {
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(def.columns.len() + 2);
        for (i, c) in def.columns.iter().enumerate() {
            cols.push(build_array(
                c.data_type,
                chunk.iter().map(|r| r.values.get(i).unwrap_or(&kalamdb_log::Value::Null)),
                chunk.len(),
            ));
        }
        let mut seq = Int64Builder::with_capacity(chunk.len());
        let mut del = BooleanBuilder::with_capacity(chunk.len());
        for r in chunk {
            seq.append_value(r.seq as i64);
            del.append_value(r.deleted);
        }
        cols.push(Arc::new(seq.finish()));
        cols.push(Arc::new(del.finish()));
        batches.push(RecordBatch::try_new(schema.clone(), cols)?);
    }
    Ok(batches)
}

/// A user table as DataFusion sees it, bound to one caller's scope.
#[derive(Debug)]
pub struct KalamTable {
    def: Arc<TableDef>,
    schema: SchemaRef,
    rows: RowReader,
    group: GroupId,
    scope: String,
    barrier: Option<Arc<dyn ReadBarrier>>,
}

impl KalamTable {
    pub fn new(
        def: Arc<TableDef>,
        rows: RowReader,
        layout: &GroupLayout,
        user_id: &str,
        barrier: Option<Arc<dyn ReadBarrier>>,
    ) -> KalamTable {
        let (group, scope) = table_location(&def, layout, user_id);
        let schema = table_schema(&def);
        KalamTable { def, schema, rows, group, scope, barrier }
    }
}

/// Makes a read linearizable: returns once this node's projection of `group` has applied
/// everything committed before the call (ReadIndex). The node implements it.
#[async_trait]
pub trait ReadBarrier: Send + Sync + std::fmt::Debug {
    async fn wait(&self, group: GroupId) -> crate::error::Result<()>;
}

/// A row of `system.cluster`.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub node_id: u64,
    pub raft_addr: String,
    pub http_addr: String,
    /// "leader" when the node leads the catalog group, else "follower".
    pub role: String,
    pub groups_led: u64,
    pub reachable: bool,
    pub is_self: bool,
}

/// A row of `system.cluster_groups`.
#[derive(Debug, Clone)]
pub struct ClusterGroup {
    pub group: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
}

/// The cluster state behind `system.cluster` and `system.cluster_groups`; the node
/// implements it (a single node reports itself and its groups).
#[async_trait]
pub trait ClusterView: Send + Sync + std::fmt::Debug {
    async fn nodes(&self) -> Vec<ClusterNode>;
    async fn groups(&self) -> Vec<ClusterGroup>;
}

#[async_trait]
impl TableProvider for KalamTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> DfTableType {
        DfTableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        if let Some(b) = &self.barrier {
            b.wait(self.group).await.map_err(|e| DataFusionError::External(Box::new(e)))?;
        }
        let mut live = Vec::new();
        // Filters are not pushed down (DataFusion re-applies them), so a limit here is only a
        // limit on live rows, which is what DataFusion asked for.
        self.rows
            .scan(self.group, self.def.table_id, Some(&self.scope), |_, row| {
                if !row.deleted {
                    live.push(row);
                }
                limit.is_none_or(|l| live.len() < l)
            })
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let batches = rows_to_batches(&self.def, &self.schema, &live)?;
        let plan = MemorySourceConfig::try_new_exec(&[batches], self.schema.clone(), projection.cloned())?;
        Ok(plan)
    }
}

/// The `system` schema's tables, materialized from the catalog on every scan.
#[derive(Debug)]
pub struct SystemTable {
    name: &'static str,
    schema: SchemaRef,
    catalog: Arc<Catalog>,
    cluster: Option<Arc<dyn ClusterView>>,
}

pub const SYSTEM_TABLES: [&str; 5] = ["namespaces", "tables", "columns", "cluster", "cluster_groups"];

fn system_schema(name: &str) -> Option<SchemaRef> {
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
        "cluster" => vec![
            Field::new("node_id", ArrowType::UInt64, false),
            Field::new("raft_addr", ArrowType::Utf8, false),
            Field::new("http_addr", ArrowType::Utf8, false),
            Field::new("role", ArrowType::Utf8, false),
            Field::new("groups_led", ArrowType::UInt64, false),
            Field::new("reachable", ArrowType::Boolean, false),
            Field::new("is_self", ArrowType::Boolean, false),
        ],
        "cluster_groups" => vec![
            Field::new("group_id", ArrowType::Utf8, false),
            Field::new("leader", ArrowType::UInt64, true),
            Field::new("term", ArrowType::UInt64, false),
            Field::new("commit_index", ArrowType::UInt64, false),
            Field::new("applied_index", ArrowType::UInt64, false),
            Field::new("last_log_index", ArrowType::UInt64, false),
        ],
        _ => return None,
    };
    Some(Arc::new(Schema::new(fields)))
}

fn default_text(d: &kalamdb_log::DefaultExpr) -> String {
    match d {
        kalamdb_log::DefaultExpr::SnowflakeId => "SNOWFLAKE_ID()".into(),
        kalamdb_log::DefaultExpr::Now => "NOW()".into(),
        kalamdb_log::DefaultExpr::Literal(v) => crate::values::value_to_json(v).to_string(),
    }
}

impl SystemTable {
    pub fn new(name: &str, catalog: Arc<Catalog>, cluster: Option<Arc<dyn ClusterView>>) -> Option<SystemTable> {
        let name = SYSTEM_TABLES.into_iter().find(|n| *n == name)?;
        Some(SystemTable { name, schema: system_schema(name)?, catalog, cluster })
    }

    async fn cluster_batch(&self) -> Result<RecordBatch, DataFusionError> {
        let cols: Vec<ArrayRef> = if self.name == "cluster" {
            let nodes = match &self.cluster {
                Some(c) => c.nodes().await,
                None => Vec::new(),
            };
            let (mut id, mut raft, mut http, mut role, mut led, mut reach, mut me) = (
                UInt64Builder::new(),
                StringBuilder::new(),
                StringBuilder::new(),
                StringBuilder::new(),
                UInt64Builder::new(),
                BooleanBuilder::new(),
                BooleanBuilder::new(),
            );
            for n in nodes {
                id.append_value(n.node_id);
                raft.append_value(&n.raft_addr);
                http.append_value(&n.http_addr);
                role.append_value(&n.role);
                led.append_value(n.groups_led);
                reach.append_value(n.reachable);
                me.append_value(n.is_self);
            }
            vec![
                Arc::new(id.finish()),
                Arc::new(raft.finish()),
                Arc::new(http.finish()),
                Arc::new(role.finish()),
                Arc::new(led.finish()),
                Arc::new(reach.finish()),
                Arc::new(me.finish()),
            ]
        } else {
            let groups = match &self.cluster {
                Some(c) => c.groups().await,
                None => Vec::new(),
            };
            let (mut g, mut leader, mut term, mut commit, mut applied, mut last) = (
                StringBuilder::new(),
                UInt64Builder::new(),
                UInt64Builder::new(),
                UInt64Builder::new(),
                UInt64Builder::new(),
                UInt64Builder::new(),
            );
            for r in groups {
                g.append_value(&r.group);
                leader.append_option(r.leader);
                term.append_value(r.term);
                commit.append_value(r.commit_index);
                applied.append_value(r.applied_index);
                last.append_value(r.last_log_index);
            }
            vec![
                Arc::new(g.finish()),
                Arc::new(leader.finish()),
                Arc::new(term.finish()),
                Arc::new(commit.finish()),
                Arc::new(applied.finish()),
                Arc::new(last.finish()),
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
                for t in st.tables.values() {
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
                for t in st.tables.values() {
                    for (i, c) in t.columns.iter().enumerate() {
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
        let batch = if self.name.starts_with("cluster") { self.cluster_batch().await? } else { self.batch()? };
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
    pub barrier: Option<Arc<dyn ReadBarrier>>,
    pub cluster: Option<Arc<dyn ClusterView>>,
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
        names.push(SYSTEM_NAMESPACE.to_string());
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
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
            return Ok(SystemTable::new(name, self.scope.catalog.clone(), self.scope.cluster.clone())
                .map(|t| Arc::new(t) as Arc<dyn TableProvider>));
        }
        let s = &self.scope;
        Ok(s.catalog.table(&self.namespace, name).map(|def| {
            Arc::new(KalamTable::new(def, s.rows.clone(), &s.layout, &s.user_id, s.barrier.clone()))
                as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        if self.namespace == SYSTEM_NAMESPACE {
            return SYSTEM_TABLES.contains(&name);
        }
        self.scope.catalog.table(&self.namespace, name).is_some()
    }
}
