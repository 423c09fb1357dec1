//! `kalamdb-load`: an HTTP load generator for KalamDB's SQL API (and, for peers, any
//! endpoint taking a JSON POST). Closed loop: each client sends its next request when the
//! previous one answers. Bounded by duration and request count; loopback targets only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use kalamdb_benches::{HttpClient, PostError, ROOT_BASIC, client, percentile_ms, post_json_as};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Workload {
    /// Single-row INSERTs with unique keys into a SHARED table (one shared shard).
    Insert,
    /// Single-row INSERTs into a USER table, one user (logged in, bearer token) per client:
    /// the rows spread over every user shard, as an app's end users' writes do.
    UserInsert,
    /// Point SELECTs by primary key over preloaded rows.
    Select,
    /// Multi-row INSERTs of `--batch-rows` rows each (reports rows/s).
    Bulk,
    /// Peer comparison: etcd v3 puts of unique keys through its HTTP/JSON gateway.
    EtcdPut,
}

#[derive(Parser, Debug)]
#[command(name = "kalamdb-load", about = "HTTP load generator for KalamDB")]
struct Args {
    /// Base URL of the server, or a comma-separated list (clients are spread round-robin
    /// over them). Loopback only.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, value_enum, default_value = "insert")]
    workload: Workload,
    /// Concurrent clients (one keep-alive connection each).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Measured seconds (after warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Warm-up seconds, not measured.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Rows preloaded for `select`, rows per statement for `bulk`.
    #[arg(long, default_value_t = 10_000)]
    rows: usize,
    #[arg(long, default_value_t = 1000)]
    batch_rows: usize,
    /// Hard cap on requests per client, so a run always ends.
    #[arg(long, default_value_t = 10_000_000)]
    requests_max: u64,
    /// Print one JSON object instead of the key=value line (for `scripts/bench-all.sh`).
    #[arg(long)]
    json: bool,
    /// While the workload runs, one more client repeats this statement back to back: the
    /// noisy neighbour of `scripts/bench-hostile.sh` (e.g. a query that only ends at the
    /// server's deadline).
    #[arg(long)]
    hostile: Option<String>,
    /// On a connection that cannot be made (a node restarting), send the request to the next
    /// URL of `--url`, as a cluster-aware client does; only a request that reached a server
    /// and failed, or found no server at all, counts as an error.
    #[arg(long)]
    failover: bool,
    /// The `consistency` of each measured SQL request (`local` skips the read barriers a
    /// statement takes first): what those round trips cost, measured.
    #[arg(long)]
    consistency: Option<String>,
}

async fn post(client: &HttpClient, url: &str, sql: String) -> Result<(), String> {
    kalamdb_benches::post_json(client, url, "/v1/api/sql", sql_body(sql)).await.map(|_| ())
}

fn sql_body(sql: String) -> String {
    serde_json::json!({ "sql": sql }).to_string()
}

/// A measured request's body: the statement, with the run's `--consistency` if one was given.
fn measured_body(sql: String, consistency: Option<&str>) -> String {
    match consistency {
        Some(c) => serde_json::json!({ "sql": sql, "consistency": c }).to_string(),
        None => sql_body(sql),
    }
}

/// Creates one user per client and logs each in: the `Authorization` values of the
/// `user-insert` clients.
async fn user_tokens(client: &HttpClient, url: &str, clients: usize) -> Result<Vec<String>, String> {
    let pid = std::process::id();
    let mut tokens = Vec::with_capacity(clients);
    for c in 0..clients {
        let (user, password) = (format!("bench_{pid}_{c}"), format!("bench-password-{pid}-{c}"));
        post(client, url, format!("CREATE USER IF NOT EXISTS '{user}' WITH PASSWORD '{password}' ROLE user")).await?;
        let body = serde_json::json!({ "user": user, "password": password }).to_string();
        let answer = post_json_as(client, url, "/v1/api/auth/login", body, None).await.map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
        let token = v["access_token"].as_str().ok_or_else(|| format!("login of {user}: no access_token: {v}"))?;
        tokens.push(format!("Bearer {token}"));
    }
    Ok(tokens)
}

/// One request of a client: its URL first, then (with `failover`) the others in turn while
/// no connection can be made.
async fn send(
    client: &HttpClient,
    urls: &[String],
    first: usize,
    failover: bool,
    (path, body, auth): (&str, String, Option<&str>),
) -> Result<(), String> {
    let tries = if failover { urls.len() } else { 1 };
    let mut last = String::new();
    for i in 0..tries {
        match post_json_as(client, &urls[(first + i) % urls.len()], path, body.clone(), auth).await {
            Ok(_) => return Ok(()),
            Err(PostError::Unsent(e)) => last = e,
            Err(PostError::Failed(e)) => return Err(e),
        }
    }
    Err(format!("no server reachable: {last}"))
}

