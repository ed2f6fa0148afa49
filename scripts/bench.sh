#!/usr/bin/env bash
# Side-by-side throughput of Fletcher, sentence-transformers and ONNX Runtime
# on the benchmark corpora, all with 2 threads, in one run.
#
# Usage: scripts/bench.sh BENCH_DIR [PEERS_VENV]
#   BENCH_DIR   folder with corpus-pypi-20k.jsonl, corpus-pydoc-4k.jsonl and
#               the peer scripts bench_st.py, bench_ort.py, export_onnx.py,
#               latency_peers.py
#   PEERS_VENV  a venv with torch, sentence-transformers, onnxruntime, onnx
#               (default /tmp/peers)
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${1:?usage: scripts/bench.sh BENCH_DIR [PEERS_VENV]}
venv=${2:-/tmp/peers}
model=models/all-MiniLM-L6-v2
onnx=target/minilm.onnx
scripts/fetch-model.sh
cargo build --release -p fletcher >/dev/null
export HF_HUB_OFFLINE=1
[ -f "$onnx" ] || "$venv/bin/python" "$bench/export_onnx.py" "$model" "$onnx" >/dev/null 2>&1
for corpus in "corpus-pypi-20k.jsonl 4000" "corpus-pydoc-4k.jsonl 600"; do
  set -- $corpus
  echo "== $1, first $2 texts"
  target/release/fletcher bench --model "$model" --input "$bench/$1" --limit "$2" --threads 2
  "$venv/bin/python" "$bench/bench_st.py" "$model" "$bench/$1" "$2"
  "$venv/bin/python" "$bench/bench_ort.py" "$model" "$onnx" "$bench/$1" "$2"
done
echo "== one short sentence, batch of one"
"$venv/bin/python" "$bench/latency_peers.py" "$model" "$onnx"
