//! Live queries: the `SELECT` a WebSocket subscription follows (`/v1/ws`, KalamDB's
//! `subscribe` message), checked and bound to one table: which columns it shows and the row
//! filter each change is tested against. Parsed once from the statement's AST; nothing is
//! turned back into SQL text.

use std::sync::Arc;

use datafusion::sql::sqlparser::ast::{
    self, GroupByExpr, ObjectNamePart, SelectItem, SetExpr, TableFactor, WildcardAdditionalOptions,
};
use kalamdb_log::{ColumnDef, TableDef};

use crate::engine::{Engine, ExecContext};
use crate::error::{Error, Result};
use crate::filter::RowFilter;
use crate::parse::{Statement, TableName};

/// One shown column of a live query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveColumn {
    /// The table column at this index of `TableDef::columns`.
    Table(usize),
    /// `_seq`, the row version's sequence number.
    Seq,
}

/// A subscription's query, bound to its table.
#[derive(Debug, Clone)]
pub struct LiveQuery {
    pub def: Arc<TableDef>,
    /// In the order the `SELECT` lists them; `SELECT *` is every visible column.
    pub columns: Vec<LiveColumn>,
    /// Whether the `SELECT` named its columns (`false`: `*`, which follows added columns).
    pub explicit: bool,
    pub filter: Option<RowFilter>,
}

fn unsupported(what: &str) -> Error {
    Error::InvalidSql(format!(
        "a live query is SELECT <columns | *> FROM <table> [WHERE <filter>]; {what} is not supported"
    ))
}

impl LiveQuery {
    /// The table columns shown, in order (`_seq` left out).
    pub fn table_columns<'a>(&'a self) -> impl Iterator<Item = (usize, &'a ColumnDef)> + 'a {
        self.columns.iter().filter_map(|c| match c {
            LiveColumn::Table(i) => self.def.columns.get(*i).filter(|c| !c.dropped).map(|c| (*i, c)),
            LiveColumn::Seq => None,
        })
    }
}

impl Engine {
    /// Parse and bind the `SELECT` of a live query for `ctx`'s caller: one table it may read,
    /// columns that exist, a filter the row-filter language can evaluate per change.
    pub fn live_query(&self, sql: &str, ctx: &ExecContext) -> Result<LiveQuery> {
        let query = match crate::parse::parse_statement(sql)? {
            Statement::Sql(s) => match *s {
                ast::Statement::Query(q) => q,
                _ => return Err(unsupported("a statement other than SELECT")),
            },
            Statement::PointSelect { rest, .. } => match rest.parse()? {
                ast::Statement::Query(q) => q,
                _ => return Err(unsupported("a statement other than SELECT")),
            },
            Statement::AsOf { .. } => return Err(unsupported("AS OF")),
            _ => return Err(unsupported("a statement other than SELECT")),
        };
        if query.with.is_some() {
            return Err(unsupported("WITH"));
        }
        if query.order_by.is_some() || query.limit_clause.is_some() || query.fetch.is_some() {
            return Err(unsupported("ORDER BY / LIMIT (changes arrive in commit order)"));
        }
        if !query.locks.is_empty() || query.for_clause.is_some() || !query.pipe_operators.is_empty() {
            return Err(unsupported("a locking or pipe clause"));
        }
        let SetExpr::Select(select) = *query.body else {
            return Err(unsupported("UNION, VALUES or a nested query"));
        };
        if select.distinct.is_some() || select.top.is_some() || select.into.is_some() {
            return Err(unsupported("DISTINCT, TOP or INTO"));
        }
        let grouped = match &select.group_by {
            GroupByExpr::All(_) => true,
            GroupByExpr::Expressions(e, m) => !e.is_empty() || !m.is_empty(),
        };
        if grouped || select.having.is_some() || select.qualify.is_some() || !select.named_window.is_empty() {
            return Err(unsupported("GROUP BY, HAVING or windows"));
        }
        if !select.lateral_views.is_empty()
            || !select.cluster_by.is_empty()
            || !select.distribute_by.is_empty()
            || !select.sort_by.is_empty()
            || select.prewhere.is_some()
            || !select.connect_by.is_empty()
            || select.exclude.is_some()
        {
            return Err(unsupported("this clause"));
        }
        let [from] = select.from.as_slice() else {
            return Err(unsupported(if select.from.is_empty() { "a SELECT without FROM" } else { "several tables" }));
        };
        if !from.joins.is_empty() {
            return Err(unsupported("JOIN"));
        }
        let TableFactor::Table { name, args: None, version: None, sample: None, .. } = &from.relation else {
            return Err(unsupported("a subquery or table function"));
        };
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| match p {
                ObjectNamePart::Identifier(i) => Ok(i.value.clone()),
                _ => Err(unsupported("this table name")),
            })
            .collect::<Result<_>>()?;
        let table = match parts.as_slice() {
            [t] => TableName { namespace: None, name: t.clone() },
            [ns, t] => TableName { namespace: Some(ns.clone()), name: t.clone() },
            _ => return Err(unsupported("a table name with more than two parts")),
        };
        let def = self.resolve_table(&table, ctx)?;
        crate::access::check_read(ctx.role, &def)?;
        let (columns, explicit) = bind_columns(&select.projection, &def)?;
        let filter = select.selection.as_ref().map(|e| RowFilter::from_expr(e, &def)).transpose()?;
        Ok(LiveQuery { def, columns, explicit, filter })
    }
}

fn bind_columns(projection: &[SelectItem], def: &TableDef) -> Result<(Vec<LiveColumn>, bool)> {
    let plain_wildcard = |o: &WildcardAdditionalOptions| {
        o.opt_ilike.is_none()
            && o.opt_exclude.is_none()
            && o.opt_except.is_none()
            && o.opt_replace.is_none()
            && o.opt_rename.is_none()
            && o.opt_alias.is_none()
    };
    if let [SelectItem::Wildcard(o)] = projection {
        if !plain_wildcard(o) {
            return Err(unsupported("a wildcard with options"));
        }
        return Ok((def.visible_columns().map(|(i, _)| LiveColumn::Table(i)).collect(), false));
    }
    let mut out = Vec::with_capacity(projection.len());
    for item in projection {
        let name = match item {
            SelectItem::UnnamedExpr(ast::Expr::Identifier(id)) => id.value.clone(),
            SelectItem::UnnamedExpr(ast::Expr::CompoundIdentifier(parts)) if parts.len() <= 3 => {
                parts.last().map(|p| p.value.clone()).unwrap_or_default()
            }
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                return Err(unsupported("* together with named columns"));
            }
            SelectItem::ExprWithAlias { .. } => return Err(unsupported("a column alias")),
            _ => return Err(unsupported("an expression in the column list (name columns)")),
        };
        let column = if name.eq_ignore_ascii_case(crate::provider::SEQ_COLUMN) {
            LiveColumn::Seq
        } else {
            LiveColumn::Table(def.column_index(&name).ok_or_else(|| {
                Error::InvalidSql(format!("column '{name}' does not exist in {}.{}", def.namespace, def.name))
            })?)
        };
        if out.contains(&column) {
            return Err(Error::InvalidSql(format!("column '{name}' is listed twice")));
        }
        out.push(column);
    }
    Ok((out, true))
}
