# shellcheck shell=bash disable=SC2154
# (root, nodes and the helpers come from scripts/cluster.sh, which sources this file.)
# The Docker mode of scripts/cluster.sh (`--docker`): sourced by it, not run on its own.
# Uses cluster.sh's helpers (sql, check, healthy, print_groups, consistency_test, worker_threads) and adds
# the image build, compose lifecycle and the chaos run.
#
# No registry is needed anywhere: the image is FROM scratch, assembled from host-built
# binaries and the exact shared libraries they link.

compose_file="$root/deploy/docker-compose.yml"
project=cluster
network="${project}_kalamdb-cluster"
image=kalamdb:latest
# The name the spec uses for the locally built image.
image_alias=jamals86/kalamdb:latest
# Unprivileged user the server runs as inside the container (deploy/Dockerfile).
image_uid=10001
docker_start_wait_secs=120
chaos_wait_secs=90
container() { echo "kalamdb-node$1"; }
# The cluster secret, made on first start (see cluster_secret in cluster.sh); compose passes it
# to the nodes as KALAMDB_CLUSTER_JWT_SECRET.
secret_file="$root/deploy/.cluster-secret"

# `docker compose` (v2 plugin) when present, else `docker-compose` (v1).
compose() {
  # Verbs other than start (logs, stop, clean) need no secret: an empty one is passed, which
  # a node would refuse at startup with a message naming the fix.
  KALAMDB_CLUSTER_SECRET="${CLUSTER_SH_SECRET:-$(cat "$secret_file" 2>/dev/null || true)}"
  export KALAMDB_CLUSTER_SECRET
  # The three containers share this host's cores, as the local cluster's processes do.
  KALAMDB_WORKER_THREADS="${KALAMDB_WORKER_THREADS:-$(worker_threads)}"
  export KALAMDB_WORKER_THREADS
  if docker compose version >/dev/null 2>&1; then
    docker compose -p "$project" -f "$compose_file" "$@"
  elif command -v docker-compose >/dev/null 2>&1; then
    docker-compose -p "$project" -f "$compose_file" "$@"
  else
    die "neither 'docker compose' (v2 plugin) nor 'docker-compose' (v1) is installed (Debian: apt-get install docker-compose)"
  fi
}

need_docker() {
  command -v docker >/dev/null 2>&1 || die "docker is not installed"
  docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (docker info failed)"
}

# --- build ------------------------------------------------------------------------------

# A statically linked busybox gives the image /bin/sh, ls and wget without any libraries.
need_busybox() {
  if [[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1; then return 0; fi
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing busybox-static (a static /bin/busybox for the image)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null 2>&1 ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static; } ||
      die "could not install busybox-static; install it with: apt-get install busybox-static"
  fi
  if [[ ! -x /bin/busybox ]] || ldd /bin/busybox >/dev/null 2>&1; then
    die "the image needs a static /bin/busybox: apt-get install busybox-static"
  fi
}

# Copy FILE to the same absolute path under ROOTFS (following symlinks).
copy_to_rootfs() {
  local rootfs=$1 f=$2
  mkdir -p "$rootfs$(dirname "$f")"
  cp -L "$f" "$rootfs$f"
}

# Every shared library (and the dynamic loader) that ldd says FILE needs.
linked_libs() {
  ldd "$1" 2>/dev/null | awk '
    $2 == "=>" && $3 ~ /^\// { print $3 }
    $1 ~ /^\// { print $1 }'
}

# The binary targets of kalamdb-node (kalamdb-server) and kalamdb-cli (kalam-cli): all go into
# the image.
node_bins() {
  (cd "$root" && cargo metadata --format-version 1 --no-deps --locked) | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] in ("kalamdb-node", "kalamdb-cli"):
        for t in p["targets"]:
            if "bin" in t["kind"]:
                print(t["name"])'
}

