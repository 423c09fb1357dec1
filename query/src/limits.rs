//! What one statement may cost (memory, time, result size) and where DataFusion work runs: the
//! bounds that keep a hostile query, sent by any application user, from taking a node down.
//!
//! DataFusion work runs on a runtime of its own (the node builds it and hands its handle over),
//! a bounded number of queries at a time; extra queries wait briefly, then are refused as
//! busy. Its operators draw from one fair memory pool and spill under the data folder. A
//! statement past its deadline is dropped, and dropping it aborts its task (DataFusion's
//! operators yield cooperatively, so the abort takes effect within one batch).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::error::{Error, Result};

/// Memory pool size when the machine's memory cannot be read.
pub const QUERY_MEMORY_BYTES_FALLBACK: usize = 1 << 30;
/// Smallest accepted memory pool: below this, ordinary queries fail.
pub const QUERY_MEMORY_BYTES_MIN: usize = 16 << 20;

/// The limits of one node's query execution (`[limits]` in the node's config).
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// The memory pool shared by every running query (sorts, aggregates and joins draw from it
    /// and spill when they can).
    pub memory_bytes_max: usize,
    /// Deadline of one statement.
    pub timeout_ms: u64,
    /// Rows one statement may return (or read, for UPDATE/DELETE).
    pub result_rows_max: usize,
    /// Bytes (Arrow, in memory) one statement may return.
    pub result_bytes_max: usize,
    /// Statements in one request.
    pub statements_per_request_max: usize,
    /// Entries of one request's `params`.
    pub params_max: usize,
    /// Queries executing at once on this node.
    pub concurrent_max: usize,
    /// Queries waiting for a slot; more are refused at once.
    pub queued_max: usize,
    /// How long a query waits for a slot before it is refused as busy.
    pub queue_wait_ms: u64,
    /// Where operators spill; `None` disables spilling (memory-hungry queries then fail).
    pub spill_path: Option<PathBuf>,
    /// Disk all spill files together may use.
    pub spill_bytes_max: u64,
}

impl Default for QueryLimits {
    fn default() -> QueryLimits {
        QueryLimits {
            memory_bytes_max: default_memory_bytes(),
            timeout_ms: 30_000,
            result_rows_max: 1_000_000,
            result_bytes_max: 64 << 20,
            statements_per_request_max: 100,
            params_max: 1_000,
            concurrent_max: 8,
            queued_max: 64,
            queue_wait_ms: 2_000,
            spill_path: None,
            spill_bytes_max: 8 << 30,
        }
    }
}

/// A quarter of the machine's memory (from `/proc/meminfo`), else [`QUERY_MEMORY_BYTES_FALLBACK`].
/// The rest is left to RocksDB, the log, hot-table scans (not pooled) and the OS page cache.
pub fn default_memory_bytes() -> usize {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    });
    match total {
        Some(bytes) => (bytes / 4).max(QUERY_MEMORY_BYTES_MIN),
        None => QUERY_MEMORY_BYTES_FALLBACK,
    }
}

impl QueryLimits {
    /// Every limit must be positive; a zero would refuse every query.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.memory_bytes_max < QUERY_MEMORY_BYTES_MIN {
            return Err(format!("query_memory_bytes_max must be at least {QUERY_MEMORY_BYTES_MIN}"));
        }
        let positive = [
            ("query_timeout_ms", self.timeout_ms as usize),
            ("result_rows_max", self.result_rows_max),
            ("result_bytes_max", self.result_bytes_max),
            ("statements_per_request_max", self.statements_per_request_max),
            ("params_max", self.params_max),
            ("queries_concurrent_max", self.concurrent_max),
            ("query_queue_wait_ms", self.queue_wait_ms as usize),
        ];
        match positive.iter().find(|(_, v)| *v == 0) {
            Some((name, _)) => Err(format!("{name} must be positive")),
            None => Ok(()),
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// DataFusion's runtime: the fair memory pool and the spill folder.
    pub fn runtime_env(&self) -> Result<Arc<RuntimeEnv>> {
        let mode = match &self.spill_path {
            Some(p) => {
                std::fs::create_dir_all(p)
                    .map_err(|e| Error::Internal(format!("cannot create spill folder {}: {e}", p.display())))?;
                DiskManagerMode::Directories(vec![p.clone()])
            }
            None => DiskManagerMode::Disabled,
        };
        let disk = DiskManagerBuilder::default().with_mode(mode).with_max_temp_directory_size(self.spill_bytes_max);
        Ok(RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(self.memory_bytes_max)))
            .with_disk_manager_builder(disk)
            .build_arc()?)
    }
}

