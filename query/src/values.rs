//! Conversions between SQL values: our log [`Value`]s, Arrow arrays, JSON request parameters
//! and JSON response cells. Coercion to a column's type happens here, on the proposing node.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat};
use datafusion::arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Float32Array, Float64Array, Int16Array, Int32Array,
    Int64Array, StringArray, StringViewArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType as ArrowType, Field, TimeUnit};
use kalamdb_log::{DataType, Value};

use crate::error::{Error, Result};

pub use kalamdb_projections::columnar::{TYPE_METADATA_KEY, arrow_field, arrow_type, build_array};

/// The `data_type` name the API reports for a result column: always one of KalamDB's type
/// names, which its clients decode against a fixed list (an Arrow name such as `Null` or
/// `List(Int64)` would make the whole answer undecodable). Decimals are written as numbers
/// (`Double`); types without a KalamDB name are written as text (`Text`), as KalamDB does.
pub fn api_type_name(field: &Field) -> String {
    if let Some(t) = field.metadata().get(TYPE_METADATA_KEY) {
        return t.clone();
    }
    match field.data_type() {
        ArrowType::Boolean => "Boolean".into(),
        ArrowType::Int8 | ArrowType::Int16 | ArrowType::UInt8 => "SmallInt".into(),
        ArrowType::Int32 | ArrowType::UInt16 => "Int".into(),
        ArrowType::Int64 | ArrowType::UInt32 | ArrowType::UInt64 => "BigInt".into(),
        ArrowType::Float16 | ArrowType::Float32 => "Float".into(),
        ArrowType::Float64 => "Double".into(),
        ArrowType::Utf8 | ArrowType::LargeUtf8 | ArrowType::Utf8View => "Text".into(),
        ArrowType::Binary | ArrowType::LargeBinary | ArrowType::BinaryView => "Bytes".into(),
        ArrowType::Timestamp(_, _) => "Timestamp".into(),
        ArrowType::Date32 | ArrowType::Date64 => "Date".into(),
        ArrowType::Decimal32(_, _)
        | ArrowType::Decimal64(_, _)
        | ArrowType::Decimal128(_, _)
        | ArrowType::Decimal256(_, _) => "Double".into(),
        _ => "Text".into(),
    }
}

/// Parse a timestamp literal: RFC 3339, `YYYY-MM-DD HH:MM:SS[.f]` (UTC) or `YYYY-MM-DD`.
pub fn parse_timestamp_micros(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.timestamp_micros());
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(dt.and_utc().timestamp_micros());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|dt| dt.and_utc().timestamp_micros())
}

fn epoch_days(s: &str) -> Option<i32> {
    let d = NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok()?;
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1)?;
    i32::try_from((d - epoch).num_days()).ok()
}

/// Below this an integer timestamp is read as milliseconds: in microseconds it would be before
/// March 1973, while `Date.now()` in a JavaScript client sends milliseconds of this century.
pub const TIMESTAMP_MICROS_MIN_MAGNITUDE: i64 = 100_000_000_000_000;

/// An integer TIMESTAMP: microseconds since the epoch, the encoding results use (so a value read
/// back can be written back unchanged), or milliseconds when it is too small to be microseconds
/// of a date after March 1973.
pub fn timestamp_from_integer(i: i64) -> Option<i64> {
    if i.unsigned_abs() >= TIMESTAMP_MICROS_MIN_MAGNITUDE.unsigned_abs() { Some(i) } else { i.checked_mul(1000) }
}

fn type_err(dt: DataType, what: &str) -> Error {
    Error::InvalidSql(format!("cannot convert {what} to {}", dt.api_name()))
}

fn int_in_range<T: TryFrom<i64>>(i: i64, dt: DataType) -> Result<T> {
    T::try_from(i).map_err(|_| Error::ConstraintViolation(format!("value {i} out of range for {}", dt.api_name())))
}

/// A literal as written in SQL, before it meets a column type.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Null,
    Bool(bool),
    /// Numeric text exactly as written (so BIGINT keeps full precision).
    Number(String),
    String(String),
}

impl Literal {
    pub fn from_json(v: &serde_json::Value) -> Literal {
        match v {
            serde_json::Value::Null => Literal::Null,
            serde_json::Value::Bool(b) => Literal::Bool(*b),
            serde_json::Value::Number(n) => Literal::Number(n.to_string()),
            serde_json::Value::String(s) => Literal::String(s.clone()),
            other => Literal::String(other.to_string()),
        }
    }
}

