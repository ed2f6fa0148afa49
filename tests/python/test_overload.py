"""Admission control under a burst: only 200s and 429s, right vectors in
every 200, and a process that stays up within its memory bound.

The server runs without its embedding cache, so every accepted text is
really computed during the burst, and each 200 is checked against the
sentence-transformers reference vectors of tests/data (not against the
same server's answers, which a cache would make trivially equal)."""

import threading
import time

import numpy as np
import pytest
import requests

from conftest import Server, references

REFS = references(143)
REQUESTS = 64
TEXTS_PER_REQUEST = 256
MAX_CONCURRENT_INPUTS = 512
RSS_BOUND = 1 << 30


def request_indices(i):
    """Indices into REFS of request i's texts: every request starts at its
    own place and steps through the references with its own stride, so no
    two requests carry the same texts in the same order."""
    start, stride = (i * 37) % len(REFS), (1, 2, 3, 4, 5, 6, 7, 8)[i % 8]
    return [(start + k * stride) % len(REFS) for k in range(TEXTS_PER_REQUEST)]


@pytest.fixture(scope="module")
def small_server():
    s = Server("--max-concurrent-inputs", str(MAX_CONCURRENT_INPUTS), "--cache-capacity", "0")
    yield s
    s.stop_and_check()


def test_burst_gets_only_200_and_429(small_server):
    """64 concurrent requests of 256 texts against room for 512: every
    answer is a 200 or a quick typed 429, both kinds occur, every vector of
    every 200 matches the reference vector of its text at its place
    (cosine >= 0.9999, max abs diff <= 1e-4), and the server stays up and
    below 1 GiB RSS."""
    indices = [request_indices(i) for i in range(REQUESTS)]
    chunks = [[REFS[k][0] for k in idx] for idx in indices]
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
    worst_cosine, worst_diff = 1.0, 0.0
    for i in accepted:
        got = np.asarray(results[i][2], dtype=np.float32)
        assert got.shape == (TEXTS_PER_REQUEST, 384)
        want = np.stack([REFS[k][1] for k in indices[i]])
        cosines = np.sum(got * want, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        diff = np.abs(got - want).max(axis=1)
        bad = [(p, float(cosines[p]), float(diff[p])) for p in range(TEXTS_PER_REQUEST)
               if cosines[p] < 0.9999 or diff[p] > 1e-4]
        assert not bad, f"request {i}: (place, cosine, max abs diff) off the reference: {bad[:5]}"
        worst_cosine, worst_diff = min(worst_cosine, float(cosines.min())), max(worst_diff, float(diff.max()))

    assert small_server.proc.poll() is None
    assert requests.get(small_server.url + "/health").status_code == 200
    assert peak_rss[0] < RSS_BOUND, peak_rss[0]
    print(f"{len(accepted)} accepted, {len(refused)} refused, slowest refusal {slowest_refusal * 1e3:.0f} ms, "
          f"peak RSS {peak_rss[0] / 2**20:.0f} MiB, worst cosine {worst_cosine:.6f}, worst diff {worst_diff:.2e}")
