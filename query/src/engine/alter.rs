//! `ALTER TABLE` (one `Op::AlterTable` in the catalog group's log, checked here against the
//! catalog and again when applied) and `DESCRIBE TABLE ... HISTORY` (the schema versions the
//! catalog recorded, each with the log index of its change).

use kalamdb_log::{ColumnDef, DataType, DefaultExpr, Op, OpResult, TableChange, TableDef, TableType, Value};

use super::ddl::{check_stream_options, default_literal};
use super::{Engine, ExecContext, QueryResult, TABLE_COLUMNS_MAX, catalog_group, now_micros};
use crate::access::{self, ACCESS_LEVEL_OPTION, AccessLevel};
use crate::error::{Error, Result};
use crate::parse::{AlterAction, FlushPolicy, ParsedColumn, TableName};
use crate::ports::Proposer;
use crate::values::{coerce, value_display_json, value_to_json};

/// A default as written back for the schema history (display only; never parsed again).
fn default_text(d: &DefaultExpr) -> String {
    match d {
        DefaultExpr::Literal(Value::Text(s)) => format!("'{}'", s.replace('\'', "''")),
        DefaultExpr::Literal(v) => value_display_json(v).to_string(),
        DefaultExpr::SnowflakeId => "SNOWFLAKE_ID()".into(),
        DefaultExpr::Now => "NOW()".into(),
    }
}

impl Engine {
    pub(super) async fn alter_table(
        &self,
        table: TableName,
        action: AlterAction,
        ctx: &ExecContext,
        proposer: &dyn Proposer,
    ) -> Result<QueryResult> {
        let def = self.resolve_table(&table, ctx)?;
        // The column SET NOT NULL fenced, to lift again if the catalog refuses the change.
        let mut fenced = None;
        let (change, description) = match action {
            AlterAction::SetOptions(options) => set_options(&def, options)?,
            AlterAction::SetDefault { column, default } => {
                let c = &def.columns[column_of(&def, &column)?];
                if let Some(DefaultExpr::Literal(v)) = &default {
                    // Checked against the column type now, not at the next insert.
                    coerce(&default_literal(v), c.data_type)?;
                }
                let description = match &default {
                    Some(d) => format!("ALTER COLUMN {column} SET DEFAULT {}", default_text(d)),
                    None => format!("ALTER COLUMN {column} DROP DEFAULT"),
                };
                (TableChange::SetDefault { column, default }, description)
            }
            AlterAction::RenameColumn { from, to } => {
                column_of(&def, &from)?;
                if to.starts_with('_') {
                    return Err(Error::InvalidSql(format!(
                        "column name '{to}' is reserved: names starting with '_' are system columns"
                    )));
                }
                if def.column_index(&to).is_some() {
                    return Err(Error::AlreadyExists(format!(
                        "column '{to}' already exists in {}.{}",
                        def.namespace, def.name
                    )));
                }
                let description = format!("RENAME COLUMN {from} TO {to}");
                (TableChange::RenameColumn { from, to }, description)
            }
            AlterAction::AddColumn(col) => add_column(&def, col)?,
            AlterAction::DropColumn(column) => {
                let slot = non_key_column(&def, &column, " and cannot be dropped")?;
                // Its fence goes first: rows written after the drop store NULL there.
                self.lift_not_null(&def, slot, proposer).await?;
                let description = format!("DROP COLUMN {column}");
                (TableChange::DropColumn { column }, description)
            }
            AlterAction::SetType { column, data_type } => {
                let c = &def.columns[non_key_column(&def, &column, ": its type cannot change")?];
                if !c.data_type.widens_to(data_type) {
                    return Err(Error::InvalidSql(format!(
                        "column '{column}' cannot change from {} to {}: only widening is allowed \
                         (SMALLINT to INT or BIGINT, INT to BIGINT, FLOAT to DOUBLE)",
                        c.data_type.api_name(),
                        data_type.api_name()
                    )));
                }
                let description = format!("ALTER COLUMN {column} TYPE {}", data_type.api_name());
                (TableChange::SetType { column, data_type }, description)
            }
            AlterAction::DropNotNull(column) => {
                let slot = non_key_column(&def, &column, " and is always NOT NULL")?;
                // Fences go before the catalog says NULL is fine, so no write the catalog
                // allows is refused in between.
                self.lift_not_null(&def, slot, proposer).await?;
                let description = format!("ALTER COLUMN {column} DROP NOT NULL");
                (TableChange::DropNotNull { column }, description)
            }
            AlterAction::SetNotNull(column) => {
                let slot = non_key_column(&def, &column, " and is always NOT NULL")?;
                if !def.columns[slot].nullable {
                    return Ok(QueryResult::message(0, format!("Column '{column}' is already NOT NULL")));
                }
                self.fence_not_null(&def, slot, proposer).await?;
                fenced = Some(slot);
                let description = format!("ALTER COLUMN {column} SET NOT NULL");
                (TableChange::SetNotNull { column }, description)
            }
        };
        let op = Op::AlterTable {
            namespace: def.namespace.clone(),
            name: def.name.clone(),
            change,
            description,
            altered_at_micros: now_micros(),
            expected_version: def.schema_version(),
        };
        if let Err(e) = self.commit_fenced(&[def.as_ref()], op, proposer).await {
            if let Some(slot) = fenced {
                // The catalog refused (the column changed meanwhile): the fences go again.
                // Not `lift_not_null`: in `def` the column is still nullable, so it would skip.
                let _ = self.unfence(&def, slot, proposer).await;
            }
            return Err(e);
        }
        Ok(QueryResult::message(1, format!("Table '{}.{}' altered", def.namespace, def.name)))
    }

