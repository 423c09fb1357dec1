//! The commands every write becomes. A log entry carries one [`LogCommand`]: a batch of
//! [`Op`]s gathered by group commit, each with its own [`OpResult`] once applied.
//!
//! Everything here is plain data that both rkyv (log and wire format) and serde (openraft's
//! bounds) can encode. Anything non-deterministic (generated ids, timestamps, password hashes)
//! is computed before a command enters the log, so apply is a pure function of the log.

use rkyv::{Archive, Deserialize as RDeserialize, Serialize as RSerialize};
use serde::{Deserialize, Serialize};

/// A single SQL value as stored in rows and carried by commands.
#[derive(Archive, RSerialize, RDeserialize, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Boolean(bool),
    SmallInt(i16),
    Int(i32),
    BigInt(i64),
    Float(f32),
    Double(f64),
    Text(String),
    Bytes(Vec<u8>),
    /// Microseconds since the Unix epoch, UTC.
    Timestamp(i64),
    /// Days since the Unix epoch.
    Date(i32),
    /// JSON text, validated before it enters the log.
    Json(String),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

/// Column types. The names are the ones the HTTP API reports in `schema[].data_type`.
#[derive(Archive, RSerialize, RDeserialize, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Boolean,
    SmallInt,
    Int,
    BigInt,
    Float,
    Double,
    Text,
    Bytes,
    Timestamp,
    Date,
    Json,
}

impl DataType {
    /// Whether every value of `self` is a value of `to` (a lossless widening): SMALLINT → INT →
    /// BIGINT, FLOAT → DOUBLE. The only type changes `ALTER TABLE` allows.
    pub fn widens_to(self, to: DataType) -> bool {
        use DataType as D;
        matches!((self, to), (D::SmallInt, D::Int | D::BigInt) | (D::Int, D::BigInt) | (D::Float, D::Double))
    }

    pub fn api_name(self) -> &'static str {
        match self {
            DataType::Boolean => "Boolean",
            DataType::SmallInt => "SmallInt",
            DataType::Int => "Int",
            DataType::BigInt => "BigInt",
            DataType::Float => "Float",
            DataType::Double => "Double",
            DataType::Text => "Text",
            DataType::Bytes => "Bytes",
            DataType::Timestamp => "Timestamp",
            DataType::Date => "Date",
            DataType::Json => "Json",
        }
    }
}

#[derive(Archive, RSerialize, RDeserialize, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableType {
    Shared,
    User,
    Stream,
}

impl TableType {
    pub fn api_name(self) -> &'static str {
        match self {
            TableType::Shared => "SHARED",
            TableType::User => "USER",
            TableType::Stream => "STREAM",
        }
    }
}

/// What a user may do. Ordered by power: each role may do everything the ones before it may.
#[derive(
    Archive, RSerialize, RDeserialize, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum Role {
    /// Reads and writes its own rows of USER tables, reads PUBLIC shared tables.
    User,
    /// Applications: also writes PUBLIC shared tables, reads and writes PRIVATE/RESTRICTED
    /// ones, and may `EXECUTE AS USER`.
    Service,
    /// Administrators: also DDL, storage jobs and user management.
    Dba,
    /// Everything, including creating and changing other `system` users.
    System,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::User, Role::Service, Role::Dba, Role::System];

    pub fn name(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Service => "service",
            Role::Dba => "dba",
            Role::System => "system",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name().eq_ignore_ascii_case(s.trim()))
    }
}

/// A user as the users meta group stores it. The password arrives already hashed (argon2id,
/// computed by the proposing node), so apply never sees a password.
#[derive(Archive, RSerialize, RDeserialize, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct UserDef {
    /// Stable id (the scope of the user's rows in USER tables); never reused.
    pub user_id: String,
    pub username: String,
    /// PHC string of the argon2id hash.
    pub password_hash: String,
    pub role: Role,
    pub email: Option<String>,
    pub created_at_micros: i64,
    pub updated_at_micros: i64,
}