docker_build() {
  need_docker
  need_busybox
  command -v python3 >/dev/null 2>&1 || die "python3 is needed to read cargo metadata"
  local bins
  mapfile -t bins < <(node_bins)
  [[ ${#bins[@]} -gt 0 ]] || die "cargo metadata lists no binaries for kalamdb-node and kalamdb-cli"
  echo "building ${bins[*]} (release profile) on the host"
  local bin_args=()
  for b in "${bins[@]}"; do bin_args+=(--bin "$b"); done
  # The release build is the one scripts/test.sh tests: after the suite this compiles nothing
  # (deploy/workspace-hack keeps the feature sets equal), so the image holds the tested binaries.
  (cd "$root" && cargo build --release --locked -p kalamdb-node -p kalamdb-cli "${bin_args[@]}")

  local stage="$CARGO_TARGET_DIR/docker-image"
  local rootfs="$stage/rootfs"
  rm -rf "$stage"
  mkdir -p "$rootfs/usr/local/bin" "$rootfs/bin" "$rootfs/etc/kalamdb" "$rootfs/tmp" "$stage/data/storage"
  chmod 1777 "$rootfs/tmp"

  local elf=()
  for b in "${bins[@]}"; do
    local src="$CARGO_TARGET_DIR/release/$b"
    [[ -x "$src" ]] || die "cargo built no $src"
    # Symbols and line tables are not needed in the image (and would triple its size).
    strip -o "$rootfs/usr/local/bin/$b" "$src"
    elf+=("$rootfs/usr/local/bin/$b")
  done
  # bash for `docker exec -it kalamdb-node1 /bin/bash`: busybox has no bash applet.
  cp -L /bin/bash "$rootfs/bin/bash"
  elf+=(/bin/bash)
  local libs
  mapfile -t libs < <(for f in "${elf[@]}"; do linked_libs "$f"; done | sort -u)
  for l in "${libs[@]}"; do copy_to_rootfs "$rootfs" "$l"; done
  echo "shared libraries found by ldd: ${libs[*]}"

  cp /bin/busybox "$rootfs/bin/busybox"
  local applet
  for applet in $(/bin/busybox --list); do
    [[ -e "$rootfs/bin/$applet" ]] || ln -s busybox "$rootfs/bin/$applet"
  done
  # Terminal descriptions for an interactive bash; absent ones are skipped.
  for t in x/xterm x/xterm-256color v/vt100 l/linux d/dumb; do
    for d in /lib/terminfo /usr/share/terminfo; do
      [[ -f "$d/$t" ]] && { copy_to_rootfs "$rootfs" "$d/$t"; break; }
    done
  done

  printf 'root:x:0:0:root:/root:/bin/sh\nkalamdb:x:%s:%s:KalamDB:/data:/bin/bash\n' "$image_uid" "$image_uid" > "$rootfs/etc/passwd"
  printf 'root:x:0:\nkalamdb:x:%s:\n' "$image_uid" > "$rootfs/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$rootfs/etc/nsswitch.conf"
  # The default config is node 1's; compose mounts each node's own file over it.
  cp "$root/deploy/server1.toml" "$rootfs/etc/kalamdb/server.toml"

  # Output only on failure: the legacy builder (no buildx here) prints a deprecation notice.
  local out
  out="$(docker build -q -f "$root/deploy/Dockerfile" -t "$image" -t "$image_alias" "$stage" 2>&1)" ||
    { echo "$out" >&2; die "docker build failed"; }
  local bytes
  bytes="$(docker image inspect -f '{{.Size}}' "$image")"
  echo "built $image (also tagged $image_alias): $((bytes / 1000000)) MB"
}

# --- lifecycle --------------------------------------------------------------------------

health_of() { docker inspect -f '{{if .State.Running}}{{if .State.Health}}{{.State.Health.Status}}{{else}}running{{end}}{{else}}{{.State.Status}}{{end}}' "$(container "$1")" 2>/dev/null || echo "absent"; }

# Wait until every node in $@ is healthy by Docker's healthcheck and answers on its host port.
wait_healthy() {
  local deadline=$((SECONDS + docker_start_wait_secs)) n h
  for n in "$@"; do
    while true; do
      h="$(health_of "$n")"
      if [[ "$h" == healthy ]] && healthy "$n"; then break; fi
      if [[ "$h" == exited || "$h" == dead || "$h" == absent ]]; then
        echo "$(container "$n") is $h; last log lines:" >&2
        docker logs --tail 30 "$(container "$n")" >&2 || true
        return 1
      fi
      if (( SECONDS > deadline )); then
        echo "$(container "$n") not healthy after ${docker_start_wait_secs}s (docker says: $h); last log lines:" >&2
        docker logs --tail 30 "$(container "$n")" >&2 || true
        return 1
      fi
      sleep 1
    done
  done
}

docker_start() {
  need_docker
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    echo "image $image not found: building it first"
    docker_build
  fi
  cluster_secret "$secret_file" >/dev/null
  local services=() n
  for n in "${nodes[@]}"; do
    if (( n <= 3 )); then services+=("$(container "$n")"); else docker start "$(container "$n")" >/dev/null; fi
  done
  RUST_LOG="${RUST_LOG:-info}" compose up -d "${services[@]}"
  echo "waiting for the healthchecks of ${nodes[*]/#/kalamdb-node} (at most ${docker_start_wait_secs}s)"
  wait_healthy "${nodes[@]}" || die "cluster did not become healthy"
  for n in "${nodes[@]}"; do
    echo "node $n  $(container "$n")  http://localhost:$(http_port "$n")  raft udp/$(raft_port "$n")"
  done
  echo "cluster healthy"
}

# docker stats' view of each container, and the server's own resident set (VmRSS of PID 1).
print_memory() {
  local n
  docker stats --no-stream --format 'table {{.Name}}\t{{.MemUsage}}\t{{.CPUPerc}}' \
    "${nodes[@]/#/kalamdb-node}" || true
  for n in "${nodes[@]}"; do
    printf '%s server RSS: %s\n' "$(container "$n")" \
      "$(docker exec "$(container "$n")" /bin/busybox awk '/^VmRSS/ {print $2, $3}' /proc/1/status 2>/dev/null || echo '-')"
  done
}

docker_status() {
  need_docker
  local any="" n
  for n in "${nodes[@]}"; do
    local h mem="-"
    h="$(health_of "$n")"
    if [[ "$h" != absent && "$h" != exited ]]; then
      mem="$(docker stats --no-stream --format '{{.MemUsage}}' "$(container "$n")" 2>/dev/null | cut -d/ -f1 || echo -)"
      healthy "$n" && [[ -z "$any" ]] && any=$n
    fi
    printf 'node %s  %-14s %-10s http://localhost:%s  raft udp/%s  mem %s\n' \
      "$n" "$(container "$n")" "$h" "$(http_port "$n")" "$(raft_port "$n")" "$mem"
  done
  [[ -n "$any" ]] || return 0
  print_groups "$any"
}

docker_logs() {
  need_docker
  local follow_flag=() which=() a
  for a in "$@"; do
    case "$a" in
      -f|--follow) follow_flag=(-f) ;;
      [0-9]*) which+=("$a") ;;
      *) die "logs: unknown argument $a" ;;
    esac
  done
  if [[ ${#which[@]} -eq 0 ]]; then
    compose logs --tail=200 "${follow_flag[@]}"
  else
    for n in "${which[@]}"; do docker logs --tail 200 "${follow_flag[@]}" "$(container "$n")" 2>&1; done
  fi
}

docker_shell() {
  need_docker
  local n="${1:-1}" tty=()
  [[ -t 0 ]] && tty=(-t)
  exec docker exec -i "${tty[@]}" "$(container "$n")" /bin/bash
}

docker_stop() { need_docker; compose stop; }

# For rolling_restart: docker stop sends SIGTERM (the node hands its leaderships over) and
# kills after the grace period.
stop_node() { docker stop -t 30 "$(container "$1")" >/dev/null; }
start_node() { docker start "$(container "$1")" >/dev/null; wait_healthy "$1"; }

docker_clean() {
  need_docker
  local n
  for n in $(docker ps -a --filter "label=$added_label" --format '{{.Label "kalamdb.node"}}'); do
    docker rm -f "$(container "$n")" >/dev/null
    docker volume rm "${project}_node$n-data" >/dev/null 2>&1 || true
    rm -f "$(added_config "$n")"
  done
  rm -f "$removed_file"
  compose down -v --remove-orphans
  # A new cluster, a new secret: the volumes that knew the old one are gone.
  rm -f "$secret_file"
  echo "removed containers, network $network, volumes and the cluster secret"
}

# --- membership -------------------------------------------------------------------------

# Nodes added with `add` run as plain containers (compose defines nodes 1..3 only) labelled
# $added_label on the compose network; a node taken out with `remove` is listed in
# $removed_file until `clean`.
added_label=kalamdb.cluster.added
removed_file="$root/deploy/.cluster-removed"
added_config() { echo "$root/deploy/.server$1.toml"; }

# The cluster's nodes now: 1..3 and the added containers, minus the removed ones.
docker_nodes() {
  local n all=(1 2 3)
  while read -r n; do [[ -n "$n" ]] && all+=("$n"); done < <(
    docker ps -a --filter "label=$added_label" --format '{{.Label "kalamdb.node"}}' 2>/dev/null | sort -n)
  nodes=()
  for n in "${all[@]}"; do
    [[ -f "$removed_file" ]] && grep -qx "$n" "$removed_file" && continue
    nodes+=("$n")
  done
}

# Node N's config: node 1's file with N's port and id, `join = true`, and N in the member list.
write_added_config() {
  local n=$1 f
  f="$(added_config "$n")"
  {
    echo "# Generated by scripts/cluster.sh --docker add $n (gitignored; removed by clean)."
    sed -e "s/^port = 8081$/port = $(http_port "$n")/" -e "/^\[server\]$/,/^\[/ s/^node_id = 1$/node_id = $n/" \
      -e 's/^\[cluster\]$/[cluster]\njoin = true/' "$root/deploy/server1.toml"
    echo
    echo "[[cluster.members]]"
    echo "node_id = $n"
    echo "raft_addr = \"kalamdb-node$n:$(raft_port "$n")\""
    echo "http_addr = \"kalamdb-node$n:$(http_port "$n")\""
  } > "$f"
  chmod 644 "$f"
}

# add N: run node N (4..9) from the same image on the compose network with `join = true`,
# then wait until it is a voter of every group.
docker_add() {
  local n=${1:-} t0=$SECONDS
  [[ "$n" =~ ^[4-9]$ ]] || die "add: give a node number 4..9"
  need_docker
  docker container inspect "$(container "$n")" >/dev/null 2>&1 && die "$(container "$n") already exists"
  [[ -s "$secret_file" ]] || die "no cluster secret: start the cluster first (scripts/cluster.sh --docker start)"
  write_added_config "$n"
  if [[ -f "$removed_file" ]]; then grep -vx "$n" "$removed_file" > "$removed_file.new" || true; mv "$removed_file.new" "$removed_file"; fi
  docker run -d --name "$(container "$n")" --hostname "$(container "$n")" --network "$network" \
    --label "$added_label=1" --label "kalamdb.node=$n" --stop-timeout 30 \
    -e "RUST_LOG=${RUST_LOG:-info}" -e "KALAMDB_CLUSTER_JWT_SECRET=$(cat "$secret_file")" \
    -p "127.0.0.1:$(http_port "$n"):$(http_port "$n")" -p "127.0.0.1:$(raft_port "$n"):$(raft_port "$n")/udp" \
    -v "$(added_config "$n"):/etc/kalamdb/server.toml:ro" \
    -v "${project}_node$n-data:/data" -v "${project}_shared-storage:/data/storage" \
    --health-cmd "/bin/busybox wget -q -O /dev/null http://127.0.0.1:$(http_port "$n")/v1/api/healthcheck" \
    --health-interval 2s --health-timeout 2s --health-retries 30 --health-start-period 5s \
    "$image" >/dev/null
  wait_healthy "$n" || die "node $n did not become healthy"
  docker_nodes
  wait_voter "$n" "${nodes[0]}"
  echo "node $n ($(container "$n")) is a voter of every group ($((SECONDS - t0))s)"
}

# remove N: take node N out of every group (through another node), then stop its container;
# an added node's container and volume are deleted.
docker_remove() {
  local n=${1:-}
  need_docker
  remove_from_groups "$n"
  stop_node "$n"
  echo "$n" >> "$removed_file"
  if [[ -n "$(docker ps -a -q --filter "label=$added_label" --filter "label=kalamdb.node=$n")" ]]; then
    docker rm "$(container "$n")" >/dev/null
    docker volume rm "${project}_node$n-data" >/dev/null || true
    rm -f "$(added_config "$n")"
  fi
  echo "node $n removed from every group and stopped"
}

# --- chaos ------------------------------------------------------------------------------

# Count of test.data rows whose value starts with PREFIX, as NODE has applied them itself
# (consistency local: no read index through the leader, so it shows the node's own state).
local_count() {
  sql "$1" "SELECT COUNT(*) AS n FROM test.data WHERE value LIKE '$2%'" local |
    python3 -c 'import json,sys
try: print(json.load(sys.stdin)["results"][0]["rows"][0][0])
except Exception: print(-1)'
}

# wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND until it succeeds; a check either way
# (a timeout counts as a failed check, it does not stop the run).
wait_for() {
  local secs=$1 what=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    if (( SECONDS > deadline )); then check "$what (within ${secs}s)" "timed out" "(done)"; return 0; fi
    sleep 1
  done
  echo "ok    $what"
}

count_is() { [[ "$(local_count "$1" "$2")" == "$3" ]]; }

# Every node in $@ reports the same digest and applied index for every group, all stable.
digests_equal() {
  local bodies=() n
  for n in "$@"; do bodies+=("$(curl -s -m 10 "http://127.0.0.1:$(http_port "$n")/v1/api/cluster/digest" || true)"); done
  python3 -c '
import json, sys
views = []
for b in sys.argv[1:]:
    try: d = json.loads(b)
    except Exception: sys.exit(1)
    g = d.get("groups") or []
    if not g or not all(x.get("stable") for x in g): sys.exit(1)
    views.append({x["group"]: (x["applied_index"], x["digest"]) for x in g})
sys.exit(0 if all(v == views[0] for v in views) else 1)' "${bodies[@]}"
}

# Leader of GROUP as NODE sees it ("null" when none).
leader_of() {
  curl -s -m 5 "http://127.0.0.1:$(http_port "$1")/v1/api/cluster/health?local=true" | python3 -c '
import json, sys
h = json.load(sys.stdin)
print(next((str(g["leader"]) for g in h["groups"] if g["group"] == sys.argv[1]), "null"))' "$2" 2>/dev/null || echo null
}

new_leader_among() { # group, killed node, survivors...
  local group=$1 killed=$2 n l
  shift 2
  for n in "$@"; do
    l="$(leader_of "$n" "$group")"
    [[ "$l" != null && "$l" != "None" && "$l" != "$killed" ]] || return 1
  done
}

# Every group has a leader other than $1 in the view of each of the other nodes given.
leaders_avoid() { # node, askers...
  local avoid=$1 n
  shift
  for n in "$@"; do
    curl -s -m 5 "http://127.0.0.1:$(http_port "$n")/v1/api/cluster/health?local=true" | python3 -c '
import json, sys
h = json.load(sys.stdin)
avoid = int(sys.argv[1])
sys.exit(0 if h["groups"] and all(g["leader"] not in (None, avoid) for g in h["groups"]) else 1)' "$avoid" 2>/dev/null || return 1
  done
}

# POST a statement from inside a container to its own HTTP port: used while the node is
# disconnected from the network, when the host's port mapping cannot reach it either.
sql_inside() {
  local n=$1 body
  body="$(printf '{"sql": %s}' "$(json_str "$2")")"
  # busybox wget prints the status line of an error response on stderr; not -q (it hides
  # that) and not -T (busybox 1.35's wget crashes with it): `timeout` bounds the call.
  docker exec "$(container "$n")" /bin/busybox timeout 40 /bin/busybox wget -O - \
    --header "Content-Type: application/json" --post-data "$body" \
    "http://127.0.0.1:$(http_port "$n")/v1/api/sql" 2>&1 || true
}

docker_chaos() {
  need_docker
  command -v python3 >/dev/null 2>&1 || die "chaos needs python3 to read JSON"
  failures=0
  local run rows=20 n
  run="chaos$(date +%s)"
  for n in "${nodes[@]}"; do healthy "$n" || die "node $n is not healthy; run: scripts/cluster.sh --docker start"; done
  # The spec's fault-tolerance commands write to test.data (value): an id from SNOWFLAKE_ID().
  check "0. namespace test" "$(sql 1 "CREATE NAMESPACE IF NOT EXISTS test")" '"status":"success"'
  check "0. table test.data" "$(sql 1 "CREATE TABLE IF NOT EXISTS test.data (id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(), value TEXT) WITH (TYPE = 'SHARED')")" '"status":"success"'

  echo "--- 1. node failure: docker stop kalamdb-node2"
  docker stop "$(container 2)" >/dev/null
  check "1. the spec's write on node 1 while node 2 is down" \
    "$(sql 1 "INSERT INTO test.data (value) VALUES ('during_failure')")" '"row_count":1'
  local i
  for i in $(seq 1 $rows); do
    check "1. write $i on node 1" "$(sql 1 "INSERT INTO test.data (value) VALUES ('${run}_down_$i')")" '"row_count":1'
  done
  docker start "$(container 2)" >/dev/null
  wait_healthy 2 || check "1. node 2 healthy again" "not healthy" "(healthy)"
  wait_for "$chaos_wait_secs" "1. node 2 holds the $rows rows written while it was down" count_is 2 "${run}_down_" "$rows"

  echo "--- 2. partition: docker network disconnect $network kalamdb-node3"
  docker network disconnect "$network" "$(container 3)"
  # Leadership is balanced, so node 3 leads some groups: a write in flight to it when the
  # cable is cut has an unknown outcome (503). The majority elects new leaders first.
  wait_for "$chaos_wait_secs" "2. nodes 1 and 2 elect leaders for node 3's groups" leaders_avoid 3 1 2
  for n in 1 2; do
    for i in $(seq 1 $((rows / 2))); do
      check "2. write $i on node $n" "$(sql "$n" "INSERT INTO test.data (value) VALUES ('${run}_part_${n}_$i')")" '"row_count":1'
    done
  done
  check "2. node 3 refuses a write with 503" \
    "$(sql_inside 3 "INSERT INTO test.data (value) VALUES ('${run}_isolated')")" 'HTTP/1.1 503'
  docker network connect "$network" "$(container 3)"
  wait_for "$chaos_wait_secs" "2. node 3 converges: all $rows partition rows" count_is 3 "${run}_part_" "$rows"
  wait_for "$chaos_wait_secs" "2. projection digests equal on all nodes" digests_equal 1 2 3
  check "2. the write node 3 refused is absent" "$(local_count 1 "${run}_isolated")" "0"

  echo "--- 3. leader loss: docker kill the leader of meta:catalog"
  local leader
  leader="$(leader_of 1 meta:catalog)"
  [[ "$leader" =~ ^[123]$ ]] || die "no leader for meta:catalog (node 1 says: $leader)"
  local survivors=() target
  for n in "${nodes[@]}"; do [[ "$n" != "$leader" ]] && survivors+=("$n"); done
  target="${survivors[0]}"
  local acked="$CARGO_TARGET_DIR/chaos-acked.$$"
  : > "$acked"
  # Writer: a bounded number of inserts against a surviving node; records what was acknowledged.
  (
    for i in $(seq 1 120); do
      body="$(sql "$target" "INSERT INTO test.data (value) VALUES ('${run}_kill_$i')" || true)"
      [[ "$body" == *'"row_count":1'* ]] && echo "$i" >> "$acked"
      sleep 0.05
    done
  ) &
  local writer=$! deadline=$((SECONDS + 60))
  while (( $(wc -l < "$acked") < 20 && SECONDS < deadline )); do sleep 0.2; done
  local before_kill
  before_kill="$(wc -l < "$acked")"
  docker kill "$(container "$leader")" >/dev/null
  echo "      killed kalamdb-node$leader after $before_kill acknowledged writes; writer continues on node $target"
  wait "$writer" || true
  wait_for 30 "3. meta:catalog elected a new leader among nodes ${survivors[*]}" \
    new_leader_among meta:catalog "$leader" "${survivors[@]}"
  local total_acked
  total_acked="$(wc -l < "$acked")"
  if (( total_acked > before_kill )); then
    echo "ok    3. writes acknowledged after the kill ($((total_acked - before_kill)))"
  else
    check "3. writes acknowledged after the kill" "none" "(some)"
  fi
  check "3. DDL after the kill (meta group)" \
    "$(sql "$target" "CREATE TABLE IF NOT EXISTS test.after_kill (id BIGINT PRIMARY KEY, v TEXT) WITH (TYPE = 'SHARED')")" '"status":"success"'
  local present
  present="$(sql "$target" "SELECT value FROM test.data WHERE value LIKE '${run}_kill_%'" || true)"
  local missing
  missing="$(python3 -c '
import json, sys
rows = json.loads(sys.argv[1])["results"][0]["rows"]
have = {r[0].rsplit("_", 1)[1] for r in rows}
acked = [l.strip() for l in open(sys.argv[2]) if l.strip()]
print(" ".join(a for a in acked if a not in have))' "$present" "$acked" 2>&1 || echo "unreadable")"
  rm -f "$acked"
  check "3. all $total_acked acknowledged writes present" "missing: [${missing}]" "missing: []"
  docker start "$(container "$leader")" >/dev/null
  wait_healthy "$leader" || check "3. node $leader healthy again" "not healthy" "(healthy)"
  wait_for "$chaos_wait_secs" "3. node $leader rejoined: projection digests equal on all nodes" digests_equal 1 2 3

  echo "--- memory after chaos"
  print_memory
  if (( failures > 0 )); then echo "$failures chaos check(s) failed"; exit 1; fi
  echo "all chaos checks passed"
}

docker_main() {
  local verb="${1:-}"
  shift || true
  if docker info >/dev/null 2>&1; then docker_nodes; fi
  case "$verb" in
    build) docker_build ;;
    start) docker_start ;;
    status) docker_status ;;
    logs) docker_logs "$@" ;;
    shell) docker_shell "$@" ;;
    stop) docker_stop ;;
    clean) docker_clean ;;
    test) consistency_test ;;
    restart) need_docker; rolling_restart ;;
    add) docker_add "$@" ;;
    remove) docker_remove "$@" ;;
    chaos) docker_chaos ;;
    *) usage ;;
  esac
}