    /// Commit a change or drop of `tables` to the catalog (`op`, which expects their current
    /// versions): first raise their schema floors, every table and group at once, then the
    /// catalog op. If either step fails, every table gets its next version unchanged (best
    /// effort; refused if another change moved it on): floors raised past a version that will
    /// not come would otherwise hold the tables' writes until a writer bumps them.
    pub(super) async fn commit_fenced(
        &self,
        tables: &[&TableDef],
        op: Op,
        proposer: &dyn Proposer,
    ) -> Result<OpResult> {
        let raised = futures::future::join_all(tables.iter().map(|t| self.raise_floors(t, proposer))).await;
        let committed = match raised.into_iter().find(Result::is_err) {
            Some(Err(e)) => Err(e),
            _ => {
                // A crash here leaves the floors raised and the catalog unchanged (tests).
                kalamdb_projections::failpoint::hit("ddl-after-floors");
                self.propose_ok(proposer, catalog_group(), op).await
            }
        };
        if committed.is_err() {
            let _ = futures::future::join_all(tables.iter().map(|t| self.bump_version(t, proposer))).await;
        }
        committed
    }

    /// Raise the table's schema floor past its current version in every data group holding
    /// it, before the catalog commits a change or drop of it: from then on a write planned on
    /// the current version (by a node whose catalog replica has not applied the change yet)
    /// is refused and planned again. All must succeed; a floor left raised by a failure is
    /// passed by the next change, or by a writer's bump (see `unfenced`).
    pub(super) async fn raise_floors(&self, def: &TableDef, proposer: &dyn Proposer) -> Result<()> {
        let op = || Op::SchemaFloor { table_id: def.table_id, version: def.schema_version() + 1 };
        let groups = self.layout.table_groups(def);
        for r in futures::future::join_all(groups.iter().map(|g| self.propose_ok(proposer, *g, op()))).await {
            r?;
        }
        Ok(())
    }

