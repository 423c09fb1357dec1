//! Server configuration: TOML file (every key optional, unknown keys rejected by name) with
//! `KALAMDB_<SECTION>_<KEY>` environment overrides, e.g. `KALAMDB_SERVER_PORT=8081`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub sharding: ShardingConfig,
    pub limits: LimitsConfig,
    pub raft: RaftConfig,
    pub logging: LoggingConfig,
    /// Absent: a single-node database. Present: this node is one member of a Raft cluster.
    pub cluster: Option<ClusterConfig>,
    pub auth: AuthConfig,
    pub tail: TailConfig,
    pub websocket: WebSocketConfig,
    pub security: SecurityConfig,
    pub debug: DebugConfig,
}

/// `[security]`: what browsers on other origins may do.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    pub cors: CorsConfig,
}

/// `[security.cors]` (env: `KALAMDB_SECURITY_CORS_ALLOWED_ORIGINS=https://a.example.com,https://b.example.com`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins (`https://app.example.com`, `http://localhost:3000`) whose pages may call the
    /// API with credentials; `*` lets any origin call it without. Empty: same origin only, and
    /// a request from any other origin is refused (403 `CORS_ORIGIN_NOT_ALLOWED`). A list, or
    /// one string of comma-separated origins (what an environment variable gives).
    #[serde(deserialize_with = "one_or_many")]
    pub allowed_origins: Vec<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s.split(',').map(str::trim).filter(|o| !o.is_empty()).map(String::from).collect(),
        OneOrMany::Many(v) => v,
    })
}

/// Most entries in `security.cors.allowed_origins`.
pub const CORS_ORIGINS_MAX: usize = 64;
/// Most worker threads `server.worker_threads` and `limits.query_threads` may ask for: more
/// than any host has cores, fewer than would exhaust a process's threads.
pub const WORKER_THREADS_MAX: usize = 256;

/// Lowest `raft.snapshot_logs_since_last_bytes` and `raft.logs_to_keep_bytes`: a snapshot for
/// every few entries would cost more than the log it frees.
pub const LOG_BYTES_MIN: u64 = 1 << 20;

/// Lowest `tail.retention_bytes`: below one SST block per record nothing useful is kept.
pub const TAIL_RETENTION_BYTES_MIN: u64 = 1 << 20;

/// The log-tailing endpoint (`GET /v1/api/tail`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TailConfig {
    /// Interval of the heartbeat comments that carry the current position.
    pub heartbeat_ms: u64,
    /// Events queued for one subscriber (the bound on its memory).
    pub subscriber_buffer_events: usize,
    /// A subscriber whose queue stays full this long has fallen behind: it is disconnected
    /// with an `overflow` event naming where to resume.
    pub stall_ms: u64,
    /// Concurrent subscribers per node; more are refused with 503.
    pub subscribers_max: usize,
    /// Concurrent subscribers of one user on one node; more are refused with 429.
    pub subscribers_per_user_max: usize,
    /// Change records kept per group; older positions answer 410 Gone.
    pub retention_entries: u64,
    /// On-disk bytes of change records kept per group, whichever of the two bounds keeps
    /// fewer (a bulk load's entries carry a thousand rows each).
    pub retention_bytes: u64,
}

impl Default for TailConfig {
    fn default() -> TailConfig {
        TailConfig {
            heartbeat_ms: 5_000,
            subscriber_buffer_events: 4096,
            stall_ms: 10_000,
            subscribers_max: 1024,
            subscribers_per_user_max: 16,
            retention_entries: 100_000,
            retention_bytes: 64 << 20,
        }
    }
}

/// Live queries over WebSocket (`GET /v1/ws`, KalamDB's protocol). Subscriptions there count
/// against `tail.subscribers_max` and `tail.subscribers_per_user_max` with the tail's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// A connection that has not authenticated this long after the upgrade is closed (1008).
    pub auth_timeout_ms: u64,
    /// A connection with no frame from the client this long is closed (1000). The server
    /// pings every `ping_interval_ms`; a client's pong counts.
    pub client_timeout_ms: u64,
    pub ping_interval_ms: u64,
    /// Open WebSocket connections per node; more are refused with 503 before the upgrade.
    pub connections_max: usize,
    /// Subscriptions one connection may hold.
    pub subscriptions_per_connection_max: usize,
    /// Largest client message; larger ones are answered `MESSAGE_TOO_LARGE`.
    pub message_bytes_max: usize,
    /// Client messages per second on one connection; more are answered `RATE_LIMIT_EXCEEDED`.
    pub messages_per_sec_max: u32,
    /// Server messages queued for one connection. A subscription that cannot queue for
    /// `tail.stall_ms` has fallen behind: what is queued is delivered, then the connection is
    /// closed with 1013 and the client resumes from the last `_seq` it received.
    pub send_buffer_messages: usize,
    /// Largest `batch_size` (rows per initial data batch) a subscription may ask for.
    pub batch_rows_max: u64,
}

impl Default for WebSocketConfig {
    fn default() -> WebSocketConfig {
        WebSocketConfig {
            auth_timeout_ms: 3_000,
            client_timeout_ms: 30_000,
            ping_interval_ms: 10_000,
            connections_max: 4096,
            subscriptions_per_connection_max: 100,
            message_bytes_max: 1 << 20,
            messages_per_sec_max: 50,
            send_buffer_messages: 1024,
            batch_rows_max: 10_000,
        }
    }
}

