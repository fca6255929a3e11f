#!/usr/bin/env bash
# Runs one of this folder's Python scripts in the peers' venv (DuckDB,
# DataFusion-Python and the Flight SQL clients from PyPI, pinned in
# requirements.txt), creating it on first use.
#   python.sh SCRIPT.py ARGS...
# MESHQ_PEERS_VENV overrides where the venv lives.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
VENV="${MESHQ_PEERS_VENV:-$HOME/.cache/meshq/venv-peers}"
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV" >&2
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
script="$1"
shift
exec "$VENV/bin/python" "$here/$script" "$@"
