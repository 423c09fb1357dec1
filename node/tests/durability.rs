//! Crash durability: every acknowledged write survives `kill -9` and a restart.

mod common;

use std::sync::Arc;

use common::Server;

/// Concurrent writers and rows per writer; bounded so the test stays short.
const WRITERS: usize = 16;
const ROWS_PER_WRITER: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_rows_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    s.sql_ok("CREATE NAMESPACE test").await;
    s.sql_ok("CREATE TABLE test.data (value TEXT)").await;
    s.sql_ok("CREATE TABLE test.kv (k BIGINT PRIMARY KEY, v TEXT) WITH (TYPE = 'SHARED')").await;
    // The spec's insert without a key: ids are generated.
    s.sql_ok("INSERT INTO test.data (value) VALUES ('during_failure')").await;

    let s = Arc::new(s);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..ROWS_PER_WRITER {
                let k = (w * ROWS_PER_WRITER + i) as i64;
                let (status, body) = s.sql(&format!("INSERT INTO test.kv (k, v) VALUES ({k}, 'v{k}')")).await;
                assert_eq!(status, 200, "{body}");
                acked.push(k);
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let r = s.sql_ok("UPDATE test.kv SET v = 'updated' WHERE k < 10").await;
    assert_eq!(r["row_count"], 10);
    let r = s.sql_ok("DELETE FROM test.kv WHERE k >= 790").await;
    assert_eq!(r["row_count"], 10);

    let mut s = Arc::into_inner(s).expect("no other server handles");
    let port = s.port;
    s.kill9();
    let s = Server::start_on(dir.path(), port).await;

    let r = s.sql_ok("SELECT k, v FROM test.kv ORDER BY k").await;
    let rows = r["rows"].as_array().unwrap();
    let expected: Vec<i64> = acked.iter().copied().filter(|k| *k < 790).collect();
    assert_eq!(rows.len(), expected.len(), "rows after restart: {}", rows.len());
    for (row, k) in rows.iter().zip(expected.iter()) {
        assert_eq!(row[0].as_i64(), Some(*k));
        let v = if *k < 10 { "updated".to_string() } else { format!("v{k}") };
        assert_eq!(row[1].as_str(), Some(v.as_str()));
    }
    let r = s.sql_ok("SELECT value FROM test.data").await;
    assert_eq!(r["rows"], serde_json::json!([["during_failure"]]));
    // The catalog survived too, and the table keeps accepting writes.
    s.sql_ok("INSERT INTO test.kv (k, v) VALUES (100000, 'after')").await;
}
