#!/usr/bin/env bash
# Cold-storage benchmark (issue 5): loads rows over HTTP into a fresh release server, flushes
# them to Parquet (flush throughput, file sizes), times an aggregation and a selective filter
# over HTTP, then runs DuckDB (PyPI `duckdb`, in a venv under ~/.cache) on the very same
# Parquet files in the same run. Usage: scripts/bench-cold.sh [rows]   (default 10,000,000)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kalamdb-target}"
rows="${1:-10000000}"
port=18480
cargo build --release --locked --bin kalamdb-server --bin kalamdb-cold
bin="$CARGO_TARGET_DIR/release"
venv="$HOME/.cache/kalamdb-bench-venv"
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import duckdb' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet duckdb
fi
# The engine alone, the version the server links (datafusion 55 in Cargo.toml).
"$venv/bin/python" -c 'import datafusion' 2>/dev/null || "$venv/bin/pip" install --quiet 'datafusion==55.*'
# One FLUSH of millions of rows is one log entry whose apply takes longer than the default
# 10 s write timeout: let the statement wait for it (the server inherits this).
export KALAMDB_LIMITS_WRITE_TIMEOUT_MS="${KALAMDB_LIMITS_WRITE_TIMEOUT_MS:-900000}"
# shellcheck source=scripts/bench-server.sh
source scripts/bench-server.sh
echo "# $(date -u +%Y-%m-%d) $(git rev-parse --short HEAD 2>/dev/null || echo nogit) rows=$rows"
# The queries right after the flush share the CPU with the node's background work on it
# (compacting the flushed range out of RocksDB, snapshotting and purging the log): printed as
# `just_flushed`, not recorded. The recorded figures are taken once that work is done, as
# DuckDB's and DataFusion's are.
"$bin/kalamdb-cold" --url "http://127.0.0.1:$port" --rows "$rows" | sed 's/^query /just_flushed /'
# Disk once the flushed entries are snapshotted (issue 22's condition) and given back. The node
# does that in the background on 5 s ticks: the reclaim after the flush, then a snapshot of
# the shrunken group, a purge of the log behind it (down to `raft.logs_to_keep_bytes`) and a
# compaction of what the purge left. So wait, bounded, first until the snapshot index of the
# group that took the load reaches its last index at the flush, then until the folder has
# not changed for three ticks: one unchanged tick alone was seen between two of those steps
# (session 29 measured 436 MB that way; 140 MB ten seconds later). Hard links are counted
# once (one du over the whole folder).
# A gauge of one group, 0 when the server does not answer (the wait then runs to its bound).
metric() {
  local v
  v="$(curl -s "http://127.0.0.1:$port/metrics" | sed -n "s/^$1{group=\"$2\"} \([0-9]*\).*/\1/p")"
  echo "${v:-0}"
}
busiest="$(curl -s "http://127.0.0.1:$port/metrics" | sed -n 's/^kalamdb_raft_last_log_index{group="\([a-z]*:[0-9]*\)"} \([0-9]*\).*/\2 \1/p' | sort -n | tail -1)"
flushed_at="${busiest%% *}" group="${busiest##* }"
waited=0
for _ in $(seq 1 36); do
  (( "$(metric kalamdb_raft_snapshot_index "$group")" >= flushed_at )) && break
  sleep 5
  waited=$((waited + 5))
done
settled="" unchanged=0
for _ in $(seq 1 24); do
  sleep 5
  waited=$((waited + 5))
  now="$(du -sb "$data" | cut -f1)"
  if [[ "$now" == "$settled" ]]; then unchanged=$((unchanged + 1)); else unchanged=0; fi
  (( unchanged >= 3 )) && break
  settled="$now"
