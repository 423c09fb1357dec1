#!/usr/bin/env bash
# Cluster benchmark, with the peer in the same run: a local 3-node KalamDB cluster
# (scripts/cluster.sh) and a 3-member etcd (Debian's etcd-server) on loopback, both driven by
# kalamdb-load. Usage: scripts/bench-cluster.sh [seconds]. Prints one line per workload.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kalamdb-target}"
secs="${1:-10}"
for tool in etcd etcdctl; do
  command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install etcd-server etcd-client" >&2; exit 1; }
done
cargo build --release --locked --bin kalamdb-server --bin kalamdb-load
load="$CARGO_TARGET_DIR/release/kalamdb-load"
# shellcheck source=scripts/bench-lib.sh
source "$root/scripts/bench-lib.sh"

work="$(mktemp -d)"
export CLUSTER_SH_DIR="$work/kalamdb"
etcd_pids=()
cleanup() {
  "$root/scripts/cluster.sh" stop >/dev/null 2>&1 || true
  for p in "${etcd_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "# $(date -u +%Y-%m-%d) $(git rev-parse --short HEAD 2>/dev/null || echo nogit) seconds=$secs"

# --- KalamDB: 3 local nodes, HTTP 8081-8083 ---
RUST_LOG=warn "$root/scripts/cluster.sh" start >/dev/null
# Measured balanced, as a cluster runs once formed: a fresh one has every group led by node 1,
# and the balancer would move one every 5 s through the first runs.
balance_leaders
urls="http://127.0.0.1:8081,http://127.0.0.1:8082,http://127.0.0.1:8083"
# The node leading the shared shard (where the benchmark table's rows go), for 1-client latency,
# and another node for the path through a follower (the balancer often puts shared:0 on node
# 1, so a fixed node 1 would measure the leader twice).
read -r leader_http follower_http < <(curl -s http://127.0.0.1:8081/v1/api/cluster/health | python3 -c '
import json, sys
h = json.load(sys.stdin)
lead = next(g["leader"] for g in h["groups"] if g["group"] == "shared:0")
addr = {n["node_id"]: n["http_addr"] for n in h["nodes"]}
print(addr[lead], next(a for n, a in sorted(addr.items()) if n != lead))')
echo "kalamdb shared:0 leader at $leader_http, follower at $follower_http"
run_bench kalamdb cluster "$load" --url "$urls" --workload insert --clients 64 --seconds "$secs"
run_bench kalamdb cluster "$load" --url "http://$leader_http" --workload insert --clients 1 --seconds "$secs"
run_bench kalamdb cluster-via-follower "$load" --url "http://$follower_http" --workload insert --clients 1 --seconds "$secs"
run_bench kalamdb cluster "$load" --url "$urls" --workload bulk --clients 4 --seconds "$secs" --batch-rows 1000
"$root/scripts/cluster.sh" stop >/dev/null

# --- etcd: 3 members, clients 23791-23793 ---
cluster="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$work/etcd$i" \
    --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
    --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token kalamdb-bench \
    --log-level error > "$work/etcd$i.log" 2>&1 &
  etcd_pids+=($!)
done
eps="http://127.0.0.1:23791,http://127.0.0.1:23792,http://127.0.0.1:23793"
for _ in $(seq 1 100); do
  ETCDCTL_API=3 etcdctl --endpoints="$eps" endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done
read -r etcd_leader etcd_follower < <(ETCDCTL_API=3 etcdctl --endpoints="$eps" endpoint status -w json | python3 -c '
import json, sys
status = json.load(sys.stdin)
lead = [s["Endpoint"] for s in status if s["Status"]["leader"] == s["Status"]["header"]["member_id"]]
other = [s["Endpoint"] for s in status if s["Status"]["leader"] != s["Status"]["header"]["member_id"]]
print(lead[0], other[0])')
echo "etcd leader at $etcd_leader, follower at $etcd_follower"
run_bench etcd cluster "$load" --url "$eps" --workload etcd-put --clients 64 --seconds "$secs"
run_bench etcd cluster "$load" --url "$etcd_leader" --workload etcd-put --clients 1 --seconds "$secs"
run_bench etcd cluster-via-follower "$load" --url "$etcd_follower" --workload etcd-put --clients 1 --seconds "$secs"
