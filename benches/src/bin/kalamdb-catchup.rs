//! `kalamdb-catchup`: how long a follower takes to catch up, and each node's memory. Starts a
//! local 3-node cluster (default config), measures idle RSS, stops node 3 with kill -9, writes
//! `--writes` rows through nodes 1 and 2 in INSERTs of `--rows-per-insert` rows (group commit
//! packs concurrent ones into fewer log entries; both counts are reported), measures their RSS
//! under that load, restarts node 3 and times it until it has applied every entry the leader had
//! committed, reporting each node's peak RSS during the catch-up. `--purge-log` keeps little log
//! so node 3 catches up by installing a snapshot. Loopback only; bounded by `--writes` and
//! `CATCH_UP_WAIT`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use kalamdb_benches::chaos::api::{Api, Reply};
use kalamdb_benches::chaos::cluster::{Cluster, Local, NODES};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on the restarted node's catch-up.
const CATCH_UP_WAIT: Duration = Duration::from_secs(900);
/// Largest `--rows-per-insert` (a statement's text stays far below the request body limit).
const ROWS_PER_INSERT_MAX: u64 = 5000;
/// The group every row of a SHARED table goes to (one shared shard).
const GROUP: &str = "shared:0";

#[derive(Parser, Debug)]
#[command(name = "kalamdb-catchup", about = "Follower catch-up time and per-node RSS on a local 3-node cluster")]
struct Args {
    /// Single-row INSERTs acknowledged while node 3 is down.
    #[arg(long, default_value_t = 1_000_000)]
    writes: u64,
    #[arg(long, default_value_t = 64)]
    clients: u64,
    /// Rows per INSERT statement.
    #[arg(long, default_value_t = 1)]
    rows_per_insert: u64,
    /// Snapshot every 1,000 entries and keep 100, so node 3 installs a snapshot.
    #[arg(long)]
    purge_log: bool,
    #[arg(long)]
    server_bin: PathBuf,
    #[arg(long)]
    dir: PathBuf,
    /// Also print the figures as one JSON object (last line).
    #[arg(long)]
    json: bool,
}

fn mib(b: Option<u64>) -> f64 {
    b.map_or(f64::NAN, |b| b as f64 / (1024.0 * 1024.0))
}

/// This node's own applied index of `GROUP`, and the commit index it knows of.
async fn indexes(api: &Api, url: &str) -> Option<(u64, u64)> {
    let Reply::Ok(h) = api.request("GET", url, "/v1/api/cluster/health?local=true", None).await else { return None };
    let g = h["groups"].as_array()?.iter().find(|g| g["group"] == GROUP)?;
    Some((g["applied_index"].as_u64()?, g["commit_index"].as_u64()?))
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir).map_err(|e| e.to_string())?;
    }
    if !(1..=ROWS_PER_INSERT_MAX).contains(&args.rows_per_insert) {
        return Err(format!("--rows-per-insert must be 1..={ROWS_PER_INSERT_MAX}"));
    }
    let extra = if args.purge_log { "[raft]\nsnapshot_logs_since_last = 1000\nlogs_to_keep = 100\n" } else { "" };
    let mut local = Local::create(&args.dir, &args.server_bin, extra)?;
    for n in 1..=NODES {
        local.start(n)?;
    }
    let mut cluster = Cluster::Local(local);
    let urls = cluster.urls();
    let api = Api::new(true, REQUEST_TIMEOUT, args.clients as usize);
    cluster.wait_healthy(&api).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let Cluster::Local(local) = &mut cluster else { return Err("not a local cluster".into()) };
    let idle: Vec<f64> = (1..=NODES).map(|n| mib(local.rss_bytes(n))).collect();
    println!("idle RSS MiB: {idle:.1?}");

    let table = "bench.catchup";
    api.sql_until_ok(&urls, "CREATE NAMESPACE IF NOT EXISTS bench", REQUEST_TIMEOUT).await?;
    api.sql_until_ok(
        &urls,
        &format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY, v BIGINT) WITH (TYPE = 'SHARED')"),
        REQUEST_TIMEOUT,
    )
    .await?;
    let (_, index_before) = indexes(&api, &urls[0]).await.ok_or("node 1 health")?;
    local.kill9(3);

    let next = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let (api, url) = (api.clone(), urls[(c % 2) as usize].clone());
        let (next, acked, failed, rows, per) =
            (next.clone(), acked.clone(), failed.clone(), args.writes, args.rows_per_insert);
        tasks.push(tokio::spawn(async move {
            while acked.load(Ordering::Relaxed) < rows {
                let first = next.fetch_add(per, Ordering::Relaxed);
                let values: Vec<String> = (first..first + per).map(|id| format!("({id}, {id})")).collect();
                match api.sql(&url, &format!("INSERT INTO {table} (id, v) VALUES {}", values.join(", ")), false).await {
                    Reply::Ok(_) => acked.fetch_add(per, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    let load_s = started.elapsed().as_secs_f64();
    let written = acked.load(Ordering::SeqCst);
    let loaded: Vec<f64> = (1..=2).map(|n| mib(local.rss_bytes(n))).collect();
    println!(
        "wrote {written} rows in {load_s:.1} s ({:.0}/s, {} failed) with node 3 down; loaded RSS MiB nodes 1-2: {loaded:.1?}",
        written as f64 / load_s,
        failed.load(Ordering::SeqCst)
    );

    let (_, target) = indexes(&api, &urls[0]).await.ok_or("node 1 health")?;
    let log_entries = target.saturating_sub(index_before);
    for n in 1..=2 {
        local.reset_peak_rss(n)?;
    }
    let t0 = Instant::now();
    local.start(3)?;
    let mut applied = 0;
    while applied < target {
        if t0.elapsed() > CATCH_UP_WAIT {
            return Err(format!("node 3 reached {applied} of {target} in {CATCH_UP_WAIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        applied = indexes(&api, &urls[2]).await.map_or(applied, |(a, _)| a);
    }
    let catch_up_s = t0.elapsed().as_secs_f64();
    let log = std::fs::read_to_string(local.log_path(3)).unwrap_or_default();
    let via = if log.contains("snapshot installed") { "snapshot install + log" } else { "log replication" };
    let after: Vec<f64> = (1..=NODES).map(|n| mib(local.rss_bytes(n))).collect();
    let peak: Vec<f64> = (1..=NODES).map(|n| mib(local.peak_rss_bytes(n))).collect();
    println!(
        "node 3 caught up {log_entries} log entries ({GROUP} index {target}) in {catch_up_s:.2} s ({via}); RSS MiB after: {after:.1?}; peak RSS MiB during catch-up: {peak:.1?}"
    );
    if args.json {
        let v = serde_json::json!({
            "workload": "catchup",
            "writes": written,
            "log_entries": log_entries,
            "load_seconds": load_s,
            "catch_up_seconds": catch_up_s,
            "via": via,
            "idle_rss_mib": idle,
            "loaded_rss_mib": loaded,
            "after_rss_mib": after,
            "catch_up_peak_rss_mib": peak,
            "rows_per_insert": args.rows_per_insert,
        });
        println!("{v}");
    }
    drop(cluster);
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(())
}
