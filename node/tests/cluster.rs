//! A 3-node cluster of real processes on 127.0.0.1: replication and forwarding, crash and
//! restart of followers and leaders, a network partition, and the projections' digests
//! after each scenario.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use serde_json::json;

/// Elections must finish within this (the election timeout is 300-600 ms; allow a few
/// rounds of split votes and process scheduling on 2 cores).
const NEW_LEADER_WAIT: Duration = Duration::from_secs(10);

/// Keys written by the writer that runs while nodes are killed.
const CONCURRENT_KEYS_FROM: u64 = 1_000_000;
/// Bound on the concurrent writer, whatever happens.
const CONCURRENT_WRITES_MAX: u64 = 2_000;

/// Insert unique keys through the node on `port` until `stop`; returns the acknowledged keys
/// and the next unused key. Errors (503 during elections) are expected and not retried.
async fn concurrent_writer(port: u16, mut key: u64, stop: Arc<AtomicBool>) -> (Vec<u64>, u64) {
    let mut acked = Vec::new();
    let end = key + CONCURRENT_WRITES_MAX;
    while !stop.load(Ordering::SeqCst) && key < end {
        let k = key;
        key += 1;
        if let Ok((200, _)) = common::post_sql(port, &format!("INSERT INTO app.kv (k, v) VALUES ({k}, 'c{k}')")).await {
            acked.push(k);
        }
    }
    (acked, key)
}

