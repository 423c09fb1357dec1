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
data="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"' EXIT
KALAMDB_SERVER_PORT=$port KALAMDB_STORAGE_DATA_PATH="$data" RUST_LOG=warn "$bin/kalamdb-server" &
pid=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/v1/api/healthcheck" >/dev/null && break
  sleep 0.2
done
url="http://127.0.0.1:$port"
echo "# $(date -u +%Y-%m-%d) $(git rev-parse --short HEAD 2>/dev/null || echo nogit)"
"$bin/kalamdb-load" --url "$url" --workload insert --clients 64 --seconds "$secs"
"$bin/kalamdb-load" --url "$url" --workload insert --clients 1 --seconds "$secs"
"$bin/kalamdb-load" --url "$url" --workload select --clients 64 --seconds "$secs" --rows 100000
"$bin/kalamdb-load" --url "$url" --workload bulk --clients 4 --seconds "$secs" --batch-rows 1000
