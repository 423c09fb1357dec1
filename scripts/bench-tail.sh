#!/usr/bin/env bash
# Tail latency benchmark: commit -> subscriber latency at --rate rows/s with 100 subscribers,
# over the tail endpoint (NDJSON) and over /v1/ws live queries, one after the other in the same
# run, first on one node, then on the local 3-node cluster (scripts/cluster.sh; subscribers
# spread over the three nodes, writes through node 1). Usage: scripts/bench-tail.sh [seconds] [rate]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kalamdb-target}"
secs="${1:-10}"
rate="${2:-10000}"
cargo build --release --locked --bin kalamdb-server --bin kalamdb-tail
bin="$CARGO_TARGET_DIR/release"
# shellcheck source=scripts/bench-lib.sh
source "$root/scripts/bench-lib.sh"
# 100 subscribers of one user (root) exceed the per-user cap of a node (16): raise it for the
# benchmark's servers (the single node and the cluster's nodes inherit the environment).
export KALAMDB_TAIL_SUBSCRIBERS_PER_USER_MAX=1000
echo "# $(date -u +%Y-%m-%d) $(git rev-parse --short HEAD 2>/dev/null || echo nogit) seconds=$secs rate=$rate"

# --- one node ---
port=18090
(
  # shellcheck source=scripts/bench-server.sh
  source scripts/bench-server.sh
  for protocol in ndjson ws; do
    run_bench kalamdb single "$bin/kalamdb-tail" --url "http://127.0.0.1:$port" --subscribers 100 --rate "$rate" --seconds "$secs" --protocol "$protocol"
  done
)

# --- local 3-node cluster ---
work="$(mktemp -d)"
export CLUSTER_SH_DIR="$work/kalamdb"
trap '"$root/scripts/cluster.sh" stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
RUST_LOG=warn "$root/scripts/cluster.sh" start >/dev/null
# Balanced before measuring (see balance_leaders in bench-lib.sh): otherwise a leadership move
# of the formation's balancer falls inside the measured seconds.
balance_leaders
urls="http://127.0.0.1:8081,http://127.0.0.1:8082,http://127.0.0.1:8083"
for protocol in ndjson ws; do
  run_bench kalamdb cluster "$bin/kalamdb-tail" --url "$urls" --subscribers 100 --rate "$rate" --seconds "$secs" --protocol "$protocol"
done
