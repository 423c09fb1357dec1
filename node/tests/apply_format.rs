//! Apply formats across real processes: a group moves to a format only once every member
//! allows it (a node held at the first format, as a node of an older build is, holds every
//! group there), moves by itself once the last member allows it, and a node that does not
//! allow a group's format is not added to it.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, SECRET};
use kalamdb_node::apply_format::APPLY_FORMAT_TICK_MS;
use kalamdb_projections::format::{FORMAT_FIRST, FORMAT_MAX};

/// What node `i` reports: (its allowed maximum, every group's format as it applied it).
async fn formats(c: &Cluster, i: usize) -> (u64, Vec<u64>) {
    let (status, h) = c.node(i).get("/v1/api/cluster/health?local=true").await.expect("cluster health");
    assert_eq!(status, 200, "{h}");
    let groups = h["groups"].as_array().expect("groups");
    let formats = groups.iter().map(|g| g["apply_format"].as_u64().expect("apply_format")).collect();
    (h["apply_format_max"].as_u64().expect("apply_format_max"), formats)
}

/// Hold node 3 at the first format in its config, or let it allow this build's highest.
fn hold_node_3(c: &Cluster, held: bool) {
    let path = c.config_path(3);
    let text = std::fs::read_to_string(&path).unwrap();
    let line = format!("apply_format_max = {FORMAT_FIRST}\n");
    let text = text.replace(&line, "");
    let text = if held { text.replacen("[storage]\n", &format!("[storage]\n{line}"), 1) } else { text };
    std::fs::write(path, text).unwrap();
}

// With one format there is nothing to move to.
const _: () = assert!(FORMAT_MAX > FORMAT_FIRST);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_move_to_a_format_once_every_member_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::configure(dir.path(), &[]);
    hold_node_3(&c, true);
    c.start_configured().await;
    c.wait_leaders(1, None, common::STARTUP_WAIT).await;
    // The cluster works meanwhile, flushes included.
    c.node(1).sql_ok("CREATE NAMESPACE app").await;
    c.node(1).sql_ok("CREATE TABLE app.kv (k BIGINT PRIMARY KEY, v TEXT) WITH (TYPE = 'SHARED')").await;
    c.node(2).sql_ok("INSERT INTO app.kv (k, v) VALUES (1, 'a'), (2, 'b'), (3, 'c')").await;
    c.node(1).sql_ok("FLUSH TABLE app.kv").await;
    // Two ticks of every leader: nothing moves while node 3 holds the first format.
    tokio::time::sleep(Duration::from_millis(2 * APPLY_FORMAT_TICK_MS + 1_000)).await;
    assert_eq!(formats(&c, 3).await.0, u64::from(FORMAT_FIRST));
    for i in 1..=3 {
        let (max, groups) = formats(&c, i).await;
        assert!(!groups.is_empty());
        assert!(groups.iter().all(|f| *f == u64::from(FORMAT_FIRST)), "node {i} (allows {max}): {groups:?}");
    }

    // Node 3 allows this build's highest after a restart: every group moves, on every node.
    assert!(c.node_mut(3).terminate(Duration::from_secs(30)).await, "node 3 stops");
    hold_node_3(&c, false);
    c.restart(3).await;
    let deadline = Instant::now() + Duration::from_millis(6 * APPLY_FORMAT_TICK_MS);
    loop {
        let mut seen = Vec::new();
        for i in 1..=3 {
            seen.push(formats(&c, i).await);
        }
        if seen
            .iter()
            .all(|(max, groups)| *max == u64::from(FORMAT_MAX) && groups.iter().all(|f| *f == u64::from(FORMAT_MAX)))
        {
            break;
        }
        assert!(Instant::now() < deadline, "groups did not all reach format {FORMAT_MAX}: {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.assert_converged().await;
    c.node(3).sql_ok("INSERT INTO app.kv (k, v) VALUES (4, 'd')").await;
    let rows = c.node(1).sql_ok("SELECT COUNT(*) AS n FROM app.kv").await;
    assert_eq!(common::int(&rows["rows"][0][0]), Some(4), "{rows}");

    // A node held at the first format asks to join: no group takes it.
    let held = c.add_node_with(SECRET, &format!("apply_format_max = {FORMAT_FIRST}\n"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.log(held).contains("allows formats up to 1") {
        assert!(Instant::now() < deadline, "no refusal in node {held}'s log:\n{}", c.log(held));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, h) = c.node(1).get("/v1/api/cluster/health?local=true").await.unwrap();
    for g in h["groups"].as_array().unwrap() {
        let members: Vec<u64> =
            g["members"].as_array().unwrap().iter().map(|m| m["node_id"].as_u64().unwrap()).collect();
        assert!(!members.contains(&(held as u64)), "group {} took the held node: {members:?}", g["group"]);
    }
}
