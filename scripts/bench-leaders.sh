#!/usr/bin/env bash
# Leadership benchmark (issue 21), one run on the local 3-node cluster (scripts/cluster.sh):
# USER-table writes (64 clients, one user each, so the rows spread over the 4 user shards)
# with every group led by node 1, then with leaders balanced 3/3/2, and each node's CPU
# seconds under both; then the same load during a rolling restart (scripts/cluster.sh restart),
# clients moving to another node while theirs is down, with its error count and p99.
# Usage: scripts/bench-leaders.sh [seconds]   (default 10). Loopback only; stops at the end.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kalamdb-target}"
secs="${1:-10}"
# The rolling restart's load runs this long; the restart (3 nodes, ~5-8 s each) fits inside.
rolling_load_secs=60
cargo build --release --locked --bin kalamdb-server --bin kalamdb-load
load="$CARGO_TARGET_DIR/release/kalamdb-load"
# shellcheck source=scripts/bench-lib.sh
source "$root/scripts/bench-lib.sh"

work="$(mktemp -d)"
export CLUSTER_SH_DIR="$work/kalamdb"
cleanup() {
  "$root/scripts/cluster.sh" stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
urls="http://127.0.0.1:8081,http://127.0.0.1:8082,http://127.0.0.1:8083"
sql() {
  curl -sf -m 60 -X POST http://127.0.0.1:8081/v1/api/sql -H 'Content-Type: application/json' -d "{\"sql\": \"$1\"}"
}
# Leaders per node, e.g. "1:8" or "1:3 2:3 3:2".
leader_counts() {
  curl -s http://127.0.0.1:8081/v1/api/cluster/health | python3 -c '
import collections, json, sys
c = collections.Counter(g["leader"] for g in json.load(sys.stdin)["groups"])
print(" ".join(f"{n}:{c[n]}" for n in sorted(c, key=str)))'
}
# Each group's leader, e.g. "meta:catalog=1 ... user:0=2".
leaders_by_group() {
  curl -s http://127.0.0.1:8081/v1/api/cluster/health | python3 -c '
import json, sys
print(" ".join("%s=%s" % (g["group"], g["leader"]) for g in json.load(sys.stdin)["groups"]))'
}
# Total user+system CPU seconds of each node's process so far.
cpu_seconds() {
  local n pid ticks
  ticks="$(getconf CLK_TCK)"
  for n in 1 2 3; do
    pid="$(cat "$CLUSTER_SH_DIR/node$n.pid")"
    awk -v n="$n" -v t="$ticks" '{ printf "%s:%.2f ", n, ($14 + $15) / t }' "/proc/$pid/stat"
  done
}
cpu_delta() {
  python3 -c '
import sys
a = dict(x.split(":") for x in sys.argv[1].split())
b = dict(x.split(":") for x in sys.argv[2].split())
print(" ".join(f"node{k}={float(b[k]) - float(a[k]):.1f}s" for k in sorted(a)))' "$1" "$2"
}
measure() {
  local setup=$1 before after
  before="$(cpu_seconds)"
  run_bench kalamdb "$setup" "$load" --url "$urls" --workload user-insert --clients 64 --seconds "$secs"
  after="$(cpu_seconds)"
  echo "kalamdb ($setup): leaders $(leader_counts) ($(leaders_by_group)); CPU over the run: $(cpu_delta "$before" "$after")"
}

echo "# $(date -u +%Y-%m-%d) $(git rev-parse --short HEAD 2>/dev/null || echo nogit) seconds=$secs"
# Balancing off while measuring the unbalanced layout: the balancer would undo it.
KALAMDB_RAFT_LEADER_BALANCE_INTERVAL_MS=0 RUST_LOG=warn "$root/scripts/cluster.sh" start >/dev/null
sql "CLUSTER TRANSFER LEADER ALL TO NODE 1" >/dev/null
measure leaders-node1
sql "CLUSTER REBALANCE" >/dev/null
measure leaders-balanced

# The rolling restart: nodes come back with the default balancer on, as in production.
"$load" --url "$urls" --workload user-insert --clients 64 --seconds "$rolling_load_secs" --warmup 1 --failover \
  ${BENCH_RECORDS:+--json} > "$work/rolling.out" 2> "$work/rolling.err" &
load_pid=$!
# The restart begins once the load runs: its setup (a table, 64 users and their logins) must
# not meet a stopped node. Bounded; a load that died is caught by the wait below.
for _ in $(seq 1 300); do
  grep -q "kalamdb-load: prepared" "$work/rolling.err" 2>/dev/null && break
  kill -0 "$load_pid" 2>/dev/null || break
  sleep 0.2
done
sleep 2
t0=$SECONDS
RUST_LOG=warn "$root/scripts/cluster.sh" restart | tail -n 2
restart_secs=$((SECONDS - t0))
wait "$load_pid"
(( restart_secs + 2 < rolling_load_secs )) || echo "warning: the restart took ${restart_secs}s, longer than the load" >&2
grep -v "kalamdb-load: prepared" "$work/rolling.err" | head -n 3 >&2 || true
if [[ -n "${BENCH_RECORDS:-}" ]]; then
  printf '{"system":"kalamdb","setup":"rolling-restart","result":%s}\n' "$(tail -n 1 "$work/rolling.out")" >> "$BENCH_RECORDS"
fi
echo "kalamdb (rolling-restart, ${restart_secs}s of restarts in a ${rolling_load_secs}s load): $(tail -n 1 "$work/rolling.out")"
echo "leaders after the restart: $(leader_counts)"