/// A column default. Evaluated by the proposing node, never during apply.
#[derive(Archive, RSerialize, RDeserialize, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum DefaultExpr {
    Literal(Value),
    SnowflakeId,
    Now,
}

#[derive(Archive, RSerialize, RDeserialize, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ColumnDef {
    pub name: String,
    pub data_type: DataType,
    pub nullable: bool,
    pub primary_key: bool,
    pub default: Option<DefaultExpr>,
    /// The column's name in Parquet files and their statistics, when it differs from `name`
    /// (after a `RENAME COLUMN`); empty otherwise. Files are never rewritten for a rename, so
    /// this name stays for the life of the column.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stored_as: String,
    /// For a column added by `ALTER TABLE ... ADD COLUMN`: the value rows written before it
    /// existed read (its default when it was added, else NULL). Files and rows of that time
    /// are never rewritten for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<Value>,
    /// Dropped by `ALTER TABLE ... DROP COLUMN`: no statement sees it again (its name is free),
    /// but it keeps its place in stored rows and files, which are never rewritten for a drop.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dropped: bool,
}

impl ColumnDef {
    /// The column's name in storage (Parquet files, file statistics).
    pub fn storage_name(&self) -> &str {
        if self.stored_as.is_empty() { &self.name } else { &self.stored_as }
    }
}

#[derive(Archive, RSerialize, RDeserialize, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TableDef {
    /// Assigned by the catalog projection when the entry is applied; 0 inside a command.
    pub table_id: u64,
    pub namespace: String,
    pub name: String,
    pub table_type: TableType,
    pub columns: Vec<ColumnDef>,
    /// `WITH (...)` options other than TYPE, upper-cased keys, in statement order.
    pub options: Vec<(String, String)>,
    pub created_at_micros: i64,
    /// The table's schema versions, oldest first: version 1 is its creation. Set by the
    /// catalog projection when it applies CREATE and ALTER TABLE; empty inside a command.
    #[serde(default)]
    pub versions: Vec<SchemaVersion>,
}

/// One version of a table's definition: which change made it, at which log index of the
/// catalog group.
#[derive(Archive, RSerialize, RDeserialize, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SchemaVersion {
    pub version: u32,
    pub log_index: u64,
    /// The change, for people: `CREATE TABLE`, `SET (FLUSH_POLICY = 'rows:10')`, ...
    pub change: String,
    pub at_micros: i64,
    /// The column this change altered, as it was before (`AS OF` reads the past through it).
    /// `None` for changes that leave every column as it was (table options).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior: Option<PriorColumn>,
}

/// A column before a schema change: what undoing the change restores.
#[derive(Archive, RSerialize, RDeserialize, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PriorColumn {
    /// The column's position in stored rows.
    pub slot: u32,
    /// The column before the change; `None` when the change added it.
    pub column: Option<ColumnDef>,
}

/// What one `ALTER TABLE` changes.
#[derive(Archive, RSerialize, RDeserialize, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum TableChange {
    /// Set table options (upper-cased keys), replacing a key's earlier value.
    SetOptions { options: Vec<(String, String)> },
    /// Set (`Some`) or drop (`None`) a column's default.
    SetDefault { column: String, default: Option<DefaultExpr> },
    /// Rename a column; its storage name stays.
    RenameColumn { from: String, to: String },
    /// Append a column (its storage name unused by any column of the table).
    AddColumn { column: ColumnDef },
    /// Drop a column (not the primary key): hidden for good, its data left in place.
    DropColumn { column: String },
    /// Widen a column's type (see [`DataType::widens_to`]); stored values are read widened.
    SetType { column: String, data_type: DataType },
    /// Let a column hold NULL from now on (`DROP NOT NULL`).
    DropNotNull { column: String },
    /// Refuse NULL in a column from now on (`SET NOT NULL`). Proposed only after every data
    /// group holding the table fenced the column and found no NULL in it.
    SetNotNull { column: String },
    /// Change nothing but the schema version: a writer proposes it when a change raised the
    /// table's schema floor in a data group (`Op::SchemaFloor`) and never committed here, so
    /// writes planned on the current version are refused until a newer one exists.
    Bump,
}

