"""Admission control under a burst: only 200s and 429s, right vectors in
every 200, and a process that stays up within its memory bound."""

import json
import pathlib
import random
import threading
import time

import numpy as np
import pytest
import requests

from conftest import Server, embed

CORPUS = pathlib.Path("/work/shared/bench/corpus-pypi-20k.jsonl")
REQUESTS = 64
TEXTS_PER_REQUEST = 256
MAX_CONCURRENT_INPUTS = 512
RSS_BOUND = 1 << 30
WORDS = ("vector embedding model server batch token queue python rust arrow fast small "
         "library package tool client parse format data stream text search index").split()


def corpus_texts(n):
    if CORPUS.is_file():
        texts = []
        with open(CORPUS) as f:
            for line in f:
                text = json.loads(line).get("text", "")
                if text:
                    texts.append(text)
                if len(texts) == n:
                    return texts
    rng = random.Random(7)
    return [f"{i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 25))) for i in range(n)]


@pytest.fixture(scope="module")
def small_server():
    s = Server("--max-concurrent-inputs", str(MAX_CONCURRENT_INPUTS))
    yield s
    s.stop_and_check()


def test_burst_gets_only_200_and_429(small_server):
    texts = corpus_texts(REQUESTS * TEXTS_PER_REQUEST)
    chunks = [texts[i * TEXTS_PER_REQUEST:(i + 1) * TEXTS_PER_REQUEST] for i in range(REQUESTS)]
    results = [None] * REQUESTS
    barrier = threading.Barrier(REQUESTS)
    peak_rss = [small_server.rss_bytes()]
    done = threading.Event()

    def watch_memory():
        while not done.is_set():
            peak_rss[0] = max(peak_rss[0], small_server.rss_bytes())
            time.sleep(0.02)

    def fire(i):
        session = requests.Session()
        barrier.wait()
        started = time.monotonic()
        r = session.post(small_server.url + "/embed", json={"inputs": chunks[i]}, timeout=120)
        results[i] = (r.status_code, time.monotonic() - started, r.json())

    watcher = threading.Thread(target=watch_memory)
    watcher.start()
    threads = [threading.Thread(target=fire, args=(i,)) for i in range(REQUESTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watcher.join()

    statuses = [r[0] for r in results]
    assert set(statuses) <= {200, 429}, statuses
    assert 200 in statuses and 429 in statuses, statuses
    refused = [r for r in results if r[0] == 429]
    assert all(body["error_type"] == "Overloaded" for _, _, body in refused)
    slowest_refusal = max(seconds for _, seconds, _ in refused)
    assert slowest_refusal < 2.0, slowest_refusal

    accepted = [i for i, r in enumerate(results) if r[0] == 200]
    for i in accepted:
        got = np.asarray(results[i][2], dtype=np.float32)
        alone = embed(small_server, chunks[i])
        assert got.shape == (TEXTS_PER_REQUEST, 384)
        assert np.abs(got - alone).max() <= 1e-6

    assert small_server.proc.poll() is None
    assert requests.get(small_server.url + "/health").status_code == 200
    assert peak_rss[0] < RSS_BOUND, peak_rss[0]
    print(f"{len(accepted)} accepted, {len(refused)} refused, slowest refusal {slowest_refusal * 1e3:.0f} ms, "
          f"peak RSS {peak_rss[0] / 2**20:.0f} MiB")