done
echo "settle group=$group flushed_at=$flushed_at snapshot_index=$(metric kalamdb_raft_snapshot_index "$group") purged_index=$(metric kalamdb_raft_purged_index "$group") waited_s=$waited"
du -sh "$data/storage" "$data/rocksdb" "$data/snapshots" | sed 's/^/size /'
parquet_bytes="$(du -sb "$data/storage" | cut -f1)"
rest_bytes="$(du -sb "$data/rocksdb" "$data/snapshots" "$data/storage" | awk '{s += $1} END {print s}')"
rest_bytes=$((rest_bytes - parquet_bytes))
echo "disk parquet_bytes=$parquet_bytes other_bytes=$rest_bytes ratio=$(awk -v a="$rest_bytes" -v b="$parquet_bytes" 'BEGIN {printf "%.2f", a / b}')"
ours="$("$bin/kalamdb-cold" --url "http://127.0.0.1:$port" --rows "$rows" --queries-only)"
echo "$ours"
peer="$("$venv/bin/python" - "$data/storage" <<'PY'
import glob, statistics, sys, time
import duckdb
files = sorted(glob.glob(sys.argv[1] + "/coldbench/orders-t*/shared/*.parquet"))
src = "read_parquet([%s])" % ", ".join("'%s'" % f for f in files)
queries = {
    "aggregate": "SELECT category, count(*), sum(amount), avg(amount) FROM {t} GROUP BY category ORDER BY category",
    "filter": "SELECT count(*), sum(amount) FROM {t} WHERE category = 'c3' AND amount > 990.0",
}
con = duckdb.connect()
threads = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
print("duckdb version=%s threads=%s files=%d" % (duckdb.__version__, threads, len(files)))


def timed(run, warmup):
    """Median of 5 timed runs after `warmup` untimed ones, and the last answer."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        answer = run()
        times.append(time.perf_counter() - t)
    return statistics.median(times), answer


# Each engine runs each query untimed first, as our server did in its `just_flushed` runs.
for name, q in queries.items():
    q = q.replace("{t}", src)
    median, answer = timed(lambda: con.execute(q).fetchall(), 1)
    print("duckdb %s median_s=%.4f answer=%s" % (name, median, answer[:2]))
# DataFusion alone (PyPI `datafusion`, the engine version our server links) with the two
# partitions our sessions use, over the same files: what the engine costs without our server.
# Eight untimed runs: under glibc's malloc (our server has jemalloc) a process's first runs
# map and fault in fresh memory for every large buffer until the mmap threshold has adapted;
# the aggregate took 0.23 s for 5-6 runs, then 0.08 s.
import os
import datafusion
dirs = sorted({os.path.dirname(f) for f in files})
ctx = datafusion.SessionContext(datafusion.SessionConfig().with_target_partitions(2))
if len(dirs) == 1:
    ctx.register_parquet("orders", dirs[0])
    print("datafusion version=%s partitions=2" % datafusion.__version__)
    for name, q in queries.items():
        q = q.replace("{t}", "orders")
        median, answer = timed(lambda: ctx.sql(q).collect(), 8)
        print("datafusion %s median_s=%.4f rows=%d" % (name, median, sum(b.num_rows for b in answer)))
PY
)"
echo "$peer"
# With BENCH_RECORDS (scripts/bench-all.sh): one record per system and query.
if [[ -n "${BENCH_RECORDS:-}" ]]; then
  for q in aggregate filter; do
    k="$(sed -n "s/^query $q median_s=\([0-9.]*\).*/\1/p" <<<"$ours")"
    d="$(sed -n "s/^duckdb $q median_s=\([0-9.]*\).*/\1/p" <<<"$peer")"
    printf '{"system":"kalamdb","setup":"cold","result":{"workload":"%s","rows":%s,"seconds":%s}}\n' "$q" "$rows" "$k" >>"$BENCH_RECORDS"
    printf '{"system":"duckdb","setup":"cold","result":{"workload":"%s","rows":%s,"seconds":%s}}\n' "$q" "$rows" "$d" >>"$BENCH_RECORDS"
  done
  printf '{"system":"kalamdb","setup":"disk","result":{"workload":"after-flush","rows":%s,"bytes":%s}}\n' "$rows" "$rest_bytes" >>"$BENCH_RECORDS"
  printf '{"system":"parquet","setup":"disk","result":{"workload":"after-flush","rows":%s,"bytes":%s}}\n' "$rows" "$parquet_bytes" >>"$BENCH_RECORDS"
fi
