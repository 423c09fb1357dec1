//! `kalamdb-tail`: commit → subscriber latency of the tail endpoint. `--subscribers` NDJSON
//! subscriptions (spread over `--url`s) follow one table while a paced writer inserts
//! `--rate` rows per second in multi-row INSERTs. Each event's latency is the time from the
//! leader's commit stamp (`committed_at_micros`, taken when it proposed the entry, so the
//! figure includes replication, fsync and apply) to its arrival at the subscriber. Bounded by
//! `--seconds`; loopback targets only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use kalamdb_benches::{HttpClient, ROOT_BASIC, client, percentile_ms, post_json};
use tokio::sync::Mutex;

#[derive(Parser, Debug)]
#[command(name = "kalamdb-tail", about = "Commit-to-subscriber latency of GET /v1/api/tail")]
struct Args {
    /// Base URL(s), comma-separated: subscribers are spread over them, writes go to the first.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Rows (events) written per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Rows per INSERT statement.
    #[arg(long, default_value_t = 20)]
    batch: u64,
    /// Measured seconds (after a 2 s warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// INSERT statements in flight at most (the writer never queues more).
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Also print the figures as one JSON object (last line).
    #[arg(long)]
    json: bool,
    /// How subscribers follow the table: `ndjson` (the tail endpoint) or `ws` (`/v1/ws`
    /// live queries in KalamDB's protocol).
    #[arg(long, default_value = "ndjson")]
    protocol: String,
    /// Also print where in time the events slower than the p99 fell: the worst 100 ms
    /// windows, to tell a few stalls from a latency spread over the whole run.
    #[arg(long)]
    windows: bool,
}

/// One measured event: when it arrived (µs since the epoch) and its latency (µs).
type Sample = (i64, u64);

/// Width of the windows `--windows` groups slow events by.
const WINDOW_MICROS: i64 = 100_000;
/// Windows `--windows` lists.
const WINDOWS_SHOWN: usize = 8;

/// Print how the events slower than `p99_us` spread over 100 ms windows.
fn print_windows(samples: &[Sample], p99_us: u64) {
    let Some(start) = samples.iter().map(|s| s.0).min() else { return };
    let mut windows: std::collections::BTreeMap<i64, (u64, u64, u64)> = std::collections::BTreeMap::new();
    for &(at, latency) in samples {
        let w = windows.entry((at - start) / WINDOW_MICROS).or_default();
        w.0 += 1;
        if latency > p99_us {
            w.1 += 1;
        }
        w.2 = w.2.max(latency);
    }
    let slow: u64 = windows.values().map(|w| w.1).sum();
    let mut by_slow: Vec<(i64, (u64, u64, u64))> = windows.iter().map(|(k, v)| (*k, *v)).collect();
    by_slow.sort_unstable_by_key(|(_, w)| std::cmp::Reverse(w.1));
    let with_slow = by_slow.iter().filter(|(_, w)| w.1 > 0).count();
    let top: u64 = by_slow.iter().take(WINDOWS_SHOWN).map(|(_, w)| w.1).sum();
    println!(
        "events over the p99: {slow} in {with_slow} of {} windows of {} ms; the worst {WINDOWS_SHOWN} hold {:.0}%",
        windows.len(),
        WINDOW_MICROS / 1000,
        100.0 * top as f64 / slow.max(1) as f64
    );
    for (k, (events, over, max)) in by_slow.iter().take(WINDOWS_SHOWN) {
        println!(
            "  at {:>6.1} s: {over} of {events} events over the p99, max {:.1} ms",
            (*k * WINDOW_MICROS) as f64 / 1e6,
            *max as f64 / 1000.0
        );
    }
}

fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// The number after `key` (e.g. `"committed_at_micros":`) in an NDJSON line, without parsing
/// the whole event. The generator shares the cores with the server and reads a million lines
/// a second: a byte-at-a-time search here cost most of a core and showed up in the latencies.
fn field_i64(line: &[u8], key: &memchr::memmem::Finder<'_>) -> Option<i64> {
    let at = key.find(line)? + key.needle().len();
    let rest = &line[at..];
    let end = rest.iter().position(|b| !(b.is_ascii_digit() || *b == b'-')).unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

async fn subscribe(
    url: String,
    path: String,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Vec<Sample>>>,
) -> Result<u64, String> {
    let c: HttpClient = client(1);
    let req = hyper::Request::get(format!("{url}{path}"))
        .header("authorization", ROOT_BASIC)
        .header("accept", "application/x-ndjson")
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = c.request(req).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("subscribe: HTTP {}", resp.status()));
    }
    let mut body = resp.into_body();
    let committed_key = memchr::memmem::Finder::new(b"\"committed_at_micros\":");
    let overflow_key = memchr::memmem::Finder::new(b"\"overflow\"");
    // The unfinished last line of the previous frame.
    let mut partial: Vec<u8> = Vec::with_capacity(1 << 16);
    let mut local = Vec::with_capacity(1 << 16);
    let mut events = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let frame = match tokio::time::timeout(Duration::from_millis(200), body.frame()).await {
            Ok(Some(Ok(f))) => f,
            Ok(_) => return Err("the stream ended".into()),
            Err(_) => continue,
        };
        let Ok(data) = frame.into_data() else { continue };
        let received = now_micros();
        let mut rest: &[u8] = &data;
        let mut line_of = |line: &[u8]| -> Result<(), String> {
            if let Some(committed) = field_i64(line, &committed_key) {
                events += 1;
                if measuring.load(Ordering::Relaxed) {
                    local.push((received, (received - committed).max(0) as u64));
                }
            } else if overflow_key.find(line).is_some() {
                return Err("the server cut this subscriber off (overflow)".into());
            }
            Ok(())
        };
        if !partial.is_empty() {
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                partial.extend_from_slice(rest);
                continue;
            };
            partial.extend_from_slice(&rest[..nl]);
            line_of(&partial)?;
            partial.clear();
            rest = &rest[nl + 1..];
        }
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            line_of(&rest[..nl])?;
            rest = &rest[nl + 1..];
        }
        partial.extend_from_slice(rest);
    }
    out.lock().await.extend(local);
    Ok(events)
}

/// A `/v1/ws` subscriber: a live query on the table (no initial data), latency from each
/// change message's `committed_at_micros`.
async fn subscribe_ws(
    url: String,
    table: String,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Vec<Sample>>>,
) -> Result<u64, String> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("{}/v1/ws?compress=false", url.replacen("http://", "ws://", 1))
        .into_client_request()
        .map_err(|e| e.to_string())?;
    req.headers_mut().insert("authorization", ROOT_BASIC.parse().map_err(|_| "header")?);
    let (mut socket, _) = tokio_tungstenite::connect_async(req).await.map_err(|e| e.to_string())?;
    let sub =
        serde_json::json!({"type": "subscribe", "subscription": {"id": "b", "sql": format!("SELECT * FROM {table}")}});
    socket.send(Message::Text(sub.to_string().into())).await.map_err(|e| e.to_string())?;
    let committed_key = memchr::memmem::Finder::new(b"\"committed_at_micros\":");
    let mut local = Vec::with_capacity(1 << 16);
    let mut events = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let frame = match tokio::time::timeout(Duration::from_millis(200), socket.next()).await {
            Ok(Some(Ok(f))) => f,
            Ok(_) => return Err("the connection ended".into()),
            Err(_) => continue,
        };
        let received = now_micros();
        let Message::Text(text) = frame else { continue };
        let line = text.as_bytes();
        if let Some(committed) = field_i64(line, &committed_key) {
            // One message holds the rows of one statement: one event (and sample) per row.
            let rows = memchr::memmem::find_iter(line, b"\"_seq\":").count().max(1) as u64;
            events += rows;
            if measuring.load(Ordering::Relaxed) {
                let latency = (received - committed).max(0) as u64;
                local.extend(std::iter::repeat_n((received, latency), rows as usize));
            }
        } else if memchr::memmem::find(line, b"\"error\"").is_some() {
            return Err(format!("the server refused the subscription: {text}"));
        }
    }
    out.lock().await.extend(local);
    Ok(events)
}