/// Coerce a literal to a column type.
pub fn coerce(lit: &Literal, dt: DataType) -> Result<Value> {
    let v = match (lit, dt) {
        (Literal::Null, _) => Value::Null,
        (Literal::Bool(b), DataType::Boolean) => Value::Boolean(*b),
        (Literal::String(s), DataType::Boolean) => match s.to_ascii_lowercase().as_str() {
            "true" | "t" | "1" => Value::Boolean(true),
            "false" | "f" | "0" => Value::Boolean(false),
            _ => return Err(type_err(dt, &format!("'{s}'"))),
        },
        (Literal::Number(n) | Literal::String(n), DataType::SmallInt | DataType::Int | DataType::BigInt) => {
            let i: i64 = n.trim().parse().map_err(|_| type_err(dt, &format!("'{n}'")))?;
            match dt {
                DataType::SmallInt => Value::SmallInt(int_in_range(i, dt)?),
                DataType::Int => Value::Int(int_in_range(i, dt)?),
                _ => Value::BigInt(i),
            }
        }
        (Literal::Number(n) | Literal::String(n), DataType::Double) => {
            Value::Double(n.trim().parse().map_err(|_| type_err(dt, &format!("'{n}'")))?)
        }
        (Literal::Number(n) | Literal::String(n), DataType::Float) => {
            Value::Float(n.trim().parse().map_err(|_| type_err(dt, &format!("'{n}'")))?)
        }
        (Literal::String(s), DataType::Text) => Value::Text(s.clone()),
        (Literal::Number(n), DataType::Text) => Value::Text(n.clone()),
        (Literal::Bool(b), DataType::Text) => Value::Text(b.to_string()),
        (Literal::String(s), DataType::Json) => {
            serde_json::from_str::<serde_json::Value>(s)
                .map_err(|e| Error::InvalidSql(format!("invalid JSON value: {e}")))?;
            Value::Json(s.clone())
        }
        (Literal::Number(n), DataType::Json) => Value::Json(n.clone()),
        (Literal::Bool(b), DataType::Json) => Value::Json(b.to_string()),
        (Literal::String(s), DataType::Bytes) => match s.strip_prefix("\\x") {
            Some(h) => Value::Bytes(hex::decode(h).map_err(|_| type_err(dt, "invalid hex string"))?),
            None => Value::Bytes(s.as_bytes().to_vec()),
        },
        (Literal::String(s), DataType::Timestamp) => {
            Value::Timestamp(parse_timestamp_micros(s).ok_or_else(|| type_err(dt, &format!("'{s}'")))?)
        }
        (Literal::Number(n), DataType::Timestamp) => {
            let i: i64 = n.parse().map_err(|_| type_err(dt, &format!("'{n}'")))?;
            Value::Timestamp(timestamp_from_integer(i).ok_or_else(|| type_err(dt, "timestamp out of range"))?)
        }
        // Days since the epoch: what a DATE reads back as.
        (Literal::Number(n), DataType::Date) => {
            let i: i64 = n.parse().map_err(|_| type_err(dt, &format!("'{n}'")))?;
            Value::Date(int_in_range(i, dt)?)
        }
        (Literal::String(s), DataType::Date) => {
            Value::Date(epoch_days(s).ok_or_else(|| type_err(dt, &format!("'{s}'")))?)
        }
        (lit, dt) => return Err(type_err(dt, &format!("{lit:?}"))),
    };
    Ok(v)
}

/// Null check that also sees nulls of arrays without a validity buffer (`NullArray`).
fn is_null_at(array: &ArrayRef, row: usize) -> bool {
    array.logical_nulls().is_some_and(|n| n.is_null(row))
}

