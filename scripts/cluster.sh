#!/usr/bin/env bash
# A 3-node KalamDB cluster on this machine, as local processes or as Docker containers.
#
#   scripts/cluster.sh [--docker] start|status|logs [N] [-f]|stop|clean|test|shell N|build
#   scripts/cluster.sh [--docker] restart     rolling restart under writes (none may fail)
#   scripts/cluster.sh [--docker] add N | remove N   grow the cluster by node N, or take N out
#   scripts/cluster.sh --docker chaos
#
# Both modes serve HTTP on 8081-8083 and Raft/QUIC on 9091-9093. Without --docker the nodes
# run from the release binary with configs and data under $CLUSTER_SH_DIR (default .cluster/
# in the repository), which this script owns; $CLUSTER_SH_SERVER names another server binary
# to run (nothing is built then: A/B comparisons). With --docker they run in containers
# kalamdb-node1..3 from deploy/docker-compose.yml (see deploy/README.md). RUST_LOG is passed
# to the nodes, e.g. RUST_LOG=info,kalamdb_raft=debug scripts/cluster.sh --docker start.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kalamdb-target}"
dir="${CLUSTER_SH_DIR:-$root/.cluster}"
nodes=(1 2 3)
http_port() { echo $((8080 + $1)); }
raft_port() { echo $((9090 + $1)); }
start_wait_secs=60

docker=0
if [[ "${1:-}" == "--docker" ]]; then
  docker=1
  shift
fi
cmd="${1:-}"
shift || true

die() { echo "cluster.sh: $*" >&2; exit 1; }
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

# ---------------------------------------------------------------------------------------
# Shared by both modes: the nodes answer on the same host ports either way.

