//! INSERTs of literal values skip the catalog read barrier (issue 22): they are planned on the
//! receiving node's catalog replica, which may lag a schema change another node has already
//! answered, and data groups refuse a write planned on a version a change has fenced
//! (`Op::SchemaFloor`). On a 3-node cluster of real processes: writes racing answered
//! schema changes through other nodes always see them (defaults, drops, new columns); a change
//! whose coordinator dies between raising the floors and committing does not fence the table
//! for good (writers, single or in a batch, bump its schema version past the floor).

mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use serde_json::json;

/// Rounds of each race; every round is a DDL statement answered by one node followed at once
/// by a write through another.
const ROUNDS: i64 = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_other_nodes_see_every_answered_schema_change() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), &[]).await;
    c.node(1).sql_ok("CREATE NAMESPACE app").await;
    c.node(1)
        .sql_ok("CREATE TABLE app.t (id BIGINT PRIMARY KEY, v TEXT, n INT DEFAULT 0) WITH (TYPE = 'SHARED')")
        .await;

    // A default changed through one node is the default of the next insert through another.
    for i in 1..=ROUNDS {
        let (ddl, write) = (1 + (i % 3) as usize, 1 + ((i + 1) % 3) as usize);
        c.node(ddl).sql_ok(&format!("ALTER TABLE app.t ALTER COLUMN n SET DEFAULT {i}")).await;
        c.node(write).sql_ok(&format!("INSERT INTO app.t (id, v) VALUES ({i}, 'x')")).await;
    }
    let rows = c.node(1).sql_ok("SELECT count(*) FROM app.t WHERE n <> id").await["rows"].clone();
    assert_eq!(rows, json!([[0]]), "an insert took a default older than the change answered before it");

    // A column added through one node can be written through another at once.
    for i in 1..=ROUNDS {
        let (ddl, write) = (1 + (i % 3) as usize, 1 + ((i + 2) % 3) as usize);
        c.node(ddl).sql_ok(&format!("ALTER TABLE app.t ADD COLUMN c{i} INT")).await;
        c.node(write).sql_ok(&format!("INSERT INTO app.t (id, c{i}) VALUES ({}, {i})", 100 + i)).await;
    }
    let rows =
        c.node(2).sql_ok(&format!("SELECT c{ROUNDS} FROM app.t WHERE id = {}", 100 + ROUNDS)).await["rows"].clone();
    assert_eq!(rows, json!([[ROUNDS]]));

    // A table dropped through one node takes no write through another afterwards.
    for i in 1..=ROUNDS {
        let (ddl, write) = (1 + (i % 3) as usize, 1 + ((i + 1) % 3) as usize);
        c.node(ddl).sql_ok(&format!("CREATE TABLE app.d{i} (id BIGINT PRIMARY KEY) WITH (TYPE = 'SHARED')")).await;
        c.node(write).sql_ok(&format!("INSERT INTO app.d{i} (id) VALUES (1)")).await;
        c.node(ddl).sql_ok(&format!("DROP TABLE app.d{i}")).await;
        let (status, body) = c.node(write).sql(&format!("INSERT INTO app.d{i} (id) VALUES (2)")).await;
        assert_eq!(status, 400, "round {i}: a write to a dropped table: {body}");
        assert_eq!(body["error"]["code"], "TABLE_NOT_FOUND", "{body}");
    }
    c.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_coordinator_dies_after_its_floors_does_not_fence_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), &[]).await;
    c.node(2).sql_ok("CREATE NAMESPACE app").await;
    c.node(2).sql_ok("CREATE TABLE app.t (id BIGINT PRIMARY KEY, v TEXT) WITH (TYPE = 'SHARED')").await;
    c.node(2).sql_ok("INSERT INTO app.t (id, v) VALUES (1, 'before')").await;

    // Node 1 coordinates a change and dies after raising the floors, before the catalog;
    // three times: an ALTER whose first writer is a BEGIN ... COMMIT batch, an ALTER whose
    // first writer is a single INSERT, and a DROP TABLE.
    let rounds = [
        ("ALTER TABLE app.t ADD COLUMN lost INT", "BEGIN; INSERT INTO app.t (id, v) VALUES (2, 'after'); COMMIT;"),
        ("ALTER TABLE app.t ADD COLUMN lost INT", "INSERT INTO app.t (id, v) VALUES (5, 'after again')"),
        ("DROP TABLE app.t", "INSERT INTO app.t (id, v) VALUES (6, 'not dropped')"),
    ];
    for (change, write) in rounds {
        c.kill9(1);
        c.spawn_with(1, &[("KALAMDB_FAILPOINTS", "ddl-after-floors")]);
        c.node(1).wait_healthy().await;
        let port = c.node(1).port;
        let answer = common::post_sql(port, change).await;
        assert!(c.node_mut(1).wait_exit(Duration::from_secs(30)).await, "no crash point reached: {answer:?}");
        assert!(c.log(1).contains("failpoint ddl-after-floors hit"), "{}", c.log(1));

        // Writes are refused by the floor until a writer gives up waiting for the change
        // and bumps the table's version past it.
        let started = Instant::now();
        c.node(2).sql_ok(write).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(kalamdb_query::SCHEMA_CHANGE_WAIT_MS),
            "{write}: not fenced? {waited:?}"
        );
    }
    c.node(3).sql_ok("INSERT INTO app.t (id, v) VALUES (3, 'later')").await;
    let history = c.node(3).sql_ok("DESCRIBE TABLE app.t HISTORY").await.to_string();
    assert!(history.contains("schema version bumped"), "{history}");
    assert!(!history.contains("lost"), "the unfinished change must not commit: {history}");

    c.restart(1).await;
    let rows = c.node(1).sql_ok("SELECT id, v FROM app.t ORDER BY id").await["rows"].clone();
    assert_eq!(rows, json!([[1, "before"], [2, "after"], [3, "later"], [5, "after again"], [6, "not dropped"]]));
    c.node(1).sql_ok("ALTER TABLE app.t ADD COLUMN kept INT DEFAULT 5").await;
    c.node(2).sql_ok("INSERT INTO app.t (id, v) VALUES (4, 'new')").await;
    let bumps =
        c.node(2).sql_ok("DESCRIBE TABLE app.t HISTORY").await.to_string().matches("schema version bumped").count();
    assert_eq!(bumps, 3, "one bump per unfinished change");
    let rows = c.node(3).sql_ok("SELECT kept FROM app.t WHERE id = 4").await["rows"].clone();
    assert_eq!(rows, json!([[5]]));
    c.assert_converged().await;
}
