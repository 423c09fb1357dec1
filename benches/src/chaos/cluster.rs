//! The cluster under test and the faults done to it: three local `kalamdb-server` processes
//! started here, or the Docker cluster of `scripts/cluster.sh --docker`. Only loopback and
//! our own containers are ever touched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::api::{Api, Reply};
use super::nemesis::Fault;

pub const NODES: usize = 3;
/// The local chaos cluster's secret: 32 random bytes in hex (a fixed test value, loopback only).
const CHAOS_CLUSTER_SECRET: &str = "d2a6f81c04e97b35a8c1e60f2b9d47a3c58e1f06b7d2a94e3c0f85b16a7d9e42";
/// Bound on waiting for a node to answer its healthcheck.
pub const HEALTHY_WAIT: Duration = Duration::from_secs(60);
/// Bound on asking again for a removal refused because a remaining voter did not answer yet.
pub const REMOVE_REFUSED_WAIT: Duration = Duration::from_secs(15);
/// Bound on waiting for every node to report the same applied index and digest per group.
pub const CONVERGE_WAIT: Duration = Duration::from_secs(90);
/// How long a graceful stop (leadership handover, draining HTTP) may take.
pub const GRACEFUL_STOP_WAIT: Duration = Duration::from_secs(30);

/// Docker names from deploy/docker-compose.yml.
const DOCKER_NETWORK: &str = "cluster_kalamdb-cluster";

pub enum Cluster {
    Local(Local),
    Docker,
}

pub struct Local {
    dir: PathBuf,
    server_bin: PathBuf,
    http: Vec<u16>,
    raft: Vec<u16>,
    children: Vec<Option<Child>>,
}

fn free_port(udp: bool) -> Result<u16, String> {
    let port = if udp {
        std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr())
    } else {
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|s| s.local_addr())
    };
    port.map(|a| a.port()).map_err(|e| format!("no free port: {e}"))
}

