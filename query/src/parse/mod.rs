//! SQL text to typed statements, parsed once: a request is tokenized once and cut into
//! statements ([`source`]); KalamDB's own statements are parsed from those tokens ([`ddl`],
//! [`users`]), everything else (SELECT, INSERT, UPDATE, DELETE) by sqlparser's full parser fed
//! the same tokens ([`query`]). Nothing downstream reads SQL text again. A request that is one
//! INSERT of plain literal rows is read straight from its text instead ([`scan`]), without
//! tokens: the bulk write path.

mod cluster;
mod ddl;
mod insert;
#[cfg(test)]
mod insert_gen;
mod query;
mod scan;
mod source;
#[cfg(test)]
mod tests;
mod users;

use datafusion::sql::sqlparser::ast;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};
use kalamdb_log::{DataType, DefaultExpr, Role, TableType};

pub use query::{PointKey, PointSelect};
pub use scan::{ValuesInsert, scan_values_insert};
pub use source::{Source, split_request};

use crate::error::{Error, Result};
use source::Cursor;

/// Longest SQL text one request may carry.
pub const SQL_BYTES_MAX: usize = 1 << 20;
/// Most statements one request may carry.
pub const STATEMENTS_MAX: usize = 1000;
/// Longest identifier (namespace, table, column name).
pub const IDENT_BYTES_MAX: usize = 128;
/// Longest user name.
pub const USERNAME_BYTES_MAX: usize = 64;

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

/// One parsed statement and its kind (a fixed set of labels, for metrics).
#[derive(Debug, Clone)]
pub struct Parsed {
    pub kind: &'static str,
    pub statement: Statement,
}

#[derive(Debug, Clone)]
pub enum Statement {
    /// A request that is one INSERT of plain literal rows, read straight from its text
    /// ([`scan_values_insert`]).
    InsertValues(Box<ValuesInsert>),
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
    /// `DESCRIBE [TABLE] t [HISTORY]`: the columns, or the schema versions.
    DescribeTable {
        table: TableName,
        history: bool,
    },
    /// `ALTER TABLE t ...`.
    AlterTable {
        table: TableName,
        action: AlterAction,
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
    /// `EXECUTE AS USER 'name' (<statement>)`: run one statement as another user. The inner
    /// statement is parsed with the outer one, from the same tokens.
    ExecuteAs {
        username: String,
        statement: Box<Parsed>,
    },
    /// `SUBSCRIBE TO t [WHERE expr] [OPTIONS (last_rows = N, from = 'position')]`: answered
    /// with the tail endpoint's URL for that subscription.
    Subscribe {
        table: TableName,
        /// The filter's SQL text as written (it travels on in the tail URL); the engine checks
        /// it against the table.
        filter: Option<String>,
        last_rows: Option<u64>,
        from: Option<String>,
    },
    /// `BACKUP DATABASE TO '<destination>'`: a backup of the whole database, run by the node.
    Backup {
        destination: String,
    },
    /// `CLUSTER ...`: a leadership move the node carries out.
    Cluster(ClusterCommand),
    /// `BEGIN [TRANSACTION | WORK]` / `START TRANSACTION`: the request's writes up to `COMMIT`
    /// apply all or nothing.
    Begin,
    /// `COMMIT [TRANSACTION | WORK]` / `END`.
    Commit,
    /// `ROLLBACK [TRANSACTION | WORK]`.
    Rollback,
    /// `SELECT ... FROM t WHERE pk = literal`, recognized from tokens; `rest` holds the
    /// statement's tokens for the general path when the lookup cannot answer it.
    PointSelect {
        point: PointSelect,
        rest: Unparsed,
    },
    /// A SELECT with `AS OF <log index>` after table names: the query without those clauses
    /// and, per table, its position.
    AsOf {
        query: Box<ast::Statement>,
        positions: Vec<(TableName, u64)>,
    },
    /// Standard SQL handled through sqlparser's AST.
    Sql(Box<ast::Statement>),
}

/// A statement's tokens not yet given to sqlparser: parsed only if a faster path declines.
#[derive(Debug, Clone)]
pub struct Unparsed(Vec<TokenWithSpan>);

impl Unparsed {
    pub fn parse(self) -> Result<ast::Statement> {
        query::parse_standard(self.0)
    }
}

/// What `ALTER TABLE` changes.
#[derive(Debug, Clone, PartialEq)]
pub enum AlterAction {
    /// `SET ACCESS_LEVEL x` or `SET (KEY = value, ...)`: keys upper-cased.
    SetOptions(Vec<(String, String)>),
    /// `ALTER [COLUMN] c SET DEFAULT expr` (`Some`) or `DROP DEFAULT` (`None`).
    SetDefault { column: String, default: Option<DefaultExpr> },
    /// `RENAME [COLUMN] a TO b`.
    RenameColumn { from: String, to: String },
    /// `ADD [COLUMN] c TYPE [NOT NULL] [DEFAULT expr]`.
    AddColumn(ParsedColumn),
    /// `DROP [COLUMN] c`.
    DropColumn(String),
    /// `ALTER [COLUMN] c TYPE t` / `SET DATA TYPE t`.
    SetType { column: String, data_type: DataType },
    /// `ALTER [COLUMN] c DROP NOT NULL`.
    DropNotNull(String),
    /// `ALTER [COLUMN] c SET NOT NULL`.
    SetNotNull(String),
}

/// What a `CLUSTER` statement asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterCommand {
    /// Add a running node to every group: a learner until it holds the log, then a voter.
    Join { node: u64, raft_addr: String, http_addr: String },
    /// Take a node out of every group.
    RemoveNode { node: u64 },
    /// Make node `to` the leader of `group`, or of every group.
    TransferLeader { group: Option<kalamdb_log::GroupId>, to: u64 },
    /// The node that runs the statement hands every group it leads to another voter.
    StepDown,
    /// Move leaderships until no node leads two more groups than another.
    Rebalance,
}

