//! Who may do what: the one place that decides, per role and table, whether a statement may
//! read or write. The engine asks it before proposing a write and the catalog asks it before
//! handing DataFusion a table, so every read path (joins, subqueries, time travel, the
//! primary-key fast path) goes through the same check.

use kalamdb_log::{Role, TableDef, TableType};

use crate::error::{Error, Result};

/// The `WITH (ACCESS_LEVEL = ...)` option of SHARED tables.
pub const ACCESS_LEVEL_OPTION: &str = "ACCESS_LEVEL";

/// Who may read a SHARED table. USER and STREAM tables have no level: each caller sees only
/// its own rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLevel {
    /// Readable by every role; written by service, dba and system.
    Public,
    /// Read and written by service, dba and system only (the default).
    Private,
    /// As PRIVATE: read and written by service, dba and system only.
    Restricted,
}

impl AccessLevel {
    pub fn parse(text: &str) -> Result<AccessLevel> {
        match text.trim().to_ascii_uppercase().as_str() {
            "PUBLIC" => Ok(AccessLevel::Public),
            "PRIVATE" => Ok(AccessLevel::Private),
            "RESTRICTED" => Ok(AccessLevel::Restricted),
            other => {
                Err(Error::InvalidSql(format!("ACCESS_LEVEL '{other}': expected 'PUBLIC', 'PRIVATE' or 'RESTRICTED'")))
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AccessLevel::Public => "PUBLIC",
            AccessLevel::Private => "PRIVATE",
            AccessLevel::Restricted => "RESTRICTED",
        }
    }

    /// The level of a table: its option, PRIVATE when absent.
    pub fn of(def: &TableDef) -> AccessLevel {
        def.options
            .iter()
            .find(|(k, _)| k == ACCESS_LEVEL_OPTION)
            .and_then(|(_, v)| AccessLevel::parse(v).ok())
            .unwrap_or(AccessLevel::Private)
    }
}

fn table_name(def: &TableDef) -> String {
    format!("{}.{}", def.namespace, def.name)
}

/// May `role` read `def` (its own scope of it, for USER and STREAM tables)?
pub fn can_read(role: Role, def: &TableDef) -> bool {
    match def.table_type {
        TableType::User | TableType::Stream => true,
        TableType::Shared => role >= Role::Service || AccessLevel::of(def) == AccessLevel::Public,
    }
}

/// May `role` insert, update or delete rows of `def` (its own scope, for USER and STREAM)?
pub fn can_write(role: Role, def: &TableDef) -> bool {
    match def.table_type {
        TableType::User | TableType::Stream => true,
        TableType::Shared => role >= Role::Service,
    }
}

pub fn check_read(role: Role, def: &TableDef) -> Result<()> {
    if can_read(role, def) {
        return Ok(());
    }
    Err(Error::PermissionDenied(format!(
        "role '{}' may not read {} {} table {}",
        role.name(),
        AccessLevel::of(def).name(),
        def.table_type.api_name(),
        table_name(def)
    )))
}

pub fn check_write(role: Role, def: &TableDef) -> Result<()> {
    if can_write(role, def) {
        return Ok(());
    }
    Err(Error::PermissionDenied(format!(
        "role '{}' may not write {} table {} (needs service, dba or system)",
        role.name(),
        def.table_type.api_name(),
        table_name(def)
    )))
}

/// Statements that need at least `needed` (DDL, storage jobs, user management).
pub fn require(role: Role, needed: Role, what: &str) -> Result<()> {
    if role >= needed {
        return Ok(());
    }
    Err(Error::PermissionDenied(format!(
        "{what} needs role {} or above; this caller has role '{}'",
        needed.name(),
        role.name()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kalamdb_log::{ColumnDef, DataType};

    fn table(table_type: TableType, level: Option<&str>) -> TableDef {
        TableDef {
            table_id: 1,
            namespace: "ns".into(),
            name: "t".into(),
            table_type,
            columns: vec![ColumnDef {
                name: "id".into(),
                data_type: DataType::BigInt,
                nullable: false,
                primary_key: true,
                default: None,
                stored_as: String::new(),
                backfill: None,
                dropped: false,
            }],
            options: level.map(|l| vec![(ACCESS_LEVEL_OPTION.to_string(), l.to_string())]).unwrap_or_default(),
            created_at_micros: 0,
            versions: Vec::new(),
        }
    }

    #[test]
    fn shared_levels() {
        let public = table(TableType::Shared, Some("PUBLIC"));
        let private = table(TableType::Shared, None);
        let restricted = table(TableType::Shared, Some("RESTRICTED"));
        assert!(can_read(Role::User, &public) && !can_write(Role::User, &public));
        assert!(!can_read(Role::User, &private) && !can_read(Role::User, &restricted));
        for r in [Role::Service, Role::Dba, Role::System] {
            for t in [&public, &private, &restricted] {
                assert!(can_read(r, t) && can_write(r, t), "{r:?}");
            }
        }
        let e = check_read(Role::User, &private).unwrap_err();
        assert_eq!(e.code(), "PERMISSION_DENIED");
    }

    #[test]
    fn user_tables_are_open_to_every_role_in_their_own_scope() {
        for r in Role::ALL {
            assert!(can_read(r, &table(TableType::User, None)) && can_write(r, &table(TableType::Stream, None)));
        }
    }
}