impl TableDef {
    /// Index of the primary-key column. Every table has exactly one (generated if not declared).
    pub fn pk_index(&self) -> usize {
        let idx = self.columns.iter().position(|c| c.primary_key);
        idx.expect("table without primary key column: the planner always adds one")
    }

    /// The position (in stored rows) of the column statements know as `name`.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| !c.dropped && c.name == name)
    }

    /// The columns statements see, with their positions in stored rows.
    pub fn visible_columns(&self) -> impl Iterator<Item = (usize, &ColumnDef)> {
        self.columns.iter().enumerate().filter(|(_, c)| !c.dropped)
    }

    /// The current schema version: what a write planned on this definition carries, and what
    /// a data group's schema floor is compared with (see `Op::SchemaFloor`).
    pub fn schema_version(&self) -> u32 {
        self.versions.last().map_or(1, |v| v.version)
    }

    /// The version in effect at `micros` (a log entry's commit time): the newest made at or
    /// before it; version 1 (creation) for anything earlier.
    pub fn version_at(&self, micros: i64) -> u32 {
        self.versions.iter().filter(|v| v.at_micros <= micros).map(|v| v.version).max().unwrap_or(1)
    }

    /// The table as schema `version` defined it: the columns' names, defaults, nullability,
    /// and which existed and were dropped then, found by undoing the later changes. Types
    /// stay today's: a column's type only ever widens, and every stored value reads widened.
    pub fn at_version(&self, version: u32) -> TableDef {
        let mut def = self.clone();
        for v in self.versions.iter().rev().take_while(|v| v.version > version) {
            let Some(prior) = &v.prior else { continue };
            let slot = prior.slot as usize;
            match &prior.column {
                // Columns are only ever appended, so the one a change added is the last slot
                // once every later change is undone.
                None => def.columns.truncate(slot),
                Some(before) if slot < def.columns.len() => {
                    let data_type = def.columns[slot].data_type;
                    def.columns[slot] = ColumnDef { data_type, ..before.clone() };
                }
                Some(_) => {}
            }
        }
        def.versions.retain(|v| v.version <= version);
        def
    }
}

/// One row write inside an Insert or Update.
#[derive(Archive, RSerialize, RDeserialize, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RowWrite {
    pub pk: Value,
    /// All column values, in table column order.
    pub values: Vec<Value>,
    /// For updates and deletes: the `_seq` the row had when the statement read it. Apply
    /// rejects the whole op with `Conflict` if the row changed since (optimistic concurrency).
    pub expected_seq: Option<u64>,
}

/// What the rows of a [`TxWrite`] do.
#[derive(Archive, RSerialize, RDeserialize, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// New rows: no live row may hold the key.
    Insert,
    /// New versions of rows that must still be at their `expected_seq`.
    Update,
    /// Tombstones for rows that must still be at their `expected_seq`.
    Delete,
}

/// One table scope's rows in an [`Op::Transaction`].
#[derive(Archive, RSerialize, RDeserialize, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TxWrite {
    pub kind: WriteKind,
    pub table_id: u64,
    pub scope: String,
    pub rows: Vec<RowWrite>,
    /// The table's schema version the statement was planned on (see `Op::SchemaFloor`).
    pub schema_version: u32,
}

