//! `/v1/ws` live queries on a 3-node cluster of real processes: WebSocket subscribers on every
//! node while writes go through every node and the table group's leader is killed with
//! SIGKILL. A subscriber cut off by the kill reconnects to another node and resumes with the
//! last `_seq` it received, as KalamDB's clients do. Checked: every acknowledged write reaches
//! every subscriber exactly once, in the same order (by `_seq`) everywhere.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::ROOT_BASIC;
use common::cluster::Cluster;
use common::followers::{Seen, kill_leader_during_writes};
use common::ws::WsClient;
use serde_json::json;
use tokio::sync::Mutex;

const WRITES_PER_WRITER: u64 = 150;
const WRITERS: u64 = 2;
const SUBSCRIBERS_PER_NODE: usize = 2;
const DEADLINE: Duration = Duration::from_secs(120);

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
                s.events.push(((seq, 0), id));
            }
        }
        seen.lock().await.reconnects += 1;
        node = (node + 1) % ports.len();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_subscribers_see_every_write_once_across_a_leader_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), &[]).await;
    c.node(1).sql_ok("CREATE NAMESPACE app").await;
    c.node(1).sql_ok("CREATE TABLE app.events (id BIGINT PRIMARY KEY, w BIGINT) WITH (TYPE = 'SHARED')").await;
    // Right after the DDL, every node knows the table: a subscription reads the catalog behind
    // a read barrier, as SELECT does.
    for port in &c.http {
        let mut ws = WsClient::try_connect(*port, "", &[("authorization", ROOT_BASIC)]).await.unwrap();
        ws.send(json!({"type": "subscribe", "subscription": {"id": "now", "sql": "SELECT * FROM app.events"}})).await;
        let m = ws.next(Duration::from_secs(20)).await.expect("an answer");
        let m =
            if m["type"] == "auth_success" { ws.next(Duration::from_secs(20)).await.expect("an answer") } else { m };
        assert_eq!(m["type"], "subscription_ack", "on port {port} right after CREATE TABLE: {m}");
    }
    kill_leader_during_writes(&mut c, SUBSCRIBERS_PER_NODE, WRITERS, WRITES_PER_WRITER, DEADLINE, subscriber).await;
}
