#!/usr/bin/env bash
# Side-by-side throughput of Fletcher, sentence-transformers and ONNX Runtime
# on the benchmark corpora, all with 2 threads, in one run.
#
# Usage: [ROUNDS=N] scripts/bench.sh BENCH_DIR [PEERS_VENV]
#   BENCH_DIR   folder with corpus-pypi-20k.jsonl, corpus-pydoc-4k.jsonl and
#               the peer scripts bench_st.py, bench_ort.py, export_onnx.py,
#               latency_peers.py
#   PEERS_VENV  a venv with torch, sentence-transformers, onnxruntime, onnx
#               (default /tmp/peers)
#   ROUNDS      (environment) rounds over both corpora (default 2)
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
# Each round runs the three engines back to back on one corpus and prints
# their ratios, so a ratio is only ever taken between runs minutes apart.
rounds=${ROUNDS:-2}
rate() { sed -n 's/.* \([0-9.]*\) texts\/s.*/\1/p' | head -n1; }
for round in $(seq 1 "$rounds"); do
  for corpus in "corpus-pypi-20k.jsonl 4000" "corpus-pydoc-4k.jsonl 600"; do
    set -- $corpus
    echo "== round $round: $1, first $2 texts"
    f=$(target/release/fletcher bench --model "$model" --input "$bench/$1" --limit "$2" --threads 2)
    echo "$f"
    st=$("$venv/bin/python" "$bench/bench_st.py" "$model" "$bench/$1" "$2")
    echo "$st"
    ort=$("$venv/bin/python" "$bench/bench_ort.py" "$model" "$onnx" "$bench/$1" "$2")
    echo "$ort"
    f_rate=$(echo "$f" | sed -n 's/^throughput *\([0-9.]*\) texts\/s.*/\1/p')
    st_rate=$(echo "$st" | rate)
    ort_rate=$(echo "$ort" | rate)
    awk -v r="$round" -v c="$1" -v f="$f_rate" -v s="$st_rate" -v o="$ort_rate" \
      'BEGIN { printf "ratio       round %s %s: Fletcher/ST %.2f, Fletcher/ORT %.2f\n", r, c, f / s, f / o }'
  done
done
echo "== one short sentence, batch of one"
"$venv/bin/python" "$bench/latency_peers.py" "$model" "$onnx"
