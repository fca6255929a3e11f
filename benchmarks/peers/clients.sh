#!/usr/bin/env bash
# Runs benchmarks/peers/clients.py (ADBC and pyarrow Flight clients from
# PyPI, in the peers' venv) against a running meshq server.
#   clients.sh HOST:PORT USER PASSWORD LATENCY_QUERIES RUNS
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
VENV="${MESHQ_PEERS_VENV:-$HOME/.cache/meshq/venv-peers}"
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV" >&2
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
exec "$VENV/bin/python" "$here/clients.py" "$@"
