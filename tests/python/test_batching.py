"""Cross-request batching seen from outside: a request bigger than one batch
is split over several batches and answered in its own order, also when
another such request shares the batches, and a short request is not stuck
behind a long one.

Both servers run without the embedding cache, so every text is computed.
"""

import json
import threading
import time

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, Server, embed, references

REFS = references(143)
WANT = {t: v for t, v in REFS}
MAX_BATCH_TOKENS = 256


def reference_tokens():
    """Token counts (special tokens included) of the reference texts, as
    sentence-transformers' tokenizer counted them."""
    with open(ROOT / "tests" / "data" / "minilm_reference.jsonl") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return {r["text"]: r["tokens"] for r in records}


TOKENS = reference_tokens()


def metric(server, name):
    """Sum of the samples called `name` over every label set."""
    text = requests.get(server.url + "/metrics", timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    )


def check_in_order(got, texts):
    """Vector k of `got` is the reference vector of texts[k] (cosine >=
    0.9999, max abs diff <= 1e-4)."""
    assert got.shape == (len(texts), 384)
    for k, (text, v) in enumerate(zip(texts, got)):
        want = WANT[text]
        cosine = float(v @ want / (np.linalg.norm(v) * np.linalg.norm(want)))
        diff = float(np.abs(v - want).max())
        assert cosine >= 0.9999 and diff <= 1e-4, (k, text[:40], cosine, diff)


@pytest.fixture(scope="module")
def small_batches():
    s = Server("--max-batch-tokens", str(MAX_BATCH_TOKENS), "--cache-capacity", "0")
    yield s
    s.stop_and_check()


def test_request_bigger_than_a_batch_is_split_and_reassembled(small_batches):
    """All 143 reference texts (5621 tokens) in one request against
    batches of at most 256 tokens: the request takes at least 22 batches,
    and vector k is the reference vector of text k, in a shuffled order."""
    order = np.random.default_rng(3).permutation(len(REFS))
    texts = [REFS[k][0] for k in order]
    tokens = sum(TOKENS[t] for t in texts)
    assert tokens > 20 * MAX_BATCH_TOKENS
    batches_before = metric(small_batches, "fletcher_gpu_batch_count_total")
    sequences_before = metric(small_batches, "fletcher_gpu_sequences_total")
    got = embed(small_batches, texts)
    batches = metric(small_batches, "fletcher_gpu_batch_count_total") - batches_before
    sequences = metric(small_batches, "fletcher_gpu_sequences_total") - sequences_before
    assert sequences == len(texts)
    # Only a text longer than the budget gets a batch to itself, so the
    # fewest batches are the tokens over the budget.
    assert batches >= -(-tokens // MAX_BATCH_TOKENS), (batches, tokens)
    check_in_order(got, texts)
    print(f"{len(texts)} texts, {tokens} tokens in {batches:.0f} batches")


def test_two_split_requests_share_batches_and_keep_their_order(small_batches):
    """Two concurrent requests of 143 texts each (one in reference order,
    one reversed) are split over shared batches; each answer holds its own
    texts' vectors in its own order."""
    forward = [t for t, _ in REFS]
    backward = forward[::-1]
    answers = {}
    barrier = threading.Barrier(2)

    def send(name, texts):
        barrier.wait()
        answers[name] = embed(small_batches, texts)

    threads = [threading.Thread(target=send, args=a) for a in (("forward", forward), ("backward", backward))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check_in_order(answers["forward"], forward)
    check_in_order(answers["backward"], backward)


def test_short_request_is_not_stuck_behind_a_long_one():
    """A 1-text request sent while a 512-text request (~20 000 tokens) is
    being computed is answered while the long one is still running, in
    under a quarter of the long one's time; both carry the reference
    vectors.

    Batches of at most 1024 tokens: a batch that has started runs to its
    end, so the short text can only join one of the next batches, and the
    long request must span many. (With the default 16 384 tokens on a
    2-core CPU, the long request fills about one 3-second batch and the
    short text waits for it.)"""
    s = Server("--max-batch-tokens", "1024", "--cache-capacity", "0")
    try:
        long_texts = [REFS[i % len(REFS)][0] for i in range(512)]
        short_text = REFS[0][0]  # "The quick brown fox ...", 12 tokens
        long_done = {}

        def send_long():
            started = time.monotonic()
            long_done["vectors"] = embed(s, long_texts)
            long_done["seconds"] = time.monotonic() - started
            long_done["at"] = time.monotonic()

        long_thread = threading.Thread(target=send_long)
        long_thread.start()
        # Shortly after: once the long request's texts are on a device.
        deadline = time.monotonic() + 10
        while metric(s, "fletcher_gpu_batch_count_total") < 2:
            assert time.monotonic() < deadline, "the long request never reached the device"
            assert long_thread.is_alive()
            time.sleep(0.01)
        started = time.monotonic()
        got_short = embed(s, [short_text])
        short_seconds = time.monotonic() - started
        short_at = time.monotonic()
        still_running = long_thread.is_alive()
        long_thread.join()

        print(f"short request {short_seconds * 1e3:.0f} ms, long request {long_done['seconds']:.2f} s")
        assert still_running, "the long request finished before the short one"
        assert short_at < long_done["at"]
        assert short_seconds < 0.25 * long_done["seconds"], (short_seconds, long_done["seconds"])
        check_in_order(got_short, [short_text])
        check_in_order(long_done["vectors"], long_texts)
    finally:
        s.stop_and_check()
