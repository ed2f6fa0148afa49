"""The embedding cache seen from outside: `fletcher serve` answers repeated
texts without device work, keeps datasets, prompts and truncation apart,
stays within its byte budget, and shares entries through Redis without
failing a request when Redis goes away.

Device work is read from fletcher_gpu_sequences_total (texts run on a
device, summed over devices); the reference answers come from a server with
--cache-capacity 0.
"""

import concurrent.futures
import time

import numpy as np
import pytest

from cache_helpers import (
    CACHE_BYTES,
    CACHE_ENTRIES,
    CACHE_HITS,
    CACHE_MISSES,
    DEVICE_SEQUENCES,
    REDIS_ERRORS,
    Delta,
    RedisServer,
    embed,
    flight_embed,
    metrics,
    require_redis,
    unique_texts,
)
from conftest import Server, free_port, model_dir

# A request's normal time on this small model, with room for a loaded
# machine; a Redis outage may add at most a few 50 ms timeouts to it.
NORMAL_SECONDS = 3.0


def vocabulary_words(n):
    """n distinct lowercase words of the model's vocabulary: texts of one
    token each, the cheapest distinct texts to embed."""
    with open(f"{model_dir()}/vocab.txt", encoding="utf-8") as f:
        lines = (line.strip() for line in f)
        words = [w for w in lines if w.isascii() and w.isalpha() and w.islower() and len(w) >= 3]
    assert len(words) >= n, len(words)
    return words[:n]


@pytest.fixture(scope="module")
def cached():
    """Default cache (256 MiB in memory), with a Flight port for prompts."""
    port = free_port()
    s = Server("--flight-port", str(port))
    s.flight_port = port
    yield s
    s.stop_and_check()


@pytest.fixture(scope="module")
def uncached():
    s = Server("--cache-capacity", "0")
    yield s
    s.stop_and_check()


def test_uncached_server_has_no_cache(uncached):
    texts = unique_texts("nocache", 4)
    embed(uncached, texts)
    with Delta(uncached) as d:
        embed(uncached, texts)
    assert d[DEVICE_SEQUENCES] == 4
    assert d[CACHE_HITS] == 0
    assert metrics(uncached)[CACHE_BYTES] == 0


def test_repeat_is_answered_without_device_work(cached, uncached):
    texts = unique_texts("repeat", 12)
    with Delta(cached) as d:
        first = embed(cached, texts)
    assert d[DEVICE_SEQUENCES] == 12 and d[CACHE_MISSES] == 12 and d[CACHE_HITS] == 0, d

    with Delta(cached) as d:
        again = embed(cached, texts)
    assert d[DEVICE_SEQUENCES] == 0 and d[CACHE_HITS] == 12 and d[CACHE_MISSES] == 0, d
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(first, embed(uncached, texts))

    # One entry answers every normalize/dimensions combination, each as an
    # uncached server answers it.
    for options in (
        {"normalize": False},
        {"dimensions": 128},
        {"normalize": False, "dimensions": 64},
        {"normalize": True, "dimensions": 384},
    ):
        with Delta(cached) as d:
            got = embed(cached, texts, **options)
        assert d[DEVICE_SEQUENCES] == 0 and d[CACHE_HITS] == 12, (options, d)
        want = embed(uncached, texts, **options)
        assert got.shape == want.shape, options
        np.testing.assert_array_equal(got, want, err_msg=str(options))
    unnormalized = embed(cached, texts, normalize=False)
    assert not np.allclose(np.linalg.norm(unnormalized, axis=1), 1.0)


def test_datasets_do_not_share_entries(cached):
    texts = unique_texts("dataset", 6)
    with Delta(cached) as d:
        alpha = embed(cached, texts, dataset="alpha")
    assert d[CACHE_MISSES] == 6 and d[DEVICE_SEQUENCES] == 6, d
    for dataset in ("beta", None):
        with Delta(cached) as d:
            other = embed(cached, texts, dataset=dataset)
        assert d[CACHE_MISSES] == 6 and d[CACHE_HITS] == 0 and d[DEVICE_SEQUENCES] == 6, (dataset, d)
        np.testing.assert_array_equal(other, alpha)
    with Delta(cached) as d:
        again = embed(cached, texts, dataset="alpha")
    assert d[CACHE_HITS] == 6 and d[DEVICE_SEQUENCES] == 0, d
    np.testing.assert_array_equal(again, alpha)


