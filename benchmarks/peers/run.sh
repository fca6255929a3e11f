#!/usr/bin/env bash
# Runs the 22 TPC-H queries on DuckDB and DataFusion-Python over the
# benchmark's Parquet files and prints a Markdown table.
#   run.sh PARQUET_DIR RUNS WARMUP
# The peers are installed from PyPI into a venv under ~/.cache/meshq
# (MESHQ_PEERS_VENV overrides).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
VENV="${MESHQ_PEERS_VENV:-$HOME/.cache/meshq/venv-peers}"
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV" >&2
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
exec "$VENV/bin/python" "$here/peers.py" "$@"
