//! The HTTP API's shape and its handling of bad input, against a real server process.

mod common;

use common::Server;
use serde_json::json;

#[tokio::test]
async fn api_shape_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    // A small body limit keeps the oversized requests below small.
    let s = Server::start_with(dir.path(), common::free_port(), &[("KALAMDB_LIMITS_REQUEST_BODY_BYTES_MAX", "65536")])
        .await;

    let (status, health) = s.get("/v1/api/healthcheck").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["api_version"], "v1");
    assert_eq!(s.get("/health").await.unwrap().0, 200);

    // The spec's statements, verbatim.
    let r = s.sql_ok("CREATE NAMESPACE test_cluster").await;
    assert!(r["message"].as_str().unwrap().contains("created"), "{r}");
    s.sql_ok("CREATE TABLE test_cluster.items (id BIGINT PRIMARY KEY, name TEXT) WITH (TYPE = 'SHARED')").await;
    let (status, body) = s.sql("SELECT * FROM system.namespaces").await;
    assert_eq!(status, 200);
    let rows = body["results"][0]["rows"].as_array().unwrap();
    assert!(rows.iter().any(|r| r[0] == "test_cluster"), "{body}");
    assert!(body["took"].as_f64().is_some());
    assert_eq!(body["results"][0]["schema"][0]["name"], "namespace_id");
    assert_eq!(body["results"][0]["schema"][0]["index"], 0);

    // Insert, select, typed schema.
    let r = s.sql_ok("INSERT INTO test_cluster.items (id, name) VALUES (1, 'a'), (2, 'b')").await;
    assert_eq!(r["message"], "Inserted 2 row(s)");
    assert_eq!(r["row_count"], 2);
    let r = s.sql_ok("SELECT id, name FROM test_cluster.items ORDER BY id").await;
    assert_eq!(r["rows"], json!([[1, "a"], [2, "b"]]));
    assert_eq!(r["schema"][0]["data_type"], "BigInt");
    assert_eq!(r["schema"][1]["data_type"], "Text");
    // Point lookups take the fast path and must agree with DataFusion.
    let fast = s.sql_ok("SELECT * FROM test_cluster.items WHERE id = 2").await;
    let slow = s.sql_ok("SELECT * FROM test_cluster.items WHERE id = 2 AND 1 = 1").await;
    assert_eq!(fast["rows"], slow["rows"]);
    assert_eq!(fast["schema"], slow["schema"]);
    // Parameters.
    let (st, b) = s.sql_body(json!({"sql": "SELECT name FROM test_cluster.items WHERE id = $1", "params": [1]})).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["results"][0]["rows"], json!([["a"]]));
    // namespace_id sets the default namespace.
    let (st, b) = s.sql_body(json!({"sql": "SELECT count(*) AS n FROM items", "namespace_id": "test_cluster"})).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["results"][0]["rows"], json!([[2]]));

    // Errors: status, code, never a panic.
    let cases: Vec<(serde_json::Value, u16, &str)> = vec![
        (json!({"sql": "SELEC 1"}), 400, "INVALID_SQL"),
        (json!({"sql": "SELECT * FROM test_cluster.nope"}), 400, "TABLE_NOT_FOUND"),
        (json!({"sql": "INSERT INTO nope.t (a) VALUES (1)"}), 400, "NAMESPACE_NOT_FOUND"),
        (json!({"sql": "CREATE NAMESPACE test_cluster"}), 400, "ALREADY_EXISTS"),
        (json!({"sql": "INSERT INTO test_cluster.items (id, name) VALUES (1, 'dup')"}), 400, "CONSTRAINT_VIOLATION"),
        (json!({"sql": "   "}), 400, "EMPTY_SQL"),
        (json!({"query": "SELECT 1"}), 400, "INVALID_REQUEST"),
    ];
    for (body, status, code) in cases {
        let (st, b) = s.sql_body(body.clone()).await;
        assert_eq!(st, status, "{body} -> {b}");
        assert_eq!(b["status"], "error");
        assert_eq!(b["error"]["code"], code, "{body} -> {b}");
        assert_eq!(b["results"], json!([]));
    }
    let (st, b) = s.request("POST", "/v1/api/sql", Some("application/json"), b"{not json".to_vec()).await.unwrap();
    assert_eq!((st, b["error"]["code"].as_str()), (400, Some("INVALID_REQUEST")));
    let (st, b) =
        s.request("POST", "/v1/api/sql", Some("text/plain"), br#"{"sql":"SELECT 1"}"#.to_vec()).await.unwrap();
    assert_eq!((st, b["error"]["code"].as_str()), (400, Some("INVALID_CONTENT_TYPE")));
    // Over the limit: refused from the declared length, before the body is read.
    let head = format!(
        "POST /v1/api/sql HTTP/1.1\r\nHost: x\r\nAuthorization: Basic cm9vdDo=\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"sql\":\"",
        200 << 10
    );
    assert_eq!(s.raw_status(head.as_bytes()).await, 413);
    // Over the limit without a declared length (chunked): refused while reading.
    let chunk = "x".repeat(16 << 10);
    let mut chunked = String::from(
        "POST /v1/api/sql HTTP/1.1\r\nHost: x\r\nAuthorization: Basic cm9vdDo=\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    for _ in 0..8 {
        chunked.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    chunked.push_str("0\r\n\r\n");
    assert_eq!(s.raw_status(chunked.as_bytes()).await, 413);
    let (st, _) = s.get("/v1/api/nope").await.unwrap();
    assert_eq!(st, 404);

    // A failed statement in a batch reports which one, earlier ones keep their effect.
    let (st, b) = s.sql("INSERT INTO test_cluster.items (id, name) VALUES (3, 'c'); SELECT * FROM nope.nope").await;
    assert_eq!(st, 400);
    assert!(b["error"]["message"].as_str().unwrap().starts_with("statement 2"), "{b}");
    let r = s.sql_ok("SELECT count(*) FROM test_cluster.items").await;
    assert_eq!(r["rows"], json!([[3]]));
}

/// CORS (`security.cors.allowed_origins`): a listed origin's preflight is answered and its
/// requests carry the headers with credentials; this server's own origin and clients without
/// `Origin` are untouched; any other origin is refused with 403 before a handler runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_listed_origins_only() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let env = [("KALAMDB_SECURITY_CORS_ALLOWED_ORIGINS", r#"["http://app.localhost:3000"]"#)];
    let s = common::Server::start_with(dir.path(), port, &env).await;
    let host = format!("127.0.0.1:{port}");
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /v1/api/sql HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type\r\nConnection: close\r\n\r\n"
        )
    };
    let head = s.raw_head(&preflight("http://app.localhost:3000")).await;
    assert!(head.starts_with("http/1.1 204"), "{head}");
    for h in [
        "access-control-allow-origin: http://app.localhost:3000",
        "access-control-allow-credentials: true",
        "access-control-allow-methods: get, post, options",
        "access-control-allow-headers: authorization, content-type, last-event-id",
        "access-control-max-age: 600",
        "vary: origin",
    ] {
        assert!(head.contains(h), "missing {h}: {head}");
    }
    let head = s.raw_head(&preflight("http://evil.localhost:3000")).await;
    assert!(head.starts_with("http/1.1 403") && !head.contains("access-control-allow-origin"), "{head}");

    let body = r#"{"sql": "SELECT 1 AS one"}"#;
    let post = |origin: Option<&str>| {
        let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
        format!(
            "POST /v1/api/sql HTTP/1.1\r\nHost: {host}\r\n{origin}Authorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            common::ROOT_BASIC,
            body.len()
        )
    };
    let head = s.raw_head(&post(Some("http://app.localhost:3000"))).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("access-control-allow-origin: http://app.localhost:3000"), "{head}");
    assert!(head.contains("access-control-allow-credentials: true"), "{head}");
    // A page elsewhere cannot make the browser send it, credentials or not.
    let head = s.raw_head(&post(Some("https://evil.example.com"))).await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
    let (status, body) = s.sql_body(serde_json::json!({"sql": "SELECT 1"})).await;
    assert_eq!(status, 200, "{body}");
    // This server's own origin (the console it serves) and clients without Origin pass as before.
    let head = s.raw_head(&post(Some(&format!("http://{host}")))).await;
    assert!(head.starts_with("http/1.1 200") && !head.contains("access-control-allow-origin"), "{head}");
    let head = s.raw_head(&post(None)).await;
    assert!(head.starts_with("http/1.1 200") && !head.contains("access-control"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_data_type_is_one_kalamdb_clients_know() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let r = s
        .sql_ok("SELECT NULL AS n, CAST(1.5 AS DECIMAL(10, 2)) AS d, make_array(1, 2) AS l, 1 = 1 AS b, 'x' AS t, arrow_cast(7, 'UInt8') AS u")
        .await;
    let types: Vec<(&str, &str)> = r["schema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["data_type"].as_str().expect("data_type is a name")))
        .collect();
    assert_eq!(
        types,
        [("n", "Text"), ("d", "Double"), ("l", "Text"), ("b", "Boolean"), ("t", "Text"), ("u", "SmallInt")],
        "{r}"
    );
    assert_eq!(r["rows"][0][1], 1.5);
    // A single node's cluster health in the shape KalamDB's clients decode.
    let (_, h) = s.get("/v1/api/cluster/health").await.unwrap();
    assert_eq!((h["cluster_id"].as_str(), h["is_cluster_mode"].as_bool()), (Some("standalone"), Some(false)), "{h}");
    let total = h["groups"].as_array().unwrap().len() as u64;
    assert_eq!((h["is_leader"].as_bool(), h["total_groups"].as_u64()), (Some(true), Some(total)), "{h}");
    assert_eq!(h["groups_leading"].as_u64(), Some(total), "a single node leads every group");
    assert!(r["rows"][0][2].is_string(), "a list is written as text: {r}");
}

/// The cells of `/v1/api/sql` in KalamDB's encoding, as its clients decode them: BIGINT as a
/// string, TIMESTAMP as microseconds, DATE as days, JSON as its text, BYTES as byte values;
/// an empty result still carries its schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_use_kalamdb_encoding_on_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    s.sql_ok("CREATE NAMESPACE enc").await;
    s.sql_ok(
        "CREATE TABLE enc.t (id BIGINT PRIMARY KEY, n INT, at TIMESTAMP, day DATE, doc JSON, raw BYTES, x DOUBLE) \
         WITH (TYPE = 'SHARED')",
    )
    .await;
    s.sql_ok(
        "INSERT INTO enc.t VALUES (9007199254740993, 7, '2024-01-02T03:04:05.123456Z', '2024-01-02', '{\"a\": [1]}', '\\xab01', 0.5)",
    )
    .await;
    let raw = |sql: &str| {
        let body = serde_json::json!({ "sql": sql }).to_string().into_bytes();
        s.request_raw_as(Some(common::ROOT_BASIC), "POST", "/v1/api/sql", Some("application/json"), body)
    };
    let (st, b) = raw("SELECT id, n, at, day, doc, raw, x FROM enc.t").await.unwrap();
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        b["results"][0]["rows"][0],
        serde_json::json!(["9007199254740993", 7, 1_704_164_645_123_456_i64, 19724, r#"{"a": [1]}"#, [171, 1], 0.5]),
        "{b}"
    );
    // What a result reads back as can be written back unchanged (TIMESTAMP microseconds too).
    let (st, b) = s
        .sql_body(serde_json::json!({
            "sql": "INSERT INTO enc.t (id, at, day) VALUES ($1, $2, $3)",
            "params": ["9007199254740995", 1_704_164_645_123_456_i64, 19724],
        }))
        .await;
    assert_eq!(st, 200, "{b}");
    let (_, b) = raw("SELECT at, day FROM enc.t WHERE id = 9007199254740995").await.unwrap();
    assert_eq!(b["results"][0]["rows"][0], serde_json::json!([1_704_164_645_123_456_i64, 19724]), "{b}");
    // An empty result keeps its columns and types.
    let (_, b) = raw("SELECT id, at FROM enc.t WHERE id = 1").await.unwrap();
    let r = &b["results"][0];
    assert_eq!(r["row_count"], 0, "{b}");
    assert_eq!(r["schema"][1], serde_json::json!({"name": "at", "data_type": "Timestamp", "index": 1}), "{b}");
    // NOW() (nanoseconds in DataFusion) is microseconds too.
    let (_, b) = raw("SELECT NOW() AS t").await.unwrap();
    let now_us = b["results"][0]["rows"][0][0].as_i64().expect("a number");
    let wall_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    assert!((wall_us - now_us).abs() < 60_000_000, "NOW() is {now_us} µs, the clock {wall_us}");
}
