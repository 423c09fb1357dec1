//! The KalamDB node: configuration, startup of every Raft group, the HTTP API, and the wiring
//! of log, projections, transport and query. The only crate that knows all the others.

pub mod api;
pub mod apply_format;
pub mod auth;
pub mod backup;
pub mod bucket;
pub mod cluster;
pub mod cluster_control;
pub mod config;
pub mod error;
pub mod file_retirement;
pub mod groups;
pub mod metrics;
pub mod query_runtime;
pub mod retention;
pub mod serve;
pub mod sessions;
pub mod storage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use config::Config;
pub use error::{Error, Result};

/// Time a starting node waits for every group to elect a leader before serving anyway
/// (health reports "unavailable" until they have).
pub const STARTUP_LEADER_WAIT_MS: u64 = 10_000;

/// Start the node and serve HTTP until `shutdown` resolves.
pub async fn run(cfg: Config, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<()> {
    let metrics = metrics::install();
    let groups = groups::Groups::start(&cfg).await?;
    tokio::spawn(metrics::run_raft_sampler(groups.clone(), metrics.clone()));
    tokio::spawn(retention::run_change_retention(groups.clone(), cfg.tail.retention_entries, cfg.tail.retention_bytes));
    tokio::spawn(retention::run_log_retention(
        groups.clone(),
        cfg.raft.snapshot_logs_since_last_bytes,
        cfg.raft.logs_to_keep_bytes,
    ));
    tokio::spawn(retention::run_stream_ttl(groups.clone()));
    if !groups.wait_ready(Duration::from_millis(STARTUP_LEADER_WAIT_MS)).await {
        tracing::warn!(target: "kalamdb_raft", "not every group has a leader yet; serving anyway");
    }
    let query_runtime = query_runtime::QueryRuntime::start(cfg.limits.query_threads)?;
    query_runtime::clear_spill(&cfg.storage.data_path.join("spill"))?;
    let open_sessions = Arc::new(sessions::Sessions::default());
    let introspection = sessions::NodeIntrospection { sessions: open_sessions.clone(), metrics: metrics.clone() };
    let engine = kalamdb_query::Engine::new(groups.catalog.clone(), groups.rows.clone(), groups.layout, groups.node_id)
        .with_cluster(Arc::new(cluster::NodeCluster(groups.clone())))
        .with_cluster_control(Arc::new(cluster_control::NodeControl(groups.clone())))
        .with_node(Arc::new(introspection))
        .with_jobs(groups.storage.clone())
        .with_backups(Arc::new(backup::Backups::new(groups.clone(), cfg.clone())))
        .with_limits(cfg.limits.query_limits(&cfg.storage.data_path), Some(query_runtime.handle()))
        .map_err(|e| Error::Config(format!("limits: {e}")))?;
    let flush_policy = kalamdb_query::FlushPolicy::parse(&cfg.storage.flush_policy)
        .map_err(|e| Error::Config(format!("storage.flush_policy: {e}")))?;
    tokio::spawn(storage::run_auto_flush(groups.clone(), flush_policy, cfg.storage.compact_files_min));
    let grace = std::time::Duration::from_secs(cfg.storage.retired_file_grace_secs);
    tokio::spawn(file_retirement::run(groups.clone(), grace));
    tokio::spawn(apply_format::run(groups.clone()));
    let auth = Arc::new(auth::Auth::new(&cfg, groups.catalog.clone(), Some(groups.clone()))?);
    if let Some(role) = auth.anonymous_role() {
        tracing::warn!(
            "auth.allow_anonymous is on: requests without credentials act as user 'anonymous' with role '{}'",
            role.name()
        );
    }
    if !auth.root_has_password() {
        tracing::info!(
            "root has no password: it may log in from loopback only (set auth.root_password or KALAMDB_ROOT_PASSWORD)"
        );
    }
    let app = Arc::new(api::App {
        engine,
        groups: groups.clone(),
        auth,
        body_bytes_max: cfg.limits.request_body_bytes_max,
        body_read_timeout: Duration::from_millis(cfg.limits.http_body_read_timeout_ms),
        metrics,
        fault_injection: cfg.debug.fault_injection,
        tail: cfg.tail.clone(),
        tail_state: api::tail::TailState::default(),
        websocket: cfg.websocket.clone(),
        ws_state: api::ws::WsState::new(open_sessions),
        digest_slot: tokio::sync::Semaphore::new(1),
        cors_allowed_origins: cfg.security.cors.allowed_origins.clone(),
    });
    let addr: SocketAddr = format!("{}:{}", cfg.server.host, cfg.server.port)
        .parse()
        .map_err(|e| Error::Config(format!("server.host/port: {e}")))?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, node_id = cfg.server.node_id, data = %cfg.storage.data_path.display(), "KalamDB listening");
    // Client addresses reach the handlers (serve.rs puts them in each request): root's
    // loopback rule and the login rate limit.
    let limits = serve::HttpLimits {
        connections_max: cfg.limits.http_connections_max,
        header_read_timeout: Duration::from_millis(cfg.limits.http_header_read_timeout_ms),
    };
    // A graceful stop hands this node's leaderships to other voters first, while HTTP still
    // serves (writes that arrive meanwhile are forwarded), so no group waits for an election.
    let draining = groups.clone();
    let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shutdown = {
        let closing = closing.clone();
        async move {
            shutdown.await;
            closing.store(true, std::sync::atomic::Ordering::SeqCst);
            draining.drain().await;
        }
    };
    serve::serve(listener, api::router(app), limits, closing, shutdown).await?;
    groups.shutdown().await;
    drop(query_runtime);
    Ok(())
}
