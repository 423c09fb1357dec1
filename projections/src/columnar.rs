//! Columnar forms of table rows: the Arrow schema of a table (its columns, then `_seq` and
//! `_deleted`), conversions between stored rows and Arrow arrays, and per-column statistics.
//! Shared by the Parquet writer (cold storage) and the query layer, so both agree on one schema.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Float32Array, Float64Array, Int16Array, Int32Array,
    Int64Array, RecordBatch, StringArray, StringViewArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType as ArrowType, Field, Schema, SchemaRef, TimeUnit};
use kalamdb_log::{DataType, TableDef, Value};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::stored::StoredRow;

mod build;
#[cfg(test)]
pub(crate) mod test_defs;
pub use build::{ColumnBuilder, RowBatchBuilder, ValueRef};

pub const SEQ_COLUMN: &str = "_seq";
pub const DELETED_COLUMN: &str = "_deleted";

/// Field metadata key carrying our column type where Arrow's type is ambiguous (JSON is Utf8).
pub const TYPE_METADATA_KEY: &str = "kalamdb.type";

pub fn arrow_type(dt: DataType) -> ArrowType {
    match dt {
        DataType::Boolean => ArrowType::Boolean,
        DataType::SmallInt => ArrowType::Int16,
        DataType::Int => ArrowType::Int32,
        DataType::BigInt => ArrowType::Int64,
        DataType::Float => ArrowType::Float32,
        DataType::Double => ArrowType::Float64,
        // String views: filters and group keys compare a view's inline prefix, and reading a
        // Parquet dictionary page makes views into its buffer instead of copying every string.
        DataType::Text | DataType::Json => ArrowType::Utf8View,
        DataType::Bytes => ArrowType::Binary,
        DataType::Timestamp => ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        DataType::Date => ArrowType::Date32,
    }
}

pub fn arrow_field(name: &str, dt: DataType, nullable: bool) -> Field {
    let field = Field::new(name, arrow_type(dt), nullable);
    if dt == DataType::Json {
        field.with_metadata([(TYPE_METADATA_KEY.to_string(), "Json".to_string())].into())
    } else {
        field
    }
}

/// An array of type `dt` from owned values (see [`ColumnBuilder::push`] for mismatches).
pub fn build_array<'a>(dt: DataType, values: impl Iterator<Item = &'a Value>, len: usize) -> ArrayRef {
    let mut column = ColumnBuilder::new(dt, len);
    for v in values {
        column.push(ValueRef::from(v));
    }
    column.finish()
}

/// A plain UTF-8 array as string views over the same bytes.
fn utf8_as_views(array: ArrayRef) -> ArrayRef {
    let plain = array.as_any().downcast_ref::<StringArray>().expect("built as a StringArray");
    Arc::new(StringViewArray::from(plain))
}

/// The schema of a table's rows as queries see them: its columns by name, then `_seq` and
/// `_deleted`.
pub fn table_schema(def: &TableDef) -> SchemaRef {
    // Every column but the key is nullable here, whatever the catalog says: files and rows
    // written under an older schema (before `SET NOT NULL`) may hold NULL in superseded
    // versions, which scans read before they drop them. NOT NULL is enforced on writes.
    let mut fields: Vec<Field> =
        def.visible_columns().map(|(_, c)| arrow_field(&c.name, c.data_type, !c.primary_key)).collect();
    fields.push(Field::new(SEQ_COLUMN, ArrowType::Int64, false));
    fields.push(Field::new(DELETED_COLUMN, ArrowType::Boolean, false));
    Arc::new(Schema::new(fields))
}

/// The schema of a table's rows as storage holds them (Parquet files, hot row batches): every
/// column, dropped ones included, in stored order, named by each column's storage name (which
/// a rename does not change), then `_seq` and `_deleted`. Nullable but for the key, as the
/// query schema is.
pub fn storage_schema(def: &TableDef) -> SchemaRef {
    let mut fields: Vec<Field> =
        def.columns.iter().map(|c| arrow_field(c.storage_name(), c.data_type, !c.primary_key)).collect();
    fields.push(Field::new(SEQ_COLUMN, ArrowType::Int64, false));
    fields.push(Field::new(DELETED_COLUMN, ArrowType::Boolean, false));
    Arc::new(Schema::new(fields))
}

/// One Arrow batch of the table schema from stored rows (at most a few thousand at a time).
pub fn rows_to_batch(def: &TableDef, schema: &SchemaRef, rows: &[StoredRow]) -> Result<RecordBatch> {
    let mut batch = RowBatchBuilder::new(def, schema, rows.len());
    for row in rows {
        batch.push(row);
    }
    batch.finish()
}

