//! Writes: INSERT (literals coerced, defaults filled, NOT NULL checked before the log) and
//! UPDATE/DELETE (read the matching rows with their `_seq`, propose new versions with those
//! as preconditions, re-plan on conflict).

use std::sync::Arc;

use datafusion::sql::sqlparser::ast::{self, AssignmentTarget, Expr, FromTable, ObjectName, SetExpr, TableObject};
use kalamdb_log::command::ApplyErrorCode;
use kalamdb_log::{DataType, DefaultExpr, GroupId, Op, OpResult, RowWrite, TableDef, Value, WriteKind};
use kalamdb_projections::rows::Lookup;

use super::batch::Batch;
use super::ddl::default_literal;
use super::select::select_statement;
use super::unfenced::Write;
use super::{
    CONFLICT_RETRIES_MAX, Engine, ExecContext, QueryResult, STATEMENT_ROWS_MAX, apply_failure, batches_to_result,
    column_name, first_words, literal_of, now_micros, object_table_name, single_table,
};
use crate::access;
use crate::error::{Error, Result};
use crate::parse::{TableName, ValuesInsert};
use crate::ports::Proposer;
use crate::provider::SEQ_COLUMN;
use crate::values::{Literal, cell_to_value, coerce};

impl Engine {
    pub(super) async fn execute_sql(
        &self,
        stmt: ast::Statement,
        ctx: &ExecContext,
        proposer: &dyn Proposer,
    ) -> Result<QueryResult> {
        match stmt {
            ast::Statement::Query(_) | ast::Statement::Explain { .. } => {
                let batches = Box::pin(self.run_query(stmt, ctx)).await?;
                Ok(batches_to_result(&batches))
            }
            other => Box::pin(self.execute_write(&Write::Sql(other), ctx, proposer)).await,
        }
    }

