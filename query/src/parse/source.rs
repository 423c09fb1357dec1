//! A request's SQL text tokenized once and cut into statements at `;`, and the cursor our own
//! statement parsers walk. Every later step works on these tokens; none re-reads the text.

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use super::{IDENT_BYTES_MAX, SQL_BYTES_MAX, STATEMENTS_MAX, TableName};
use crate::error::{Error, Result};

/// One statement of a request: its tokens as written (whitespace and comments included, so
/// sqlparser sees exactly what it would have tokenized itself) and where each starts.
#[derive(Debug)]
pub struct Source<'a> {
    /// The whole request text.
    sql: &'a str,
    pub(super) tokens: Vec<TokenWithSpan>,
    /// Byte offset in `sql` where each of `tokens` starts, plus where the last one ends.
    pub(super) starts: Vec<usize>,
}

impl<'a> Source<'a> {
    /// The statement as written, from its first significant token to its last.
    pub fn text(&self) -> &'a str {
        let first = self.tokens.iter().position(|t| !is_trivia(&t.token)).unwrap_or(0);
        let last = self.tokens.iter().rposition(|t| !is_trivia(&t.token)).map_or(0, |i| i + 1);
        &self.sql[self.starts[first]..self.starts[last.max(first)]]
    }

    /// The tokens `from..to` (indexes into `tokens`) as a statement of their own.
    pub(super) fn slice(&self, from: usize, to: usize) -> Source<'a> {
        Source { sql: self.sql, tokens: self.tokens[from..to].to_vec(), starts: self.starts[from..=to].to_vec() }
    }
}

/// Whitespace and comments.
pub(super) fn is_trivia(t: &Token) -> bool {
    matches!(t, Token::Whitespace(_))
}

/// Tokenize a request once and cut it into statements at top-level `;` tokens. Statements
/// with nothing but whitespace and comments (a trailing `;`) are dropped.
pub fn split_request(sql: &str) -> Result<Vec<Source<'_>>> {
    if sql.len() > SQL_BYTES_MAX {
        return Err(Error::InvalidSql(format!("SQL text exceeds {SQL_BYTES_MAX} bytes")));
    }
    let (tokens, starts) = tokens_with_starts(sql)?;
    let mut out = Vec::new();
    // The tokens move into their statements (a large INSERT is not copied). The first
    // statement is room for all of them: most requests hold one, and growing a vector of
    // ~8,000 tokens by doubling moved them 13 times (0.9% of a bulk load's CPU).
    let (mut current, mut current_starts) = (Vec::with_capacity(tokens.len()), Vec::with_capacity(starts.len()));
    for (t, &start) in tokens.into_iter().zip(&starts) {
        current_starts.push(start);
        if t.token == Token::SemiColon {
            // The `;` ends the statement: its start is where the last token ends.
            push_statement(&mut out, sql, std::mem::take(&mut current), std::mem::take(&mut current_starts))?;
        } else {
            current.push(t);
        }
    }
    current_starts.push(sql.len());
    push_statement(&mut out, sql, current, current_starts)?;
    Ok(out)
}

fn push_statement<'a>(
    out: &mut Vec<Source<'a>>,
    sql: &'a str,
    tokens: Vec<TokenWithSpan>,
    starts: Vec<usize>,
) -> Result<()> {
    if tokens.iter().all(|t| is_trivia(&t.token)) {
        return Ok(());
    }
    if out.len() == STATEMENTS_MAX {
        return Err(Error::InvalidSql(format!("more than {STATEMENTS_MAX} statements in one request")));
    }
    out.push(Source { sql, tokens, starts });
    Ok(())
}

/// The tokens of `sql` (comments and whitespace included) and the byte offset where each one
/// starts, plus `sql.len()` at the end: token `i` was written as `sql[starts[i]..starts[i + 1]]`.
/// Text carried on from a statement (a `SUBSCRIBE` filter, which travels in a URL) is cut from
/// the source this way, never printed back from tokens: sqlparser prints a quoted string token
/// without doubling its quotes, so `'it''s'` would come back as `'it's'` and a literal could be
/// read as SQL.
fn tokens_with_starts(sql: &str) -> Result<(Vec<TokenWithSpan>, Vec<usize>)> {
    let dialect = GenericDialect {};
    let located =
        Tokenizer::new(&dialect, sql).tokenize_with_location().map_err(|e| Error::InvalidSql(e.to_string()))?;
    // Locations are 1-based lines and 1-based columns counted in characters, in order: one
    // walk over the text finds every start (linear, however long a line is).
    let mut chars = sql.char_indices();
    let (mut line, mut column, mut at) = (1u64, 1u64, 0usize);
    let mut starts = Vec::with_capacity(located.len() + 1);
    for t in &located {
        let want = (t.span.start.line, t.span.start.column);
        while (line, column) < want {
            let Some((i, ch)) = chars.next() else { break };
            at = i + ch.len_utf8();
            if ch == '\n' {
                (line, column) = (line + 1, 1);
            } else {
                column += 1;
            }
        }
        if (line, column) != want {
            return Err(Error::Internal(format!("token {} has no place in the statement", t.token)));
        }
        starts.push(at);
    }
    starts.push(sql.len());
    Ok((located, starts))
}

