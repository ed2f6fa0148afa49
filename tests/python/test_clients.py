"""Real clients against `fletcher serve`: openai, huggingface_hub, pyarrow."""

import base64

import numpy as np
import pyarrow as pa
import pytest
import requests
from huggingface_hub import InferenceClient
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from conftest import cosine, embed, references

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Fletcher turns text into vectors.",
    "Ceci n'est pas une pipe.",
]
ARROW = "application/vnd.apache.arrow.stream"


def openai_client(server, key="x"):
    return OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def as_vector(embedding):
    """An OpenAI embedding as float32: the client decodes base64 itself only
    when it chose the format; an explicit "base64" comes back as a string."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding, dtype=np.float32)


@pytest.mark.parametrize("encoding_format", ["float", "base64", None])
def test_openai_matches_embed(server, encoding_format):
    expected = embed(server, TEXTS)
    kwargs = {} if encoding_format is None else {"encoding_format": encoding_format}
    response = openai_client(server).embeddings.create(model="minilm", input=TEXTS, **kwargs)
    assert response.model == "minilm"
    assert [d.index for d in response.data] == [0, 1, 2]
    if encoding_format == "base64":
        assert all(isinstance(d.embedding, str) for d in response.data)
    got = np.stack([as_vector(d.embedding) for d in response.data])
    assert got.shape == (3, 384)
    assert np.abs(got - expected).max() <= 1e-6
    assert response.usage.prompt_tokens == response.usage.total_tokens
    assert response.usage.prompt_tokens >= 3 * 3


def test_openai_matches_reference_vectors(server):
    refs = references(5)
    response = openai_client(server).embeddings.create(
        model="m", input=[t for t, _ in refs], encoding_format="base64"
    )
    for (text, want), item in zip(refs, response.data):
        c = cosine(as_vector(item.embedding), want)
        assert c >= 0.99999, (text, c)


def test_openai_dimensions(server):
    response = openai_client(server).embeddings.create(model="m", input="hello", dimensions=64)
    v = np.asarray(response.data[0].embedding)
    assert v.shape == (64,)
    assert abs(np.linalg.norm(v) - 1.0) < 1e-5


def test_huggingface_hub_feature_extraction(server):
    got = InferenceClient(model=server.url).feature_extraction("text")
    expected = embed(server, "text")
    assert np.asarray(got).shape == (1, 384)
    assert np.abs(np.asarray(got, dtype=np.float32) - expected).max() <= 1e-6


def arrow_body(batches):
    schema = pa.schema([("id", pa.int64()), ("text", pa.large_string())])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        start = 0
        for texts in batches:
            ids = pa.array(range(start, start + len(texts)), pa.int64())
            writer.write_batch(pa.record_batch([ids, pa.array(texts, pa.large_string())], schema=schema))
            start += len(texts)
    return sink.getvalue().to_pybytes()


def post_arrow(server, body, query=""):
    r = requests.post(f"{server.url}/embed{query}", data=body, headers={"Content-Type": ARROW}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == ARROW
    return pa.ipc.open_stream(r.content).read_all()


def test_arrow_f32_and_f16(server):
    expected = embed(server, TEXTS)
    body = arrow_body([TEXTS[:2], TEXTS[2:]])

    table = post_arrow(server, body)
    assert table.column_names == ["text", "embedding"]
    assert table.column("text").to_pylist() == TEXTS
    assert table.schema.field("embedding").type == pa.list_(pa.field("item", pa.float32(), False), 384)
    got = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    assert np.abs(got - expected).max() <= 1e-6

    table = post_arrow(server, body, "?format=f16")
    assert table.schema.field("embedding").type.value_type == pa.float16()
    halves = np.stack([np.asarray(v.values.to_numpy()) for v in table.column("embedding").combine_chunks()])
    assert halves.dtype == np.float16
    assert np.array_equal(halves, expected.astype(np.float16))


def test_arrow_query_options(server):
    table = post_arrow(server, arrow_body([["hello world"]]), "?dimensions=32&normalize=false")
    v = np.asarray(table.column("embedding").to_pylist()[0])
    assert v.shape == (32,)
    assert abs(np.linalg.norm(v) - 1.0) > 1e-3


def test_headers_and_metrics(server):
    r = requests.post(server.url + "/embed", json={"inputs": "hi"}, headers={"x-request-id": "py-42"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "py-42"
    for name in ("x-tokenization-time", "x-queue-time", "x-inference-time", "x-total-time"):
        assert int(r.headers[name]) >= 0
    requests.post(server.url + "/embed", json={"inputs": []})
    r = requests.get(server.url + "/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    durations = [
        s for s in families["fletcher_request_duration_seconds"].samples
        if s.name.endswith("_count") and s.labels["route"] == "/embed"
    ]
    assert durations and durations[0].value >= 2
    errors = {s.labels["error_type"]: s.value for s in families["fletcher_errors"].samples
              if s.name == "fletcher_errors_total"}
    assert errors.get("Validation", 0) >= 1
    assert "py-42" in server.log_text()


def test_info(server):
    info = requests.get(server.url + "/info").json()
    assert info["dimension"] == 384
    assert info["max_input_length"] == 256
    assert info["max_client_batch_size"] == 512
    assert info["payload_limit"] == 2_000_000
    assert info["max_concurrent_inputs"] == 4096
    assert info["devices"] == ["cpu:0"]