/// Authentication: who may use the SQL API, and how tokens are made.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The built-in `root` user's password (also `KALAMDB_ROOT_PASSWORD`). Empty: root may
    /// log in with an empty password from loopback addresses only.
    pub root_password: String,
    /// Key material for access tokens (PASETO v4.local). Empty: `cluster.jwt_secret` in a
    /// cluster, else a random key kept in `<data_path>/auth/token.key`.
    pub jwt_secret: String,
    /// Lifetime of an access token.
    pub token_ttl_secs: u64,
    /// Lifetime of a refresh token (`POST /v1/api/auth/refresh` trades one, once, for a new
    /// access token and a new refresh token; logout revokes the session).
    pub refresh_token_ttl_secs: u64,
    /// Let requests without credentials act as user `anonymous` with `anonymous_role`. Off
    /// by default; the startup log warns when it is on.
    pub allow_anonymous: bool,
    pub anonymous_role: String,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            root_password: String::new(),
            jwt_secret: String::new(),
            token_ttl_secs: 3600,
            refresh_token_ttl_secs: 7 * 24 * 3600,
            allow_anonymous: false,
            anonymous_role: "dba".into(),
        }
    }
}

// Secrets never reach a log line, even through `{:?}`.
impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("root_password", &if self.root_password.is_empty() { "<unset>" } else { "<redacted>" })
            .field("jwt_secret", &if self.jwt_secret.is_empty() { "<unset>" } else { "<redacted>" })
            .field("token_ttl_secs", &self.token_ttl_secs)
            .field("refresh_token_ttl_secs", &self.refresh_token_ttl_secs)
            .field("allow_anonymous", &self.allow_anonymous)
            .field("anonymous_role", &self.anonymous_role)
            .finish()
    }
}

/// The cluster this node belongs to. Every member has the same `[cluster]` section; only
/// `[server] node_id` differs.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub cluster_id: String,
    /// Shared secret: peers prove they know it before any Raft traffic (and issue 6 signs
    /// tokens with it).
    pub jwt_secret: String,
    /// Address the QUIC endpoint binds; default `0.0.0.0:<port of this node's raft_addr>`.
    #[serde(default)]
    pub raft_bind: Option<String>,
    /// Override `[sharding]` for the cluster (the spec's cluster uses 4 and 1).
    #[serde(default)]
    pub user_shards: Option<u16>,
    #[serde(default)]
    pub shared_shards: Option<u16>,
    /// This node joins a running cluster: it initializes nothing and asks the groups' leaders
    /// (found through `members`, which must name at least one running member besides this
    /// node) to add it, as a learner until it holds the log, then as a voter.
    #[serde(default)]
    pub join: bool,
    pub members: Vec<MemberConfig>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("cluster_id", &self.cluster_id)
            .field("jwt_secret", &"<redacted>")
            .field("raft_bind", &self.raft_bind)
            .field("user_shards", &self.user_shards)
            .field("shared_shards", &self.shared_shards)
            .field("join", &self.join)
            .field("members", &self.members)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub node_id: u64,
    /// host:port of the member's QUIC (Raft) endpoint, as the other members reach it.
    pub raft_addr: String,
    /// host:port of the member's HTTP API.
    pub http_addr: String,
}

