//! A request that is one `INSERT INTO t [(cols)] VALUES (literal, ...), ...`, read straight
//! from its text into typed literals: no tokens, no syntax tree.
//!
//! Why: in a 4-client bulk load of 1,000-row INSERTs, sqlparser's tokenizer, the tree built
//! from its tokens ([`super::insert`]) and the copies of each value between them took ~13% of
//! all CPU (benches/RESULTS.md, session 30), on whichever node received the statement. This
//! scanner reads each byte once and allocates once per value.
//!
//! It takes a strict subset of what the token path takes: unquoted ASCII names, integers and
//! plain decimals (a `-` directly before the digits), single-quoted strings without a
//! backslash, `NULL`, `TRUE`, `FALSE`, separated by spaces, tabs and newlines, and at most one
//! `;` at the end. Anything else (a comment, a placeholder, an exponent, a quoted name, a
//! second statement, a syntax error) makes it decline, and the request goes the general way,
//! which gives the same answer and the same errors as before. What it takes, it reads as
//! the token path reads it (the table, the column names and the literals): this module's tests
//! assert that for random statements.

use super::{SQL_BYTES_MAX, TableName};
use crate::values::Literal;

/// `INSERT INTO table [(columns)] VALUES rows`, with names as the engine resolves them
/// (unquoted, so lower-cased).
#[derive(Debug, Clone, PartialEq)]
pub struct ValuesInsert {
    pub table: TableName,
    /// The target columns in the order the values give them; empty when none are listed.
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Literal>>,
}

/// Names that stand for INSERT syntax where a table or column name would, as in
/// [`super::insert`]'s `DECLINED_NAMES`: a statement naming one of them goes the general way.
const DECLINED_NAMES: [&str; 9] =
    ["TABLE", "FUNCTION", "LOCAL", "DIRECTORY", "OF", "VALUES", "SELECT", "WITH", "DEFAULT"];

/// The statement `sql` holds when it is a VALUES insert of plain literals and nothing else;
/// `None` for anything the general path has to read.
pub fn scan_values_insert(sql: &str) -> Option<ValuesInsert> {
    if sql.len() > SQL_BYTES_MAX {
        return None;
    }
    let mut s = Scanner { text: sql, at: 0 };
    s.keyword("INSERT")?;
    s.keyword("INTO")?;
    let first = s.name()?;
    let word_end = s.at;
    let table = if s.eat(b'.') {
        // sqlparser reads `._` as a period only right after a word (`ns._t`); after a gap it
        // is a syntax error, which the general path reports.
        if s.at - 1 != word_end && s.bytes().get(s.at) == Some(&b'_') {
            return None;
        }
        TableName { namespace: Some(first), name: s.name()? }
    } else {
        TableName { namespace: None, name: first }
    };
    let mut columns = Vec::new();
    if s.eat(b'(') {
        loop {
            columns.push(s.name()?);
            if !s.eat(b',') {
                break;
            }
        }
        s.expect(b')')?;
    }
    s.keyword("VALUES")?;
    let mut rows = Vec::new();
    loop {
        s.expect(b'(')?;
        // No capacity from the text: a hostile first row of 100,000 values would otherwise
        // reserve that much for every short row after it.
        let mut row = Vec::new();
        loop {
            row.push(s.literal()?);
            if !s.eat(b',') {
                break;
            }
        }
        s.expect(b')')?;
        rows.push(row);
        if !s.eat(b',') {
            break;
        }
    }
    s.eat(b';');
    s.gap();
    (s.at == sql.len()).then_some(ValuesInsert { table, columns, rows })
}

