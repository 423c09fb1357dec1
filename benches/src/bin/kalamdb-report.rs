//! `kalamdb-report`: turns the records of one `scripts/bench-all.sh` run (JSON lines, one per
//! measurement, ours and the peers') into the comparison table (printed), a JSON file and an
//! SVG chart under `benches/results/`. Every row puts our figure next to the peer's from the
//! same run, or next to its target, as a ratio oriented so that above 1 is better.

use std::path::PathBuf;

use clap::Parser;
use plotters::prelude::*;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(name = "kalamdb-report", about = "Table, JSON and chart of one benchmark run")]
struct Args {
    /// The run's records (JSON lines).
    #[arg(long)]
    input: PathBuf,
    /// Where `<date>.json` and `<date>.svg` go.
    #[arg(long, default_value = "benches/results")]
    out_dir: PathBuf,
    #[arg(long)]
    date: String,
    #[arg(long, default_value = "")]
    commit: String,
}

/// One line of the comparison.
struct Row {
    name: String,
    unit: &'static str,
    ours: f64,
    /// The peer's figure from the same run, or the target.
    other: f64,
    against: String,
    higher_is_better: bool,
    target: String,
}

impl Row {
    /// Above 1 is better for us.
    fn score(&self) -> f64 {
        if self.higher_is_better { self.ours / self.other } else { self.other / self.ours }
    }
}

fn find<'a>(
    records: &'a [Value],
    system: &str,
    setup: &str,
    workload: &str,
    clients: Option<u64>,
) -> Option<&'a Value> {
    records.iter().find(|r| {
        r["system"] == system
            && r["setup"] == setup
            && r["result"]["workload"] == workload
            && clients.is_none_or(|c| r["result"]["clients"].as_u64() == Some(c))
    })
}

fn num(r: Option<&Value>, key: &str) -> Option<f64> {
    r.and_then(|r| r["result"][key].as_f64())
}