/// A batch read from a Parquet file, in the table's storage schema now: columns found by
/// storage name, and a column the file predates (added later) filled with its backfill. Files
/// are never rewritten for a schema change; this is how they are read after one.
pub fn conform(def: &TableDef, target: &SchemaRef, batch: RecordBatch) -> Result<RecordBatch> {
    if batch.schema().fields() == target.fields() {
        return Ok(batch);
    }
    let rows = batch.num_rows();
    let file = batch.schema();
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
    for (i, c) in def.columns.iter().enumerate() {
        let name = target.field(i).name();
        match file.index_of(name) {
            // Written before the column was widened: cast losslessly to its type now.
            Ok(at) if batch.column(at).data_type() != target.field(i).data_type() => cols.push(
                arrow::compute::cast(batch.column(at), target.field(i).data_type())
                    .map_err(|e| Error::Corrupt(format!("widening {name}: {e}")))?,
            ),
            Ok(at) => cols.push(batch.column(at).clone()),
            Err(_) => {
                let fill = c.backfill.as_ref().unwrap_or(&Value::Null);
                cols.push(build_array(c.data_type, std::iter::repeat_n(fill, rows), rows));
            }
        }
    }
    for name in [SEQ_COLUMN, DELETED_COLUMN] {
        let at = file.index_of(name).map_err(|_| Error::Corrupt(format!("file batch without {name}")))?;
        cols.push(batch.column(at).clone());
    }
    RecordBatch::try_new(target.clone(), cols).map_err(|e| Error::Corrupt(format!("conformed batch: {e}")))
}

fn downcast<T: 'static>(a: &ArrayRef) -> Result<&T> {
    a.as_any().downcast_ref::<T>().ok_or_else(|| Error::Corrupt(format!("unexpected column type {}", a.data_type())))
}

/// The value at `row` of a column that holds type `dt` (no casting: the file schema is ours).
pub fn value_at(array: &ArrayRef, row: usize, dt: DataType) -> Result<Value> {
    if array.is_null(row) {
        return Ok(Value::Null);
    }
    Ok(match dt {
        DataType::Boolean => Value::Boolean(downcast::<BooleanArray>(array)?.value(row)),
        DataType::SmallInt => Value::SmallInt(downcast::<Int16Array>(array)?.value(row)),
        DataType::Int => Value::Int(downcast::<Int32Array>(array)?.value(row)),
        DataType::BigInt => Value::BigInt(downcast::<Int64Array>(array)?.value(row)),
        DataType::Float => Value::Float(downcast::<Float32Array>(array)?.value(row)),
        DataType::Double => Value::Double(downcast::<Float64Array>(array)?.value(row)),
        DataType::Text => Value::Text(text_at(array, row)?.to_string()),
        DataType::Json => Value::Json(text_at(array, row)?.to_string()),
        DataType::Bytes => Value::Bytes(downcast::<BinaryArray>(array)?.value(row).to_vec()),
        DataType::Timestamp => Value::Timestamp(downcast::<TimestampMicrosecondArray>(array)?.value(row)),
        DataType::Date => Value::Date(downcast::<Date32Array>(array)?.value(row)),
    })
}

/// The string at `row` of a text column: a view (our type) or plain UTF-8 (files written before
/// text columns were views, read without conforming).
fn text_at(array: &ArrayRef, row: usize) -> Result<&str> {
    if let Some(a) = array.as_any().downcast_ref::<StringViewArray>() {
        return Ok(a.value(row));
    }
    Ok(downcast::<StringArray>(array)?.value(row))
}

/// `_seq` and `_deleted` of every row of a batch of the table schema.
pub fn seq_deleted(batch: &RecordBatch) -> Result<(&Int64Array, &BooleanArray)> {
    let n = batch.num_columns();
    let seq = batch.column(n - 2).as_any().downcast_ref::<Int64Array>();
    let del = batch.column(n - 1).as_any().downcast_ref::<BooleanArray>();
    match (seq, del) {
        (Some(s), Some(d)) => Ok((s, d)),
        _ => Err(Error::Corrupt("batch without _seq/_deleted columns".into())),
    }
}

/// Minimum, maximum and null count of one column of a file, as JSON values (the manifest's
/// form). Floats compare by total order, text by bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnStats {
    pub name: String,
    pub min: Option<serde_json::Value>,
    pub max: Option<serde_json::Value>,
    pub nulls: u64,
}

/// Running statistics of one column, merged batch by batch.
#[derive(Debug, Clone)]
pub struct StatsBuilder {
    columns: Vec<(String, DataType, Option<Value>, Option<Value>, u64)>,
}