/// A cursor over the text. Every method skips the gap before what it reads; none reads past
/// a byte it does not understand.
struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// Spaces, tabs and newlines. A carriage return or a comment is not skipped, so it ends
    /// the scan where it stands.
    fn gap(&mut self) {
        while matches!(self.bytes().get(self.at), Some(b' ' | b'\t' | b'\n')) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.gap();
        self.bytes().get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let hit = self.peek() == Some(byte);
        self.at += usize::from(hit);
        hit
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    /// An unquoted word of ASCII letters, digits and `_`, not starting with a digit, and not
    /// followed by a byte sqlparser would read as part of it (`$`, `@`, `#`, a non-ASCII
    /// letter) or as a string prefix (`N'...'`, `E'...'`).
    fn word(&mut self) -> Option<&'a str> {
        self.gap();
        let b = self.bytes();
        let start = self.at;
        if !b.get(start).is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_') {
            return None;
        }
        let mut end = start + 1;
        while b.get(end).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_') {
            end += 1;
        }
        if b.get(end).is_some_and(|c| matches!(c, b'$' | b'@' | b'#' | b'\'' | b'"' | b'`') || !c.is_ascii()) {
            return None;
        }
        self.at = end;
        Some(&self.text[start..end])
    }

    fn keyword(&mut self, keyword: &str) -> Option<()> {
        self.word()?.eq_ignore_ascii_case(keyword).then_some(())
    }

    /// A table or column name, lower-cased as the engine does unquoted names.
    fn name(&mut self) -> Option<String> {
        let word = self.word()?;
        if DECLINED_NAMES.iter().any(|k| word.eq_ignore_ascii_case(k)) {
            return None;
        }
        Some(word.to_ascii_lowercase())
    }

    /// One value of a row, followed by `,` or `)` (so no operator can bind it).
    fn literal(&mut self) -> Option<Literal> {
        let literal = match self.peek()? {
            b'\'' => self.string()?,
            b'-' | b'0'..=b'9' => self.number()?,
            _ => {
                let word = self.word()?;
                if word.eq_ignore_ascii_case("NULL") {
                    Literal::Null
                } else if word.eq_ignore_ascii_case("TRUE") {
                    Literal::Bool(true)
                } else if word.eq_ignore_ascii_case("FALSE") {
                    Literal::Bool(false)
                } else {
                    return None;
                }
            }
        };
        matches!(self.peek()?, b',' | b')').then_some(literal)
    }

    /// `-`? digits (`.` digits)?, as written. Anything else that sqlparser reads as part of a
    /// number (an exponent, a leading or trailing `.`, `0x`) is not followed by the gap, `,` or
    /// `)` this requires, and declines.
    fn number(&mut self) -> Option<Literal> {
        let b = self.bytes();
        let start = self.at;
        let mut end = start + usize::from(b[start] == b'-');
        let digits = |mut at: usize| {
            while b.get(at).is_some_and(u8::is_ascii_digit) {
                at += 1;
            }
            at
        };
        let whole = digits(end);
        if whole == end {
            return None;
        }
        end = whole;
        if b.get(end) == Some(&b'.') {
            let fraction = digits(end + 1);
            if fraction == end + 1 {
                return None;
            }
            end = fraction;
        }
        if !matches!(b.get(end), Some(b' ' | b'\t' | b'\n' | b',' | b')')) {
            return None;
        }
        self.at = end;
        Some(Literal::Number(self.text[start..end].to_string()))
    }

    /// `'...'` with `''` for a quote. A backslash declines: whether it escapes depends on the
    /// dialect's settings, which the general path knows.
    fn string(&mut self) -> Option<Literal> {
        let b = self.bytes();
        let mut at = self.at + 1;
        let mut out = String::new();
        let mut from = at;
        loop {
            match b.get(at)? {
                b'\\' => return None,
                b'\'' if b.get(at + 1) == Some(&b'\'') => {
                    // Both quotes are ASCII, so the cuts are on character boundaries.
                    out.push_str(&self.text[from..=at]);
                    at += 2;
                    from = at;
                }
                b'\'' => {
                    out.push_str(&self.text[from..at]);
                    self.at = at + 1;
                    return Some(Literal::String(out));
                }
                _ => at += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::insert::values_insert;
    use super::super::insert_gen::insert_statement;
    use super::super::split_request;
    use super::{ValuesInsert, scan_values_insert};
    use crate::engine::{column_name, literal_of, object_table_name};
    use crate::values::Literal;
    use datafusion::sql::sqlparser::ast::{self, SetExpr};

    /// What the token path reads from `sql`, in the scanner's terms: `None` when it is not one
    /// INSERT of plain literals (or does not tokenize).
    fn general(sql: &str) -> Option<ValuesInsert> {
        let mut sources = split_request(sql).ok()?;
        if sources.len() != 1 {
            return None;
        }
        let ast::Statement::Insert(insert) = values_insert(&sources.remove(0))? else { return None };
        let ast::TableObject::TableName(name) = &insert.table else { return None };
        let table = object_table_name(name).ok()?;
        let columns = insert.columns.iter().map(column_name).collect::<Result<Vec<_>, _>>().ok()?;
        let SetExpr::Values(values) = insert.source?.body.as_ref().clone() else { return None };
        let rows = values
            .rows
            .iter()
            .map(|r| r.content.iter().map(|e| literal_of(e, &[]).ok().flatten()).collect::<Option<Vec<Literal>>>())
            .collect::<Option<Vec<_>>>()?;
        Some(ValuesInsert { table, columns, rows })
    }

    /// Whether the scanner takes `sql`; when it does, asserts the general path reads the same.
    fn taken_alike(sql: &str) -> bool {
        let Some(fast) = scan_values_insert(sql) else { return false };
        assert_eq!(Some(&fast), general(sql).as_ref(), "{sql}");
        true
    }

    #[test]
    fn takes_plain_literal_rows_as_the_general_path_reads_them() {
        for sql in [
            "INSERT INTO bench.t42 (id, v) VALUES (1000000000,'v1000000000'),(1000000001,'v1000000001')",
            "INSERT INTO App.T (Id, V) VALUES (1, 'a'), (-2, NULL);",
            "  insert into t values (TRUE, false, 1.5, 'it''s', '', 'é''''x', 007)\n",
            "INSERT INTO t(id,v)VALUES(1,'a')",
            "INSERT\tINTO\nt (id) VALUES\n(\t-7 )\t;\n",
            "INSERT INTO t (id, name, user, timestamp) VALUES (1, 'x', 'u', '2024-01-01')",
            "INSERT INTO ns . t VALUES ('multi\nline')",
            "INSERT INTO ns._t VALUES (1)",
        ] {
            assert!(taken_alike(sql), "declined {sql:?}");
        }
    }

    #[test]
    fn declines_what_the_general_path_must_read() {
        for sql in [
            "INSERT INTO t VALUES (1 + 2)",
            "INSERT INTO t VALUES (1e9)",
            "INSERT INTO t VALUES (.5)",
            "INSERT INTO t VALUES (5.)",
            "INSERT INTO t VALUES (- 2)",
            "INSERT INTO t VALUES (0x1F)",
            "INSERT INTO t VALUES ($1)",
            "INSERT INTO t VALUES ('a\\'b')",
            "INSERT INTO t VALUES (E'x')",
            "INSERT INTO t VALUES (N'x')",
            "INSERT INTO t VALUES ('a' 'b')",
            "INSERT INTO t VALUES ('unterminated)",
            "INSERT INTO t VALUES (1) -- trailing",
            "INSERT INTO t VALUES (1) /* c */",
            "INSERT INTO t VALUES (1);\r\n",
            "INSERT INTO t VALUES (1); SELECT 1",
            "INSERT INTO t VALUES (1);;",
            "INSERT INTO t VALUES (1),",
            "INSERT INTO t VALUES ()",
            "INSERT INTO t VALUES (x)",
            "INSERT INTO t VALUES (NULL$)",
            "INSERT INTO t$1 VALUES (1)",
            "INSERT INTO \"T\" VALUES (1)",
            "INSERT INTO tablé VALUES (1)",
            "INSERT INTO a.b.c VALUES (1)",
            "INSERT INTO a ._b VALUES (1)",
            "INSERT INTO TABLE t VALUES (1)",
            "INSERT INTO t (select) VALUES (1)",
            "INSERT INTO t VALUES (1) RETURNING id",
            "INSERT INTO t SELECT 1",
            "INSERT IGNORE INTO t VALUES (1)",
            "INSERTINTO t VALUES (1)",
            "INSERT INTO t VALUES (-'x')",
            "INSERT INTO t VALUES (--1\n)",
        ] {
            assert!(scan_values_insert(sql).is_none(), "took {sql:?}");
        }
    }

    /// A wide first row and many short ones: each row holds what it was given (the capacity
    /// of a row does not come from another row).
    #[test]
    fn a_wide_first_row_reserves_nothing_for_the_others() {
        let sql = format!("INSERT INTO t VALUES ({}){}", vec!["1"; 50_000].join(","), ",(2)".repeat(100_000));
        let insert = scan_values_insert(&sql).expect("plain literals");
        assert_eq!(insert.rows.len(), 100_001);
        assert!(insert.rows[1..].iter().all(|r| r.len() == 1 && r.capacity() < 16));
    }

    #[test]
    fn declines_text_past_the_request_limit() {
        let long = format!("INSERT INTO t VALUES ('{}')", "x".repeat(super::SQL_BYTES_MAX));
        assert!(scan_values_insert(&long).is_none());
    }

    /// Pieces of generated statements: names and values that are and are not plain, and what
    /// may separate tokens. The first `*_PLAIN` of each are what the scanner reads.
    const NAMES: &[&str] =
        &["t", "Id", "v_2", "_x", "user", "key", "values", "table", "select", "\"Q\"", "t$", "ü", "1a", "'s'"];
    const NAMES_PLAIN: usize = 6;
    const VALUES: &[&str] = &[
        "1",
        "-1",
        "0.5",
        "-0",
        "007",
        "9223372036854775808",
        "'x'",
        "''",
        "'a''b'",
        "'''x'''",
        "'é'",
        "'a\nb'",
        "NULL",
        "null",
        "TRUE",
        "false",
        "- 2",
        ".5",
        "1.",
        "1e9",
        "'a\\b'",
        "$1",
        "1 + 2",
        "-'x'",
        "(1)",
        "DATE '2024-01-01'",
        "now()",
        "x",
        "'a' 'b'",
        "E'e'",
        "N'n'",
        "-NULL",
        "+1",
        "\"q\"",
        "--1",
        "1-1",
    ];
    const VALUES_PLAIN: usize = 16;
    const GAPS: &[&str] = &["", " ", "  ", "\n", "\t", "\r\n", " /* c */ ", " -- c\n"];
    const GAPS_PLAIN: usize = 5;
    const TAILS: &[&str] = &["", ";", " ; ", ";;", "; SELECT 1", " RETURNING id", ","];
    const TAILS_PLAIN: usize = 3;

    /// Statements made of the first `*_PLAIN` pieces of each list (`plain`), or of any piece.
    fn statement_of(plain: bool) -> impl Strategy<Value = String> {
        let take = |all: &'static [&'static str], n: usize| if plain { &all[..n] } else { all };
        insert_statement(
            take(NAMES, NAMES_PLAIN),
            take(VALUES, VALUES_PLAIN),
            take(GAPS, GAPS_PLAIN),
            take(TAILS, TAILS_PLAIN),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4_000))]

        /// Whatever the scanner takes, the general path reads alike.
        #[test]
        fn whatever_it_takes_the_general_path_reads_alike(sql in statement_of(false)) {
            if let Some(fast) = scan_values_insert(&sql) {
                let general = general(&sql);
                prop_assert_eq!(Some(&fast), general.as_ref(), "{}", sql);
            }
        }

        /// A statement of plain pieces only is taken exactly when the general path reads it
        /// (all but `ns ._t`, a syntax error there), and read alike.
        #[test]
        fn it_takes_every_plain_statement_the_general_path_reads(sql in statement_of(true)) {
            let fast = scan_values_insert(&sql);
            let general = general(&sql);
            prop_assert_eq!(fast.as_ref(), general.as_ref(), "{}", sql);
        }
    }
}