    /// INSERT, UPDATE and DELETE, borrowed: a write planned again after a schema change runs
    /// the same statement once more (a 1,000-row INSERT is not copied for each attempt).
    pub(super) async fn execute_write(
        &self,
        write: &Write,
        ctx: &ExecContext,
        proposer: &dyn Proposer,
    ) -> Result<QueryResult> {
        let stmt = match write {
            Write::Sql(stmt) => stmt,
            Write::Values(insert) => return Box::pin(self.insert_values(insert, ctx, proposer)).await,
        };
        match stmt {
            ast::Statement::Insert(insert) => Box::pin(self.insert(insert, ctx, proposer)).await,
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
                Box::pin(self.rewrite_rows(&table, Some(sets), update.selection.as_ref(), ctx, proposer)).await
            }
            ast::Statement::Delete(delete) => {
                let from = match &delete.from {
                    FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
                };
                if delete.using.is_some() || delete.limit.is_some() {
                    return Err(Error::InvalidSql("DELETE ... USING / LIMIT is not supported".into()));
                }
                let table = single_table(from)?;
                Box::pin(self.rewrite_rows(&table, None, delete.selection.as_ref(), ctx, proposer)).await
            }
            other => Err(Error::InvalidSql(format!("unsupported statement: {}", first_words(&other.to_string())))),
        }
    }

    async fn insert(&self, insert: &ast::Insert, ctx: &ExecContext, proposer: &dyn Proposer) -> Result<QueryResult> {
        let table = match &insert.table {
            TableObject::TableName(name) => object_table_name(name)?,
            other => return Err(Error::InvalidSql(format!("unsupported INSERT target {other}"))),
        };
        let def = self.writable_table(&table, ctx)?;
        let source = insert.source.as_ref().ok_or_else(|| Error::InvalidSql("INSERT needs VALUES or SELECT".into()))?;
        let explicit = explicit_columns(&def, insert.columns.iter().map(column_name))?;
        let given_rows: Vec<Vec<Option<Value>>> = match source.body.as_ref() {
            SetExpr::Values(values) => {
                let width = values.rows.first().map_or(0, |r| r.content.len());
                let targets = self.values_targets(&def, &explicit, values.rows.len(), width)?;
                let mut rows = Vec::with_capacity(values.rows.len());
                for row in &values.rows {
                    check_row_width(&targets, row.content.len())?;
                    let mut out: Vec<Option<Value>> = vec![None; def.columns.len()];
                    for (expr, &col) in row.content.iter().zip(&targets) {
                        let dt = def.columns[col].data_type;
                        let v = match literal_of(expr, &ctx.params)? {
                            Some(lit) => coerce(&lit, dt)?,
                            None => Box::pin(self.eval_expr(expr, dt, ctx)).await?,
                        };
                        out[col] = Some(v);
                    }
                    rows.push(out);
                }
                rows
            }
            _ => {
                let batches = Box::pin(self.run_query(ast::Statement::Query(source.clone()), ctx)).await?;
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
        self.insert_rows(&def, given_rows, ctx, proposer).await
    }

    /// An INSERT of literal rows read straight from the text ([`crate::parse::scan`]): the
    /// same checks, coercions and errors as [`Self::insert`]'s VALUES, without a syntax tree.
    async fn insert_values(
        &self,
        insert: &ValuesInsert,
        ctx: &ExecContext,
        proposer: &dyn Proposer,
    ) -> Result<QueryResult> {
        let def = self.writable_table(&insert.table, ctx)?;
        let explicit = explicit_columns(&def, insert.columns.iter().map(|c| Ok(c.clone())))?;
        let width = insert.rows.first().map_or(0, Vec::len);
        let targets = self.values_targets(&def, &explicit, insert.rows.len(), width)?;
        let mut rows = Vec::with_capacity(insert.rows.len());
        for row in &insert.rows {
            check_row_width(&targets, row.len())?;
            let mut out: Vec<Option<Value>> = vec![None; def.columns.len()];
            for (lit, &col) in row.iter().zip(&targets) {
                out[col] = Some(coerce(lit, def.columns[col].data_type)?);
            }
            rows.push(out);
        }
        self.insert_rows(&def, rows, ctx, proposer).await
    }

    /// The table an INSERT writes, if the caller may write it.
    fn writable_table(&self, table: &TableName, ctx: &ExecContext) -> Result<Arc<TableDef>> {
        let def = self.resolve_table(table, ctx)?;
        access::check_write(ctx.role, &def)?;
        Ok(def)
    }

    /// [`Self::insert_targets`] for `rows` VALUES rows, the first `width` values wide.
    fn values_targets(&self, def: &TableDef, explicit: &[usize], rows: usize, width: usize) -> Result<Vec<usize>> {
        if rows > STATEMENT_ROWS_MAX {
            return Err(Error::InvalidSql(format!("INSERT writes at most {STATEMENT_ROWS_MAX} rows")));
        }
        self.insert_targets(def, explicit, width)
    }

    /// Complete the given rows (defaults, NOT NULL) and propose them as one op, or stage them
    /// in the caller's batch.
    async fn insert_rows(
        &self,
        def: &TableDef,
        given_rows: Vec<Vec<Option<Value>>>,
        ctx: &ExecContext,
        proposer: &dyn Proposer,
    ) -> Result<QueryResult> {
        let pk = def.pk_index();
        let mut writes = Vec::with_capacity(given_rows.len());
        for given in given_rows {
            let values = self.complete_row(def, given)?;
            writes.push(RowWrite { pk: values[pk].clone(), values, expected_seq: None });
        }
        if writes.is_empty() {
            return Ok(QueryResult::message(0, "Inserted 0 row(s)".into()));
        }
        let (group, scope) = self.layout.table_location(def, &ctx.user_id);
        if let Some(batch) = &ctx.batch {
            return self.stage_insert(batch, group, def, &scope, writes, ctx).await;
        }
        let op = Op::Insert { table_id: def.table_id, scope, rows: writes, schema_version: def.schema_version() };
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
        let all: Vec<usize> = def.visible_columns().map(|(i, _)| i).collect();
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
            if c.dropped {
                // Dropped columns keep their place in stored rows, empty from now on.
                values.push(Value::Null);
                continue;
            }
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
        let shown: Vec<usize> = def.visible_columns().map(|(i, _)| i).collect();
        let mut projection: Vec<ast::SelectItem> = shown
            .iter()
            .map(|&i| ast::SelectItem::UnnamedExpr(Expr::Identifier(quoted(&def.columns[i].name))))
            .collect();
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
                    // The row in stored order: read columns in place, dropped ones empty.
                    let mut values = vec![Value::Null; def.columns.len()];
                    for (k, &i) in shown.iter().enumerate() {
                        values[i] = cell_to_value(b.column(k), r, def.columns[i].data_type)?;
                    }
                    let seq = cell_to_value(b.column(shown.len()), r, DataType::BigInt)?;
                    let Value::BigInt(seq) = seq else { return Err(Error::Internal("row without _seq".into())) };
                    for (k, (idx, _)) in set_cols.iter().enumerate() {
                        let c = &def.columns[*idx];
                        let v = cell_to_value(b.column(shown.len() + 1 + k), r, c.data_type)?;
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
            if let Some(batch) = &ctx.batch {
                // Conflicts surface at COMMIT, which runs the whole batch again.
                let n = writes.len();
                let kind = if is_delete { WriteKind::Delete } else { WriteKind::Update };
                batch.stage(group, &def, &scope, kind, writes)?;
                return Ok(QueryResult::message(n, format!("{verb} {n} row(s)")));
            }
            let op = if is_delete {
                Op::Delete {
                    table_id: def.table_id,
                    scope: scope.clone(),
                    rows: writes,
                    schema_version: def.schema_version(),
                }
            } else {
                Op::Update {
                    table_id: def.table_id,
                    scope: scope.clone(),
                    rows: writes,
                    schema_version: def.schema_version(),
                }
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

    /// An INSERT inside a batch: refused now if a key already holds a live row (stored, or
    /// written earlier in the batch); the commit checks again against what happened since.
    async fn stage_insert(
        &self,
        batch: &Batch,
        group: GroupId,
        def: &TableDef,
        scope: &str,
        writes: Vec<RowWrite>,
        ctx: &ExecContext,
    ) -> Result<QueryResult> {
        self.barrier(ctx, group).await?;
        for (i, w) in writes.iter().enumerate() {
            let live = match batch.pending_live(def.table_id, scope, &w.pk) {
                Some(live) => live,
                None => match self.rows.lookup(group, def.table_id, scope, &w.pk)? {
                    Lookup::Hot(row) => !row.deleted,
                    Lookup::Cold(_) => true,
                    Lookup::Absent => false,
                },
            };
            if live {
                return Err(Error::ConstraintViolation(format!(
                    "Primary key violation: a row with key {} already exists (row {})",
                    crate::values::value_display_json(&w.pk),
                    i + 1
                )));
            }
        }
        let n = writes.len();
        batch.stage(group, def, scope, WriteKind::Insert, writes)?;
        Ok(QueryResult::message(n, format!("Inserted {n} row(s)")))
    }
}

/// A VALUES row must give one value per target column.
fn check_row_width(targets: &[usize], given: usize) -> Result<()> {
    if given == targets.len() {
        return Ok(());
    }
    Err(Error::InvalidSql(format!("INSERT has {} target columns but a row has {given} values", targets.len())))
}

/// The positions of an INSERT's listed columns, in the order its values give them; fails if
/// one is unknown or repeated.
fn explicit_columns(def: &TableDef, names: impl Iterator<Item = Result<String>>) -> Result<Vec<usize>> {
    let mut explicit = Vec::new();
    for name in names {
        let name = name?;
        explicit.push(def.column_index(&name).ok_or_else(|| {
            Error::InvalidSql(format!("column '{name}' does not exist in {}.{}", def.namespace, def.name))
        })?);
    }
    let mut seen = std::collections::HashSet::new();
    if explicit.iter().any(|i| !seen.insert(*i)) {
        return Err(Error::InvalidSql("a column is listed twice in INSERT".into()));
    }
    Ok(explicit)
}