/// Run a command to completion; its failure is an error with its stderr.
fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Local {
    /// Write the three configs: fault injection on (so nodes can be isolated), plus `extra`
    /// (TOML sections, e.g. `[raft]` snapshot thresholds).
    pub fn create(dir: &Path, server_bin: &Path, extra: &str) -> Result<Local, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut http = Vec::new();
        let mut raft = Vec::new();
        for _ in 0..NODES {
            http.push(free_port(false)?);
            raft.push(free_port(true)?);
        }
        let l = Local {
            dir: dir.to_path_buf(),
            server_bin: server_bin.to_path_buf(),
            http,
            raft,
            children: (0..NODES).map(|_| None).collect(),
        };
        for n in 1..=NODES {
            let mut members = String::new();
            for m in 1..=NODES {
                members.push_str(&format!(
                    "\n[[cluster.members]]\nnode_id = {m}\nraft_addr = \"127.0.0.1:{}\"\nhttp_addr = \"127.0.0.1:{}\"\n",
                    l.raft[m - 1],
                    l.http[m - 1]
                ));
            }
            let text = format!(
                "[server]\nhost = \"127.0.0.1\"\nport = {port}\nnode_id = {n}\n\n[storage]\ndata_path = \"{data}\"\n\n\
                 {extra}\n[debug]\nfault_injection = true\n\n\
                 [cluster]\ncluster_id = \"chaos\"\njwt_secret = \"{secret}\"\nuser_shards = 4\nshared_shards = 1\n{members}",
                port = l.http[n - 1],
                data = l.data(n).display(),
                secret = CHAOS_CLUSTER_SECRET,
            );
            std::fs::write(l.config(n), text).map_err(|e| e.to_string())?;
        }
        Ok(l)
    }

    fn config(&self, n: usize) -> PathBuf {
        self.dir.join(format!("server{n}.toml"))
    }

    fn data(&self, n: usize) -> PathBuf {
        self.dir.join(format!("node{n}"))
    }

    pub fn log_path(&self, n: usize) -> PathBuf {
        self.data(n).join("server.log")
    }

    pub fn start(&mut self, n: usize) -> Result<(), String> {
        self.start_with(n, &[])
    }

    /// Start node `n` with extra environment (e.g. `KALAMDB_CLUSTER_JOIN=true`).
    pub fn start_with(&mut self, n: usize, env: &[(&str, &str)]) -> Result<(), String> {
        std::fs::create_dir_all(self.data(n)).map_err(|e| e.to_string())?;
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(n)).map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.server_bin)
            .arg("--config")
            .arg(self.config(n))
            .env("RUST_LOG", std::env::var("CHAOS_RUST_LOG").unwrap_or_else(|_| "info".into()))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("{}: {e}", self.server_bin.display()))?;
        self.children[n - 1] = Some(child);
        Ok(())
    }

    fn pid(&self, n: usize) -> Result<String, String> {
        self.children[n - 1].as_ref().map(|c| c.id().to_string()).ok_or_else(|| format!("node {n} is not running"))
    }

    /// SIGTERM, then wait (bounded) for the graceful exit; SIGKILL if it does not come.
    pub async fn terminate(&mut self, n: usize) -> Result<(), String> {
        run("kill", &["-TERM", &self.pid(n)?])?;
        let deadline = Instant::now() + GRACEFUL_STOP_WAIT;
        while Instant::now() < deadline {
            if let Some(c) = self.children[n - 1].as_mut()
                && c.try_wait().map_err(|e| e.to_string())?.is_some()
            {
                self.children[n - 1] = None;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill9(n);
        Err(format!("node {n} did not stop within {GRACEFUL_STOP_WAIT:?} of SIGTERM"))
    }

    pub fn kill9(&mut self, n: usize) {
        if let Some(mut c) = self.children[n - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The resident set of node `n` (`VmRSS`), in bytes.
    pub fn rss_bytes(&self, n: usize) -> Option<u64> {
        self.status_kb(n, "VmRSS:").map(|kb| kb * 1024)
    }

    /// The peak resident set of node `n` (`VmHWM`) since it started or since
    /// [`Local::reset_peak_rss`], in bytes.
    pub fn peak_rss_bytes(&self, n: usize) -> Option<u64> {
        self.status_kb(n, "VmHWM:").map(|kb| kb * 1024)
    }

    /// Start measuring node `n`'s peak resident set afresh (Linux: `5` into `clear_refs`).
    pub fn reset_peak_rss(&self, n: usize) -> Result<(), String> {
        let pid = self.pid(n)?;
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").map_err(|e| format!("reset peak RSS of node {n}: {e}"))
    }

    fn status_kb(&self, n: usize, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid(n).ok()?)).ok()?;
        status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
    }

    pub fn tail_of_log(&self, n: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(n)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // SIGKILL ends a paused (SIGSTOPped) process too.
        for n in 1..=NODES {
            self.kill9(n);
        }
    }
}

impl Cluster {
    pub fn urls(&self) -> Vec<String> {
        match self {
            Cluster::Local(l) => l.http.iter().map(|p| format!("http://127.0.0.1:{p}")).collect(),
            Cluster::Docker => (1..=NODES).map(|n| format!("http://127.0.0.1:{}", 8080 + n)).collect(),
        }
    }

    fn container(n: usize) -> String {
        format!("kalamdb-node{n}")
    }

    /// Start the fault on node `n`.
    pub async fn inject(&mut self, api: &Api, fault: Fault, n: usize) -> Result<(), String> {
        match (self, fault) {
            (Cluster::Local(l), Fault::Kill) => {
                l.kill9(n);
                Ok(())
            }
            (Cluster::Local(l), Fault::Pause) => run("kill", &["-STOP", &l.pid(n)?]),
            (c @ Cluster::Local(_), Fault::Partition) => c.isolate(api, n, true).await,
            (Cluster::Local(l), Fault::Stop) => l.terminate(n).await,
            (c, Fault::Transfer) => c.transfer_to(api, n).await,
            (c @ Cluster::Local(_), Fault::Replace) => {
                // As an operator replaces a machine: with the others up. A removal is refused
                // (409) while the remaining voters cannot all be reached, e.g. one just
                // restarted by the previous fault and still connecting: that is the server
                // being right, so ask again for a bounded time.
                c.wait_healthy(api).await?;
                let deadline = Instant::now() + REMOVE_REFUSED_WAIT;
                loop {
                    match c.sql_elsewhere(api, n, &format!("CLUSTER REMOVE NODE {n}")).await {
                        Err(e) if e.contains("CLUSTER_OPERATION_REFUSED") && Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        other => break other?,
                    }
                }
                let Cluster::Local(l) = &mut *c else { unreachable!("matched Local") };
                l.terminate(n).await?;
                std::fs::remove_dir_all(l.data(n)).map_err(|e| format!("delete node {n}'s data: {e}"))
            }
            (Cluster::Docker, Fault::Replace) => run("docker", &["stop", "-t", "30", &Self::container(n)]),
            (Cluster::Docker, Fault::Stop) => run("docker", &["stop", "-t", "30", &Self::container(n)]),
            (Cluster::Docker, Fault::Kill) => run("docker", &["kill", &Self::container(n)]),
            (Cluster::Docker, Fault::Pause) => run("docker", &["pause", &Self::container(n)]),
            (Cluster::Docker, Fault::Partition) => {
                run("docker", &["network", "disconnect", DOCKER_NETWORK, &Self::container(n)])
            }
        }
    }

    /// End the fault on node `n`.
    pub async fn repair(&mut self, api: &Api, fault: Fault, n: usize) -> Result<(), String> {
        match (self, fault) {
            (Cluster::Local(l), Fault::Kill | Fault::Stop) => l.start(n),
            (_, Fault::Transfer) => Ok(()),
            // Empty, it joins by itself (`cluster.join`): the groups' leaders add it back.
            (c @ Cluster::Local(_), Fault::Replace) => {
                let Cluster::Local(l) = &mut *c else { unreachable!("matched Local") };
                l.start_with(n, &[("KALAMDB_CLUSTER_JOIN", "true")])?;
                c.wait_voter(api, n).await
            }
            (Cluster::Docker, Fault::Replace) => run("docker", &["start", &Self::container(n)]),
            (Cluster::Docker, Fault::Stop) => run("docker", &["start", &Self::container(n)]),
            (Cluster::Local(l), Fault::Pause) => run("kill", &["-CONT", &l.pid(n)?]),
            (c @ Cluster::Local(_), Fault::Partition) => c.isolate(api, n, false).await,
            (Cluster::Docker, Fault::Kill) => run("docker", &["start", &Self::container(n)]),
            (Cluster::Docker, Fault::Pause) => run("docker", &["unpause", &Self::container(n)]),
            (Cluster::Docker, Fault::Partition) => {
                run("docker", &["network", "connect", DOCKER_NETWORK, &Self::container(n)])
            }
        }
    }

    /// Every group's leadership to node `n`, asked through it. A group that could not move
    /// (its leader was just elected, a move already running) is not a failure of the run.
    async fn transfer_to(&self, api: &Api, n: usize) -> Result<(), String> {
        // Asked through node n, which the previous fault may have just restarted.
        self.wait_healthy(api).await?;
        let url = &self.urls()[n - 1];
        let body = json!({ "sql": format!("CLUSTER TRANSFER-LEADER {n}") }).to_string();
        match api.request("POST", url, "/v1/api/sql", Some(body)).await {
            Reply::Ok(_) => Ok(()),
            other => Err(format!("CLUSTER TRANSFER-LEADER {n}: {other:?}")),
        }
    }

    /// Run `sql` through a node other than `n` (the next one), which must answer 200.
    async fn sql_elsewhere(&self, api: &Api, n: usize, sql: &str) -> Result<(), String> {
        let via = n % NODES + 1;
        let url = &self.urls()[via - 1];
        let body = json!({ "sql": sql }).to_string();
        match api.request("POST", url, "/v1/api/sql", Some(body)).await {
            // A CLUSTER statement answers a row per group, with an error column last.
            Reply::Ok(v) => match v["results"][0]["rows"].as_array() {
                Some(rows)
                    if rows.iter().any(|r| r.as_array().and_then(|c| c.last()).is_some_and(|e| !e.is_null())) =>
                {
                    Err(format!("{sql} through node {via}: some groups failed: {v}"))
                }
                _ => Ok(()),
            },
            other => Err(format!("{sql} through node {via}: {other:?}")),
        }
    }

    /// Wait (bounded) until node `n` is a voter of every group, as the next node sees it.
    pub async fn wait_voter(&self, api: &Api, n: usize) -> Result<(), String> {
        let via = n % NODES + 1;
        let url = &self.urls()[via - 1];
        let deadline = Instant::now() + HEALTHY_WAIT;
        loop {
            if let Reply::Ok(h) = api.request("GET", url, "/v1/api/cluster/health?local=true", None).await {
                let groups = h["groups"].as_array().cloned().unwrap_or_default();
                let voter = |g: &serde_json::Value| {
                    g["members"].as_array().is_some_and(|ms| {
                        ms.iter().any(|m| m["node_id"].as_u64() == Some(n as u64) && m["membership"] == "voter")
                    })
                };
                if !groups.is_empty() && groups.iter().all(voter) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("node {n} is not a voter of every group after {HEALTHY_WAIT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn isolate(&self, api: &Api, n: usize, isolated: bool) -> Result<(), String> {
        let url = &self.urls()[n - 1];
        let body = json!({ "isolated": isolated }).to_string();
        match api.request("POST", url, "/v1/api/debug/isolate", Some(body)).await {
            Reply::Ok(_) => Ok(()),
            other => Err(format!("isolate node {n} = {isolated}: {other:?}")),
        }
    }

    /// Wait until every node answers its healthcheck with 200.
    pub async fn wait_healthy(&self, api: &Api) -> Result<(), String> {
        let deadline = Instant::now() + HEALTHY_WAIT;
        for url in self.urls() {
            loop {
                if let Reply::Ok(_) = api.request("GET", &url, "/v1/api/healthcheck", None).await {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("{url} not healthy within {HEALTHY_WAIT:?}"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// Wait until all nodes report, per group, the same applied index and projection digest,
    /// each marked stable. Returns the number of groups compared.
    pub async fn wait_converged(&self, api: &Api) -> Result<usize, String> {
        let deadline = Instant::now() + CONVERGE_WAIT;
        let mut last = String::new();
        loop {
            let mut views = Vec::new();
            for url in self.urls() {
                match api.request("GET", &url, "/v1/api/cluster/digest", None).await {
                    Reply::Ok(v) => {
                        let groups: Vec<(String, u64, bool, String)> = v["groups"]
                            .as_array()
                            .map(|a| a.as_slice())
                            .unwrap_or_default()
                            .iter()
                            .map(|g| {
                                (
                                    g["group"].as_str().unwrap_or_default().to_string(),
                                    g["applied_index"].as_u64().unwrap_or_default(),
                                    g["stable"].as_bool().unwrap_or(false),
                                    g["digest"].as_str().unwrap_or_default().to_string(),
                                )
                            })
                            .collect();
                        views.push(groups);
                    }
                    other => last = format!("{url}: {other:?}"),
                }
            }
            if views.len() == NODES
                && !views[0].is_empty()
                && views.iter().all(|v| v == &views[0])
                && views[0].iter().all(|g| g.2)
            {
                return Ok(views[0].len());
            }
            if views.len() == NODES {
                last = format!("{views:?}");
            }
            if Instant::now() > deadline {
                return Err(format!("digests did not converge within {CONVERGE_WAIT:?}: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
