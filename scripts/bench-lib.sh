# Sourced by the benchmark scripts. run_bench SYSTEM SETUP COMMAND...: runs a load generator
# (kalamdb-load or kalamdb-tail). With BENCH_RECORDS set (scripts/bench-all.sh does), the
# command's --json figures are appended to that file as one record
# {"system":...,"setup":...,"result":{...}}; otherwise its human-readable line is printed.
# shellcheck shell=bash
run_bench() {
  local system=$1 setup=$2 out
  shift 2
  if [[ -n "${BENCH_RECORDS:-}" ]]; then
    out="$("$@" --json | tail -n 1)"
    printf '{"system":"%s","setup":"%s","result":%s}\n' "$system" "$setup" "$out" >>"$BENCH_RECORDS"
    echo "$system ($setup): $out"
  else
    echo "$system ($setup): $("$@" | tr '\n' ' ')"
  fi
}

# balance_leaders: on the local 3-node cluster (scripts/cluster.sh, HTTP 8081-8083), move
# leaderships now (CLUSTER REBALANCE) until every node leads within one group of every other,
# so nothing moves while a benchmark measures: on a fresh cluster the balancer would otherwise
# hand groups over one by one, every leader_balance_interval_ms, during the first runs (each
# move pauses its group's writes; a moved benchmark group turns "on the leader" into "through a
# follower"). Bounded: 30 attempts, a second apart. Prints the layout, e.g. "1:3 2:3 3:2".
balance_leaders() {
  local attempt counts
  for attempt in $(seq 1 30); do
    curl -sf -m 60 -X POST http://127.0.0.1:8081/v1/api/sql -H 'Content-Type: application/json' \
      -d '{"sql": "CLUSTER REBALANCE"}' >/dev/null 2>&1 || true
    counts="$(curl -s -m 5 http://127.0.0.1:8081/v1/api/cluster/health | python3 -c '
import collections, json, sys
groups = json.load(sys.stdin)["groups"]
c = collections.Counter(g["leader"] for g in groups if g.get("leader") is not None)
nodes = [1, 2, 3]
spread = max(c[n] for n in nodes) - min(c[n] for n in nodes)
print(("ok " if sum(c.values()) == len(groups) and spread <= 1 else "no ") + " ".join(f"{n}:{c[n]}" for n in nodes))' 2>/dev/null || echo "no ?")"
    if [[ "$counts" == ok* ]]; then
      echo "leaders balanced (${counts#ok }) after $attempt attempt(s)"
      return 0
    fi
    sleep 1
  done
  echo "warning: leaders not balanced after 30 attempts (${counts#no })" >&2
}
