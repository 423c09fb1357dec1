#!/usr/bin/env bash
# A flamegraph of a running process, as kept under benches/profiles/: perf (Debian
# `linux-perf`) samples it with DWARF call graphs, inferno (crates.io, installed into
# ~/.cache/kalamdb-tools/inferno on first use) folds the stacks and draws the SVG.
# Usage: scripts/flamegraph.sh PID SECONDS OUT.svg [TITLE]   (start the load first)
set -euo pipefail
pid="${1:?pid}"
secs="${2:?seconds}"
out="${3:?output .svg}"
title="${4:-pid $pid, $secs s}"
[[ "$pid" =~ ^[0-9]+$ && "$secs" =~ ^[0-9]+$ && "$secs" -ge 1 && "$secs" -le 60 ]] ||
  { echo "flamegraph.sh: PID and SECONDS (1-60) are numbers" >&2; exit 2; }
command -v perf >/dev/null || { echo "perf not found: apt-get install linux-perf" >&2; exit 1; }
tools="$HOME/.cache/kalamdb-tools/inferno"
if [[ ! -x "$tools/bin/inferno-flamegraph" ]]; then
  cargo install inferno --version 0.12.8 --locked --root "$tools" >&2
fi
work="$(mktemp -d /tmp/kalamdb-flamegraph.XXXXXX)"
trap 'rm -rf "$work"' EXIT
# 499 Hz and 16 KiB of stack per sample keep a 10 s recording near 100 MB.
perf record -F 499 --call-graph dwarf,16384 -p "$pid" -o "$work/perf.data" -- sleep "$secs" >&2
perf script -i "$work/perf.data" 2>/dev/null | "$tools/bin/inferno-collapse-perf" > "$work/folded"
# Frames narrower than 1.5 px are left out: the SVG stays small enough to keep in git.
"$tools/bin/inferno-flamegraph" --minwidth 1.5 --width 1400 --title "$title" < "$work/folded" > "$out"
echo "wrote $out ($(wc -l < "$work/folded") distinct stacks)"
