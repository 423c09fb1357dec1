//! `/v1/ws` live queries on a 3-node cluster of real processes: WebSocket subscribers on every
//! node while writes go through every node and the table group's leader is killed with
//! SIGKILL. A subscriber cut off by the kill reconnects to another node and resumes with the
//! last `_seq` it received, as KalamDB's clients do. Checked: every acknowledged write reaches
//! every subscriber exactly once, in the same order (by `_seq`) everywhere.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::ROOT_BASIC;
use common::cluster::Cluster;
use common::ws::WsClient;
use serde_json::json;
use tokio::sync::Mutex;

const WRITES_PER_WRITER: u64 = 150;
const WRITERS: u64 = 2;
const SUBSCRIBERS_PER_NODE: usize = 2;
const DEADLINE: Duration = Duration::from_secs(120);

/// What one subscriber saw: (`_seq`, row id) in arrival order, and its reconnects.
#[derive(Debug, Default)]
struct Seen {
    events: Vec<(u64, i64)>,
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
    let mut last_seq: Option<u64> = None;
    while Instant::now() < deadline && want.load(Ordering::SeqCst) {
        if dead.lock().await.contains(&node) {
            node = (node + 1) % ports.len();
            continue;
        }
        let Ok(mut c) = tokio::time::timeout(
            Duration::from_secs(5),
            WsClient::try_connect(ports[node], "", &[("authorization", ROOT_BASIC)]),
        )
        .await
        .map_err(|_| ())
        .and_then(|r| r.map_err(|_| ())) else {
            node = (node + 1) % ports.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Resume after the last row received; the first time, the table from its start.
        let options = match last_seq {
            Some(s) => json!({"from": s}),
            None => json!({}),
        };
        c.send(json!({"type": "subscribe", "subscription": {"id": "e", "sql": "SELECT * FROM app.events", "options": options}}))
            .await;
        while want.load(Ordering::SeqCst) && Instant::now() < deadline {
            let Some(m) = c.next(Duration::from_millis(500)).await else {
                if c.closed.is_some() || dead.lock().await.contains(&node) {
                    break;
                }
                continue;
            };
            let rows = match m["type"].as_str() {
                Some("initial_data_batch") => {
                    if m["batch_control"]["has_more"] == true {
                        c.send(json!({"type": "next_batch", "subscription_id": "e"})).await;
                    }
                    &m["rows"]
                }
                Some("change") if m["change_type"] == "insert" => &m["rows"],
                Some("error") => panic!("subscriber on node {}: {m}", node + 1),
                _ => continue,
            };
            let mut s = seen.lock().await;
            for r in rows.as_array().unwrap() {
                let seq: u64 = r["_seq"].as_str().unwrap().parse().unwrap();
                let id: i64 = r["id"].as_str().unwrap().parse().unwrap();
                last_seq = Some(seq);
                s.events.push((seq, id));
            }
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
            Ok((200, _)) => acked.insert(id),
            _ => unknown.insert(id),
        };
    }
    (acked, unknown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_subscribers_see_every_write_once_across_a_leader_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), &[]).await;
    c.node(1).sql_ok("CREATE NAMESPACE app").await;
    c.node(1).sql_ok("CREATE TABLE app.events (id BIGINT PRIMARY KEY, w BIGINT) WITH (TYPE = 'SHARED')").await;
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
    let started = Instant::now();
    loop {
        let n = subs[0].1.lock().await.events.len();
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
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut missing = 0;
        for (_, seen) in &subs {
            let ids: BTreeSet<i64> = seen.lock().await.events.iter().map(|e| e.1).collect();
            missing += acked.difference(&ids).count();
        }
        if missing == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{missing} acknowledged rows never reached the subscribers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    want.store(false, Ordering::SeqCst);
    let mut reference: Option<Vec<(u64, i64)>> = None;
    let mut cut_off = 0;
    for (node, seen) in &subs {
        let seen = seen.lock().await;
        let mut ids = BTreeSet::new();
        for e in &seen.events {
            assert!(ids.insert(e.1), "subscriber on node {node} saw row {} twice", e.1);
            assert!(acked.contains(&e.1) || unknown.contains(&e.1), "row {} was never written", e.1);
        }
        assert!(seen.events.windows(2).all(|w| w[0].0 < w[1].0), "subscriber on node {node}: _seq out of order");
        if *node == victim {
            cut_off += 1;
            assert!(seen.reconnects >= 1, "a subscriber on the killed node must have reconnected");
        }
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