# The cluster secret (the key of the peers' Hello HMAC): CLUSTER_SH_SECRET when set, else 32
# random bytes in hex, made on first start and kept in the file $1 (mode 600) with the
# cluster's files. Never committed: .cluster/ and deploy/.cluster-secret are gitignored.
cluster_secret() {
  local f=$1
  if [[ -n "${CLUSTER_SH_SECRET:-}" ]]; then
    echo "$CLUSTER_SH_SECRET"
    return
  fi
  if [[ ! -s "$f" ]]; then
    mkdir -p "$(dirname "$f")"
    (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$f")
  fi
  cat "$f"
}

healthy() { curl -sf -m 2 "http://127.0.0.1:$(http_port "$1")/v1/api/healthcheck" >/dev/null 2>&1; }

json_str() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1" 2>/dev/null || printf '"%s"' "$1"; }

# sql NODE STATEMENT [CONSISTENCY]: prints the response body.
sql() {
  local extra=""
  [[ -n "${3:-}" ]] && extra=", \"consistency\": \"$3\""
  curl -s -m 15 -X POST "http://127.0.0.1:$(http_port "$1")/v1/api/sql" \
    -H "Content-Type: application/json" -d "$(printf '{"sql": %s%s}' "$(json_str "$2")" "$extra")"
}

failures=0
check() { # description, body, expected substring
  if [[ "$2" == *"$3"* ]]; then
    echo "ok    $1"
  else
    echo "FAIL  $1"
    echo "      expected to contain: $3"
    echo "      got: $2"
    failures=$((failures + 1))
  fi
}

# Leader, term, commit and lag per group, from one node's /v1/api/cluster/health.
print_groups() {
  local json
  json="$(curl -s -m 5 "http://127.0.0.1:$(http_port "$1")/v1/api/cluster/health" || true)"
  if [[ -z "$json" ]]; then echo "node $1 did not answer /v1/api/cluster/health"; return 0; fi
  if ! command -v python3 >/dev/null 2>&1; then echo "$json"; return 0; fi
  python3 -c '
import json, sys
h = json.loads(sys.argv[1])
print("cluster %s: %s (asked node %s)" % (h.get("cluster_id"), h.get("status"), h.get("node_id")))
print("%-14s%7s%6s%9s%9s  lag per member" % ("group", "leader", "term", "commit", "applied"))
for g in h.get("groups", []):
    lag = " ".join("n%s=%s" % (m["node_id"], "?" if m["lag"] is None else m["lag"]) for m in g.get("members", []))
    print("%-14s%7s%6s%9s%9s  %s" % (g["group"], g["leader"], g["term"], g["commit_index"], g["applied_index"], lag))
' "$json"
}

# The spec's consistency test ("Run Consistency Test"), with assertions.
consistency_test() {
  failures=0
  local ns="cluster_test_$$"
  for n in "${nodes[@]}"; do healthy "$n" || die "node $n is not healthy; start the cluster first"; done
  check "1. create namespace on node 1" "$(sql 1 "CREATE NAMESPACE $ns")" '"status":"success"'
  for n in 2 3; do
    check "2. namespace visible on node $n" "$(sql "$n" "SELECT namespace_id FROM system.namespaces")" "\"$ns\""
  done
  check "3. create shared table (node 1)" \
    "$(sql 1 "CREATE TABLE $ns.items (id BIGINT PRIMARY KEY, name TEXT) WITH (TYPE = 'SHARED')")" '"status":"success"'
  for n in "${nodes[@]}"; do
    check "3. table visible on node $n" "$(sql "$n" "SELECT table_name FROM system.tables WHERE namespace_id = '$ns'")" '"items"'
  done
  check "4. insert on node 3" "$(sql 3 "INSERT INTO $ns.items (id, name) VALUES (1, 'from node 3'), (2, 'also node 3')")" '"row_count":2'
  check "5. flush on node 3" "$(sql 3 "STORAGE FLUSH TABLE $ns.items")" '2 row(s) written to Parquet'
  for n in "${nodes[@]}"; do
    check "6. read on node $n" "$(sql "$n" "SELECT name FROM $ns.items WHERE id = 1")" '"from node 3"'
    check "6. count on node $n" "$(sql "$n" "SELECT COUNT(*) AS n FROM $ns.items")" '[["2"]]'
    # Every node applied the flush entry itself (same files, same manifest).
    check "6. flush applied on node $n" \
      "$(sql "$n" "SELECT rows, status FROM system.jobs WHERE namespace_id = '$ns' AND job_type = 'flush'")" '[["2","completed"]]'
  done
  check "7. cleanup" "$(sql 1 "DROP NAMESPACE $ns CASCADE")" '"status":"success"'
  for n in "${nodes[@]}"; do
    local body
    body="$(sql "$n" "SELECT namespace_id FROM system.namespaces")"
    if [[ "$body" == *"\"$ns\""* ]]; then check "7. namespace gone on node $n" "$body" "(absent)"; else echo "ok    7. namespace gone on node $n"; fi
  done
  if (( failures > 0 )); then echo "$failures check(s) failed"; exit 1; fi
  echo "all consistency checks passed"
}

# Wait until node $1 is a voter of every group, as node $2 sees it.
join_wait_secs=300
wait_voter() {
  local n=$1 asking=$2 deadline=$((SECONDS + join_wait_secs)) h
  while true; do
    h="$(curl -s -m 5 "http://127.0.0.1:$(http_port "$asking")/v1/api/cluster/health?local=true" || true)"
    if python3 -c '
import json, sys
h = json.loads(sys.argv[1]); n = int(sys.argv[2])
groups = h.get("groups", [])
ok = groups and all(any(m["node_id"] == n and m.get("membership") == "voter" for m in g["members"]) for g in groups)
sys.exit(0 if ok else 1)' "$h" "$n" 2>/dev/null; then
      return 0
    fi
    (( SECONDS < deadline )) || die "node $n is not a voter of every group after ${join_wait_secs}s"
    sleep 1
  done
}

# remove_from_groups N: CLUSTER REMOVE NODE N through another healthy node of $nodes; fails
# unless every group let N go (a row per group, its error last), so a node some group kept
# keeps running.
remove_from_groups() {
  local n=${1:-} via="" m body
  [[ "$n" =~ ^[1-9]$ ]] || die "remove: give a node number"
  for m in "${nodes[@]}"; do
    if [[ "$m" != "$n" ]] && healthy "$m"; then via=$m; break; fi
  done
  [[ -n "$via" ]] || die "remove: no other healthy node to ask"
  body="$(sql "$via" "CLUSTER REMOVE NODE $n")"
  echo "$body" | python3 -c 'import json,sys; b=json.load(sys.stdin); [print(" ", *r) for r in b.get("results",[{}])[0].get("rows") or []]' 2>/dev/null || true
  [[ "$body" == *'"success"'* ]] || die "remove node $n: $body"
  python3 -c 'import json,sys; rows=json.load(sys.stdin)["results"][0]["rows"]; sys.exit(1 if any(r[-1] is not None for r in rows) else 0)' <<< "$body" \
    || die "node $n is still a member of some group (see the errors above); it keeps running: try again"
}

# Rolling restart: each node in turn is stopped gracefully (SIGTERM: it hands its leaderships
# to the other nodes first), started again and waited for, while a writer inserts through
# every node. Fails if any write fails or a written row is missing afterwards; a refused
# connection to the node being restarted is not a write. Needs stop_node N and start_node N.
rolling_writes_max=200000
rolling_restart() {
  local ns=clustersh_rolling n body
  body="$(sql "${nodes[0]}" "CREATE NAMESPACE IF NOT EXISTS $ns")"
  [[ "$body" == *'"success"'* ]] || die "create namespace: $body"
  body="$(sql "${nodes[0]}" "CREATE SHARED TABLE IF NOT EXISTS $ns.writes (k BIGINT PRIMARY KEY, via INT)")"
  [[ "$body" == *'"success"'* ]] || die "create table: $body"
  local base=$(( $(date +%s) * 1000000 ))
  local work
  work="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  touch "$work/run"
  (
    i=0
    while [[ -f "$work/run" ]] && (( i < rolling_writes_max )); do
      via=${nodes[$(( i % ${#nodes[@]} ))]}
      code=$(curl -s -m 15 -o "$work/body" -w '%{http_code}' -X POST "http://127.0.0.1:$(http_port "$via")/v1/api/sql" \
        -H "Content-Type: application/json" -d "{\"sql\": \"INSERT INTO $ns.writes (k, via) VALUES ($((base + i)), $via)\"}") || true
      case "$code" in
        200) echo "ok $((base + i))" >> "$work/results" ;;
        000) echo "refused $via" >> "$work/results" ;;
        *) echo "fail $via $code $(head -c 300 "$work/body")" >> "$work/results" ;;
      esac
      i=$((i + 1))
    done
  ) &
  local writer=$!
  sleep 1
  for n in "${nodes[@]}"; do
    local t0=$SECONDS
    stop_node "$n"
    start_node "$n"
    echo "node $n restarted in $((SECONDS - t0))s"
    sleep 2
  done
  rm -f "$work/run"
  wait "$writer" || true
  local acked failed refused
  acked=$(grep -c '^ok ' "$work/results" || true)
  failed=$(grep -c '^fail ' "$work/results" || true)
  refused=$(grep -c '^refused ' "$work/results" || true)
  grep '^fail ' "$work/results" | head -n 5 >&2 || true
  body="$(sql "${nodes[0]}" "SELECT COUNT(*) AS n FROM $ns.writes WHERE k >= $base")"
  local stored
  stored="$(python3 -c 'import json,sys; print(int(json.loads(sys.argv[1])["results"][0]["rows"][0][0]))' "$body" 2>/dev/null || echo "?")"
  echo "rolling restart: $acked writes acknowledged, $failed failed, $refused refused by a stopped node; $stored rows stored"
  (( failed == 0 )) || die "$failed write(s) failed during the rolling restart"
  [[ "$stored" == "$acked" ]] || die "acknowledged $acked writes but $stored rows are stored"
  echo "rolling restart passed"
}

# Worker threads per node: the host's cores split among the three nodes, at least one.
worker_threads() {
  local cpus
  cpus="$(nproc 2>/dev/null || echo 3)"
  echo $(( cpus / 3 > 0 ? cpus / 3 : 1 ))
}

if [[ $docker == 1 ]]; then
  # shellcheck source=scripts/cluster-docker.sh
  source "$root/scripts/cluster-docker.sh"
  docker_main "$cmd" "$@"
  exit $?
fi

# ---------------------------------------------------------------------------------------
# Local mode: three processes of the release binary, plus nodes added with `add` (listed in
# $dir/joined) minus nodes taken out with `remove` (listed in $dir/removed).

listed() { [[ -f "$dir/$1" ]] && grep -qx "$2" "$dir/$1"; }
joined_nodes=()
if [[ -f "$dir/joined" ]]; then mapfile -t joined_nodes < "$dir/joined"; fi
nodes=()
for n in 1 2 3 "${joined_nodes[@]}"; do
  listed removed "$n" || nodes+=("$n")
done

bin() {
  if [[ -n "${CLUSTER_SH_SERVER:-}" ]]; then echo "$CLUSTER_SH_SERVER"; else echo "$CARGO_TARGET_DIR/release/kalamdb-server"; fi
}

build() {
  if [[ -z "${CLUSTER_SH_SERVER:-}" ]]; then
    (cd "$root" && cargo build --release --locked --bin kalamdb-server)
  fi
}

write_config() {
  local n=$1 f="$dir/server$1.toml"
  {
    echo "# Generated by scripts/cluster.sh for the local cluster."
    echo "[server]"
    echo "host = \"127.0.0.1\""
    echo "port = $(http_port "$n")"
    echo "node_id = $n"
    echo "# Three nodes share this host's cores: more workers per node only add wake-ups"
    echo "# between cores (see server.worker_threads in the README)."
    echo "worker_threads = $(worker_threads)"
    echo
    echo "[storage]"
    echo "data_path = \"$dir/node$n\""
    echo
    echo "# The spec's curl lines carry no credentials: anonymous requests act as a dba."
    echo "# The server logs a warning about it at startup; remove this for a real deployment."
    echo "[auth]"
    echo "allow_anonymous = true"
    echo "anonymous_role = \"dba\""
    echo
    echo "[cluster]"
    if listed joined "$n"; then echo "join = true"; fi
    echo "cluster_id = \"kalamdb-local-cluster\""
    echo "jwt_secret = \"$(cluster_secret "$dir/cluster.secret")\""
    echo "user_shards = 4"
    echo "shared_shards = 1"
    for m in "${nodes[@]}"; do
      echo
      echo "[[cluster.members]]"
      echo "node_id = $m"
      echo "raft_addr = \"127.0.0.1:$(raft_port "$m")\""
      echo "http_addr = \"127.0.0.1:$(http_port "$m")\""
    done
  } > "$f"
}

pid_of() {
  local f="$dir/node$1.pid"
  [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"
}

launch_node() {
  local n=$1 b
  b="$(bin)"
  [[ -x "$b" ]] || die "no server binary at $b"
  write_config "$n"
  mkdir -p "$dir/node$n"
  RUST_LOG="${RUST_LOG:-info}" nohup "$b" --config "$dir/server$n.toml" >> "$dir/node$n/server.log" 2>&1 &
  echo $! > "$dir/node$n.pid"
  echo "node $n started (pid $!): http://127.0.0.1:$(http_port "$n")  raft 127.0.0.1:$(raft_port "$n")"
}

wait_node_healthy() {
  local n=$1 deadline=$((SECONDS + start_wait_secs))
  until healthy "$n"; do
    if (( SECONDS > deadline )); then
      echo "node $n not healthy after ${start_wait_secs}s; last log lines:" >&2
      tail -n 20 "$dir/node$n/server.log" >&2 || true
      exit 1
    fi
    pid_of "$n" >/dev/null || { echo "node $n exited; log:" >&2; tail -n 30 "$dir/node$n/server.log" >&2; exit 1; }
    sleep 0.2
  done
}

start() {
  build
  mkdir -p "$dir"
  for n in "${nodes[@]}"; do
    if pid_of "$n" >/dev/null; then
      echo "node $n already running (pid $(pid_of "$n"))"
      continue
    fi
    launch_node "$n"
  done
  for n in "${nodes[@]}"; do wait_node_healthy "$n"; done
  echo "cluster healthy"
}

# One node: SIGTERM, at most graceful_stop_secs for its graceful exit, then SIGKILL.
graceful_stop_secs=30
stop_node() {
  local n=$1 pid
  pid="$(pid_of "$n" || true)"
  [[ -n "$pid" ]] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 $((graceful_stop_secs * 5))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "node $n did not stop within ${graceful_stop_secs}s: killed" >&2
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/node$n.pid"
}

start_node() {
  launch_node "$1"
  wait_node_healthy "$1"
}

# add N: start node N (4..9) with `join = true`; it becomes a voter of every group.
add_node() {
  local n=${1:-}
  [[ "$n" =~ ^[4-9]$ ]] || die "add: give a node number 4..9"
  pid_of "$n" >/dev/null && die "node $n is already running"
  build
  mkdir -p "$dir"
  listed joined "$n" || echo "$n" >> "$dir/joined"
  if listed removed "$n"; then grep -vx "$n" "$dir/removed" > "$dir/removed.new" || true; mv "$dir/removed.new" "$dir/removed"; fi
  [[ " ${nodes[*]} " == *" $n "* ]] || nodes+=("$n")
  local t0=$SECONDS
  start_node "$n"
  wait_voter "$n" "${nodes[0]}"
  echo "node $n is a voter of every group ($((SECONDS - t0))s)"
}

# remove N: take node N out of every group (through another node), then stop it.
remove_node() {
  local n=${1:-}
  remove_from_groups "$n"
  stop_node "$n"
  echo "$n" >> "$dir/removed"
  echo "node $n removed from every group and stopped"
}

status() {
  local any=""
  for n in "${nodes[@]}"; do
    local state="stopped"
    if pid_of "$n" >/dev/null; then
      if healthy "$n"; then state="healthy"; else state="running, not ready"; fi
      [[ -z "$any" ]] && any=$n
    fi
    printf 'node %s  %-18s http://127.0.0.1:%s  raft 127.0.0.1:%s\n' "$n" "$state" "$(http_port "$n")" "$(raft_port "$n")"
  done
  [[ -n "$any" ]] || return 0
  print_groups "$any"
}

logs() {
  local follow="" which=()
  for a in "$@"; do
    case "$a" in
      -f|--follow) follow=1 ;;
      [0-9]*) which+=("$a") ;;
      *) die "logs: unknown argument $a" ;;
    esac
  done
  [[ ${#which[@]} -gt 0 ]] || which=("${nodes[@]}")
  local files=()
  for n in "${which[@]}"; do files+=("$dir/node$n/server.log"); done
  if [[ -n "$follow" ]]; then tail -n 50 -F "${files[@]}"; else tail -n 200 "${files[@]}"; fi
}

stop() {
  for n in "${nodes[@]}"; do
    pid_of "$n" >/dev/null || continue
    stop_node "$n"
    echo "node $n stopped"
  done
}

clean() {
  stop
  [[ "$dir" == "$root/.cluster" || -f "$dir/server1.toml" ]] || die "refusing to delete $dir: not a cluster folder"
  rm -rf "$dir"
  echo "removed $dir"
}

case "$cmd" in
  start) start ;;
  status) status ;;
  logs) logs "$@" ;;
  stop) stop ;;
  clean) clean ;;
  test) consistency_test ;;
  restart) rolling_restart ;;
  add) add_node "$@" ;;
  remove) remove_node "$@" ;;
  build) build ;;
  shell)
    n="${1:-1}"
    [[ -d "$dir/node$n" ]] || die "no node $n under $dir"
    cd "$dir/node$n" && exec "${SHELL:-/bin/bash}" ;;
  chaos) die "chaos runs against the Docker cluster: scripts/cluster.sh --docker chaos (the local cluster's fault tests are node/tests/cluster.rs)" ;;
  *) usage ;;
esac
