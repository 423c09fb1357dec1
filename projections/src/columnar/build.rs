//! Arrow columns built one value at a time, from owned values or from encoded rows read in
//! place: a flush converts its rows without decoding each into owned values first (the
//! decoding was half of a flush's time, and a flush holds its group's apply).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Float32Builder, Float64Builder, Int16Builder, Int32Builder,
    Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::SchemaRef;
use kalamdb_log::command::ArchivedValue;
use kalamdb_log::{DataType, TableDef, Value};

use super::utf8_as_views;
use crate::error::{Error, Result};
use crate::stored::{ArchivedStoredRow, StoredRow};

/// Bytes a text or binary builder reserves per row up front (it grows past that as needed).
const VAR_BYTES_PER_ROW_GUESS: usize = 16;

/// A value borrowed from an owned [`Value`] or from an encoded row.
#[derive(Debug, Clone, Copy)]
pub enum ValueRef<'a> {
    Null,
    Boolean(bool),
    SmallInt(i16),
    Int(i32),
    BigInt(i64),
    Float(f32),
    Double(f64),
    Text(&'a str),
    Bytes(&'a [u8]),
    Timestamp(i64),
    Date(i32),
    Json(&'a str),
}

impl<'a> From<&'a Value> for ValueRef<'a> {
    fn from(v: &'a Value) -> Self {
        match v {
            Value::Null => ValueRef::Null,
            Value::Boolean(x) => ValueRef::Boolean(*x),
            Value::SmallInt(x) => ValueRef::SmallInt(*x),
            Value::Int(x) => ValueRef::Int(*x),
            Value::BigInt(x) => ValueRef::BigInt(*x),
            Value::Float(x) => ValueRef::Float(*x),
            Value::Double(x) => ValueRef::Double(*x),
            Value::Text(x) => ValueRef::Text(x),
            Value::Bytes(x) => ValueRef::Bytes(x),
            Value::Timestamp(x) => ValueRef::Timestamp(*x),
            Value::Date(x) => ValueRef::Date(*x),
            Value::Json(x) => ValueRef::Json(x),
        }
    }
}

impl<'a> From<&'a ArchivedValue> for ValueRef<'a> {
    fn from(v: &'a ArchivedValue) -> Self {
        match v {
            ArchivedValue::Null => ValueRef::Null,
            ArchivedValue::Boolean(x) => ValueRef::Boolean(*x),
            ArchivedValue::SmallInt(x) => ValueRef::SmallInt(x.to_native()),
            ArchivedValue::Int(x) => ValueRef::Int(x.to_native()),
            ArchivedValue::BigInt(x) => ValueRef::BigInt(x.to_native()),
            ArchivedValue::Float(x) => ValueRef::Float(x.to_native()),
            ArchivedValue::Double(x) => ValueRef::Double(x.to_native()),
            ArchivedValue::Text(x) => ValueRef::Text(x.as_str()),
            ArchivedValue::Bytes(x) => ValueRef::Bytes(x.as_slice()),
            ArchivedValue::Timestamp(x) => ValueRef::Timestamp(x.to_native()),
            ArchivedValue::Date(x) => ValueRef::Date(x.to_native()),
            ArchivedValue::Json(x) => ValueRef::Json(x.as_str()),
        }
    }
}

