//! `BEGIN ... COMMIT` batches on a 3-node cluster of real processes: transfers sent to every
//! node at once (followers forward the one `Op::Transaction` to the leader), across a flush,
//! then the total read through every node, a schema change through a follower, and the
//! projections' digests compared.

mod common;

use common::cluster::Cluster;
use serde_json::json;

const ACCOUNTS: i64 = 5;
const TRANSFERS_PER_NODE: i64 = 12;

async fn transfers_through_every_node(c: &Cluster, round: i64) -> i64 {
    let tasks: Vec<_> = (1..=3usize)
        .map(|n| {
            let port = c.http[n - 1];
            tokio::spawn(async move {
                let mut committed = 0;
                for t in 0..TRANSFERS_PER_NODE {
                    let from = (n as i64 + t + round) % ACCOUNTS;
                    let to = (from + 1 + t % (ACCOUNTS - 1)) % ACCOUNTS;
                    let sql = format!(
                        "BEGIN; UPDATE bank.acct SET bal = bal - 3, moves = moves + 1 WHERE id = {from}; \
                         UPDATE bank.acct SET bal = bal + 3, moves = moves + 1 WHERE id = {to}; COMMIT;"
                    );
                    let (st, b) = common::post_sql(port, &sql).await.expect("answered");
                    match st {
                        200 => committed += 1,
                        409 => assert_eq!(b["error"]["code"], "WRITE_CONFLICT", "{b}"),
                        _ => panic!("transfer through node {n} failed: {b}"),
                    }
                }
                committed
            })
        })
        .collect();
    let mut committed = 0;
    for t in tasks {
        committed += t.await.unwrap();
    }
    committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_through_every_node_conserve_the_total_and_converge() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), &[]).await;
    c.node(1).sql_ok("CREATE NAMESPACE bank").await;
    c.node(1)
        .sql_ok("CREATE TABLE bank.acct (id BIGINT PRIMARY KEY, bal BIGINT NOT NULL, moves BIGINT NOT NULL) WITH (TYPE = 'SHARED')")
        .await;
    let values: Vec<String> = (0..ACCOUNTS).map(|i| format!("({i}, 100, 0)")).collect();
    c.node(2).sql_ok(&format!("INSERT INTO bank.acct (id, bal, moves) VALUES {}", values.join(", "))).await;

    let mut committed = transfers_through_every_node(&c, 0).await;
    // Flushed rows: the next transfers replace versions that live in Parquet files.
    c.node(3).sql_ok("FLUSH TABLE bank.acct").await;
    committed += transfers_through_every_node(&c, 1).await;
    assert!(committed > 0, "no transfer committed");

    // A schema change through a follower: every node's catalog records the same version.
    c.node(2).sql_ok("ALTER TABLE bank.acct ALTER COLUMN moves SET DEFAULT 0").await;
    for n in 1..=3 {
        let r = c.node(n).sql_ok("DESCRIBE TABLE bank.acct HISTORY").await;
        assert_eq!(r["rows"].as_array().map(Vec::len), Some(2), "node {n}: {r}");
        let r = c.node(n).sql_ok("SELECT sum(bal), sum(moves), count(*) FROM bank.acct").await;
        assert_eq!(r["rows"], json!([[ACCOUNTS * 100, 2 * committed, ACCOUNTS]]), "node {n}: {committed} committed");
    }
    c.assert_converged().await;
}
