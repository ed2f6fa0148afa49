#!/usr/bin/env python3
"""Throughput of `fletcher serve` with and without the embedding cache on a
workload where half the texts repeat.

Start two servers first, one with the default cache and one without:

    fletcher serve --model models/all-MiniLM-L6-v2 --port 8081
    fletcher serve --model models/all-MiniLM-L6-v2 --port 8082 --cache-capacity 0
    .venv/bin/python scripts/bench_cache.py --on http://127.0.0.1:8081 --off http://127.0.0.1:8082

The workload: the first 4000 texts of the corpus are cut to 2000 unique
texts, each sent twice, shuffled with a fixed seed, 32 texts per request,
16 concurrent clients. Every run sends its requests under a fresh
`?dataset=` (part of the cache key), so a server that already ran the
benchmark starts cold again. Prints texts/s of each server, the ratio, and
the cache and device counters each run moved.
"""

import argparse
import concurrent.futures
import json
import random
import threading
import time

import requests

WATCHED = (
    "fletcher_cache_hits_total",
    "fletcher_cache_misses_total",
    "fletcher_gpu_sequences_total",
)


def load_workload(path, texts, unique, seed):
    corpus = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                corpus.append(json.loads(line)["text"])
            if len(corpus) == texts:
                break
    # Distinct texts only, so that "unique" means unique.
    distinct = list(dict.fromkeys(corpus))
    if len(distinct) < unique:
        raise SystemExit(f"{path}: only {len(distinct)} distinct texts in the first {texts}")
    chosen = distinct[:unique]
    repeats = -(-texts // unique)
    workload = (chosen * repeats)[:texts]
    random.Random(seed).shuffle(workload)
    return workload


def counters(url):
    out = dict.fromkeys(WATCHED, 0.0)
    for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("#") or not line:
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        if name in out:
            out[name] += float(value)
    return out


def run(url, requests_texts, clients, dataset):
    local = threading.local()

    def send(texts):
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        r = session.post(url + "/embed", params={"dataset": dataset},
                         json={"inputs": texts}, timeout=300)
        if r.status_code != 200:
            raise RuntimeError(f"{url}: {r.status_code} {r.text[:200]}")
        body = r.json()
        if len(body) != len(texts):
            raise RuntimeError(f"{url}: {len(body)} vectors for {len(texts)} texts")
        return len(texts)

    before = counters(url)
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        sent = sum(pool.map(send, requests_texts))
    elapsed = time.perf_counter() - start
    after = counters(url)
    moved = {k.removeprefix("fletcher_").removesuffix("_total"): int(after[k] - before[k]) for k in WATCHED}
    return sent, elapsed, moved


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--on", required=True, help="URL of a server with the cache")
    parser.add_argument("--off", required=True, help="URL of a server with --cache-capacity 0")
    parser.add_argument("--corpus", default="/work/shared/bench/corpus-pypi-20k.jsonl")
    parser.add_argument("--texts", type=int, default=4000, help="texts sent per server")
    parser.add_argument("--unique", type=int, default=2000, help="distinct texts among them")
    parser.add_argument("--batch", type=int, default=32, help="texts per request")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--seed", type=int, default=20261203)
    args = parser.parse_args()

    workload = load_workload(args.corpus, args.texts, args.unique, args.seed)
    batches = [workload[i:i + args.batch] for i in range(0, len(workload), args.batch)]
    print(f"workload: {len(workload)} texts, {args.unique} unique, {len(batches)} requests "
          f"of {args.batch}, {args.clients} clients")

    results = {}
    for label, url in (("off", args.off), ("on", args.on)):
        # Warm-up outside the workload and outside the timing.
        requests.post(url + "/embed", json={"inputs": ["warm-up request"] * 4}, timeout=60)
        dataset = f"bench-cache-{label}-{time.time_ns()}"
        sent, elapsed, moved = run(url, batches, args.clients, dataset)
        results[label] = sent / elapsed
        print(f"cache {label:>3} ({url}): {sent} texts in {elapsed:.2f} s = "
              f"{sent / elapsed:.1f} texts/s; {moved}")
    print(f"ratio on/off: {results['on'] / results['off']:.2f}x")


if __name__ == "__main__":
    main()
