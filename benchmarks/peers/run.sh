#!/usr/bin/env bash
# Runs the 22 TPC-H queries on DuckDB and DataFusion-Python over the
# benchmark's Parquet files and prints a Markdown table.
#   run.sh PARQUET_DIR RUNS WARMUP
set -euo pipefail
exec "$(dirname "$0")/python.sh" peers.py "$@"