/// The cumulative buckets (upper bound in seconds, count) of one histogram on `/metrics`.
async fn histogram(client: &HttpClient, url: &str, name: &str) -> Result<Vec<(f64, u64)>, String> {
    let req = hyper::Request::get(format!("{url}/metrics"))
        .header("authorization", ROOT_BASIC)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    let prefix = format!("{name}_bucket{{le=\"");
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else { continue };
        let Some((le, count)) = rest.split_once("\"} ") else { continue };
        let le = if le == "+Inf" { f64::INFINITY } else { le.parse().map_err(|_| format!("bad bucket {le}"))? };
        out.push((le, count.trim().parse().map_err(|_| format!("bad count {count}"))?));
    }
    Ok(out)
}

/// The bucket bound (ms) under which a fraction `p` of the observations between two scrapes
/// of one histogram (summed over nodes) fell.
fn bucket_percentile_ms(before: &[(f64, u64)], after: &[(f64, u64)], p: f64) -> Option<f64> {
    let delta: Vec<(f64, u64)> = after
        .iter()
        .map(|(le, n)| (*le, n.saturating_sub(before.iter().find(|(b, _)| b == le).map_or(0, |(_, m)| *m))))
        .collect();
    // Nothing observed (a `/v1/ws` run): no figure.
    let total = delta.last().map(|(_, n)| *n).filter(|n| *n > 0)?;
    delta.iter().find(|(_, n)| *n as f64 >= p * total as f64).map(|(le, _)| le * 1000.0)
}

