//! `INSERT INTO t [(cols)] VALUES (literal, ...), ...` built into sqlparser's AST straight from
//! the tokens: the bulk write path's shape, without sqlparser's per-value expression parser.
//!
//! Why: in a 4-client bulk load of 1,000-row INSERTs sqlparser took 12% of all CPU, most of it
//! parsing each literal as an expression (every value is first tried as a typed string such as
//! `DATE '...'`, which fails and formats an error message). The statement this module builds is
//! the value sqlparser's own parser returns for the same tokens (asserted for random
//! statements by this module's tests), so everything after parsing is shared. Any token outside the
//! shape makes it decline, and the statement goes through sqlparser as before.

use datafusion::sql::sqlparser::ast::helpers::attached_token::AttachedToken;
use datafusion::sql::sqlparser::ast::{
    self, Expr, Ident, ObjectName, ObjectNamePart, Parens, Query, SetExpr, TableObject, UnaryOperator, ValueWithSpan,
    Values,
};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Whitespace, Word};

use super::source::{Source, is_trivia};

/// Keywords that sqlparser reads as part of the INSERT syntax where a table or column name
/// would stand (`INSERT INTO TABLE t`, `INTO FUNCTION f(...)`, `INTO LOCAL DIRECTORY`), or
/// that the `AS OF` rewrite looks for: a statement naming one of them unquoted declines.
/// `SELECT` and `WITH` would start a subquery in place of the column list, and `DEFAULT`
/// begins `DEFAULT VALUES`.
const DECLINED_NAMES: [Keyword; 9] = [
    Keyword::TABLE,
    Keyword::FUNCTION,
    Keyword::LOCAL,
    Keyword::DIRECTORY,
    Keyword::OF,
    Keyword::VALUES,
    Keyword::SELECT,
    Keyword::WITH,
    Keyword::DEFAULT,
];

/// The statement sqlparser would parse from `src`, when it is a VALUES insert of literals;
/// `None` for anything else (the caller parses it the general way).
pub(super) fn values_insert(src: &Source<'_>) -> Option<ast::Statement> {
    let mut t = Significant { tokens: &src.tokens, at: 0, comment: false };
    let insert_token = t.next_kw(Keyword::INSERT)?.clone();
    t.next_kw(Keyword::INTO)?;
    let mut table = vec![ObjectNamePart::Identifier(t.name()?)];
    if t.eat(&Token::Period) {
        table.push(ObjectNamePart::Identifier(t.name()?));
    }
    let mut columns = Vec::new();
    if t.eat(&Token::LParen) {
        loop {
            columns.push(ObjectName(vec![ObjectNamePart::Identifier(t.name()?)]));
            if !t.eat(&Token::Comma) {
                break;
            }
        }
        if !t.eat(&Token::RParen) {
            return None;
        }
    }
    t.next_kw(Keyword::VALUES)?;
    let mut rows = Vec::new();
    loop {
        let opening_token = AttachedToken(t.next_is(&Token::LParen)?.clone());
        let mut content = Vec::new();
        loop {
            content.push(t.literal()?);
            if !t.eat(&Token::Comma) {
                break;
            }
        }
        let closing_token = AttachedToken(t.next_is(&Token::RParen)?.clone());
        rows.push(Parens { opening_token, content, closing_token });
        if !t.eat(&Token::Comma) {
            break;
        }
    }
    if t.peek().is_some() || t.comment {
        return None;
    }
    let values = Values { explicit_row: false, value_keyword: false, rows };
    let source = Query {
        with: None,
        body: Box::new(SetExpr::Values(values)),
        order_by: None,
        limit_clause: None,
        fetch: None,
        locks: vec![],
        for_clause: None,
        settings: None,
        format_clause: None,
        pipe_operators: vec![],
    };
    Some(
        ast::Insert {
            insert_token: AttachedToken(insert_token),
            optimizer_hints: vec![],
            or: None,
            table: TableObject::TableName(ObjectName(table)),
            table_alias: None,
            ignore: false,
            into: true,
            overwrite: false,
            partitioned: None,
            columns,
            after_columns: vec![],
            source: Some(Box::new(source)),
            assignments: vec![],
            has_table_keyword: false,
            on: None,
            returning: None,
            output: None,
            replace_into: false,
            priority: None,
            insert_alias: None,
            settings: None,
            format_clause: None,
            multi_table_insert_type: None,
            multi_table_into_clauses: vec![],
            multi_table_when_clauses: vec![],
            multi_table_else_clause: None,
        }
        .into(),
    )
}

