//! Leadership on a 3-node cluster of real processes: automatic balancing after formation,
//! `CLUSTER TRANSFER LEADER` / `TRANSFER-LEADER` / `STEPDOWN` / `REBALANCE`, and a graceful
//! stop (SIGTERM) that hands leaderships over first, all while a writer runs through every
//! node: no write may fail and none may be lost.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::Cluster;

/// Balancing interval for this test (the default is 5 s).
const BALANCE_INTERVAL_MS: &str = "500";
/// Bound on waiting for the balancer to even leadership out.
const BALANCE_WAIT: Duration = Duration::from_secs(60);
/// Log lines per node shown when leadership does not balance.
const BALANCE_TRAIL_LINES: usize = 12;
/// Bound on the writer, whatever happens.
const WRITES_MAX: u64 = 20_000;

/// How many groups each node leads in node `asking`'s view (every group has a leader).
async fn counts(c: &Cluster, asking: usize) -> BTreeMap<u64, usize> {
    let leaders = c.wait_leaders(asking, None, Duration::from_secs(10)).await;
    let mut out: BTreeMap<u64, usize> = (1..=3).map(|n| (n, 0)).collect();
    for l in leaders.values() {
        *out.entry(*l).or_default() += 1;
    }
    out
}

/// Wait until leadership is spread 3/3/2 (no node two more than another) over `nodes`.
async fn wait_balanced(c: &Cluster, asking: usize, nodes: &[u64]) -> Duration {
    let started = Instant::now();
    loop {
        let n = counts(c, asking).await;
        let on: Vec<usize> = nodes.iter().map(|id| n[id]).collect();
        if on.iter().max().unwrap() - on.iter().min().unwrap() <= 1 && on.iter().sum::<usize>() == 8 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < BALANCE_WAIT,
            "leadership not balanced within {BALANCE_WAIT:?}: {n:?}\n{}",
            balance_trail(c)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last balancing decisions in every node's log, for a failure message (CI keeps only
/// the tail of the output, not the nodes' logs).
fn balance_trail(c: &Cluster) -> String {
    let mut out = String::new();
    for i in 1..=3 {
        let log = c.log(i);
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("balanc") || l.contains("handed over") || l.contains("transfer"))
            .collect();
        out.push_str(&format!("node {i}: {} balancing lines, the last:\n", lines.len()));
        for l in lines.iter().rev().take(BALANCE_TRAIL_LINES).rev() {
            out.push_str(&format!("  {l}\n"));
        }
    }
    out
}

/// Writes unique rows through nodes in turn (a shared table and a user table) until `stop`;
/// returns the acknowledged keys and every failure seen.
async fn writer(ports: Vec<u16>, stop: Arc<AtomicBool>) -> (Vec<u64>, Vec<String>) {
    let mut acked = Vec::new();
    let mut failures = Vec::new();
    for k in 0..WRITES_MAX {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let port = ports[k as usize % ports.len()];
        let sql =
            format!("INSERT INTO app.kv (k, v) VALUES ({k}, 'v{k}'); INSERT INTO app.mine (k, v) VALUES ({k}, 'm{k}')");
        match common::post_sql(port, &sql).await {
            Ok((200, _)) => acked.push(k),
            // A node being stopped refuses connections: not a failed write.
            Err(e) if e.contains("(Connect)") => {}
            Ok((status, body)) => failures.push(format!("key {k} via {port}: {status} {body}")),
            Err(e) => failures.push(format!("key {k} via {port}: {e}")),
        }
    }
    (acked, failures)
}

fn rows(body: &serde_json::Value) -> &Vec<serde_json::Value> {
    body["rows"].as_array().unwrap_or_else(|| panic!("rows: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leaders_balance_move_on_demand_and_leave_before_a_graceful_stop() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), &[("KALAMDB_RAFT_LEADER_BALANCE_INTERVAL_MS", BALANCE_INTERVAL_MS)]).await;

    // 1. After formation the balancer spreads the 8 groups 3/3/2 by itself.
    let took = wait_balanced(&c, 1, &[1, 2, 3]).await;
    eprintln!("balanced after formation in {took:?}: {:?}", counts(&c, 1).await);

    c.node(1).sql_ok("CREATE NAMESPACE app").await;
    c.node(1).sql_ok("CREATE SHARED TABLE app.kv (k BIGINT PRIMARY KEY, v TEXT)").await;
    c.node(1).sql_ok("CREATE USER TABLE app.mine (k BIGINT PRIMARY KEY, v TEXT)").await;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = tokio::spawn(writer(c.http.clone(), stop.clone()));

    // 2. One group to a named node, answered with the leader before and after.
    let before = c.leaders(2).await["shared:0"].unwrap();
    let to = if before == 3 { 2 } else { 3 };
    let r = c.node(2).sql_ok(&format!("CLUSTER TRANSFER LEADER 'shared:0' TO {to}")).await;
    assert_eq!(rows(&r).len(), 1, "{r}");
    assert_eq!(
        (&rows(&r)[0][0], &rows(&r)[0][2], &rows(&r)[0][3]),
        (&"shared:0".into(), &before.into(), &to.into()),
        "{r}"
    );
    assert!(rows(&r)[0][4].is_null(), "{r}");

    // 3. KalamDB's spelling: every group to node 2, asked through node 3.
    let started = Instant::now();
    let r = c.node(3).sql_ok("CLUSTER TRANSFER-LEADER 2").await;
    let took = started.elapsed();
    assert_eq!(rows(&r).len(), 8, "{r}");
    assert!(rows(&r).iter().all(|row| row[3] == 2 && row[4].is_null()), "{r}");
    eprintln!("8 groups moved to node 2 in {took:?}");
    // ... and the balancer spreads them again, then leaves them alone.
    wait_balanced(&c, 2, &[1, 2, 3]).await;
    let settled = c.leaders(1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.leaders(1).await, settled, "a balanced cluster stays put (no flapping)");

    // 4. STEPDOWN: the node asked gives every group it leads to another voter.
    let busiest = c.busiest_leader(1).await as usize;
    let r = c.node(busiest).sql_ok("CLUSTER STEPDOWN").await;
    assert!(!rows(&r).is_empty(), "{r}");
    assert!(rows(&r).iter().all(|row| row[3] != busiest as u64 && row[4].is_null()), "{r}");

    // 5. REBALANCE evens things out at once, from any node.
    // (The automatic balancers run meanwhile, so a move may find its group already moving.)
    let r = c.node(1).sql_ok("CLUSTER REBALANCE").await;
    assert!(r["message"].as_str().is_some_and(|m| m.starts_with("CLUSTER REBALANCE")), "{r}");
    wait_balanced(&c, 1, &[1, 2, 3]).await;

    // 6. Refusals: not a voter, not a dba, not a statement.
    let (st, b) = c.node(1).sql("CLUSTER TRANSFER-LEADER 9").await;
    assert_eq!((st, b["error"]["code"].as_str()), (409, Some("CLUSTER_OPERATION_REFUSED")), "{b}");
    c.node(1).sql_ok("CREATE USER 'plain' WITH PASSWORD 'plain-password-1' ROLE user").await;
    let token = c.node(1).login("plain", "plain-password-1").await;
    let (st, b) = c.node(1).sql_as(Some(&token), "CLUSTER STEPDOWN").await;
    assert_eq!(st, 403, "{b}");
    let (st, b) = c.node(1).sql("CLUSTER TRANSFER LEADER 'user:99' TO 2").await;
    assert_eq!(st, 400, "{b}");

    // 7. A graceful stop of a node that leads groups: it hands them over first.
    let leaving = c.busiest_leader(1).await as usize;
    let led = counts(&c, 1).await[&(leaving as u64)];
    assert!(led > 0);
    let stay = if leaving == 1 { 2 } else { 1 };
    let started = Instant::now();
    assert!(c.node_mut(leaving).terminate(Duration::from_secs(30)).await, "node {leaving} did not stop");
    eprintln!("node {leaving} (leading {led} groups) stopped gracefully in {:?}", started.elapsed());
    let log = c.log(leaving);
    assert!(log.contains("leaderships handed over before shutdown"), "no handover logged");
    assert!(log.contains(&format!("moved={led}")), "node {leaving} did not hand over all {led} groups");
    let after = c.wait_leaders(stay, Some(leaving as u64), Duration::from_secs(10)).await;
    assert!(after.values().all(|l| *l != leaving as u64), "{after:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 8. It comes back and gets its share again.
    c.restart(leaving).await;
    wait_balanced(&c, stay, &[1, 2, 3]).await;
    assert!(counts(&c, stay).await[&(leaving as u64)] >= 2);

    stop.store(true, Ordering::SeqCst);
    let (acked, failures) = writes.await.unwrap();
    eprintln!("{} writes acknowledged, {} failed", acked.len(), failures.len());
    assert!(failures.is_empty(), "writes failed while leadership moved: {failures:#?}");
    assert!(acked.len() > 50, "the writer made progress: {}", acked.len());
    for i in 1..=3 {
        let r = c.node(i).sql_ok("SELECT COUNT(*) FROM app.kv").await;
        assert_eq!(common::int(&r["rows"][0][0]), Some(acked.len() as i64), "node {i}: {r}");
    }
    c.assert_converged().await;
}

#[tokio::test]
async fn a_single_node_has_no_one_to_hand_leadership_to() {
    let dir = tempfile::tempdir().unwrap();
    let s = common::Server::start(dir.path()).await;
    for sql in ["CLUSTER STEPDOWN", "CLUSTER TRANSFER-LEADER 2", "CLUSTER REBALANCE"] {
        let (st, b) = s.sql(sql).await;
        assert_eq!((st, b["error"]["code"].as_str()), (409, Some("CLUSTER_OPERATION_REFUSED")), "{sql}: {b}");
    }
}