def test_prompts_do_not_share_entries(cached):
    # HTTP refuses prompt_name (the model has no prompts); Flight takes a
    # literal prompt, and both front ends share one cache.
    texts = unique_texts("prompt", 5)
    with Delta(cached) as d:
        plain_flight = flight_embed(cached.flight_port, texts, normalize=True)
    assert d[CACHE_MISSES] == 5 and d[DEVICE_SEQUENCES] == 5, d
    with Delta(cached) as d:
        plain_http = embed(cached, texts)
    assert d[CACHE_HITS] == 5 and d[DEVICE_SEQUENCES] == 0, d
    np.testing.assert_array_equal(plain_http, plain_flight)

    for prompt in ("query: ", "passage: "):
        with Delta(cached) as d:
            prompted = flight_embed(cached.flight_port, texts, normalize=True, prompt=prompt)
        assert d[CACHE_MISSES] == 5 and d[CACHE_HITS] == 0 and d[DEVICE_SEQUENCES] == 5, (prompt, d)
        assert not np.allclose(prompted, plain_flight, atol=1e-4)
        with Delta(cached) as d:
            again = flight_embed(cached.flight_port, texts, normalize=True, prompt=prompt)
        assert d[CACHE_HITS] == 5 and d[DEVICE_SEQUENCES] == 0, (prompt, d)
        np.testing.assert_array_equal(again, prompted)


def test_truncation_side_does_not_share_entries(cached, uncached):
    tag = unique_texts("truncation", 1)[0]
    texts = [f"{tag} head " + "filler word " * 300 + "tail end", f"{tag} short"]
    right = embed(cached, texts, truncate=True, truncation_direction="Right")
    with Delta(cached) as d:
        left = embed(cached, texts, truncate=True, truncation_direction="Left")
    assert d[CACHE_MISSES] == 2 and d[DEVICE_SEQUENCES] == 2, d
    assert not np.allclose(left[0], right[0], atol=1e-4)
    np.testing.assert_array_equal(left, embed(uncached, texts, truncate=True, truncation_direction="Left"))
    np.testing.assert_array_equal(right, embed(uncached, texts, truncate=True, truncation_direction="Right"))


def test_part_hits_part_misses_in_one_request(cached, uncached):
    texts = unique_texts("mixed", 16)
    warm = texts[1::3]  # every third text, from the second
    embed(cached, warm)
    with Delta(cached) as d:
        got = embed(cached, texts)
    assert d[CACHE_HITS] == len(warm), d
    assert d[CACHE_MISSES] == len(texts) - len(warm), d
    assert d[DEVICE_SEQUENCES] == len(texts) - len(warm), d
    np.testing.assert_array_equal(got, embed(uncached, texts))
    # A text repeated inside one request is answered at every place.
    doubled = [texts[0], texts[5], texts[0], "x " + texts[5]]
    np.testing.assert_array_equal(embed(cached, doubled), embed(uncached, doubled))
    with Delta(cached) as d:
        got = embed(cached, texts, dimensions=32, normalize=False)
    assert d[CACHE_HITS] == len(texts) and d[DEVICE_SEQUENCES] == 0, d
    np.testing.assert_array_equal(got, embed(uncached, texts, dimensions=32, normalize=False))


