//! `kalamdb-chaos`: a bounded workload of register reads, writes, creates and compare-and-sets
//! plus list appends and reads, and transfers between accounts in `BEGIN ... COMMIT` batches,
//! against a 3-node cluster, while a nemesis derived from `--seed` kills -9, partitions and
//! pauses nodes. Afterwards: linearizability per key (stateright), no lost acknowledged append,
//! a conserved total (every read and the end) with every acknowledged transfer applied once,
//! tail subscribers without gaps or duplicates, and equal projection digests on every node. Exit code 0 only when every check passed.
//!
//! Local mode starts its own three `kalamdb-server` processes on loopback; `--docker` acts on
//! the containers of `scripts/cluster.sh --docker start`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use kalamdb_benches::chaos::api::{Api, int, rows, uint};
use kalamdb_benches::chaos::check::{self, LinReport, List, Register, Verdict};
use kalamdb_benches::chaos::cluster::{Cluster, Local, NODES};
use kalamdb_benches::chaos::nemesis;
use kalamdb_benches::chaos::tail::Subscriber;
use kalamdb_benches::chaos::transfers::Transfers;
use kalamdb_benches::chaos::workload::{LIST_KEY_SHIFT, Tables, Workload};

/// A client gives up on a request after this long (the server's own write timeout is 10 s,
/// so a live node answers first); the operation's outcome is then unknown.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(12);
/// Bound on setup statements and final reads, retried across nodes.
const SETUP_WAIT: Duration = Duration::from_secs(60);
/// Bound on the subscribers catching up with the final table after the workload.
const CATCH_UP_WAIT: Duration = Duration::from_secs(60);
/// Small snapshot thresholds: a restarted node catches up through snapshots as well as the log.
const SNAPSHOT_TOML: &str = "[raft]\nsnapshot_logs_since_last = 2000\nlogs_to_keep = 500\n";
/// Lines of a violating key's history, and of each node's log, printed on failure.
const PRINT_LINES_MAX: usize = 60;
/// A failed check reprinted at the end is cut here; the full line is above, before the node logs.
const FAILURE_LINE_CHARS_MAX: usize = 2_000;

#[derive(Parser, Debug)]
#[command(name = "kalamdb-chaos", about = "Faults against a 3-node cluster, then a linearizability check")]
struct Args {
    /// Act on the Docker cluster (kalamdb-node1..3 on ports 8081-8083) instead of local processes.
    #[arg(long)]
    docker: bool,
    /// Length of the workload.
    #[arg(long, default_value_t = 300)]
    seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    concurrency: u64,
    /// Seed of the fault schedule and the clients' choices (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Operations per register or list key before the clients move to a fresh key. The
    /// search for a linearization grows steeply with a key's operations of unknown outcome.
    #[arg(long, default_value_t = 30)]
    ops_per_key: u64,
    /// Clients moving amounts between accounts in `BEGIN ... COMMIT` batches (and reading
    /// the total, which must never change), besides the `concurrency` clients.
    #[arg(long, default_value_t = 4)]
    transfer_clients: u64,
    /// Tail subscribers following the list table (spread over the nodes).
    #[arg(long, default_value_t = 3)]
    subscribers: usize,
    /// WebSocket (`/v1/ws`) subscribers following the list table, checked the same way.
    #[arg(long, default_value_t = 3)]
    ws_subscribers: usize,
    /// Time the linearizability search may take in all, per table.
    #[arg(long, default_value_t = 300)]
    check_seconds: u64,
    /// Working folder: node data and logs (local mode), reports.
    #[arg(long, default_value = ".chaos")]
    dir: PathBuf,
    /// The server binary (default: `kalamdb-server` next to this binary).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Keep the working folder after a passing run.
    #[arg(long)]
    keep: bool,
}

/// The verdicts, printed as they are reached.
#[derive(Default)]
struct Checks {
    passed: usize,
    failed: usize,
    /// The failed checks' lines, printed again after the node logs: CI keeps only the output's tail.
    failures: Vec<String>,
}

impl Checks {
    fn record(&mut self, name: &str, result: Result<String, String>) {
        match result {
            Ok(detail) => {
                self.passed += 1;
                println!("check {name}: ok ({detail})");
            }
            Err(why) => {
                self.failed += 1;
                let line = format!("check {name}: FAILED: {why}");
                println!("{line}");
                self.failures.push(line);
            }
        }
    }
}

