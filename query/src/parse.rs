//! SQL text to statements: splits a request into statements and parses KalamDB's own
//! statements (namespaces, typed CREATE TABLE, SHOW, DESCRIBE) over sqlparser's tokenizer.
//! Everything else (SELECT, INSERT, UPDATE, DELETE) goes to sqlparser's full parser.

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use kalamdb_log::{DataType, DefaultExpr, Role, TableType, Value};

use crate::error::{Error, Result};

/// Longest SQL text one request may carry.
pub const SQL_BYTES_MAX: usize = 1 << 20;
/// Most statements one request may carry.
pub const STATEMENTS_MAX: usize = 1000;
/// Longest identifier (namespace, table, column name).
pub const IDENT_BYTES_MAX: usize = 128;

/// A possibly namespace-qualified table name as written.
#[derive(Debug, Clone, PartialEq)]
pub struct TableName {
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParsedColumn {
    pub name: String,
    pub data_type: DataType,
    pub not_null: bool,
    pub primary_key: bool,
    pub default: Option<DefaultExpr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParsedCreateTable {
    pub table: TableName,
    pub table_type: Option<TableType>,
    pub if_not_exists: bool,
    pub columns: Vec<ParsedColumn>,
    /// `WITH (...)` options, keys upper-cased, TYPE included.
    pub options: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub enum Statement {
    CreateNamespace {
        name: String,
        if_not_exists: bool,
    },
    DropNamespace {
        name: String,
        if_exists: bool,
        cascade: bool,
    },
    ShowNamespaces,
    CreateTable(ParsedCreateTable),
    DropTable {
        table: TableName,
        if_exists: bool,
    },
    ShowTables {
        namespace: Option<String>,
    },
    DescribeTable {
        table: TableName,
    },
    /// `FLUSH TABLE t`, `FLUSH ALL TABLES [IN ns]`, `STORAGE FLUSH TABLE t`, `STORAGE FLUSH ALL
    /// [IN ns]`; with `compact`, `STORAGE COMPACT TABLE t` / `STORAGE COMPACT ALL [IN ns]`.
    Storage {
        compact: bool,
        target: StorageTarget,
    },
    /// `REBUILD PROJECTION t`: re-derive the table's projection from its files and the log.
    Rebuild {
        table: TableName,
    },
    /// `CREATE USER [IF NOT EXISTS] 'name' WITH PASSWORD '...' [ROLE r] [EMAIL '...']`.
    CreateUser {
        username: String,
        password: String,
        role: Option<Role>,
        email: Option<String>,
        if_not_exists: bool,
    },
    /// `ALTER USER 'name' SET PASSWORD '...'` or `ALTER USER 'name' SET ROLE r`.
    AlterUser {
        username: String,
        change: UserChange,
    },
    /// `DROP USER [IF EXISTS] 'name'`.
    DropUser {
        username: String,
        if_exists: bool,
    },
    /// `EXECUTE AS USER 'name' (<statement>)`: run one statement as another user.
    ExecuteAs {
        username: String,
        statement: String,
    },
    /// `SUBSCRIBE TO t [WHERE expr] [OPTIONS (last_rows = N, from = 'position')]`: answered
    /// with the tail endpoint's URL for that subscription.
    Subscribe {
        table: TableName,
        /// The filter's SQL text as written; the engine parses and canonicalizes it.
        filter: Option<String>,
        last_rows: Option<u64>,
        from: Option<String>,
    },
    /// Standard SQL handled through sqlparser's AST.
    Sql(Box<datafusion::sql::sqlparser::ast::Statement>),
}

/// What `ALTER USER` changes.
#[derive(Debug, Clone, PartialEq)]
pub enum UserChange {
    Password(String),
    Role(Role),
}

/// Longest user name.
pub const USERNAME_BYTES_MAX: usize = 64;

/// When a table is flushed automatically: after `rows` writes, after `interval_secs` seconds
/// with unflushed writes, whichever comes first. Written `rows:N`, `interval:S` or
/// `rows:N,interval:S` (the `FLUSH_POLICY` table option and the `storage.flush_policy` default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlushPolicy {
    pub rows: Option<u64>,
    pub interval_secs: Option<u64>,
}

impl FlushPolicy {
    pub fn parse(text: &str) -> Result<FlushPolicy> {
        let bad = |why: &str| {
            Error::InvalidSql(format!(
                "FLUSH_POLICY '{text}': {why}; expected 'rows:N', 'interval:S' or 'rows:N,interval:S'"
            ))
        };
        let mut policy = FlushPolicy::default();
        for part in text.split(',') {
            let (key, value) = part.trim().split_once(':').ok_or_else(|| bad("missing ':'"))?;
            let n: u64 = value.trim().parse().map_err(|_| bad("not a whole number"))?;
            if n == 0 {
                return Err(bad("must be at least 1"));
            }
            let slot = match key.trim().to_ascii_lowercase().as_str() {
                "rows" => &mut policy.rows,
                "interval" => &mut policy.interval_secs,
                _ => return Err(bad("unknown key")),
            };
            if slot.replace(n).is_some() {
                return Err(bad("key given twice"));
            }
        }
        Ok(policy)
    }
}

/// What a FLUSH or COMPACT statement covers.
#[derive(Debug, Clone, PartialEq)]
pub enum StorageTarget {
    Table(TableName),
    /// Every table, or every table of one namespace.
    All {
        namespace: Option<String>,
    },
}

/// Split SQL text into statements at `;`, respecting quotes and comments. Empty statements
/// (e.g. a trailing `;`) are dropped.
pub fn split_statements(sql: &str) -> Result<Vec<String>> {
    if sql.len() > SQL_BYTES_MAX {
        return Err(Error::InvalidSql(format!("SQL text exceeds {SQL_BYTES_MAX} bytes")));
    }
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = sql.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            q @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == q {
                        // A doubled quote is an escaped quote inside the literal.
                        if bytes.get(i + 1) == Some(&q) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                if i >= bytes.len() {
                    return Err(Error::InvalidSql("unterminated quoted string".into()));
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b';' => {
                push_stmt(&mut out, &sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < sql.len() {
        push_stmt(&mut out, &sql[start..]);
    }
    if out.len() > STATEMENTS_MAX {
        return Err(Error::InvalidSql(format!("more than {STATEMENTS_MAX} statements in one request")));
    }
    Ok(out)
}

fn push_stmt(out: &mut Vec<String>, s: &str) {
    let has_code = s.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with("--")
    });
    if has_code && !s.trim().is_empty() {
        out.push(s.trim().to_string());
    }
}

/// The tokens of `sql` (comments and whitespace included) and the byte offset where each one
/// starts, plus `sql.len()` at the end: token `i` was written as `sql[starts[i]..starts[i + 1]]`.
/// Text carried on from a statement (an `EXECUTE AS` body, a statement without its `AS OF`, a
/// `SUBSCRIBE` filter) is cut from the source this way, never printed back from tokens:
/// sqlparser prints a quoted string token without doubling its quotes, so `'it''s'` would come
/// back as `'it's'` and a literal could be read as SQL.
fn tokens_with_starts(sql: &str) -> Result<(Vec<Token>, Vec<usize>)> {
    let dialect = GenericDialect {};
    let located =
        Tokenizer::new(&dialect, sql).tokenize_with_location().map_err(|e| Error::InvalidSql(e.to_string()))?;
    // Locations are 1-based lines and 1-based columns counted in characters, in order: one
    // walk over the text finds every start (linear, however long a line is).
    let mut chars = sql.char_indices();
    let (mut line, mut column, mut at) = (1u64, 1u64, 0usize);
    let mut tokens = Vec::with_capacity(located.len());
    let mut starts = Vec::with_capacity(located.len() + 1);
    for t in located {
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
        tokens.push(t.token);
    }
    starts.push(sql.len());
    Ok((tokens, starts))
}

/// Token cursor for our own statements.
struct Cursor {
    tokens: Vec<Token>,
    /// Where each of `tokens` starts in `sql`, plus `sql.len()`.
    starts: Vec<usize>,
    sql: String,
    pos: usize,
}

impl Cursor {
    fn new(sql: &str) -> Result<Cursor> {
        let (all, all_starts) = tokens_with_starts(sql)?;
        let mut tokens = Vec::with_capacity(all.len());
        let mut starts = Vec::with_capacity(all.len() + 1);
        for (t, start) in all.into_iter().zip(&all_starts) {
            if !matches!(t, Token::Whitespace(_)) {
                tokens.push(t);
                starts.push(*start);
            }
        }
        starts.push(sql.len());
        Ok(Cursor { tokens, starts, sql: sql.to_string(), pos: 0 })
    }

    /// The source text of tokens `from..to`, as written (comments between them included).
    fn source(&self, from: usize, to: usize) -> &str {
        let end = self.starts[to.min(self.tokens.len())];
        let start = self.starts[from.min(self.tokens.len())].min(end);
        self.sql[start..end].trim()
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    /// Is the next token the (unquoted) keyword `kw`?
    fn peek_kw(&self, kw: &str) -> bool {
        self.peek_kw_at(0, kw)
    }

    fn peek_kw_at(&self, ahead: usize, kw: &str) -> bool {
        matches!(self.tokens.get(self.pos + ahead), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw))
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.peek_kw(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_kws(&mut self, kws: &[&str]) -> bool {
        if kws.iter().enumerate().all(|(i, k)| self.peek_kw_at(i, k)) {
            self.pos += kws.len();
            true
        } else {
            false
        }
    }

    fn eat(&mut self, t: &Token) -> bool {
        if self.peek() == Some(t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, t: &Token) -> Result<()> {
        if self.eat(t) { Ok(()) } else { Err(self.unexpected(&t.to_string())) }
    }

    fn unexpected(&self, wanted: &str) -> Error {
        match self.peek() {
            Some(t) => Error::InvalidSql(format!("expected {wanted}, found '{t}'")),
            None => Error::InvalidSql(format!("expected {wanted}, found end of statement")),
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.tokens.len()
    }

    fn expect_end(&self) -> Result<()> {
        if self.at_end() { Ok(()) } else { Err(self.unexpected("end of statement")) }
    }

    /// An identifier: unquoted ones are lower-cased (as DataFusion does), quoted ones kept.
    fn ident(&mut self) -> Result<String> {
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

    fn table_name(&mut self) -> Result<TableName> {
        let first = self.ident()?;
        if self.eat(&Token::Period) {
            let name = self.ident()?;
            Ok(TableName { namespace: Some(first), name })
        } else {
            Ok(TableName { namespace: None, name: first })
        }
    }
}

/// The first word of a statement, upper-cased, skipping whitespace and comments. Lets the hot
/// path (INSERT, SELECT) go straight to sqlparser without tokenizing twice.
pub fn first_keyword(sql: &str) -> String {
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, after)| after);
        } else {
            break;
        }
    }
    rest.chars().take_while(|c| c.is_ascii_alphabetic()).collect::<String>().to_ascii_uppercase()
}

/// The kind of a statement, from its first keyword: a fixed set of values (a metrics label).
pub fn statement_kind(sql: &str) -> &'static str {
    match first_keyword(sql).as_str() {
        "SELECT" | "WITH" | "VALUES" => "select",
        "INSERT" => "insert",
        "UPDATE" => "update",
        "DELETE" => "delete",
        "CREATE" => "create",
        "DROP" => "drop",
        "ALTER" => "alter",
        "SHOW" | "DESCRIBE" | "DESC" | "EXPLAIN" => "show",
        "FLUSH" | "STORAGE" | "REBUILD" => "storage",
        "SUBSCRIBE" => "subscribe",
        "EXECUTE" => "execute_as",
        _ => "other",
    }
}

/// Parse one statement (no `;`).
pub fn parse_statement(sql: &str) -> Result<Statement> {
    if !matches!(
        first_keyword(sql).as_str(),
        "CREATE"
            | "DROP"
            | "SHOW"
            | "DESCRIBE"
            | "DESC"
            | "FLUSH"
            | "STORAGE"
            | "REBUILD"
            | "ALTER"
            | "EXECUTE"
            | "SUBSCRIBE"
    ) {
        return parse_standard(sql);
    }
    let mut c = Cursor::new(sql)?;
    if let Some(stmt) = parse_user_statement(&mut c)? {
        return Ok(stmt);
    }
    if c.eat_kw("CREATE") {
        if c.eat_kw("NAMESPACE") {
            let if_not_exists = c.eat_kws(&["IF", "NOT", "EXISTS"]);
            let name = c.ident()?;
            c.expect_end()?;
            return Ok(Statement::CreateNamespace { name, if_not_exists });
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
            return parse_create_table(&mut c, table_type).map(Statement::CreateTable);
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
            return Ok(Statement::DropNamespace { name, if_exists, cascade });
        }
        // Table type words are accepted and ignored: a table's name identifies it.
        let _ = c.eat_kw("SHARED") || c.eat_kw("USER") || c.eat_kw("STREAM");
        if c.eat_kw("TABLE") {
            let if_exists = c.eat_kws(&["IF", "EXISTS"]);
            let table = c.table_name()?;
            c.expect_end()?;
            return Ok(Statement::DropTable { table, if_exists });
        }
    } else if c.eat_kw("SHOW") {
        if c.eat_kw("NAMESPACES") {
            c.expect_end()?;
            return Ok(Statement::ShowNamespaces);
        }
        if c.eat_kw("TABLES") {
            let namespace = if c.eat_kw("IN") || c.eat_kw("FROM") { Some(c.ident()?) } else { None };
            c.expect_end()?;
            return Ok(Statement::ShowTables { namespace });
        }
    } else if c.peek_kw("FLUSH") || c.peek_kw("STORAGE") {
        return parse_storage(&mut c);
    } else if c.eat_kw("REBUILD") {
        if !c.eat_kw("PROJECTION") {
            return Err(c.unexpected("PROJECTION"));
        }
        let table = c.table_name()?;
        c.expect_end()?;
        return Ok(Statement::Rebuild { table });
    } else if c.eat_kw("SUBSCRIBE") {
        return parse_subscribe(&mut c);
    } else if c.eat_kw("DESCRIBE") || c.eat_kw("DESC") {
        let _ = c.eat_kw("TABLE");
        let table = c.table_name()?;
        c.expect_end()?;
        return Ok(Statement::DescribeTable { table });
    }
    parse_standard(sql)
}

/// A user name: a quoted string or an identifier (kept as written), 1 to
/// [`USERNAME_BYTES_MAX`] bytes of letters, digits and `_ . @ -`.
fn username(c: &mut Cursor) -> Result<String> {
    let name = match c.next() {
        Some(Token::SingleQuotedString(s)) => s,
        Some(Token::Word(w)) => w.value,
        Some(t) => return Err(Error::InvalidSql(format!("expected a user name, found '{t}'"))),
        None => return Err(Error::InvalidSql("expected a user name, found end of statement".into())),
    };
    let ok_chars = name.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '@' | '-'));
    if name.is_empty() || name.len() > USERNAME_BYTES_MAX || !ok_chars {
        return Err(Error::InvalidSql(format!(
            "a user name is 1 to {USERNAME_BYTES_MAX} letters, digits or '_', '.', '@', '-'"
        )));
    }
    Ok(name)
}

/// A password literal. Errors never echo what was found: it may be the password.
fn password(c: &mut Cursor) -> Result<String> {
    match c.next() {
        Some(Token::SingleQuotedString(s)) => Ok(s),
        _ => Err(Error::InvalidSql("PASSWORD takes a single-quoted string".into())),
    }
}

fn role(c: &mut Cursor) -> Result<Role> {
    let found = match c.next() {
        Some(Token::Word(w)) => w.value,
        Some(Token::SingleQuotedString(s)) => s,
        _ => String::new(),
    };
    Role::parse(&found)
        .ok_or_else(|| Error::InvalidSql(format!("unknown role '{found}': expected user, service, dba or system")))
}

/// CREATE/ALTER/DROP USER and EXECUTE AS USER; `None` when the statement is none of them.
fn parse_user_statement(c: &mut Cursor) -> Result<Option<Statement>> {
    if c.peek_kw("CREATE") && c.peek_kw_at(1, "USER") && !c.peek_kw_at(2, "TABLE") {
        c.pos += 2;
        let if_not_exists = c.eat_kws(&["IF", "NOT", "EXISTS"]);
        let username = username(c)?;
        if !c.eat_kw("WITH") {
            return Err(c.unexpected("WITH PASSWORD"));
        }
        let (mut pw, mut role_given, mut email) = (None, None, None);
        let twice = |what: &str| Err(Error::InvalidSql(format!("CREATE USER: {what} given twice")));
        while !c.at_end() {
            if c.eat_kw("PASSWORD") {
                if pw.is_some() {
                    return twice("PASSWORD");
                }
                pw = Some(password(c)?);
            } else if c.eat_kw("ROLE") {
                if role_given.is_some() {
                    return twice("ROLE");
                }
                role_given = Some(role(c)?);
            } else if c.eat_kw("EMAIL") {
                if email.is_some() {
                    return twice("EMAIL");
                }
                match c.next() {
                    Some(Token::SingleQuotedString(s)) => email = Some(s),
                    _ => return Err(Error::InvalidSql("EMAIL takes a single-quoted string".into())),
                }
            } else {
                // Not `unexpected()`: what follows WITH may be a misplaced password.
                return Err(Error::InvalidSql("CREATE USER ... WITH expects PASSWORD, ROLE or EMAIL".into()));
            }
        }
        let password = pw.ok_or_else(|| Error::InvalidSql("CREATE USER needs WITH PASSWORD '...'".into()))?;
        return Ok(Some(Statement::CreateUser { username, password, role: role_given, email, if_not_exists }));
    }
    if c.peek_kw("ALTER") && c.peek_kw_at(1, "USER") {
        c.pos += 2;
        let username = username(c)?;
        if !c.eat_kw("SET") {
            return Err(c.unexpected("SET PASSWORD or SET ROLE"));
        }
        let change = if c.eat_kw("PASSWORD") {
            UserChange::Password(password(c)?)
        } else if c.eat_kw("ROLE") {
            UserChange::Role(role(c)?)
        } else {
            return Err(c.unexpected("PASSWORD or ROLE"));
        };
        c.expect_end()?;
        return Ok(Some(Statement::AlterUser { username, change }));
    }
    if c.peek_kw("DROP") && c.peek_kw_at(1, "USER") && !c.peek_kw_at(2, "TABLE") {
        c.pos += 2;
        let if_exists = c.eat_kws(&["IF", "EXISTS"]);
        let username = username(c)?;
        c.expect_end()?;
        return Ok(Some(Statement::DropUser { username, if_exists }));
    }
    if c.peek_kw("EXECUTE") {
        if !(c.peek_kw_at(1, "AS") && c.peek_kw_at(2, "USER")) {
            return Err(Error::InvalidSql("expected EXECUTE AS USER 'name' (<statement>)".into()));
        }
        c.pos += 3;
        let username = username(c)?;
        // The inner statement is the text between the first '(' after the name and the
        // statement's final ')', exactly as written.
        let (open, close) = (c.pos, c.tokens.len().checked_sub(1));
        match (c.tokens.get(open), close) {
            (Some(Token::LParen), Some(e)) if c.tokens[e] == Token::RParen && e > open + 1 => {
                let statement = c.source(open + 1, e).to_string();
                if statement.is_empty() {
                    return Err(Error::InvalidSql("EXECUTE AS USER needs a statement in parentheses".into()));
                }
                return Ok(Some(Statement::ExecuteAs { username, statement }));
            }
            _ => return Err(Error::InvalidSql("expected EXECUTE AS USER 'name' (<statement>)".into())),
        }
    }
    Ok(None)
}

/// The SQL text with every string literal that follows `PASSWORD` replaced by `'***'`: what
/// may be logged of a statement.
pub fn redact_passwords(sql: &str) -> String {
    if !sql.to_ascii_uppercase().contains("PASSWORD") {
        return sql.to_string();
    }
    let dialect = GenericDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        return "<statement not logged: it mentions PASSWORD and does not tokenize>".into();
    };
    let mut out = String::with_capacity(sql.len());
    let mut after_password = false;
    for t in &tokens {
        match t {
            Token::Whitespace(_) => {}
            Token::SingleQuotedString(_) if after_password => {
                out.push_str("'***'");
                after_password = false;
                continue;
            }
            Token::Word(w) => after_password = w.value.eq_ignore_ascii_case("PASSWORD"),
            _ => after_password = false,
        }
        out.push_str(&t.to_string());
    }
    out
}

/// Time travel: `FROM t AS OF <log index>` in a SELECT. Returns the statement without the
/// `AS OF` clauses and, per table named before one, its position; `None` when there is none.
pub fn extract_as_of(sql: &str) -> Result<Option<(String, Vec<(TableName, u64)>)>> {
    if !sql.to_ascii_uppercase().contains("OF") {
        return Ok(None);
    }
    let (tokens, starts) = tokens_with_starts(sql)?;
    let significant: Vec<usize> =
        tokens.iter().enumerate().filter(|(_, t)| !matches!(t, Token::Whitespace(_))).map(|(i, _)| i).collect();
    let is_kw = |i: usize, kw: &str| matches!(&tokens[i], Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw));
    let word = |i: usize| match &tokens[i] {
        Token::Word(w) => Some(if w.quote_style.is_some() { w.value.clone() } else { w.value.to_lowercase() }),
        _ => None,
    };
    let mut drop = vec![false; tokens.len()];
    let mut found = Vec::new();
    for (n, &i) in significant.iter().enumerate() {
        if !(is_kw(i, "AS") && significant.get(n + 1).is_some_and(|&j| is_kw(j, "OF"))) {
            continue;
        }
        let Some(&num) = significant.get(n + 2) else {
            return Err(Error::InvalidSql("AS OF needs a log index".into()));
        };
        let Token::Number(text, _) = &tokens[num] else {
            return Err(Error::InvalidSql(format!(
                "AS OF takes a log index (a whole number), found '{}'",
                tokens[num]
            )));
        };
        let at: u64 = text.parse().map_err(|_| Error::InvalidSql(format!("AS OF {text}: not a log index")))?;
        let name = n
            .checked_sub(1)
            .and_then(|p| word(significant[p]))
            .ok_or_else(|| Error::InvalidSql("AS OF must follow a table name".into()))?;
        let namespace = match (n.checked_sub(2), n.checked_sub(3)) {
            (Some(dot), Some(ns)) if tokens[significant[dot]] == Token::Period => word(significant[ns]),
            _ => None,
        };
        found.push((TableName { namespace, name }, at));
        drop[i..=num].fill(true);
    }
    if found.is_empty() {
        return Ok(None);
    }
    // The statement as written, less the `AS OF n` tokens (a space keeps neighbours apart
    // where none was written before them).
    let mut text = String::with_capacity(sql.len());
    for (i, dropped) in drop.iter().enumerate() {
        if *dropped {
            let starts_run = i == 0 || !drop[i - 1];
            if starts_run && (i == 0 || !matches!(tokens[i - 1], Token::Whitespace(_))) {
                text.push(' ');
            }
        } else {
            text.push_str(&sql[starts[i]..starts[i + 1]]);
        }
    }
    Ok(Some((text, found)))
}