#[derive(Archive, RSerialize, RDeserialize, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Op {
    CreateNamespace {
        name: String,
        if_not_exists: bool,
        created_at_micros: i64,
    },
    /// With `cascade`, `expected` names every table of the namespace with the schema version
    /// the proposer saw (and raised the data groups' floors past): apply refuses the drop with
    /// `Conflict` if the namespace's tables differ, so no write planned on a version it did
    /// not fence can land after the drop.
    DropNamespace {
        name: String,
        if_exists: bool,
        cascade: bool,
        expected: Vec<(u64, u32)>,
    },
    CreateTable {
        table: TableDef,
        if_not_exists: bool,
    },
    /// Drop a table; apply refuses with `Conflict` unless its schema version is still
    /// `expected_version`, the one whose floors the proposer raised (0: the proposer found no
    /// table, so a table created since is not dropped).
    DropTable {
        namespace: String,
        name: String,
        if_exists: bool,
        expected_version: u32,
    },
    /// Change a table's definition (catalog group); `description` is what its new schema
    /// version records. Apply refuses with `Conflict` unless the table is still at
    /// `expected_version`: the proposer raised the data groups' floors to the version after it.
    AlterTable {
        namespace: String,
        name: String,
        change: TableChange,
        description: String,
        altered_at_micros: i64,
        expected_version: u32,
    },
    /// Insert new rows; fails whole if any primary key already holds a live row.
    /// `schema_version`: the table's version the statement was planned on.
    Insert {
        table_id: u64,
        scope: String,
        rows: Vec<RowWrite>,
        schema_version: u32,
    },
    /// Replace existing rows (each with its expected `_seq`).
    Update {
        table_id: u64,
        scope: String,
        rows: Vec<RowWrite>,
        schema_version: u32,
    },
    /// Tombstone existing rows (each with its expected `_seq`).
    Delete {
        table_id: u64,
        scope: String,
        rows: Vec<RowWrite>,
        schema_version: u32,
    },
    /// Raise the table's schema floor in this data group to `version` (never lowers it):
    /// from this entry on, row ops planned on an older version of the table fail with
    /// `StaleSchema`. A DDL statement proposes it to every data group holding the table
    /// before the catalog commits the change (or the drop), so a write planned on a catalog
    /// replica that has not applied the change yet cannot land after it: writes need no
    /// catalog read barrier.
    SchemaFloor {
        table_id: u64,
        version: u32,
    },
    /// A `BEGIN ... COMMIT` batch: every write applies, or none does. Each key appears at most
    /// once across the writes (the batch's net effect on that row); apply checks every
    /// precondition before it writes anything and fails the whole op on the first that does
    /// not hold.
    Transaction {
        writes: Vec<TxWrite>,
    },
    /// Remove every row of a dropped table from this group's projection.
    PurgeTable {
        table_id: u64,
    },
    /// Write the table's hot rows (every version in RocksDB up to this entry) into Parquet
    /// files. The rows stay in RocksDB, *flushed but not settled*, until `Settle` ops replace
    /// them by key stubs a bounded number at a time (a flush's apply does not grow with a
    /// per-row RocksDB write). `scope` limits it to one user's rows; `None` flushes every scope
    /// the group holds. The definition travels in the op because apply never reads another
    /// group's state (the catalog lives in a meta group).
    Flush {
        table: TableDef,
        scope: Option<String>,
    },
    /// Merge the table's Parquet files per scope, dropping superseded versions and tombstones.
    Compact {
        table: TableDef,
        scope: Option<String>,
    },
    /// Re-derive the table's projection in this group from its files and the retained log
    /// (admin). Changes nothing on a correct projection.
    Rebuild {
        table: TableDef,
    },
    /// Delete the files retired (by a compaction or a dropped table) at or before log index
    /// `upto`: their records and their bytes. The group's leader proposes it only once every
    /// member has applied past `upto`, so no member can still need them (to apply the entry
    /// that retired them, or to read them); with one storage folder shared by every node, the
    /// first node to apply it unlinks for all.
    DeleteRetired {
        upto: u64,
    },
    /// Fence a column against NULL in this group (`required`), or lift the fence. Fencing
    /// first checks every live row of the table here, hot and cold, and fails if one holds
    /// NULL in the column; once fenced, every write that would store NULL there fails. This
    /// is what makes `SET NOT NULL` race-free: the check and the writes are ordered by this
    /// group's log. `slot` is the column's position in stored rows.
    RequireNotNull {
        table: TableDef,
        slot: u32,
        required: bool,
    },
    /// Add a user (users meta group).
    CreateUser {
        user: UserDef,
        if_not_exists: bool,
    },
    /// Change a user's password hash and/or role.
    AlterUser {
        username: String,
        password_hash: Option<String>,
        role: Option<Role>,
        updated_at_micros: i64,
    },
    DropUser {
        username: String,
        if_exists: bool,
    },
    /// Expire rows of a STREAM table in this group: every row whose `_seq` is below
    /// `before_seq` (written by an entry older than the table's TTL). The proposer turns the
    /// TTL into a log position before the log, so apply needs no clock.
    Evict {
        table_id: u64,
        before_seq: u64,
    },
    /// Revoke a token id (users group): a refresh token used once (rotation), or a session
    /// ended by logout; tokens naming it are refused from then on. Fails with `Conflict` when
    /// the id is already revoked (a refresh token presented twice). Records past
    /// `expires_at_secs` are dropped by later revocations whose `now_secs` (the proposer's
    /// clock, carried so apply needs none) passed it: the tokens they guard expired anyway.
    RevokeToken {
        token_id: String,
        user_id: String,
        expires_at_secs: u64,
        now_secs: u64,
    },
    /// Replace up to a bounded number of one scope's flushed hot rows (see `Flush`) by key
    /// stubs, continuing where the scope's last `Settle` stopped. Changes no row anyone reads:
    /// a flushed hot row and its stub answer the same. The group's leader proposes these after
    /// a flush until the scope is settled.
    Settle {
        table_id: u64,
        scope: String,
    },
    /// Raise the group's apply format to `format` (never lowers it): from this entry on, every
    /// member applies the group's later entries the way that format says (see
    /// `kalamdb_projections::format`). The group's leader proposes it only once every member
    /// says it applies `format`, so no member meets an entry it cannot apply; a build that
    /// applies less stops the group rather than diverge.
    SetFormat {
        format: u32,
    },
    /// Start writing the table's next whole flush off apply: each member takes a read view of
    /// the table as of this entry and writes the Parquet files of its hot rows in the
    /// background, under temporary names. Changes no state; a member that skips it (restarted,
    /// or too many preparations at once) writes the same files inside the `FlushUpto` that
    /// follows. The group's leader proposes it only from apply format 4 on.
    PrepareFlush {
        table: TableDef,
    },
    /// Flush the table's hot rows written before log index `upto` (a `PrepareFlush` entry's):
    /// what `Flush` at that index would have flushed, less the rows written over since. A
    /// member whose preparation of `upto` holds exactly those rows names its files; any other
    /// writes them here, the same bytes. Rows written from `upto` on stay hot.
    FlushUpto {
        table: TableDef,
        upto: u64,
    },
}

