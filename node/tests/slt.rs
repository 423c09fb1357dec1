//! Golden SQL tests: every `tests/slt/*.slt` file runs through the `sqllogictest` crate
//! against a real server over HTTP. Errors surface as `CODE: message`, so files can assert
//! codes with `statement error TABLE_NOT_FOUND`. A record of several statements is one request;
//! it answers with its last result that has rows, else its last result.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::Server;
use sqllogictest::{DBOutput, DefaultColumnType};

#[derive(Debug)]
struct SqlError(String);

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SqlError {}

struct HttpDb {
    server: Arc<Server>,
}

fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "NULL".into(),
        serde_json::Value::String(s) if s.is_empty() => "(empty)".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for HttpDb {
    type Error = SqlError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SqlError> {
        let (status, body) = self.server.sql(sql).await;
        if status != 200 {
            return Err(SqlError(format!(
                "{}: {} (HTTP {status})",
                body["error"]["code"].as_str().unwrap_or("?"),
                body["error"]["message"].as_str().unwrap_or("?")
            )));
        }
        // A request of several statements answers with its last result that has rows (a
        // SELECT inside `BEGIN ... COMMIT`), else its last result.
        let results = body["results"].as_array().cloned().unwrap_or_default();
        let result =
            results.iter().rev().find(|r| r.get("schema").is_some()).or(results.last()).cloned().unwrap_or_default();
        match result.get("schema") {
            Some(schema) => {
                let types = schema
                    .as_array()
                    .map(|cols| {
                        cols.iter()
                            .map(|c| match c["data_type"].as_str().unwrap_or("") {
                                "BigInt" | "Int" | "SmallInt" => DefaultColumnType::Integer,
                                "Double" | "Float" => DefaultColumnType::FloatingPoint,
                                "Text" => DefaultColumnType::Text,
                                _ => DefaultColumnType::Any,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let rows = result["rows"]
                    .as_array()
                    .map(|rows| {
                        rows.iter()
                            .map(|r| r.as_array().map(|cells| cells.iter().map(cell).collect()).unwrap_or_default())
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(DBOutput::Rows { types, rows })
            }
            None => Ok(DBOutput::StatementComplete(result["row_count"].as_u64().unwrap_or(0))),
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "kalamdb"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_sql_files() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(Server::start(dir.path()).await);
    let slt_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&slt_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", slt_dir.display());
    for file in files {
        let server = server.clone();
        let mut runner = sqllogictest::Runner::new(move || {
            let server = server.clone();
            async move { Ok::<_, SqlError>(HttpDb { server }) }
        });
        if let Err(e) = runner.run_file_async(&file).await {
            panic!("{}: {}", file.display(), e.display(false));
        }
    }
}
