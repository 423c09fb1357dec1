//! Cold files in a bucket of a real S3 server (moto on loopback, behind a relay the test can
//! cut): a bucket that is missing, credentials the store refuses, or an endpoint that is down
//! make FLUSH answer 503 `STORAGE_UNAVAILABLE` and keep the rows hot, automatic flushes wait,
//! and once the store is back everything flushes and reaches the bucket. The cold-storage tests themselves run on a
//! bucket too (`cold_storage.rs`, `bucket::*`), and so does a 3-node cluster
//! (`file_retirement.rs`).

mod common;

use std::time::{Duration, Instant};

use common::Server;
use common::s3::S3Server;
use serde_json::json;

const BUCKET: &str = "kalam-errors";
const PREFIX: &str = "node";

async fn flushed_jobs(s: &Server, table: &str) -> usize {
    let r =
        s.sql_ok(&format!("SELECT job_id FROM system.jobs WHERE table_name = '{table}' AND job_type = 'flush'")).await;
    r["rows"].as_array().unwrap().len()
}

/// Upload markers waiting (their temp files, which have an extension, are not markers).
fn queued_uploads(data: &std::path::Path) -> usize {
    let entries = std::fs::read_dir(data.join("storage-cache/.upload"));
    entries
        .map(|d| d.flatten().filter(|e| std::path::Path::new(&e.file_name()).extension().is_none()).count())
        .unwrap_or(0)
}

fn parquet_objects(listing: &[(String, u64)]) -> usize {
    listing.iter().filter(|(k, _)| k.ends_with(".parquet")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_errors_keep_rows_hot_until_a_flush_succeeds() {
    let s3 = S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = s3.env(BUCKET, PREFIX);
    env.push(("KALAMDB_STORAGE_FLUSH_POLICY".into(), "rows:1000000".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let s = Server::start_with(dir.path(), common::free_port(), &env).await;
    s.sql_ok("CREATE NAMESPACE app").await;
    s.sql_ok("CREATE TABLE app.t (id BIGINT PRIMARY KEY, v TEXT) WITH (TYPE = 'SHARED')").await;
    s.sql_ok("CREATE TABLE app.auto (id BIGINT PRIMARY KEY) WITH (TYPE = 'SHARED', FLUSH_POLICY = 'rows:10')").await;
    let values: Vec<String> = (0..50).map(|i| format!("({i}, 'v{i}')")).collect();
    s.sql_ok(&format!("INSERT INTO app.t (id, v) VALUES {}", values.join(", "))).await;

    // The bucket does not exist yet.
    let (status, body) = s.sql("FLUSH TABLE app.t").await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("STORAGE_UNAVAILABLE")), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("s3://{BUCKET}/{PREFIX}")) && message.contains("not found"), "{message}");
    assert_eq!(flushed_jobs(&s, "t").await, 0, "nothing was proposed");
    assert_eq!(s.sql_ok("SELECT count(*) FROM app.t").await["rows"], json!([[50]]));
    // Automatic flushes wait too: the rows of a due table stay hot.
    let values: Vec<String> = (0..20).map(|i| format!("({i})")).collect();
    s.sql_ok(&format!("INSERT INTO app.auto (id) VALUES {}", values.join(", "))).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(flushed_jobs(&s, "auto").await, 0);
    assert_eq!(s.sql_ok("SELECT count(*) FROM app.auto").await["rows"], json!([[20]]));

    // With the bucket there, both flush and their files reach it.
    s3.create_bucket(BUCKET).await;
    let r = s.sql_ok("FLUSH TABLE app.t").await;
    assert!(r["message"].as_str().unwrap().contains("50 row(s) written"), "{r}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while flushed_jobs(&s, "auto").await == 0 {
        assert!(Instant::now() < deadline, "the automatic flush did not resume");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listing = s3.wait_for(BUCKET, PREFIX, Duration::from_secs(30), |l| parquet_objects(l) == 2).await;
    assert_eq!(parquet_objects(&listing), 2, "{listing:?}");
    assert!(listing.iter().any(|(k, _)| k.starts_with(&format!("{PREFIX}/app/t-t"))), "{listing:?}");

    // Endpoint down: the flush is refused, writes and reads go on (files are cached).
    s3.set_reachable(false);
    s.sql_ok("UPDATE app.t SET v = 'new' WHERE id < 5").await;
    s.sql_ok("INSERT INTO app.t (id, v) VALUES (100, 'late')").await;
    let started = Instant::now();
    let (status, body) = s.sql("FLUSH TABLE app.t").await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("STORAGE_UNAVAILABLE")), "{body}");
    assert!(started.elapsed() < Duration::from_secs(30), "the check took {:?}", started.elapsed());
    assert_eq!(flushed_jobs(&s, "t").await, 1);
    let r = s.sql_ok("SELECT count(*), count(*) FILTER (WHERE v = 'new') FROM app.t").await;
    assert_eq!(r["rows"], json!([[51, 5]]));
    assert_eq!(s.sql_ok("SELECT v FROM app.t WHERE id = 30").await["rows"], json!([["v30"]]));

    // Back up: the flush goes through and the bucket gets its file.
    s3.set_reachable(true);
    s.sql_ok("FLUSH TABLE app.t").await;
    let listing = s3.wait_for(BUCKET, PREFIX, Duration::from_secs(30), |l| parquet_objects(l) == 3).await;
    assert_eq!(parquet_objects(&listing), 3, "{listing:?}");
    let totals = "SELECT count(*), count(*) FILTER (WHERE v = 'new') FROM app.t";
    assert_eq!(s.sql_ok(totals).await["rows"], json!([[51, 5]]));

    // A node that lost its cache while the endpoint is down: reads that need a file answer
    // 503 STORAGE_UNAVAILABLE, and work again once it is back.
    let deadline = Instant::now() + Duration::from_secs(30);
    while queued_uploads(dir.path()) > 0 {
        assert!(Instant::now() < deadline, "uploads stayed queued");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let port = s.port;
    let mut s = s;
    s.kill9();
    std::fs::remove_dir_all(dir.path().join("storage-cache")).unwrap();
    s3.set_reachable(false);
    // A read gives up on a file after FETCH_ATTEMPTS_MAX attempts with growing pauses (about
    // 10 s here); under the whole suite's load that once took longer than the 30 s query
    // timeout, and the answer was QUERY_TIMEOUT. What is checked is the answer, not the time.
    let mut env = env.clone();
    env.push(("KALAMDB_LIMITS_QUERY_TIMEOUT_MS", "120000"));
    let s = Server::start_with(dir.path(), port, &env).await;
    let (status, body) = s.sql(totals).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("STORAGE_UNAVAILABLE")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("cannot fetch cold file"), "{body}");
    s3.set_reachable(true);
    assert_eq!(s.sql_ok(totals).await["rows"], json!([[51, 5]]));
    assert_eq!(s.sql_ok("SELECT v FROM app.t WHERE id = 30").await["rows"], json!([["v30"]]));
}

