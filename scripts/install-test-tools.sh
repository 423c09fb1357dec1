#!/usr/bin/env bash
# Test tools that come from PyPI rather than Debian: moto's S3 server, the real
# S3-compatible endpoint the object-storage tests start on loopback (node/tests/common/s3.rs).
# Installed into a venv under the cache folder, once; prints the server's path.
# Usage: scripts/install-test-tools.sh   (KALAMDB_TOOLS_DIR overrides ~/.cache/kalamdb-tools)
set -euo pipefail
tools="${KALAMDB_TOOLS_DIR:-$HOME/.cache/kalamdb-tools}"
venv="$tools/moto-5.2.5"
if [ ! -x "$venv/bin/moto_server" ]; then
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'moto[s3,server]==5.2.5' >&2
fi
echo "$venv/bin/moto_server"
