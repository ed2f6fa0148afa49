#!/usr/bin/env bash
# Installs what the integration tests talk to: redis-server (Debian's
# package, for the shared cache tier) and a Python virtual environment at
# .venv with the real clients (openai, huggingface_hub, pyarrow,
# prometheus_client). Does nothing that is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q -r tests/python/requirements.txt
