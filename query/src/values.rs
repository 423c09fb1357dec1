//! Conversions between SQL values: our log [`Value`]s, Arrow arrays, JSON request parameters
//! and JSON response cells. Coercion to a column's type happens here, on the proposing node.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat};
use datafusion::arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Float32Array, Float64Array, Int16Array, Int32Array,
    Int64Array, StringArray, TimestampMicrosecondArray,
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
        // Integers are milliseconds since the Unix epoch, as JavaScript clients send them.
        (Literal::Number(n), DataType::Timestamp) => {
            let ms: i64 = n.parse().map_err(|_| type_err(dt, &format!("'{n}'")))?;
            Value::Timestamp(ms.checked_mul(1000).ok_or_else(|| type_err(dt, "timestamp out of range"))?)
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

/// One cell of a query result as JSON.
pub fn cell_to_json(array: &ArrayRef, row: usize, field: &Field) -> serde_json::Value {
    use serde_json::Value as J;
    if is_null_at(array, row) {
        return J::Null;
    }
    let is_json = field.metadata().get(TYPE_METADATA_KEY).is_some_and(|t| t == "Json");
    macro_rules! prim {
        ($t:ty) => {
            array.as_any().downcast_ref::<$t>().map(|a| J::from(a.value(row)))
        };
    }
    let out = match array.data_type() {
        ArrowType::Boolean => array.as_any().downcast_ref::<BooleanArray>().map(|a| J::Bool(a.value(row))),
        ArrowType::Int16 => prim!(Int16Array),
        ArrowType::Int32 => prim!(Int32Array),
        ArrowType::Int64 => prim!(Int64Array),
        ArrowType::Float32 => {
            array.as_any().downcast_ref::<Float32Array>().map(|a| float_json(f64::from(a.value(row))))
        }
        ArrowType::Float64 => array.as_any().downcast_ref::<Float64Array>().map(|a| float_json(a.value(row))),
        ArrowType::Utf8 => array.as_any().downcast_ref::<StringArray>().map(|a| {
            let s = a.value(row);
            if is_json {
                serde_json::from_str(s).unwrap_or_else(|_| J::String(s.to_string()))
            } else {
                J::String(s.to_string())
            }
        }),
        ArrowType::Binary => {
            array.as_any().downcast_ref::<BinaryArray>().map(|a| J::String(format!("\\x{}", hex::encode(a.value(row)))))
        }
        ArrowType::Timestamp(TimeUnit::Microsecond, _) => {
            array.as_any().downcast_ref::<TimestampMicrosecondArray>().map(|a| format_timestamp_micros(a.value(row)))
        }
        ArrowType::Date32 => array.as_any().downcast_ref::<Date32Array>().map(|a| {
            let d = NaiveDate::from_ymd_opt(1970, 1, 1)
                .and_then(|e| e.checked_add_signed(chrono::Duration::days(i64::from(a.value(row)))));
            d.map_or(J::Null, |d| J::String(d.format("%Y-%m-%d").to_string()))
        }),
        _ => None,
    };
    out.unwrap_or_else(|| generic_cell(array, row))
}

fn generic_cell(array: &ArrayRef, row: usize) -> serde_json::Value {
    use datafusion::arrow::compute::cast;
    use serde_json::Value as J;
    // Unsigned and other integer types widen to Int64 when they fit; everything else is text.
    if array.data_type().is_integer()
        && let Ok(c) = cast(array, &ArrowType::Int64)
        && let Some(a) = c.as_any().downcast_ref::<Int64Array>()
        && !a.is_null(row)
    {
        return J::from(a.value(row));
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

pub fn format_timestamp_micros(us: i64) -> serde_json::Value {
    DateTime::from_timestamp_micros(us)
        .map_or(serde_json::Value::Null, |d| serde_json::Value::String(d.to_rfc3339_opts(SecondsFormat::Micros, true)))
}

/// Convert one cell of a DataFusion result to a value of the given column type (used when a
/// statement's values are computed by DataFusion: UPDATE SET expressions, INSERT ... SELECT).
pub fn cell_to_value(array: &ArrayRef, row: usize, dt: DataType) -> Result<Value> {
    use datafusion::arrow::compute::cast;
    if is_null_at(array, row) {
        return Ok(Value::Null);
    }
    let single = array.slice(row, 1);
    let target = arrow_type(dt);
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

/// A stored value as JSON, the same way [`cell_to_json`] renders its Arrow form.
pub fn value_to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Boolean(b) => J::Bool(*b),
        Value::SmallInt(i) => J::from(*i),
        Value::Int(i) => J::from(*i),
        Value::BigInt(i) => J::from(*i),
        Value::Float(f) => float_json(f64::from(*f)),
        Value::Double(f) => float_json(*f),
        Value::Text(s) => J::String(s.clone()),
        Value::Json(s) => serde_json::from_str(s).unwrap_or_else(|_| J::String(s.clone())),
        Value::Bytes(b) => J::String(format!("\\x{}", hex::encode(b))),
        Value::Timestamp(us) => format_timestamp_micros(*us),
        Value::Date(d) => NaiveDate::from_ymd_opt(1970, 1, 1)
            .and_then(|e| e.checked_add_signed(chrono::Duration::days(i64::from(*d))))
            .map_or(J::Null, |d| J::String(d.format("%Y-%m-%d").to_string())),
    }
}

/// A value as KalamDB's clients decode it (its documented cell encoding): BIGINT as a string
/// (no precision lost in JavaScript), TIMESTAMP as microseconds since the epoch, DATE as days
/// since the epoch, JSON as its text, BYTES as an array of byte values.
pub fn kalam_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::BigInt(i) => J::String(i.to_string()),
        Value::Timestamp(us) => J::from(*us),
        Value::Date(d) => J::from(*d),
        Value::Json(s) => J::String(s.clone()),
        Value::Bytes(b) => J::Array(b.iter().map(|x| J::from(*x)).collect()),
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
        let vals = [Value::Timestamp(1_700_000_000_123_456), Value::Date(19724)];
        for (v, dt) in vals.iter().zip([DataType::Timestamp, DataType::Date]) {
            let arr = build_array(dt, std::iter::once(v), 1);
            let field = arrow_field("c", dt, true);
            assert_eq!(cell_to_json(&arr, 0, &field), value_to_json(v));
        }
    }
}