impl Op {
    /// A short name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::CreateNamespace { .. } => "create_namespace",
            Op::DropNamespace { .. } => "drop_namespace",
            Op::CreateTable { .. } => "create_table",
            Op::DropTable { .. } => "drop_table",
            Op::AlterTable { .. } => "alter_table",
            Op::Insert { .. } => "insert",
            Op::Update { .. } => "update",
            Op::Delete { .. } => "delete",
            Op::SchemaFloor { .. } => "schema_floor",
            Op::Transaction { .. } => "transaction",
            Op::PurgeTable { .. } => "purge_table",
            Op::Flush { .. } => "flush",
            Op::Compact { .. } => "compact",
            Op::Rebuild { .. } => "rebuild",
            Op::RequireNotNull { .. } => "require_not_null",
            Op::DeleteRetired { .. } => "delete_retired",
            Op::CreateUser { .. } => "create_user",
            Op::AlterUser { .. } => "alter_user",
            Op::DropUser { .. } => "drop_user",
            Op::Evict { .. } => "evict",
            Op::RevokeToken { .. } => "revoke_token",
            Op::Settle { .. } => "settle",
            Op::SetFormat { .. } => "set_format",
            Op::PrepareFlush { .. } => "prepare_flush",
            Op::FlushUpto { .. } => "flush_upto",
        }
    }

    /// Ops that rewrite cold storage (or read all of a table's rows, hot and cold) are applied
    /// in a write batch of their own, so they see (and their files agree with) everything
    /// applied before them.
    pub fn is_storage_job(&self) -> bool {
        matches!(
            self,
            Op::Flush { .. }
                | Op::PrepareFlush { .. }
                | Op::FlushUpto { .. }
                | Op::Compact { .. }
                | Op::Rebuild { .. }
                | Op::RequireNotNull { .. }
                | Op::DeleteRetired { .. }
                | Op::Settle { .. }
        )
    }
}

