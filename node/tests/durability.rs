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
    // Small snapshot/retention settings so this run also builds snapshots and purges the log:
    // the restart must recover from projection + snapshot + the retained log tail.
    let env = [("KALAMDB_RAFT_SNAPSHOT_LOGS_SINCE_LAST", "20"), ("KALAMDB_RAFT_LOGS_TO_KEEP", "10")];
    let port = common::free_port();
    let s = Server::start_with(dir.path(), port, &env).await;
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

    // 800 single-row writes went to the shared shard: it built at least one snapshot.
    // Snapshots are built in the background: wait for one, bounded.
    let snapshot_built = || {
        std::fs::read_dir(dir.path().join("snapshots"))
            .map(|d| d.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().ends_with(".snap")))
            .unwrap_or(false)
    };
    for _ in 0..100 {
        if snapshot_built() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(snapshot_built(), "no snapshot was built");

    let mut s = Arc::into_inner(s).expect("no other server handles");
    s.kill9();
    let s = Server::start_with(dir.path(), port, &env).await;

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