/// Switches for tests; all off by default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugConfig {
    /// Expose `POST /v1/api/debug/isolate`, which cuts this node off the cluster network.
    pub fault_injection: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP API binds to.
    pub host: String,
    pub port: u16,
    /// This node's id (1..=1023: it is part of generated snowflake ids).
    pub node_id: u64,
    /// Worker threads of the runtime serving HTTP, Raft and the log; 0 = one per CPU. Nodes
    /// sharing a host (a local or single-host Docker cluster) do better with cores / nodes:
    /// a write hops between tasks a few dozen times, and every hop that lands on another
    /// worker is a wake-up across cores (measured 14 us each on a 2-core VM, against 2.5 us on
    /// the same core), so spare workers add latency without adding throughput.
    pub worker_threads: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Root of everything the node stores: `rocksdb/`, `snapshots/`, `storage/`.
    pub data_path: PathBuf,
    /// Root of the Parquet files; `data_path/storage` when unset. May be one volume shared by
    /// every node (file names and contents are deterministic), or a bucket,
    /// `s3://bucket/prefix`, that every node may share too; files are then cached under
    /// `data_path/storage-cache`.
    pub storage_path: Option<PathBuf>,
    /// With an `s3://` storage path: the S3 endpoint (`http://127.0.0.1:9000` for a local
    /// server; `http://` is allowed only when given here). Unset: AWS_ENDPOINT, else AWS.
    pub s3_endpoint: Option<String>,
    /// Unset: AWS_REGION / AWS_DEFAULT_REGION, else `us-east-1`.
    pub s3_region: Option<String>,
    /// Unset: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and the other ways the AWS
    /// environment gives credentials).
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    /// Bytes of bucket files this node keeps cached on local disk. Files not uploaded yet are
    /// never evicted and may take it past this budget while the bucket is unreachable.
    pub cache_bytes_max: u64,
    /// Automatic flush of tables without a `FLUSH_POLICY` option: `rows:N`, `interval:S` or both.
    pub flush_policy: String,
    /// A table scope with at least this many Parquet files is compacted after an automatic flush.
    pub compact_files_min: u64,
    /// How long a retired Parquet file (replaced by a compaction, or of a dropped table) stays
    /// on disk after every member has applied past its retirement, so queries that were
    /// already reading it can finish.
    pub retired_file_grace_secs: u64,
    /// Bytes written through RocksDB's WAL at startup so that the node writes its log into a
    /// reused WAL file, whose syncs skip the file system's journal (see
    /// `kalamdb_log::LogDb::prefill_wal`). 0 starts on a new file.
    pub wal_prefill_bytes: u64,
    /// The highest apply format this node lets its groups move to (see
    /// `kalamdb_projections::format`); this build's highest when unset. A group moves to a
    /// format once every member allows it, and no build older than that format can run it
    /// afterwards: during a rolling upgrade, hold it at the old build's format until no node
    /// will go back.
    pub apply_format_max: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShardingConfig {
    pub user_shards: u16,
    pub shared_shards: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest accepted HTTP request body.
    pub request_body_bytes_max: usize,
    /// Open HTTP connections (streaming tails included); more are closed at once.
    pub http_connections_max: usize,
    /// Time a client has to send a request's headers; also how long an idle keep-alive
    /// connection stays open.
    pub http_header_read_timeout_ms: u64,
    /// Time a client has to send a request's body.
    pub http_body_read_timeout_ms: u64,
    /// How long a statement may wait for its log entry to commit and apply.
    pub write_timeout_ms: u64,
    /// Ops gathered into one log entry by group commit.
    pub batch_ops_max: usize,
    /// Log entries of one group in flight at once.
    pub proposals_in_flight_max: usize,
    /// Requests waiting for group commit per group (bounded queue).
    pub proposal_queue_len_max: usize,
    /// Memory pool shared by all running queries (default: a quarter of the machine's memory).
    pub query_memory_bytes_max: usize,
    /// Deadline of one statement; past it the statement is cancelled (`QUERY_TIMEOUT`).
    /// Storage statements (FLUSH, COMPACT, REBUILD) are not under it: each group's job has the
    /// storage-job timeout (`groups::STORAGE_JOB_TIMEOUT_MS`, at least `write_timeout_ms`).
    pub query_timeout_ms: u64,
    /// Rows one statement may return (`RESULT_TOO_LARGE` past it).
    pub result_rows_max: usize,
    /// Bytes (Arrow, in memory) one statement may return.
    pub result_bytes_max: usize,
    /// Statements in one request.
    pub statements_per_request_max: usize,
    /// Entries of one request's `params`.
    pub params_max: usize,
    /// Queries executing at once; more wait in a short queue, then get 503 `SERVER_BUSY`.
    pub queries_concurrent_max: usize,
    /// Queries waiting for a slot; more are refused at once.
    pub query_queue_len_max: usize,
    /// How long a query waits for a slot.
    pub query_queue_wait_ms: u64,
    /// Disk the spill files of running queries may use together (under `data_path/spill`).
    pub query_spill_bytes_max: u64,
    /// Worker threads of the query runtime (apart from the runtime serving Raft, the log and
    /// HTTP, and at a lower priority than it); 0 = one per CPU.
    pub query_threads: usize,
}

impl LimitsConfig {
    /// The query engine's limits; spill files go under `data_path/spill`.
    pub fn query_limits(&self, data_path: &Path) -> kalamdb_query::QueryLimits {
        kalamdb_query::QueryLimits {
            memory_bytes_max: self.query_memory_bytes_max,
            timeout_ms: self.query_timeout_ms,
            result_rows_max: self.result_rows_max,
            result_bytes_max: self.result_bytes_max,
            statements_per_request_max: self.statements_per_request_max,
            params_max: self.params_max,
            concurrent_max: self.queries_concurrent_max,
            queued_max: self.query_queue_len_max,
            queue_wait_ms: self.query_queue_wait_ms,
            spill_path: Some(data_path.join("spill")),
            spill_bytes_max: self.query_spill_bytes_max,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind the last snapshot (so slow followers can catch up).
    pub logs_to_keep: u64,
    /// Also build a snapshot once the entries since the last one take this many bytes on disk
    /// (a bulk load's entries carry a thousand rows each, so entries alone say little), and at
    /// least as many as the group's state (a snapshot copies it whole).
    pub snapshot_logs_since_last_bytes: u64,
    /// And keep at most this many bytes of log behind the last snapshot, whichever of this and
    /// `logs_to_keep` keeps less.
    pub logs_to_keep_bytes: u64,
    /// How often each node checks whether it leads more groups than its share and hands one
    /// to the voter leading fewest; 0 turns automatic balancing off.
    pub leader_balance_interval_ms: u64,
    /// Leadership transfers the balancer of one node starts per minute at most.
    pub leader_transfers_per_minute_max: u32,
    /// A leader serves linearizable reads (and every statement's catalog barrier) under a
    /// read lease, without a quorum round, for most of `election_timeout_max_ms` after a
    /// round (see ARCHITECTURE.md, "Read leases"). Off: every barrier runs a round.
    pub lease_reads: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// Default tracing filter; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig { host: "127.0.0.1".into(), port: 8080, node_id: 1, worker_threads: 0 }
    }
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            data_path: PathBuf::from("./data"),
            storage_path: None,
            flush_policy: "rows:100000,interval:600".into(),
            compact_files_min: 8,
            retired_file_grace_secs: 300,
            s3_endpoint: None,
            s3_region: None,
            s3_access_key_id: None,
            s3_secret_access_key: None,
            cache_bytes_max: 10 << 30,
            wal_prefill_bytes: 64 << 20,
            apply_format_max: kalamdb_projections::format::FORMAT_MAX,
        }
    }
}

