#!/usr/bin/env bash
# The main job: bring up the local lab cluster (nspawn nodes, etcd, fleetd) and run the demo units.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec .venv/bin/fleet-lab demo "$@"
