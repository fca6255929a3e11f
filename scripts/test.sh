#!/usr/bin/env bash
# Runs meshq's whole test suite: unit, integration, SQL logic (.slt),
# end-to-end tests against the real binary, and interop tests with real
# Flight SQL clients. Needs only the Rust toolchain (pinned in
# rust-toolchain.toml) and python3; the Python clients are installed from
# PyPI into a venv under ~/.cache/meshq (MESHQ_VENV overrides).
#
# Build artefacts go to one shared target dir outside the clone so a warm
# machine reuses them; override with CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/meshq/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Logs from the binaries under test stay quiet unless asked for.
export MESHQ_LOG="${MESHQ_LOG:-warn}"

echo "== toolchain: $(rustc --version); target dir: $CARGO_TARGET_DIR"

if [[ "${MESHQ_LINT:-0}" == 1 ]]; then
  echo "== fmt + clippy"
  cargo fmt --all -- --check
  cargo clippy --workspace --all-targets -- -D warnings
fi

echo "== build"
# One build of every test target first, so the test runs below do not each
# wait on the linker in turn.
cargo test --workspace --no-run
cargo build -p meshq-benchmarks --bin meshq-bench

echo "== tests"
cargo test --workspace

# The benchmark harness at a tiny scale factor, so it keeps working. It
# checks that meshq's answers equal raw DataFusion's; no timing is judged.
echo "== benchmark smoke run (SF 0.01, debug build)"
BENCH_DIR="$(mktemp -d)"
"$CARGO_TARGET_DIR/debug/meshq-bench" --sf 0.01 --runs 1 --warmup 0 --dir "$BENCH_DIR" \
  --only policy,format,flight,catalog --products 100 --latency-queries 10 --check > "$BENCH_DIR/report.md"
rm -rf "$BENCH_DIR"

# arrow-rs's own Flight SQL command-line client, built once from crates.io.
TOOLS="${MESHQ_TOOLS:-$HOME/.cache/meshq/tools}"
if [[ ! -x "$TOOLS/bin/flight_sql_client" ]]; then
  echo "== building arrow-flight's flight_sql_client"
  CARGO_TARGET_DIR="$HOME/.cache/meshq/tools-target" cargo install arrow-flight --version 59.3.2 \
    --features "cli flight-sql tls-ring" --bin flight_sql_client --root "$TOOLS"
fi
export MESHQ_FLIGHT_SQL_CLIENT="$TOOLS/bin/flight_sql_client"

# Real Flight SQL clients from PyPI, in a venv this script owns.
echo "== interop: Python clients"
VENV="${MESHQ_VENV:-$HOME/.cache/meshq/venv}"
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
MESHQ_BIN="$CARGO_TARGET_DIR/debug/meshq" "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/python

# The ecosystem's writers (PyIceberg, deltalake, Polars, pyarrow) and an
# S3-compatible server (moto) on 127.0.0.1, in a second venv: PyIceberg's SQL
# catalog needs SQLAlchemy 2, flightsql-dbapi above needs 1.4.
echo "== interop: tables written by the ecosystem, local and on S3"
INTEROP_VENV="${MESHQ_INTEROP_VENV:-$HOME/.cache/meshq/venv-interop}"
if [[ ! -x "$INTEROP_VENV/bin/python" ]]; then
  python3 -m venv "$INTEROP_VENV"
fi
"$INTEROP_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
(cd tests/interop && MESHQ_BIN="$CARGO_TARGET_DIR/debug/meshq" "$INTEROP_VENV/bin/python" -m pytest -q -p no:cacheprovider .)
