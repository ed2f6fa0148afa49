#!/usr/bin/env bash
# Python integration tests of `fletcher serve` alone: real clients (openai,
# huggingface_hub, pyarrow) against the release binary. Arguments go to
# pytest (for example `-k openai`).
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/fetch-model.sh
scripts/test-deps.sh
cargo build --release -p fletcher
exec .venv/bin/python -m pytest -q tests/python "$@"
