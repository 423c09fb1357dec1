//! `kalamdb-cold`: the cold-storage benchmark. Loads rows over HTTP, flushes them to Parquet
//! (timed: flush throughput), then times an aggregation and a selective filter over HTTP.
//! `scripts/bench-cold.sh` runs it and DuckDB on the very same Parquet files.
//! Loopback targets only; every loop is bounded by the row count and the run count.

use std::time::{Duration, Instant};

use clap::Parser;
use kalamdb_benches::{HttpClient, check_loopback, client, post_json};

/// The two timed queries; DuckDB runs the same text over `read_parquet(...)`.
const AGGREGATE_SQL: &str =
    "SELECT category, count(*), sum(amount), avg(amount) FROM {t} GROUP BY category ORDER BY category";
const FILTER_SQL: &str = "SELECT count(*), sum(amount) FROM {t} WHERE category = 'c3' AND amount > 990.0";

#[derive(Parser, Debug)]
#[command(name = "kalamdb-cold", about = "Load, flush and query benchmark for KalamDB's cold storage")]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Rows to load (the figure is 10,000,000).
    #[arg(long, default_value_t = 10_000_000)]
    rows: u64,
    /// Rows per INSERT statement.
    #[arg(long, default_value_t = 20_000)]
    batch_rows: u64,
    /// Concurrent loading clients.
    #[arg(long, default_value_t = 2)]
    clients: u64,
    /// Timed runs per query (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Only run the queries, over a table an earlier run loaded and flushed (e.g. after a
    /// restart with an empty bucket cache: the first run then fetches every file).
    #[arg(long)]
    queries_only: bool,
}

async fn sql(client: &HttpClient, url: &str, text: &str) -> Result<serde_json::Value, String> {
    let body = serde_json::json!({ "sql": text }).to_string();
    let bytes = post_json(client, url, "/v1/api/sql", body).await?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// Row `i` of the data set: deterministic, so DuckDB and we agree on every answer.
fn row(i: u64) -> String {
    let category = (i * 7) % 10;
    let amount = ((i * 7919) % 100_000) as f64 / 100.0;
    let ts_ms = 1_700_000_000_000 + i * 1000;
    format!("({i},'u{}','c{category}',{amount:.2},{ts_ms})", i % 1000)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let url = args.url.trim_end_matches('/').to_string();
    check_loopback(&url)?;
    if args.runs == 0 || args.clients == 0 || args.batch_rows == 0 {
        return Err("--runs, --clients and --batch-rows must be at least 1".into());
    }
    let client: HttpClient = client(args.clients as usize);
    let table = "coldbench.orders";
    if !args.queries_only {
        load_and_flush(&client, &url, table, &args).await?;
    }
    for (name, template) in [("aggregate", AGGREGATE_SQL), ("filter", FILTER_SQL)] {
        let text = template.replace("{t}", table);
        let mut times = Vec::with_capacity(args.runs);
        let mut answer = serde_json::Value::Null;
        for _ in 0..args.runs {
            let t = Instant::now();
            let r = sql(&client, &url, &text).await?;
            times.push(t.elapsed().as_secs_f64());
            answer = r["results"][0]["rows"].clone();
        }
        let first = times[0];
        println!("query {name} median_s={:.4} first_s={first:.4} runs={} answer={answer}", median(times), args.runs);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Create the table, load `args.rows` rows and flush them in one timed FLUSH.
async fn load_and_flush(client: &HttpClient, url: &str, table: &'static str, args: &Args) -> Result<(), String> {
    let (client, url) = (client.clone(), url.to_string());
    sql(&client, &url, "CREATE NAMESPACE IF NOT EXISTS coldbench").await?;
    // No automatic flush during the load: the benchmark times one explicit flush.
    sql(
        &client,
        &url,
        &format!(
            "CREATE TABLE {table} (id BIGINT PRIMARY KEY, user_id TEXT, category TEXT, amount DOUBLE, ts TIMESTAMP) \
             WITH (TYPE = 'SHARED', FLUSH_POLICY = 'rows:1000000000')"
        ),
    )
    .await?;

    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let (client, url, a) = (client.clone(), url.clone(), (args.rows, args.batch_rows, args.clients));
        tasks.push(tokio::spawn(async move {
            let (rows, batch, clients) = a;
            let mut start = c * batch;
            while start < rows {
                let end = (start + batch).min(rows);
                let values: Vec<String> = (start..end).map(row).collect();
                let text =
                    format!("INSERT INTO {table} (id, user_id, category, amount, ts) VALUES {}", values.join(","));
                sql(&client, &url, &text).await?;
                start += batch * clients;
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let load_s = started.elapsed().as_secs_f64();
    println!("load rows={} seconds={load_s:.1} rows_per_s={:.0}", args.rows, args.rows as f64 / load_s);

    let t = Instant::now();
    let r = sql(&client, &url, &format!("FLUSH TABLE {table}")).await?;
    let flush_s = t.elapsed().as_secs_f64();
    println!(
        "flush seconds={flush_s:.2} rows_per_s={:.0} message={}",
        args.rows as f64 / flush_s,
        r["results"][0]["message"]
    );
    let r = sql(&client, &url, "SELECT files, rows, bytes FROM system.jobs WHERE namespace_id = 'coldbench'").await?;
    println!("files {}", r["results"][0]["rows"]);
    Ok(())
}
