#!/usr/bin/env bash
# Runs flight_reference_server.py (pyarrow's Flight server serving one
# table from memory) in the peers' venv; prints `ready PORT` once it serves.
#   flight_reference_server.sh PARQUET_DIR
set -euo pipefail
exec "$(dirname "$0")/python.sh" flight_reference_server.py "$@"