def test_memory_tier_is_bounded():
    """A 4 MiB memory tier filled with ~11x its capacity of distinct texts
    stays within its budget: the cache-bytes gauge never passes the
    capacity, and RSS grows by at most the capacity plus 16 MiB from a
    baseline taken after warm-up, which is well below what an unbounded
    tier would add (over 40 MiB here; measured: ~5 MiB bounded, ~52 MiB
    with a 1 GiB capacity)."""
    capacity = 4 << 20
    # Each entry is charged entry_weight(384) = 1840 bytes (384 floats,
    # key, Arc header and 256 bytes of map overhead), so 2279 entries fit.
    charged_per_entry = 384 * 4 + 32 + 16 + 256
    fit = capacity // charged_per_entry
    # Distinct two-word texts of the vocabulary: 4 tokens each, the same
    # shape throughout, so the batch buffers reach their working size in
    # the warm-up and do not grow afterwards.
    words = vocabulary_words(200)
    texts = [f"{a} {b}" for a in words for b in words][:26_000]
    per_request = 500
    chunks = [texts[i:i + per_request] for i in range(0, len(texts), per_request)]
    # Warm-up: 2000 texts (less than the capacity), two requests at a time
    # as in the fill, so allocator arenas and batch buffers settle.
    warm, rest = chunks[:4], chunks[4:]
    filled = sum(len(c) for c in rest)
    assert filled >= 10 * fit, (filled, fit)
    # What the fill would add to an unbounded tier: at least the vector
    # and key of every entry, without any map overhead.
    unbounded = filled * (384 * 4 + 32)
    slack = 16 << 20
    assert capacity + slack < unbounded * 0.6, (capacity + slack, unbounded)

    s = Server("--cache-capacity", str(capacity))
    try:
        # dimensions=1 keeps the answers small; the cache stores the full
        # 384-float vector whatever the request's dimensions.
        def fill(chunk):
            embed(s, chunk, dimensions=1)
            return metrics(s)[CACHE_BYTES]

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(fill, warm))
        baseline = s.rss_bytes()
        peak_bytes = 0.0
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for held in pool.map(fill, rest):
                peak_bytes = max(peak_bytes, held)
        m = metrics(s)
        rss = s.rss_bytes()
        print(f"RSS after warm-up {baseline / 2**20:.1f} MiB, growth {(rss - baseline) / 2**20:.1f} MiB "
              f"(bound {(capacity + slack) / 2**20:.0f} MiB, unbounded would add >= {unbounded / 2**20:.0f} MiB); "
              f"cache {m[CACHE_BYTES] / 2**20:.2f} MiB, {m[CACHE_ENTRIES]:.0f} entries")
        assert m[DEVICE_SEQUENCES] >= len(texts), m
        assert peak_bytes <= capacity, peak_bytes
        assert 0 < m[CACHE_BYTES] <= capacity, m
        assert 0 < m[CACHE_ENTRIES] <= fit, m
        # Slack over baseline + capacity: allocator fragmentation and
        # per-thread arenas, HTTP buffers and moka's queues and frequency
        # sketch.
        assert rss - baseline <= capacity + slack, (rss, baseline)
    finally:
        s.stop_and_check()


def test_redis_tier_shared_and_survives_outage(uncached):
    redis = RedisServer(require_redis())
    servers = []
    try:
        prefix = f"fletcher-test-{time.monotonic_ns()}:"
        a = Server("--cache-url", redis.url, "--cache-prefix", prefix)
        servers.append(a)
        b = Server("--cache-url", redis.url, "--cache-prefix", prefix)
        servers.append(b)

        # Embedded on A, answered on B from Redis.
        texts = unique_texts("shared", 10)
        va = embed(a, texts)
        assert redis.dbsize() >= 10
        with Delta(b) as d:
            vb = embed(b, texts)
        assert d[DEVICE_SEQUENCES] == 0 and d[CACHE_HITS] == 10 and d[CACHE_MISSES] == 0, d
        np.testing.assert_array_equal(vb, va)
        np.testing.assert_array_equal(vb, embed(uncached, texts))
        # B's copy now lives in its memory tier too; other options derive
        # from it.
        with Delta(b) as d:
            vb32 = embed(b, texts, dimensions=32, normalize=False)
        assert d[DEVICE_SEQUENCES] == 0 and d[CACHE_HITS] == 10, d
        np.testing.assert_array_equal(vb32, embed(uncached, texts, dimensions=32, normalize=False))

        # Redis goes away: every request still answers, correctly and in
        # normal time, and the errors are counted.
        redis.stop()
        with Delta(a) as da, Delta(b) as db:
            for round_ in range(6):
                fresh = unique_texts(f"outage{round_}", 4)
                for server in (a, b):
                    for batch in (fresh, texts[:3] + fresh[:1]):
                        start = time.monotonic()
                        got = embed(server, batch, timeout=30)
                        elapsed = time.monotonic() - start
                        assert elapsed < NORMAL_SECONDS, (server.url, elapsed)
                        np.testing.assert_array_equal(got, embed(uncached, batch))
        assert da[REDIS_ERRORS] > 0, da
        assert db[REDIS_ERRORS] > 0, db

        # Redis is back (empty, same port): once the breaker's cool-down
        # (5 s) has passed, entries written by A are hits on B again.
        redis.start()
        deadline = time.monotonic() + 20
        attempts = []
        while True:
            fresh = unique_texts("back", 4)
            va = embed(a, fresh)
            with Delta(b) as d:
                vb = embed(b, fresh)
            attempts.append(repr(d))
            np.testing.assert_array_equal(vb, va)
            if d[CACHE_HITS] == 4 and d[DEVICE_SEQUENCES] == 0:
                break
            assert time.monotonic() < deadline, "B never hit A's entries after Redis came back:\n" + "\n".join(attempts)
            time.sleep(0.5)
        print(f"B hit A's new entries {len(attempts)} attempt(s) after Redis restarted")
        assert redis.dbsize() >= 4
        for s in servers:
            s.stop_and_check()
        servers.clear()
    finally:
        for s in servers:
            s.terminate()
        redis.stop()
