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

/// A cell as text: strings as they are, NULL as `NULL`, everything else as JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn columns(result: &Value) -> Vec<String> {
    result["schema"]
        .as_array()
        .map(|s| s.iter().map(|c| c["name"].as_str().unwrap_or_default().to_string()).collect())
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
            let _ = w.write_record(&cols);
            for r in rows {
                let fields: Vec<String> = r.as_array().map(|r| r.iter().map(csv_cell).collect()).unwrap_or_default();
                let _ = w.write_record(&fields);
            }
            let bytes = w.into_inner().unwrap_or_default();
            String::from_utf8_lossy(&bytes).trim_end().to_string()
        }
        _ => {
            let mut t = Table::new();
            t.load_style(presets::ASCII_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Disabled);
            t.set_header(cols);
            for r in rows {
                t.add_row(r.as_array().map(|r| r.iter().map(cell).collect::<Vec<_>>()).unwrap_or_default());
            }
            let n = rows.len();
            format!("{t}\n({n} row{})", if n == 1 { "" } else { "s" })
        }
    }
}

/// CSV has no NULL: an empty field.
fn csv_cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        other => cell(other),
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
            "rows": [[1, "a, b"], [2, null]],
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
