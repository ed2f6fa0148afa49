"""Injected device faults on a two-device server: a panic or a NaN on one
device costs at most the texts it touched (as a typed error), never a wrong
or NaN vector, and moves its counter by exactly one; a slow device gets a
matching share of the work."""

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
    before = metric(server, "fletcher_panics_total")
    arm(server, device="cpu:1", fault="panic", count=1)
    outcomes = traffic_until(server, "fletcher_panics_total", before, "Backend")
    assert any(outcomes)
    # The failed batch's texts are retried on the other device, so at most
    # the requests with texts in that one batch can fail.
    assert outcomes.count(False) <= 8
    time.sleep(0.3)
    assert metric(server, "fletcher_panics_total") == before + 1
    healthy_afterwards(server)
    assert metric(server, "fletcher_panics_total") == before + 1


def test_nan_on_one_device(server):
    before = metric(server, "fletcher_output_invalid_total")
    arm(server, device="cpu:1", fault="nan", count=1)
    outcomes = traffic_until(server, "fletcher_output_invalid_total", before, "InvalidOutput")
    assert any(outcomes)
    assert outcomes.count(False) <= 1
    time.sleep(0.3)
    assert metric(server, "fletcher_output_invalid_total") == before + 1
    healthy_afterwards(server)
    assert metric(server, "fletcher_output_invalid_total") == before + 1


def test_slow_device_gets_a_third_of_the_work(server):
    arm(server, device="cpu:1", fault="slow", factor=3.0)
    try:
        ratio = None
        deadline = time.monotonic() + 30
        with ThreadPoolExecutor(40) as pool:
            # Rounds of 40 concurrent requests of 32 texts, until the
            # weights (an average of recent batches, so noisy on a busy
            # machine) are within 20% of 3:1.
            for round_ in range(4):
                batch = chunks(40, 32, offset=round_ * 11, texts=SHORT)
                for texts, (status, body) in zip(batch, pool.map(lambda t: post(server, t), batch)):
                    assert check_answer(status, body, texts, None)
                w0 = metric(server, "fletcher_gpu_weight", device="cpu:0")
                w1 = metric(server, "fletcher_gpu_weight", device="cpu:1")
                assert w0 > 0 and w1 > 0, (w0, w1)
                ratio = w0 / w1
                print(f"round {round_}: weights {w0:.3f} : {w1:.3f}, ratio {ratio:.2f}")
                if 2.4 <= ratio <= 3.6 or time.monotonic() > deadline:
                    break
        assert 2.4 <= ratio <= 3.6, ratio
        assert metric(server, "fletcher_gpu_batch_count_total", device="cpu:1") > 0
    finally:
        arm(server, device="cpu:1", fault="slow", factor=1.0)
    healthy_afterwards(server)
