"""Injected device faults on a two-device server: a panic or a NaN on one
device is retried on the other, so no request fails and no wrong or NaN
vector reaches a client, and its counter moves by exactly one; a slow
device gets a matching share of the work, and two devices of which one is
3x slower serve together at least 90% of what each serves alone, added."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import Server, cosine, embed, references

REFS = references(143)
TEXTS = [t for t, _ in REFS]
WANT = {t: v for t, v in REFS}
# Texts of at most 32 tokens, for the load-balancing test to stay quick.
SHORT = [t for t in TEXTS if 3 <= len(t.split()) <= 20]


@pytest.fixture(scope="module")
def server():
    # No embedding cache: every text must reach a device.
    s = Server("--devices", "cpu:1,cpu:1", "--fault-injection", "--cache-capacity", "0")
    yield s
    s.stop_and_check()


def metric(server, name, **labels):
    """Sum of the samples called `name` (with the full sample name, e.g.
    `fletcher_panics_total`) whose labels include `labels`."""
    text = requests.get(server.url + "/metrics", timeout=10).text
    value = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                value += s.value
    return value


def arm(server, **fault):
    r = requests.post(server.url + "/admin/fault", json=fault, timeout=10)
    assert r.status_code == 200, r.text


def post(server, texts):
    r = requests.post(server.url + "/embed", json={"inputs": texts}, timeout=60)
    return r.status_code, r.json()


def check_answer(status, body, texts, allowed_error):
    """A 200 carries right vectors for every text; anything else is a typed
    JSON error of `allowed_error` with status 500. Returns whether it was a
    success."""
    if status == 200:
        vectors = np.asarray(body, dtype=np.float32)
        assert vectors.shape == (len(texts), 384)
        assert np.isfinite(vectors).all(), "a NaN or infinity reached a client"
        for text, v in zip(texts, vectors):
            assert cosine(v, WANT[text]) > 0.9999, text
        return True
    assert status == 500, (status, body)
    assert body["error_type"] == allowed_error, body
    assert isinstance(body.get("error"), str) and body["error"]
    return False


def chunks(n_requests, size, offset=0, texts=TEXTS):
    return [[texts[(offset + r * size + i) % len(texts)] for i in range(size)] for r in range(n_requests)]


def traffic_until(server, counter, before, allowed_error, rounds=20):
    """Concurrent requests in rounds until `counter` moves; returns every
    answer's success flag."""
    outcomes = []
    with ThreadPoolExecutor(8) as pool:
        for round_ in range(rounds):
            batch = chunks(8, 6, offset=round_ * 48)
            for texts, (status, body) in zip(batch, pool.map(lambda t: post(server, t), batch)):
                outcomes.append(check_answer(status, body, texts, allowed_error))
            if metric(server, counter) > before:
                return outcomes
    pytest.fail(f"{counter} never moved: the faulty device got no batch")


def healthy_afterwards(server):
    for texts in chunks(4, 16, offset=7):
        vectors = embed(server, texts)
        for text, v in zip(texts, vectors):
            assert cosine(v, WANT[text]) > 0.9999


def test_panic_on_one_device(server):
    """One injected panic on cpu:1: the panicked batch's texts are retried
    on cpu:0, so every request of the traffic gets right vectors (none
    fails), and fletcher_panics_total moves by exactly one."""
    before = metric(server, "fletcher_panics_total")
    arm(server, device="cpu:1", fault="panic", count=1)
    outcomes = traffic_until(server, "fletcher_panics_total", before, "Backend")
    assert outcomes.count(False) == 0, f"{outcomes.count(False)} of {len(outcomes)} requests failed"
    time.sleep(0.3)
    assert metric(server, "fletcher_panics_total") == before + 1
    healthy_afterwards(server)
    assert metric(server, "fletcher_panics_total") == before + 1


def test_nan_on_one_device(server):
    """One injected NaN vector on cpu:1: that text is retried on cpu:0, so
    every request gets finite, right vectors (none fails), and
    fletcher_output_invalid_total moves by exactly one."""
    before = metric(server, "fletcher_output_invalid_total")
    arm(server, device="cpu:1", fault="nan", count=1)
    outcomes = traffic_until(server, "fletcher_output_invalid_total", before, "InvalidOutput")
    assert outcomes.count(False) == 0, f"{outcomes.count(False)} of {len(outcomes)} requests failed"
    time.sleep(0.3)
    assert metric(server, "fletcher_output_invalid_total") == before + 1
    healthy_afterwards(server)
    assert metric(server, "fletcher_output_invalid_total") == before + 1


def weights_until(server, pool, settled, deadline, offset):
    """Rounds of 40 concurrent requests of 32 short texts, each answer
    checked, until `settled(ratio)` holds for the weights' ratio cpu:0 :
    cpu:1 (an average of recent batches, so noisy on a busy machine) or
    `deadline` passes; returns the last ratio."""
    ratio = None
    for round_ in range(12):
        batch = chunks(40, 32, offset=offset + round_ * 11, texts=SHORT)
        for texts, (status, body) in zip(batch, pool.map(lambda t: post(server, t), batch)):
            assert check_answer(status, body, texts, None)
        w0 = metric(server, "fletcher_gpu_weight", device="cpu:0")
        w1 = metric(server, "fletcher_gpu_weight", device="cpu:1")
        assert w0 > 0 and w1 > 0, (w0, w1)
        ratio = w0 / w1
        print(f"round {round_}: weights {w0:.3f} : {w1:.3f}, ratio {ratio:.2f}")
        if settled(ratio) or time.monotonic() > deadline:
            break
    return ratio


