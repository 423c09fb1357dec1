//! A 3-node cluster of real `kalamdb-server` processes on 127.0.0.1, each with its own data
//! folder, HTTP port and QUIC port, plus helpers to crash, isolate and compare them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::Server;

pub const NODES: usize = 3;
/// A random 32-byte cluster secret (hex), as `openssl rand -hex 32` makes them.
pub const SECRET: &str = "3e8b1f9a07c4d26e5a1b8c93f0d47e2a6c5b19f8e03d7a42b6c1e9f5082d4a7b";
/// Bound on waiting for replicas to agree.
pub const CONVERGE_WAIT: Duration = Duration::from_secs(60);

/// A UDP port for a node's Raft transport (see `ports`).
pub fn free_udp_port() -> u16 {
    super::ports::pick(|p| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok())
}

pub struct Cluster {
    pub dir: PathBuf,
    pub http: Vec<u16>,
    pub raft: Vec<u16>,
    nodes: Vec<Server>,
    env: Vec<(String, String)>,
}

/// The `[cluster]` section every member shares.
pub fn cluster_toml(http: &[u16], raft: &[u16], secret: &str) -> String {
    let mut t = format!(
        "[cluster]\ncluster_id = \"test-cluster\"\njwt_secret = \"{secret}\"\nuser_shards = 4\nshared_shards = 1\n"
    );
    for i in 0..http.len() {
        t.push_str(&format!(
            "\n[[cluster.members]]\nnode_id = {}\nraft_addr = \"127.0.0.1:{}\"\nhttp_addr = \"127.0.0.1:{}\"\n",
            i + 1,
            raft[i],
            http[i]
        ));
    }
    t
}

impl Cluster {
    /// Start 3 nodes and wait until each is healthy (every group has a leader).
    pub async fn start(dir: &Path, env: &[(&str, &str)]) -> Cluster {
        let mut c = Cluster::configure(dir, env);
        c.start_configured().await;
        c
    }

    /// Write the 3 nodes' configs (fresh ports) without starting them: for steps that run on a
    /// node before its first start (restore).
    pub fn configure(dir: &Path, env: &[(&str, &str)]) -> Cluster {
        let http: Vec<u16> = (0..NODES).map(|_| super::free_port()).collect();
        let raft: Vec<u16> = (0..NODES).map(|_| free_udp_port()).collect();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let c = Cluster { dir: dir.to_path_buf(), http, raft, nodes: Vec::new(), env };
        std::fs::create_dir_all(dir).expect("create cluster dir");
        for i in 1..=NODES {
            c.write_config(i, SECRET);
        }
        c
    }

    /// Start every configured node and wait until each is healthy.
    pub async fn start_configured(&mut self) {
        assert!(self.nodes.is_empty(), "already started");
        for i in 1..=NODES {
            let s = self.spawn(i);
            self.nodes.push(s);
        }
        for s in &self.nodes {
            s.wait_healthy().await;
        }
    }

