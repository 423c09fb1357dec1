//! Namespaces and tables: CREATE/DROP NAMESPACE, CREATE/DROP TABLE, SHOW, DESCRIBE. Each
//! change is one op in the catalog group's log.

use kalamdb_log::{ColumnDef, DataType, DefaultExpr, Op, OpResult, Role, TableDef, TableType, Value};

use super::{Engine, ExecContext, QueryResult, TABLE_COLUMNS_MAX, catalog_group, now_micros};
use crate::access::{self, ACCESS_LEVEL_OPTION, AccessLevel};
use crate::error::{Error, Result};
use crate::parse::{ParsedCreateTable, Statement};
use crate::ports::Proposer;
use crate::provider::RESERVED_NAMESPACES;
use crate::values::{Literal, coerce};

impl Engine {
    /// A namespace or table statement (`statement` is one of the DDL forms).
    pub(super) async fn ddl_statement(
        &self,
        statement: Statement,
        ctx: &ExecContext,
        proposer: &dyn Proposer,
    ) -> Result<QueryResult> {
        if !matches!(
            statement,
            Statement::ShowNamespaces | Statement::ShowTables { .. } | Statement::DescribeTable { .. }
        ) {
            access::require(ctx.role, Role::Dba, "DDL")?;
        }
        match statement {
            Statement::CreateNamespace { name, if_not_exists } => {
                if RESERVED_NAMESPACES.contains(&name.as_str()) {
                    return Err(Error::InvalidSql(format!("namespace '{name}' is reserved")));
                }
                let op = Op::CreateNamespace { name: name.clone(), if_not_exists, created_at_micros: now_micros() };
                match self.propose_ok(proposer, catalog_group(), op).await? {
                    OpResult::Skipped => Ok(QueryResult::message(0, format!("Namespace '{name}' already exists"))),
                    _ => Ok(QueryResult::message(1, format!("Namespace '{name}' created"))),
                }
            }
            Statement::DropNamespace { name, if_exists, cascade } => {
                // Its tables are fenced first, at the versions the catalog must still hold.
                let tables: Vec<_> = if cascade {
                    self.catalog.read().tables.values().filter(|t| t.namespace == name).cloned().collect()
                } else {
                    Vec::new()
                };
                let expected = tables.iter().map(|t| (t.table_id, t.schema_version())).collect();
                let op = Op::DropNamespace { name: name.clone(), if_exists, cascade, expected };
                let fenced: Vec<&TableDef> = tables.iter().map(|t| t.as_ref()).collect();
                match self.commit_fenced(&fenced, op, proposer).await? {
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
                let def = self.catalog.table(&ns, &table.name);
                // 0: no table was found, so one created since is refused.
                let expected_version = def.as_ref().map_or(0, |d| d.schema_version());
                let op = Op::DropTable { namespace: ns.clone(), name: table.name.clone(), if_exists, expected_version };
                let fenced: Vec<&TableDef> = def.as_deref().into_iter().collect();
                match self.commit_fenced(&fenced, op, proposer).await? {
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
            Statement::AlterTable { table, action } => self.alter_table(table, action, ctx, proposer).await,
            Statement::DescribeTable { table, history: true } => self.describe_history(table, ctx),
            Statement::DescribeTable { table, history: false } => {
                let def = self.resolve_table(&table, ctx)?;
                access::check_read(ctx.role, &def)?;
                let rows = def
                    .visible_columns()
                    .enumerate()
                    .map(|(i, (_, c))| {
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
                    ("ordinal_position".into(), "Int".into()),
                ];
                Ok(QueryResult::rows(cols, rows))
            }
            other => Err(Error::Internal(format!("not a DDL statement: {other:?}"))),
        }
    }

    pub(super) async fn create_table(
        &self,
        ct: ParsedCreateTable,
        ctx: &ExecContext,
        proposer: &dyn Proposer,
    ) -> Result<QueryResult> {
        let ns = self.namespace_of(&ct.table, ctx);
        if RESERVED_NAMESPACES.contains(&ns.as_str()) {
            return Err(Error::InvalidSql(format!("tables cannot be created in namespace '{ns}'")));
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
                stored_as: String::new(),
                backfill: None,
                dropped: false,
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
                        stored_as: String::new(),
                        backfill: None,
                        dropped: false,
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
            versions: Vec::new(),
        };
        let op = Op::CreateTable { table: def, if_not_exists: ct.if_not_exists };
        match self.propose_ok(proposer, catalog_group(), op).await? {
            OpResult::Skipped => Ok(QueryResult::message(0, format!("Table '{ns}.{}' already exists", ct.table.name))),
            _ => Ok(QueryResult::message(1, format!("Table '{ns}.{}' created", ct.table.name))),
        }
    }
}

/// A DEFAULT literal (parsed as BIGINT, DOUBLE, TEXT or BOOLEAN) back as written, so it
/// meets the column type through the same coercion as an inserted value.
pub(super) fn default_literal(v: &Value) -> Literal {
    match v {
        Value::BigInt(i) => Literal::Number(i.to_string()),
        Value::Double(f) => Literal::Number(f.to_string()),
        Value::Text(s) => Literal::String(s.clone()),
        Value::Boolean(b) => Literal::Bool(*b),
        _ => Literal::Null,
    }
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

/// Table options `WITH (...)` and `ALTER TABLE ... SET (...)` accept (besides `TYPE`).
pub const TABLE_OPTIONS: [&str; 3] = [ACCESS_LEVEL_OPTION, "FLUSH_POLICY", TTL_OPTION];

/// Refuse an option this server does not implement: one accepted and ignored would let a user
/// believe a table has a property it has not.
pub(super) fn check_option_name(key: &str) -> Result<()> {
    if TABLE_OPTIONS.contains(&key) {
        return Ok(());
    }
    Err(Error::InvalidSql(match key {
        "STORAGE_ID" | "USE_USER_STORAGE" => format!(
            "table option {key} is not supported: every table's files live under the node's storage.storage_path"
        ),
        _ => format!("unknown table option '{key}' (known: TYPE, {})", TABLE_OPTIONS.join(", ")),
    }))
}

/// STREAM tables take `TTL_SECONDS` and never flush; other tables take no TTL.
pub(super) fn check_stream_options(table_type: TableType, options: &[(String, String)]) -> Result<()> {
    for (k, v) in options {
        check_option_name(k)?;
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
