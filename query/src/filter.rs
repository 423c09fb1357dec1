//! Row filters of subscriptions (`SUBSCRIBE TO t WHERE ...`, `GET /v1/api/tail?where=...`):
//! a small predicate language evaluated on each change without a query plan. Comparisons of
//! a column with a literal, `IS [NOT] NULL`, `IN (...)`, combined with AND, OR, NOT.

use std::cmp::Ordering;

use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr, UnaryOperator};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;
use kalamdb_log::{TableDef, Value};

use crate::error::{Error, Result};
use crate::values::coerce;

/// Longest filter text accepted.
pub const FILTER_BYTES_MAX: usize = 4096;
/// Nodes one filter may have (bounds evaluation cost per event).
pub const FILTER_NODES_MAX: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

#[derive(Debug, Clone)]
enum Node {
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Compare { column: usize, op: Cmp, value: Value },
    InList { column: usize, values: Vec<Value>, negated: bool },
    IsNull { column: usize, negated: bool },
}

/// A parsed filter, bound to one table's columns.
#[derive(Debug, Clone)]
pub struct RowFilter {
    root: Node,
    /// Canonical SQL text of the expression (safe to embed in a statement or a URL).
    text: String,
    /// Per column, what a row written before the column was added holds (its backfill).
    fills: Vec<Value>,
}

fn invalid(m: String) -> Error {
    Error::InvalidSql(format!("subscription filter: {m}"))
}

impl RowFilter {
    pub fn parse(text: &str, def: &TableDef) -> Result<RowFilter> {
        if text.len() > FILTER_BYTES_MAX {
            return Err(invalid(format!("longer than {FILTER_BYTES_MAX} bytes")));
        }
        let dialect = GenericDialect {};
        let mut parser = Parser::new(&dialect).try_with_sql(text).map_err(|e| invalid(e.to_string()))?;
        let expr = parser.parse_expr().map_err(|e| invalid(e.to_string()))?;
        if parser.peek_token().token != Token::EOF {
            return Err(invalid(format!("unexpected '{}' after the expression", parser.peek_token().token)));
        }
        RowFilter::from_expr(&expr, def)
    }