/// `histogram` of every node, summed bucket by bucket.
async fn histogram_all(client: &HttpClient, urls: &[String], name: &str) -> Result<Vec<(f64, u64)>, String> {
    let mut sum: Vec<(f64, u64)> = Vec::new();
    for url in urls {
        for (le, n) in histogram(client, url, name).await? {
            match sum.iter_mut().find(|(b, _)| *b == le) {
                Some(slot) => slot.1 += n,
                None => sum.push((le, n)),
            }
        }
    }
    Ok(sum)
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let urls = kalamdb_benches::parse_urls(&args.url)?;
    let writer: HttpClient = client(args.in_flight);
    let sql = |s: &str| serde_json::json!({ "sql": s }).to_string();
    let table = format!("bench.tail_{}", std::process::id());
    post_json(&writer, &urls[0], "/v1/api/sql", sql("CREATE NAMESPACE IF NOT EXISTS bench")).await?;
    post_json(
        &writer,
        &urls[0],
        "/v1/api/sql",
        sql(&format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY, v BIGINT) WITH (TYPE = 'SHARED')")),
    )
    .await?;
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut subs = Vec::new();
    if !matches!(args.protocol.as_str(), "ndjson" | "ws") {
        return Err(format!("--protocol is ndjson or ws, not {}", args.protocol));
    }
    for i in 0..args.subscribers {
        let url = urls[i % urls.len()].clone();
        let (m, st, l) = (measuring.clone(), stop.clone(), latencies.clone());
        subs.push(if args.protocol == "ws" {
            tokio::spawn(subscribe_ws(url, table.clone(), m, st, l))
        } else {
            tokio::spawn(subscribe(url, format!("/v1/api/tail?table={table}"), m, st, l))
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Paced writer: one statement of `batch` rows every `batch / rate` seconds.
    let interval = Duration::from_secs_f64(args.batch as f64 / args.rate as f64);
    let slots = Arc::new(tokio::sync::Semaphore::new(args.in_flight));
    let written = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let skipped = Arc::new(AtomicU64::new(0));
    let warmup = Duration::from_secs(2);
    let total = warmup + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut next_id = 0u64;
    let mut measured_from = None;
    let lag = "kalamdb_tail_delivery_lag_seconds";
    let mut lag_before = Vec::new();
    while started.elapsed() < total {
        tick.tick().await;
        if measured_from.is_none() && started.elapsed() >= warmup {
            lag_before = histogram_all(&writer, &urls, lag).await?;
            measuring.store(true, Ordering::SeqCst);
            measured_from = Some((Instant::now(), written.load(Ordering::SeqCst)));
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // The server is not keeping up with the rate: count it rather than queue.
            skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let values: Vec<String> = (0..args.batch).map(|k| format!("({}, {k})", next_id + k)).collect();
        next_id += args.batch;
        let body = sql(&format!("INSERT INTO {table} (id, v) VALUES {}", values.join(", ")));
        let (w, f, url, c, n) = (written.clone(), failed.clone(), urls[0].clone(), writer.clone(), args.batch);
        tokio::spawn(async move {
            match post_json(&c, &url, "/v1/api/sql", body).await {
                Ok(_) => w.fetch_add(n, Ordering::Relaxed),
                Err(_) => f.fetch_add(1, Ordering::Relaxed),
            };
            drop(permit);
        });
    }
    let (t0, w0) = measured_from.unwrap_or((started, 0));
    let secs = t0.elapsed().as_secs_f64();
    let rows = written.load(Ordering::SeqCst) - w0;
    // Let the last events arrive before stopping the subscribers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    measuring.store(false, Ordering::SeqCst);
    let lag_after = histogram_all(&writer, &urls, lag).await?;
    stop.store(true, Ordering::SeqCst);
    let mut events = 0u64;
    let mut broken = 0;
    for s in subs {
        match s.await {
            Ok(Ok(n)) => events += n,
            Ok(Err(e)) => {
                broken += 1;
                eprintln!("subscriber: {e}");
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    let samples = std::mem::take(&mut *latencies.lock().await);
    let mut l: Vec<u64> = samples.iter().map(|s| s.1).collect();
    l.sort_unstable();
    println!(
        "tail ({}): {} subscribers on {} node(s), {:.0} rows/s written ({} statements failed, {} ticks skipped), {} events delivered ({} broken subscribers)",
        args.protocol,
        args.subscribers,
        urls.len(),
        rows as f64 / secs,
        failed.load(Ordering::SeqCst),
        skipped.load(Ordering::SeqCst),
        events,
        broken
    );
    println!(
        "commit->subscriber latency over {} events: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        l.len(),
        percentile_ms(&l, 0.50),
        percentile_ms(&l, 0.99),
        percentile_ms(&l, 0.999),
        percentile_ms(&l, 1.0)
    );
    if args.windows {
        let p99_us = l.get(((l.len().max(1) - 1) as f64 * 0.99).round() as usize).copied().unwrap_or(0);
        print_windows(&samples, p99_us);
    }
    // The server's share (commit stamp to the hand-over of a chunk to its connection), by
    // bucket bound; `/v1/ws` does not record it.
    let server = |p| bucket_percentile_ms(&lag_before, &lag_after, p);
    if let (Some(p50), Some(p99)) = (server(0.50), server(0.99)) {
        println!(
            "server share (commit -> chunk handed to the connection, bucket bounds): p50 <= {p50} ms, p99 <= {p99} ms"
        );
    }
    if args.json {
        let v = serde_json::json!({
            "workload": if args.protocol == "ws" { "tail_ws" } else { "tail" },
            "subscribers": args.subscribers,
            "nodes": urls.len(),
            "rows_per_sec": rows as f64 / secs,
            "events": events,
            "p50_ms": percentile_ms(&l, 0.50),
            "p99_ms": percentile_ms(&l, 0.99),
            "p999_ms": percentile_ms(&l, 0.999),
            "server_p99_ms_bound": server(0.99),
        });
        println!("{v}");
    }
    if broken > 0 {
        return Err(format!("{broken} subscribers broke"));
    }
    Ok(())
}
