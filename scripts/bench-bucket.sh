#!/usr/bin/env bash
# Cold storage on a bucket next to the same on a local folder (issue 19): loads the
# kalamdb-cold data set into a fresh release server whose storage_path is a folder, flushes it
# and times the GROUP BY and filter queries; then the same with storage_path on a bucket of a
# real S3 server (moto, on loopback): once with the node's cache warm (right after the flush),
# once after a restart with the cache emptied (the first run fetches every file).
# Usage: scripts/bench-bucket.sh [rows]   (default 10,000,000)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kalamdb-target}"
rows="${1:-10000000}"
cargo build --release --locked --bin kalamdb-server --bin kalamdb-cold
bin="$CARGO_TARGET_DIR/release"
moto="$(scripts/install-test-tools.sh)"
export KALAMDB_LIMITS_WRITE_TIMEOUT_MS="${KALAMDB_LIMITS_WRITE_TIMEOUT_MS:-900000}"
s3_port=18490
port=18491
work="$(mktemp -d /tmp/kalamdb-bench-bucket.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
"$moto" -H 127.0.0.1 -p "$s3_port" >"$work/moto.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$s3_port/" && break; sleep 0.2; done
curl -sf -X PUT "http://127.0.0.1:$s3_port/bench" >/dev/null

# start_server DATA [KEY=VALUE...]: a server on $port with data under DATA; sets $server_pid.
start_server() {
  local data="$1"; shift
  env KALAMDB_SERVER_PORT=$port KALAMDB_STORAGE_DATA_PATH="$data" RUST_LOG=warn "$@" "$bin/kalamdb-server" &
  server_pid=$!
  pids+=("$server_pid")
  for _ in $(seq 1 150); do
    curl -sf "http://127.0.0.1:$port/v1/api/healthcheck" >/dev/null && return 0
    sleep 0.2
  done
  echo "server did not start" >&2
  return 1
}
stop_server() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; }
bucket_env=(KALAMDB_STORAGE_STORAGE_PATH=s3://bench/kalamdb KALAMDB_STORAGE_S3_ENDPOINT="http://127.0.0.1:$s3_port"
  KALAMDB_STORAGE_S3_ACCESS_KEY_ID=bench KALAMDB_STORAGE_S3_SECRET_ACCESS_KEY=bench-secret)

echo "# $(date -u +%Y-%m-%d) $(git rev-parse --short HEAD 2>/dev/null || echo nogit) rows=$rows"
start_server "$work/folder"
"$bin/kalamdb-cold" --url "http://127.0.0.1:$port" --rows "$rows" | sed 's/^/folder /'
stop_server
rm -rf "$work/folder"

start_server "$work/bucket" "${bucket_env[@]}"
"$bin/kalamdb-cold" --url "http://127.0.0.1:$port" --rows "$rows" | sed 's/^/bucket-warm /'
# Wait (bounded) until every file is in the bucket, then restart with the cache gone.
t0=$SECONDS
while [ -n "$(ls -A "$work/bucket/storage-cache/.upload" 2>/dev/null)" ]; do
  [ $((SECONDS - t0)) -lt 600 ] || { echo "uploads did not drain" >&2; exit 1; }
  sleep 1
done
echo "bucket-upload drained_after_s=$((SECONDS - t0))"
stop_server
rm -rf "$work/bucket/storage-cache"
start_server "$work/bucket" "${bucket_env[@]}"
"$bin/kalamdb-cold" --url "http://127.0.0.1:$port" --rows "$rows" --queries-only | sed 's/^/bucket-cold-cache /'
du -sh "$work/bucket/storage-cache" | sed 's/^/size /'
