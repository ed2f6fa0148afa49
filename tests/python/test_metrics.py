"""/metrics after real traffic: every documented metric present with its
type and labels, and the counters agreeing with the traffic sent."""

import shutil
import subprocess

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import Server, cosine, embed, references

# /work/shared/seed/metrics.md: name, type, label names.
DOCUMENTED = [
    ("fletcher_gpu_throughput", "gauge", {"device"}),
    ("fletcher_gpu_batch_time_seconds", "gauge", {"device"}),
    ("fletcher_gpu_batch_count_total", "counter", {"device"}),
    ("fletcher_gpu_sequences_total", "counter", {"device"}),
    ("fletcher_gpu_tokens_total", "counter", {"device"}),
    ("fletcher_gpu_weight", "gauge", {"device"}),
    ("fletcher_gpu_layer_duration_seconds", "histogram", {"layer_type", "device"}),
    ("fletcher_metal_pool_hits_total", "counter", set()),
    ("fletcher_metal_pool_misses_total", "counter", set()),
    ("fletcher_metal_pool_size_bytes", "gauge", set()),
    ("fletcher_metal_pool_buffers_count", "gauge", set()),
    ("fletcher_cache_hits_total", "counter", set()),
    ("fletcher_cache_misses_total", "counter", set()),
    ("fletcher_tokenization_duration_seconds", "histogram", set()),
    ("fletcher_tokenization_throughput", "gauge", set()),
    ("fletcher_batch_size_distribution", "histogram", set()),
    ("fletcher_output_invalid_total", "counter", set()),
    ("fletcher_panics_total", "counter", set()),
]

# Request-level metrics the server adds (prefix `fletcher_` as well).
SERVER = [
    ("fletcher_request_duration_seconds", "histogram", {"route"}),
    ("fletcher_vectors_processed_total", "counter", set()),
    ("fletcher_inputs_in_flight", "gauge", set()),
    ("fletcher_queue_depth", "gauge", set()),
    ("fletcher_errors_total", "counter", {"error_type"}),
]

LAYER_TYPES = ("embeddings", "attention", "feed_forward", "pooling")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",)}


def family_key(name, kind):
    """The name prometheus_client gives the family of a metric `name`."""
    return name[: -len("_total")] if kind == "counter" and name.endswith("_total") else name


