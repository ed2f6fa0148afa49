#!/usr/bin/env bash
# HTTP throughput and latency of `fletcher serve` beside in-process
# `fletcher bench`, in one run, with wrk as the load generator.
#
# Usage: scripts/bench_http.sh CORPUS [N] [TEXTS_PER_REQUEST] [CLIENTS] [SECONDS]
#   defaults: N=4000, 32 texts a request, 32 clients, 30 s
# Extra server flags go in SERVE_FLAGS (for example "--devices cpu:1,cpu:1").
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${1:?usage: scripts/bench_http.sh CORPUS [N] [TEXTS_PER_REQUEST] [CLIENTS] [SECONDS]}
n=${2:-4000}
per=${3:-32}
clients=${4:-32}
seconds=${5:-30}
model=models/all-MiniLM-L6-v2
port=${PORT:-18090}
scripts/fetch-model.sh
cargo build --release -p fletcher >/dev/null
tmp=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$tmp"' EXIT

python3 - "$corpus" "$n" "$per" "$tmp" <<'PY'
import json, sys
corpus, n, per, tmp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
texts = [json.loads(l)["text"] for l, _ in zip(open(corpus), range(n))]
with open(f"{tmp}/bodies.jsonl", "w") as f:
    for i in range(0, len(texts), per):
        f.write(json.dumps({"inputs": texts[i:i + per]}) + "\n")
with open(f"{tmp}/one.jsonl", "w") as f:
    f.write(json.dumps({"inputs": "The quick brown fox jumps over the lazy dog near the river bank."}) + "\n")
with open(f"{tmp}/corpus.jsonl", "w") as f:
    for t in texts:
        f.write(json.dumps({"text": t}) + "\n")
PY

echo "== in process: fletcher bench, $n texts"
target/release/fletcher bench --model "$model" --input "$tmp/corpus.jsonl" --threads 2 --repeat 3

# The in-process cache would answer repeats; the benchmark measures the model.
target/release/fletcher serve --model "$model" --port "$port" --threads 2 \
  --cache-capacity 0 ${SERVE_FLAGS:-} >"$tmp/serve.log" 2>&1 &
server=$!
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  sleep 0.1
done

echo "== HTTP: $clients clients, $per texts a request, ${seconds}s"
BODIES="$tmp/bodies.jsonl" wrk -t2 -c"$clients" -d"${seconds}s" --timeout 30s \
  -s scripts/wrk/embed.lua "http://127.0.0.1:$port" | tee "$tmp/wrk.txt"
rps=$(awk '/^requests_per_s/ {print $2}' "$tmp/wrk.txt")
echo "texts_per_s $(python3 -c "print(round($rps * $per, 1))")"

echo "== HTTP: one short sentence, one client, 10s"
BODIES="$tmp/one.jsonl" wrk -t1 -c1 -d10s -s scripts/wrk/embed.lua "http://127.0.0.1:$port" \
  | grep -E "latency_p50_ms|requests_per_s|non2xx"
