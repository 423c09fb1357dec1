//! Output of results: a bordered table followed by `(N rows)`, JSON, or CSV.

use comfy_table::{ContentArrangement, Table, presets};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s.trim().to_ascii_lowercase().as_str() {
            "table" => Some(Format::Table),
            "json" => Some(Format::Json),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Table => "table",
            Format::Json => "json",
            Format::Csv => "csv",
        }
    }
}

/// A cell as text by its column's `data_type` (the API's cell encoding): TIMESTAMP
/// microseconds as RFC 3339, DATE days as `YYYY-MM-DD`, BYTES arrays as `\\x` hex; strings as
/// they are, NULL as `NULL`, everything else as JSON.
fn cell(v: &Value, data_type: &str) -> String {
    match (data_type, v) {
        (_, Value::Null) => "NULL".into(),
        ("Timestamp" | "DateTime", Value::Number(n)) => n
            .as_i64()
            .and_then(chrono::DateTime::from_timestamp_micros)
            .map_or_else(|| n.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        ("Date", Value::Number(n)) => n
            .as_i64()
            .and_then(|d| {
                chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?.checked_add_signed(chrono::Duration::try_days(d)?)
            })
            .map_or_else(|| n.to_string(), |d| d.format("%Y-%m-%d").to_string()),
        ("Bytes", Value::Array(a)) => {
            let hex: Option<String> = a.iter().map(|b| b.as_u64().map(|b| format!("{b:02x}"))).collect();
            hex.map_or_else(|| v.to_string(), |h| format!("\\x{h}"))
        }
        (_, Value::String(s)) => s.clone(),
        (_, other) => other.to_string(),
    }
}

fn columns(result: &Value) -> Vec<(String, String)> {
    result["schema"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|c| {
                    let name = c["name"].as_str().unwrap_or_default().to_string();
                    (name, c["data_type"].as_str().unwrap_or_default().to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn cells(row: &Value, cols: &[(String, String)], as_text: fn(&Value, &str) -> String) -> Vec<String> {
    row.as_array()
        .map(|r| r.iter().enumerate().map(|(i, v)| as_text(v, cols.get(i).map_or("", |c| c.1.as_str()))).collect())
        .unwrap_or_default()
}

/// Render one statement's result.
pub fn render(result: &Value, format: Format) -> String {
    let rows = result["rows"].as_array();
    if format == Format::Json {
        return serde_json::to_string_pretty(result).unwrap_or_default();
    }
    let Some(rows) = rows else {
        // A statement without rows: its message.
        return result["message"].as_str().map_or_else(|| result.to_string(), str::to_string);
    };
    let cols = columns(result);
    match format {
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            let _ = w.write_record(cols.iter().map(|c| &c.0));
            for r in rows {
                let _ = w.write_record(cells(r, &cols, csv_cell));
            }
            let bytes = w.into_inner().unwrap_or_default();
            String::from_utf8_lossy(&bytes).trim_end().to_string()
        }
        _ => {
            let mut t = Table::new();
            t.load_style(presets::ASCII_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Disabled);
            t.set_header(cols.iter().map(|c| &c.0));
            for r in rows {
                t.add_row(cells(r, &cols, cell));
            }
            let n = rows.len();
            format!("{t}\n({n} row{})", if n == 1 { "" } else { "s" })
        }
    }
}

/// CSV has no NULL: an empty field.
fn csv_cell(v: &Value, data_type: &str) -> String {
    match v {
        Value::Null => String::new(),
        other => cell(other, data_type),
    }
}

/// `Took: X ms`.
pub fn took(ms: f64) -> String {
    format!("Took: {ms:.3} ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> Value {
        serde_json::json!({
            "schema": [{"name": "id", "data_type": "BigInt", "index": 0}, {"name": "name", "data_type": "Text", "index": 1}],
            "rows": [["1", "a, b"], ["2", null]],
            "row_count": 2,
        })
    }

    #[test]
    fn tables_have_borders_and_a_row_count() {
        let out = render(&result(), Format::Table);
        assert!(out.starts_with("+----+------+"), "{out}");
        assert!(out.contains("| 2  | NULL |"), "{out}");
        assert!(out.ends_with("(2 rows)"), "{out}");
    }

    #[test]
    fn typed_cells_are_shown_readable() {
        let r = serde_json::json!({
            "schema": [
                {"name": "at", "data_type": "Timestamp", "index": 0},
                {"name": "day", "data_type": "Date", "index": 1},
                {"name": "b", "data_type": "Bytes", "index": 2},
            ],
            "rows": [[1_000_000, 19724, [171, 1]]],
            "row_count": 1,
        });
        assert_eq!(render(&r, Format::Csv), "at,day,b\n1970-01-01T00:00:01.000000Z,2024-01-02,\\xab01");
    }

    #[test]
    fn csv_quotes_and_json_is_the_result() {
        assert_eq!(render(&result(), Format::Csv), "id,name\n1,\"a, b\"\n2,");
        let v: Value = serde_json::from_str(&render(&result(), Format::Json)).unwrap();
        assert_eq!(v["rows"][0][1], "a, b");
        assert_eq!(
            render(&serde_json::json!({"message": "Inserted 1 row(s)", "row_count": 1}), Format::Table),
            "Inserted 1 row(s)"
        );
    }
}
