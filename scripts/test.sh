#!/usr/bin/env bash
# Runs meshq's whole test suite: unit, integration, SQL logic (.slt),
# end-to-end tests against the real binary, and interop tests with real
# Flight SQL clients. Needs only the Rust toolchain (pinned in
# rust-toolchain.toml) and python3; the Python clients are installed from
# PyPI into a venv under ~/.cache/meshq (MESHQ_VENV overrides), and
# Debian's postgresql server package with apt when it is missing.
#
# One cargo build, debug, into the same target dir `cargo run --bin meshq`
# uses (./target, or CARGO_TARGET_DIR when set): the demo and the suite
# share it. Every binary the suite runs — meshq, meshq-bench, arrow-rs's
# flight_sql_client — is built by that one `cargo test --no-run`.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Logs from the binaries under test stay quiet unless asked for.
export MESHQ_LOG="${MESHQ_LOG:-warn}"

echo "== toolchain: $(rustc --version); target dir: $TARGET_DIR"

if [[ "${MESHQ_LINT:-0}" == 1 ]]; then
  echo "== fmt + clippy"
  cargo fmt --all -- --check
  cargo clippy --workspace --all-targets -- -D warnings
fi

# PostgreSQL for the tests of database sources: Debian's server package.
# The tests start servers of their own (initdb into temporary directories,
# as the `postgres` user when run as root); no cluster of the package's
# own is created or used.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "== installing Debian's postgresql server"
  SUDO=""
  if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
  $SUDO mkdir -p /etc/postgresql-common
  echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi

# A real browser for the web catalog's test: Debian's chromium and its
# chromedriver, driven by Selenium (tests/python/test_web_browser.py).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "== installing Debian's chromium and chromium-driver"
  SUDO=""
  if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi

echo "== build"
# One build of every test target and binary first, so the test runs below
# do not each wait on the linker in turn.
cargo test --workspace --no-run

# Unit, integration, SQL logic, end-to-end and abuse tests, and the
# benchmark harness at SF 0.01 (benchmarks/tests/smoke.rs).
echo "== tests"
cargo test --workspace

export MESHQ_FLIGHT_SQL_CLIENT="$TARGET_DIR/debug/flight_sql_client"

# Real Flight SQL clients from PyPI, in a venv this script owns.
echo "== interop: Python clients"
VENV="${MESHQ_VENV:-$HOME/.cache/meshq/venv}"
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
MESHQ_BIN="$TARGET_DIR/debug/meshq" "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/python

# The ecosystem's writers (PyIceberg, deltalake, Polars, pyarrow) and an
# S3-compatible server (moto) on 127.0.0.1, in a second venv: PyIceberg's SQL
# catalog needs SQLAlchemy 2, flightsql-dbapi above needs 1.4.
echo "== interop: tables written by the ecosystem, local and on S3"
INTEROP_VENV="${MESHQ_INTEROP_VENV:-$HOME/.cache/meshq/venv-interop}"
if [[ ! -x "$INTEROP_VENV/bin/python" ]]; then
  python3 -m venv "$INTEROP_VENV"
fi
"$INTEROP_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
(cd tests/interop && MESHQ_BIN="$TARGET_DIR/debug/meshq" "$INTEROP_VENV/bin/python" -m pytest -q -p no:cacheprovider .)

# The reference tool for ODCS quality rules (datacontract-cli, with its
# DuckDB) in a third venv: `meshq check` must give its verdicts on the same
# contracts and data, and the demo's contracts must pass its linter.
echo "== quality: meshq check against DuckDB counts and datacontract-cli"
QUALITY_VENV="${MESHQ_QUALITY_VENV:-$HOME/.cache/meshq/venv-quality}"
if [[ ! -x "$QUALITY_VENV/bin/python" ]]; then
  python3 -m venv "$QUALITY_VENV"
fi
"$QUALITY_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/quality/requirements.txt
(cd tests/quality && MESHQ_BIN="$TARGET_DIR/debug/meshq" "$QUALITY_VENV/bin/python" -m pytest -q .)