def scrape(server):
    r = requests.get(server.url + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return r.text, {f.name: f for f in text_string_to_metric_families(r.text)}


def samples(families, name, kind, suffix=""):
    """(labels, value) of the samples `name + suffix` of a metric."""
    family = families[family_key(name, kind)]
    sample_name = (name[: -len("_total")] if kind == "counter" else name) + suffix
    return [(s.labels, s.value) for s in family.samples if s.name == sample_name]


def total(families, name, kind, suffix="", **match):
    return sum(v for labels, v in samples(families, name, kind, suffix)
               if all(labels.get(k) == want for k, want in match.items()))


@pytest.fixture(scope="module")
def traffic():
    """A server without the embedding cache (so every text reaches a
    device), after several sequential requests of known texts."""
    server = Server("--cache-capacity", "0")
    refs = references(64)
    texts = [t for t, _ in refs]
    # Sizes in an order that both grows and shrinks the batches.
    chunks, start = [], 0
    for n in (16, 4, 1, 24, 8, 2, 9):
        chunks.append(refs[start:start + n])
        start += n
    sent, tokens = 0, 0
    for chunk in chunks:
        chunk_texts = [t for t, _ in chunk]
        vectors = embed(server, chunk_texts)
        for v, (_, want) in zip(vectors, chunk):
            assert cosine(v, want) > 0.9999
        sent += len(chunk_texts)
        r = requests.post(server.url + "/tokenize", json={"inputs": chunk_texts}, timeout=30)
        assert r.status_code == 200, r.text
        per_text = r.json()
        assert len(per_text) == len(chunk_texts)
        tokens += sum(len(t) for t in per_text)
    # One refused request, so that fletcher_errors_total has a sample.
    r = requests.post(server.url + "/embed", json={"inputs": []}, timeout=30)
    assert r.status_code >= 400
    assert len(texts) >= sent
    text, families = scrape(server)
    yield server, text, families, sent, tokens
    server.stop_and_check()


@pytest.mark.parametrize("name,kind,labels", DOCUMENTED + SERVER, ids=lambda x: x if isinstance(x, str) else None)
def test_metric_present_with_type_and_labels(traffic, name, kind, labels):
    _, text, families, _, _ = traffic
    assert name.startswith("fletcher_")
    assert f"# TYPE {name} {kind}" in text, f"no TYPE line for {name}"
    key = family_key(name, kind)
    assert key in families, name
    family = families[key]
    assert family.type == kind, (name, family.type)
    assert family.samples, f"{name} has no samples"
    for s in family.samples:
        assert any(s.name == (key + suf) for suf in SUFFIXES[kind]), (name, s.name)
        got = set(s.labels) - ({"le"} if s.name.endswith("_bucket") else set())
        assert got == labels, (name, s.name, s.labels)


def test_counters_agree_with_traffic(traffic):
    _, _, f, sent, tokens = traffic
    sequences = total(f, "fletcher_gpu_sequences_total", "counter", "_total")
    assert sequences == sent
    assert total(f, "fletcher_gpu_tokens_total", "counter", "_total") == tokens
    batches = total(f, "fletcher_gpu_batch_count_total", "counter", "_total")
    assert batches >= 7  # seven sequential requests
    # queue.rs observes the sequences of every completed batch.
    assert total(f, "fletcher_batch_size_distribution", "histogram", "_count") == batches
    assert total(f, "fletcher_batch_size_distribution", "histogram", "_sum") == sequences
    assert total(f, "fletcher_vectors_processed_total", "counter", "_total") == sent
    assert total(f, "fletcher_panics_total", "counter", "_total") == 0
    assert total(f, "fletcher_output_invalid_total", "counter", "_total") == 0
    assert total(f, "fletcher_inputs_in_flight", "gauge") == 0
    assert total(f, "fletcher_queue_depth", "gauge") == 0
    assert total(f, "fletcher_errors_total", "counter", "_total") >= 1


def test_layer_timers_observe_each_batch_once_per_stage(traffic):
    _, _, f, _, _ = traffic
    devices = {labels["device"] for labels, _ in samples(f, "fletcher_gpu_batch_count_total", "counter", "_total")}
    assert devices == {"cpu:0"}
    for device in devices:
        batches = total(f, "fletcher_gpu_batch_count_total", "counter", "_total", device=device)
        for layer in LAYER_TYPES:
            count = total(f, "fletcher_gpu_layer_duration_seconds", "histogram", "_count",
                          layer_type=layer, device=device)
            assert count == batches, (layer, device, count, batches)
            seconds = total(f, "fletcher_gpu_layer_duration_seconds", "histogram", "_sum",
                            layer_type=layer, device=device)
            assert seconds > 0, (layer, device)
    # The encoder's stages take most of a batch; all of them fit inside it.
    attention = total(f, "fletcher_gpu_layer_duration_seconds", "histogram", "_sum", layer_type="attention")
    feed_forward = total(f, "fletcher_gpu_layer_duration_seconds", "histogram", "_sum", layer_type="feed_forward")
    batch_seconds = total(f, "fletcher_request_duration_seconds", "histogram", "_sum")
    assert 0 < attention + feed_forward < batch_seconds


def test_buffer_pool_is_reused(traffic):
    _, _, f, _, _ = traffic
    hits = total(f, "fletcher_metal_pool_hits_total", "counter", "_total")
    misses = total(f, "fletcher_metal_pool_misses_total", "counter", "_total")
    batches = total(f, "fletcher_gpu_batch_count_total", "counter", "_total")
    assert hits > 0, (hits, misses)
    # Five buffers per batch (hidden states, QKV, context, temporary,
    # intermediate).
    assert hits + misses == 5 * batches
    size = total(f, "fletcher_metal_pool_size_bytes", "gauge")
    count = total(f, "fletcher_metal_pool_buffers_count", "gauge")
    assert 0 < count <= 16
    assert 0 < size <= 256 << 20


def test_promtool_accepts_the_exposition(traffic):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    _, text, _, _, _ = traffic
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    # `check metrics` also lints naming; only parse errors fail here.
    assert "error while linting" not in (r.stdout + r.stderr), r.stdout + r.stderr
