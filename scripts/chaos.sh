#!/usr/bin/env bash
# Chaos run with a checker: a bounded workload (register reads, writes, creates and
# compare-and-sets, list appends and reads; 16 clients by default; plus 4 clients moving
# amounts between accounts in BEGIN ... COMMIT batches) against a 3-node cluster while a
# nemesis kills -9, partitions and pauses nodes on a schedule derived from a printed seed.
# Then: linearizability per key (stateright), no lost acknowledged append, a conserved total
# with every acknowledged transfer applied once, tail subscribers without gaps or duplicates,
# equal projection digests on every node.
#
# Usage: scripts/chaos.sh [--docker] [--seconds N] [--seed S] [--concurrency N] [...]
#   (every flag goes to kalamdb-chaos; `--help` lists them). The default is the documented
#   long run: 300 s, local processes on loopback. CI runs `--seconds 100`.
#   --docker acts on the containers of `scripts/cluster.sh --docker` (started if not running).
# It runs the release build that scripts/test.sh made (one build serves tests, benchmarks,
# chaos and the image: nothing is compiled when the suite ran first).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kalamdb-target}"
cargo build --release --locked --bin kalamdb-server --bin kalamdb-chaos
out="$CARGO_TARGET_DIR/release"
for a in "$@"; do
  if [[ "$a" == "--docker" ]]; then
    # The containers must be up; cluster.sh builds the image first if it is missing.
    "$root/scripts/cluster.sh" --docker status >/dev/null 2>&1 || "$root/scripts/cluster.sh" --docker start
  fi
done
exec "$out/kalamdb-chaos" --dir "$root/.chaos" --server-bin "$out/kalamdb-server" "$@"
