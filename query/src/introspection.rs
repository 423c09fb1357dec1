//! The server's views of itself beyond `system`'s catalog tables: `information_schema.tables`
//! and `.columns` (what SQL tools, and KalamDB's CLI for `\d` and completion, read), and
//! `system.stats` / `system.sessions`, which the node answers through [`NodeView`].

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Int32Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType as ArrowType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use kalamdb_log::Role;

use crate::access;
use crate::ports::NodeView;
use crate::provider::{SYSTEM_NAMESPACE, SYSTEM_TABLES, ScanScope, Viewer, system_schema};
use crate::values::api_type_name;

pub const INFORMATION_SCHEMA: &str = "information_schema";
pub const INFORMATION_SCHEMA_TABLES: [&str; 2] = ["tables", "columns"];
/// Rows of `system.stats` at most (the node's metric samples).
pub const STATS_ROWS_MAX: usize = 20_000;
/// Rows of `system.sessions` at most (the node's connections are capped well below).
pub const SESSIONS_ROWS_MAX: usize = 100_000;

fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, ArrowType::Utf8, nullable)
}

fn timestamp(name: &str) -> Field {
    Field::new(name, ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false)
}

fn information_schema(name: &str) -> Option<SchemaRef> {
    let fields = match name {
        "tables" => vec![
            utf8("table_catalog", false),
            utf8("table_schema", false),
            utf8("table_name", false),
            utf8("table_type", false),
        ],
        "columns" => vec![
            utf8("table_catalog", false),
            utf8("table_schema", false),
            utf8("table_name", false),
            utf8("column_name", false),
            Field::new("ordinal_position", ArrowType::Int32, false),
            utf8("column_default", true),
            utf8("is_nullable", false),
            utf8("data_type", false),
        ],
        _ => return None,
    };
    Some(Arc::new(Schema::new(fields)))
}

/// The columns of `system.stats` and `system.sessions` (KalamDB's names; `user_id` and
/// `subscriptions` are ours).
pub(crate) fn node_table_schema(name: &str) -> SchemaRef {
    let fields = if name == "stats" {
        vec![utf8("metric_name", false), utf8("metric_value", false)]
    } else {
        vec![
            utf8("session_id", false),
            Field::new("backend_pid", ArrowType::Int32, true),
            utf8("current_schema", true),
            utf8("state", false),
            utf8("transaction_id", true),
            utf8("transaction_state", true),
            Field::new("transaction_has_writes", ArrowType::Boolean, true),
            utf8("client_addr", true),
            utf8("transport", false),
            timestamp("opened_at"),
            timestamp("last_seen_at"),
            utf8("last_method", true),
            utf8("user_id", false),
            Field::new("subscriptions", ArrowType::Int64, false),
        ]
    };
    Arc::new(Schema::new(fields))
}

/// `system.stats` (dba and system only: metrics describe the whole node) or `system.sessions`
/// (everyone's for dba and system, else the caller's own).
pub(crate) fn node_table_batch(
    name: &str,
    node: Option<&dyn NodeView>,
    viewer: &Viewer,
) -> Result<RecordBatch, DataFusionError> {
    let schema = node_table_schema(name);
    let Some(node) = node else { return Ok(RecordBatch::new_empty(schema)) };
    let external = |e: crate::error::Error| DataFusionError::External(Box::new(e));
    let cols: Vec<ArrayRef> = if name == "stats" {
        access::require(viewer.role, Role::Dba, "reading system.stats").map_err(external)?;
        let (mut names, mut values) = (StringBuilder::new(), StringBuilder::new());
        for (n, v) in node.stats(STATS_ROWS_MAX) {
            names.append_value(n);
            values.append_value(v);
        }
        vec![Arc::new(names.finish()), Arc::new(values.finish())]
    } else {
        let everyone = viewer.role >= Role::Dba;
        let sessions: Vec<_> =
            node.sessions(SESSIONS_ROWS_MAX).into_iter().filter(|s| everyone || s.user_id == viewer.user_id).collect();
        let ts = || TimestampMicrosecondBuilder::new().with_timezone("UTC");
        let (mut id, mut pid, mut schema_, mut state, mut txn, mut txn_state, mut txn_writes) = (
            StringBuilder::new(),
            Int32Builder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            BooleanBuilder::new(),
        );
        let (mut addr, mut transport, mut opened, mut seen, mut method, mut user, mut subs) = (
            StringBuilder::new(),
            StringBuilder::new(),
            ts(),
            ts(),
            StringBuilder::new(),
            StringBuilder::new(),
            Int64Builder::new(),
        );
        for s in &sessions {
            id.append_value(&s.session_id);
            // Sessions here are connections, not database backends with transactions.
            pid.append_null();
            schema_.append_null();
            state.append_value(if s.subscriptions > 0 { "active" } else { "idle" });
            txn.append_null();
            txn_state.append_null();
            txn_writes.append_null();
            addr.append_option(s.client_addr.as_deref());
            transport.append_value(&s.transport);
            opened.append_value(s.opened_at_micros);
            seen.append_value(s.last_seen_at_micros);
            method.append_option(s.last_method.as_deref());
            user.append_value(&s.user_id);
            subs.append_value(i64::try_from(s.subscriptions).unwrap_or(i64::MAX));
        }
        vec![
            Arc::new(id.finish()),
            Arc::new(pid.finish()),
            Arc::new(schema_.finish()),
            Arc::new(state.finish()),
            Arc::new(txn.finish()),
            Arc::new(txn_state.finish()),
            Arc::new(txn_writes.finish()),
            Arc::new(addr.finish()),
            Arc::new(transport.finish()),
            Arc::new(opened.finish()),
            Arc::new(seen.finish()),
            Arc::new(method.finish()),
            Arc::new(user.finish()),
            Arc::new(subs.finish()),
        ]
    };
    Ok(RecordBatch::try_new(schema, cols)?)
}

