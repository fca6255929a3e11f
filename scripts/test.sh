#!/usr/bin/env bash
# Runs meshq's whole test suite: unit, integration, SQL logic (.slt) and
# end-to-end tests. Needs only the Rust toolchain (pinned in
# rust-toolchain.toml); later suites install their own tools.
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

echo "== tests"
cargo test --workspace