/// What `ALTER USER` changes.
#[derive(Debug, Clone, PartialEq)]
pub enum UserChange {
    Password(String),
    Role(Role),
}

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

/// The kind of a statement, from its first keyword: a fixed set of values (a metrics label).
fn kind_of(first: &str) -> &'static str {
    match first {
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
        "BACKUP" => "backup",
        "CLUSTER" => "cluster",
        "EXECUTE" => "execute_as",
        "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" => "transaction",
        _ => "other",
    }
}

/// Parse one statement of a request, from its tokens.
pub fn parse(src: Source<'_>) -> Result<Parsed> {
    let c = Cursor::new(&src);
    let first = match c.peek() {
        Some(Token::Word(w)) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
        _ => String::new(),
    };
    let kind = kind_of(&first);
    let statement = match first.as_str() {
        "CREATE" | "DROP" | "SHOW" | "DESCRIBE" | "DESC" | "FLUSH" | "STORAGE" | "REBUILD" | "ALTER" | "SUBSCRIBE"
        | "BACKUP" | "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" => {
            let mut c = c;
            match ddl::parse_own(&mut c)? {
                Some(stmt) => stmt,
                None => query::parse_query(src, &first)?,
            }
        }
        "EXECUTE" => users::parse_execute_as(&mut { c })?,
        "CLUSTER" => {
            let mut c = c;
            c.pos += 1;
            cluster::parse_cluster(&mut c)?
        }
        "INSERT" => match insert::values_insert(&src) {
            Some(insert) => Statement::Sql(Box::new(insert)),
            None => query::parse_query(src, &first)?,
        },
        "SELECT" => match query::point_select(&c) {
            Some(point) => Statement::PointSelect { point, rest: Unparsed(src.tokens) },
            None => query::parse_query(src, &first)?,
        },
        _ => query::parse_query(src, &first)?,
    };
    Ok(Parsed { kind, statement })
}

/// Parse a text holding exactly one statement.
pub fn parse_statement(sql: &str) -> Result<Statement> {
    let mut sources = split_request(sql)?;
    match sources.len() {
        1 => parse(sources.remove(0)).map(|p| p.statement),
        0 => Err(Error::InvalidSql("empty statement".into())),
        _ => Err(Error::InvalidSql("expected one statement".into())),
    }
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