/// The `information_schema` schema: built from the catalog per request, listing only the
/// tables the caller may read (the list of tables is itself information), plus the `system`
/// and `information_schema` views.
#[derive(Debug)]
pub struct InformationSchema {
    pub scope: ScanScope,
}

/// A column as `information_schema.columns` lists it.
struct ColumnRow {
    name: String,
    data_type: String,
    nullable: bool,
    default: Option<String>,
}

impl InformationSchema {
    /// `(schema, table, table_type, columns)` of every table the caller may see.
    fn visible_tables(&self) -> Vec<(String, String, &'static str, Vec<ColumnRow>)> {
        let mut out = Vec::new();
        {
            let st = self.scope.catalog.read();
            for t in st.tables.values().filter(|t| access::can_read(self.scope.role, t)) {
                let cols = t
                    .visible_columns()
                    .map(|(_, c)| ColumnRow {
                        name: c.name.clone(),
                        data_type: c.data_type.api_name().to_string(),
                        nullable: c.nullable && !c.primary_key,
                        default: c.default.as_ref().map(crate::provider::default_text),
                    })
                    .collect();
                out.push((t.namespace.clone(), t.name.clone(), "BASE TABLE", cols));
            }
        }
        let views = SYSTEM_TABLES.iter().filter_map(|n| Some((SYSTEM_NAMESPACE, *n, system_schema(n)?))).chain(
            INFORMATION_SCHEMA_TABLES.iter().filter_map(|n| Some((INFORMATION_SCHEMA, *n, information_schema(n)?))),
        );
        for (ns, name, schema) in views {
            let cols = schema
                .fields()
                .iter()
                .map(|f| ColumnRow {
                    name: f.name().clone(),
                    data_type: api_type_name(f),
                    nullable: f.is_nullable(),
                    default: None,
                })
                .collect();
            out.push((ns.to_string(), name.to_string(), "VIEW", cols));
        }
        out
    }

    fn batch(&self, name: &str, schema: SchemaRef) -> Result<RecordBatch, DataFusionError> {
        let tables = self.visible_tables();
        let cols: Vec<ArrayRef> = if name == "tables" {
            let (mut cat, mut ns, mut tn, mut ty) =
                (StringBuilder::new(), StringBuilder::new(), StringBuilder::new(), StringBuilder::new());
            for (schema_name, table, table_type, _) in &tables {
                cat.append_value(crate::engine::CATALOG_NAME);
                ns.append_value(schema_name);
                tn.append_value(table);
                ty.append_value(table_type);
            }
            vec![Arc::new(cat.finish()), Arc::new(ns.finish()), Arc::new(tn.finish()), Arc::new(ty.finish())]
        } else {
            let mut b: [StringBuilder; 4] = Default::default();
            let (mut pos, mut default, mut nullable, mut dt) =
                (Int32Builder::new(), StringBuilder::new(), StringBuilder::new(), StringBuilder::new());
            for (schema_name, table, _, columns) in &tables {
                for (i, c) in columns.iter().enumerate() {
                    b[0].append_value(crate::engine::CATALOG_NAME);
                    b[1].append_value(schema_name);
                    b[2].append_value(table);
                    b[3].append_value(&c.name);
                    pos.append_value(i32::try_from(i + 1).unwrap_or(i32::MAX));
                    default.append_option(c.default.as_deref());
                    nullable.append_value(if c.nullable { "YES" } else { "NO" });
                    dt.append_value(&c.data_type);
                }
            }
            let [mut cat, mut ns, mut tn, mut cn] = b;
            vec![
                Arc::new(cat.finish()),
                Arc::new(ns.finish()),
                Arc::new(tn.finish()),
                Arc::new(cn.finish()),
                Arc::new(pos.finish()),
                Arc::new(default.finish()),
                Arc::new(nullable.finish()),
                Arc::new(dt.finish()),
            ]
        };
        Ok(RecordBatch::try_new(schema, cols)?)
    }
}

#[async_trait]
impl SchemaProvider for InformationSchema {
    fn table_names(&self) -> Vec<String> {
        INFORMATION_SCHEMA_TABLES.iter().map(|s| s.to_string()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        let Some(schema) = information_schema(name) else { return Ok(None) };
        let batch = self.batch(name, schema.clone())?;
        Ok(Some(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        INFORMATION_SCHEMA_TABLES.contains(&name)
    }
}
