#!/usr/bin/env bash
# The normalizing-flow peers (zuko, normflows) in their own venv (setup.sh says how).
#
#     bash benchmarks/peers/setup_flows.sh [ENV_DIR]        # default /tmp/flowpeers
#     /tmp/flowpeers/bin/python benchmarks/peers/flows_zuko.py --model maf --seconds 60
set -euo pipefail
exec bash "$(dirname "$0")/setup.sh" "${1:-/tmp/flowpeers}" zuko normflows