def test_slow_device_gets_a_third_of_the_work(server):
    """cpu:1 slowed 3x: the weights settle within 20% of 3:1 and cpu:1
    still gets batches; once its slowdown is removed, they come back within
    1.5:1 of even."""
    slowed = True
    arm(server, device="cpu:1", fault="slow", factor=3.0)
    try:
        with ThreadPoolExecutor(40) as pool:
            ratio = weights_until(server, pool, lambda r: 2.4 <= r <= 3.6, time.monotonic() + 45, 0)
            assert 2.4 <= ratio <= 3.6, ratio
            assert metric(server, "fletcher_gpu_batch_count_total", device="cpu:1") > 0
            arm(server, device="cpu:1", fault="slow", factor=1.0)
            slowed = False
            print("slowdown removed")
            ratio = weights_until(server, pool, lambda r: 1 / 1.5 <= r <= 1.5, time.monotonic() + 20, 3)
            assert 1 / 1.5 <= ratio <= 1.5, ratio
    finally:
        if slowed:
            arm(server, device="cpu:1", fault="slow", factor=1.0)
    healthy_afterwards(server)


# Throughput of one device alone, of one 3x slower alone, and of both
# together. Batches of at most 512 tokens: the batch a device holds when the
# work runs out is what the other device may wait for at the end, so it must
# be short next to the measurement.
THROUGHPUT_BATCH_TOKENS = 512
BURST_SIZE = 16


@pytest.fixture(scope="module")
def throughput_servers():
    """`normal` (--devices cpu:1), `slow` (--devices cpu:1, slowed 3x) and
    `pair` (--devices cpu:1,cpu:1, cpu:1 slowed 3x), all without cache and
    with the same batch limit, each warmed up (and the pair's weights
    learned) by a first burst."""
    args = ("--cache-capacity", "0", "--fault-injection", "--max-batch-tokens", str(THROUGHPUT_BATCH_TOKENS))
    servers = {}
    try:
        for name, devices, slowed in (("normal", "cpu:1", None), ("slow", "cpu:1", "cpu:0"),
                                      ("pair", "cpu:1,cpu:1", "cpu:1")):
            servers[name] = Server("--devices", devices, *args)
            if slowed:
                arm(servers[name], device=slowed, fault="slow", factor=3.0)
            burst(servers[name], {"normal": 4, "slow": 2, "pair": 12}[name])
        yield servers
    finally:
        for s in servers.values():
            s.stop_and_check()


def burst(server, n_requests):
    """`n_requests` requests of BURST_SIZE short texts, sent at once; the
    texts per second from the start until the last answer. Every answer is
    checked (after the clock stopped) against the reference vectors."""
    batch = chunks(n_requests, BURST_SIZE, offset=n_requests * 7, texts=SHORT)
    sessions = [requests.Session() for _ in batch]
    start = threading.Barrier(len(batch) + 1)

    def send(k):
        start.wait()
        r = sessions[k].post(server.url + "/embed", json={"inputs": batch[k]}, timeout=120)
        return time.monotonic(), r.status_code, r.json()

    with ThreadPoolExecutor(len(batch)) as pool:
        futures = [pool.submit(send, k) for k in range(len(batch))]
        start.wait()
        began = time.monotonic()
        answers = [f.result() for f in futures]
    seconds = max(at for at, _, _ in answers) - began
    for texts, (_, status, body) in zip(batch, answers):
        assert check_answer(status, body, texts, None)
    return len(batch) * BURST_SIZE / seconds


def test_slowed_pair_serves_nine_tenths_of_the_sum(throughput_servers):
    """The same burst workload (short texts in requests of 16, cache off)
    timed end to end on each server: the pair of devices, one slowed 3x,
    serves at least 90% of the texts per second of the normal device alone
    plus the slowed one alone.

    When a burst's work runs out, one device of the pair may still wait for
    the other's last batch (~0.25 s on the slowed one), so the pair's burst
    is long (1024 texts, ~5 s); a single device has no such tail, so its
    bursts are shorter (~1.5 s). A run times the three one after the other,
    the pair in the middle, so that they see the same machine; its speed
    drifts, so the better of 2 runs counts."""
    requests_per_burst = {"normal": 16, "slow": 5, "pair": 64}
    runs = []
    for _ in range(2):
        rates = {name: burst(throughput_servers[name], requests_per_burst[name])
                 for name in ("normal", "pair", "slow")}
        rates["ratio"] = rates["pair"] / (rates["normal"] + rates["slow"])
        print(f"normal {rates['normal']:.0f}, slow {rates['slow']:.0f}, pair {rates['pair']:.0f} texts/s; "
              f"pair / (normal + slow) = {rates['ratio']:.3f}")
        # The slowdown really took: the slowed device alone serves about a
        # third of the normal one (1.0 without it; wide for a noisy machine).
        assert 0.2 <= rates["slow"] / rates["normal"] <= 0.5, rates
        runs.append(rates)
    best = max(runs, key=lambda r: r["ratio"])
    assert best["ratio"] >= 0.9, runs
