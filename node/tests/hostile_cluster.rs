//! A hostile query on the leader and on a follower of a 3-node cluster of real processes
//! (issue 17): no election is triggered, writes keep flowing, health stays fast.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use serde_json::json;

/// Group -> Raft term, as node `i` knows them.
async fn terms(c: &Cluster, i: usize) -> BTreeMap<String, u64> {
    let (_, h) = c.node(i).get("/v1/api/cluster/health?local=true").await.expect("cluster health");
    h["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| (g["group"].as_str().unwrap_or_default().to_string(), g["term"].as_u64().unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_queries_on_leader_and_follower_cause_no_election() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(
        dir.path(),
        &[("KALAMDB_LIMITS_QUERY_TIMEOUT_MS", "6000"), ("KALAMDB_LIMITS_QUERY_MEMORY_BYTES_MAX", "268435456")],
    )
    .await;
    c.node(1).sql_ok("CREATE NAMESPACE app").await;
    c.node(1).sql_ok("CREATE TABLE app.w (id BIGINT PRIMARY KEY, v TEXT) WITH (TYPE = 'SHARED')").await;
    let leaders = c.wait_leaders(1, None, Duration::from_secs(30)).await;
    let leader = leaders["shared:0"] as usize;
    let follower = (1..=3).find(|n| *n != leader).expect("a follower");
    let before: Vec<_> = all_terms(&c).await;

    // Two CPU-bound queries (one per node) that end only at their deadline.
    let spin = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r";
    let attacks: Vec<_> = [leader, follower]
        .into_iter()
        .map(|n| {
            let port = c.http[n - 1];
            tokio::spawn(async move { common::post_sql(port, spin).await })
        })
        .collect();

    // Meanwhile: writes through a third path (the follower forwards to the leader) and health.
    let started = Instant::now();
    let (mut written, mut slowest_health) = (0u64, Duration::ZERO);
    while !attacks.iter().all(|a| a.is_finished()) {
        let (st, body) = common::post_sql(
            c.http[follower - 1],
            &format!("INSERT INTO app.w (id, v) VALUES ({written}, 'during the attack')"),
        )
        .await
        .expect("write answered");
        assert_eq!(st, 200, "a write failed during the attack: {body}");
        written += 1;
        let t = Instant::now();
        let (st, _) = c.node(leader).get("/v1/api/healthcheck").await.expect("health");
        assert_eq!(st, 200);
        slowest_health = slowest_health.max(t.elapsed());
        assert!(started.elapsed() < Duration::from_secs(30), "the attacks did not end at their deadline");
    }
    for a in attacks {
        let (st, body) = a.await.unwrap().expect("attack answered");
        assert_eq!((st, body["error"]["code"].as_str()), (400, Some("QUERY_TIMEOUT")), "{body}");
    }
    eprintln!("{written} writes during the attack, slowest health {slowest_health:?}");
    assert!(written >= 20, "writes kept flowing: only {written}");
    assert!(slowest_health < Duration::from_secs(1), "health took {slowest_health:?}");
    assert_eq!(all_terms(&c).await, before, "no group changed its term: no election");
    let r = c.node(leader).sql_ok("SELECT count(*) AS n FROM app.w").await;
    assert_eq!(r["rows"], json!([[written]]));
}

async fn all_terms(c: &Cluster) -> Vec<BTreeMap<String, u64>> {
    let mut out = Vec::new();
    for i in 1..=3 {
        out.push(terms(c, i).await);
    }
    out
}
