#!/usr/bin/env bash
# Single-node benchmarks: starts a release server on loopback with a fresh data folder, runs
# the load generator's workloads, stops the server. Usage: scripts/bench.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kalamdb-target}"
secs="${1:-10}"
port=18080
cargo build --release --locked --bin kalamdb-server --bin kalamdb-load
bin="$CARGO_TARGET_DIR/release"
# shellcheck source=scripts/bench-server.sh
source scripts/bench-server.sh
url="http://127.0.0.1:$port"
echo "# $(date -u +%Y-%m-%d) $(git rev-parse --short HEAD 2>/dev/null || echo nogit)"
"$bin/kalamdb-load" --url "$url" --workload insert --clients 64 --seconds "$secs"
"$bin/kalamdb-load" --url "$url" --workload insert --clients 1 --seconds "$secs"
"$bin/kalamdb-load" --url "$url" --workload select --clients 64 --seconds "$secs" --rows 100000
"$bin/kalamdb-load" --url "$url" --workload bulk --clients 4 --seconds "$secs" --batch-rows 1000
