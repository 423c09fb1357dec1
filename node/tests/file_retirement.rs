//! Retired Parquet files on storage every node shares (issue 19): a node that was down while
//! the others flushed and compacted comes back and replays (or installs a snapshot, when the
//! log was purged past it) without missing a file; retired files are deleted only after every
//! member applied past their retirement; a kill -9 of the whole cluster right between a
//! compaction and the delete of what it replaced, or a crash in the middle of that delete,
//! loses nothing; nor does a crash in the middle of installing a snapshot.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::s3::S3Server;
use serde_json::json;

/// Where the cluster keeps cold files: one folder every node shares, or one bucket (no
/// shared volume; each node caches on its own disk).
enum Shared {
    Folder(std::path::PathBuf),
    Bucket(S3Server),
}

const BUCKET: &str = "cluster";

impl Shared {
    fn env(&self) -> Vec<(String, String)> {
        match self {
            Shared::Folder(p) => vec![("KALAMDB_STORAGE_STORAGE_PATH".into(), p.display().to_string())],
            Shared::Bucket(s3) => s3.env(BUCKET, "prod"),
        }
    }

    /// Parquet files in the shared storage now.
    async fn files(&self) -> Vec<String> {
        match self {
            Shared::Folder(p) => parquet_files(p),
            Shared::Bucket(s3) => {
                s3.list(BUCKET, "prod").await.into_iter().map(|(k, _)| k).filter(|k| k.ends_with(".parquet")).collect()
            }
        }
    }

    /// Wait until exactly `n` Parquet files are left.
    async fn wait_files(&self, n: usize) {
        let deadline = Instant::now() + DELETE_WAIT;
        loop {
            let files = self.files().await;
            if files.len() == n {
                return;
            }
            assert!(Instant::now() < deadline, "expected {n} files in the shared storage, found {files:#?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Rounds of insert + flush while node 3 is down; every second round also compacts.
const ROUNDS: usize = 4;
/// Rows inserted per round.
const ROUND_ROWS: usize = 25;
/// How long retired files may take to go once every member caught up.
const DELETE_WAIT: Duration = Duration::from_secs(30);

fn parquet_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p.display().to_string());
            }
        }
    }
    out.sort();
    out
}

async fn count(c: &Cluster, n: usize) -> serde_json::Value {
    c.node(n).sql_ok("SELECT count(*), sum(v) FROM app.t").await["rows"].clone()
}

/// The spec's consistency test (`cluster.sh test`): a namespace made on node 1 is seen by
/// nodes 2 and 3, the shared table is made, node 3 inserts and flushes (to the bucket), node 1
/// reads the rows, then everything is dropped.
async fn spec_consistency_steps(c: &Cluster) {
    c.node(1).sql_ok("CREATE NAMESPACE test_cluster").await;
    for i in [2, 3] {
        let r =
            c.node(i).sql_ok("SELECT namespace_id FROM system.namespaces WHERE namespace_id = 'test_cluster'").await;
        assert_eq!(r["rows"], json!([["test_cluster"]]), "node {i}");
    }
    c.node(1).sql_ok("CREATE TABLE test_cluster.items (id BIGINT PRIMARY KEY, name TEXT) WITH (TYPE = 'SHARED')").await;
    c.node(3).sql_ok("INSERT INTO test_cluster.items (id, name) VALUES (1, 'one'), (2, 'two'), (3, 'three')").await;
    c.node(3).sql_ok("FLUSH TABLE test_cluster.items").await;
    let r = c.node(1).sql_ok("SELECT id, name FROM test_cluster.items ORDER BY id").await;
    assert_eq!(r["rows"], json!([[1, "one"], [2, "two"], [3, "three"]]));
    c.node(1).sql_ok("DROP TABLE test_cluster.items").await;
    c.node(1).sql_ok("DROP NAMESPACE test_cluster").await;
}