    /// The filter of an already parsed expression (a live query's `WHERE`).
    pub fn from_expr(expr: &Expr, def: &TableDef) -> Result<RowFilter> {
        let mut nodes = 0usize;
        let root = build(expr, def, &mut nodes)?;
        let fills = def.columns.iter().map(|c| c.backfill.clone().unwrap_or(Value::Null)).collect();
        Ok(RowFilter { root, text: expr.to_string(), fills })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The same predicate as a DataFusion expression over the table's columns, for reads
    /// planned without SQL text (the tail's `last_rows`). NULL is unknown in both.
    pub fn to_expr(&self, def: &TableDef) -> datafusion::logical_expr::Expr {
        node_expr(&self.root, def)
    }

    /// Does a row (values in table column order) pass? NULL compares as unknown (false).
    pub fn matches(&self, row: &[Value]) -> bool {
        if row.len() < self.fills.len() {
            // Written before columns were added: those read their backfill.
            let mut full = row.to_vec();
            full.extend_from_slice(&self.fills[row.len()..]);
            return eval(&self.root, &full).unwrap_or(false);
        }
        eval(&self.root, row).unwrap_or(false)
    }
}

fn node_expr(node: &Node, def: &TableDef) -> datafusion::logical_expr::Expr {
    use datafusion::logical_expr::lit;
    use datafusion::prelude::ident;
    let column = |i: usize| ident(def.columns[i].name.clone());
    match node {
        Node::And(a, b) => node_expr(a, def).and(node_expr(b, def)),
        Node::Or(a, b) => node_expr(a, def).or(node_expr(b, def)),
        Node::Not(a) => !node_expr(a, def),
        Node::Compare { column: c, op, value } => {
            let (left, right) = (column(*c), lit(scalar(value)));
            match op {
                Cmp::Eq => left.eq(right),
                Cmp::NotEq => left.not_eq(right),
                Cmp::Lt => left.lt(right),
                Cmp::LtEq => left.lt_eq(right),
                Cmp::Gt => left.gt(right),
                Cmp::GtEq => left.gt_eq(right),
            }
        }
        Node::InList { column: c, values, negated } => {
            column(*c).in_list(values.iter().map(|v| lit(scalar(v))).collect(), *negated)
        }
        Node::IsNull { column: c, negated: false } => column(*c).is_null(),
        Node::IsNull { column: c, negated: true } => column(*c).is_not_null(),
    }
}

/// A stored value as the scalar of its column's Arrow type (`columnar::arrow_type`).
fn scalar(v: &Value) -> datafusion::common::ScalarValue {
    use datafusion::common::ScalarValue as S;
    match v {
        Value::Null => S::Null,
        Value::Boolean(b) => S::Boolean(Some(*b)),
        Value::SmallInt(i) => S::Int16(Some(*i)),
        Value::Int(i) => S::Int32(Some(*i)),
        Value::BigInt(i) => S::Int64(Some(*i)),
        Value::Float(f) => S::Float32(Some(*f)),
        Value::Double(f) => S::Float64(Some(*f)),
        Value::Text(t) | Value::Json(t) => S::Utf8View(Some(t.clone())),
        Value::Bytes(b) => S::Binary(Some(b.clone())),
        Value::Timestamp(us) => S::TimestampMicrosecond(Some(*us), Some("UTC".into())),
        Value::Date(d) => S::Date32(Some(*d)),
    }
}

fn column_of(expr: &Expr, def: &TableDef) -> Result<Option<usize>> {
    let name = match expr {
        Expr::Identifier(id) => id.value.clone(),
        Expr::CompoundIdentifier(parts) => parts.last().map(|p| p.value.clone()).unwrap_or_default(),
        Expr::Nested(e) => return column_of(e, def),
        _ => return Ok(None),
    };
    def.column_index(&name)
        .map(Some)
        .ok_or_else(|| invalid(format!("column '{name}' does not exist in {}.{}", def.namespace, def.name)))
}

fn literal(expr: &Expr, column: usize, def: &TableDef) -> Result<Value> {
    let lit =
        crate::engine::literal_of(expr, &[])?.ok_or_else(|| invalid(format!("expected a literal, found '{expr}'")))?;
    coerce(&lit, def.columns[column].data_type)
}

fn build(expr: &Expr, def: &TableDef, nodes: &mut usize) -> Result<Node> {
    *nodes += 1;
    if *nodes > FILTER_NODES_MAX {
        return Err(invalid(format!("more than {FILTER_NODES_MAX} terms")));
    }
    Ok(match expr {
        Expr::Nested(e) => build(e, def, nodes)?,
        Expr::UnaryOp { op: UnaryOperator::Not, expr } => Node::Not(Box::new(build(expr, def, nodes)?)),
        Expr::BinaryOp { left, op: BinaryOperator::And, right } => {
            Node::And(Box::new(build(left, def, nodes)?), Box::new(build(right, def, nodes)?))
        }
        Expr::BinaryOp { left, op: BinaryOperator::Or, right } => {
            Node::Or(Box::new(build(left, def, nodes)?), Box::new(build(right, def, nodes)?))
        }
        Expr::BinaryOp { left, op, right } => {
            let op = match op {
                BinaryOperator::Eq => Cmp::Eq,
                BinaryOperator::NotEq => Cmp::NotEq,
                BinaryOperator::Lt => Cmp::Lt,
                BinaryOperator::LtEq => Cmp::LtEq,
                BinaryOperator::Gt => Cmp::Gt,
                BinaryOperator::GtEq => Cmp::GtEq,
                other => return Err(invalid(format!("operator {other} is not supported"))),
            };
            // Either side may be the column: `5 < x` is `x > 5`.
            match (column_of(left, def)?, column_of(right, def)?) {
                (Some(column), None) => Node::Compare { column, op, value: literal(right, column, def)? },
                (None, Some(column)) => {
                    let flipped = match op {
                        Cmp::Lt => Cmp::Gt,
                        Cmp::LtEq => Cmp::GtEq,
                        Cmp::Gt => Cmp::Lt,
                        Cmp::GtEq => Cmp::LtEq,
                        same => same,
                    };
                    Node::Compare { column, op: flipped, value: literal(left, column, def)? }
                }
                _ => return Err(invalid(format!("'{expr}' must compare one column with a literal"))),
            }
        }
        Expr::IsNull(e) | Expr::IsNotNull(e) => {
            let column = column_of(e, def)?.ok_or_else(|| invalid(format!("IS NULL needs a column, found '{e}'")))?;
            Node::IsNull { column, negated: matches!(expr, Expr::IsNotNull(_)) }
        }
        Expr::InList { expr: e, list, negated } => {
            let column = column_of(e, def)?.ok_or_else(|| invalid(format!("IN needs a column, found '{e}'")))?;
            let values = list.iter().map(|v| literal(v, column, def)).collect::<Result<Vec<_>>>()?;
            *nodes += values.len();
            Node::InList { column, values, negated: *negated }
        }
        other => return Err(invalid(format!("'{other}' is not supported (compare columns with literals)"))),
    })
}

/// Order of two values of one column type; `None` for NULL or mismatched types.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    use Value as V;
    match (a, b) {
        (V::Boolean(x), V::Boolean(y)) => Some(x.cmp(y)),
        (V::SmallInt(x), V::SmallInt(y)) => Some(x.cmp(y)),
        (V::Int(x), V::Int(y)) => Some(x.cmp(y)),
        (V::BigInt(x), V::BigInt(y)) | (V::Timestamp(x), V::Timestamp(y)) => Some(x.cmp(y)),
        (V::Date(x), V::Date(y)) => Some(x.cmp(y)),
        (V::Float(x), V::Float(y)) => x.partial_cmp(y),
        (V::Double(x), V::Double(y)) => x.partial_cmp(y),
        (V::Text(x), V::Text(y)) | (V::Json(x), V::Json(y)) => Some(x.cmp(y)),
        (V::Bytes(x), V::Bytes(y)) => Some(x.cmp(y)),
        // A value stored before its column was widened (ALTER ... TYPE).
        (V::SmallInt(_) | V::Int(_) | V::BigInt(_), V::SmallInt(_) | V::Int(_) | V::BigInt(_)) => {
            Some(as_i64(a)?.cmp(&as_i64(b)?))
        }
        (V::Float(x), V::Double(y)) => f64::from(*x).partial_cmp(y),
        (V::Double(x), V::Float(y)) => x.partial_cmp(&f64::from(*y)),
        _ => None,
    }
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::SmallInt(x) => Some(i64::from(*x)),
        Value::Int(x) => Some(i64::from(*x)),
        Value::BigInt(x) => Some(*x),
        _ => None,
    }
}