/// One cell of a query result as JSON, in KalamDB's documented cell encoding (its clients
/// decode cells by the column's `data_type`): BIGINT (64-bit integers) as a string, so no
/// JavaScript client loses precision; TIMESTAMP as microseconds since the epoch; DATE as days
/// since the epoch; JSON as its text (a string, as KalamDB's server sends it: its CLI shows a
/// JSON object cell as a typed wrapper); BYTES as an array of byte values; other numbers,
/// booleans and text as themselves.
pub fn cell_to_json(array: &ArrayRef, row: usize) -> serde_json::Value {
    use serde_json::Value as J;
    if is_null_at(array, row) {
        return J::Null;
    }
    macro_rules! prim {
        ($t:ty) => {
            array.as_any().downcast_ref::<$t>().map(|a| J::from(a.value(row)))
        };
    }
    let out = match array.data_type() {
        ArrowType::Boolean => array.as_any().downcast_ref::<BooleanArray>().map(|a| J::Bool(a.value(row))),
        ArrowType::Int16 => prim!(Int16Array),
        ArrowType::Int32 => prim!(Int32Array),
        ArrowType::Int64 => array.as_any().downcast_ref::<Int64Array>().map(|a| J::String(a.value(row).to_string())),
        ArrowType::Float32 => {
            array.as_any().downcast_ref::<Float32Array>().map(|a| float_json(f64::from(a.value(row))))
        }
        ArrowType::Float64 => array.as_any().downcast_ref::<Float64Array>().map(|a| float_json(a.value(row))),
        ArrowType::Utf8View => {
            array.as_any().downcast_ref::<StringViewArray>().map(|a| J::String(a.value(row).to_string()))
        }
        ArrowType::Utf8 => array.as_any().downcast_ref::<StringArray>().map(|a| J::String(a.value(row).to_string())),
        ArrowType::Binary => array.as_any().downcast_ref::<BinaryArray>().map(|a| bytes_json(a.value(row))),
        ArrowType::Date32 => prim!(Date32Array),
        // Our TIMESTAMP columns: no cast needed.
        ArrowType::Timestamp(TimeUnit::Microsecond, _) => prim!(TimestampMicrosecondArray),
        _ => None,
    };
    out.unwrap_or_else(|| generic_cell(array, row))
}

fn generic_cell(array: &ArrayRef, row: usize) -> serde_json::Value {
    use datafusion::arrow::compute::cast;
    use serde_json::Value as J;
    // Cast only this cell, not the whole column once per row.
    let array = &array.slice(row, 1);
    let row = 0;
    // Timestamps of any unit (NOW() is in nanoseconds) and dates as KalamDB's numbers.
    if matches!(array.data_type(), ArrowType::Timestamp(_, _))
        && let Ok(c) = cast(array, &ArrowType::Timestamp(TimeUnit::Microsecond, None))
        && let Some(a) = c.as_any().downcast_ref::<TimestampMicrosecondArray>()
        && !a.is_null(row)
    {
        return J::from(a.value(row));
    }
    if matches!(array.data_type(), ArrowType::Date64)
        && let Ok(c) = cast(array, &ArrowType::Date32)
        && let Some(a) = c.as_any().downcast_ref::<Date32Array>()
        && !a.is_null(row)
    {
        return J::from(a.value(row));
    }
    // Small integers are numbers; 64-bit ones are strings, as above.
    if array.data_type().is_integer()
        && let Ok(c) = cast(array, &ArrowType::Int64)
        && let Some(a) = c.as_any().downcast_ref::<Int64Array>()
        && !a.is_null(row)
    {
        let wide = matches!(array.data_type(), ArrowType::Int64 | ArrowType::UInt64 | ArrowType::UInt32);
        return if wide { J::String(a.value(row).to_string()) } else { J::from(a.value(row)) };
    }
    let float_like = array.data_type().is_floating()
        || matches!(array.data_type(), ArrowType::Decimal128(_, _) | ArrowType::Decimal256(_, _));
    if float_like
        && let Ok(c) = cast(array, &ArrowType::Float64)
        && let Some(a) = c.as_any().downcast_ref::<Float64Array>()
    {
        return float_json(a.value(row));
    }
    if let Ok(c) = cast(array, &ArrowType::Utf8)
        && let Some(a) = c.as_any().downcast_ref::<StringArray>()
        && !a.is_null(row)
    {
        return J::String(a.value(row).to_string());
    }
    J::Null
}

