//! Quoted literals stay literals through every statement form that carries text on
//! (`EXECUTE AS`, `AS OF`, `SUBSCRIBE ... WHERE` and the tail's `where=` with `last_rows`),
//! against a real server: quotes, `;`, `--`, `/* */` and doubled quotes, in names quoted with
//! `"` too (issue 18).

mod common;

use std::time::Duration;

use common::{ROOT_BASIC, Server, TailStream};
use serde_json::json;

/// Values whose SQL literals (quotes doubled) look like SQL when printed back unescaped.
const NASTY: [&str; 6] = [
    "it's",
    "a' OR '1'='1",
    "x'; DROP TABLE \"Odd ns\".\"T x\"; --",
    "/* not a comment */",
    "-- not a comment",
    "é'ü''",
];

fn literal(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

fn rows(b: &serde_json::Value) -> &serde_json::Value {
    &b["results"][0]["rows"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoted_literals_stay_literals_in_every_carried_statement() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    s.sql_ok("CREATE NAMESPACE \"Odd ns\"").await;
    s.sql_ok("CREATE TABLE \"Odd ns\".\"T x\" (id BIGINT PRIMARY KEY, v TEXT) WITH (TYPE = 'SHARED', ACCESS_LEVEL = 'PUBLIC')")
        .await;
    s.sql_ok("CREATE USER 'bob' WITH PASSWORD 'bob-password' ROLE service").await;
    for (i, v) in NASTY.iter().enumerate() {
        // Written through EXECUTE AS: the inner statement is cut from the source as written.
        let sql =
            format!("EXECUTE AS USER 'bob' (INSERT INTO \"Odd ns\".\"T x\" (id, v) VALUES ({i}, {}))", literal(v));
        s.sql_ok(&sql).await;
    }
    let (_, b) = s.sql("SELECT max(_seq) FROM \"Odd ns\".\"T x\"").await;
    let at = rows(&b)[0][0].as_i64().unwrap() >> 20;
    // Overwrite every row, so only AS OF still sees the values above.
    s.sql_ok("UPDATE \"Odd ns\".\"T x\" SET v = 'later'").await;
    for (i, v) in NASTY.iter().enumerate() {
        let sql = format!(
            "SELECT id, v FROM \"Odd ns\".\"T x\" AS OF {at} WHERE v = {} -- a comment\nORDER BY id",
            literal(v)
        );
        let (st, b) = s.sql(&sql).await;
        assert_eq!((st, rows(&b)), (200, &json!([[i, v]])), "{sql}: {b}");
    }
    let (_, b) = s.sql("SELECT count(*) FROM \"Odd ns\".\"T x\"").await;
    assert_eq!(rows(&b), &json!([[NASTY.len()]]), "no statement hidden in a literal ran");

    // SUBSCRIBE ... WHERE with such a literal: the stream's initial rows match it exactly.
    s.sql_ok(&format!("UPDATE \"Odd ns\".\"T x\" SET v = {} WHERE id = 1", literal(NASTY[1]))).await;
    let sql = format!("SUBSCRIBE TO \"Odd ns\".\"T x\" WHERE v = {} OPTIONS (last_rows = 5)", literal(NASTY[1]));
    let r = s.sql_ok(&sql).await;
    let url = r["rows"][0][4].as_str().expect("stream_url").to_string();
    let mut t = TailStream::open(s.port, &url, Some(ROOT_BASIC), &[("accept", "application/x-ndjson")], None).await;
    assert_eq!(t.status, 200, "{url}");
    let mut initial = Vec::new();
    while let Some(e) = t.next_json(Duration::from_secs(5)).await {
        match e["type"].as_str() {
            Some("initial") => initial.push((common::int(&e["row"]["id"]), e["row"]["v"].as_str().map(str::to_string))),
            Some("subscribed") => {}
            _ => break,
        }
        if initial.len() > 1 {
            break;
        }
    }
    assert_eq!(initial, vec![(Some(1), Some(NASTY[1].to_string()))], "{url}");
}

/// The body of an answer without its timing, which differs between any two requests.
fn untimed(mut b: serde_json::Value) -> serde_json::Value {
    if let Some(o) = b.as_object_mut() {
        o.remove("took");
    }
    b
}

/// A request that is one INSERT of literal rows is read straight from its text (the bulk
/// path), any other through tokens and sqlparser. The same INSERT sent both ways (a leading
/// comment sends it the general way) answers alike, error or not, and writes alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_read_from_its_text_answers_as_through_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    s.sql_ok("CREATE NAMESPACE app").await;
    for t in ["fast", "general"] {
        s.sql_ok(&format!(
            "CREATE TABLE app.{t} (id BIGINT PRIMARY KEY, n INT NOT NULL, v TEXT, ok BOOLEAN, d DOUBLE) WITH (TYPE = 'SHARED')"
        ))
        .await;
    }
    let values = NASTY.iter().enumerate().map(|(i, v)| format!("({i}, -{i}, {}, TRUE, 1.5)", literal(v)));
    let statements = [
        format!("INSERT INTO app.T (id, n, v, ok, d) VALUES {};", values.collect::<Vec<_>>().join(",\n")),
        "insert into app.t values (10, 1, NULL, false, -0.25)".to_string(),
        "INSERT INTO app.t (n, id) VALUES (7, 11)".to_string(),
        "INSERT INTO app.t (id, n) VALUES (0, 1)".to_string(),
        "INSERT INTO app.t (id, n) VALUES (20, 1), (20, 2)".to_string(),
        "INSERT INTO app.t (id, n) VALUES (21, 'x')".to_string(),
        "INSERT INTO app.t (id, n) VALUES (22, 3000000000)".to_string(),
        "INSERT INTO app.t (id, n) VALUES (NULL, 1)".to_string(),
        "INSERT INTO app.t (id, v) VALUES (23, 'no n')".to_string(),
        "INSERT INTO app.t (id, n) VALUES (24)".to_string(),
        "INSERT INTO app.t (id, n, id) VALUES (25, 1, 25)".to_string(),
        "INSERT INTO app.t (id, nope) VALUES (26, 1)".to_string(),
        "INSERT INTO app.t VALUES (27, 1)".to_string(),
        "INSERT INTO app.missing (id) VALUES (1)".to_string(),
        "INSERT INTO nowhere.t (id) VALUES (1)".to_string(),
        "INSERT INTO app.t (id, n, ok) VALUES (28, 1, 'maybe')".to_string(),
        "INSERT INTO app.t (id, n, d) VALUES (29, 1, 'x')".to_string(),
    ];
    let mut errors = 0;
    for sql in &statements {
        let fast = sql.replace("app.t ", "app.fast ").replace("app.T ", "app.fast ");
        let general = format!(
            "-- a comment makes it go through tokens\n{}",
            sql.replace("app.t ", "app.general ").replace("app.T ", "app.general ")
        );
        assert!(kalamdb_query::parse::scan_values_insert(&fast).is_some(), "not read from its text: {fast}");
        assert!(kalamdb_query::parse::scan_values_insert(&general).is_none(), "{general}");
        let (fast_status, fast_body) = s.sql(&fast).await;
        let (general_status, general_body) = s.sql(&general).await;
        let fast_body = untimed(fast_body).to_string().replace("fast", "TABLE");
        let general_body = untimed(general_body).to_string().replace("general", "TABLE");
        assert_eq!((fast_status, &fast_body), (general_status, &general_body), "{sql}");
        errors += usize::from(fast_status != 200);
    }
    assert!(errors >= 12, "the error cases failed: {errors}");
    let all = |t: &str| format!("SELECT id, n, v, ok, d, _seq > 0 FROM app.{t} ORDER BY id");
    let (fast, general) = (s.sql_ok(&all("fast")).await, s.sql_ok(&all("general")).await);
    assert_eq!(fast["rows"], general["rows"]);
    assert_eq!(fast["rows"].as_array().map(Vec::len), Some(NASTY.len() + 2), "{fast}");
}
