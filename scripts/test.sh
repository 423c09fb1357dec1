#!/usr/bin/env bash
# The whole test suite: formatting, script and config linters, one release build that also
# runs clippy's lints on our crates (scripts/lint-wrapper.sh), a check that building any
# package alone compiles nothing new, then every test (unit, storage conformance, golden SQL
# against a real server, crash durability, clusters, cold storage on a folder and on a real S3
# server) with cargo-nextest on that same build.
# Arguments go to `cargo nextest run`.
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
# Without clippy the wrapper compiles with plain rustc and the lints would pass unseen.
clippy-driver -V >/dev/null 2>&1 || { echo "clippy is not installed: rustup component add clippy" >&2; exit 1; }

# The build of every target (libs, bins, tests, benches), linted as it compiles. Cargo replays
# the warnings of crates it does not recompile, so a warning fails every run until it is fixed
# (the `cargo clippy -- -D warnings` of before, without a second pass over the dependencies).
build_log="$(mktemp /tmp/kalamdb-build.XXXXXX)"
trap 'rm -f "$build_log"' EXIT
# KALAMDB_BUILD_TIMINGS=1 adds cargo's --timings report (target/cargo-timings/).
cargo build --release --workspace --all-targets --locked ${KALAMDB_BUILD_TIMINGS:+--timings} 2>&1 | tee "$build_log"
if grep -Eq '^warning(\[[^]]*\])?: ' "$build_log"; then
  echo "test.sh: the build printed warnings (clippy's included); fix them:" >&2
  grep -E '^warning(\[[^]]*\])?: ' "$build_log" | sort | uniq -c >&2
  exit 1
fi
# One compile serves everything: building a package or a binary alone must reuse the
# dependencies above. If a dependency would be compiled again (feature sets differ; run
# `cargo hakari generate` after changing dependencies), this stops at the first one.
scripts/check-one-build.py
# The object-storage tests run against a real S3 server on loopback (moto, from PyPI).
KALAMDB_MOTO_SERVER="${KALAMDB_MOTO_SERVER:-$(scripts/install-test-tools.sh)}"
export KALAMDB_MOTO_SERVER
cargo nextest run --workspace --release --locked --no-fail-fast "$@"
