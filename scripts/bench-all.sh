#!/usr/bin/env bash
# Every benchmark in one run, peers included: the local 3-node cluster against a 3-member etcd
# (scripts/bench-cluster.sh: same load generator, same client counts), bulk ingest, point
# SELECTs on one node, tail latency on one node and on the cluster (scripts/bench-tail.sh),
# follower catch-up time after 1M writes with idle and loaded RSS per node (kalamdb-catchup),
# and GROUP BY / filter over flushed rows against DuckDB on the same Parquet files
# (scripts/bench-cold.sh; BENCH_COLD_ROWS rows, default 10,000,000).
# Prints the comparison table and writes benches/results/<date>.json and <date>.svg (the chart
# README.md shows). Usage: scripts/bench-all.sh [seconds per workload]   (default 10)
# Needs etcd-server and etcd-client (apt); DuckDB comes from PyPI into a venv. Everything runs on loopback and stops at the end.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kalamdb-target}"
secs="${1:-10}"
cargo build --release --locked --bin kalamdb-server --bin kalamdb-load --bin kalamdb-tail --bin kalamdb-report --bin kalamdb-catchup
bin="$CARGO_TARGET_DIR/release"
date="$(date -u +%Y-%m-%d)"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo nogit)"
BENCH_RECORDS="$(mktemp /tmp/kalamdb-bench-records.XXXXXX)"
export BENCH_RECORDS
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

scripts/bench-cluster.sh "$secs"
# USER-table writes with leaders balanced versus all on node 1, and during a rolling restart.
scripts/bench-leaders.sh "$secs"
scripts/bench-tail.sh "$secs"
# Follower catch-up after BENCH_CATCHUP_WRITES (default 1,000,000) single-row writes, and RSS per node.
catchup_dir="$(mktemp -d /tmp/kalamdb-catchup.XXXXXX)"
run_bench kalamdb cluster "$bin/kalamdb-catchup" --server-bin "$bin/kalamdb-server" --dir "$catchup_dir/c" \
  --writes "${BENCH_CATCHUP_WRITES:-1000000}"
rm -rf "$catchup_dir"
# The analytic queries of the cold-storage issue, DuckDB on the same Parquet files.
scripts/bench-cold.sh "${BENCH_COLD_ROWS:-10000000}"
port=18070
(
  # shellcheck source=scripts/bench-server.sh
  source scripts/bench-server.sh
  # 50,000 rows stay hot; 100,000 reach the default flush policy (rows:100000), so the
  # second run looks up rows that live in Parquet files.
  run_bench kalamdb single "$bin/kalamdb-load" --url "http://127.0.0.1:$port" --workload select --clients 64 --seconds "$secs" --rows 50000
  run_bench kalamdb single-flushed "$bin/kalamdb-load" --url "http://127.0.0.1:$port" --workload select --clients 64 --seconds "$secs" --rows 100000
)
"$bin/kalamdb-report" --input "$BENCH_RECORDS" --out-dir benches/results --date "$date" --commit "$commit"
rm -f "$BENCH_RECORDS"
