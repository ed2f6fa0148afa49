#!/usr/bin/env bash
# The whole test suite: lints, then every test of the workspace in release
# mode (the encoder is too slow unoptimized to run the parity tests).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace
