#!/usr/bin/env bash
# The spec's `./cluster.sh <verb>` inside deploy/: the Docker mode of scripts/cluster.sh.
exec "$(dirname "$0")/../scripts/cluster.sh" --docker "$@"
