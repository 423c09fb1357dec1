#!/usr/bin/env bash
# The Docker flavour of scripts/cluster.sh (`--docker`). Not built yet: the image and compose
# file arrive with issue 4.
echo "cluster.sh --docker: the Docker cluster is not built yet (issue 4); use scripts/cluster.sh without --docker" >&2
exit 2
