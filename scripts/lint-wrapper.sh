#!/usr/bin/env bash
# Cargo's workspace wrapper (.cargo/config.toml): compiles each of our crates with clippy-driver,
# which is rustc plus clippy's lints. One compile then both builds and lints, where a separate
# `cargo clippy` would type-check DataFusion, arrow and every other dependency a second time
# (issue 16). Dependencies never pass through here. Cargo calls this as `WRAPPER RUSTC ARGS...`.
# Without clippy (rustup's minimal profile) the crate is compiled by plain rustc: same code,
# no lints. scripts/test.sh refuses to run without clippy and fails on any warning.
# bash, not sh: dash drops environment variables whose names are not shell identifiers, such
# as the CARGO_BIN_EXE_kalamdb-server that integration tests read with env!().
if clippy-driver -V >/dev/null 2>&1; then
  exec clippy-driver "$@"
fi
exec "$@"