fn lin_result(r: &LinReport, dir: &std::path::Path, name: &str) -> Result<String, String> {
    let summary = format!(
        "{} keys, {} ops: {} answered, {} of unknown outcome; searched in {:.2} s",
        r.keys, r.ops, r.answered, r.unknown_ops, r.seconds
    );
    let bad: Vec<(&u64, &Verdict)> = r.failures().collect();
    if bad.is_empty() {
        return Ok(summary);
    }
    let mut text = String::new();
    for (k, v) in &bad {
        text.push_str(&format!("key {k}: {v:?}\n"));
    }
    let path = dir.join(format!("violations-{name}.txt"));
    let _ = std::fs::write(&path, &text);
    if let Some((k, Verdict::Violation(lines))) = bad.iter().find(|(_, v)| matches!(v, Verdict::Violation(_))) {
        println!("history of {name} key {k} (no linearization exists):");
        for l in lines.iter().take(PRINT_LINES_MAX) {
            println!("  {l}");
        }
    }
    let kinds: Vec<String> = bad
        .iter()
        .take(10)
        .map(|(k, v)| {
            let what = match v {
                Verdict::Violation(_) => "not linearizable",
                Verdict::Malformed(_) => "malformed history",
                Verdict::Inconclusive => "search did not finish",
                Verdict::Linearizable => "ok",
            };
            format!("key {k}: {what}")
        })
        .collect();
    Err(format!("{} of {} keys: {} ({summary}; all in {})", bad.len(), r.keys, kinds.join(", "), path.display()))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("kalamdb-chaos: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<bool, String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?;
    let seed = args.seed.unwrap_or(now.as_nanos() as u64 % 1_000_000_000);
    let workload_ms = args.seconds * 1000;
    let steps = nemesis::schedule(seed, workload_ms, NODES);
    println!(
        "chaos: seed {seed} ({} mode, {} s, {} clients, {} ops per key); the same --seed replays this schedule:",
        if args.docker { "docker" } else { "local" },
        args.seconds,
        args.concurrency,
        args.ops_per_key
    );
    for s in &steps {
        println!(
            "  at {:>6.1} s: {} node {} for {:.1} s",
            s.at_ms as f64 / 1000.0,
            s.fault,
            s.node,
            s.hold_ms as f64 / 1000.0
        );
    }

    let mut cluster = if args.docker {
        Cluster::Docker
    } else {
        let bin = match &args.server_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("kalamdb-server"),
        };
        if args.dir.exists() {
            std::fs::remove_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
        }
        let mut l = Local::create(&args.dir, &bin, SNAPSHOT_TOML)?;
        for n in 1..=NODES {
            l.start(n)?;
        }
        Cluster::Local(l)
    };
    std::fs::create_dir_all(&args.dir).map_err(|e| e.to_string())?;
    let urls = cluster.urls();
    let api = Api::new(!args.docker, REQUEST_TIMEOUT, args.concurrency as usize * 2);
    cluster.wait_healthy(&api).await?;

    let suffix = now.as_secs() % 1_000_000;
    let tables = Tables { registers: format!("chaos.registers_{suffix}"), lists: format!("chaos.lists_{suffix}") };
    let lists_table = tables.lists.clone();
    let workload = Arc::new(Workload::new(api.clone(), urls.clone(), tables, args.ops_per_key));
    api.sql_until_ok(&urls, "CREATE NAMESPACE IF NOT EXISTS chaos", SETUP_WAIT).await?;
    for sql in workload.create_sql() {
        api.sql_until_ok(&urls, &sql, SETUP_WAIT).await?;
    }

    let transfers = Arc::new(Transfers::new(api.clone(), urls.clone(), format!("chaos.accounts_{suffix}")));
    for sql in transfers.create_sql() {
        api.sql_until_ok(&urls, &sql, SETUP_WAIT).await?;
    }

    let sub_stop = Arc::new(AtomicBool::new(false));
    let mut subs: Vec<(String, Subscriber)> = (0..args.subscribers)
        .map(|i| {
            let s = Subscriber::spawn(urls.clone(), i, lists_table.clone(), !args.docker, sub_stop.clone());
            (format!("tail subscriber {}", i + 1), s)
        })
        .collect();
    subs.extend((0..args.ws_subscribers).map(|i| {
        let s = kalamdb_benches::chaos::ws::spawn(urls.clone(), i, lists_table.clone(), !args.docker, sub_stop.clone());
        (format!("websocket subscriber {}", i + 1), s)
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients: Vec<_> =
        (0..args.concurrency).map(|w| tokio::spawn(workload.clone().client(w, seed, stop.clone()))).collect();
    clients.extend((0..args.transfer_clients).map(|w| tokio::spawn(transfers.clone().client(w, seed, stop.clone()))));

    // The nemesis runs here, on the schedule's clock.
    let started = Instant::now();
    let mut checks = Checks::default();
    let mut nemesis_errors = Vec::new();
    for s in &steps {
        tokio::time::sleep_until((started + Duration::from_millis(s.at_ms)).into()).await;
        if let Err(e) = cluster.inject(&api, s.fault, s.node).await {
            nemesis_errors.push(e);
        }
        println!("  {:>6.1} s: {} node {}", started.elapsed().as_secs_f64(), s.fault, s.node);
        tokio::time::sleep(Duration::from_millis(s.hold_ms)).await;
        if let Err(e) = cluster.repair(&api, s.fault, s.node).await {
            nemesis_errors.push(e);
        }
        println!("  {:>6.1} s: node {} back", started.elapsed().as_secs_f64(), s.node);
    }
    tokio::time::sleep_until((started + Duration::from_millis(workload_ms)).into()).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = c.await;
    }
    let c = &workload.counts;
    let (ok, failed, unknown) =
        (c.ok.load(Ordering::SeqCst), c.failed.load(Ordering::SeqCst), c.unknown.load(Ordering::SeqCst));
    println!(
        "workload: {} operations in {:.1} s ({:.0}/s): {ok} answered, {failed} failed without effect, {unknown} of unknown outcome",
        ok + failed + unknown,
        started.elapsed().as_secs_f64(),
        (ok + failed + unknown) as f64 / started.elapsed().as_secs_f64()
    );
    checks.record(
        "nemesis",
        if nemesis_errors.is_empty() {
            Ok(format!("{} faults injected and repaired", steps.len()))
        } else {
            Err(nemesis_errors.join("; "))
        },
    );

    // Everything is back: all nodes must agree.
    let healthy = cluster.wait_healthy(&api).await;
    let converged = match healthy {
        Ok(()) => cluster
            .wait_converged(&api)
            .await
            .map(|g| format!("{g} groups with equal applied index and digest on {NODES} nodes")),
        Err(e) => Err(e),
    };
    checks.record("digests", converged);

    let final_rows = api
        .sql_until_ok(&urls, &format!("SELECT id FROM {lists_table} ORDER BY _seq"), SETUP_WAIT)
        .await
        .map(|v| rows(&v).iter().filter_map(|r| uint(&r[0])).collect::<Vec<u64>>());
    let present = match final_rows {
        Ok(p) => p,
        Err(e) => {
            checks.record("final read", Err(e));
            Vec::new()
        }
    };
    let sql = format!("SELECT sum(bal), count(*), sum(moves) FROM {}", transfers.table);
    let verdict = match api.sql_until_ok(&urls, &sql, SETUP_WAIT).await {
        Ok(v) => match rows(&v).first() {
            Some(r) => transfers.check_final(
                int(&r[0]).unwrap_or(i64::MIN),
                uint(&r[1]).unwrap_or(0),
                uint(&r[2]).unwrap_or(u64::MAX),
            ),
            None => Err(format!("no row in {v}")),
        },
        Err(e) => Err(e),
    };
    checks.record("transfers", verdict);

    let (attempted, acked) = workload.appends().await;
    let a = check::check_appends(&acked, &attempted, &present);
    checks.record(
        "acknowledged appends",
        if a.lost.is_empty() && a.unexpected.is_empty() && a.duplicated.is_empty() {
            Ok(format!("{} acknowledged, {} present, {} attempted", a.acknowledged, a.present, attempted.len()))
        } else {
            Err(format!(
                "lost {:?}, never attempted {:?}, duplicated {:?} (first 10 each)",
                &a.lost[..a.lost.len().min(10)],
                &a.unexpected[..a.unexpected.len().min(10)],
                &a.duplicated[..a.duplicated.len().min(10)]
            ))
        },
    );

    // Subscribers: let them reach the end of the table, then compare.
    let deadline = Instant::now() + CATCH_UP_WAIT;
    while Instant::now() < deadline {
        let mut behind = false;
        for (_, s) in &subs {
            if s.received.lock().await.events.len() < present.len() {
                behind = true;
            }
        }
        if !behind {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sub_stop.store(true, Ordering::SeqCst);
    for (name, s) in subs {
        let r = s.join().await;
        let verdict = if r.errors.is_empty() {
            check::check_tail(&r.events, &present)
                .map(|()| format!("{} rows in commit order, {} reconnects", r.events.len(), r.reconnects))
        } else {
            Err(r.errors.join("; "))
        };
        checks.record(&name, verdict);
    }

    // Linearizability, per key, of everything the clients saw.
    let (regs, lists) = {
        let h = workload.history.lock().await;
        (h.registers.clone(), h.lists.clone())
    };
    let budget = Duration::from_secs(args.check_seconds);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let r = check::check_linearizable(Register::default(), &regs, threads, budget);
    checks.record("linearizable registers", lin_result(&r, &args.dir, "registers"));
    // Appends take their positions from the final committed order of each key's list.
    let mut final_lists: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for id in &present {
        final_lists.entry(id >> LIST_KEY_SHIFT).or_default().push(*id);
    }
    let lists = check::place_appends(&lists, &final_lists);
    let r = check::check_linearizable(List::default(), &lists, threads, budget);
    checks.record("linearizable lists", lin_result(&r, &args.dir, "lists"));

    let passed = checks.failed == 0;
    if let Cluster::Local(l) = &cluster
        && !passed
    {
        for n in 1..=NODES {
            println!("----- node {n} log ({}; last {PRINT_LINES_MAX} lines) -----", l.log_path(n).display());
            println!("{}", l.tail_of_log(n, PRINT_LINES_MAX));
        }
    }
    let local = matches!(cluster, Cluster::Local(_));
    drop(cluster);
    if passed && local && !args.keep {
        let _ = std::fs::remove_dir_all(&args.dir);
    } else {
        println!("chaos: working folder kept: {}", args.dir.display());
    }
    println!("chaos: seed {seed}");
    for line in &checks.failures {
        let cut: String = line.chars().take(FAILURE_LINE_CHARS_MAX).collect();
        println!("{cut}");
    }
    println!("{} passed, {} failed", checks.passed, checks.failed);
    Ok(passed)
}
