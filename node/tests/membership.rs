//! Membership changes on a cluster of real processes, under writes: a 4th node joins (a
//! learner until caught up, then a voter of every group), node 1 (a leader) is removed, node 2
//! is killed with -9; the cluster keeps taking writes, with unavailability windows measured,
//! loses no acknowledged write, and the survivors' projections are identical. Also: removals
//! that would break a quorum are refused, and a node with the wrong secret cannot join.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, SECRET};

/// Bound on the writer, whatever happens.
const WRITES_MAX: u64 = 50_000;
/// Bound on a joining node becoming a voter of every group.
const JOIN_WAIT: Duration = Duration::from_secs(120);

/// Per write: when it was answered and whether it succeeded, and the acknowledged keys.
#[derive(Default)]
struct Log {
    acked: Vec<u64>,
    /// (time since start, ok) of every attempt.
    attempts: Vec<(Duration, bool)>,
    failures: Vec<String>,
}

/// Insert unique keys through the live nodes in turn until `stop`.
async fn writer(ports: Arc<Mutex<Vec<u16>>>, stop: Arc<AtomicBool>, log: Arc<Mutex<Log>>, started: Instant) {
    for k in 0..WRITES_MAX {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let port = {
            let p = ports.lock().unwrap();
            p[k as usize % p.len()]
        };
        let r = common::post_sql(port, &format!("INSERT INTO app.kv (k, v) VALUES ({k}, 'v{k}')")).await;
        let mut l = log.lock().unwrap();
        match r {
            Ok((200, _)) => {
                l.acked.push(k);
                l.attempts.push((started.elapsed(), true));
            }
            Ok((status, body)) => {
                l.attempts.push((started.elapsed(), false));
                if l.failures.len() < 20 {
                    l.failures.push(format!("key {k} via {port}: {status} {body}"));
                }
            }
            Err(e) => {
                l.attempts.push((started.elapsed(), false));
                if l.failures.len() < 20 {
                    l.failures.push(format!("key {k} via {port}: {e}"));
                }
            }
        }
    }
}

