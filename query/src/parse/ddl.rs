//! KalamDB's own statements, parsed from tokens: namespaces, typed CREATE TABLE, SHOW,
//! DESCRIBE, storage jobs, SUBSCRIBE and transaction control.

use datafusion::sql::sqlparser::tokenizer::Token;
use kalamdb_log::{DataType, DefaultExpr, TableType, Value};

use super::source::Cursor;
use super::{AlterAction, ParsedColumn, ParsedCreateTable, Statement, StorageTarget};
use crate::error::{Error, Result};

/// One of our own statements; `None` when the tokens are standard SQL for sqlparser.
pub(super) fn parse_own(c: &mut Cursor<'_, '_>) -> Result<Option<Statement>> {
    if let Some(stmt) = super::users::parse_user_statement(c)? {
        return Ok(Some(stmt));
    }
    if c.peek_kw("BEGIN") || c.peek_kw("START") || c.peek_kw("COMMIT") || c.peek_kw("END") || c.peek_kw("ROLLBACK") {
        return parse_transaction(c).map(Some);
    }
    if c.eat_kw("CREATE") {
        if c.eat_kw("NAMESPACE") {
            let if_not_exists = c.eat_kws(&["IF", "NOT", "EXISTS"]);
            let name = c.ident()?;
            c.expect_end()?;
            return Ok(Some(Statement::CreateNamespace { name, if_not_exists }));
        }
        let table_type = if c.eat_kw("SHARED") {
            Some(TableType::Shared)
        } else if c.eat_kw("USER") {
            Some(TableType::User)
        } else if c.eat_kw("STREAM") {
            Some(TableType::Stream)
        } else {
            None
        };
        if c.peek_kw("TABLE") {
            c.pos += 1;
            return parse_create_table(c, table_type).map(Statement::CreateTable).map(Some);
        }
        if table_type.is_some() {
            return Err(c.unexpected("TABLE"));
        }
    } else if c.eat_kw("DROP") {
        if c.eat_kw("NAMESPACE") {
            let if_exists = c.eat_kws(&["IF", "EXISTS"]);
            let name = c.ident()?;
            let cascade = c.eat_kw("CASCADE");
            c.expect_end()?;
            return Ok(Some(Statement::DropNamespace { name, if_exists, cascade }));
        }
        // Table type words are accepted and ignored: a table's name identifies it.
        let _ = c.eat_kw("SHARED") || c.eat_kw("USER") || c.eat_kw("STREAM");
        if c.eat_kw("TABLE") {
            let if_exists = c.eat_kws(&["IF", "EXISTS"]);
            let table = c.table_name()?;
            c.expect_end()?;
            return Ok(Some(Statement::DropTable { table, if_exists }));
        }
    } else if c.eat_kw("SHOW") {
        if c.eat_kw("NAMESPACES") {
            c.expect_end()?;
            return Ok(Some(Statement::ShowNamespaces));
        }
        if c.eat_kw("TABLES") {
            let namespace = if c.eat_kw("IN") || c.eat_kw("FROM") { Some(c.ident()?) } else { None };
            c.expect_end()?;
            return Ok(Some(Statement::ShowTables { namespace }));
        }
    } else if c.peek_kw("FLUSH") || c.peek_kw("STORAGE") {
        return parse_storage(c).map(Some);
    } else if c.eat_kw("REBUILD") {
        if !c.eat_kw("PROJECTION") {
            return Err(c.unexpected("PROJECTION"));
        }
        let table = c.table_name()?;
        c.expect_end()?;
        return Ok(Some(Statement::Rebuild { table }));
    } else if c.eat_kw("SUBSCRIBE") {
        return parse_subscribe(c).map(Some);
    } else if c.eat_kw("BACKUP") {
        if !c.eat_kw("DATABASE") {
            return Err(c.unexpected("DATABASE"));
        }
        if !c.eat_kw("TO") {
            return Err(c.unexpected("TO"));
        }
        let destination = match c.next() {
            Some(Token::SingleQuotedString(s)) => s,
            _ => return Err(Error::InvalidSql("BACKUP DATABASE TO takes a single-quoted folder path or URL".into())),
        };
        c.expect_end()?;
        return Ok(Some(Statement::Backup { destination }));
    } else if c.peek_kw("ALTER") && c.peek_kw_at(1, "TABLE") {
        c.pos += 2;
        return parse_alter_table(c).map(Some);
    } else if c.eat_kw("DESCRIBE") || c.eat_kw("DESC") {
        let _ = c.eat_kw("TABLE");
        let table = c.table_name()?;
        let history = c.eat_kw("HISTORY");
        c.expect_end()?;
        return Ok(Some(Statement::DescribeTable { table, history }));
    }
    Ok(None)
}