/// The payload of one log entry: one or more ops, applied in order, each independently
/// (a failed op changes nothing and does not stop the ops after it).
#[derive(Archive, RSerialize, RDeserialize, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct LogCommand {
    pub ops: Vec<Op>,
    /// The leader's wall clock when it proposed the entry (microseconds since the epoch). Only
    /// reported (tail events' commit timestamp) and turned into log positions by proposers
    /// (STREAM table TTL); apply never compares it with a clock.
    pub committed_at_micros: i64,
}

/// This node's wall clock in microseconds since the epoch, the unit of commit stamps.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

impl LogCommand {
    /// A command stamped with this node's clock.
    pub fn now(ops: Vec<Op>) -> LogCommand {
        LogCommand { ops, committed_at_micros: now_micros() }
    }
}

impl std::fmt::Display for LogCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogCommand({} ops)", self.ops.len())
    }
}

/// The payload of a normal log entry as it is proposed, stored, sent and received: the rkyv
/// archive of a [`LogCommand`], encoded once by the proposer. The log writes these bytes, the
/// transport sends them and hands the receiver a slice of the frame it arrived in, so a
/// payload is never re-serialized between proposal and apply.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedCommand(bytes::Bytes);

impl EncodedCommand {
    pub fn encode(cmd: &LogCommand) -> crate::error::Result<Self> {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(cmd).map_err(|e| crate::Error::Codec(e.to_string()))?;
        Ok(EncodedCommand(bytes::Bytes::from(bytes.into_vec())))
    }

    /// Wrap bytes from an untrusted source, after checking they are a valid archive.
    pub fn validated(bytes: bytes::Bytes) -> crate::error::Result<Self> {
        rkyv::access::<ArchivedLogCommand, rkyv::rancor::Error>(&bytes)
            .map_err(|e| crate::Error::Codec(format!("invalid command archive: {e}")))?;
        Ok(EncodedCommand(bytes))
    }

    /// Wrap bytes this node wrote itself (its own log); [`EncodedCommand::decode`] still
    /// validates before anything is read.
    pub fn trusted(bytes: bytes::Bytes) -> Self {
        EncodedCommand(bytes)
    }

    pub fn bytes(&self) -> &bytes::Bytes {
        &self.0
    }

    /// Validate and deserialize the command for apply.
    pub fn decode(&self) -> crate::error::Result<LogCommand> {
        rkyv::from_bytes::<LogCommand, rkyv::rancor::Error>(&self.0).map_err(|e| crate::Error::Codec(e.to_string()))
    }
}

impl std::fmt::Debug for EncodedCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncodedCommand({} bytes)", self.0.len())
    }
}

impl std::fmt::Display for EncodedCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

// openraft requires serde on the payload type; it never uses it on our paths (log and wire
// use the bytes directly), but it must round-trip and validate all the same.
impl Serialize for EncodedCommand {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for EncodedCommand {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Vec::<u8>::deserialize(d)?;
        EncodedCommand::validated(bytes::Bytes::from(v)).map_err(serde::de::Error::custom)
    }
}

