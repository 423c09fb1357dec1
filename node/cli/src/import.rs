//! CSV import: the header names the columns; rows go in multi-row INSERTs of `batch_rows`,
//! with a progress bar (bytes read, rows/s). Fields are sent as SQL string literals and the
//! server coerces them to the column types; an empty field is NULL.

use std::path::Path;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use super::IMPORT_BATCH_ROWS_MAX;
use super::client::{CliError, Client};

fn quote(field: &str) -> String {
    if field.is_empty() {
        return "NULL".into();
    }
    format!("'{}'", field.replace('\'', "''"))
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.trim().replace('"', "\"\""))
}

pub async fn import(client: &Client, table: &str, file: &Path, batch_rows: usize) -> Result<String, CliError> {
    if batch_rows == 0 || batch_rows > IMPORT_BATCH_ROWS_MAX {
        return Err(CliError::new("INVALID_ARGUMENT", format!("--batch-rows must be 1..={IMPORT_BATCH_ROWS_MAX}")));
    }
    let open_err = |e: std::io::Error| CliError::new("FILE", format!("cannot read {}: {e}", file.display()));
    let bytes_total = std::fs::metadata(file).map_err(open_err)?.len();
    let mut reader = csv::Reader::from_path(file)
        .map_err(|e| CliError::new("FILE", format!("cannot read {}: {e}", file.display())))?;
    let headers = reader.headers().map_err(|e| CliError::new("CSV", e.to_string()))?.clone();
    if headers.is_empty() {
        return Err(CliError::new("CSV", "the first line must name the columns"));
    }
    let columns: Vec<String> = headers.iter().map(ident).collect();
    let prefix = format!("INSERT INTO {table} ({}) VALUES ", columns.join(", "));
    let bar = ProgressBar::new(bytes_total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut rows = 0u64;
    let mut batch: Vec<String> = Vec::with_capacity(batch_rows);
    let mut record = csv::StringRecord::new();
    let mut line = 1u64;
    loop {
        let more =
            reader.read_record(&mut record).map_err(|e| CliError::new("CSV", format!("line {}: {e}", line + 1)))?;
        if more {
            line += 1;
            if record.len() != headers.len() {
                return Err(CliError::new(
                    "CSV",
                    format!("line {line}: {} fields, the header has {}", record.len(), headers.len()),
                ));
            }
            let values: Vec<String> = record.iter().map(quote).collect();
            batch.push(format!("({})", values.join(", ")));
        }
        if batch.len() >= batch_rows || (!more && !batch.is_empty()) {
            let sql = format!("{prefix}{}", batch.join(", "));
            client.sql(&sql).await.map_err(|e| {
                bar.abandon();
                CliError::new(
                    &e.code,
                    format!("{} (after {rows} rows; the batch ending at line {line} was not imported)", e.message),
                )
            })?;
            rows += batch.len() as u64;
            batch.clear();
            let rate = rows as f64 / started.elapsed().as_secs_f64().max(1e-9);
            bar.set_position(reader.position().byte());
            bar.set_message(format!("{rows} rows, {rate:.0} rows/s"));
        }
        if !more {
            break;
        }
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    Ok(format!("Imported {rows} rows into {table} in {secs:.2} s ({:.0} rows/s)", rows as f64 / secs.max(1e-9)))
}