fn float_json(f: f64) -> serde_json::Value {
    serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

fn bytes_json(b: &[u8]) -> serde_json::Value {
    serde_json::Value::Array(b.iter().map(|x| serde_json::Value::from(*x)).collect())
}

/// A timestamp as RFC 3339 text with microseconds (for people: messages, defaults, the CLI).
pub fn format_timestamp_micros(us: i64) -> serde_json::Value {
    DateTime::from_timestamp_micros(us)
        .map_or(serde_json::Value::Null, |d| serde_json::Value::String(d.to_rfc3339_opts(SecondsFormat::Micros, true)))
}

/// A date (days since the epoch) as `YYYY-MM-DD` text (for people).
pub fn format_date_days(days: i64) -> serde_json::Value {
    NaiveDate::from_ymd_opt(1970, 1, 1)
        .and_then(|e| e.checked_add_signed(chrono::Duration::try_days(days)?))
        .map_or(serde_json::Value::Null, |d| serde_json::Value::String(d.format("%Y-%m-%d").to_string()))
}

/// A cell of an API answer made readable by its column's `data_type`, as a client that knows
/// KalamDB's encoding shows it: BIGINT strings become numbers, TIMESTAMP microseconds RFC 3339
/// text, DATE days `YYYY-MM-DD`, BYTES arrays `\x` hex, JSON text the value it holds.
/// Anything else is returned unchanged.
pub fn display_cell(data_type: &str, v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match (data_type, v) {
        ("BigInt", J::String(s)) => s.parse::<i64>().map_or_else(|_| v.clone(), J::from),
        ("Timestamp" | "DateTime", J::Number(n)) => n.as_i64().map_or_else(|| v.clone(), format_timestamp_micros),
        ("Date", J::Number(n)) => n.as_i64().map_or_else(|| v.clone(), format_date_days),
        ("Json", J::String(s)) => serde_json::from_str(s).unwrap_or_else(|_| v.clone()),
        ("Bytes", J::Array(a)) => {
            let bytes: Option<Vec<u8>> = a.iter().map(|x| x.as_u64().and_then(|x| u8::try_from(x).ok())).collect();
            bytes.map_or_else(|| v.clone(), |b| J::String(format!("\\x{}", hex::encode(b))))
        }
        _ => v.clone(),
    }
}

/// Convert one cell of a DataFusion result to a value of the given column type (used when a
/// statement's values are computed by DataFusion: UPDATE SET expressions, INSERT ... SELECT).
pub fn cell_to_value(array: &ArrayRef, row: usize, dt: DataType) -> Result<Value> {
    use datafusion::arrow::compute::cast;
    if is_null_at(array, row) {
        return Ok(Value::Null);
    }
    let single = array.slice(row, 1);
    // Text is read back as plain UTF-8: one cell, nothing gained from a view.
    let target = match dt {
        DataType::Text | DataType::Json => ArrowType::Utf8,
        _ => arrow_type(dt),
    };
    let casted =
        cast(&single, &target).map_err(|e| Error::InvalidSql(format!("cannot convert to {}: {e}", dt.api_name())))?;
    if casted.is_null(0) {
        return Err(Error::InvalidSql(format!("cannot convert value to {}", dt.api_name())));
    }
    let v = match dt {
        DataType::Boolean => Value::Boolean(downcast::<BooleanArray>(&casted)?.value(0)),
        DataType::SmallInt => Value::SmallInt(downcast::<Int16Array>(&casted)?.value(0)),
        DataType::Int => Value::Int(downcast::<Int32Array>(&casted)?.value(0)),
        DataType::BigInt => Value::BigInt(downcast::<Int64Array>(&casted)?.value(0)),
        DataType::Float => Value::Float(downcast::<Float32Array>(&casted)?.value(0)),
        DataType::Double => Value::Double(downcast::<Float64Array>(&casted)?.value(0)),
        DataType::Text => Value::Text(downcast::<StringArray>(&casted)?.value(0).to_string()),
        DataType::Json => {
            let s = downcast::<StringArray>(&casted)?.value(0).to_string();
            serde_json::from_str::<serde_json::Value>(&s)
                .map_err(|e| Error::InvalidSql(format!("invalid JSON value: {e}")))?;
            Value::Json(s)
        }
        DataType::Bytes => Value::Bytes(downcast::<BinaryArray>(&casted)?.value(0).to_vec()),
        DataType::Timestamp => Value::Timestamp(downcast::<TimestampMicrosecondArray>(&casted)?.value(0)),
        DataType::Date => Value::Date(downcast::<Date32Array>(&casted)?.value(0)),
    };
    Ok(v)
}

fn downcast<T: 'static>(a: &ArrayRef) -> Result<&T> {
    a.as_any().downcast_ref::<T>().ok_or_else(|| Error::Internal("unexpected array type after cast".into()))
}

/// A stored value as JSON in the API's encoding, the same way [`cell_to_json`] renders its
/// Arrow form (KalamDB's cell encoding; see there).
pub fn value_to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Boolean(b) => J::Bool(*b),
        Value::SmallInt(i) => J::from(*i),
        Value::Int(i) => J::from(*i),
        Value::BigInt(i) => J::String(i.to_string()),
        Value::Float(f) => float_json(f64::from(*f)),
        Value::Double(f) => float_json(*f),
        Value::Text(s) => J::String(s.clone()),
        Value::Json(s) => J::String(s.clone()),
        Value::Bytes(b) => bytes_json(b),
        Value::Timestamp(us) => J::from(*us),
        Value::Date(d) => J::from(*d),
    }
}