/// Why an op was rejected by apply. Deterministic: every replica rejects the same ops.
#[derive(Archive, RSerialize, RDeserialize, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyErrorCode {
    AlreadyExists,
    NamespaceNotFound,
    NamespaceNotEmpty,
    TableNotFound,
    ConstraintViolation,
    /// A row changed between the statement's read and its apply; the statement is retried.
    Conflict,
    /// `REBUILD PROJECTION` needs log entries this node no longer has.
    HistoryUnavailable,
    UserNotFound,
    /// A bounded set is full (revoked tokens).
    QuotaExceeded,
    /// A row op was planned on a schema version below the table's floor in its data group
    /// (see `Op::SchemaFloor`): the statement is planned again on a fresh catalog.
    StaleSchema,
}

#[derive(Archive, RSerialize, RDeserialize, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum OpResult {
    /// The op changed `affected` rows (or catalog objects).
    Done {
        affected: u64,
    },
    /// A table was created with this id.
    TableCreated {
        table_id: u64,
    },
    /// Tables were dropped (a table, or a namespace with CASCADE): their rows must be purged
    /// from the data groups that hold them.
    Dropped {
        table_ids: Vec<u64>,
    },
    /// `IF [NOT] EXISTS` made the op a no-op.
    Skipped,
    Failed {
        code: ApplyErrorCode,
        message: String,
    },
    /// A `Settle` replaced `rows` flushed hot rows by their stubs; `more` when the scope has
    /// rows left to settle (the proposer sends another).
    Settled {
        rows: u64,
        more: bool,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct ApplyResponse {
    /// One result per op of a normal entry; empty for blank and membership entries.
    pub results: Vec<OpResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, data_type: DataType) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            data_type,
            nullable: true,
            primary_key: false,
            default: None,
            stored_as: String::new(),
            backfill: None,
            dropped: false,
        }
    }

    /// An entry's ops are an archived array: a new op that made the archived `Op` larger would
    /// move every op of the entries already in logs, and this build would misread them.
    #[test]
    fn the_archived_op_keeps_its_size() {
        assert_eq!(std::mem::size_of::<ArchivedOp>(), ARCHIVED_OP_BYTES);
    }

    /// `size_of::<ArchivedOp>()` as builds before `PrepareFlush` wrote it.
    const ARCHIVED_OP_BYTES: usize = 79;

    fn version(version: u32, at_micros: i64, prior: Option<PriorColumn>) -> SchemaVersion {
        SchemaVersion { version, log_index: u64::from(version), change: String::new(), at_micros, prior }
    }

    /// Undoing later changes gives back each earlier schema: added columns disappear, dropped
    /// and renamed ones return as they were, and types stay today's (they only widen).
    #[test]
    fn earlier_schema_versions_are_recovered_by_undoing_later_changes() {
        let mut id = col("id", DataType::BigInt);
        id.primary_key = true;
        let v = col("v", DataType::Int);
        let renamed =
            ColumnDef { name: "label".into(), stored_as: "v".into(), data_type: DataType::BigInt, ..v.clone() };
        let added = ColumnDef { dropped: true, ..col("tmp", DataType::Text) };
        let now = TableDef {
            table_id: 1,
            namespace: "ns".into(),
            name: "t".into(),
            table_type: TableType::Shared,
            columns: vec![id.clone(), renamed.clone(), added.clone()],
            options: Vec::new(),
            created_at_micros: 0,
            versions: vec![
                version(1, 100, None),
                version(2, 200, Some(PriorColumn { slot: 1, column: Some(v.clone()) })),
                version(3, 300, Some(PriorColumn { slot: 2, column: None })),
                version(4, 400, Some(PriorColumn { slot: 2, column: Some(col("tmp", DataType::Text)) })),
            ],
        };
        assert_eq!(now.version_at(50), 1);
        assert_eq!(now.version_at(250), 2);
        assert_eq!(now.version_at(400), 4);
        let first = now.at_version(1);
        assert_eq!(first.columns, vec![id.clone(), ColumnDef { data_type: DataType::BigInt, ..v }]);
        assert_eq!(first.versions.len(), 1);
        assert_eq!(now.at_version(3).columns, vec![id.clone(), renamed.clone(), col("tmp", DataType::Text)]);
        assert_eq!(now.at_version(4), now);
    }
}
