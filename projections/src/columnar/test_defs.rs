//! Table definitions for unit tests: table 1, `n.t`, shared, keyed by its `id` column.

use kalamdb_log::{ColumnDef, DataType, TableDef, TableType, Value};

/// A column of a test table: `id` is the primary key, every other column is nullable.
pub(crate) fn column(name: &str, data_type: DataType, backfill: Option<Value>) -> ColumnDef {
    ColumnDef {
        name: name.into(),
        data_type,
        nullable: name != "id",
        primary_key: name == "id",
        default: None,
        stored_as: String::new(),
        backfill,
        dropped: false,
    }
}

/// The test table with `columns`.
pub(crate) fn table(columns: Vec<ColumnDef>) -> TableDef {
    TableDef {
        table_id: 1,
        namespace: "n".into(),
        name: "t".into(),
        table_type: TableType::Shared,
        columns,
        options: vec![],
        created_at_micros: 0,
        versions: vec![],
    }
}