fn parse_storage(c: &mut Cursor) -> Result<Statement> {
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

/// Standard SQL through sqlparser's full parser.
fn parse_standard(sql: &str) -> Result<Statement> {
    let dialect = GenericDialect {};
    let mut stmts = Parser::parse_sql(&dialect, sql).map_err(|e| Error::InvalidSql(e.to_string()))?;
    match stmts.len() {
        1 => Ok(Statement::Sql(Box::new(stmts.remove(0)))),
        0 => Err(Error::InvalidSql("empty statement".into())),
        _ => Err(Error::InvalidSql("expected one statement".into())),
    }
}

fn parse_data_type(c: &mut Cursor) -> Result<DataType> {
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

fn parse_default(c: &mut Cursor) -> Result<DefaultExpr> {
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

fn parse_create_table(c: &mut Cursor, table_type: Option<TableType>) -> Result<ParsedCreateTable> {
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
                    break;
                }
            }
            columns.push(col);
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
    let mut options = Vec::new();
    if c.eat_kw("WITH") {
        c.expect(&Token::LParen)?;
        loop {
            let key = match c.next() {
                Some(Token::Word(w)) => w.value.to_ascii_uppercase(),
                _ => return Err(Error::InvalidSql("expected an option name in WITH (...)".into())),
            };
            c.expect(&Token::Eq)?;
            let value = match c.next() {
                Some(Token::SingleQuotedString(s)) | Some(Token::Number(s, _)) => s,
                Some(Token::Word(w)) => w.value,
                _ => return Err(Error::InvalidSql(format!("expected a value for option {key}"))),
            };
            options.push((key, value));
            if c.eat(&Token::Comma) {
                continue;
            }
            c.expect(&Token::RParen)?;
            break;
        }
    }
    c.expect_end()?;
    Ok(ParsedCreateTable { table, table_type, if_not_exists, columns, options })
}

/// After `SUBSCRIBE`: `TO t [WHERE expr] [OPTIONS (k = v, ...)]`.
fn parse_subscribe(c: &mut Cursor) -> Result<Statement> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_kinds_are_a_fixed_set() {
        assert_eq!(statement_kind("select 1"), "select");
        assert_eq!(statement_kind("  INSERT INTO t VALUES (1)"), "insert");
        assert_eq!(statement_kind("-- c\nSUBSCRIBE TO a.b"), "subscribe");
        assert_eq!(statement_kind("frobnicate"), "other");
    }

    #[test]
    fn extracts_as_of() {
        let (sql, found) = extract_as_of("SELECT * FROM app.t AS OF 42 WHERE id > 1").unwrap().unwrap();
        assert_eq!(sql, "SELECT * FROM app.t  WHERE id > 1");
        assert_eq!(found, vec![(TableName { namespace: Some("app".into()), name: "t".into() }, 42)]);
        let (_, found) = extract_as_of("select count(*) from T as of 7").unwrap().unwrap();
        assert_eq!(found, vec![(TableName { namespace: None, name: "t".into() }, 7)]);
        assert!(extract_as_of("SELECT 'as of 3' FROM t").unwrap().is_none(), "inside a string it is text");
        assert!(extract_as_of("SELECT * FROM t AS OF x").is_err());
        assert!(extract_as_of("SELECT * FROM t AS OF -1").is_err());
        assert!(matches!(parse_statement("REBUILD PROJECTION a.b").unwrap(), Statement::Rebuild { .. }));
        assert!(parse_statement("REBUILD a.b").is_err());
    }

    /// Literals with quotes, `;`, comments and doubled quotes stay literals in every text a
    /// statement carries on: the text is cut from the source, never printed from tokens.
    #[test]
    fn carried_text_keeps_literals_as_written() {
        let nasty = [
            "'it''s'",
            "'a'' OR ''1''=''1'",
            "'x''; DROP TABLE app.t; --'",
            "'/* not a comment */'",
            "'-- not a comment'",
            "'é''ü''' ",
        ];
        for lit in nasty {
            let lit = lit.trim();
            let sql = format!("SELECT * FROM app.t AS OF 42 WHERE v = {lit} -- trailing\n");
            let (text, _) = extract_as_of(&sql).unwrap().unwrap();
            assert!(text.contains(&format!("v = {lit}")), "{text}");
            let stmts = Parser::parse_sql(&GenericDialect {}, &text).unwrap();
            assert_eq!(stmts.len(), 1, "{text}");

            let sql = format!("EXECUTE AS USER 'bob' (INSERT INTO app.t (id, v) VALUES (1, {lit}))");
            let Statement::ExecuteAs { statement, .. } = parse_statement(&sql).unwrap() else { panic!("{sql}") };
            assert_eq!(statement, format!("INSERT INTO app.t (id, v) VALUES (1, {lit})"));

            let sql = format!("SUBSCRIBE TO app.t WHERE v = {lit} OPTIONS (last_rows = 3)");
            let Statement::Subscribe { filter, .. } = parse_statement(&sql).unwrap() else { panic!("{sql}") };
            assert_eq!(filter.as_deref(), Some(format!("v = {lit}").as_str()));
        }
        // A long one-line statement (near the 1 MiB SQL cap) is cut in one pass over its text.
        let long = format!("SELECT * FROM t AS OF 3 WHERE v IN ({})", vec!["'é''x'"; 100_000].join(","));
        let (text, _) = extract_as_of(&long).unwrap().unwrap();
        assert_eq!(text, long.replacen("AS OF 3", "", 1));
        // Quoted names keep their quotes and case, and the multi-line form works too.
        let (text, found) =
            extract_as_of("SELECT \"V\" FROM \"App\".\"T x\" AS OF 5\nWHERE \"V\" = 'a''b'").unwrap().unwrap();
        assert_eq!(text, "SELECT \"V\" FROM \"App\".\"T x\" \nWHERE \"V\" = 'a''b'");
        assert_eq!(found, vec![(TableName { namespace: Some("App".into()), name: "T x".into() }, 5)]);
    }

    #[test]
    fn parses_flush_policies() {
        assert_eq!(FlushPolicy::parse("rows:10").unwrap(), FlushPolicy { rows: Some(10), interval_secs: None });
        assert_eq!(
            FlushPolicy::parse("rows:5, interval:60").unwrap(),
            FlushPolicy { rows: Some(5), interval_secs: Some(60) }
        );
        for bad in ["", "rows", "rows:x", "rows:0", "bytes:5", "rows:1,rows:2"] {
            assert!(FlushPolicy::parse(bad).is_err(), "{bad} must fail");
        }
    }

    #[test]
    fn parses_storage_statements() {
        let t = |ns: &str, n: &str| TableName { namespace: Some(ns.into()), name: n.into() };
        let cases = [
            ("FLUSH TABLE a.b", false, StorageTarget::Table(t("a", "b"))),
            ("STORAGE FLUSH TABLE a.b", false, StorageTarget::Table(t("a", "b"))),
            ("flush all tables", false, StorageTarget::All { namespace: None }),
            ("FLUSH ALL TABLES IN ns", false, StorageTarget::All { namespace: Some("ns".into()) }),
            ("STORAGE FLUSH ALL", false, StorageTarget::All { namespace: None }),
            ("STORAGE COMPACT TABLE a.b", true, StorageTarget::Table(t("a", "b"))),
            ("STORAGE COMPACT ALL IN ns", true, StorageTarget::All { namespace: Some("ns".into()) }),
        ];
        for (sql, compact, target) in cases {
            match parse_statement(sql).unwrap() {
                Statement::Storage { compact: c, target: got } => {
                    assert_eq!((c, got), (compact, target), "{sql}");
                }
                other => panic!("{sql}: {other:?}"),
            }
        }
        for bad in ["FLUSH ALL", "FLUSH TABLE", "STORAGE PURGE TABLE a.b", "FLUSH TABLE a.b extra", "COMPACT TABLE a"] {
            assert!(parse_statement(bad).is_err(), "{bad} must fail");
        }
    }

    #[test]
    fn splits_respecting_quotes_and_comments() {
        let s = split_statements("SELECT 'a;b'; -- c;\nSELECT \"x;\" /* ; */ ;;").unwrap();
        assert_eq!(s, vec!["SELECT 'a;b'".to_string(), "-- c;\nSELECT \"x;\" /* ; */".to_string()]);
        assert!(split_statements("SELECT 'oops").is_err());
        assert!(split_statements("  ;  ").unwrap().is_empty());
    }

    #[test]
    fn parses_create_table_with_type_option() {
        let st = parse_statement(
            "CREATE TABLE test_cluster.items (id BIGINT PRIMARY KEY, name TEXT NOT NULL DEFAULT 'x') WITH (TYPE = 'SHARED')",
        )
        .unwrap();
        let Statement::CreateTable(t) = st else { panic!("not a create table") };
        assert_eq!(t.table, TableName { namespace: Some("test_cluster".into()), name: "items".into() });
        assert_eq!(t.columns.len(), 2);
        assert!(t.columns[0].primary_key);
        assert!(t.columns[1].not_null);
        assert_eq!(t.columns[1].default, Some(DefaultExpr::Literal(Value::Text("x".into()))));
        assert_eq!(t.options, vec![("TYPE".to_string(), "SHARED".to_string())]);
    }

    #[test]
    fn parses_own_statements() {
        assert!(matches!(parse_statement("create namespace if not exists App").unwrap(),
            Statement::CreateNamespace { name, if_not_exists: true } if name == "app"));
        assert!(matches!(
            parse_statement("DROP NAMESPACE x CASCADE").unwrap(),
            Statement::DropNamespace { cascade: true, .. }
        ));
        assert!(matches!(parse_statement("SHOW TABLES IN app").unwrap(), Statement::ShowTables { namespace: Some(_) }));
        assert!(matches!(parse_statement("SELECT 1").unwrap(), Statement::Sql(_)));
        assert!(parse_statement("CREATE TABLE t (a WEIRDTYPE)").is_err());
        assert!(parse_statement("CREATE NAMESPACE").is_err());
        assert_eq!(first_keyword("  -- c\n /* x */ select 1"), "SELECT");
        assert_eq!(first_keyword("/* unterminated"), "");
    }

    #[test]
    fn parses_user_statements() {
        match parse_statement("CREATE USER 'alice' WITH PASSWORD 's3cret-pw' ROLE dba EMAIL 'a@x.io'").unwrap() {
            Statement::CreateUser { username, password, role, email, if_not_exists: false } => {
                assert_eq!((username.as_str(), password.as_str()), ("alice", "s3cret-pw"));
                assert_eq!((role, email.as_deref()), (Some(Role::Dba), Some("a@x.io")));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_statement("create user if not exists bob with role service password 'pw123456'").unwrap(),
            Statement::CreateUser { role: Some(Role::Service), if_not_exists: true, .. }
        ));
        assert!(matches!(
            parse_statement("ALTER USER 'alice' SET ROLE user").unwrap(),
            Statement::AlterUser { change: UserChange::Role(Role::User), .. }
        ));
        assert!(matches!(
            parse_statement("ALTER USER alice SET PASSWORD 'n3w-password'").unwrap(),
            Statement::AlterUser { change: UserChange::Password(p), .. } if p == "n3w-password"
        ));
        assert!(matches!(
            parse_statement("DROP USER IF EXISTS 'alice'").unwrap(),
            Statement::DropUser { if_exists: true, .. }
        ));
        match parse_statement("EXECUTE AS USER 'bob' (SELECT * FROM app.t WHERE (id > 1))").unwrap() {
            Statement::ExecuteAs { username, statement } => {
                assert_eq!(username, "bob");
                assert_eq!(statement, "SELECT * FROM app.t WHERE (id > 1)");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_statement("EXECUTE AS USER 'bob' SELECT 1").is_err());
        assert!(parse_statement("CREATE USER 'x y' WITH PASSWORD 'p'").is_err());
        assert!(parse_statement("CREATE USER 'alice' WITH ROLE dba").is_err(), "password required");
        assert!(parse_statement("CREATE USER 'alice' WITH PASSWORD 'p' ROLE king").is_err());
        // A misplaced password is never echoed back in the error.
        let e = parse_statement("CREATE USER 'alice' WITH 'hunter2-secret'").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        let e = parse_statement("CREATE USER 'alice' WITH PASSWORD hunter2secret").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        // CREATE USER TABLE is still a table.
        assert!(matches!(
            parse_statement("CREATE USER TABLE app.n (id BIGINT PRIMARY KEY)").unwrap(),
            Statement::CreateTable(_)
        ));
    }

    #[test]
    fn redacts_passwords_for_logs() {
        let r = redact_passwords("CREATE USER 'a' WITH PASSWORD 'hunter2-secret' ROLE dba");
        assert!(!r.contains("hunter2") && r.contains("'***'") && r.contains("ROLE dba"), "{r}");
        assert_eq!(redact_passwords("SELECT 1"), "SELECT 1");
    }
}