fn value_order(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Value::Boolean(x), Value::Boolean(y)) => x.cmp(y),
        (Value::SmallInt(x), Value::SmallInt(y)) => x.cmp(y),
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::BigInt(x), Value::BigInt(y)) | (Value::Timestamp(x), Value::Timestamp(y)) => x.cmp(y),
        (Value::Date(x), Value::Date(y)) => x.cmp(y),
        (Value::Float(x), Value::Float(y)) => x.total_cmp(y),
        (Value::Double(x), Value::Double(y)) => x.total_cmp(y),
        (Value::Text(x), Value::Text(y)) | (Value::Json(x), Value::Json(y)) => x.cmp(y),
        (Value::Bytes(x), Value::Bytes(y)) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

pub(crate) fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Boolean(b) => (*b).into(),
        Value::SmallInt(i) => (*i).into(),
        Value::Int(i) => (*i).into(),
        Value::BigInt(i) | Value::Timestamp(i) => (*i).into(),
        Value::Date(d) => (*d).into(),
        Value::Float(f) => serde_json::Number::from_f64(f64::from(*f)).map_or(serde_json::Value::Null, Into::into),
        Value::Double(f) => serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into),
        Value::Text(s) | Value::Json(s) => s.clone().into(),
        Value::Bytes(b) => hex::encode(b).into(),
    }
}

/// Minimum and maximum of one column with Arrow's aggregate kernels.
fn batch_min_max(array: &ArrayRef, dt: DataType) -> Result<(Option<Value>, Option<Value>)> {
    use arrow::compute::{
        max, max_boolean, max_string, max_string_view, min, min_boolean, min_string, min_string_view,
    };
    Ok(match dt {
        DataType::Boolean => {
            let a = downcast::<BooleanArray>(array)?;
            (min_boolean(a).map(Value::Boolean), max_boolean(a).map(Value::Boolean))
        }
        DataType::SmallInt => {
            let a = downcast::<Int16Array>(array)?;
            (min(a).map(Value::SmallInt), max(a).map(Value::SmallInt))
        }
        DataType::Int => {
            let a = downcast::<Int32Array>(array)?;
            (min(a).map(Value::Int), max(a).map(Value::Int))
        }
        DataType::BigInt => {
            let a = downcast::<Int64Array>(array)?;
            (min(a).map(Value::BigInt), max(a).map(Value::BigInt))
        }
        DataType::Timestamp => {
            let a = downcast::<TimestampMicrosecondArray>(array)?;
            (min(a).map(Value::Timestamp), max(a).map(Value::Timestamp))
        }
        DataType::Date => {
            let a = downcast::<Date32Array>(array)?;
            (min(a).map(Value::Date), max(a).map(Value::Date))
        }
        DataType::Float => {
            let a = downcast::<Float32Array>(array)?;
            (min(a).map(Value::Float), max(a).map(Value::Float))
        }
        DataType::Double => {
            let a = downcast::<Float64Array>(array)?;
            (min(a).map(Value::Double), max(a).map(Value::Double))
        }
        DataType::Text => {
            let text = |s: &str| Value::Text(s.to_string());
            match array.as_any().downcast_ref::<StringViewArray>() {
                Some(a) => (min_string_view(a).map(text), max_string_view(a).map(text)),
                None => {
                    let a = downcast::<StringArray>(array)?;
                    (min_string(a).map(text), max_string(a).map(text))
                }
            }
        }
        DataType::Bytes | DataType::Json => (None, None),
    })
}

impl StatsBuilder {
    pub fn new(def: &TableDef) -> StatsBuilder {
        StatsBuilder {
            columns: def.columns.iter().map(|c| (c.storage_name().to_string(), c.data_type, None, None, 0)).collect(),
        }
    }

    /// Fold in the table columns of a batch of the table schema.
    pub fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        for (i, (_, dt, min, max, nulls)) in self.columns.iter_mut().enumerate() {
            let array = batch.column(i);
            *nulls += array.null_count() as u64;
            // Byte-heavy columns are summarized only by nulls.
            if matches!(dt, DataType::Bytes | DataType::Json) {
                continue;
            }
            let (lo, hi) = batch_min_max(array, *dt)?;
            if let Some(v) = lo
                && min.as_ref().is_none_or(|m| value_order(&v, m).is_lt())
            {
                *min = Some(v);
            }
            if let Some(v) = hi
                && max.as_ref().is_none_or(|m| value_order(&v, m).is_gt())
            {
                *max = Some(v);
            }
        }
        Ok(())
    }

    pub fn finish(self) -> Vec<ColumnStats> {
        self.columns
            .into_iter()
            .map(|(name, _, min, max, nulls)| ColumnStats {
                name,
                min: min.as_ref().map(value_json),
                max: max.as_ref().map(value_json),
                nulls,
            })
            .collect()
    }
}
