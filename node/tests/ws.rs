//! `/v1/ws` against a real single-node server, with a real WebSocket client: every message of
//! KalamDB's live-query protocol (authenticate, subscribe with each option, batches on
//! `next_batch`, insert/update/delete changes, unsubscribe, errors), resuming from a `_seq`,
//! access rules and caps, gzip frames, and a slow client cut off with 1013.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Server;
use common::ws::WsClient;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(20);
const QUIET: Duration = Duration::from_millis(700);

fn subscribe(id: &str, sql: &str, options: Option<Value>) -> Value {
    let mut sub = json!({"id": id, "sql": sql});
    if let Some(o) = options {
        sub["options"] = o;
    }
    json!({"type": "subscribe", "subscription": sub})
}

fn ids(rows: &Value) -> Vec<String> {
    rows.as_array().unwrap().iter().map(|r| r["id"].as_str().expect("BIGINT ids are strings").to_string()).collect()
}

/// The next `change` message of subscription `id`.
async fn change(c: &mut WsClient, id: &str) -> Value {
    loop {
        let m = c.next_of("change", WAIT).await;
        if m["subscription_id"] == id {
            return m;
        }
    }
}

async fn error_of(c: &mut WsClient) -> Value {
    c.next_of("error", WAIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_of_the_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("n")).await;
    s.sql_ok("CREATE NAMESPACE app").await;
    s.sql_ok("CREATE TABLE app.items (id BIGINT PRIMARY KEY, name TEXT NOT NULL, n INT, at TIMESTAMP) WITH (TYPE = 'SHARED')")
        .await;
    for i in 1..=5 {
        s.sql_ok(&format!(
            "INSERT INTO app.items (id, name, n, at) VALUES ({i}, 'r{i}', {i}, '2026-01-01T00:00:0{i}Z')"
        ))
        .await;
    }
    let token = s.login("root", "").await;

    // Before authenticating only ping is allowed.
    let mut c = WsClient::connect(s.port).await;
    c.send(subscribe("early", "SELECT * FROM app.items", None)).await;
    let e = error_of(&mut c).await;
    assert_eq!((e["code"].as_str(), e["subscription_id"].as_str()), (Some("AUTH_REQUIRED"), Some("subscribe")), "{e}");
    c.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(error_of(&mut c).await["code"], "UNSUPPORTED_DATA");
    c.send_raw(Message::Text("{not json".into())).await;
    assert_eq!(error_of(&mut c).await["code"], "INVALID_MESSAGE");
    c.authenticate(token.trim_start_matches("Bearer ")).await;

    // Initial data in batches, each on request.
    c.send(subscribe("all", "SELECT * FROM app.items", Some(json!({"batch_size": 2})))).await;
    let ack = c.next(WAIT).await.unwrap();
    assert_eq!(ack["type"], "subscription_ack", "{ack}");
    assert_eq!(ack["subscription_id"], "all");
    assert_eq!(ack["total_rows"], 0);
    assert_eq!(ack["batch_control"]["status"], "loading");
    let schema: Vec<(&str, &str)> = ack["schema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f["data_type"].as_str().unwrap()))
        .collect();
    assert_eq!(schema, [("id", "BigInt"), ("name", "Text"), ("n", "Int"), ("at", "Timestamp")]);
    assert_eq!(ack["schema"][0]["flags"], json!(["pk", "nn", "uq"]));
    assert_eq!(ack["schema"][1]["flags"], json!(["nn"]));
    assert!(ack["schema"][2].get("flags").is_none());
    let b0 = c.next(WAIT).await.unwrap();
    assert_eq!(b0["type"], "initial_data_batch", "{b0}");
    assert_eq!(ids(&b0["rows"]), ["1", "2"]);
    assert_eq!(b0["batch_control"], ack["batch_control"]);
    assert_eq!(b0["batch_control"]["has_more"], true);
    // KalamDB's encodings: BIGINT and _seq as strings, TIMESTAMP as microseconds.
    let r1 = &b0["rows"][0];
    assert_eq!(r1["n"], 1);
    assert_eq!(r1["at"], 1_767_225_601_000_000i64);
    assert!(r1["_seq"].as_str().unwrap().parse::<u64>().is_ok(), "{r1}");
    assert_eq!(
        b0["batch_control"]["last_seq_id"].as_u64().unwrap().to_string(),
        b0["rows"][1]["_seq"].as_str().unwrap()
    );
    assert!(c.next(QUIET).await.is_none(), "the next batch waits for next_batch");
    c.send(json!({"type": "next_batch", "subscription_id": "all", "last_seq_id": b0["batch_control"]["last_seq_id"]}))
        .await;
    let b1 = c.next_of("initial_data_batch", WAIT).await;
    assert_eq!((ids(&b1["rows"]), b1["batch_control"]["batch_num"].as_u64()), (vec!["3".into(), "4".into()], Some(1)));
    assert_eq!(b1["batch_control"]["status"], "loading_batch");
    c.send(json!({"type": "next_batch", "subscription_id": "all"})).await;
    let b2 = c.next_of("initial_data_batch", WAIT).await;
    assert_eq!(ids(&b2["rows"]), ["5"]);
    assert_eq!(
        (b2["batch_control"]["has_more"].as_bool(), b2["batch_control"]["status"].as_str()),
        (Some(false), Some("ready"))
    );

    // One statement's rows arrive in one message, in order.
    s.sql_ok("INSERT INTO app.items (id, name, n) VALUES (10, 'a', 1), (11, 'b', 1), (12, 'c', 1)").await;
    let multi = change(&mut c, "all").await;
    assert_eq!(
        (multi["change_type"].as_str(), ids(&multi["rows"])),
        (Some("insert"), vec!["10".into(), "11".into(), "12".into()])
    );
    s.sql_ok("DELETE FROM app.items WHERE id >= 10").await;
    assert_eq!(ids(&change(&mut c, "all").await["old_values"]), ["10", "11", "12"]);

    // Live changes: insert, update with old values, delete.
    s.sql_ok("INSERT INTO app.items (id, name, n) VALUES (6, 'r6', 60)").await;
    let ins = change(&mut c, "all").await;
    assert_eq!(ins["change_type"], "insert");
    assert_eq!(ids(&ins["rows"]), ["6"]);
    assert!(ins.get("old_values").is_none());
    s.sql_ok("UPDATE app.items SET name = 'two' WHERE id = 2").await;
    let up = change(&mut c, "all").await;
    assert_eq!(up["change_type"], "update", "{up}");
    assert_eq!(up["rows"][0]["name"], "two");
    assert_eq!(up["old_values"][0]["name"], "r2");
    assert_eq!(up["old_values"][0]["id"], "2");
    assert!(up["old_values"][0].get("n").is_none(), "old values carry the changed columns and the key: {up}");
    s.sql_ok("DELETE FROM app.items WHERE id = 3").await;
    let del = change(&mut c, "all").await;
    assert_eq!(del["change_type"], "delete");
    assert_eq!(ids(&del["old_values"]), ["3"]);
    assert!(del.get("rows").is_none());
    let last_seq = del["old_values"][0]["_seq"].as_str().unwrap().to_string();

    // A filtered projection, live only: rows entering and leaving the filter.
    c.send(subscribe("big", "SELECT id, name FROM app.items WHERE n > 10", None)).await;
    let ack = c.next_of("subscription_ack", WAIT).await;
    assert_eq!(
        ack["batch_control"],
        json!({"batch_num": 0, "has_more": false, "status": "ready", "last_seq_id": null})
    );
    assert_eq!(ack["schema"].as_array().unwrap().len(), 2);
    s.sql_ok("UPDATE app.items SET n = 50 WHERE id = 1").await;
    let into = change(&mut c, "big").await;
    assert_eq!((into["change_type"].as_str(), ids(&into["rows"])), (Some("insert"), vec!["1".to_string()]));
    assert!(into["rows"][0].get("n").is_none(), "only the selected columns (and _seq): {into}");
    s.sql_ok("UPDATE app.items SET n = 0 WHERE id = 1").await;
    let out = change(&mut c, "big").await;
    assert_eq!((out["change_type"].as_str(), ids(&out["old_values"])), (Some("delete"), vec!["1".to_string()]));

    // The newest rows only.
    c.send(subscribe("last", "SELECT * FROM app.items", Some(json!({"last_rows": 2, "batch_size": 10})))).await;
    let b = c.next_of("initial_data_batch", WAIT).await;
    assert_eq!(b["subscription_id"], "last");
    assert_eq!(ids(&b["rows"]), ["2", "1"], "the two newest versions, oldest first: {b}");
    assert_eq!(b["batch_control"]["status"], "ready");

    // Unsubscribe: no more changes for it.
    c.send(json!({"type": "unsubscribe", "subscription_id": "all"})).await;
    c.send(json!({"type": "unsubscribe", "subscription_id": "last"})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.sql_ok("INSERT INTO app.items (id, name, n) VALUES (7, 'r7', 70)").await;
    let m = change(&mut c, "big").await;
    assert_eq!(ids(&m["rows"]), ["7"]);
    while let Some(m) = c.next(QUIET).await {
        assert_ne!(m["subscription_id"], "all", "unsubscribed: {m}");
    }

    // Resume from the last _seq seen, on a new connection: exactly what came after it.
    let mut r = WsClient::connect_authed(s.port, &token).await;
    r.send(subscribe("all", "SELECT * FROM app.items", Some(json!({"from": last_seq.parse::<u64>().unwrap()})))).await;
    let ack = r.next_of("subscription_ack", WAIT).await;
    assert_eq!(ack["batch_control"]["last_seq_id"].as_u64().unwrap().to_string(), last_seq);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let m = change(&mut r, "all").await;
        seen.push(m["change_type"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, ["update", "update", "insert"], "n=50, n=0, id 7");
    assert!(r.next(QUIET).await.is_none(), "nothing twice");

    // Errors, each with the protocol's code; the connection stays usable.
    for (sql, options, code) in [
        ("SELEC nonsense", None, "INVALID_SQL"),
        ("SELECT * FROM app.nope", None, "NOT_FOUND"),
        ("SELECT * FROM app.items a JOIN app.items b ON a.id = b.id", None, "INVALID_SQL"),
        ("SELECT count(*) FROM app.items", None, "INVALID_SQL"),
        ("SELECT * FROM app.items ORDER BY id", None, "INVALID_SQL"),
        ("SELECT * FROM app.items WHERE name LIKE 'a%'", None, "INVALID_SQL"),
        ("SELECT * FROM app.items", Some(json!({"last_rows": 20, "batch_size": 10})), "UNSUPPORTED"),
        ("SELECT * FROM app.items", Some(json!({"batch_size": 0})), "UNSUPPORTED"),
    ] {
        r.send(subscribe("bad", sql, options)).await;
        let e = error_of(&mut r).await;
        assert_eq!((e["code"].as_str(), e["subscription_id"].as_str()), (Some(code), Some("bad")), "{sql}: {e}");
    }
    r.send(subscribe("all", "SELECT * FROM app.items", None)).await;
    assert_eq!(error_of(&mut r).await["code"], "INVALID_SUBSCRIPTION_ID", "the id is taken");
    r.send(subscribe("  ", "SELECT * FROM app.items", None)).await;
    assert_eq!(error_of(&mut r).await["code"], "INVALID_SUBSCRIPTION_ID");
    r.send(json!({"type": "next_batch", "subscription_id": "nope"})).await;
    assert_eq!(error_of(&mut r).await["code"], "NOT_FOUND");
    r.send(json!({"type": "subscribe", "subscription": {"id": "x", "sql": "SELECT * FROM app.items", "options": {"from": -5}}})).await;
    assert_eq!(error_of(&mut r).await["code"], "INVALID_MESSAGE");
    r.send(json!({"type": "ping"})).await;
    s.sql_ok("INSERT INTO app.items (id, name, n) VALUES (8, 'r8', 80)").await;
    assert_eq!(ids(&change(&mut r, "all").await["rows"]), ["8"], "still following after the errors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_timeouts_limits_and_compression() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        &dir.path().join("n"),
        common::free_port(),
        &[
            ("KALAMDB_WEBSOCKET_AUTH_TIMEOUT_MS", "500"),
            ("KALAMDB_WEBSOCKET_MESSAGE_BYTES_MAX", "4096"),
            ("KALAMDB_WEBSOCKET_SUBSCRIPTIONS_PER_CONNECTION_MAX", "3"),
        ],
    )
    .await;
    s.sql_ok("CREATE NAMESPACE app").await;
    s.sql_ok("CREATE TABLE app.t (id BIGINT PRIMARY KEY, pad TEXT) WITH (TYPE = 'SHARED')").await;
    let pad = "abcdefgh".repeat(100);
    for i in 0..10 {
        s.sql_ok(&format!("INSERT INTO app.t (id, pad) VALUES ({i}, '{pad}')")).await;
    }
    let token = s.login("root", "").await;

    // No authenticate in time: auth_error, then close 1008.
    let mut c = WsClient::connect(s.port).await;
    let m = c.next(WAIT).await.expect("auth_error");
    assert_eq!(m["type"], "auth_error", "{m}");
    assert_eq!(c.wait_closed(WAIT).await.map(|c| c.0), Some(1008));
    // A bad token: auth_error and close.
    let mut c = WsClient::connect(s.port).await;
    c.send(json!({"type": "authenticate", "method": "jwt", "token": "v4.local.forged"})).await;
    assert_eq!(c.next(WAIT).await.unwrap()["type"], "auth_error");
    assert_eq!(c.wait_closed(WAIT).await.map(|c| c.0), Some(1008));
    // The token on the upgrade: auth_success comes first, unasked.
    let mut c = WsClient::try_connect(s.port, "", &[("authorization", &token)]).await.unwrap();
    let m = c.next(WAIT).await.unwrap();
    assert_eq!(
        (m["type"].as_str(), m["user"].as_str(), m["role"].as_str()),
        (Some("auth_success"), Some("root"), Some("system"))
    );
    // A bad one is refused before the upgrade, with its code.
    let refused = WsClient::try_connect(s.port, "", &[("authorization", "Bearer nope")]).await.err().expect("401");
    assert_eq!(refused.status, 401, "{}", refused.body);
    // A page on an origin that is not allowed cannot open a socket.
    let refused = WsClient::try_connect(s.port, "", &[("origin", "https://evil.example")]).await.err().expect("403");
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("CORS_ORIGIN_NOT_ALLOWED"), "{}", refused.body);

    // Large server messages come gzip-compressed in binary frames; ?compress=false turns that off.
    c.send(subscribe("a", "SELECT * FROM app.t", Some(json!({})))).await;
    let b = c.next_of("initial_data_batch", WAIT).await;
    assert_eq!(b["rows"].as_array().unwrap().len(), 10);
    assert!(c.gzip_frames > 0, "a 10 KB batch is compressed");
    let mut plain = WsClient::try_connect(s.port, "?compress=false", &[("authorization", &token)]).await.unwrap();
    plain.send(subscribe("a", "SELECT * FROM app.t", Some(json!({})))).await;
    assert_eq!(plain.next_of("initial_data_batch", WAIT).await["rows"].as_array().unwrap().len(), 10);
    assert_eq!(plain.gzip_frames, 0);

    // Per-connection subscription cap, message size, message rate.
    for id in ["b", "c"] {
        c.send(subscribe(id, "SELECT * FROM app.t", None)).await;
        c.next_of("subscription_ack", WAIT).await;
    }
    c.send(subscribe("d", "SELECT * FROM app.t", None)).await;
    assert_eq!(error_of(&mut c).await["code"], "SUBSCRIPTION_LIMIT_EXCEEDED");
    c.send(subscribe("e", &format!("SELECT * FROM app.t WHERE pad = '{}'", "x".repeat(5000)), None)).await;
    assert_eq!(error_of(&mut c).await["code"], "MESSAGE_TOO_LARGE");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..60 {
        c.send(json!({"type": "ping"})).await;
    }
    let e = error_of(&mut c).await;
    assert_eq!((e["code"].as_str(), e["subscription_id"].as_str()), (Some("RATE_LIMIT_EXCEEDED"), Some("rate_limit")));
    // Still open and following.
    s.sql_ok("INSERT INTO app.t (id, pad) VALUES (100, 'x')").await;
    assert_eq!(ids(&change(&mut c, "b").await["rows"]), ["100"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_see_their_own_rows_and_tables_they_may_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        &dir.path().join("n"),
        common::free_port(),
        &[("KALAMDB_TAIL_SUBSCRIBERS_PER_USER_MAX", "2")],
    )
    .await;
    s.sql_ok("CREATE NAMESPACE app").await;
    s.sql_ok("CREATE TABLE app.notes (id BIGINT PRIMARY KEY, body TEXT) WITH (TYPE = 'USER')").await;
    s.sql_ok("CREATE TABLE app.secret (id BIGINT PRIMARY KEY) WITH (TYPE = 'SHARED', ACCESS_LEVEL = 'PRIVATE')").await;
    for u in ["alice", "bob"] {
        s.sql_ok(&format!("CREATE USER '{u}' WITH PASSWORD 'pw-{u}-123456' ROLE user")).await;
    }
    let alice = s.login("alice", "pw-alice-123456").await;
    let bob = s.login("bob", "pw-bob-123456").await;
    let mut a = WsClient::connect_authed(s.port, &alice).await;
    a.send(subscribe("n", "SELECT * FROM app.notes", None)).await;
    a.next_of("subscription_ack", WAIT).await;
    let (st, body) = s.sql_as(Some(&bob), "INSERT INTO app.notes (id, body) VALUES (1, 'bob''s')").await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = s.sql_as(Some(&alice), "INSERT INTO app.notes (id, body) VALUES (2, 'alice''s')").await;
    assert_eq!(st, 200, "{body}");
    let m = change(&mut a, "n").await;
    assert_eq!(ids(&m["rows"]), ["2"], "alice sees her row only: {m}");
    a.send(subscribe("s", "SELECT * FROM app.secret", None)).await;
    assert_eq!(error_of(&mut a).await["code"], "UNAUTHORIZED");
    // The per-user cap counts subscriptions on every connection of the user.
    a.send(subscribe("n2", "SELECT * FROM app.notes", None)).await;
    a.next_of("subscription_ack", WAIT).await;
    let mut a2 = WsClient::connect_authed(s.port, &alice).await;
    a2.send(subscribe("n3", "SELECT * FROM app.notes", None)).await;
    assert_eq!(error_of(&mut a2).await["code"], "SUBSCRIPTION_LIMIT_EXCEEDED");
    // system.sessions: a user sees its own connections, a dba everyone's.
    let (st, mine) = s
        .sql_as(Some(&alice), "SELECT transport, subscriptions, last_method, client_addr FROM system.sessions ORDER BY subscriptions DESC")
        .await;
    assert_eq!(st, 200, "{mine}");
    let rows = mine["results"][0]["rows"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 2, "alice's two connections: {mine}");
    assert_eq!(rows[0][0], "websocket", "{mine}");
    assert_eq!((rows[0][1].clone(), rows[0][2].clone()), (json!(2), json!("subscribe")), "{mine}");
    assert!(rows[0][3].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{mine}");
    let (_, theirs) = s.sql_as(Some(&bob), "SELECT session_id FROM system.sessions").await;
    assert_eq!(theirs["results"][0]["row_count"], 0, "bob has none and sees none: {theirs}");
    let everyone = s.sql_ok("SELECT count(*) FROM system.sessions WHERE state = 'active'").await;
    assert_eq!(everyone["rows"][0][0], 1, "root sees alice's connection with subscriptions: {everyone}");
    let (st, stats) = s.sql_as(Some(&alice), "SELECT * FROM system.stats").await;
    assert_eq!((st, stats["error"]["code"].as_str()), (403, Some("PERMISSION_DENIED")), "{stats}");
    let stats = s.sql_ok("SELECT metric_value FROM system.stats WHERE metric_name = 'kalamdb_ws_connections'").await;
    assert_eq!(stats["rows"][0][0], "2", "the node's metrics as rows: {stats}");
    // information_schema lists only what the caller may read.
    let (_, listed) = s
        .sql_as(Some(&alice), "SELECT table_name FROM information_schema.tables WHERE table_schema = 'app' ORDER BY 1")
        .await;
    assert_eq!(listed["results"][0]["rows"], json!([["notes"]]), "not the private table: {listed}");
    let (_, cols) =
        s.sql_as(Some(&alice), "SELECT count(*) FROM information_schema.columns WHERE table_name = 'secret'").await;
    assert_eq!(cols["results"][0]["rows"][0][0], 0, "{cols}");
    let (st, reserved) = s.sql("CREATE NAMESPACE information_schema").await;
    assert_eq!((st, reserved["error"]["code"].as_str()), (400, Some("INVALID_SQL")), "{reserved}");
    // Dropping the user ends the connection: its token no longer authenticates.
    drop(a2);
    s.sql_ok("DROP USER 'alice'").await;
    let reason = a.wait_closed(Duration::from_secs(30)).await;
    assert_eq!(reason.map(|r| r.0), Some(1008), "closed for the dropped user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_closed_with_1013_and_resumes_from_its_last_seq() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        &dir.path().join("n"),
        common::free_port(),
        &[("KALAMDB_WEBSOCKET_SEND_BUFFER_MESSAGES", "16"), ("KALAMDB_TAIL_STALL_MS", "300")],
    )
    .await;
    s.sql_ok("CREATE NAMESPACE app").await;
    s.sql_ok("CREATE TABLE app.big (id BIGINT PRIMARY KEY, pad TEXT) WITH (TYPE = 'SHARED')").await;
    let token = s.login("root", "").await;
    let mut c = WsClient::try_connect(s.port, "?compress=false", &[("authorization", &token)]).await.unwrap();
    c.next_of("auth_success", WAIT).await;
    c.send(subscribe("big", "SELECT * FROM app.big", None)).await;
    c.next_of("subscription_ack", WAIT).await;
    // ~20 MB of changes, far more than loopback socket buffers hold (a few MB), while the
    // client reads nothing.
    let pad = "x".repeat(2000);
    let rows_total = 10_000;
    for batch in 0..20 {
        let values: Vec<String> = (0..500).map(|i| format!("({}, '{pad}')", batch * 500 + i)).collect();
        s.sql_ok(&format!("INSERT INTO app.big (id, pad) VALUES {}", values.join(", "))).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut seen = BTreeSet::new();
    let mut last_seq = 0u64;
    while let Some(m) = c.next(WAIT).await {
        if m["type"] == "change" {
            // One message carries the rows of one statement (KalamDB's `rows` array).
            for r in m["rows"].as_array().unwrap() {
                let id: u64 = r["id"].as_str().unwrap().parse().unwrap();
                assert!(seen.insert(id), "duplicate {id}");
                last_seq = r["_seq"].as_str().unwrap().parse().unwrap();
            }
        }
    }
    assert_eq!(c.closed.as_ref().map(|c| c.0), Some(1013), "closed as too slow");
    assert!(seen.len() < rows_total, "cut off early");
    let mut r = WsClient::connect_authed(s.port, &token).await;
    r.send(subscribe("big", "SELECT * FROM app.big", Some(json!({"from": last_seq})))).await;
    while seen.len() < rows_total {
        let m = change(&mut r, "big").await;
        for row in m["rows"].as_array().unwrap() {
            let id: u64 = row["id"].as_str().unwrap().parse().unwrap();
            assert!(seen.insert(id), "duplicate after resume: {id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_point_older_than_the_node_keeps_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(&dir.path().join("n"), common::free_port(), &[("KALAMDB_TAIL_RETENTION_ENTRIES", "10")])
        .await;
    s.sql_ok("CREATE NAMESPACE app").await;
    s.sql_ok("CREATE TABLE app.t (id BIGINT PRIMARY KEY) WITH (TYPE = 'SHARED')").await;
    for i in 0..40 {
        s.sql_ok(&format!("INSERT INTO app.t (id) VALUES ({i})")).await;
    }
    let token = s.login("root", "").await;
    let mut c = WsClient::connect_authed(s.port, &token).await;
    let deadline = std::time::Instant::now() + WAIT;
    let mut attempt = 0;
    let e = loop {
        // _seq of the first entries of the group: trimmed once the trimmer ran (every 2 s).
        attempt += 1;
        let id = format!("old{attempt}");
        c.send(subscribe(&id, "SELECT * FROM app.t", Some(json!({"from": 1u64 << 20})))).await;
        let answer = loop {
            let m = c.next(WAIT).await.expect("an answer");
            let first = m["type"] == "error" || m["type"] == "subscription_ack";
            if m["subscription_id"] == id.as_str() && first {
                break m;
            }
        };
        if answer["type"] == "error" {
            break answer;
        }
        c.send(json!({"type": "unsubscribe", "subscription_id": id})).await;
        assert!(std::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(e["code"], "POSITION_GONE", "{e}");
    assert!(e["message"].as_str().unwrap().contains("_seq"), "{e}");
}