/// The builder of one column of type `DataType`.
pub enum ColumnBuilder {
    Boolean(BooleanBuilder),
    SmallInt(Int16Builder),
    Int(Int32Builder),
    BigInt(Int64Builder),
    Float(Float32Builder),
    Double(Float64Builder),
    Text(StringBuilder),
    Json(StringBuilder),
    Bytes(BinaryBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    Date(Date32Builder),
}

impl ColumnBuilder {
    pub fn new(dt: DataType, rows: usize) -> ColumnBuilder {
        let var = rows * VAR_BYTES_PER_ROW_GUESS;
        match dt {
            DataType::Boolean => ColumnBuilder::Boolean(BooleanBuilder::with_capacity(rows)),
            DataType::SmallInt => ColumnBuilder::SmallInt(Int16Builder::with_capacity(rows)),
            DataType::Int => ColumnBuilder::Int(Int32Builder::with_capacity(rows)),
            DataType::BigInt => ColumnBuilder::BigInt(Int64Builder::with_capacity(rows)),
            DataType::Float => ColumnBuilder::Float(Float32Builder::with_capacity(rows)),
            DataType::Double => ColumnBuilder::Double(Float64Builder::with_capacity(rows)),
            // Built as plain UTF-8, then viewed: the cast shares the string bytes, where a view
            // builder opens an 8 KiB block even for the one row of a point lookup.
            DataType::Text => ColumnBuilder::Text(StringBuilder::with_capacity(rows, var)),
            DataType::Json => ColumnBuilder::Json(StringBuilder::with_capacity(rows, var)),
            DataType::Bytes => ColumnBuilder::Bytes(BinaryBuilder::with_capacity(rows, var)),
            DataType::Timestamp => {
                ColumnBuilder::Timestamp(TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"))
            }
            DataType::Date => ColumnBuilder::Date(Date32Builder::with_capacity(rows)),
        }
    }

    /// Append `v`; a value of another type is NULL, except that values stored before a
    /// column was widened (ALTER ... TYPE) are read widened.
    pub fn push(&mut self, v: ValueRef<'_>) {
        use ValueRef as V;
        match (self, v) {
            (ColumnBuilder::Boolean(b), V::Boolean(x)) => b.append_value(x),
            (ColumnBuilder::SmallInt(b), V::SmallInt(x)) => b.append_value(x),
            (ColumnBuilder::Int(b), V::Int(x)) => b.append_value(x),
            (ColumnBuilder::Int(b), V::SmallInt(x)) => b.append_value(i32::from(x)),
            (ColumnBuilder::BigInt(b), V::BigInt(x)) => b.append_value(x),
            (ColumnBuilder::BigInt(b), V::Int(x)) => b.append_value(i64::from(x)),
            (ColumnBuilder::BigInt(b), V::SmallInt(x)) => b.append_value(i64::from(x)),
            (ColumnBuilder::Float(b), V::Float(x)) => b.append_value(x),
            (ColumnBuilder::Double(b), V::Double(x)) => b.append_value(x),
            (ColumnBuilder::Double(b), V::Float(x)) => b.append_value(f64::from(x)),
            (ColumnBuilder::Text(b), V::Text(x)) => b.append_value(x),
            (ColumnBuilder::Json(b), V::Json(x)) => b.append_value(x),
            (ColumnBuilder::Bytes(b), V::Bytes(x)) => b.append_value(x),
            (ColumnBuilder::Timestamp(b), V::Timestamp(x)) => b.append_value(x),
            (ColumnBuilder::Date(b), V::Date(x)) => b.append_value(x),
            (b, _) => b.append_null(),
        }
    }

    fn append_null(&mut self) {
        match self {
            ColumnBuilder::Boolean(b) => b.append_null(),
            ColumnBuilder::SmallInt(b) => b.append_null(),
            ColumnBuilder::Int(b) => b.append_null(),
            ColumnBuilder::BigInt(b) => b.append_null(),
            ColumnBuilder::Float(b) => b.append_null(),
            ColumnBuilder::Double(b) => b.append_null(),
            ColumnBuilder::Text(b) | ColumnBuilder::Json(b) => b.append_null(),
            ColumnBuilder::Bytes(b) => b.append_null(),
            ColumnBuilder::Timestamp(b) => b.append_null(),
            ColumnBuilder::Date(b) => b.append_null(),
        }
    }

    pub fn finish(self) -> ArrayRef {
        match self {
            ColumnBuilder::Boolean(mut b) => Arc::new(b.finish()),
            ColumnBuilder::SmallInt(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Int(mut b) => Arc::new(b.finish()),
            ColumnBuilder::BigInt(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Float(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Double(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Text(mut b) | ColumnBuilder::Json(mut b) => utf8_as_views(Arc::new(b.finish())),
            ColumnBuilder::Bytes(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Date(mut b) => Arc::new(b.finish()),
        }
    }
}

/// One batch of a table's storage schema, built row by row.
pub struct RowBatchBuilder {
    schema: SchemaRef,
    columns: Vec<ColumnBuilder>,
    /// What a row written before a column was added (shorter than the table) reads there.
    backfills: Vec<Value>,
    seq: Int64Builder,
    deleted: BooleanBuilder,
    rows: usize,
}

impl RowBatchBuilder {
    /// A builder for up to about `rows` rows of `def` (more only grow its buffers).
    pub fn new(def: &TableDef, schema: &SchemaRef, rows: usize) -> RowBatchBuilder {
        assert_eq!(schema.fields().len(), def.columns.len() + 2, "the storage schema of another table");
        RowBatchBuilder {
            schema: schema.clone(),
            columns: def.columns.iter().map(|c| ColumnBuilder::new(c.data_type, rows)).collect(),
            backfills: def.columns.iter().map(|c| c.backfill.clone().unwrap_or(Value::Null)).collect(),
            seq: Int64Builder::with_capacity(rows),
            deleted: BooleanBuilder::with_capacity(rows),
            rows: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn push(&mut self, row: &StoredRow) {
        for (i, column) in self.columns.iter_mut().enumerate() {
            column.push(ValueRef::from(row.values.get(i).unwrap_or(&self.backfills[i])));
        }
        self.push_version(row.seq, row.deleted);
    }

    /// Append an encoded row as read in place (see [`StoredRow::access`]).
    pub fn push_archived(&mut self, row: &ArchivedStoredRow) {
        for (i, column) in self.columns.iter_mut().enumerate() {
            match row.values.get(i) {
                Some(v) => column.push(ValueRef::from(v)),
                None => column.push(ValueRef::from(&self.backfills[i])),
            }
        }
        self.push_version(row.seq.to_native(), row.deleted);
    }

    fn push_version(&mut self, seq: u64, deleted: bool) {
        self.seq.append_value(seq as i64);
        self.deleted.append_value(deleted);
        self.rows += 1;
    }

    pub fn finish(self) -> Result<RecordBatch> {
        let mut cols: Vec<ArrayRef> = self.columns.into_iter().map(ColumnBuilder::finish).collect();
        let (mut seq, mut deleted) = (self.seq, self.deleted);
        cols.push(Arc::new(seq.finish()));
        cols.push(Arc::new(deleted.finish()));
        RecordBatch::try_new(self.schema, cols).map_err(|e| Error::Corrupt(format!("row batch: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::columnar::test_defs::{column, table};
    use crate::columnar::{storage_schema, value_at};

    fn row(seq: u64, values: Vec<Value>) -> StoredRow {
        StoredRow { seq, deleted: false, values }
    }

    /// Every type, a NULL of each, values stored before a column was widened, a value of
    /// another type, a row older than an added column and a deleted version: the batch built from
    /// rows read in place holds, cell by cell, what the rows say (and what the batch built
    /// from decoded rows holds).
    #[test]
    fn rows_read_in_place_build_what_their_values_say() {
        use DataType as T;
        let types = [
            T::Boolean,
            T::SmallInt,
            T::Int,
            T::BigInt,
            T::Float,
            T::Double,
            T::Text,
            T::Bytes,
            T::Timestamp,
            T::Date,
            T::Json,
        ];
        let mut columns = vec![column("id", T::BigInt, None)];
        columns.extend(types.iter().enumerate().map(|(i, t)| column(&format!("c{i}"), *t, None)));
        columns.push(column("added", T::Text, Some(Value::Text("before it existed".into()))));
        let def = table(columns);
        let full = vec![
            Value::BigInt(1),
            Value::Boolean(true),
            Value::SmallInt(-7),
            Value::Int(70_000),
            Value::BigInt(1 << 40),
            Value::Float(1.5),
            Value::Double(-2.25),
            Value::Text("a longer text than a string view holds inline".into()),
            Value::Bytes(vec![0, 1, 255]),
            Value::Timestamp(1_700_000_000_000_000),
            Value::Date(19_000),
            Value::Json("{\"k\":[1,2]}".into()),
            Value::Text("now".into()),
        ];
        let mut nulls = vec![Value::BigInt(2)];
        nulls.extend(std::iter::repeat_n(Value::Null, types.len() + 1));
        // Int from SmallInt, BigInt from Int, Double from Float; Text in a Boolean column.
        let mut widened = full.clone();
        widened[0] = Value::BigInt(3);
        widened[1] = Value::Text("not a boolean".into());
        widened[3] = Value::SmallInt(12);
        widened[4] = Value::Int(-5);
        widened[6] = Value::Float(0.5);
        let mut old = full.clone();
        old[0] = Value::BigInt(4);
        old.pop();
        let mut deleted = full.clone();
        deleted[0] = Value::BigInt(5);
        let rows = vec![
            row(10, full.clone()),
            row(11, nulls.clone()),
            row(12, widened),
            row(13, old),
            StoredRow { seq: 99, deleted: true, values: deleted.clone() },
        ];
        let schema = storage_schema(&def);
        let encoded: Vec<Vec<u8>> = rows.iter().map(StoredRow::encode).collect();
        let mut in_place = RowBatchBuilder::new(&def, &schema, 2);
        for bytes in &encoded {
            in_place.push_archived(StoredRow::access(bytes).unwrap());
        }
        assert_eq!(in_place.len(), rows.len());
        let in_place = in_place.finish().unwrap();
        assert_eq!(in_place, crate::columnar::rows_to_batch(&def, &schema, &rows).unwrap());

        let cell = |r: usize, c: usize| value_at(in_place.column(c), r, def.columns[c].data_type).unwrap();
        let cells = |r: usize| (0..def.columns.len()).map(|c| cell(r, c)).collect::<Vec<_>>();
        assert_eq!(cells(0), full);
        assert_eq!(cells(1), nulls);
        assert_eq!(cell(2, 1), Value::Null);
        assert_eq!(cell(2, 3), Value::Int(12));
        assert_eq!(cell(2, 4), Value::BigInt(-5));
        assert_eq!(cell(2, 6), Value::Double(0.5));
        assert_eq!(cell(3, def.columns.len() - 1), Value::Text("before it existed".into()));
        assert_eq!(cell(3, 7), full[7]);
        assert_eq!(cells(4), deleted);
        let (seq, deleted) = crate::columnar::seq_deleted(&in_place).unwrap();
        assert_eq!(seq.values().to_vec(), vec![10, 11, 12, 13, 99]);
        assert_eq!(deleted.iter().map(Option::unwrap).collect::<Vec<_>>(), vec![false, false, false, false, true]);
    }
}