/// The longest stretch between two successful writes inside [from, to].
fn longest_gap(attempts: &[(Duration, bool)], from: Duration, to: Duration) -> Duration {
    let oks: Vec<Duration> = attempts.iter().filter(|(t, ok)| *ok && *t >= from && *t <= to).map(|(t, _)| *t).collect();
    oks.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

/// Node `asking`'s view: per group, its voters (from /v1/api/cluster/health).
async fn voters(c: &Cluster, asking: usize) -> BTreeMap<String, Vec<u64>> {
    let (_, h) = c.node(asking).get("/v1/api/cluster/health?local=true").await.expect("health");
    h["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| {
            let v = g["members"]
                .as_array()
                .expect("members")
                .iter()
                .filter(|m| m["membership"] == "voter")
                .map(|m| m["node_id"].as_u64().unwrap())
                .collect();
            (g["group"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

async fn wait_voters(c: &Cluster, asking: usize, want: &[u64], within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let v = voters(c, asking).await;
        if v.len() == 8 && v.values().all(|set| set == want) {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "voters are not {want:?} after {within:?}: {v:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joins_a_leader_leaves_and_a_crash_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), &[]).await;
    c.node(1).sql_ok("CREATE NAMESPACE app").await;
    c.node(1).sql_ok("CREATE SHARED TABLE app.kv (k BIGINT PRIMARY KEY, v TEXT)").await;
    let started = Instant::now();
    let ports = Arc::new(Mutex::new(c.http.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Log::default()));
    let writes = tokio::spawn(writer(ports.clone(), stop.clone(), log.clone(), started));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. Node 4 starts with `cluster.join = true` and becomes a voter of every group; the
    //    others' configs are untouched.
    let t_join = started.elapsed();
    let n4 = c.add_node(SECRET).await;
    assert_eq!(n4, 4);
    let took = wait_voters(&c, 1, &[1, 2, 3, 4], JOIN_WAIT).await;
    eprintln!("node 4 is a voter of all 8 groups {:?} after it answered its healthcheck", took);
    let r = c.node(4).sql_ok("SELECT node_id, membership FROM system.cluster ORDER BY node_id").await;
    assert_eq!(r["rows"].as_array().unwrap().len(), 4, "{r}");
    assert!(r["rows"].as_array().unwrap().iter().all(|row| row[1] == "voter"), "{r}");
    ports.lock().unwrap().push(c.http[3]);
    let join_gap = longest_gap(&log.lock().unwrap().attempts, t_join, started.elapsed());

    // 2. Removing a node that is no member is refused.
    let (st, b) = c.node(2).sql("CLUSTER REMOVE NODE 9").await;
    assert_eq!((st, b["error"]["code"].as_str()), (409, Some("CLUSTER_OPERATION_REFUSED")), "{b}");

    // 3. Remove node 1, which leads groups: its leaderships move first.
    let led_by_1 = c.leaders(2).await.values().filter(|l| **l == Some(1)).count();
    let t_remove = started.elapsed();
    let r = c.node(2).sql_ok("CLUSTER REMOVE NODE 1").await;
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 8, "{r}");
    assert!(rows.iter().all(|row| row[3].is_null() && row[2] == "2,3,4"), "{r}");
    ports.lock().unwrap().retain(|p| *p != c.http[0]);
    wait_voters(&c, 2, &[2, 3, 4], Duration::from_secs(10)).await;
    let remove_gap = longest_gap(&log.lock().unwrap().attempts, t_remove, started.elapsed());
    eprintln!("node 1 (leader of {led_by_1} groups) removed");
    assert!(c.node_mut(1).terminate(Duration::from_secs(30)).await);

    // 4. With voters {2, 3, 4}, removing 3 while 2 is down would leave no majority: refused.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t_kill = started.elapsed();
    c.kill9(2);
    ports.lock().unwrap().retain(|p| *p != c.http[1]);
    let (st, b) = c.node(3).sql("CLUSTER REMOVE NODE 4").await;
    assert_eq!((st, b["error"]["code"].as_str()), (409, Some("CLUSTER_OPERATION_REFUSED")), "{b}");
    c.wait_leaders(3, Some(2), Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kill_gap = longest_gap(&log.lock().unwrap().attempts, t_kill, started.elapsed());

    // 5. Node 2 comes back and catches up; everything acknowledged is there, everywhere.
    c.restart(2).await;
    ports.lock().unwrap().push(c.http[1]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    writes.await.unwrap();
    let log = std::mem::take(&mut *log.lock().unwrap());
    let failed = log.attempts.iter().filter(|(_, ok)| !ok).count();
    eprintln!(
        "{} writes acknowledged, {failed} failed; longest gap between acknowledged writes: join {join_gap:?}, remove {remove_gap:?}, kill -9 {kill_gap:?}",
        log.acked.len()
    );
    eprintln!("failures (first 20): {:#?}", log.failures);
    assert!(join_gap < Duration::from_secs(5), "joining stalled writes for {join_gap:?}");
    assert!(remove_gap < Duration::from_secs(5), "removing stalled writes for {remove_gap:?}");
    assert!(kill_gap < Duration::from_secs(10), "a crash stalled writes for {kill_gap:?}");
    for i in [2, 3, 4] {
        let r = c.node(i).sql_ok("SELECT COUNT(*) FROM app.kv").await;
        let n = common::int(&r["rows"][0][0]).unwrap();
        assert!(n >= log.acked.len() as i64, "node {i} has {n} rows, {} were acknowledged", log.acked.len());
    }
    let r = c.node(3).sql_ok("SELECT k FROM app.kv ORDER BY k").await;
    let stored: std::collections::BTreeSet<i64> =
        r["rows"].as_array().unwrap().iter().filter_map(|x| common::int(&x[0])).collect();
    let missing: Vec<u64> = log.acked.iter().copied().filter(|k| !stored.contains(&(*k as i64))).collect();
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
    c.assert_converged().await;
}

#[tokio::test]
async fn a_node_with_the_wrong_secret_cannot_join() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), &[]).await;
    let wrong = "7f3a9c1e5b2d8f4a6c0e9b3d7a1f5c8e2b6d0a4f9c3e7b1d5a8f2c6e0b4d9a3f";
    // It never becomes healthy (no group takes it), so start it without waiting.
    c.http.push(common::free_port());
    c.raft.push(common::cluster::free_udp_port());
    let before = voters(&c, 1).await;
    let started = Instant::now();
    let spawned = tokio::spawn({
        let dir = dir.path().to_path_buf();
        let (http, raft) = (c.http.clone(), c.raft.clone());
        async move {
            let data = dir.join("node4");
            let cfg = dir.join("server4.toml");
            let text = format!(
                "[server]\nhost = \"127.0.0.1\"\nport = {}\nnode_id = 4\n\n[storage]\ndata_path = \"{}\"\n\n{}",
                http[3],
                data.display(),
                common::cluster::cluster_toml(&http, &raft, wrong).replacen(
                    "[cluster]\n",
                    "[cluster]\njoin = true\n",
                    1
                )
            );
            std::fs::write(&cfg, text).unwrap();
            common::Server::spawn(Some(&cfg), &data, http[3], &[])
        }
    });
    let intruder = spawned.await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(voters(&c, 1).await, before, "membership changed for a node without the secret");
    let (status, _) = intruder.get("/v1/api/healthcheck").await.unwrap_or((0, serde_json::Value::Null));
    assert_ne!(status, 200, "the intruder has no group");
    assert!(c.log(1).contains("does not know our jwt_secret") || c.log(2).contains("does not know our jwt_secret"));
    eprintln!("refused for {:?}", started.elapsed());
    drop(intruder);
}
