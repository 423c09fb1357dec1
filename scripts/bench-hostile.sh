#!/usr/bin/env bash
# Issue 17's noisy-neighbour benchmark: the 64-client single-row INSERT workload on one node,
# alone and then with one hostile query running back to back on the same node (a recursive
# CTE that only ends at the server's 30 s deadline, then the next one). Prints both runs and
# the throughput ratio (target: at least 0.7). Usage: scripts/bench-hostile.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kalamdb-target}"
secs="${1:-20}"
port=18090
cargo build --release --locked --bin kalamdb-server --bin kalamdb-load
bin="$CARGO_TARGET_DIR/release"
# shellcheck source=scripts/bench-server.sh
source scripts/bench-server.sh
url="http://127.0.0.1:$port"
spin="WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
echo "# $(date -u +%Y-%m-%d) $(git rev-parse --short HEAD 2>/dev/null || echo nogit) hostile: $spin"
alone="$("$bin/kalamdb-load" --url "$url" --workload insert --clients 64 --seconds "$secs" --json)"
noisy="$("$bin/kalamdb-load" --url "$url" --workload insert --clients 64 --seconds "$secs" --json --hostile "$spin")"
echo "alone:  $alone"
echo "noisy:  $noisy"
python3 - "$alone" "$noisy" <<'PY'
import json, sys
a, n = (json.loads(x) for x in sys.argv[1:3])
print(f"insert 64c: alone {a['ops_per_sec']:.0f}/s p99 {a['p99_ms']:.2f} ms; with a hostile query "
      f"{n['ops_per_sec']:.0f}/s p99 {n['p99_ms']:.2f} ms; ratio {n['ops_per_sec'] / a['ops_per_sec']:.2f} (target >= 0.7)")
PY