fn rows(records: &[Value]) -> Vec<Row> {
    let mut out = Vec::new();
    let ours64 = find(records, "kalamdb", "cluster", "insert", Some(64));
    let etcd64 = find(records, "etcd", "cluster", "etcdput", Some(64));
    if let (Some(a), Some(b)) = (num(ours64, "ops_per_sec"), num(etcd64, "ops_per_sec")) {
        out.push(Row {
            name: "single-row writes, 64 clients".into(),
            unit: "ops/s",
            ours: a,
            other: b,
            against: "etcd".into(),
            higher_is_better: true,
            target: "≥ 1.5× etcd".into(),
        });
    }
    let ours1 = find(records, "kalamdb", "cluster", "insert", Some(1));
    let etcd1 = find(records, "etcd", "cluster", "etcdput", Some(1));
    for (key, label, target) in [("p50_ms", "p50", ""), ("p99_ms", "p99", "≤ etcd"), ("p999_ms", "p99.9", "")] {
        if let (Some(a), Some(b)) = (num(ours1, key), num(etcd1, key)) {
            out.push(Row {
                name: format!("single-row write latency {label}, 1 client"),
                unit: "ms",
                ours: a,
                other: b,
                against: "etcd".into(),
                higher_is_better: false,
                target: target.into(),
            });
        }
    }
    if let Some(a) = num(find(records, "kalamdb", "cluster", "bulk", None), "rows_per_sec") {
        out.push(Row {
            name: "bulk ingest, 3 nodes".into(),
            unit: "rows/s",
            ours: a,
            other: 200_000.0,
            against: "target".into(),
            higher_is_better: true,
            target: "≥ 200,000 rows/s".into(),
        });
    }
    leadership_rows(records, &mut out);
    for (setup, what) in [("single", "hot rows"), ("single-flushed", "flushed rows")] {
        if let Some(a) = num(find(records, "kalamdb", setup, "select", None), "ops_per_sec") {
            out.push(Row {
                name: format!("point SELECT of {what}, 1 node, 64 clients"),
                unit: "ops/s",
                ours: a,
                other: 20_000.0,
                against: "target".into(),
                higher_is_better: true,
                target: "≥ 20,000/s".into(),
            });
        }
    }
    if let Some(a) = num(find(records, "kalamdb", "single", "tail", None), "p99_ms") {
        out.push(Row {
            name: "tail p99, 1 node, 100 subscribers".into(),
            unit: "ms",
            ours: a,
            other: 5.0,
            against: "target".into(),
            higher_is_better: false,
            target: "≤ 5 ms".into(),
        });
    }
    if let Some(a) = num(find(records, "kalamdb", "cluster", "tail", None), "p99_ms") {
        out.push(Row {
            name: "tail p99, 3 nodes, 100 subscribers".into(),
            unit: "ms",
            ours: a,
            other: 20.0,
            against: "target".into(),
            higher_is_better: false,
            target: "≤ 20 ms".into(),
        });
    }
    // Live queries over /v1/ws next to the tail endpoint, from the same run.
    for (setup, nodes) in [("single", "1 node"), ("cluster", "3 nodes")] {
        let ws = num(find(records, "kalamdb", setup, "tail_ws", None), "p99_ms");
        let sse = num(find(records, "kalamdb", setup, "tail", None), "p99_ms");
        if let (Some(a), Some(b)) = (ws, sse) {
            out.push(Row {
                name: format!("/v1/ws p99, {nodes}, 100 subscribers"),
                unit: "ms",
                ours: a,
                other: b,
                against: "tail endpoint (NDJSON), same run".into(),
                higher_is_better: false,
                target: "≤ the tail endpoint's".into(),
            });
        }
    }
    for (q, what) in [("aggregate", "GROUP BY"), ("filter", "selective filter")] {
        let ours = find(records, "kalamdb", "cold", q, None);
        let duck = find(records, "duckdb", "cold", q, None);
        if let (Some(a), Some(b)) = (num(ours, "seconds"), num(duck, "seconds")) {
            let n = num(ours, "rows").unwrap_or(0.0);
            let target = if q == "aggregate" { "≤ 1.2× DuckDB's time" } else { "" };
            out.push(Row {
                name: format!("{what} over {:.0}M flushed rows", n / 1e6),
                unit: "s",
                ours: a,
                other: b,
                against: "DuckDB".into(),
                higher_is_better: false,
                target: target.into(),
            });
        }
    }
    // Disk next to the Parquet files it serves, once the flushed entries are given back.
    let ours = find(records, "kalamdb", "disk", "after-flush", None);
    let parquet = find(records, "parquet", "disk", "after-flush", None);
    if let (Some(a), Some(b)) = (num(ours, "bytes"), num(parquet, "bytes")) {
        let n = num(ours, "rows").unwrap_or(0.0);
        out.push(Row {
            name: format!("disk beside the Parquet files after a {:.0}M-row flush", n / 1e6),
            unit: "MB",
            ours: a / 1e6,
            other: b / 1e6,
            against: "the Parquet files".into(),
            higher_is_better: false,
            target: "≤ 2× the Parquet size".into(),
        });
    }
    out.retain(|r| r.ours.is_finite() && r.other.is_finite() && r.ours > 0.0 && r.other > 0.0);
    out
}

/// Leadership (issue 21): USER-table writes over the 4 user shards with leaders balanced versus
/// all on node 1, and the same load during a rolling restart, from one run.
fn leadership_rows(records: &[Value], out: &mut Vec<Row>) {
    let balanced = find(records, "kalamdb", "leaders-balanced", "userinsert", None);
    let node1 = find(records, "kalamdb", "leaders-node1", "userinsert", None);
    if let (Some(a), Some(b)) = (num(balanced, "ops_per_sec"), num(node1, "ops_per_sec")) {
        out.push(Row {
            name: "USER-table writes, 64 clients, leaders balanced".into(),
            unit: "ops/s",
            ours: a,
            other: b,
            against: "all leaders on node 1, same run".into(),
            higher_is_better: true,
            target: "≥ 1× (the work spreads)".into(),
        });
    }
    let rolling = find(records, "kalamdb", "rolling-restart", "userinsert", None);
    if let (Some(a), Some(b)) = (num(rolling, "p99_ms"), num(balanced, "p99_ms")) {
        let errors = num(rolling, "errors").unwrap_or(f64::NAN);
        out.push(Row {
            name: format!("write p99 during a rolling restart ({errors:.0} errors)"),
            unit: "ms",
            ours: a,
            other: b,
            against: "same load, no restart".into(),
            higher_is_better: false,
            target: "0 errors".into(),
        });
    }
}