    pub fn config_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("server{i}.toml"))
    }

    pub fn data_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{i}"))
    }

    fn write_config(&self, i: usize, secret: &str) {
        let text = format!(
            "[server]\nhost = \"127.0.0.1\"\nport = {}\nnode_id = {i}\n\n[storage]\ndata_path = \"{}\"\n\n[debug]\nfault_injection = true\n\n{}",
            self.http[i - 1],
            self.data_path(i).display(),
            cluster_toml(&self.http, &self.raft, secret)
        );
        std::fs::write(self.config_path(i), text).expect("write config");
    }

    /// Start one more node (fresh ports and data) with `cluster.join = true`: its config names
    /// every node so far and itself; the running nodes' configs stay as they are. Returns its
    /// number once it answers its healthcheck (it may still be catching up).
    pub async fn add_node(&mut self, secret: &str) -> usize {
        let i = self.add_node_with(secret, "");
        self.nodes[i - 1].wait_healthy().await;
        i
    }

    /// [`Cluster::add_node`] with `storage` added to the node's `[storage]` section, without
    /// waiting for the node (a node no group takes never becomes healthy).
    pub fn add_node_with(&mut self, secret: &str, storage: &str) -> usize {
        self.http.push(super::free_port());
        self.raft.push(free_udp_port());
        let i = self.http.len();
        let text = format!(
            "[server]\nhost = \"127.0.0.1\"\nport = {}\nnode_id = {i}\n\n[storage]\ndata_path = \"{}\"\n{storage}\n[debug]\nfault_injection = true\n\n{}",
            self.http[i - 1],
            self.data_path(i).display(),
            cluster_toml(&self.http, &self.raft, secret).replacen("[cluster]\n", "[cluster]\njoin = true\n", 1)
        );
        std::fs::write(self.config_path(i), text).expect("write config");
        let s = self.spawn(i);
        self.nodes.push(s);
        i
    }

    fn spawn(&self, i: usize) -> Server {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Server::spawn(Some(&self.config_path(i)), &self.data_path(i), self.http[i - 1], &env)
    }

    /// Node `i` (1-based).
    pub fn node(&self, i: usize) -> &Server {
        &self.nodes[i - 1]
    }

    pub fn live(&self) -> Vec<usize> {
        (1..=self.nodes.len()).filter(|i| self.nodes[i - 1].is_running()).collect()
    }

    pub fn kill9(&mut self, i: usize) {
        self.nodes[i - 1].kill9();
    }

    /// Start node `i` again on its old ports and data; waits until it is healthy.
    pub async fn restart(&mut self, i: usize) {
        let s = self.spawn(i);
        s.wait_healthy().await;
        self.nodes[i - 1] = s;
    }

    /// Start node `i` with extra environment (e.g. crash points), without waiting for it.
    pub fn spawn_with(&mut self, i: usize, extra: &[(&str, &str)]) {
        let mut env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.extend_from_slice(extra);
        self.nodes[i - 1] = Server::spawn(Some(&self.config_path(i)), &self.data_path(i), self.http[i - 1], &env);
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Server {
        &mut self.nodes[i - 1]
    }

    /// Start every stopped node, in `order`, without waiting in between (a lone node cannot
    /// become healthy), then wait until all are healthy.
    pub async fn restart_all(&mut self, order: &[usize]) {
        for &i in order {
            let s = self.spawn(i);
            self.nodes[i - 1] = s;
        }
        for &i in order {
            self.nodes[i - 1].wait_healthy().await;
        }
        // Healthy is "serving HTTP", not "every group has a leader again": a quorum read
        // right after the whole cluster restarted could still meet an election (a 503).
        for &i in order {
            self.wait_leaders(i, None, super::STARTUP_WAIT).await;
        }
    }

    pub async fn isolate(&self, i: usize, isolated: bool) {
        let body = serde_json::json!({ "isolated": isolated }).to_string().into_bytes();
        let (status, resp) = self
            .node(i)
            .request("POST", "/v1/api/debug/isolate", Some("application/json"), body)
            .await
            .expect("isolate request");
        assert_eq!(status, 200, "{resp}");
    }

    /// Group name -> leader id, as node `i` itself knows it (None: no leader).
    pub async fn leaders(&self, i: usize) -> BTreeMap<String, Option<u64>> {
        let (_, h) = self.node(i).get("/v1/api/cluster/health?local=true").await.expect("cluster health");
        h["groups"]
            .as_array()
            .expect("groups array")
            .iter()
            .map(|g| (g["group"].as_str().unwrap_or_default().to_string(), g["leader"].as_u64()))
            .collect()
    }

    /// Wait until node `i` sees a leader for every group, none of them in `not`.
    pub async fn wait_leaders(&self, i: usize, not: Option<u64>, within: Duration) -> BTreeMap<String, u64> {
        let deadline = Instant::now() + within;
        loop {
            let l = self.leaders(i).await;
            if l.values().all(|v| v.is_some() && *v != not) && !l.is_empty() {
                return l.into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect();
            }
            assert!(Instant::now() < deadline, "groups without a (new) leader after {within:?}: {l:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait until every live node reports, per group, the same applied index and the same
    /// projection digest. Returns the digests.
    pub async fn assert_converged(&self) -> BTreeMap<String, String> {
        let deadline = Instant::now() + CONVERGE_WAIT;
        loop {
            let mut per_node = Vec::new();
            for i in self.live() {
                let (status, d) = self.node(i).get("/v1/api/cluster/digest").await.expect("digest");
                assert_eq!(status, 200, "{d}");
                let m: BTreeMap<String, (u64, bool, String)> = d["groups"]
                    .as_array()
                    .expect("groups")
                    .iter()
                    .map(|g| {
                        (
                            g["group"].as_str().unwrap_or_default().to_string(),
                            (
                                g["applied_index"].as_u64().unwrap_or_default(),
                                g["stable"].as_bool().unwrap_or(false),
                                g["digest"].as_str().unwrap_or_default().to_string(),
                            ),
                        )
                    })
                    .collect();
                per_node.push(m);
            }
            let first = &per_node[0];
            let agree = !first.is_empty()
                && per_node.iter().all(|m| m == first)
                && first.values().all(|(_, stable, _)| *stable);
            if agree {
                return first.iter().map(|(g, (_, _, d))| (g.clone(), d.clone())).collect();
            }
            assert!(Instant::now() < deadline, "replicas did not converge within {CONVERGE_WAIT:?}:\n{per_node:#?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The node that leads the most groups.
    pub async fn busiest_leader(&self, asking: usize) -> u64 {
        let leaders = self.wait_leaders(asking, None, Duration::from_secs(10)).await;
        let mut count: BTreeMap<u64, usize> = BTreeMap::new();
        for l in leaders.values() {
            *count.entry(*l).or_default() += 1;
        }
        count.into_iter().max_by_key(|(_, c)| *c).map(|(n, _)| n).unwrap_or(1)
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.data_path(i).join("server.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    /// A failed test shows the end of every node's log: the only way to see what the
    /// processes did once the temporary folder is gone.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 1..=self.http.len() {
                let log = self.log(i);
                let tail: Vec<&str> = log.lines().rev().take(LOG_TAIL_LINES).collect();
                eprintln!("----- node {i} log (last {LOG_TAIL_LINES} lines) -----");
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// Lines of each node's log printed when a cluster test fails.
pub const LOG_TAIL_LINES: usize = 60;