impl Default for ShardingConfig {
    fn default() -> ShardingConfig {
        ShardingConfig { user_shards: 32, shared_shards: 1 }
    }
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        let q = kalamdb_query::QueryLimits::default();
        LimitsConfig {
            request_body_bytes_max: 10 << 20,
            http_connections_max: 2_048,
            http_header_read_timeout_ms: 10_000,
            http_body_read_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            batch_ops_max: 1024,
            proposals_in_flight_max: 4,
            proposal_queue_len_max: 16_384,
            query_memory_bytes_max: q.memory_bytes_max,
            query_timeout_ms: q.timeout_ms,
            result_rows_max: q.result_rows_max,
            result_bytes_max: q.result_bytes_max,
            statements_per_request_max: q.statements_per_request_max,
            params_max: q.params_max,
            queries_concurrent_max: q.concurrent_max,
            query_queue_len_max: q.queued_max,
            query_queue_wait_ms: q.queue_wait_ms,
            query_spill_bytes_max: q.spill_bytes_max,
            query_threads: 0,
        }
    }
}

impl Default for RaftConfig {
    fn default() -> RaftConfig {
        RaftConfig {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            snapshot_logs_since_last: 20_000,
            logs_to_keep: 5_000,
            snapshot_logs_since_last_bytes: 128 << 20,
            logs_to_keep_bytes: 32 << 20,
            leader_balance_interval_ms: 5_000,
            leader_transfers_per_minute_max: 12,
            lease_reads: true,
        }
    }
}

impl Default for LoggingConfig {
    fn default() -> LoggingConfig {
        LoggingConfig { level: "info".into() }
    }
}

const SECTIONS: [&str; 12] = [
    "server",
    "storage",
    "sharding",
    "limits",
    "raft",
    "logging",
    "cluster",
    "auth",
    "tail",
    "websocket",
    "security",
    "debug",
];
/// Sub-tables an environment override can reach: `KALAMDB_SECURITY_CORS_ALLOWED_ORIGINS` is
/// `[security.cors] allowed_origins`.
const SUBSECTIONS: [(&str, &str); 1] = [("security", "cors")];

/// Bounds of `raft.leader_balance_interval_ms` when balancing is on.
pub const LEADER_BALANCE_INTERVAL_MS_MIN: u64 = 500;
pub const LEADER_BALANCE_INTERVAL_MS_MAX: u64 = 3_600_000;
/// Highest `raft.leader_transfers_per_minute_max`: a transfer pauses a group's writes briefly,
/// so more would be flapping, not balancing.
pub const LEADER_TRANSFERS_PER_MINUTE_MAX: u32 = 120;

/// Shortest `auth.jwt_secret` accepted.
pub const TOKEN_SECRET_BYTES_MIN: usize = 16;
/// Longest `storage.retired_file_grace_secs`: a week (files wait longer only for members
/// behind).
pub const RETIRED_FILE_GRACE_SECS_MAX: u64 = 7 * 24 * 3600;
/// Longest token lifetime accepted (30 days).
pub const TOKEN_TTL_SECS_MAX: u64 = 30 * 24 * 3600;

/// The smallest accepted cluster secret: 32 bytes, e.g. the 64 hex digits of
/// `openssl rand -hex 32` (what scripts/cluster.sh generates).
pub const CLUSTER_SECRET_BYTES_MIN: usize = 32;
/// Distinct characters a cluster secret must have (random hex has 16, base64 about 30).
pub const CLUSTER_SECRET_DISTINCT_MIN: usize = 10;
/// Words that mark a placeholder, not a random secret.
const PLACEHOLDER_WORDS: [&str; 6] = ["changeme", "change-me", "change_me", "example", "secret", "password"];

/// Why `secret` is too weak to guard the cluster, if it is. The peer Hello is an HMAC keyed by
/// it: a guessable secret lets anyone who can reach the Raft port join the cluster.
pub fn weak_cluster_secret(secret: &str) -> Option<String> {
    if secret.len() < CLUSTER_SECRET_BYTES_MIN {
        return Some(format!("{} bytes; at least {CLUSTER_SECRET_BYTES_MIN} are needed", secret.len()));
    }
    let distinct = secret.bytes().collect::<std::collections::BTreeSet<u8>>().len();
    if distinct < CLUSTER_SECRET_DISTINCT_MIN {
        return Some(format!("only {distinct} distinct characters"));
    }
    let lower = secret.to_ascii_lowercase();
    if let Some(word) = PLACEHOLDER_WORDS.iter().find(|w| lower.contains(*w)) {
        return Some(format!("it contains the placeholder word '{word}'"));
    }
    None
}