/// A walk over a statement's significant tokens, whitespace skipped.
struct Significant<'t> {
    tokens: &'t [TokenWithSpan],
    at: usize,
    /// A comment was met. Comments end the walk: sqlparser reads `/*+ ... */` after INSERT
    /// as optimizer hints, and declining any comment keeps that case out simply.
    comment: bool,
}

impl<'t> Significant<'t> {
    fn peek(&mut self) -> Option<&'t TokenWithSpan> {
        while let Some(t) = self.tokens.get(self.at).filter(|t| is_trivia(&t.token)) {
            if !matches!(t.token, Token::Whitespace(Whitespace::Space | Whitespace::Newline | Whitespace::Tab)) {
                self.comment = true;
                return None;
            }
            self.at += 1;
        }
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<&'t TokenWithSpan> {
        let t = self.peek()?;
        self.at += 1;
        Some(t)
    }

    fn next_is(&mut self, want: &Token) -> Option<&'t TokenWithSpan> {
        self.peek().filter(|t| t.token == *want)?;
        self.next()
    }

    fn eat(&mut self, want: &Token) -> bool {
        self.next_is(want).is_some()
    }

    /// The unquoted keyword `kw`.
    fn next_kw(&mut self, kw: Keyword) -> Option<&'t TokenWithSpan> {
        self.peek().filter(|t| matches!(&t.token, Token::Word(w) if w.quote_style.is_none() && w.keyword == kw))?;
        self.next()
    }

    /// A table or column name: a word, quoted or not, unless it is one of [`DECLINED_NAMES`].
    fn name(&mut self) -> Option<Ident> {
        let t = self.peek()?;
        let Token::Word(w) = &t.token else { return None };
        if w.quote_style.is_none() && DECLINED_NAMES.contains(&w.keyword) {
            return None;
        }
        self.at += 1;
        Some(w.to_ident(t.span))
    }

    /// One value of a row: a number (optionally negated), a single-quoted string, NULL, TRUE,
    /// FALSE or a `$n` placeholder, followed by `,` or `)` (so no operator can bind it).
    fn literal(&mut self) -> Option<Expr> {
        let t = self.next()?;
        let value = |v: ast::Value, t: &TokenWithSpan| Expr::Value(ValueWithSpan { value: v, span: t.span });
        let expr = match &t.token {
            Token::Number(n, long) => value(ast::Value::Number(n.clone(), *long), t),
            Token::SingleQuotedString(s) => value(ast::Value::SingleQuotedString(s.clone()), t),
            Token::Placeholder(p) => value(ast::Value::Placeholder(p.clone()), t),
            Token::Word(Word { keyword, quote_style: None, .. }) => match keyword {
                Keyword::NULL => value(ast::Value::Null, t),
                Keyword::TRUE => value(ast::Value::Boolean(true), t),
                Keyword::FALSE => value(ast::Value::Boolean(false), t),
                _ => return None,
            },
            Token::Minus => {
                let n = self.next()?;
                let Token::Number(digits, long) = &n.token else { return None };
                Expr::UnaryOp {
                    op: UnaryOperator::Minus,
                    expr: Box::new(value(ast::Value::Number(digits.clone(), *long), n)),
                }
            }
            _ => return None,
        };
        matches!(self.peek()?.token, Token::Comma | Token::RParen).then_some(expr)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{query, source::split_request};
    use super::values_insert;

    /// Whether the fast path takes `sql`; when it does, asserts sqlparser parses the same
    /// statement, spans included.
    fn taken_alike(sql: &str) -> bool {
        let src = split_request(sql).unwrap().remove(0);
        let Some(fast) = values_insert(&src) else { return false };
        let parsed = query::parse_standard(src.tokens.clone())
            .unwrap_or_else(|e| panic!("the fast path took {sql:?}, which sqlparser refuses: {e}"));
        assert_eq!(fast, parsed, "{sql}");
        // Debug shows the spans too, which `==` ignores: errors and plans point at them.
        assert_eq!(format!("{fast:?}"), format!("{parsed:?}"), "{sql}");
        true
    }

    #[test]
    fn takes_literal_rows_as_sqlparser_parses_them() {
        for sql in [
            "INSERT INTO app.t (id, v) VALUES (1, 'a'), (-2, NULL)",
            "insert into T values (TRUE, false, $1, 1.5e3, 'it''s')",
            "INSERT INTO \"App\".\"T\" (\"Id\")\n\tVALUES\n(- 7)",
            "INSERT INTO t (id, name, user, timestamp) VALUES (1, 'x', 'u', '2024-01-01')",
        ] {
            assert!(taken_alike(sql), "declined {sql:?}");
        }
    }

    #[test]
    fn declines_what_is_not_a_literal_row() {
        for sql in [
            "INSERT INTO t VALUES (1 + 2)",
            "INSERT INTO t VALUES (DATE '2024-01-01')",
            "INSERT INTO t VALUES (now())",
            "INSERT INTO t VALUES ((1))",
            "INSERT INTO t VALUES (-'x')",
            "INSERT INTO t VALUES ()",
            "INSERT INTO t VALUES (1),",
            "INSERT INTO t VALUES (1) RETURNING id",
            "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING",
            "INSERT INTO t SELECT 1",
            "INSERT INTO TABLE t VALUES (1)",
            "INSERT INTO t (select) VALUES (1)",
            "INSERT /*+ hint */ INTO t VALUES (1)",
            "INSERT INTO t VALUES (1) -- trailing",
            "INSERT INTO a.b.c VALUES (1)",
            "INSERT INTO t AS x VALUES (1)",
            "INSERT INTO t VALUES ('a' 'b')",
            "INSERT INTO t VALUES (E'x')",
            "INSERT INTO t (a.b) VALUES (1)",
        ] {
            let src = split_request(sql).unwrap().remove(0);
            assert!(values_insert(&src).is_none(), "took {sql:?}");
        }
    }

    /// Pieces the generated statements are made of: names that are keywords in some place of
    /// an INSERT, values that are and are not plain literals, and what may separate tokens.
    const NAMES: &[&str] = &[
        "t",
        "id",
        "v",
        "user",
        "values",
        "table",
        "select",
        "with",
        "of",
        "as",
        "default",
        "local",
        "function",
        "key",
        "\"Mixed\"",
        "`b`",
        "[c]",
        "'s'",
        "1",
    ];
    const VALUES: &[&str] = &[
        "1",
        "-1",
        "- 2",
        "0.5",
        ".5",
        "1e9",
        "9223372036854775808",
        "'x'",
        "''",
        "'a''b'",
        "NULL",
        "null",
        "TRUE",
        "false",
        "$1",
        "$0",
        "?",
        "1 + 2",
        "-'x'",
        "(1)",
        "DATE '2024-01-01'",
        "now()",
        "x",
        "1::INT",
        "'a' 'b'",
        "E'e'",
        "N'n'",
        "-NULL",
        "+1",
        "\"q\"",
        "1 AS a",
    ];
    const GAPS: &[&str] = &["", " ", "  ", "\n", "\t", " /* c */ ", " -- c\n"];

    fn statement() -> impl Strategy<Value = String> {
        let tails = &["", " RETURNING id", ";", " ON CONFLICT DO NOTHING", ","][..];
        super::super::insert_gen::insert_statement(NAMES, VALUES, GAPS, tails)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Whatever the fast path takes, sqlparser parses to the same statement, spans included.
        #[test]
        fn whatever_it_takes_sqlparser_parses_alike(sql in statement()) {
            let Ok(mut sources) = split_request(&sql) else { return Ok(()) };
            if sources.len() != 1 {
                return Ok(());
            }
            let src = sources.remove(0);
            if let Some(fast) = values_insert(&src) {
                let parsed = query::parse_standard(src.tokens.clone());
                prop_assert!(parsed.is_ok(), "the fast path took {sql:?}, sqlparser refuses: {parsed:?}");
                let parsed = parsed.unwrap();
                prop_assert_eq!(&fast, &parsed, "{}", sql);
                prop_assert_eq!(format!("{fast:?}"), format!("{parsed:?}"), "{}", sql);
            }
        }
    }
}