/// Runs DataFusion work: admission (a bounded number at once, a bounded short queue), the query
/// runtime, and abort when the caller goes away.
#[derive(Debug)]
pub(crate) struct Executor {
    runtime: Option<tokio::runtime::Handle>,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    queued_max: usize,
    queue_wait: Duration,
}

/// Aborts the task when the statement's future is dropped (deadline passed, client gone).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Decrements the waiting count however the wait ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Executor {
    pub(crate) fn new(limits: &QueryLimits, runtime: Option<tokio::runtime::Handle>) -> Executor {
        Executor {
            runtime,
            slots: Arc::new(Semaphore::new(limits.concurrent_max)),
            waiting: AtomicUsize::new(0),
            queued_max: limits.queued_max,
            queue_wait: Duration::from_millis(limits.queue_wait_ms),
        }
    }

    /// Run `work` on the query runtime once a slot is free. The task is aborted if the
    /// returned future is dropped.
    pub(crate) async fn run<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let _slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queued_max {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(busy());
                }
                let _waiting = Waiting(&self.waiting);
                match tokio::time::timeout(self.queue_wait, self.slots.clone().acquire_owned()).await {
                    Ok(Ok(slot)) => slot,
                    Ok(Err(_)) | Err(_) => return Err(busy()),
                }
            }
        };
        let task = match &self.runtime {
            Some(handle) => handle.spawn(work),
            None => tokio::spawn(work),
        };
        let mut task = AbortOnDrop(task);
        match (&mut task.0).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => {
                tracing::error!(target: "kalamdb_sql", "query task panicked: {e}");
                Err(Error::Internal("the query failed unexpectedly (task panicked)".into()))
            }
            Err(e) => Err(Error::Internal(format!("query task ended: {e}"))),
        }
    }
}

fn busy() -> Error {
    Error::Busy("too many queries are running on this node; retry shortly".into())
}

/// Arrow bytes of a batch as returned: a slice counts only its own rows.
fn batch_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or_else(|_| c.get_array_memory_size()))
        .sum()
}

/// Collect a result stream, failing as soon as it passes the row or byte cap: the node never
/// holds more than one batch past the cap.
pub(crate) async fn collect_bounded(
    mut stream: datafusion::execution::SendableRecordBatchStream,
    rows_max: usize,
    bytes_max: usize,
) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    let (mut rows, mut bytes) = (0usize, 0usize);
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        rows = rows.saturating_add(batch.num_rows());
        bytes = bytes.saturating_add(batch_bytes(&batch));
        if rows > rows_max {
            return Err(Error::ResultTooLarge(format!(
                "the result has more than {rows_max} rows (limits.result_rows_max); add a LIMIT or a narrower WHERE"
            )));
        }
        if bytes > bytes_max {
            return Err(Error::ResultTooLarge(format!(
                "the result exceeds {bytes_max} bytes (limits.result_bytes_max); select fewer columns or rows"
            )));
        }
        out.push(batch);
    }
    // An empty result still carries its columns: clients render the header and decode by type.
    if out.is_empty() {
        out.push(RecordBatch::new_empty(stream.schema()));
    }
    Ok(out)
}

/// Makes every join's output cooperative. A join can produce output for a long time without
/// polling an input (a cross join emits left × right rows from one right batch), so nothing
/// on the path reaches a yield point and an aborted query keeps its thread. Wrapped, each
/// output batch consumes tokio's task budget and the task yields, and so can be cancelled.
#[derive(Debug, Default)]
pub(crate) struct YieldAfterJoins;

impl datafusion::physical_optimizer::PhysicalOptimizerRule for YieldAfterJoins {
    fn optimize(
        &self,
        plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        _config: &datafusion::config::ConfigOptions,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        use datafusion::common::tree_node::{Transformed, TreeNode};
        use datafusion::physical_plan::coop::CooperativeExec;
        plan.transform_up(|p| {
            if p.name().contains("Join") {
                Ok(Transformed::yes(Arc::new(CooperativeExec::new(p)) as _))
            } else {
                Ok(Transformed::no(p))
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "YieldAfterJoins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