/// Creates what the workload writes to or reads from; returns the table's name.
async fn prepare(client: &HttpClient, url: &str, args: &Args) -> Result<String, String> {
    let table = format!("bench.t{}", std::process::id());
    let kind = match args.workload {
        Workload::EtcdPut => return Ok(table),
        Workload::UserInsert => "USER",
        Workload::Insert | Workload::Select | Workload::Bulk => "SHARED",
    };
    post(client, url, "CREATE NAMESPACE IF NOT EXISTS bench".into()).await?;
    post(client, url, format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY, v TEXT) WITH (TYPE = '{kind}')")).await?;
    if matches!(args.workload, Workload::Select) {
        for chunk in (0..args.rows).collect::<Vec<_>>().chunks(1000) {
            let values: Vec<String> = chunk.iter().map(|i| format!("({i}, 'value-{i}')")).collect();
            post(client, url, format!("INSERT INTO {table} (id, v) VALUES {}", values.join(","))).await?;
        }
    }
    Ok(table)
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let urls = kalamdb_benches::parse_urls(&args.url)?;
    let client: HttpClient = client(args.clients);
    let url = urls[0].clone();
    let table = prepare(&client, &url, &args).await?;
    let tokens = if matches!(args.workload, Workload::UserInsert) {
        user_tokens(&client, &url, args.clients).await?
    } else {
        vec![]
    };
    // Scripts that disturb the cluster during a run (bench-leaders.sh's rolling restart) wait
    // for this line: the table and the users' logins are set up, the workload starts.
    eprintln!("kalamdb-load: prepared");
    let next_key = Arc::new(AtomicU64::new(1_000_000_000));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_at = Instant::now() + Duration::from_secs(args.warmup + args.seconds);
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let (client, urls, table, next_key, measuring) =
            (client.clone(), urls.clone(), table.clone(), next_key.clone(), measuring.clone());
        let a = (args.workload, args.rows, args.batch_rows, args.requests_max, args.failover);
        let auth = tokens.get(c).cloned();
        let consistency = args.consistency.clone();
        tasks.push(tokio::spawn(async move {
            let (workload, rows, batch_rows, requests_max, failover) = a;
            // Our API gets root (or the client's user); peers (etcd) no header.
            let auth = auth.as_deref().or(Some(ROOT_BASIC).filter(|_| !matches!(workload, Workload::EtcdPut)));
            let mut lat_us = Vec::new();
            let mut errors = 0u64;
            let mut sent = 0u64;
            while Instant::now() < stop_at && sent < requests_max {
                let (path, body) = match workload {
                    Workload::Insert | Workload::UserInsert => {
                        let k = next_key.fetch_add(1, Ordering::Relaxed);
                        let sql = format!("INSERT INTO {table} (id, v) VALUES ({k}, 'v{k}')");
                        ("/v1/api/sql", measured_body(sql, consistency.as_deref()))
                    }
                    Workload::Select => (
                        "/v1/api/sql",
                        measured_body(
                            format!("SELECT * FROM {table} WHERE id = {}", fastrand::usize(0..rows.max(1))),
                            consistency.as_deref(),
                        ),
                    ),
                    Workload::Bulk => {
                        let k = next_key.fetch_add(batch_rows as u64, Ordering::Relaxed);
                        let values: Vec<String> = (k..k + batch_rows as u64).map(|i| format!("({i},'v{i}')")).collect();
                        let sql = format!("INSERT INTO {table} (id, v) VALUES {}", values.join(","));
                        ("/v1/api/sql", measured_body(sql, consistency.as_deref()))
                    }
                    Workload::EtcdPut => {
                        use base64::Engine as _;
                        let k = next_key.fetch_add(1, Ordering::Relaxed);
                        let b64 = base64::engine::general_purpose::STANDARD;
                        let body = serde_json::json!({
                            "key": b64.encode(format!("bench/{k}")),
                            "value": b64.encode(format!("v{k}")),
                        });
                        ("/v3/kv/put", body.to_string())
                    }
                };
                let t = Instant::now();
                let ok = send(&client, &urls, c, failover, (path, body, auth)).await;
                sent += 1;
                if measuring.load(Ordering::Relaxed) {
                    match ok {
                        Ok(()) => lat_us.push(t.elapsed().as_micros() as u64),
                        Err(e) => {
                            if errors == 0 {
                                eprintln!("error: {e}");
                            }
                            errors += 1;
                        }
                    }
                }
            }
            (lat_us, errors)
        }));
    }
    let hostile = args.hostile.clone().map(|sql| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let mut answered = 0u64;
            while Instant::now() < stop_at {
                // Errors are the expected answer (QUERY_TIMEOUT and the like): count answers.
                let _ = post(&client, &url, sql.clone()).await;
                answered += 1;
            }
            answered
        })
    });
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.map_err(|e| e.to_string())?;
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let hostile_answered = match hostile {
        Some(h) => Some(h.await.map_err(|e| e.to_string())?),
        None => None,
    };
    all.sort_unstable();
    let ops = all.len() as f64 / elapsed;
    let rows_per_op = if matches!(args.workload, Workload::Bulk) { args.batch_rows as f64 } else { 1.0 };
    if args.json {
        let v = serde_json::json!({
            "workload": format!("{:?}", args.workload).to_lowercase(),
            "clients": args.clients,
            "seconds": elapsed,
            "requests": all.len(),
            "errors": errors,
            "ops_per_sec": ops,
            "rows_per_sec": ops * rows_per_op,
            "p50_ms": percentile_ms(&all, 0.50),
            "p99_ms": percentile_ms(&all, 0.99),
            "p999_ms": percentile_ms(&all, 0.999),
            "hostile_answered": hostile_answered,
        });
        println!("{v}");
        return Ok(());
    }
    let hostile_note = hostile_answered.map(|n| format!(" hostile_answered={n}")).unwrap_or_default();
    println!(
        "workload={:?} clients={} seconds={:.1} requests={} errors={} req/s={:.0} rows/s={:.0} p50_ms={:.3} p99_ms={:.3} p999_ms={:.3}{hostile_note}",
        args.workload,
        args.clients,
        elapsed,
        all.len(),
        errors,
        ops,
        ops * rows_per_op,
        percentile_ms(&all, 0.50),
        percentile_ms(&all, 0.99),
        percentile_ms(&all, 0.999),
    );
    Ok(())
}