async fn count(s: &common::Server, table: &str) -> u64 {
    let r = s.sql_ok(&format!("SELECT COUNT(*) AS n FROM {table}")).await;
    r["rows"][0][0].as_u64().unwrap_or_else(|| panic!("count of {table}: {r}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_any_node_are_read_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), &[]).await;

    // The spec's consistency steps, with no sleeps: default reads are linearizable.
    c.node(1).sql_ok("CREATE NAMESPACE test_cluster").await;
    for i in [2, 3] {
        let (status, body) = c.node(i).sql("SELECT * FROM system.namespaces").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.to_string().contains("test_cluster"), "node {i} does not see the namespace: {body}");
    }
    c.node(3).sql_ok("CREATE TABLE test_cluster.items (id BIGINT PRIMARY KEY, name TEXT) WITH (TYPE = 'SHARED')").await;
    for i in 1..=3u64 {
        c.node(i as usize)
            .sql_ok(&format!("INSERT INTO test_cluster.items (id, name) VALUES ({i}, 'from node {i}')"))
            .await;
    }
    for i in 1..=3 {
        assert_eq!(count(c.node(i), "test_cluster.items").await, 3, "node {i}");
        let r = c.node(i).sql_ok("SELECT name FROM test_cluster.items WHERE id = 3").await;
        assert_eq!(r["rows"][0][0], "from node 3", "node {i}: {r}");
    }
    // A forwarded write gets the leader's answer: duplicate keys fail the same way everywhere.
    for i in 1..=3 {
        let (status, body) = c.node(i).sql("INSERT INTO test_cluster.items (id, name) VALUES (1, 'dup')").await;
        assert_eq!(status, 400, "node {i}: {body}");
        assert_eq!(body["error"]["code"], "CONSTRAINT_VIOLATION", "node {i}: {body}");
    }
    // UPDATE and DELETE through a follower.
    c.node(2).sql_ok("UPDATE test_cluster.items SET name = 'renamed' WHERE id = 1").await;
    c.node(3).sql_ok("DELETE FROM test_cluster.items WHERE id = 2").await;
    let r = c.node(1).sql_ok("SELECT id, name FROM test_cluster.items ORDER BY id").await;
    assert_eq!(r["rows"], json!([[1, "renamed"], [3, "from node 3"]]), "{r}");

    // Flush through a follower: every node writes the same Parquet file (the digests compared
    // at the end cover each file's checksum), then rewrite a flushed row through another.
    c.node(3).sql_ok("FLUSH TABLE test_cluster.items").await;
    c.node(2).sql_ok("UPDATE test_cluster.items SET name = 'cold renamed' WHERE id = 3").await;
    for i in 1..=3 {
        let r = c.node(i).sql_ok("SELECT id, name FROM test_cluster.items ORDER BY id").await;
        assert_eq!(r["rows"], json!([[1, "renamed"], [3, "cold renamed"]]), "node {i}: {r}");
    }

    // Local reads are allowed and answer from the node's own projection.
    let (status, body) =
        c.node(2).sql_body(json!({"sql": "SELECT COUNT(*) FROM test_cluster.items", "consistency": "local"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = c.node(2).sql_body(json!({"sql": "SELECT 1", "consistency": "eventual"})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "INVALID_REQUEST");

    // USER tables route by user to the user shards.
    c.node(1).sql_ok("CREATE TABLE test_cluster.notes (id BIGINT PRIMARY KEY, body TEXT) WITH (TYPE = 'USER')").await;
    c.node(2).sql_ok("INSERT INTO test_cluster.notes (id, body) VALUES (1, 'mine')").await;
    assert_eq!(count(c.node(3), "test_cluster.notes").await, 1);

    // Cluster views.
    let (status, h) = c.node(2).get("/v1/api/cluster/health").await.unwrap();
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["cluster_id"], "test-cluster");
    assert_eq!(h["node_id"], 2);
    assert_eq!(h["status"], "healthy", "{h}");
    // The fields KalamDB's clients (its CLI's \cluster) decode.
    assert_eq!((h["is_cluster_mode"].as_bool(), h["total_groups"].as_u64()), (Some(true), Some(8)), "{h}");
    assert!(h["current_term"].as_u64().unwrap() >= 1, "{h}");
    let leaders: Vec<&serde_json::Value> =
        h["nodes"].as_array().unwrap().iter().filter(|n| n["role"] == "leader").collect();
    assert_eq!(leaders.len(), 1, "one meta leader: {h}");
    assert_eq!(h["is_leader"], leaders[0]["node_id"] == 2, "{h}");
    for n in h["nodes"].as_array().unwrap() {
        assert_eq!(n["status"], "active", "{n}");
        assert!(n["api_addr"].as_str().unwrap().starts_with("http://127.0.0.1:"), "{n}");
        assert_eq!(n["is_leader"], n["role"] == "leader", "{n}");
    }
    let groups = h["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 8, "3 meta + 4 user + 1 shared: {h}");
    for g in groups {
        assert!(g["leader"].as_u64().is_some(), "{g}");
        assert!(g["term"].as_u64().unwrap() >= 1, "{g}");
        assert_eq!(g["members"].as_array().unwrap().len(), 3, "{g}");
        assert!(g["members"].as_array().unwrap().iter().all(|m| m["lag"].is_u64()), "{g}");
    }
    let r = c.node(3).sql_ok("SELECT node_id, reachable, is_self FROM system.cluster ORDER BY node_id").await;
    assert_eq!(r["rows"], json!([[1, true, false], [2, true, false], [3, true, true]]), "{r}");
    let r = c.node(1).sql_ok("SELECT group_name, leader FROM system.cluster_groups").await;
    assert_eq!(r["rows"].as_array().map(Vec::len), Some(8), "{r}");
    // The queries KalamDB's CLI runs for `\cluster list` and `\cluster list groups`, verbatim.
    let r = c
        .node(2)
        .sql_ok(
            "SELECT cluster_id, node_id, role, status, rpc_addr, api_addr, is_self, is_leader, groups_leading, total_groups, current_term, last_applied_log, leader_last_log_index, snapshot_index, catchup_progress_pct, replication_lag, hostname, memory_usage_mb, cpu_usage_percent, uptime_human FROM system.cluster ORDER BY is_leader DESC, node_id ASC",
        )
        .await;
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{r}");
    assert_eq!(
        (rows[0][0].as_str(), rows[0][2].as_str(), rows[0][7].as_bool()),
        (Some("test-cluster"), Some("leader"), Some(true)),
        "{r}"
    );
    assert!(rows.iter().all(|n| n[3] == "active" && n[9] == 8), "{r}");
    assert!(rows.iter().all(|n| n[5].as_str().unwrap().starts_with("http://127.0.0.1:")), "{r}");
    let r = c
        .node(2)
        .sql_ok("SELECT group_id, group_type, current_term, last_applied, snapshot, state, current_leader FROM system.cluster_groups ORDER BY group_id ASC")
        .await;
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 8, "{r}");
    let types: std::collections::BTreeSet<&str> = rows.iter().map(|g| g[1].as_str().unwrap()).collect();
    assert_eq!(types, ["meta", "shared_data", "user_data"].into_iter().collect(), "{r}");
    for g in rows {
        let leads = g[6].as_u64() == Some(2);
        assert_eq!(g[5], if leads { "Leader" } else { "Follower" }, "{g}");
    }

    // Read leases: back-to-back statements found most barriers answered by a leader under its
    // lease, without a quorum round.
    let (mut lease, mut quorum) = (0.0, 0.0);
    for i in 1..=3 {
        let (_, m) = c.node(i).get("/metrics").await.unwrap();
        let m = m.as_str().unwrap_or_default().to_string();
        let count = |kind: &str| -> f64 {
            m.lines()
                .filter(|l| {
                    l.starts_with("kalamdb_read_index_rounds_total{") && l.contains(&format!("kind=\"{kind}\""))
                })
                .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
                .sum()
        };
        lease += count("lease");
        quorum += count("quorum");
    }
    assert!(lease > quorum, "read indexes under a lease {lease}, after a quorum round {quorum}");

    c.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_followers_catch_up_and_leaders_fail_over() {
    let dir = tempfile::tempdir().unwrap();
    // Frequent snapshots and a short log tail: a follower that was down has to catch up from
    // a snapshot, not just from the log.
    let env = [("KALAMDB_RAFT_SNAPSHOT_LOGS_SINCE_LAST", "20"), ("KALAMDB_RAFT_LOGS_TO_KEEP", "5")];
    let mut c = Cluster::start(dir.path(), &env).await;
    c.node(1).sql_ok("CREATE NAMESPACE app").await;
    c.node(1).sql_ok("CREATE TABLE app.kv (k BIGINT PRIMARY KEY, v TEXT) WITH (TYPE = 'SHARED')").await;
    let mut acked: u64 = 0;

    // 1. kill -9 a follower of the shared shard, keep writing, restart it.
    let leaders = c.wait_leaders(1, None, NEW_LEADER_WAIT).await;
    let shared_leader = leaders["shared:0"];
    let follower = (1..=3u64).find(|n| *n != shared_leader).unwrap() as usize;
    c.kill9(follower);
    let writer = (1..=3usize).find(|n| *n != follower).unwrap();
    for i in 0..100 {
        acked += 1;
        c.node(writer).sql_ok(&format!("INSERT INTO app.kv (k, v) VALUES ({acked}, 'v{acked}')")).await;
        if i == 50 {
            // The snapshot the follower will install names Parquet files it never wrote: the
            // snapshot carries them (each node has its own storage directory here).
            c.node(writer).sql_ok("FLUSH TABLE app.kv").await;
        }
    }
    c.restart(follower).await;
    assert_eq!(count(c.node(follower), "app.kv").await, acked, "restarted follower {follower} caught up");
    c.assert_converged().await;
    // It was behind a purged log: it caught up by installing snapshots, then followed the log.
    let log = c.log(follower);
    assert!(log.contains("snapshot installed"), "follower {follower} installed a snapshot:\n{log}");

    // 2. kill -9 the leader of every group: three rounds, each killing the node that leads
    //    the most groups at that moment, so leadership moves around the cluster. Writes keep
    //    going through a survivor.
    let mut groups_failed_over = std::collections::BTreeSet::new();
    let mut victims = Vec::new();
    let mut next_key = CONCURRENT_KEYS_FROM;
    let mut concurrent_acked = Vec::new();
    for _round in 0..3 {
        let asking = c.live()[0];
        let leaders = c.wait_leaders(asking, None, NEW_LEADER_WAIT).await;
        let victim = c.busiest_leader(asking).await as usize;
        for (g, l) in &leaders {
            if *l == victim as u64 {
                groups_failed_over.insert(g.clone());
            }
        }
        victims.push(victim);
        let survivor = (1..=3usize).find(|n| *n != victim).unwrap();
        // A writer runs through the crash; whatever it got acknowledged must survive.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn(concurrent_writer(c.http[survivor - 1], next_key, stop.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let killed_at = Instant::now();
        c.kill9(victim);
        let new_leaders = c.wait_leaders(survivor, Some(victim as u64), NEW_LEADER_WAIT).await;
        let took = killed_at.elapsed();
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, Ordering::SeqCst);
        let (acked_keys, next) = writer.await.unwrap();
        next_key = next;
        assert!(!acked_keys.is_empty(), "the writer got writes through");
        concurrent_acked.extend(acked_keys);
        assert!(new_leaders.values().all(|l| *l != victim as u64));
        eprintln!("node {victim} killed: every group has a new leader after {took:?}");
        for _ in 0..30 {
            acked += 1;
            c.node(survivor).sql_ok(&format!("INSERT INTO app.kv (k, v) VALUES ({acked}, 'v{acked}')")).await;
        }
        c.restart(victim).await;
        c.assert_converged().await;
    }
    assert_eq!(groups_failed_over.len(), 8, "every group lost its leader once: {groups_failed_over:?}");
    eprintln!("killed leaders, in order: nodes {victims:?}");

    // No acknowledged write was lost, on any node: every sequential one, and every one the
    // concurrent writers had acknowledged (writes that failed may or may not exist).
    for i in 1..=3 {
        let r = c.node(i).sql_ok(&format!("SELECT COUNT(*) FROM app.kv WHERE k < {CONCURRENT_KEYS_FROM}")).await;
        assert_eq!(r["rows"][0][0].as_u64(), Some(acked), "node {i}: {r}");
        let r = c.node(i).sql_ok(&format!("SELECT k FROM app.kv WHERE k >= {CONCURRENT_KEYS_FROM}")).await;
        let present: std::collections::HashSet<u64> =
            r["rows"].as_array().unwrap().iter().filter_map(|row| row[0].as_u64()).collect();
        let lost: Vec<&u64> = concurrent_acked.iter().filter(|k| !present.contains(k)).collect();
        assert!(lost.is_empty(), "node {i} lost acknowledged writes {lost:?}");
    }
    eprintln!("{} writes acknowledged while leaders were killed; none lost", concurrent_acked.len());
    c.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_refuses_writes_and_stale_reads_then_converges() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("KALAMDB_LIMITS_WRITE_TIMEOUT_MS", "3000")];
    let c = Cluster::start(dir.path(), &env).await;
    c.node(1).sql_ok("CREATE NAMESPACE p").await;
    c.node(1).sql_ok("CREATE TABLE p.t (k BIGINT PRIMARY KEY, v TEXT) WITH (TYPE = 'SHARED')").await;
    c.node(3).sql_ok("INSERT INTO p.t (k, v) VALUES (0, 'before')").await;

    c.isolate(3, true).await;
    // The majority keeps accepting writes (once leaders that were on node 3 are replaced).
    let leaders = c.wait_leaders(1, Some(3), NEW_LEADER_WAIT).await;
    assert!(leaders.values().all(|l| *l != 3));
    for k in 1..=20 {
        c.node(1 + (k % 2) as usize).sql_ok(&format!("INSERT INTO p.t (k, v) VALUES ({k}, 'majority')")).await;
    }
    // The minority node refuses writes with 503 ...
    let started = Instant::now();
    let (status, body) = c.node(3).sql("INSERT INTO p.t (k, v) VALUES (100, 'minority')").await;
    assert_eq!(status, 503, "{body}");
    let code = body["error"]["code"].as_str().unwrap_or_default().to_string();
    assert!(code == "NOT_LEADER" || code == "CLUSTER_UNAVAILABLE", "{body}");
    assert!(started.elapsed() < Duration::from_secs(10), "refused within a bounded time");
    // ... serves no stale linearizable read ...
    let (status, body) = c.node(3).sql("SELECT COUNT(*) FROM p.t").await;
    assert_eq!(status, 503, "a linearizable read on the minority must fail, got {body}");
    // ... but answers an explicitly local read from what it has (stale: 1 row).
    let (status, body) = c.node(3).sql_body(json!({"sql": "SELECT COUNT(*) FROM p.t", "consistency": "local"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["rows"][0][0], 1, "{body}");
    let (_, h) = c.node(1).get("/v1/api/cluster/health").await.unwrap();
    assert_eq!(h["status"], "degraded", "{h}");

    c.isolate(3, false).await;
    c.wait_leaders(3, None, NEW_LEADER_WAIT).await;
    assert_eq!(count(c.node(3), "p.t").await, 21);
    // The refused write never happened anywhere.
    let r = c.node(2).sql_ok("SELECT COUNT(*) FROM p.t WHERE k = 100").await;
    assert_eq!(r["rows"][0][0], 0, "{r}");
    c.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_secret_cannot_join() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), &[]).await;
    c.node(1).sql_ok("CREATE NAMESPACE s").await;
    let terms_before = c.leaders(1).await;

    // An impostor claiming to be node 1 (the initializer: it starts elections at once), with
    // the cluster id and member list right but the secret wrong.
    let http = common::free_port();
    let raft = common::cluster::free_udp_port();
    let data = dir.path().join("impostor");
    let cfg = dir.path().join("impostor.toml");
    let mut members_http = c.http.clone();
    members_http[0] = http;
    let mut members_raft = c.raft.clone();
    members_raft[0] = raft;
    std::fs::write(
        &cfg,
        format!(
            "[server]\nhost = \"127.0.0.1\"\nport = {http}\nnode_id = 1\n\n[storage]\ndata_path = \"{}\"\n\n{}",
            data.display(),
            common::cluster::cluster_toml(
                &members_http,
                &members_raft,
                "a7d04c9e1b36f85a2e0c7b941f3d68e5c2a9b07f4e1d35c86b2a9f0e7d41c358"
            )
        ),
    )
    .unwrap();
    let impostor = common::Server::spawn(Some(&cfg), &data, http, &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Its vote and append requests never reached Raft: no term moved, leaders are unchanged.
    assert_eq!(c.leaders(1).await, terms_before);
    let (_, m) = c.node(2).get("/metrics").await.unwrap();
    let text = m.as_str().unwrap_or_default().to_string();
    let refused: f64 = text
        .lines()
        .find(|l| l.starts_with("kalamdb_transport_auth_failures_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(refused >= 1.0, "node 2 counted refused peers:\n{text}");
    // And the impostor itself never got a leader for anything.
    let (status, _) = impostor.get("/v1/api/healthcheck").await.unwrap_or((0, json!(null)));
    assert_ne!(status, 200, "the impostor must not become healthy");
    let r = c.node(3).sql_ok("SELECT COUNT(*) FROM system.namespaces WHERE namespace_id = 's'").await;
    assert_eq!(r["rows"][0][0], 1);
    drop(impostor);
    c.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_restarts_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), &[]).await;
    c.node(2).sql_ok("CREATE NAMESPACE r").await;
    c.node(3).sql_ok("CREATE TABLE r.t (k BIGINT PRIMARY KEY, v TEXT) WITH (TYPE = 'SHARED')").await;
    for k in 0..30 {
        c.node(1 + k % 3).sql_ok(&format!("INSERT INTO r.t (k, v) VALUES ({k}, 'v')")).await;
    }
    let before = c.assert_converged().await;
    for i in 1..=3 {
        c.kill9(i);
    }
    // Reverse order: the initializer (node 1) comes back last and must not re-initialize.
    c.restart_all(&[3, 2, 1]).await;
    for i in 1..=3 {
        assert_eq!(count(c.node(i), "r.t").await, 30, "node {i}");
    }
    c.node(1).sql_ok("INSERT INTO r.t (k, v) VALUES (100, 'after restart')").await;
    let after = c.assert_converged().await;
    assert_eq!(before["meta:catalog"], after["meta:catalog"], "no catalog change from restarting");
    assert_ne!(before["shared:0"], after["shared:0"], "the new row is in the shared shard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_one_node_work_on_every_node_and_users_stay_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), &[]).await;
    let n = |i: usize| c.node(i);
    n(1).sql_ok("CREATE NAMESPACE app").await;
    n(1).sql_ok("CREATE USER TABLE app.notes (id BIGINT PRIMARY KEY, body TEXT)").await;
    n(1).sql_ok("CREATE USER 'alice' WITH PASSWORD 'alice-password'").await;
    n(2).sql_ok("CREATE USER 'bob' WITH PASSWORD 'bob-password'").await;
    // Users created through one node log in on another at once (the login syncs the users group).
    let alice = n(3).login("alice", "alice-password").await;
    let bob = n(1).login("bob", "bob-password").await;
    for i in 1..=3 {
        let (st, b) = n(i).request_as(Some(&alice), "GET", "/v1/api/auth/me", None, Vec::new()).await.unwrap();
        assert_eq!((st, &b["user"]["username"]), (200, &json!("alice")), "node {i}: {b}");
        let (st, b) =
            n(i).sql_as(Some(&alice), &format!("INSERT INTO app.notes (id, body) VALUES ({i}, 'a{i}')")).await;
        assert_eq!(st, 200, "node {i}: {b}");
        let (st, b) = n(i).sql_as(Some(&bob), &format!("INSERT INTO app.notes (id, body) VALUES ({i}, 'b{i}')")).await;
        assert_eq!(st, 200, "node {i}: {b}");
    }
    for i in 1..=3 {
        let (_, b) = n(i).sql_as(Some(&alice), "SELECT body FROM app.notes ORDER BY id").await;
        assert_eq!(b["results"][0]["rows"], json!([["a1"], ["a2"], ["a3"]]), "node {i}: {b}");
        let (_, b) = n(i).sql_as(Some(&bob), "SELECT body FROM app.notes WHERE id = 2").await;
        assert_eq!(b["results"][0]["rows"], json!([["b2"]]), "node {i}: {b}");
        let (st, b) = n(i).sql_as(Some(&bob), "CREATE NAMESPACE nope").await;
        assert_eq!((st, b["error"]["code"].as_str()), (403, Some("PERMISSION_DENIED")), "node {i}: {b}");
        let (st, _) = n(i).sql_as(None, "SELECT 1").await;
        assert_eq!(st, 401, "node {i}: strangers are refused");
    }
    // A dropped user's token stops working on every node.
    n(2).sql_ok("DROP USER 'bob'").await;
    for i in 1..=3 {
        let (st, b) = n(i).sql_as(Some(&bob), "SELECT 1").await;
        assert_eq!((st, b["error"]["code"].as_str()), (401, Some("INVALID_TOKEN")), "node {i}: {b}");
    }
    c.assert_converged().await;
}
