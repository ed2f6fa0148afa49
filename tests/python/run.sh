#!/usr/bin/env bash
# Python integration tests of `fletcher serve`: real clients (openai,
# huggingface_hub, pyarrow) against the release binary. Uses the virtual
# environment .venv at the repository root, creating it when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/fetch-model.sh
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q -r tests/python/requirements.txt
cargo build --release -p fletcher
exec .venv/bin/python -m pytest -q tests/python "$@"