    /// Fence the column against NULL in every group holding the table, each after checking
    /// its rows (see `kalamdb_projections::fences`). If one group finds a NULL (or fails), the
    /// fences already set are lifted again and its refusal is the statement's error.
    async fn fence_not_null(&self, def: &TableDef, slot: usize, proposer: &dyn Proposer) -> Result<()> {
        let groups = self.layout.table_groups(def);
        let op = |required| Op::RequireNotNull { table: def.clone(), slot: slot as u32, required };
        let results = futures::future::join_all(groups.iter().map(|g| self.propose_ok(proposer, *g, op(true)))).await;
        let Some(failure) = results.iter().position(Result::is_err) else { return Ok(()) };
        let fenced = groups.iter().zip(&results).filter(|(_, r)| r.is_ok()).map(|(g, _)| *g);
        // Best effort: a fence left behind only refuses NULLs the catalog refuses too, until
        // the next SET or DROP NOT NULL of the column sets every group straight.
        let _ = futures::future::join_all(fenced.map(|g| proposer.propose(g, op(false)))).await;
        results.into_iter().nth(failure).expect("position found above").map(|_| ())
    }

    /// Lift the column's NOT NULL fences in every group holding the table; a column that
    /// allows NULL has none.
    async fn lift_not_null(&self, def: &TableDef, slot: usize, proposer: &dyn Proposer) -> Result<()> {
        if def.columns[slot].nullable {
            return Ok(());
        }
        self.unfence(def, slot, proposer).await
    }

    /// Lift the NOT NULL fences of the column at `slot` in every group holding the table.
    async fn unfence(&self, def: &TableDef, slot: usize, proposer: &dyn Proposer) -> Result<()> {
        let groups = self.layout.table_groups(def);
        let op = || Op::RequireNotNull { table: def.clone(), slot: slot as u32, required: false };
        for r in futures::future::join_all(groups.iter().map(|g| self.propose_ok(proposer, *g, op()))).await {
            r?;
        }
        Ok(())
    }

    pub(super) fn describe_history(&self, table: TableName, ctx: &ExecContext) -> Result<QueryResult> {
        let def = self.resolve_table(&table, ctx)?;
        access::check_read(ctx.role, &def)?;
        let rows = def
            .versions
            .iter()
            .map(|v| {
                vec![
                    value_to_json(&Value::BigInt(i64::from(v.version))),
                    value_to_json(&Value::BigInt(i64::try_from(v.log_index).unwrap_or(i64::MAX))),
                    serde_json::Value::String(v.change.clone()),
                    value_to_json(&Value::Timestamp(v.at_micros)),
                ]
            })
            .collect();
        let cols = vec![
            ("version".into(), "BigInt".into()),
            ("log_index".into(), "BigInt".into()),
            ("change".into(), "Text".into()),
            ("changed_at".into(), "Timestamp".into()),
        ];
        Ok(QueryResult::rows(cols, rows))
    }
}

/// `SET ACCESS_LEVEL x` / `SET (KEY = value, ...)`: each option checked as CREATE TABLE checks
/// it, and the table's options as they would be afterwards checked together.
fn set_options(def: &TableDef, options: Vec<(String, String)>) -> Result<(TableChange, String)> {
    if options.is_empty() {
        return Err(Error::InvalidSql("ALTER TABLE ... SET needs at least one option".into()));
    }
    let mut checked = Vec::with_capacity(options.len());
    for (key, value) in options {
        let value = match key.as_str() {
            "TYPE" => {
                return Err(Error::InvalidSql(format!(
                    "a table's TYPE cannot change ({}.{} is {})",
                    def.namespace,
                    def.name,
                    def.table_type.api_name()
                )));
            }
            ACCESS_LEVEL_OPTION => {
                if def.table_type != TableType::Shared {
                    return Err(Error::InvalidSql(
                        "ACCESS_LEVEL applies to SHARED tables; USER and STREAM tables are private to each user".into(),
                    ));
                }
                AccessLevel::parse(&value)?.name().to_string()
            }
            "FLUSH_POLICY" => {
                FlushPolicy::parse(&value)?;
                value
            }
            _ => value,
        };
        if checked.iter().any(|(k, _): &(String, String)| *k == key) {
            return Err(Error::InvalidSql(format!("option {key} given twice")));
        }
        checked.push((key, value));
    }
    let mut after = def.options.clone();
    for (k, v) in &checked {
        match after.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v.clone(),
            None => after.push((k.clone(), v.clone())),
        }
    }
    check_stream_options(def.table_type, &after)?;
    let list: Vec<String> = checked.iter().map(|(k, v)| format!("{k} = '{}'", v.replace('\'', "''"))).collect();
    let description = format!("SET ({})", list.join(", "));
    Ok((TableChange::SetOptions { options: checked }, description))
}

