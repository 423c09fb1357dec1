//! Test harness: runs the real `kalamdb-server` binary on 127.0.0.1 with its own data folder,
//! and talks to it over HTTP.

#![allow(dead_code)]

pub mod browser;
pub mod cluster;
pub mod followers;
pub mod ports;
pub mod s3;
pub mod ws;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long a test waits for a server to become healthy.
pub const STARTUP_WAIT: Duration = Duration::from_secs(60);
/// HTTP Basic for `root:` (empty password): root may use it from loopback while no root
/// password is configured. Every helper request carries it unless told otherwise.
pub const ROOT_BASIC: &str = "Basic cm9vdDo=";

pub struct Server {
    child: Option<Child>,
    pub port: u16,
    pub data: PathBuf,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Length of `server.log` when this process started: what it logged comes after.
    log_start: usize,
}

/// A TCP port for a test server (see `ports`).
pub fn free_port() -> u16 {
    ports::pick(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
}

impl Server {
    /// Start a server on a fresh port with data under `data` and wait until it is healthy.
    pub async fn start(data: &Path) -> Server {
        Server::start_on(data, free_port()).await
    }

    pub async fn start_on(data: &Path, port: u16) -> Server {
        Server::start_with(data, port, &[]).await
    }

    /// Start with extra environment (config overrides such as `KALAMDB_LIMITS_...`).
    pub async fn start_with(data: &Path, port: u16, env: &[(&str, &str)]) -> Server {
        let server = Server::spawn(None, data, port, env);
        server.wait_healthy().await;
        server
    }

    /// Start the binary without waiting for it: with `config`, or with defaults plus `env`.
    pub fn spawn(config: Option<&Path>, data: &Path, port: u16, env: &[(&str, &str)]) -> Server {
        std::fs::create_dir_all(data).expect("create data dir");
        let log_start = std::fs::metadata(data.join("server.log")).map_or(0, |m| m.len() as usize);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("server.log"))
            .expect("open server log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kalamdb-server"));
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let child = cmd
            .env("KALAMDB_SERVER_PORT", port.to_string())
            .env("KALAMDB_STORAGE_DATA_PATH", data)
            .env("KALAMDB_SHARDING_USER_SHARDS", "4")
            .env("RUST_LOG", "info,kalamdb_raft=debug")
            // Tests that place leaders (kill the busiest one, partition a leader) need them to
            // stay put; the leadership tests turn balancing back on.
            .env("KALAMDB_RAFT_LEADER_BALANCE_INTERVAL_MS", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::from(log.try_clone().expect("clone log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn kalamdb-server");
        let client = Client::builder(TokioExecutor::new()).build_http();
        Server { child: Some(child), port, data: data.to_path_buf(), client, log_start }
    }

    /// The server process's id (for /proc readings: RSS, CPU time).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("the server is running")
    }

    /// POST a SQL body as root; also returns the `Retry-After` header.
    pub async fn sql_with_headers(&self, body: serde_json::Value) -> (u16, serde_json::Value, Option<String>) {
        let req = hyper::Request::builder()
            .method("POST")
            .uri(format!("http://127.0.0.1:{}/v1/api/sql", self.port))
            .header("content-type", "application/json")
            .header("authorization", ROOT_BASIC)
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        let resp = self.client.request(req).await.expect("http request");
        let status = resp.status().as_u16();
        let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let mut json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        decode_sql_answer(&mut json);
        (status, json, retry_after)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Wait until this process listens on its port and answers its healthcheck. The log
    /// line is checked too: another process on the port would answer the healthcheck while
    /// this one failed to bind; a process that exited fails the wait at once.
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + STARTUP_WAIT;
        while Instant::now() < deadline {
            if self.exited() {
                panic!("server on port {} exited while starting; log:\n{}", self.port, self.own_log());
            }
            if self.listening()
                && let Ok((200, _)) = self.get("/v1/api/healthcheck").await
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("server on port {} did not become healthy; log:\n{}", self.port, self.own_log());
    }

    /// What this process wrote to `server.log`.
    fn own_log(&self) -> String {
        let log = std::fs::read(self.data.join("server.log")).unwrap_or_default();
        String::from_utf8_lossy(log.get(self.log_start..).unwrap_or_default()).into_owned()
    }

    /// Whether this process logged that it listens on its port.
    fn listening(&self) -> bool {
        let port = format!(":{} ", self.port);
        self.own_log().lines().any(|l| l.contains("KalamDB listening") && l.contains(&port))
    }

    /// Whether the process ended (a zombie not yet reaped counts).
    fn exited(&self) -> bool {
        let Some(child) = &self.child else { return true };
        match std::fs::read_to_string(format!("/proc/{}/stat", child.id())) {
            Ok(stat) => stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()) == Some("Z"),
            Err(_) => true,
        }
    }

    /// Wait until the process ends by itself (a crash point), at most `within`; reaps it.
    pub async fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && c.try_wait().expect("poll server").is_some()
            {
                self.child = None;
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// SIGTERM, as an orchestrator stops a container, then wait (bounded) for the graceful
    /// exit. True when the process ended by itself in time.
    pub async fn terminate(&mut self, within: Duration) -> bool {
        let pid = self.pid();
        let sent = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        self.wait_exit(within).await
    }

    /// SIGKILL: no shutdown code runs, exactly like a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9 server");
            c.wait().expect("reap server");
        }
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(u16, serde_json::Value), String> {
        self.request_as(Some(ROOT_BASIC), method, path, content_type, body).await
    }

    /// A request with the given `Authorization` header (or none). SQL answers come back with
    /// their cells decoded as a client shows them ([`decode_sql_answer`]).
    pub async fn request_as(
        &self,
        authorization: Option<&str>,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(u16, serde_json::Value), String> {
        let (status, mut json) = self.request_raw_as(authorization, method, path, content_type, body).await?;
        if path.starts_with("/v1/api/sql") {
            decode_sql_answer(&mut json);
        }
        Ok((status, json))
    }

    /// [`Server::request_as`] with the answer exactly as it came over the wire.
    pub async fn request_raw_as(
        &self,
        authorization: Option<&str>,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(u16, serde_json::Value), String> {
        let mut req = hyper::Request::builder().method(method).uri(format!("http://127.0.0.1:{}{path}", self.port));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        let req = req.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok((status, json))
    }

    /// Send raw bytes on a fresh connection and return the response's status code. For requests
    /// a well-behaved client cannot make (declared bodies larger than what is sent).
    pub async fn raw_status(&self, request: &[u8]) -> u16 {
        let head = self.raw_head_bytes(request).await;
        head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status line")
    }

    /// Send raw bytes on a fresh connection and return the response head (status line and
    /// headers), lower-cased: for requests with headers the helpers above do not set.
    pub async fn raw_head(&self, request: &str) -> String {
        self.raw_head_bytes(request.as_bytes()).await
    }

    async fn raw_head_bytes(&self, request: &[u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.expect("connect");
        // The server may answer (and close) before it has read everything: a failed write is
        // expected then, the response is what counts.
        let _ = stream.write_all(request).await;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let n = stream.read(&mut chunk).await.expect("read response");
            assert!(n > 0, "connection closed before a response");
            buf.extend_from_slice(&chunk[..n]);
        };
        String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase()
    }

    pub async fn get(&self, path: &str) -> Result<(u16, serde_json::Value), String> {
        self.request("GET", path, None, Vec::new()).await
    }

    /// POST a SQL request body; returns (HTTP status, JSON response).
    pub async fn sql_body(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.request("POST", "/v1/api/sql", Some("application/json"), body.to_string().into_bytes())
            .await
            .expect("http request")
    }

    pub async fn sql(&self, sql: &str) -> (u16, serde_json::Value) {
        self.sql_body(serde_json::json!({ "sql": sql })).await
    }

    /// SQL with the given `Authorization` header (`None`: no credentials at all).
    pub async fn sql_as(&self, authorization: Option<&str>, sql: &str) -> (u16, serde_json::Value) {
        let body = serde_json::json!({ "sql": sql }).to_string().into_bytes();
        self.request_as(authorization, "POST", "/v1/api/sql", Some("application/json"), body)
            .await
            .expect("http request")
    }

    /// Log in; returns `Authorization: Bearer <token>` for the user.
    pub async fn login(&self, user: &str, password: &str) -> String {
        let body = serde_json::json!({ "user": user, "password": password }).to_string().into_bytes();
        let (st, b) =
            self.request_as(None, "POST", "/v1/api/auth/login", Some("application/json"), body).await.expect("login");
        assert_eq!(st, 200, "login of {user} failed: {b}");
        format!("Bearer {}", b["access_token"].as_str().expect("access_token"))
    }

    /// Run SQL that must succeed; returns the first result.
    pub async fn sql_ok(&self, sql: &str) -> serde_json::Value {
        let (status, body) = self.sql(sql).await;
        assert_eq!(status, 200, "{sql} failed: {body}");
        assert_eq!(body["status"], "success", "{body}");
        body["results"][0].clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One SQL request to the server on `port`, from any task (no `Server` borrow needed).
pub async fn post_sql(port: u16, sql: &str) -> Result<(u16, serde_json::Value), String> {
    post_sql_as(port, Some(ROOT_BASIC), &serde_json::json!({ "sql": sql })).await
}

/// One SQL request body with the given `Authorization` header, from any task.
pub async fn post_sql_as(
    port: u16,
    authorization: Option<&str>,
    body: &serde_json::Value,
) -> Result<(u16, serde_json::Value), String> {
    post_path(port, "/v1/api/sql", authorization, body).await
}

/// POST a JSON body to `path` with the given `Authorization` header, from any task.
pub async fn post_path(
    port: u16,
    path: &str,
    authorization: Option<&str>,
    body: &serde_json::Value,
) -> Result<(u16, serde_json::Value), String> {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = hyper::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/json");
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let mut json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    if path.starts_with("/v1/api/sql") {
        decode_sql_answer(&mut json);
    }
    Ok((status, json))
}

/// An integer cell in either encoding: a BIGINT string or a JSON number.
pub fn int(v: &serde_json::Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// Decode a SQL answer's cells by their columns' `data_type`, as KalamDB's clients do with its
/// cell encoding (BIGINT strings, TIMESTAMP microseconds, DATE days, BYTES arrays): tests then
/// compare readable values. The wire encoding itself is asserted in `http_api.rs` and `compat.rs`
/// on raw answers.
pub fn decode_sql_answer(body: &mut serde_json::Value) {
    let Some(results) = body.get_mut("results").and_then(|r| r.as_array_mut()) else { return };
    for result in results {
        let types: Vec<String> = result["schema"]
            .as_array()
            .map(|cols| cols.iter().map(|c| c["data_type"].as_str().unwrap_or_default().to_string()).collect())
            .unwrap_or_default();
        let Some(rows) = result.get_mut("rows").and_then(|r| r.as_array_mut()) else { continue };
        for row in rows {
            let Some(cells) = row.as_array_mut() else { continue };
            for (cell, ty) in cells.iter_mut().zip(&types) {
                *cell = kalamdb_query::values::display_cell(ty, cell);
            }
        }
    }
}

/// A streaming response of `GET /v1/api/tail`, read line by line (NDJSON) or event by event
/// (Server-Sent Events).
pub struct TailStream {
    pub status: u16,
    pub content_type: String,
    body: hyper::body::Incoming,
    buf: Vec<u8>,
    ended: bool,
}

impl TailStream {
    /// Open a stream. `recv_buffer` shrinks the socket's receive buffer (slow-client tests).
    pub async fn open(
        port: u16,
        path: &str,
        authorization: Option<&str>,
        headers: &[(&str, &str)],
        recv_buffer: Option<usize>,
    ) -> TailStream {
        TailStream::try_open(port, path, authorization, headers, recv_buffer).await.expect("tail request")
    }

    /// [`TailStream::open`] that reports a refused connection instead of panicking.
    pub async fn try_open(
        port: u16,
        path: &str,
        authorization: Option<&str>,
        headers: &[(&str, &str)],
        recv_buffer: Option<usize>,
    ) -> Result<TailStream, String> {
        let mut connector = HttpConnector::new();
        connector.set_recv_buffer_size(recv_buffer);
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
        let mut req = hyper::Request::builder().method("GET").uri(format!("http://127.0.0.1:{port}{path}"));
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp =
            client.request(req.body(Full::new(Bytes::new())).expect("request")).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let content_type =
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        Ok(TailStream { status, content_type, body: resp.into_body(), buf: Vec::new(), ended: false })
    }

    /// Has the server ended the stream (or the connection broken)?
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The whole body (for error responses).
    pub async fn json_body(mut self) -> serde_json::Value {
        while self.fill(Duration::from_secs(10)).await {}
        serde_json::from_slice(&self.buf).unwrap_or(serde_json::Value::Null)
    }

    /// Read more bytes; false at the end of the stream or after `within`.
    async fn fill(&mut self, within: Duration) -> bool {
        if self.ended {
            return false;
        }
        match tokio::time::timeout(within, self.body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    self.buf.extend_from_slice(&data);
                }
                true
            }
            Ok(_) => {
                self.ended = true;
                false
            }
            Err(_) => false,
        }
    }

    /// The next NDJSON object, waiting at most `within`; `None` at the end or on timeout.
    pub async fn next_json(&mut self, within: Duration) -> Option<serde_json::Value> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).expect("an NDJSON line"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.fill(left).await {
                return None;
            }
        }
    }

    /// The next change-carrying NDJSON object (heartbeats skipped).
    pub async fn next_change(&mut self, within: Duration) -> Option<serde_json::Value> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.next_json(left).await?;
            if v["type"] != "heartbeat" {
                return Some(v);
            }
        }
    }

    /// The next Server-Sent Event block as its lines (comments included).
    pub async fn next_sse(&mut self, within: Duration) -> Option<Vec<String>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..i + 2).collect();
                let text = String::from_utf8(block).expect("utf-8 event");
                return Some(text.lines().filter(|l| !l.is_empty()).map(str::to_string).collect());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.fill(left).await {
                return None;
            }
        }
    }
}