/// `BEGIN [TRANSACTION | WORK]`, `START TRANSACTION`, `COMMIT [TRANSACTION | WORK]`, `END`,
/// `ROLLBACK [TRANSACTION | WORK]`.
fn parse_transaction(c: &mut Cursor<'_, '_>) -> Result<Statement> {
    let stmt = if c.eat_kw("BEGIN") {
        Statement::Begin
    } else if c.eat_kw("START") {
        if !c.peek_kw("TRANSACTION") {
            return Err(c.unexpected("TRANSACTION"));
        }
        Statement::Begin
    } else if c.eat_kw("COMMIT") || c.eat_kw("END") {
        Statement::Commit
    } else if c.eat_kw("ROLLBACK") {
        Statement::Rollback
    } else {
        return Err(c.unexpected("BEGIN, COMMIT or ROLLBACK"));
    };
    let _ = c.eat_kw("TRANSACTION") || c.eat_kw("WORK");
    c.expect_end()?;
    Ok(stmt)
}

fn parse_storage(c: &mut Cursor<'_, '_>) -> Result<Statement> {
    let storage = c.eat_kw("STORAGE");
    let compact = if c.eat_kw("FLUSH") {
        false
    } else if storage && c.eat_kw("COMPACT") {
        true
    } else {
        return Err(c.unexpected(if storage { "FLUSH or COMPACT" } else { "FLUSH" }));
    };
    let target = if c.eat_kw("TABLE") {
        StorageTarget::Table(c.table_name()?)
    } else if c.eat_kw("ALL") {
        // `FLUSH ALL TABLES`; KalamDB's `STORAGE FLUSH ALL` has no TABLES.
        if !c.eat_kw("TABLES") && !storage {
            return Err(c.unexpected("TABLES"));
        }
        let namespace = if c.eat_kw("IN") || c.eat_kw("FROM") { Some(c.ident()?) } else { None };
        StorageTarget::All { namespace }
    } else {
        return Err(c.unexpected("TABLE or ALL"));
    };
    c.expect_end()?;
    Ok(Statement::Storage { compact, target })
}

fn parse_data_type(c: &mut Cursor<'_, '_>) -> Result<DataType> {
    let word = match c.next() {
        Some(Token::Word(w)) => w.value.to_ascii_uppercase(),
        Some(t) => return Err(Error::InvalidSql(format!("expected a data type, found '{t}'"))),
        None => return Err(Error::InvalidSql("expected a data type".into())),
    };
    let dt = match word.as_str() {
        "BIGINT" | "INT8" | "LONG" => DataType::BigInt,
        "INT" | "INTEGER" | "INT4" => DataType::Int,
        "SMALLINT" | "INT2" => DataType::SmallInt,
        "DOUBLE" => {
            let _ = c.eat_kw("PRECISION");
            DataType::Double
        }
        "FLOAT8" => DataType::Double,
        "FLOAT" | "FLOAT4" | "REAL" => DataType::Float,
        "BOOLEAN" | "BOOL" => DataType::Boolean,
        "TEXT" | "VARCHAR" | "STRING" | "CHAR" => DataType::Text,
        "TIMESTAMP" | "DATETIME" => DataType::Timestamp,
        "DATE" => DataType::Date,
        "JSON" | "JSONB" => DataType::Json,
        "BYTES" | "BYTEA" | "BLOB" | "BINARY" | "VARBINARY" => DataType::Bytes,
        other => return Err(Error::InvalidSql(format!("unsupported data type {other}"))),
    };
    // Length / precision arguments are accepted and not enforced: TEXT has no length limit.
    if c.eat(&Token::LParen) {
        while !c.eat(&Token::RParen) {
            if c.next().is_none() {
                return Err(Error::InvalidSql("unterminated type arguments".into()));
            }
        }
    }
    if dt == DataType::Timestamp && (c.eat_kws(&["WITH", "TIME", "ZONE"]) || c.eat_kws(&["WITHOUT", "TIME", "ZONE"])) {
        // All timestamps are stored in UTC.
    }
    Ok(dt)
}

fn parse_default(c: &mut Cursor<'_, '_>) -> Result<DefaultExpr> {
    let negative = c.eat(&Token::Minus);
    match c.next() {
        Some(Token::Number(n, _)) => {
            let text = if negative { format!("-{n}") } else { n };
            Ok(DefaultExpr::Literal(number_value(&text)?))
        }
        Some(Token::SingleQuotedString(s)) if !negative => Ok(DefaultExpr::Literal(Value::Text(s))),
        Some(Token::Word(w)) if !negative && w.quote_style.is_none() => {
            let upper = w.value.to_ascii_uppercase();
            let call = c.eat(&Token::LParen);
            if call {
                c.expect(&Token::RParen)?;
            }
            match upper.as_str() {
                "NULL" if !call => Ok(DefaultExpr::Literal(Value::Null)),
                "TRUE" if !call => Ok(DefaultExpr::Literal(Value::Boolean(true))),
                "FALSE" if !call => Ok(DefaultExpr::Literal(Value::Boolean(false))),
                "SNOWFLAKE_ID" => Ok(DefaultExpr::SnowflakeId),
                "NOW" | "CURRENT_TIMESTAMP" => Ok(DefaultExpr::Now),
                other => Err(Error::InvalidSql(format!("unsupported DEFAULT expression {other}"))),
            }
        }
        Some(t) => Err(Error::InvalidSql(format!("unsupported DEFAULT expression '{t}'"))),
        None => Err(Error::InvalidSql("expected a DEFAULT expression".into())),
    }
}