/// `ADD COLUMN`: appended after the table's columns. Rows and files written before it read
/// its default at this moment (the backfill, evaluated here, before the log), or NULL.
fn add_column(def: &TableDef, col: ParsedColumn) -> Result<(TableChange, String)> {
    let table = format!("{}.{}", def.namespace, def.name);
    if col.primary_key {
        return Err(Error::InvalidSql(format!("{table} has its primary key; ADD COLUMN cannot add another")));
    }
    if col.name.starts_with('_') {
        return Err(Error::InvalidSql(format!(
            "column name '{}' is reserved: names starting with '_' are system columns",
            col.name
        )));
    }
    if def.column_index(&col.name).is_some() {
        return Err(Error::AlreadyExists(format!("column '{}' already exists in {table}", col.name)));
    }
    if def.columns.len() >= TABLE_COLUMNS_MAX {
        return Err(Error::InvalidSql(format!("a table has at most {TABLE_COLUMNS_MAX} columns")));
    }
    let backfill = match &col.default {
        None if col.not_null => {
            return Err(Error::InvalidSql(format!(
                "ADD COLUMN {} ... NOT NULL needs a DEFAULT: the rows {table} already has need a value",
                col.name
            )));
        }
        None => None,
        Some(DefaultExpr::Literal(v)) => Some(coerce(&default_literal(v), col.data_type)?),
        Some(DefaultExpr::Now) => Some(match col.data_type {
            DataType::Timestamp => Value::Timestamp(now_micros()),
            DataType::BigInt => Value::BigInt(now_micros() / 1000),
            other => return Err(Error::InvalidSql(format!("NOW() default on a {} column", other.api_name()))),
        }),
        Some(DefaultExpr::SnowflakeId) => {
            return Err(Error::InvalidSql(
                "ADD COLUMN ... DEFAULT SNOWFLAKE_ID(): the existing rows would all get the same id".into(),
            ));
        }
    };
    let backfill = backfill.filter(|v| !v.is_null());
    if col.not_null && backfill.is_none() {
        return Err(Error::InvalidSql(format!("ADD COLUMN {} ... NOT NULL DEFAULT NULL contradicts itself", col.name)));
    }
    // Its name in files must be new to the table: files of a column renamed away may still
    // hold the name.
    let mut stored_as = String::new();
    if def.columns.iter().any(|c| c.storage_name() == col.name) {
        let mut n = def.columns.len();
        while def.columns.iter().any(|c| c.storage_name() == format!("{}__{n}", col.name)) {
            n += 1;
        }
        stored_as = format!("{}__{n}", col.name);
    }
    let mut description = format!("ADD COLUMN {} {}", col.name, col.data_type.api_name());
    if col.not_null {
        description.push_str(" NOT NULL");
    }
    if let Some(d) = &col.default {
        description.push_str(&format!(" DEFAULT {}", default_text(d)));
    }
    let column = ColumnDef {
        name: col.name,
        data_type: col.data_type,
        nullable: !col.not_null,
        primary_key: false,
        default: col.default,
        stored_as,
        backfill,
        dropped: false,
    };
    Ok((TableChange::AddColumn { column }, description))
}

/// Like [`column_of`], for changes the primary key refuses: `why` ends the refusal (with
/// its leading space or colon).
fn non_key_column(def: &TableDef, name: &str, why: &str) -> Result<usize> {
    let i = column_of(def, name)?;
    if def.columns[i].primary_key {
        return Err(Error::InvalidSql(format!(
            "column '{name}' is the primary key of {}.{}{why}",
            def.namespace, def.name
        )));
    }
    Ok(i)
}

/// The stored position of the column statements call `name`, or the error naming the table.
fn column_of(def: &TableDef, name: &str) -> Result<usize> {
    def.column_index(name)
        .ok_or_else(|| Error::InvalidSql(format!("column '{name}' does not exist in {}.{}", def.namespace, def.name)))
}
