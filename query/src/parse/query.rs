//! Standard SQL through sqlparser, fed the request's tokens; `AS OF` clauses taken out at the
//! token level; and the point-select shape recognized without a full parse.

use datafusion::sql::sqlparser::ast;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

use super::source::{Cursor, Source, is_trivia};
use super::{Statement, TableName};
use crate::error::{Error, Result};
use crate::values::Literal;

/// Standard SQL through sqlparser's full parser, from tokens (never from text).
pub(super) fn parse_standard(tokens: Vec<TokenWithSpan>) -> Result<ast::Statement> {
    let dialect = GenericDialect {};
    let mut stmts = Parser::new(&dialect)
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|e| Error::InvalidSql(e.to_string()))?;
    match stmts.len() {
        1 => Ok(stmts.remove(0)),
        0 => Err(Error::InvalidSql("empty statement".into())),
        _ => Err(Error::InvalidSql("expected one statement".into())),
    }
}

/// A standard statement; a SELECT may name tables `AS OF <log index>` (time travel).
pub(super) fn parse_query(src: Source<'_>, first: &str) -> Result<Statement> {
    let (tokens, positions) = take_as_of(src)?;
    if positions.is_empty() {
        return Ok(Statement::Sql(Box::new(parse_standard(tokens)?)));
    }
    if first != "SELECT" {
        return Err(Error::InvalidSql("AS OF is only allowed in SELECT".into()));
    }
    Ok(Statement::AsOf { query: Box::new(parse_standard(tokens)?), positions })
}

/// The statement's tokens without its `table AS OF n` clauses' `AS OF n`, and per such table
/// its position.
fn take_as_of(src: Source<'_>) -> Result<(Vec<TokenWithSpan>, Vec<(TableName, u64)>)> {
    let tokens = src.tokens;
    let is_kw = |t: &Token, kw: &str| matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw));
    if !tokens.iter().any(|t| is_kw(&t.token, "OF")) {
        return Ok((tokens, Vec::new()));
    }
    let significant: Vec<usize> = (0..tokens.len()).filter(|&i| !is_trivia(&tokens[i].token)).collect();
    let word = |i: usize| match &tokens[i].token {
        Token::Word(w) => Some(if w.quote_style.is_some() { w.value.clone() } else { w.value.to_lowercase() }),
        _ => None,
    };
    let mut drop = vec![false; tokens.len()];
    let mut found = Vec::new();
    for (n, &i) in significant.iter().enumerate() {
        if !(is_kw(&tokens[i].token, "AS") && significant.get(n + 1).is_some_and(|&j| is_kw(&tokens[j].token, "OF"))) {
            continue;
        }
        let Some(&num) = significant.get(n + 2) else {
            return Err(Error::InvalidSql("AS OF needs a log index".into()));
        };
        let Token::Number(text, _) = &tokens[num].token else {
            return Err(Error::InvalidSql(format!(
                "AS OF takes a log index (a whole number), found '{}'",
                tokens[num].token
            )));
        };
        let at: u64 = text.parse().map_err(|_| Error::InvalidSql(format!("AS OF {text}: not a log index")))?;
        let name = n
            .checked_sub(1)
            .and_then(|p| word(significant[p]))
            .ok_or_else(|| Error::InvalidSql("AS OF must follow a table name".into()))?;
        let namespace = match (n.checked_sub(2), n.checked_sub(3)) {
            (Some(dot), Some(ns)) if tokens[significant[dot]].token == Token::Period => word(significant[ns]),
            _ => None,
        };
        found.push((TableName { namespace, name }, at));
        drop[i..=num].fill(true);
    }
    if found.is_empty() {
        return Ok((tokens, found));
    }
    let kept = tokens.into_iter().zip(drop).filter(|(_, d)| !d).map(|(t, _)| t).collect();
    Ok((kept, found))
}

/// The key of a point select: a literal, or the `$n` parameter (1-based) resolved at execution.
#[derive(Debug, Clone, PartialEq)]
pub enum PointKey {
    Literal(Literal),
    Param(usize),
}

/// `SELECT * | a, b FROM [ns.]t WHERE col = key`: answered by one primary-key lookup when
/// `col` is the key.
#[derive(Debug, Clone, PartialEq)]
pub struct PointSelect {
    pub table: TableName,
    /// The selected columns; `None` for `*`.
    pub columns: Option<Vec<String>>,
    pub key_column: String,
    pub key: PointKey,
}

/// Recognize the point-select shape from the statement's tokens: the hot read path that skips
/// sqlparser and DataFusion planning. Anything else returns None and takes the general path.
pub(super) fn point_select(c: &Cursor<'_, '_>) -> Option<PointSelect> {
    let kw =
        |t: &Token, k: &str| matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(k));
    let ident = |t: &Token| match t {
        Token::Word(w) if w.quote_style.is_some() => Some(w.value.clone()),
        Token::Word(w) if w.keyword == Keyword::NoKeyword => Some(w.value.to_lowercase()),
        Token::Word(w)
            if !["FROM", "WHERE", "SELECT", "AND", "OR", "AS"].iter().any(|k| w.value.eq_ignore_ascii_case(k)) =>
        {
            Some(w.value.to_lowercase())
        }
        _ => None,
    };
    let at = |i: usize| c.token(i);
    let mut i = 0;
    if !kw(at(i)?, "SELECT") {
        return None;
    }
    i += 1;
    let columns = if at(i)? == &Token::Mul {
        i += 1;
        None
    } else {
        let mut cols = Vec::new();
        loop {
            cols.push(ident(at(i)?)?);
            i += 1;
            if at(i)? == &Token::Comma {
                i += 1;
            } else {
                break;
            }
        }
        Some(cols)
    };
    if !kw(at(i)?, "FROM") {
        return None;
    }
    i += 1;
    let first = ident(at(i)?)?;
    i += 1;
    let table = if at(i) == Some(&Token::Period) {
        let name = ident(at(i + 1)?)?;
        i += 2;
        TableName { namespace: Some(first), name }
    } else {
        TableName { namespace: None, name: first }
    };
    if !kw(at(i)?, "WHERE") {
        return None;
    }
    let key_column = ident(at(i + 1)?)?;
    if at(i + 2)? != &Token::Eq {
        return None;
    }
    let key = match at(i + 3)? {
        Token::Number(n, _) => PointKey::Literal(Literal::Number(n.clone())),
        Token::SingleQuotedString(s) => PointKey::Literal(Literal::String(s.clone())),
        Token::Placeholder(p) => PointKey::Param(p.strip_prefix('$')?.parse().ok().filter(|n| *n >= 1)?),
        _ => return None,
    };
    if at(i + 4).is_some() {
        return None;
    }
    Some(PointSelect { table, columns, key_column, key })
}
