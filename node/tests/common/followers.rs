//! What the 3-node subscription tests share (tail endpoint and `/v1/ws`): writers inserting
//! rows through every node, and the check that every subscriber saw every acknowledged row once,
//! in the same order as every other subscriber.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// One row as a subscriber received it: its position (log index and offset, or `_seq` and 0)
/// and its id.
pub type Event = ((u64, u64), i64);

/// What one subscriber saw, in arrival order, and how often it reconnected.
#[derive(Debug, Default)]
pub struct Seen {
    pub events: Vec<Event>,
    pub reconnects: usize,
}

/// Insert `writes` rows into `app.events` (ids `w * 1_000_000 + k`), round robin over the nodes
/// not in `dead`; the ids acknowledged and those whose outcome is unknown.
pub async fn writer(
    ports: Vec<u16>,
    w: u64,
    writes: u64,
    dead: Arc<Mutex<BTreeSet<usize>>>,
) -> (BTreeSet<i64>, BTreeSet<i64>) {
    let (mut acked, mut unknown) = (BTreeSet::new(), BTreeSet::new());
    for k in 0..writes {
        let id = (w * 1_000_000 + k) as i64;
        let node = (k as usize + w as usize) % ports.len();
        let node = if dead.lock().await.contains(&node) { (node + 1) % ports.len() } else { node };
        match super::post_sql(ports[node], &format!("INSERT INTO app.events (id, w) VALUES ({id}, {w})")).await {
            Ok((200, _)) => acked.insert(id),
            _ => unknown.insert(id),
        };
    }
    (acked, unknown)
}

/// Wait until every subscriber holds every acknowledged row.
pub async fn wait_all_seen(subs: &[(usize, Arc<Mutex<Seen>>)], acked: &BTreeSet<i64>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let mut missing = 0;
        for (_, seen) in subs {
            let ids: BTreeSet<i64> = seen.lock().await.events.iter().map(|e| e.1).collect();
            missing += acked.difference(&ids).count();
        }
        if missing == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{missing} acknowledged rows never reached the subscribers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every subscriber saw each row at most once, only rows that were written, in increasing
/// position, and the same sequence as every other; those on the `victim` node reconnected.
/// Returns how many subscribers were on the victim.
pub async fn check_seen(
    subs: &[(usize, Arc<Mutex<Seen>>)],
    acked: &BTreeSet<i64>,
    unknown: &BTreeSet<i64>,
    victim: usize,
) -> usize {
    let mut reference: Option<Vec<Event>> = None;
    let mut cut_off = 0;
    for (node, seen) in subs {
        let seen = seen.lock().await;
        let mut ids = BTreeSet::new();
        for e in &seen.events {
            assert!(ids.insert(e.1), "subscriber on node {node} saw row {} twice", e.1);
            assert!(acked.contains(&e.1) || unknown.contains(&e.1), "row {} was never written", e.1);
        }
        assert!(seen.events.windows(2).all(|w| w[0].0 < w[1].0), "subscriber on node {node}: out of commit order");
        if *node == victim {
            cut_off += 1;
            assert!(seen.reconnects >= 1, "a subscriber on the killed node must have reconnected");
        }
        // Positions are the same on every node: so is the sequence.
        let common_len = reference.as_ref().map_or(seen.events.len(), |r| r.len().min(seen.events.len()));
        match &reference {
            None => reference = Some(seen.events.clone()),
            Some(r) => assert_eq!(&r[..common_len], &seen.events[..common_len], "subscriber on node {node} disagrees"),
        }
    }
    cut_off
}

/// The shared scenario: `per_node` subscribers on every node (started by `spawn`), `writers`
/// writers of `writes` rows each through every node, the leader of `shared:0` (the table's
/// group) killed with SIGKILL once the first subscriber saw 60 rows. Then every acknowledged
/// row must reach every subscriber once, in the same order everywhere, and the subscribers on
/// the killed node must have reconnected elsewhere.
pub async fn kill_leader_during_writes<F, Fut>(
    c: &mut super::cluster::Cluster,
    per_node: usize,
    writers: u64,
    writes: u64,
    within: Duration,
    spawn: F,
) where
    F: Fn(Vec<u16>, usize, Arc<Mutex<BTreeSet<usize>>>, Arc<std::sync::atomic::AtomicBool>, Arc<Mutex<Seen>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use std::sync::atomic::{AtomicBool, Ordering};
    let leaders = c.wait_leaders(1, None, Duration::from_secs(10)).await;
    let victim = leaders["shared:0"] as usize;
    let ports = c.http.clone();
    let dead = Arc::new(Mutex::new(BTreeSet::new()));
    let want = Arc::new(AtomicBool::new(true));
    let mut subs = Vec::new();
    for node in 0..ports.len() {
        for _ in 0..per_node {
            let seen = Arc::new(Mutex::new(Seen::default()));
            subs.push((node + 1, seen.clone()));
            tokio::spawn(spawn(ports.clone(), node, dead.clone(), want.clone(), seen));
        }
    }
    let tasks: Vec<_> = (0..writers).map(|w| tokio::spawn(writer(ports.clone(), w, writes, dead.clone()))).collect();
    let started = Instant::now();
    while subs[0].1.lock().await.events.len() < 60 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    dead.lock().await.insert(victim - 1);
    c.kill9(victim);
    let (mut acked, mut unknown) = (BTreeSet::new(), BTreeSet::new());
    for t in tasks {
        let (a, u) = t.await.unwrap();
        acked.extend(a);
        unknown.extend(u);
    }
    assert!(acked.len() as u64 >= writers * writes / 2, "too few writes acknowledged: {}", acked.len());
    wait_all_seen(&subs, &acked, within).await;
    // Let stragglers (writes whose outcome was unknown) arrive, then stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    want.store(false, Ordering::SeqCst);
    assert_eq!(check_seen(&subs, &acked, &unknown, victim).await, per_node);
    eprintln!("acknowledged: {}; unknown: {}", acked.len(), unknown.len());
}