async fn lagging_node_catches_up(purge_log: bool, bucket: bool) {
    let dir = tempfile::tempdir().unwrap();
    let shared = if bucket {
        let s3 = S3Server::start().await;
        s3.create_bucket(BUCKET).await;
        Shared::Bucket(s3)
    } else {
        Shared::Folder(dir.path().join("shared-storage"))
    };
    let mut env = shared.env();
    env.push(("KALAMDB_STORAGE_RETIRED_FILE_GRACE_SECS".into(), "1".into()));
    if purge_log {
        env.push(("KALAMDB_RAFT_SNAPSHOT_LOGS_SINCE_LAST".into(), "20".into()));
        env.push(("KALAMDB_RAFT_LOGS_TO_KEEP".into(), "5".into()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut c = Cluster::start(dir.path(), &env).await;
    if bucket {
        spec_consistency_steps(&c).await;
    }
    c.node(1).sql_ok("CREATE NAMESPACE app").await;
    c.node(1).sql_ok("CREATE TABLE app.t (id BIGINT PRIMARY KEY, v BIGINT) WITH (TYPE = 'SHARED')").await;

    c.kill9(3);
    let mut next = 0;
    for round in 1..=ROUNDS {
        let values: Vec<String> = (0..ROUND_ROWS).map(|i| format!("({}, {})", next + i, next + i)).collect();
        next += ROUND_ROWS;
        c.node(1).sql_ok(&format!("INSERT INTO app.t (id, v) VALUES {}", values.join(", "))).await;
        // Some rows change after their flush, so compactions drop superseded versions.
        c.node(2).sql_ok(&format!("UPDATE app.t SET v = v + 1 WHERE id = {}", next - ROUND_ROWS)).await;
        c.node(2).sql_ok("FLUSH TABLE app.t").await;
        if round % 2 == 0 {
            c.node(1).sql_ok("STORAGE COMPACT TABLE app.t").await;
        }
        if purge_log {
            // Enough entries for a snapshot and a purge past node 3's position.
            for i in 0..25 {
                c.node(1).sql_ok(&format!("UPDATE app.t SET v = v WHERE id = {i}")).await;
            }
        }
    }
    let expected = count(&c, 1).await;
    let n = (ROUNDS * ROUND_ROWS) as i64;
    let sum = n * (n - 1) / 2 + ROUNDS as i64;
    assert_eq!(expected, json!([[n, sum]]));
    // Node 3 is a member that did not apply the compactions: nothing they retired may go.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(shared.files().await.len() > 1, "retired files went while node 3 was behind");

    if purge_log {
        // A crash in the middle of installing a snapshot (records written, position not yet):
        // the restart finishes the install from the snapshot published before it began.
        c.spawn_with(3, &[("KALAMDB_FAILPOINTS", "install-before-commit")]);
        assert!(c.node_mut(3).wait_exit(Duration::from_secs(60)).await, "node 3 did not reach the crash point");
        assert!(c.log(3).contains("failpoint install-before-commit hit"), "{}", c.log(3));
    }
    c.restart(3).await;
    if purge_log {
        assert!(c.log(3).contains("finishing a state install a crash interrupted"), "{}", c.log(3));
    }
    assert_eq!(count(&c, 3).await, expected, "node 3 after catching up");
    c.assert_converged().await;
    // Everyone is past every retirement: the last round compacted, so its one file is left.
    shared.wait_files(1).await;

    // A compaction, then kill -9 of every node before its retired files can go.
    c.node(1).sql_ok("INSERT INTO app.t (id, v) VALUES (1000, 1)").await;
    c.node(1).sql_ok("FLUSH TABLE app.t").await;
    c.node(2).sql_ok("STORAGE COMPACT TABLE app.t").await;
    for i in 1..=3 {
        c.kill9(i);
    }
    c.restart_all(&[1, 2, 3]).await;
    let after = json!([[n + 1, sum + 1]]);
    for i in 1..=3 {
        assert_eq!(count(&c, i).await, after, "node {i} after the whole cluster restarted");
    }
    c.assert_converged().await;
    shared.wait_files(1).await;
    for i in 1..=3 {
        assert_eq!(count(&c, i).await, after, "node {i} after the retired files went");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_replays_compactions_on_shared_storage() {
    lagging_node_catches_up(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_a_purged_log_installs_a_snapshot_on_shared_storage() {
    lagging_node_catches_up(true, false).await;
}

/// The same with one bucket and no shared volume: every node writes its own copy of each
/// file (same name, same bytes) and uploads it unless the bucket has it; the node that was
/// down catches up by snapshot, and retired files leave the bucket once all are past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_a_purged_log_catches_up_on_one_bucket() {
    lagging_node_catches_up(true, true).await;
}

/// A crash in the middle of deleting retired files (after the unlink, before the batch that
/// drops their records commits): the delete is applied again after the restart, finds the
/// files gone, drops the records, and every row is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_deleting_retired_files_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let env = [("KALAMDB_FAILPOINTS", "delete-retired-after-unlink"), ("KALAMDB_STORAGE_RETIRED_FILE_GRACE_SECS", "1")];
    let mut s = common::Server::start_with(dir.path(), port, &env).await;
    s.sql_ok("CREATE NAMESPACE app").await;
    s.sql_ok("CREATE TABLE app.t (id BIGINT PRIMARY KEY, v BIGINT) WITH (TYPE = 'SHARED')").await;
    for round in 0..3i64 {
        let values: Vec<String> = (0..10).map(|i| format!("({}, 1)", round * 10 + i)).collect();
        s.sql_ok(&format!("INSERT INTO app.t (id, v) VALUES {}", values.join(", "))).await;
        s.sql_ok("FLUSH TABLE app.t").await;
    }
    s.sql_ok("STORAGE COMPACT TABLE app.t").await;
    // The retirement task proposes the delete within a few seconds; applying it aborts.
    let deadline = Instant::now() + DELETE_WAIT;
    while common::post_sql(port, "SELECT 1").await.is_ok() {
        assert!(Instant::now() < deadline, "the server did not reach the crash point");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.kill9();
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(log.contains("failpoint delete-retired-after-unlink hit"), "crash point not reached:\n{log}");

    let s = common::Server::start_with(dir.path(), port, &[("KALAMDB_STORAGE_RETIRED_FILE_GRACE_SECS", "1")]).await;
    assert_eq!(s.sql_ok("SELECT count(*), sum(v) FROM app.t").await["rows"], json!([[30, 30]]));
    Shared::Folder(dir.path().join("storage")).wait_files(1).await;
    assert_eq!(s.sql_ok("SELECT count(*), sum(v) FROM app.t WHERE id >= 0").await["rows"], json!([[30, 30]]));
}