fn number_value(text: &str) -> Result<Value> {
    if let Ok(i) = text.parse::<i64>() {
        return Ok(Value::BigInt(i));
    }
    text.parse::<f64>().map(Value::Double).map_err(|_| Error::InvalidSql(format!("invalid number {text}")))
}

fn parse_create_table(c: &mut Cursor<'_, '_>, table_type: Option<TableType>) -> Result<ParsedCreateTable> {
    let if_not_exists = c.eat_kws(&["IF", "NOT", "EXISTS"]);
    let table = c.table_name()?;
    c.expect(&Token::LParen)?;
    let mut columns: Vec<ParsedColumn> = Vec::new();
    let mut table_pk: Option<String> = None;
    loop {
        if c.eat_kws(&["PRIMARY", "KEY"]) {
            c.expect(&Token::LParen)?;
            let col = c.ident()?;
            if !c.eat(&Token::RParen) {
                return Err(Error::InvalidSql("composite primary keys are not supported".into()));
            }
            table_pk = Some(col);
        } else {
            columns.push(parse_column(c)?);
        }
        if c.eat(&Token::Comma) {
            continue;
        }
        c.expect(&Token::RParen)?;
        break;
    }
    if let Some(pk) = table_pk {
        let col = columns
            .iter_mut()
            .find(|col| col.name == pk)
            .ok_or_else(|| Error::InvalidSql(format!("PRIMARY KEY names unknown column {pk}")))?;
        col.primary_key = true;
    }
    let options = if c.eat_kw("WITH") { parse_options(c)? } else { Vec::new() };
    c.expect_end()?;
    Ok(ParsedCreateTable { table, table_type, if_not_exists, columns, options })
}

/// After `SUBSCRIBE`: `TO t [WHERE expr] [OPTIONS (k = v, ...)]`.
fn parse_subscribe(c: &mut Cursor<'_, '_>) -> Result<Statement> {
    if !c.eat_kw("TO") {
        return Err(c.unexpected("TO"));
    }
    let table = c.table_name()?;
    let mut filter = None;
    if c.eat_kw("WHERE") {
        let begin = c.pos;
        while !c.at_end() && !c.peek_kw("OPTIONS") {
            c.pos += 1;
        }
        if c.pos == begin {
            return Err(Error::InvalidSql("SUBSCRIBE ... WHERE needs a condition".into()));
        }
        filter = Some(c.source(begin, c.pos).to_string());
    }
    let (mut last_rows, mut from) = (None, None);
    if c.eat_kw("OPTIONS") {
        c.expect(&Token::LParen)?;
        loop {
            let key = c.ident()?.to_ascii_lowercase();
            c.expect(&Token::Eq)?;
            let value = match c.next() {
                Some(Token::Number(n, _)) => n,
                Some(Token::SingleQuotedString(s)) => s,
                Some(Token::Word(w)) => w.value,
                other => {
                    return Err(Error::InvalidSql(format!(
                        "OPTIONS value for {key}: expected a number or a string, found {}",
                        other.map_or("end of statement".to_string(), |t| t.to_string())
                    )));
                }
            };
            match key.as_str() {
                "last_rows" => {
                    last_rows = Some(value.parse::<u64>().map_err(|_| {
                        Error::InvalidSql(format!("last_rows must be a non-negative integer, got '{value}'"))
                    })?)
                }
                "from" => from = Some(value),
                other => {
                    return Err(Error::InvalidSql(format!("unknown SUBSCRIBE option '{other}' (last_rows, from)")));
                }
            }
            if c.eat(&Token::RParen) {
                break;
            }
            c.expect(&Token::Comma)?;
        }
    }
    c.expect_end()?;
    Ok(Statement::Subscribe { table, filter, last_rows, from })
}

