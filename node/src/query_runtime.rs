//! The runtime that executes queries, apart from the one serving Raft, the log, HTTP and
//! health checks, its threads at a lower scheduling priority, so a query that saturates every
//! core cannot delay a heartbeat or a write.

use std::path::Path;

use crate::error::{Error, Result};

/// Blocking threads of the query runtime (table scans reading RocksDB, `AS OF` replays).
/// Admission bounds the queries, and DataFusion plans a query's scans a few at a time, so
/// this is a backstop against thread growth, not a queue anyone should reach.
const QUERY_BLOCKING_THREADS_MAX: usize = 64;
/// Nice value of the query runtime's threads (Linux: per thread). At 10 the kernel weighs a
/// runnable Raft or HTTP thread about ten times a query thread, so queries may use every core
/// when nothing else runs and yield it at once when something does.
const QUERY_THREAD_NICE: i32 = 10;

/// Owns the query runtime. Dropping it from async code is allowed: it shuts the runtime down
/// in the background (a plain `Runtime` panics when dropped inside another runtime).
pub struct QueryRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for QueryRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryRuntime").finish_non_exhaustive()
    }
}

impl QueryRuntime {
    /// `threads` workers; 0: one per CPU. Every thread of the runtime (workers and the
    /// blocking threads that read files and RocksDB for scans) runs at [`QUERY_THREAD_NICE`].
    pub fn start(threads: usize) -> Result<QueryRuntime> {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = if threads == 0 { cpus } else { threads };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("kalamdb-query")
            .on_thread_start(lower_priority)
            .max_blocking_threads(QUERY_BLOCKING_THREADS_MAX)
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(QueryRuntime { runtime: Some(runtime), handle })
    }

    pub fn handle(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }
}

/// Lower the calling thread's priority to [`QUERY_THREAD_NICE`]. Raising a nice value needs
/// no privilege; should it fail anyway (a seccomp profile), queries run at normal priority.
fn lower_priority() {
    if let Err(e) = rustix::process::setpriority_process(None, QUERY_THREAD_NICE) {
        tracing::warn!(error = %e, "query thread keeps normal priority");
    }
}

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        if let Some(r) = self.runtime.take() {
            r.shutdown_background();
        }
    }
}

/// Spill files are scratch space of queries that were running: whatever a killed process left
/// behind is removed at startup.
pub fn clear_spill(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Io(e)),
    }
    std::fs::create_dir_all(path)?;
    Ok(())
}
