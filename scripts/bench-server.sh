# Sourced by the single-node benchmark scripts: start a server from "$bin" on loopback port
# "$port" with a fresh data folder "$data" (removed on exit), and wait until it is healthy.
# shellcheck shell=bash
: "${bin:?set bin before sourcing}" "${port:?set port before sourcing}"
data="$(mktemp -d /tmp/kalamdb-bench.XXXXXX)"
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"' EXIT
KALAMDB_SERVER_PORT=$port KALAMDB_STORAGE_DATA_PATH="$data" RUST_LOG=warn "$bin/kalamdb-server" &
pid=$!
for _ in $(seq 1 150); do
  curl -sf "http://127.0.0.1:$port/v1/api/healthcheck" >/dev/null && break
  sleep 0.2
done