fn chart(rows: &[Row], path: &std::path::Path, title: &str) -> Result<(), String> {
    let n = rows.len();
    let height = 90 + 44 * n as u32;
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let max = rows.iter().map(Row::score).fold(1.6_f64, f64::max) * 1.1;
    let names: Vec<String> = rows.iter().map(|r| format!("{} vs {}", r.name, r.against)).collect();
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(380)
        .build_cartesian_2d(0.0..max, 0..n)
        .map_err(|e| e.to_string())?;
    c.configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|i| names.get(*i).cloned().unwrap_or_default())
        .x_desc("ratio, oriented so that > 1 is better (ours/peer or ours/target)")
        .draw()
        .map_err(|e| e.to_string())?;
    c.draw_series(rows.iter().enumerate().map(|(i, r)| {
        let color = if r.score() >= 1.0 { RGBColor(46, 139, 87) } else { RGBColor(205, 92, 92) };
        Rectangle::new([(0.0, i), (r.score(), i + 1)], color.filled())
    }))
    .map_err(|e| e.to_string())?;
    c.draw_series(std::iter::once(PathElement::new(vec![(1.0, 0), (1.0, n)], BLACK.stroke_width(2))))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// Follower catch-up time and per-node memory (scripts/bench-all.sh runs kalamdb-catchup).
fn own_figures(records: &[Value]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(r) = find(records, "kalamdb", "cluster", "catchup", None) {
        let r = &r["result"];
        let list = |k: &str| {
            r[k].as_array()
                .map(|a| {
                    a.iter().map(|x| format!("{:.1}", x.as_f64().unwrap_or(f64::NAN))).collect::<Vec<_>>().join(" / ")
                })
                .unwrap_or_default()
        };
        out.push((
            format!("follower catch-up after {} writes ({} log entries)", r["writes"], r["log_entries"]),
            format!(
                "{:.2} s ({})",
                r["catch_up_seconds"].as_f64().unwrap_or(f64::NAN),
                r["via"].as_str().unwrap_or("?")
            ),
        ));
        out.push(("RSS idle, nodes 1 / 2 / 3".into(), format!("{} MiB", list("idle_rss_mib"))));
        out.push(("RSS right after the load, nodes 1 / 2".into(), format!("{} MiB", list("loaded_rss_mib"))));
        out.push(("RSS after catch-up, nodes 1 / 2 / 3".into(), format!("{} MiB", list("after_rss_mib"))));
    }
    out
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.input).map_err(|e| format!("{}: {e}", args.input.display()))?;
    let records: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let rows = rows(&records);
    if rows.is_empty() {
        return Err("no comparable records in the input".into());
    }
    println!("| measurement | ours | peer / target | ratio (>1 better) | target |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.2} {} | {} {:.2} | {:.2} | {} |",
            r.name,
            r.ours,
            r.unit,
            r.against,
            r.other,
            r.score(),
            r.target
        );
    }
    // Our own figures without a peer or a target: printed and kept, not charted.
    let own = own_figures(&records);
    for (name, value) in &own {
        println!("{name}: {value}");
    }
    std::fs::create_dir_all(&args.out_dir).map_err(|e| e.to_string())?;
    let report = json!({
        "date": args.date,
        "commit": args.commit,
        "own": own.iter().map(|(n, v)| json!({"name": n, "value": v})).collect::<Vec<_>>(),
        "rows": rows.iter().map(|r| json!({"name": r.name, "unit": r.unit, "ours": r.ours, "against": r.against, "other": r.other, "ratio": r.score(), "higher_is_better": r.higher_is_better, "target": r.target})).collect::<Vec<_>>(),
        "records": records,
    });
    let json_path = args.out_dir.join(format!("{}.json", args.date));
    std::fs::write(&json_path, serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n")
        .map_err(|e| e.to_string())?;
    let svg = args.out_dir.join(format!("{}.svg", args.date));
    chart(&rows, &svg, &format!("KalamDB benchmarks {} ({})", args.date, args.commit))?;
    println!("wrote {} and {}", json_path.display(), svg.display());
    Ok(())
}
