#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test (unit, storage conformance,
# golden SQL against a real server, crash durability) with cargo-nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kalamdb-target}"
cargo fmt --all -- --check
# The cluster scripts are part of the product (the spec's commands): lint them too.
if command -v shellcheck >/dev/null 2>&1; then
  shellcheck -x scripts/*.sh deploy/cluster.sh .ci/run
else
  echo "shellcheck not installed: scripts not linted (apt-get install shellcheck)"
fi
# The scrape config users get in deploy/ must load in Prometheus.
if command -v promtool >/dev/null 2>&1; then
  promtool check config deploy/prometheus.yml
else
  echo "promtool not installed: deploy/prometheus.yml not checked (apt-get install prometheus)"
fi
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo nextest run --workspace --locked --no-fail-fast "$@"
