#!/usr/bin/env bash
# Runs clients.py (the ADBC and pyarrow Flight clients) against a running
# Flight SQL server (meshq, or the reference server).
#   clients.sh HOST:PORT USER PASSWORD LATENCY_QUERIES RUNS [SERVER_PID]
set -euo pipefail
exec "$(dirname "$0")/python.sh" clients.py "$@"
