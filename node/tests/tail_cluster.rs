//! The tail endpoint on a 3-node cluster of real processes: concurrent subscribers on every
//! node, writes through every node, the group's leader killed with SIGKILL mid-stream.
//! Subscribers cut off by the kill resume on another node with their last event id. Checked:
//! every acknowledged write reaches every subscriber exactly once, in the same commit order
//! everywhere (no gap, no duplicate, across the reconnect and the failover).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::followers::{Seen, kill_leader_during_writes};
use common::{ROOT_BASIC, TailStream};
use tokio::sync::Mutex;

/// Writes per writer, and writers.
const WRITES_PER_WRITER: u64 = 150;
const WRITERS: u64 = 2;
/// Subscribers per node.
const SUBSCRIBERS_PER_NODE: usize = 2;
/// Bound on the whole exchange.
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
            let id = common::int(&v["row"]["id"]).unwrap();
            last_id = Some(v["id"].as_str().unwrap().to_string());
            seen.lock().await.events.push(((index, offset), id));
        }
        seen.lock().await.reconnects += 1;
        node = (node + 1) % ports.len();
    }
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
    kill_leader_during_writes(&mut c, SUBSCRIBERS_PER_NODE, WRITERS, WRITES_PER_WRITER, DEADLINE, subscriber).await;
}