impl Config {
    /// Load from an optional TOML file, then apply `KALAMDB_*` overrides from `env`.
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config> {
        let mut doc: toml::Table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| Error::Config(format!("cannot read {}: {e}", p.display())))?;
                text.parse().map_err(|e| Error::Config(format!("{}: {e}", p.display())))?
            }
            None => toml::Table::new(),
        };
        for (key, value) in env {
            // The documented name of the root password; same as KALAMDB_AUTH_ROOT_PASSWORD.
            let key = if key == "KALAMDB_ROOT_PASSWORD" { "KALAMDB_AUTH_ROOT_PASSWORD".to_string() } else { key };
            let Some(rest) = key.strip_prefix("KALAMDB_") else { continue };
            let rest = rest.to_ascii_lowercase();
            let Some(section) = SECTIONS.iter().find(|s| rest.starts_with(&format!("{s}_"))) else { continue };
            let field = &rest[section.len() + 1..];
            // Numbers and booleans keep their type; anything else is a string. Secrets are
            // always strings (a numeric password must not become an integer).
            let secret = matches!(field, "root_password" | "jwt_secret" | "s3_secret_access_key" | "s3_access_key_id");
            let typed = if secret { None } else { format!("v = {value}").parse::<toml::Table>().ok() };
            let parsed = typed.and_then(|mut t| t.remove("v")).unwrap_or(toml::Value::String(value.clone()));
            let mut table = doc
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| Error::Config(format!("[{section}] must be a table")))?;
            let mut field = field;
            if let Some((_, sub)) =
                SUBSECTIONS.iter().find(|(s, sub)| s == section && field.starts_with(&format!("{sub}_")))
            {
                field = &field[sub.len() + 1..];
                table = table
                    .entry(sub.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .ok_or_else(|| Error::Config(format!("[{section}.{sub}] must be a table")))?;
            }
            table.insert(field.to_string(), parsed);
        }
        let config: Config = toml::Value::Table(doc)
            .try_into()
            .map_err(|e: toml::de::Error| Error::Config(e.to_string().trim().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if !(1..=1023).contains(&self.server.node_id) {
            return bad(format!("server.node_id must be 1..=1023, got {}", self.server.node_id));
        }
        for (key, threads) in
            [("server.worker_threads", self.server.worker_threads), ("limits.query_threads", self.limits.query_threads)]
        {
            if threads > WORKER_THREADS_MAX {
                return bad(format!("{key} must be 0 (one per CPU) to {WORKER_THREADS_MAX}, got {threads}"));
            }
        }
        let max = kalamdb_log::group::SHARDS_MAX;
        if !(1..=max).contains(&self.sharding.user_shards) || !(1..=max).contains(&self.sharding.shared_shards) {
            return bad(format!("sharding.user_shards and sharding.shared_shards must be 1..={max}"));
        }
        if self.raft.election_timeout_min_ms >= self.raft.election_timeout_max_ms
            || self.raft.heartbeat_interval_ms >= self.raft.election_timeout_min_ms
        {
            return bad("raft: need heartbeat_interval_ms < election_timeout_min_ms < election_timeout_max_ms".into());
        }
        if self.raft.snapshot_logs_since_last_bytes < LOG_BYTES_MIN || self.raft.logs_to_keep_bytes < LOG_BYTES_MIN {
            return bad(format!(
                "raft.snapshot_logs_since_last_bytes and raft.logs_to_keep_bytes must be at least {LOG_BYTES_MIN}"
            ));
        }
        let balance = self.raft.leader_balance_interval_ms;
        if balance != 0 && !(LEADER_BALANCE_INTERVAL_MS_MIN..=LEADER_BALANCE_INTERVAL_MS_MAX).contains(&balance) {
            return bad(format!(
                "raft.leader_balance_interval_ms must be 0 (off) or {LEADER_BALANCE_INTERVAL_MS_MIN}..={LEADER_BALANCE_INTERVAL_MS_MAX}, got {balance}"
            ));
        }
        if !(1..=LEADER_TRANSFERS_PER_MINUTE_MAX).contains(&self.raft.leader_transfers_per_minute_max) {
            return bad(format!(
                "raft.leader_transfers_per_minute_max must be 1..={LEADER_TRANSFERS_PER_MINUTE_MAX}, got {}",
                self.raft.leader_transfers_per_minute_max
            ));
        }
        // A URL would otherwise become a local folder named "s3:" and hold the files silently.
        if let Some(text) = self.storage.data_path.to_str().filter(|t| t.contains("://")) {
            return bad(format!("storage.data_path '{text}' must be a local folder, not a URL"));
        }
        if let Some(text) = self.storage.storage_path.as_ref().and_then(|p| p.to_str()).filter(|t| t.contains("://")) {
            if let Err(e) = crate::bucket::BucketUrl::parse(text) {
                return bad(format!("storage.storage_path '{text}': {e}"));
            }
        } else if self.storage.s3_endpoint.is_some() {
            return bad("storage.s3_endpoint is set but storage.storage_path is not an s3:// URL".into());
        }
        if let Some(endpoint) = &self.storage.s3_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return bad(format!("storage.s3_endpoint '{endpoint}' must start with http:// or https://"));
        }
        if self.storage.s3_access_key_id.is_some() != self.storage.s3_secret_access_key.is_some() {
            return bad("storage.s3_access_key_id and storage.s3_secret_access_key go together".into());
        }
        let origins = &self.security.cors.allowed_origins;
        if origins.len() > CORS_ORIGINS_MAX {
            return bad(format!("security.cors.allowed_origins: at most {CORS_ORIGINS_MAX} entries"));
        }
        if let Some(o) = origins.iter().find(|o| !crate::api::cors::valid_origin(o)) {
            return bad(format!("security.cors.allowed_origins: '{o}' is not an origin (scheme://host[:port], or *)"));
        }
        if let Err(e) = kalamdb_query::FlushPolicy::parse(&self.storage.flush_policy) {
            return bad(format!("storage.flush_policy: {e}"));
        }
        if self.storage.compact_files_min < 2 {
            return bad("storage.compact_files_min must be at least 2".into());
        }
        let formats = kalamdb_projections::format::FORMAT_FIRST..=kalamdb_projections::format::FORMAT_MAX;
        if !formats.contains(&self.storage.apply_format_max) {
            return bad(format!(
                "storage.apply_format_max must be from {} to {} (the formats this build applies)",
                formats.start(),
                formats.end()
            ));
        }
        if self.storage.wal_prefill_bytes > kalamdb_log::WAL_PREFILL_BYTES_MAX {
            return bad(format!("storage.wal_prefill_bytes must be at most {}", kalamdb_log::WAL_PREFILL_BYTES_MAX));
        }
        if self.storage.retired_file_grace_secs > RETIRED_FILE_GRACE_SECS_MAX {
            return bad(format!("storage.retired_file_grace_secs must be at most {RETIRED_FILE_GRACE_SECS_MAX}"));
        }
        if self.limits.batch_ops_max == 0
            || self.limits.proposals_in_flight_max == 0
            || self.limits.proposal_queue_len_max == 0
        {
            return bad(
                "limits: batch_ops_max, proposals_in_flight_max and proposal_queue_len_max must be positive".into()
            );
        }
        if self.limits.http_connections_max == 0
            || self.limits.http_header_read_timeout_ms == 0
            || self.limits.http_body_read_timeout_ms == 0
        {
            return bad(
                "limits: http_connections_max, http_header_read_timeout_ms and http_body_read_timeout_ms must be positive"
                    .into(),
            );
        }
        if let Err(e) = self.limits.query_limits(&self.storage.data_path).validate() {
            return bad(format!("limits: {e}"));
        }
        let ws = &self.websocket;
        if ws.auth_timeout_ms == 0
            || ws.client_timeout_ms == 0
            || ws.ping_interval_ms == 0
            || ws.ping_interval_ms >= ws.client_timeout_ms
            || ws.connections_max == 0
            || ws.subscriptions_per_connection_max == 0
            || ws.message_bytes_max < 1024
            || ws.messages_per_sec_max == 0
            || ws.send_buffer_messages == 0
            || ws.batch_rows_max == 0
        {
            return bad("websocket: every limit must be positive, message_bytes_max at least 1024, and ping_interval_ms below client_timeout_ms".into());
        }
        if self.tail.heartbeat_ms == 0
            || self.tail.stall_ms == 0
            || self.tail.subscriber_buffer_events == 0
            || self.tail.subscribers_max == 0
            || self.tail.subscribers_per_user_max == 0
            || self.tail.retention_entries == 0
            || self.tail.retention_bytes < TAIL_RETENTION_BYTES_MIN
        {
            return bad(format!(
                "tail: heartbeat_ms, stall_ms, subscriber_buffer_events, subscribers_max, subscribers_per_user_max and retention_entries must be positive, retention_bytes at least {TAIL_RETENTION_BYTES_MIN}"
            ));
        }
        if !self.auth.jwt_secret.is_empty() && self.auth.jwt_secret.len() < TOKEN_SECRET_BYTES_MIN {
            return bad(format!("auth.jwt_secret must be at least {TOKEN_SECRET_BYTES_MIN} bytes"));
        }
        if !(1..=TOKEN_TTL_SECS_MAX).contains(&self.auth.token_ttl_secs) {
            return bad(format!("auth.token_ttl_secs must be 1..={TOKEN_TTL_SECS_MAX}"));
        }
        if !(self.auth.token_ttl_secs..=TOKEN_TTL_SECS_MAX).contains(&self.auth.refresh_token_ttl_secs) {
            return bad(format!(
                "auth.refresh_token_ttl_secs must be at least auth.token_ttl_secs and at most {TOKEN_TTL_SECS_MAX}"
            ));
        }
        if kalamdb_log::Role::parse(&self.auth.anonymous_role).is_none() {
            return bad(format!(
                "auth.anonymous_role '{}': expected user, service, dba or system",
                self.auth.anonymous_role
            ));
        }
        if let Some(c) = &self.cluster {
            if c.cluster_id.trim().is_empty() {
                return bad("cluster.cluster_id must not be empty".into());
            }
            if let Some(why) = weak_cluster_secret(&c.jwt_secret) {
                return bad(format!(
                    "cluster.jwt_secret is too weak ({why}): use {CLUSTER_SECRET_BYTES_MIN} random bytes or more, e.g. `openssl rand -hex 32` (scripts/cluster.sh generates one)"
                ));
            }
            let mut ids: Vec<u64> = c.members.iter().map(|m| m.node_id).collect();
            ids.sort_unstable();
            ids.dedup();
            if ids.len() != c.members.len() {
                return bad("cluster.members: node ids must be unique".into());
            }
            if !ids.contains(&self.server.node_id) {
                return bad(format!(
                    "cluster.members does not list this node (server.node_id = {})",
                    self.server.node_id
                ));
            }
            let (u, s) = self.shards();
            if !(1..=max).contains(&u) || !(1..=max).contains(&s) {
                return bad(format!("cluster.user_shards and cluster.shared_shards must be 1..={max}"));
            }
        }
        Ok(())
    }

    /// (user shards, shared shards) in effect: `[cluster]` overrides `[sharding]`.
    pub fn shards(&self) -> (u16, u16) {
        let c = self.cluster.as_ref();
        (
            c.and_then(|c| c.user_shards).unwrap_or(self.sharding.user_shards),
            c.and_then(|c| c.shared_shards).unwrap_or(self.sharding.shared_shards),
        )
    }

    /// This node's own member entry, in a cluster.
    pub fn me(&self) -> Option<&MemberConfig> {
        self.cluster.as_ref()?.members.iter().find(|m| m.node_id == self.server.node_id)
    }

    pub fn rocksdb_path(&self) -> PathBuf {
        self.storage.data_path.join("rocksdb")
    }

    pub fn snapshot_path(&self) -> PathBuf {
        self.storage.data_path.join("snapshots")
    }

    /// The local folder of the Parquet files: the storage path, or with a bucket its cache.
    pub fn storage_path(&self) -> PathBuf {
        match (&self.storage.storage_path, self.storage_url()) {
            (_, Some(_)) => self.storage.data_path.join("storage-cache"),
            (Some(p), None) => p.clone(),
            (None, None) => self.storage.data_path.join("storage"),
        }
    }

    /// The bucket files live in, when `storage.storage_path` is an `s3://` URL.
    pub fn storage_url(&self) -> Option<&str> {
        self.storage.storage_path.as_ref()?.to_str().filter(|t| t.contains("://"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_file() {
        let c = Config::load(None, Vec::new()).unwrap();
        assert_eq!(c.server.port, 8080);
        assert_eq!(c.server.host, "127.0.0.1");
        assert_eq!(c.sharding.user_shards, 32);
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.toml");
        std::fs::write(&p, "[server]\nport = 9000\nbogus_key = 1\n").unwrap();
        let e = Config::load(Some(&p), Vec::new()).unwrap_err().to_string();
        assert!(e.contains("bogus_key"), "{e}");
    }

    #[test]
    fn cors_origins_from_file_and_env() {
        let env = vec![(
            "KALAMDB_SECURITY_CORS_ALLOWED_ORIGINS".to_string(),
            r#"["https://app.example.com", "http://localhost:3000"]"#.to_string(),
        )];
        let c = Config::load(None, env).unwrap();
        assert_eq!(c.security.cors.allowed_origins, ["https://app.example.com", "http://localhost:3000"]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[security.cors]\nallowed_origins = [\"https://a.example.com/path\"]\n").unwrap();
        let e = Config::load(Some(&path), Vec::new()).unwrap_err().to_string();
        assert!(e.contains("'https://a.example.com/path' is not an origin"), "{e}");
        assert!(Config::load(None, Vec::new()).unwrap().security.cors.allowed_origins.is_empty());
        let env = vec![("KALAMDB_SECURITY_CORS_ALLOWED_ORIGINS".to_string(), "https://a.example.com, *".to_string())];
        assert_eq!(Config::load(None, env).unwrap().security.cors.allowed_origins, ["https://a.example.com", "*"]);
    }

    #[test]
    fn storage_urls_are_buckets_or_refused() {
        let load = |pairs: &[(&str, &str)]| {
            Config::load(None, pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>())
        };
        let c = load(&[("KALAMDB_STORAGE_STORAGE_PATH", "s3://bucket/some/prefix")]).unwrap();
        assert_eq!(c.storage_url(), Some("s3://bucket/some/prefix"));
        assert_eq!(c.storage_path(), PathBuf::from("./data/storage-cache"));
        for (url, why) in [
            ("gs://bucket/x", "only s3://"),
            ("s3://", "no bucket"),
            ("s3://Bad_Bucket", "bucket name"),
            ("s3://bucket/../x", "prefix"),
        ] {
            let e = load(&[("KALAMDB_STORAGE_STORAGE_PATH", url)]).unwrap_err().to_string();
            assert!(e.contains(&format!("storage.storage_path '{url}'")) && e.contains(why), "{url}: {e}");
        }
        let e = load(&[("KALAMDB_STORAGE_DATA_PATH", "s3://bucket/x")]).unwrap_err().to_string();
        assert!(e.contains("must be a local folder"), "{e}");
        let e = load(&[("KALAMDB_STORAGE_S3_ENDPOINT", "http://127.0.0.1:9000")]).unwrap_err().to_string();
        assert!(e.contains("not an s3:// URL"), "{e}");
        let e = load(&[("KALAMDB_STORAGE_STORAGE_PATH", "s3://bucket/p"), ("KALAMDB_STORAGE_S3_ACCESS_KEY_ID", "123")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("go together"), "{e}");
        let c = load(&[("KALAMDB_STORAGE_STORAGE_PATH", "/mnt/shared/storage")]).unwrap();
        assert_eq!((c.storage_url(), c.storage_path()), (None, PathBuf::from("/mnt/shared/storage")));
    }

    #[test]
    fn env_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.toml");
        std::fs::write(&p, "[server]\nport = 9000\n").unwrap();
        let env = vec![
            ("KALAMDB_SERVER_PORT".to_string(), "9100".to_string()),
            ("KALAMDB_STORAGE_DATA_PATH".to_string(), "/tmp/x".to_string()),
        ];
        let c = Config::load(Some(&p), env).unwrap();
        assert_eq!(c.server.port, 9100);
        assert_eq!(c.storage.data_path, PathBuf::from("/tmp/x"));
        let e = Config::load(None, vec![("KALAMDB_SERVER_PROT".to_string(), "1".to_string())]).unwrap_err().to_string();
        assert!(e.contains("prot"), "{e}");
    }

    #[test]
    fn worker_threads_are_bounded() {
        let threads = |v: &str| Config::load(None, vec![("KALAMDB_SERVER_WORKER_THREADS".to_string(), v.to_string())]);
        assert_eq!(threads("1").unwrap().server.worker_threads, 1);
        assert_eq!(threads("0").unwrap().server.worker_threads, 0);
        let e = threads("100000").unwrap_err().to_string();
        assert!(e.contains("server.worker_threads must be 0 (one per CPU) to 256"), "{e}");
        let e = Config::load(None, vec![("KALAMDB_LIMITS_QUERY_THREADS".to_string(), "257".to_string())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.query_threads"), "{e}");
    }

    #[test]
    fn auth_section_and_root_password_variable() {
        let env = vec![
            ("KALAMDB_ROOT_PASSWORD".to_string(), "12345678".to_string()),
            ("KALAMDB_AUTH_ALLOW_ANONYMOUS".to_string(), "true".to_string()),
        ];
        let c = Config::load(None, env).unwrap();
        assert_eq!(c.auth.root_password, "12345678", "a numeric password stays a string");
        assert!(c.auth.allow_anonymous);
        assert!(!Config::load(None, Vec::new()).unwrap().auth.allow_anonymous, "off by default");
        let debug = format!("{:?}", c.auth);
        assert!(!debug.contains("12345678"), "{debug}");
        let bad = vec![("KALAMDB_AUTH_ANONYMOUS_ROLE".to_string(), "king".to_string())];
        assert!(Config::load(None, bad).unwrap_err().to_string().contains("anonymous_role"));
    }

    const CLUSTER: &str = r#"
[server]
node_id = 2

[cluster]
cluster_id = "c1"
jwt_secret = "9c41f07b2ad85e63c1b94f20e7d6a83f5b0c2e19d47a86f3e5c1b09a72d4f863"
user_shards = 4
shared_shards = 1

[[cluster.members]]
node_id = 1
raft_addr = "kalamdb-node1:9091"
http_addr = "kalamdb-node1:8081"

[[cluster.members]]
node_id = 2
raft_addr = "kalamdb-node2:9092"
http_addr = "kalamdb-node2:8082"
"#;

    fn load_text(text: &str) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.toml");
        std::fs::write(&p, text).unwrap();
        Config::load(Some(&p), Vec::new())
    }

    #[test]
    fn cluster_section_sets_members_and_shards() {
        let c = load_text(CLUSTER).unwrap();
        assert_eq!(c.shards(), (4, 1));
        assert_eq!(c.me().map(|m| m.raft_addr.as_str()), Some("kalamdb-node2:9092"));
        assert_eq!(c.cluster.as_ref().map(|c| c.members.len()), Some(2));
        assert!(Config::load(None, Vec::new()).unwrap().cluster.is_none(), "no [cluster]: single node");
    }

    #[test]
    fn cluster_mistakes_are_named() {
        let not_member = CLUSTER.replace("node_id = 2\n\n[cluster]", "node_id = 3\n\n[cluster]");
        assert!(load_text(&not_member).unwrap_err().to_string().contains("does not list this node"));
        let good = "9c41f07b2ad85e63c1b94f20e7d6a83f5b0c2e19d47a86f3e5c1b09a72d4f863";
        for weak in ["short", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "kalamdb-docker-cluster-secret-0123456789"] {
            let e = load_text(&CLUSTER.replace(good, weak)).unwrap_err().to_string();
            assert!(e.contains("jwt_secret is too weak"), "{weak}: {e}");
        }
        let dup = CLUSTER.replace("node_id = 1\nraft_addr", "node_id = 2\nraft_addr");
        assert!(load_text(&dup).unwrap_err().to_string().contains("unique"));
        let typo = CLUSTER.replace("user_shards = 4", "user_shard = 4");
        assert!(load_text(&typo).unwrap_err().to_string().contains("user_shard"));
    }
}