/// A stored value as JSON for people (error messages, defaults shown in the catalog): numbers
/// as numbers, timestamps and dates as text, bytes as `\x` hex.
pub fn value_display_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::BigInt(i) => J::from(*i),
        Value::Bytes(b) => J::String(format!("\\x{}", hex::encode(b))),
        Value::Json(s) => serde_json::from_str(s).unwrap_or_else(|_| J::String(s.clone())),
        Value::Timestamp(us) => format_timestamp_micros(*us),
        Value::Date(d) => format_date_days(i64::from(*d)),
        other => value_to_json(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coercion_rules() {
        assert_eq!(coerce(&Literal::Number("42".into()), DataType::BigInt).unwrap(), Value::BigInt(42));
        assert!(coerce(&Literal::Number("70000".into()), DataType::SmallInt).is_err());
        assert!(coerce(&Literal::String("x".into()), DataType::Int).is_err());
        assert_eq!(coerce(&Literal::String("2024-01-02".into()), DataType::Date).unwrap(), Value::Date(19724));
        assert_eq!(
            coerce(&Literal::String("1970-01-01T00:00:01Z".into()), DataType::Timestamp).unwrap(),
            Value::Timestamp(1_000_000)
        );
        assert!(coerce(&Literal::String("{bad".into()), DataType::Json).is_err());
        assert_eq!(coerce(&Literal::Null, DataType::Text).unwrap(), Value::Null);
    }

    #[test]
    fn stored_and_arrow_json_agree() {
        let vals = [
            (Value::Timestamp(1_700_000_000_123_456), DataType::Timestamp),
            (Value::Date(19724), DataType::Date),
            (Value::BigInt(i64::MAX), DataType::BigInt),
            (Value::Bytes(vec![0, 255]), DataType::Bytes),
            (Value::Json(r#"{"a": [1]}"#.into()), DataType::Json),
            (Value::Text("short".into()), DataType::Text),
            (Value::Text("a text longer than a view's twelve inline bytes".into()), DataType::Text),
        ];
        for (v, dt) in &vals {
            let arr = build_array(*dt, std::iter::once(v), 1);
            assert_eq!(cell_to_json(&arr, 0), value_to_json(v), "{dt:?}");
        }
    }

    #[test]
    fn kalamdb_cell_encoding() {
        use serde_json::json;
        assert_eq!(value_to_json(&Value::BigInt(9_007_199_254_740_993)), json!("9007199254740993"));
        assert_eq!(value_to_json(&Value::Int(7)), json!(7));
        assert_eq!(value_to_json(&Value::Timestamp(1_700_000_000_123_456)), json!(1_700_000_000_123_456_i64));
        assert_eq!(value_to_json(&Value::Date(19724)), json!(19724));
        assert_eq!(value_to_json(&Value::Bytes(vec![1, 2])), json!([1, 2]));
        assert_eq!(value_to_json(&Value::Json(r#"{"a":1}"#.into())), json!(r#"{"a":1}"#));
        // What a client shows for each encoded value.
        assert_eq!(display_cell("BigInt", &json!("42")), json!(42));
        assert_eq!(display_cell("Timestamp", &json!(1_000_000)), json!("1970-01-01T00:00:01.000000Z"));
        assert_eq!(display_cell("Date", &json!(19724)), json!("2024-01-02"));
        assert_eq!(display_cell("Bytes", &json!([171])), json!("\\xab"));
        assert_eq!(display_cell("Json", &json!(r#"{"a": [1]}"#)), json!({"a": [1]}));
    }

    #[test]
    fn timestamps_read_back_write_back_unchanged() {
        let us = 1_700_000_000_123_456_i64;
        let lit = Literal::from_json(&value_to_json(&Value::Timestamp(us)));
        assert_eq!(coerce(&lit, DataType::Timestamp).unwrap(), Value::Timestamp(us));
        // Milliseconds, as `Date.now()` sends them, still read as milliseconds.
        let ms = Literal::Number("1700000000123".into());
        assert_eq!(coerce(&ms, DataType::Timestamp).unwrap(), Value::Timestamp(1_700_000_000_123_000));
        let days = Literal::from_json(&value_to_json(&Value::Date(19724)));
        assert_eq!(coerce(&days, DataType::Date).unwrap(), Value::Date(19724));
        let big = Literal::from_json(&value_to_json(&Value::BigInt(i64::MIN)));
        assert_eq!(coerce(&big, DataType::BigInt).unwrap(), Value::BigInt(i64::MIN));
    }
}
