//! `ALTER TABLE` against a real server: each change is a schema version with the catalog log
//! index that made it (`DESCRIBE TABLE ... HISTORY`), survives a kill -9 and restart, and
//! reaches tail subscribers as a DDL change (issue 18).

mod common;

use common::Server;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_versions_are_recorded_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(dir.path()).await;
    s.sql_ok("CREATE NAMESPACE app").await;
    s.sql_ok("CREATE TABLE app.t (id BIGINT PRIMARY KEY, v TEXT, n INT) WITH (TYPE = 'SHARED')").await;
    s.sql_ok("ALTER TABLE app.t SET ACCESS_LEVEL public").await;
    s.sql_ok("ALTER TABLE app.t ALTER COLUMN n SET DEFAULT 5").await;
    s.sql_ok("ALTER TABLE app.t ALTER COLUMN v SET DEFAULT 'o''k'").await;
    s.sql_ok("ALTER TABLE app.t ALTER COLUMN n DROP DEFAULT").await;

    let history = |r: &serde_json::Value| -> Vec<(i64, i64, String)> {
        r["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|row| (row[0].as_i64().unwrap(), row[1].as_i64().unwrap(), row[2].as_str().unwrap().to_string()))
            .collect()
    };
    let r = s.sql_ok("DESCRIBE TABLE app.t HISTORY").await;
    let names: Vec<&str> = r["schema"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["version", "log_index", "change", "changed_at"]);
    let before = history(&r);
    let changes: Vec<(i64, &str)> = before.iter().map(|(v, _, c)| (*v, c.as_str())).collect();
    assert_eq!(
        changes,
        vec![
            (1, "CREATE TABLE"),
            (2, "SET (ACCESS_LEVEL = 'PUBLIC')"),
            (3, "ALTER COLUMN n SET DEFAULT 5"),
            (4, "ALTER COLUMN v SET DEFAULT 'o''k'"),
            (5, "ALTER COLUMN n DROP DEFAULT"),
        ]
    );
    assert!(before.windows(2).all(|w| w[0].1 < w[1].1), "log indexes increase: {before:?}");

    // The catalog is a projection of the log: the same versions after kill -9 and restart.
    let port = s.port;
    s.kill9();
    let s = Server::start_on(dir.path(), port).await;
    let r = s.sql_ok("DESCRIBE TABLE app.t HISTORY").await;
    assert_eq!(history(&r), before);
    s.sql_ok("INSERT INTO app.t (id) VALUES (1)").await;
    assert_eq!(s.sql_ok("SELECT v, n FROM app.t").await["rows"], json!([["o'k", null]]));
}