/// Three-valued logic: `None` is SQL's unknown.
fn eval(node: &Node, row: &[Value]) -> Option<bool> {
    match node {
        Node::And(a, b) => match (eval(a, row), eval(b, row)) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        Node::Or(a, b) => match (eval(a, row), eval(b, row)) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
        Node::Not(a) => eval(a, row).map(|v| !v),
        Node::Compare { column, op, value } => {
            let ord = compare(row.get(*column)?, value)?;
            Some(match op {
                Cmp::Eq => ord == Ordering::Equal,
                Cmp::NotEq => ord != Ordering::Equal,
                Cmp::Lt => ord == Ordering::Less,
                Cmp::LtEq => ord != Ordering::Greater,
                Cmp::Gt => ord == Ordering::Greater,
                Cmp::GtEq => ord != Ordering::Less,
            })
        }
        Node::InList { column, values, negated } => {
            let v = row.get(*column)?;
            if v.is_null() {
                return None;
            }
            let found = values.iter().any(|x| compare(v, x) == Some(Ordering::Equal));
            Some(found != *negated)
        }
        Node::IsNull { column, negated } => Some(row.get(*column).is_none_or(Value::is_null) != *negated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kalamdb_log::{ColumnDef, DataType, TableType};

    fn def() -> TableDef {
        let col = |name: &str, data_type, primary_key: bool| ColumnDef {
            name: name.into(),
            data_type,
            nullable: !primary_key,
            primary_key,
            default: None,
            stored_as: String::new(),
            backfill: None,
            dropped: false,
        };
        TableDef {
            table_id: 1,
            namespace: "app".into(),
            name: "m".into(),
            table_type: TableType::Shared,
            columns: vec![col("id", DataType::BigInt, true), col("room", DataType::Text, false)],
            options: Vec::new(),
            created_at_micros: 0,
            versions: Vec::new(),
        }
    }

    #[test]
    fn evaluates_comparisons_and_logic() {
        let d = def();
        let row =
            |id: i64, room: Option<&str>| vec![Value::BigInt(id), room.map_or(Value::Null, |r| Value::Text(r.into()))];
        let f = RowFilter::parse("room = 'a' AND id >= 10", &d).unwrap();
        assert!(f.matches(&row(10, Some("a"))));
        assert!(!f.matches(&row(9, Some("a"))));
        assert!(!f.matches(&row(10, None)), "NULL is unknown, not a match");
        let f = RowFilter::parse("5 < id OR room IS NULL", &d).unwrap();
        assert!(f.matches(&row(6, Some("x"))) && f.matches(&row(1, None)) && !f.matches(&row(5, Some("x"))));
        let f = RowFilter::parse("NOT (room IN ('a', 'b'))", &d).unwrap();
        assert!(f.matches(&row(1, Some("c"))) && !f.matches(&row(1, Some("b"))));
        assert_eq!(RowFilter::parse("id  =  1", &d).unwrap().text(), "id = 1");
    }

    #[test]
    fn refuses_what_it_cannot_evaluate() {
        let d = def();
        for bad in ["nope = 1", "id = room", "id + 1 = 2", "id = 1; DROP TABLE x", "id = 'abc'", "room LIKE 'a%'"] {
            let e = RowFilter::parse(bad, &d).unwrap_err();
            assert_eq!(e.code(), "INVALID_SQL", "{bad}");
        }
    }
}
