//! The tail endpoint on a 3-node cluster of real processes: concurrent subscribers on every
//! node, writes through every node, the group's leader killed with SIGKILL mid-stream.
//! Subscribers cut off by the kill resume on another node with their last event id. Checked:
//! every acknowledged write reaches every subscriber exactly once, in the same commit order
//! everywhere (no gap, no duplicate, across the reconnect and the failover).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{ROOT_BASIC, TailStream};
use tokio::sync::Mutex;

/// Writes per writer, and writers.
const WRITES_PER_WRITER: u64 = 150;
const WRITERS: u64 = 2;
/// Subscribers per node.
const SUBSCRIBERS_PER_NODE: usize = 2;
/// Bound on the whole exchange.
const DEADLINE: Duration = Duration::from_secs(120);

/// What one subscriber saw: (log index, offset, row id) in arrival order, and its reconnects.
#[derive(Debug, Default)]
struct Seen {
    events: Vec<(u64, u64, i64)>,
    reconnects: usize,
}

async fn subscriber(
    ports: Vec<u16>,
    first: usize,
    dead: Arc<Mutex<BTreeSet<usize>>>,
    want: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) {
    let deadline = Instant::now() + DEADLINE;
    let mut node = first;
    let mut last_id: Option<String> = None;
    while Instant::now() < deadline && want.load(Ordering::SeqCst) {
        if dead.lock().await.contains(&node) {
            node = (node + 1) % ports.len();
            continue;
        }
        let path = match &last_id {
            Some(id) => format!("/v1/api/tail?table=app.events&from={id}"),
            None => "/v1/api/tail?table=app.events&from=earliest".to_string(),
        };
        let Ok(mut t) =
            TailStream::try_open(ports[node], &path, Some(ROOT_BASIC), &[("accept", "application/x-ndjson")], None)
                .await
        else {
            node = (node + 1) % ports.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        assert_eq!(t.status, 200, "subscribe on node {}", node + 1);
        // Read until the stream ends (the node died) or the test is satisfied.
        while want.load(Ordering::SeqCst) && Instant::now() < deadline {
            let Some(v) = t.next_json(Duration::from_millis(500)).await else {
                if t.is_ended() {
                    break;
                }
                continue;
            };
            if v["type"] != "change" || v["op"] != "insert" {
                continue;
            }
            let index = v["position"]["index"].as_u64().unwrap();
            let offset = v["position"]["offset"].as_u64().unwrap();
            let id = v["row"]["id"].as_i64().unwrap();
            last_id = Some(v["id"].as_str().unwrap().to_string());
            seen.lock().await.events.push((index, offset, id));
        }
        seen.lock().await.reconnects += 1;
        node = (node + 1) % ports.len();
    }
}

async fn writer(ports: Vec<u16>, w: u64, dead: Arc<Mutex<BTreeSet<usize>>>) -> (BTreeSet<i64>, BTreeSet<i64>) {
    let (mut acked, mut unknown) = (BTreeSet::new(), BTreeSet::new());
    for k in 0..WRITES_PER_WRITER {
        let id = (w * 1_000_000 + k) as i64;
        let node = (k as usize + w as usize) % ports.len();
        let node = if dead.lock().await.contains(&node) { (node + 1) % ports.len() } else { node };
        match common::post_sql(ports[node], &format!("INSERT INTO app.events (id, w) VALUES ({id}, {w})")).await {
            Ok((200, _)) => {
                acked.insert(id);
            }
            _ => {
                unknown.insert(id);
            }
        }
    }
    (acked, unknown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_see_every_write_once_in_commit_order_across_a_leader_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), &[("KALAMDB_TAIL_HEARTBEAT_MS", "300")]).await;
    c.node(1).sql_ok("CREATE NAMESPACE app").await;
    c.node(1).sql_ok("CREATE TABLE app.events (id BIGINT PRIMARY KEY, w BIGINT) WITH (TYPE = 'SHARED')").await;
    // Right after the DDL, every node knows the table (the tail reads the catalog behind a
    // read barrier, as SELECT does).
    for port in &c.http {
        let t = TailStream::open(*port, "/v1/api/tail?table=app.events", Some(ROOT_BASIC), &[], None).await;
        assert_eq!(t.status, 200, "tail on port {port} right after CREATE TABLE");
    }
    let leaders = c.wait_leaders(1, None, Duration::from_secs(10)).await;
    let victim = leaders["shared:0"] as usize;
    let ports = c.http.clone();
    let dead = Arc::new(Mutex::new(BTreeSet::new()));
    let want = Arc::new(AtomicBool::new(true));
    let mut subs = Vec::new();
    for node in 0..ports.len() {
        for _ in 0..SUBSCRIBERS_PER_NODE {
            let seen = Arc::new(Mutex::new(Seen::default()));
            subs.push((node + 1, seen.clone()));
            tokio::spawn(subscriber(ports.clone(), node, dead.clone(), want.clone(), seen));
        }
    }
    let writers: Vec<_> = (0..WRITERS).map(|w| tokio::spawn(writer(ports.clone(), w, dead.clone()))).collect();
    // Kill the leader of the table's group once the writes are under way.
    let started = Instant::now();
    loop {
        let n: usize = subs[0].1.lock().await.events.len();
        if n >= 60 || started.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    dead.lock().await.insert(victim - 1);
    c.kill9(victim);
    let (mut acked, mut unknown) = (BTreeSet::new(), BTreeSet::new());
    for w in writers {
        let (a, u) = w.await.unwrap();
        acked.extend(a);
        unknown.extend(u);
    }
    assert!(acked.len() as u64 >= WRITERS * WRITES_PER_WRITER / 2, "too few writes acknowledged: {}", acked.len());
    // Wait until every subscriber has every acknowledged row.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut missing = 0;
        for (_, seen) in &subs {
            let ids: BTreeSet<i64> = seen.lock().await.events.iter().map(|e| e.2).collect();
            missing += acked.difference(&ids).count();
        }
        if missing == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{missing} acknowledged rows never reached the subscribers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let stragglers (writes whose outcome was unknown) arrive, then stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    want.store(false, Ordering::SeqCst);
    let mut reference: Option<Vec<(u64, u64, i64)>> = None;
    let mut cut_off = 0;
    for (node, seen) in &subs {
        let seen = seen.lock().await;
        let mut ids = BTreeSet::new();
        for e in &seen.events {
            assert!(ids.insert(e.2), "subscriber on node {node} saw row {} twice", e.2);
            assert!(acked.contains(&e.2) || unknown.contains(&e.2), "row {} was never written", e.2);
        }
        let positions: Vec<(u64, u64)> = seen.events.iter().map(|e| (e.0, e.1)).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "subscriber on node {node}: out of commit order");
        if *node == victim {
            cut_off += 1;
            assert!(seen.reconnects >= 1, "a subscriber on the killed node must have reconnected");
        }
        // Every subscriber saw the same sequence: positions are the same on every node.
        let common_len = reference.as_ref().map_or(seen.events.len(), |r| r.len().min(seen.events.len()));
        match &reference {
            None => reference = Some(seen.events.clone()),
            Some(r) => assert_eq!(&r[..common_len], &seen.events[..common_len], "subscriber on node {node} disagrees"),
        }
    }
    assert_eq!(cut_off, SUBSCRIBERS_PER_NODE);
    let by_writer: BTreeMap<i64, usize> = acked.iter().fold(BTreeMap::new(), |mut m, id| {
        *m.entry(id / 1_000_000).or_default() += 1;
        m
    });
    eprintln!("acknowledged per writer: {by_writer:?}; unknown: {}", unknown.len());
}