/// Token cursor for our own statements: walks the significant tokens of one [`Source`].
pub(super) struct Cursor<'s, 'a> {
    src: &'s Source<'a>,
    /// Indexes into `src.tokens` of the significant tokens.
    significant: Vec<usize>,
    pub(super) pos: usize,
}

impl<'s, 'a> Cursor<'s, 'a> {
    pub(super) fn new(src: &'s Source<'a>) -> Cursor<'s, 'a> {
        let significant = (0..src.tokens.len()).filter(|&i| !is_trivia(&src.tokens[i].token)).collect();
        Cursor { src, significant, pos: 0 }
    }

    /// How many significant tokens the statement has.
    pub(super) fn len(&self) -> usize {
        self.significant.len()
    }

    /// The significant token `at` (an index like `pos`).
    pub(super) fn token(&self, at: usize) -> Option<&'s Token> {
        self.significant.get(at).map(|&i| &self.src.tokens[i].token)
    }

    /// The source text of significant tokens `from..to`, as written (comments between them
    /// included).
    pub(super) fn source(&self, from: usize, to: usize) -> &'a str {
        let to = to.min(self.significant.len());
        if from >= to {
            return "";
        }
        let start = self.src.starts[self.significant[from]];
        let end = self.src.starts[self.significant[to - 1] + 1];
        self.src.sql[start..end].trim()
    }

    /// Significant tokens `from..to` (with what lies between them) as a statement of their
    /// own; `from < to`.
    pub(super) fn sub_source(&self, from: usize, to: usize) -> Source<'a> {
        assert!(from < to && to <= self.significant.len(), "sub_source {from}..{to} out of range");
        self.src.slice(self.significant[from], self.significant[to - 1] + 1)
    }

    pub(super) fn peek(&self) -> Option<&'s Token> {
        self.token(self.pos)
    }

    pub(super) fn next(&mut self) -> Option<Token> {
        let t = self.peek().cloned();
        self.pos += 1;
        t
    }

    /// Is the next token the (unquoted) keyword `kw`?
    pub(super) fn peek_kw(&self, kw: &str) -> bool {
        self.peek_kw_at(0, kw)
    }

    pub(super) fn peek_kw_at(&self, ahead: usize, kw: &str) -> bool {
        matches!(self.token(self.pos + ahead), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw))
    }

    pub(super) fn eat_kw(&mut self, kw: &str) -> bool {
        if self.peek_kw(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Are the next tokens these keywords?
    pub(super) fn peek_kws(&self, kws: &[&str]) -> bool {
        kws.iter().enumerate().all(|(i, k)| self.peek_kw_at(i, k))
    }

    pub(super) fn eat_kws(&mut self, kws: &[&str]) -> bool {
        if self.peek_kws(kws) {
            self.pos += kws.len();
            true
        } else {
            false
        }
    }

    pub(super) fn eat(&mut self, t: &Token) -> bool {
        if self.peek() == Some(t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    pub(super) fn expect(&mut self, t: &Token) -> Result<()> {
        if self.eat(t) { Ok(()) } else { Err(self.unexpected(&t.to_string())) }
    }

    pub(super) fn unexpected(&self, wanted: &str) -> Error {
        match self.peek() {
            Some(t) => Error::InvalidSql(format!("expected {wanted}, found '{t}'")),
            None => Error::InvalidSql(format!("expected {wanted}, found end of statement")),
        }
    }

    pub(super) fn at_end(&self) -> bool {
        self.pos >= self.significant.len()
    }

    pub(super) fn expect_end(&self) -> Result<()> {
        if self.at_end() { Ok(()) } else { Err(self.unexpected("end of statement")) }
    }

    /// An identifier: unquoted ones are lower-cased (as DataFusion does), quoted ones kept.
    pub(super) fn ident(&mut self) -> Result<String> {
        match self.next() {
            Some(Token::Word(w)) => {
                let name = if w.quote_style.is_some() { w.value } else { w.value.to_lowercase() };
                if name.is_empty() || name.len() > IDENT_BYTES_MAX {
                    return Err(Error::InvalidSql(format!("identifier must be 1 to {IDENT_BYTES_MAX} bytes")));
                }
                Ok(name)
            }
            Some(t) => Err(Error::InvalidSql(format!("expected an identifier, found '{t}'"))),
            None => Err(Error::InvalidSql("expected an identifier, found end of statement".into())),
        }
    }

    pub(super) fn table_name(&mut self) -> Result<TableName> {
        let first = self.ident()?;
        if self.eat(&Token::Period) {
            let name = self.ident()?;
            Ok(TableName { namespace: Some(first), name })
        } else {
            Ok(TableName { namespace: None, name: first })
        }
    }
}