/// `(KEY = value, ...)`: table options, keys upper-cased, in statement order.
fn parse_options(c: &mut Cursor<'_, '_>) -> Result<Vec<(String, String)>> {
    c.expect(&Token::LParen)?;
    let mut options = Vec::new();
    loop {
        let key = match c.next() {
            Some(Token::Word(w)) => w.value.to_ascii_uppercase(),
            _ => return Err(Error::InvalidSql("expected an option name in (...)".into())),
        };
        c.expect(&Token::Eq)?;
        options.push((key.clone(), option_value(c, &key)?));
        if c.eat(&Token::Comma) {
            continue;
        }
        c.expect(&Token::RParen)?;
        return Ok(options);
    }
}

/// An option's value: a quoted string, a number or a bare word.
fn option_value(c: &mut Cursor<'_, '_>, key: &str) -> Result<String> {
    match c.next() {
        Some(Token::SingleQuotedString(s)) | Some(Token::Number(s, _)) => Ok(s),
        Some(Token::Word(w)) => Ok(w.value),
        _ => Err(Error::InvalidSql(format!("expected a value for option {key}"))),
    }
}

/// After `ALTER TABLE`: `t SET ACCESS_LEVEL x`, `t SET (KEY = value, ...)`, `t ALTER [COLUMN] c
/// SET DEFAULT expr | DROP DEFAULT | [SET DATA] TYPE type | SET NOT NULL | DROP NOT NULL`,
/// `t RENAME [COLUMN] a TO b`, `t ADD [COLUMN] c TYPE ...`, `t DROP [COLUMN] c`.
fn parse_alter_table(c: &mut Cursor<'_, '_>) -> Result<Statement> {
    let table = c.table_name()?;
    let action = if c.eat_kw("SET") {
        if c.eat_kw("ACCESS_LEVEL") {
            let _ = c.eat(&Token::Eq);
            AlterAction::SetOptions(vec![("ACCESS_LEVEL".to_string(), option_value(c, "ACCESS_LEVEL")?)])
        } else if c.peek() == Some(&Token::LParen) {
            AlterAction::SetOptions(parse_options(c)?)
        } else {
            return Err(c.unexpected("ACCESS_LEVEL or (option = value, ...)"));
        }
    } else if c.eat_kw("ALTER") {
        let _ = c.eat_kw("COLUMN");
        let column = c.ident()?;
        if c.eat_kws(&["SET", "DEFAULT"]) {
            AlterAction::SetDefault { column, default: Some(parse_default(c)?) }
        } else if c.eat_kws(&["DROP", "DEFAULT"]) {
            AlterAction::SetDefault { column, default: None }
        } else if c.eat_kw("TYPE") || c.eat_kws(&["SET", "DATA", "TYPE"]) {
            AlterAction::SetType { column, data_type: parse_data_type(c)? }
        } else if c.eat_kws(&["DROP", "NOT", "NULL"]) {
            AlterAction::DropNotNull(column)
        } else if c.eat_kws(&["SET", "NOT", "NULL"]) {
            AlterAction::SetNotNull(column)
        } else {
            return Err(c.unexpected("SET DEFAULT, DROP DEFAULT, TYPE, SET NOT NULL or DROP NOT NULL"));
        }
    } else if c.eat_kw("RENAME") {
        let _ = c.eat_kw("COLUMN");
        let from = c.ident()?;
        if !c.eat_kw("TO") {
            return Err(c.unexpected("TO"));
        }
        AlterAction::RenameColumn { from, to: c.ident()? }
    } else if c.eat_kw("ADD") {
        let _ = c.eat_kw("COLUMN");
        AlterAction::AddColumn(parse_column(c)?)
    } else if c.eat_kw("DROP") {
        let _ = c.eat_kw("COLUMN");
        AlterAction::DropColumn(c.ident()?)
    } else {
        return Err(c.unexpected("SET, ALTER COLUMN, RENAME COLUMN or ADD COLUMN"));
    };
    c.expect_end()?;
    Ok(Statement::AlterTable { table, action })
}

/// `name TYPE [NOT NULL | NULL] [DEFAULT expr] [PRIMARY KEY]`, options in any order.
fn parse_column(c: &mut Cursor<'_, '_>) -> Result<ParsedColumn> {
    let name = c.ident()?;
    let data_type = parse_data_type(c)?;
    let mut col = ParsedColumn { name, data_type, not_null: false, primary_key: false, default: None };
    loop {
        if c.eat_kws(&["NOT", "NULL"]) {
            col.not_null = true;
        } else if c.eat_kw("NULL") {
            col.not_null = false;
        } else if c.eat_kws(&["PRIMARY", "KEY"]) {
            col.primary_key = true;
        } else if c.eat_kw("DEFAULT") {
            col.default = Some(parse_default(c)?);
        } else if c.peek_kw("UNIQUE") || c.peek_kw("REFERENCES") || c.peek_kw("CHECK") {
            return Err(c.unexpected("a supported column option (NOT NULL, DEFAULT, PRIMARY KEY)"));
        } else {
            return Ok(col);
        }
    }
}
