//! Schema changes on a 3-node cluster of real processes: a table with rows in both tiers gets
//! columns added, renamed and dropped (through different nodes), is written, flushed and
//! compacted across the change, read `AS OF` before, between and after the changes (through
//! the schema of each time), survives a kill -9 and restart of a node, and every replica ends
//! with the same projection digests (issue 18).

mod common;

use common::cluster::Cluster;
use serde_json::json;

async fn rows(c: &Cluster, n: usize, sql: &str) -> serde_json::Value {
    c.node(n).sql_ok(sql).await["rows"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_tables_read_alike_everywhere_in_both_tiers_and_in_the_past() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), &[]).await;
    c.node(1).sql_ok("CREATE NAMESPACE app").await;
    c.node(1).sql_ok("CREATE TABLE app.t (id BIGINT PRIMARY KEY, v TEXT) WITH (TYPE = 'SHARED')").await;
    let values: Vec<String> = (1..=20).map(|i| format!("({i}, 'cold{i}')")).collect();
    c.node(1).sql_ok(&format!("INSERT INTO app.t (id, v) VALUES {}", values.join(", "))).await;
    c.node(2).sql_ok("FLUSH TABLE app.t").await;
    let values: Vec<String> = (21..=30).map(|i| format!("({i}, 'hot{i}')")).collect();
    c.node(3).sql_ok(&format!("INSERT INTO app.t (id, v) VALUES {}", values.join(", "))).await;
    // The data group's log position before the schema changes, for AS OF.
    let before = rows(&c, 1, "SELECT max(_seq) FROM app.t").await[0][0].as_i64().unwrap() >> 20;

    c.node(2).sql_ok("ALTER TABLE app.t ADD COLUMN n INT NOT NULL DEFAULT 7").await;
    c.node(3).sql_ok("ALTER TABLE app.t RENAME COLUMN v TO label").await;
    c.node(1).sql_ok("ALTER TABLE app.t ADD COLUMN tmp TEXT DEFAULT 'z'").await;
    c.node(3).sql_ok("INSERT INTO app.t (id, label, n, tmp) VALUES (40, 'mid', 0, 'y')").await;
    let mid = rows(&c, 1, "SELECT _seq FROM app.t WHERE id = 40").await[0][0].as_i64().unwrap() >> 20;
    c.node(2).sql_ok("ALTER TABLE app.t DROP COLUMN tmp").await;
    c.node(1).sql_ok("INSERT INTO app.t (id, label, n) VALUES (31, 'new', 9)").await;
    c.node(2).sql_ok("UPDATE app.t SET n = n + 1 WHERE id IN (1, 25)").await;
    let after = rows(&c, 1, "SELECT max(_seq) FROM app.t").await[0][0].as_i64().unwrap() >> 20;
    c.node(3).sql_ok("FLUSH TABLE app.t").await;
    // AS OF reads the past through the schema of its time, with files from both sides of the
    // changes: before them, `v` and no `n`; between, `tmp` (filled for older rows); after,
    // `label` and `n` and no `tmp`. A compaction later ends that history.
    let past = format!("SELECT count(*), min(v) FROM app.t AS OF {before}");
    let between = format!("SELECT id, label, n, tmp FROM app.t AS OF {mid} WHERE id IN (1, 40) ORDER BY id");
    let now = format!("SELECT count(*), min(label), max(n) FROM app.t AS OF {after}");
    for n in 1..=3 {
        assert_eq!(rows(&c, n, &past).await, json!([[30, "cold1"]]), "node {n}");
        let (status, _) = c.node(n).sql(&format!("SELECT n FROM app.t AS OF {before}")).await;
        assert_eq!(status, 400, "node {n}: n did not exist yet");
        assert_eq!(rows(&c, n, &between).await, json!([[1, "cold1", 7, "z"], [40, "mid", 0, "y"]]), "node {n}");
        assert_eq!(rows(&c, n, &now).await, json!([[32, "cold1", 9]]), "node {n}");
        let (status, _) = c.node(n).sql(&format!("SELECT tmp FROM app.t AS OF {after}")).await;
        assert_eq!(status, 400, "node {n}: tmp was dropped by then");
    }
    c.node(1).sql_ok("STORAGE COMPACT TABLE app.t").await;
    c.node(1).sql_ok("INSERT INTO app.t (id, label) VALUES (32, 'defaulted')").await;

    let expected = json!([[33, 30 * 7 + 2 + 9 + 7, "cold1", "hot25", "new"]]);
    let summary = "SELECT count(*), sum(n), min(label), max(CASE WHEN id = 25 THEN label END), \
                   max(CASE WHEN id = 31 THEN label END) FROM app.t";
    for n in 1..=3 {
        assert_eq!(rows(&c, n, summary).await, expected, "node {n}");
        assert_eq!(rows(&c, n, "SELECT n FROM app.t WHERE id = 2").await, json!([[7]]), "node {n}: flushed row");
        assert_eq!(rows(&c, n, "SELECT n FROM app.t WHERE id = 1").await, json!([[8]]), "node {n}: updated row");
    }

    // REBUILD PROJECTION re-derives the table from its files and the retained log, across
    // every schema change, and changes nothing.
    c.node(2).sql_ok("REBUILD PROJECTION app.t").await;
    for n in 1..=3 {
        assert_eq!(rows(&c, n, summary).await, expected, "node {n} after REBUILD PROJECTION");
    }

    // A node killed and restarted rebuilds the same state from its log and files.
    c.kill9(3);
    c.node(1).sql_ok("INSERT INTO app.t (id, label, n) VALUES (33, 'while down', 1)").await;
    c.restart(3).await;
    for n in 1..=3 {
        assert_eq!(
            rows(&c, n, "SELECT count(*), sum(n) FROM app.t").await,
            json!([[34, 30 * 7 + 2 + 9 + 7 + 1]]),
            "node {n}"
        );
        let history = rows(&c, n, "DESCRIBE TABLE app.t HISTORY").await;
        assert_eq!(history.as_array().map(Vec::len), Some(5), "node {n}: {history}");
        let (status, _) = c.node(n).sql("SELECT tmp FROM app.t").await;
        assert_eq!(status, 400, "node {n}: a dropped column is gone");
    }
    c.assert_converged().await;
}