/// Files written while the endpoint is down stay queued on local disk and reach the bucket
/// once it is back; a kill -9 in between loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_queued_while_the_endpoint_is_down_survive_a_crash() {
    let s3 = S3Server::start().await;
    s3.create_bucket(BUCKET).await;
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let env = s3.env(BUCKET, PREFIX);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut s = Server::start_with(dir.path(), port, &env).await;
    s.sql_ok("CREATE NAMESPACE app").await;
    s.sql_ok("CREATE TABLE app.t (id BIGINT PRIMARY KEY, v BIGINT) WITH (TYPE = 'SHARED')").await;
    let values: Vec<String> = (0..100).map(|i| format!("({i}, {i})")).collect();
    s.sql_ok(&format!("INSERT INTO app.t (id, v) VALUES {}", values.join(", "))).await;
    // The check passes, then the endpoint goes before the uploader gets to the file.
    let flush = tokio::spawn({
        let port = s.port;
        async move { common::post_sql(port, "FLUSH TABLE app.t").await }
    });
    s3.set_reachable(false);
    let answer = flush.await.unwrap();
    let queued = queued_uploads(dir.path());
    match answer {
        // Flushed locally, and the upload is queued (unless it raced through first).
        Ok((200, _)) => assert!(queued > 0 || parquet_objects(&s3.list(BUCKET, PREFIX).await) > 0),
        Ok((503, body)) => assert_eq!(body["error"]["code"], "STORAGE_UNAVAILABLE", "{body}"),
        other => panic!("unexpected answer {other:?}"),
    }
    s.kill9();
    s3.set_reachable(true);
    let s = Server::start_with(dir.path(), port, &env).await;
    s.sql_ok("FLUSH TABLE app.t").await;
    let listing = s3.wait_for(BUCKET, PREFIX, Duration::from_secs(30), |l| parquet_objects(l) >= 1).await;
    assert!(parquet_objects(&listing) >= 1, "{listing:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while queued_uploads(dir.path()) > 0 {
        assert!(Instant::now() < deadline, "uploads stayed queued");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(s.sql_ok("SELECT count(*), sum(v) FROM app.t").await["rows"], json!([[100, 4950]]));
}

/// A store that refuses the node's credentials: FLUSH answers 503 `STORAGE_UNAVAILABLE` naming
/// the cause, and the rows stay hot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_keep_rows_hot() {
    let s3 = S3Server::start_refusing_credentials().await;
    let dir = tempfile::tempdir().unwrap();
    let env = s3.env(BUCKET, PREFIX);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let s = Server::start_with(dir.path(), common::free_port(), &env).await;
    s.sql_ok("CREATE NAMESPACE app").await;
    s.sql_ok("CREATE TABLE app.t (id BIGINT PRIMARY KEY, v TEXT) WITH (TYPE = 'SHARED')").await;
    s.sql_ok("INSERT INTO app.t (id, v) VALUES (1, 'a'), (2, 'b')").await;
    let (status, body) = s.sql("FLUSH TABLE app.t").await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("STORAGE_UNAVAILABLE")), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("credentials refused") && message.contains("403"), "{message}");
    assert_eq!(flushed_jobs(&s, "t").await, 0);
    assert_eq!(s.sql_ok("SELECT id, v FROM app.t ORDER BY id").await["rows"], json!([[1, "a"], [2, "b"]]));
}
