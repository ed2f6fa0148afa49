#!/usr/bin/env bash
# The whole test suite: lints, every Rust test of the workspace in release
# mode (the encoder is too slow unoptimized for the parity tests), then the
# Python integration tests that drive `fletcher serve` with real clients,
# a real redis-server and real Arrow Flight peers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
scripts/test-deps.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
# Redis-backed tests fail instead of skipping when redis-server is missing.
export FLETCHER_REQUIRE_REDIS=1
# The release binary that the Python tests drive is built here too, for
# the CLI's integration tests: building it again with `cargo build` would
# compile the workspace a second time under other features.
cargo test --release --workspace
test -x target/release/fletcher
.venv/bin/python -m pytest -q tests/python
