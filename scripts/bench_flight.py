#!/usr/bin/env python3
"""Rows per second through Flight DoExchange against HTTP POST /embed.

Both sides embed the same corpus (the first --rows texts of --corpus, JSON
lines with a "text" field), split into chunks of --batch rows that
--clients concurrent clients take from a shared queue. Against a running
server:

    target/release/fletcher serve --model models/all-MiniLM-L6-v2 \\
        --port 18080 --flight-port 18081 [--cache-capacity 0]
    .venv/bin/python scripts/bench_flight.py \\
        --http http://127.0.0.1:18080 --flight grpc://127.0.0.1:18081
"""

import argparse
import json
import queue
import threading
import time

import pyarrow as pa
import pyarrow.flight as flight
import requests


def load(path, rows):
    texts = []
    with open(path) as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)["text"])
            if len(texts) == rows:
                break
    return texts


def chunks(texts, size):
    return [(start, texts[start:start + size]) for start in range(0, len(texts), size)]


def run(clients, work, worker):
    """Runs `worker(item)` over `work` on `clients` threads; returns seconds
    and the rows answered."""
    todo = queue.Queue()
    for item in work:
        todo.put(item)
    answered = [0] * clients
    errors = []

    def loop(k):
        try:
            state = {}
            while True:
                try:
                    item = todo.get_nowait()
                except queue.Empty:
                    return
                answered[k] += worker(item, state)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    return seconds, sum(answered)


def http_worker(url):
    def worker(item, state):
        session = state.setdefault("session", requests.Session())
        _, texts = item
        r = session.post(url + "/embed", json={"inputs": texts}, timeout=600)
        r.raise_for_status()
        vectors = r.json()
        assert len(vectors) == len(texts)
        return len(vectors)

    return worker


def flight_worker(url):
    def worker(item, state):
        client = state.setdefault("client", flight.FlightClient(url))
        start, texts = item
        ids = pa.array(range(start, start + len(texts)), pa.int64())
        batch = pa.record_batch([ids, pa.array(texts, pa.string())], names=["id", "text"])
        writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(b""))
        writer.begin(batch.schema)
        writer.write_batch(batch)
        writer.done_writing()
        table = reader.read_all()
        writer.close()
        assert table.column("id").to_pylist() == ids.to_pylist()
        return table.num_rows

    return worker


def cache_hits(http_url):
    """fletcher_cache_hits_total from /metrics, or None when not exported."""
    try:
        text = requests.get(http_url + "/metrics", timeout=10).text
    except requests.RequestException:
        return None
    for line in text.splitlines():
        if line.startswith("fletcher_cache_hits_total"):
            return float(line.split()[-1])
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--http", required=True, help="HTTP base URL, e.g. http://127.0.0.1:18080")
    parser.add_argument("--flight", required=True, help="Flight URL, e.g. grpc://127.0.0.1:18081")
    parser.add_argument("--corpus", default="/work/shared/bench/corpus-pypi-20k.jsonl")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64, help="rows per request / per DoExchange")
    parser.add_argument("--warmup", type=int, default=64, help="rows embedded once before timing")
    args = parser.parse_args()

    texts = load(args.corpus, args.rows)
    work = chunks(texts, args.batch)
    warm = chunks(load(args.corpus, args.rows + args.warmup)[args.rows:], args.batch)
    http, fl = http_worker(args.http.rstrip("/")), flight_worker(args.flight)
    run(1, warm, http)
    run(1, warm, fl)

    print(f"corpus: {len(texts)} texts of {args.corpus}, {args.clients} clients, {args.batch} rows a call")
    figures = {}
    for name, worker in (("http /embed", http), ("flight DoExchange", fl)):
        before = cache_hits(args.http.rstrip("/"))
        seconds, rows = run(args.clients, work, worker)
        after = cache_hits(args.http.rstrip("/"))
        assert rows == len(texts), (name, rows)
        figures[name] = rows / seconds
        hits = "" if before is None or after is None else f" ({after - before:.0f} cache hits)"
        print(f"{name:>18}: {rows} rows in {seconds:.2f} s = {rows / seconds:.1f} rows/s{hits}")
    ratio = figures["flight DoExchange"] / figures["http /embed"]
    print(f"{'flight / http':>18}: {ratio:.2f}x")
    if cache_hits(args.http.rstrip("/")):
        print("note: the server's embedding cache answered texts; the second side reuses the first's "
              "vectors. Start the server with --cache-capacity 0 to compare the transports.")


if __name__ == "__main__":
    main()
